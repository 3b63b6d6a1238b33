//! Finite-difference gradient checks in f64: a public utility, so that users can check
//! their own layers the way this crate checks its own.
//!
//! The scalar checked is `L = Σ_i r_i·y_i` for a fixed pseudo-random `r`, so that
//! `∂L/∂y = r` exercises every output. Each input element and each parameter element
//! is moved by ±h and the central difference `(L(+h) − L(−h)) / 2h` is compared with
//! the analytic gradient from `backward`.

use crate::{seeded_rng, Graph, Layer, Loss, Network, NnError, Reduction, Sequential, Tensor};
use rand::Rng;

/// Settings of a gradient check.
#[derive(Debug, Clone, Copy)]
pub struct GradCheckOptions {
    /// The finite-difference step h.
    pub step: f64,
    /// Seed for the projection vector r.
    pub seed: u64,
}

impl Default for GradCheckOptions {
    fn default() -> Self {
        Self { step: 1e-5, seed: 0x5eed }
    }
}

/// The outcome of a gradient check: the largest error over every checked element,
/// where error is `|analytic − numeric| / max(1, |analytic|, |numeric|)` (absolute
/// for small gradients, relative for large ones).
#[derive(Debug, Clone, PartialEq)]
pub struct GradCheckReport {
    /// Elements compared.
    pub checked: usize,
    /// The largest error.
    pub max_error: f64,
    /// Where the largest error is, e.g. `"input[3]"` or `"weight[17]"`.
    pub worst: String,
}

impl GradCheckReport {
    fn new() -> Self {
        Self { checked: 0, max_error: 0.0, worst: String::from("(nothing checked)") }
    }

    fn record(&mut self, analytic: f64, numeric: f64, at: impl FnOnce() -> String) {
        let error = (analytic - numeric).abs() / 1f64.max(analytic.abs()).max(numeric.abs());
        self.checked += 1;
        if error > self.max_error || error.is_nan() || self.checked == 1 {
            self.max_error = if error.is_nan() { f64::INFINITY } else { error.max(self.max_error) };
            self.worst = at();
        }
    }

    /// True when every element was within `tolerance`.
    pub fn passed(&self, tolerance: f64) -> bool {
        self.checked > 0 && self.max_error <= tolerance
    }
}

fn projection(len: usize, seed: u64) -> Vec<f64> {
    let mut rng = seeded_rng(seed);
    (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// What the numeric side of a check needs: the scalar at an input, with the current
/// parameters, and write access to each parameter element.
trait Probe {
    fn value(&mut self, x: &Tensor<f64>) -> Result<f64, NnError>;
    fn param(&mut self, param: usize, index: usize) -> &mut f64;
}

/// Compares the analytic gradients (of the input, when given, and of each named
/// parameter) with central differences of `probe`.
fn compare(
    probe: &mut dyn Probe,
    input: &Tensor<f64>,
    grad_input: Option<&Tensor<f64>>,
    grad_params: &[(String, Vec<f64>)],
    h: f64,
) -> Result<GradCheckReport, NnError> {
    let mut report = GradCheckReport::new();
    if let Some(grad_input) = grad_input {
        let mut x = input.clone();
        for (i, &analytic) in grad_input.data().iter().enumerate() {
            let original = x.data()[i];
            x.data_mut()[i] = original + h;
            let plus = probe.value(&x)?;
            x.data_mut()[i] = original - h;
            let minus = probe.value(&x)?;
            x.data_mut()[i] = original;
            report.record(analytic, (plus - minus) / (2.0 * h), || format!("input[{i}]"));
        }
    }
    for (p, (name, grads)) in grad_params.iter().enumerate() {
        for (i, &analytic) in grads.iter().enumerate() {
            let original = *probe.param(p, i);
            *probe.param(p, i) = original + h;
            let plus = probe.value(input)?;
            *probe.param(p, i) = original - h;
            let minus = probe.value(input)?;
            *probe.param(p, i) = original;
            report.record(analytic, (plus - minus) / (2.0 * h), || format!("{name}[{i}]"));
        }
    }
    Ok(report)
}

struct LayerProbe<'a> {
    layer: &'a mut dyn Layer<f64>,
    output: Tensor<f64>,
    r: Tensor<f64>,
}

impl Probe for LayerProbe<'_> {
    fn value(&mut self, x: &Tensor<f64>) -> Result<f64, NnError> {
        self.layer.forward(x, &mut self.output)?;
        Ok(dot(self.output.data(), self.r.data()))
    }
    fn param(&mut self, param: usize, index: usize) -> &mut f64 {
        &mut self.layer.params_mut().swap_remove(param).value.data_mut()[index]
    }
}

struct NetworkProbe<'a> {
    net: &'a mut Sequential<f64>,
    r: Tensor<f64>,
}

impl Probe for NetworkProbe<'_> {
    fn value(&mut self, x: &Tensor<f64>) -> Result<f64, NnError> {
        Ok(dot(self.net.forward(x)?.data(), self.r.data()))
    }
    fn param(&mut self, param: usize, index: usize) -> &mut f64 {
        &mut self.net.params_mut().swap_remove(param).value.data_mut()[index]
    }
}

/// Checks a layer's input gradient and every parameter gradient at `input`.
///
/// # Errors
/// [`NnError`] when the layer refuses `input` (its shape) or a pass fails.
pub fn check_layer(
    layer: &mut dyn Layer<f64>,
    input: &Tensor<f64>,
    options: GradCheckOptions,
) -> Result<GradCheckReport, NnError> {
    let mut output = Tensor::default();
    layer.forward(input, &mut output)?;
    let r = Tensor::from_vec(output.shape(), projection(output.len(), options.seed))?;
    for p in layer.params_mut() {
        p.grad.data_mut().fill(0.0);
    }
    let mut grad_input = Tensor::default();
    layer.backward(input, &output, &r, Some(&mut grad_input))?;
    let grad_params: Vec<(String, Vec<f64>)> =
        layer.params().iter().map(|p| (p.name.to_string(), p.grad.data().to_vec())).collect();
    compare(&mut LayerProbe { layer, output, r }, input, Some(&grad_input), &grad_params, options.step)
}

/// Checks a whole network end to end: the gradient of `Σ r·output` with respect to the
/// input and to every parameter, through [`Sequential::backward_to_input`].
///
/// # Errors
/// [`NnError`] when the network refuses `input` (its shape) or a pass fails.
pub fn check_network(
    net: &mut Sequential<f64>,
    input: &Tensor<f64>,
    options: GradCheckOptions,
) -> Result<GradCheckReport, NnError> {
    let output = net.forward(input)?;
    let r = Tensor::from_vec(output.shape(), projection(output.len(), options.seed))?;
    net.zero_grad();
    let grad_input = net.backward_to_input(&r)?.clone();
    let grad_params: Vec<(String, Vec<f64>)> =
        net.named_params().into_iter().map(|(n, p)| (n, p.grad.data().to_vec())).collect();
    compare(&mut NetworkProbe { net, r }, input, Some(&grad_input), &grad_params, options.step)
}

struct GraphProbe<'a> {
    graph: &'a mut Graph<f64>,
    r: Tensor<f64>,
}

impl Probe for GraphProbe<'_> {
    fn value(&mut self, x: &Tensor<f64>) -> Result<f64, NnError> {
        Ok(dot(self.graph.forward(x)?.data(), self.r.data()))
    }
    fn param(&mut self, param: usize, index: usize) -> &mut f64 {
        &mut self.graph.params_mut().swap_remove(param).value.data_mut()[index]
    }
}

/// Checks a whole graph end to end, as [`check_network`] does a chain: fan-out, sums
/// and concatenations included.
///
/// # Errors
/// [`NnError`] when the graph refuses `input` (its shape) or a pass fails.
pub fn check_graph(
    graph: &mut Graph<f64>,
    input: &Tensor<f64>,
    options: GradCheckOptions,
) -> Result<GradCheckReport, NnError> {
    let output = graph.forward(input)?;
    let r = Tensor::from_vec(output.shape(), projection(output.len(), options.seed))?;
    graph.zero_grad();
    let grad_input = graph.backward_to_input(&r)?.clone();
    let grad_params: Vec<(String, Vec<f64>)> =
        graph.named_params().into_iter().map(|(n, p)| (n, p.grad.data().to_vec())).collect();
    compare(&mut GraphProbe { graph, r }, input, Some(&grad_input), &grad_params, options.step)
}

/// Checks a loss's gradient with respect to the prediction.
///
/// # Errors
/// [`NnError`] when `target` does not fit `prediction`.
pub fn check_loss<L: Loss<f64>>(
    loss: &L,
    prediction: &Tensor<f64>,
    target: &L::Target,
    reduction: Reduction,
    options: GradCheckOptions,
) -> Result<GradCheckReport, NnError> {
    struct LossProbe<'a, L: Loss<f64> + ?Sized>(&'a L, &'a L::Target, Reduction);
    impl<L: Loss<f64>> Probe for LossProbe<'_, L> {
        fn value(&mut self, x: &Tensor<f64>) -> Result<f64, NnError> {
            self.0.loss(x, self.1, self.2)
        }
        fn param(&mut self, _: usize, _: usize) -> &mut f64 {
            unreachable!("a loss has no parameters")
        }
    }
    let mut grad = Tensor::default();
    loss.loss_and_grad(prediction, target, reduction, &mut grad)?;
    compare(&mut LossProbe(loss, target, reduction), prediction, Some(&grad), &[], options.step)
}
