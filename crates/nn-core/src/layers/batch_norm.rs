use crate::layer::{backward_batch, batch_of};
use crate::shared_statistics::add_across_processes;
use crate::{BackwardReads, Layer, NnError, Param, ParamRole, Tensor};
use nn_kernels::{normalization, Element};
use rayon::prelude::*;

/// Batch normalisation over the channel axis of `[C, spatial…]` samples, any number of
/// spatial dimensions (none included: `[C]`):
/// `y = γ·(x − μ)/√(σ² + ε) + β`, per channel.
///
/// In training, μ and σ² are the batch's (over the batch and every spatial cell; σ² is
/// the biased variance), and the running estimates move towards them by `momentum`
/// (the running variance takes the unbiased one); in evaluation the running estimates
/// are used. PyTorch's defaults: momentum 0.1, ε = 1e-5, γ = 1, β = 0.
///
/// A ReLU after it can be taken over ([`Layer::rectify_output`]; a
/// [`Sequential`](crate::Sequential) network and a [`Graph`](crate::Graph) do so):
/// `y = max(γ·x̂ + β, 0)` is then written in the same pass, and the backward pass masks
/// the output gradient as it reads it, where the forward pass's `x·scale + shift`
/// (recomputed from the input) is not positive; the bits are those of the two layers
/// apart.
///
/// Inside [`with_shared_statistics`](crate::shared_statistics::with_shared_statistics)
/// the batch is every process's share of a minibatch: the sums behind μ, σ² and the
/// backward pass's means are added across processes (synchronised batch norm).
#[derive(Debug, Clone)]
pub struct BatchNorm<T: Element> {
    shape: Vec<usize>,
    gamma: Param<T>,
    beta: Param<T>,
    running_mean: Tensor<T>,
    running_var: Tensor<T>,
    momentum: f64,
    eps: f64,
    training: bool,
    /// Per channel, the mean and 1/√(σ² + ε) the last forward pass normalised with.
    mean: Vec<f64>,
    inv_std: Vec<f64>,
    /// Cells per channel the last training forward pass's statistics covered (over
    /// all processes when they are shared).
    count: f64,
    /// Whether a following ReLU has been absorbed.
    relu: bool,
    /// Per channel, the `(scale, shift)` the last forward pass wrote `x·scale + shift`
    /// with: an absorbed ReLU's mask is recomputed from them.
    affine: Vec<(T, T)>,
}

impl<T: Element> BatchNorm<T> {
    /// Normalisation of samples shaped `input_shape` (`[C, spatial…]`), with PyTorch's
    /// momentum (0.1) and ε (1e-5).
    ///
    /// # Errors
    /// [`NnError::InvalidArgument`] for a shape without a channel axis or with zero
    /// channels.
    pub fn new(input_shape: &[usize]) -> Result<Self, NnError> {
        Self::with_options(input_shape, 0.1, 1e-5)
    }

    /// As [`new`](Self::new), with the running estimates' momentum and ε.
    ///
    /// # Errors
    /// As for [`new`](Self::new), and [`NnError::InvalidArgument`] for a momentum
    /// outside `[0, 1]` or an ε that is not positive and finite.
    pub fn with_options(input_shape: &[usize], momentum: f64, eps: f64) -> Result<Self, NnError> {
        let invalid = |what, details: String| Err(NnError::InvalidArgument { what, details });
        let Some(&channels) = input_shape.first() else {
            return invalid("batch norm input shape", "[] has no channel axis".into());
        };
        if input_shape.contains(&0) {
            return invalid("batch norm input shape", format!("{input_shape:?} has a zero length"));
        }
        if !(0.0..=1.0).contains(&momentum) {
            return invalid("batch norm momentum", format!("{momentum} is not in [0, 1]"));
        }
        if !(eps.is_finite() && eps > 0.0) {
            return invalid("batch norm eps", format!("{eps} is not positive and finite"));
        }
        let filled = |value: f64| Tensor::from_vec(&[channels], vec![T::from_f64(value); channels]);
        Ok(Self {
            shape: input_shape.to_vec(),
            gamma: Param::new("weight", filled(1.0)?).with_role(ParamRole::Normalization),
            beta: Param::new("bias", filled(0.0)?).with_role(ParamRole::Normalization),
            running_mean: filled(0.0)?,
            running_var: filled(1.0)?,
            momentum,
            eps,
            training: true,
            mean: vec![0.0; channels],
            inv_std: vec![1.0; channels],
            count: 1.0,
            relu: false,
            affine: vec![(T::one(), T::zero()); channels],
        })
    }

    /// The running mean and variance, per channel.
    pub fn running_stats(&self) -> (&Tensor<T>, &Tensor<T>) {
        (&self.running_mean, &self.running_var)
    }

    fn channels(&self) -> usize {
        self.shape[0]
    }

    /// Cells per channel in one sample.
    fn plane(&self) -> usize {
        self.shape[1..].iter().product()
    }
}

/// The cells of channel `c` in a `[batch, C, plane]` buffer, image by image.
fn channel_runs<T>(data: &[T], channels: usize, plane: usize, c: usize) -> impl Iterator<Item = &[T]> {
    data.chunks_exact(channels * plane).map(move |image| &image[c * plane..(c + 1) * plane])
}

impl<T: Element> Layer<T> for BatchNorm<T> {
    fn kind(&self) -> &'static str {
        if self.relu {
            "batch_norm+relu"
        } else {
            "batch_norm"
        }
    }

    fn base_kind(&self) -> &'static str {
        "batch_norm"
    }

    fn rectify_output(&mut self, on: bool) -> bool {
        self.relu = on;
        on
    }

    fn input_shape(&self) -> &[usize] {
        &self.shape
    }

    fn output_shape(&self) -> &[usize] {
        &self.shape
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn backward_reads(&self) -> BackwardReads {
        // x̂, and an absorbed ReLU's mask, are recomputed from the input and the saved
        // batch statistics.
        BackwardReads::INPUT
    }

    fn forward(&mut self, input: &Tensor<T>, output: &mut Tensor<T>) -> Result<(), NnError> {
        let batch = batch_of("batch norm forward", input, &self.shape)?;
        output.set_batch_shape(batch, &self.shape)?;
        let (channels, plane) = (self.channels(), self.plane());
        if self.training {
            // Each channel's sums in one order, whatever the thread count; Σx with the
            // cell count, then Σ(x − μ)², each added across processes when shared.
            let runs = |c| channel_runs(input.data(), channels, plane, c);
            let mut sums: Vec<f64> =
                (0..channels).into_par_iter().map(|c| runs(c).map(normalization::sum).sum::<f64>()).collect();
            sums.push((batch * plane) as f64);
            add_across_processes(&mut sums);
            let count = sums[channels];
            let means: Vec<f64> = sums[..channels].iter().map(|sum| sum / count).collect();
            let mut squares: Vec<f64> = (0..channels)
                .into_par_iter()
                .map(|c| runs(c).map(|run| normalization::sum_squared_deviation(run, means[c])).sum::<f64>())
                .collect();
            add_across_processes(&mut squares);
            self.count = count;
            let unbiased = if count > 1.0 { count / (count - 1.0) } else { 1.0 };
            for (c, (&mean, &square)) in means.iter().zip(&squares).enumerate() {
                let var = square / count;
                self.mean[c] = mean;
                self.inv_std[c] = 1.0 / (var + self.eps).sqrt();
                let m = self.momentum;
                let (rm, rv) = (&mut self.running_mean.data_mut()[c], &mut self.running_var.data_mut()[c]);
                *rm = T::from_f64((1.0 - m) * rm.as_f64() + m * mean);
                *rv = T::from_f64((1.0 - m) * rv.as_f64() + m * var * unbiased);
            }
        } else {
            for c in 0..channels {
                self.mean[c] = self.running_mean.data()[c].as_f64();
                self.inv_std[c] = 1.0 / (self.running_var.data()[c].as_f64() + self.eps).sqrt();
            }
        }
        let (gamma, beta) = (self.gamma.value.data(), self.beta.value.data());
        for (c, affine) in self.affine.iter_mut().enumerate() {
            let scale = gamma[c].as_f64() * self.inv_std[c];
            *affine = (T::from_f64(scale), T::from_f64(beta[c].as_f64() - self.mean[c] * scale));
        }
        let pass = if self.relu { normalization::scale_shift_relu } else { normalization::scale_shift };
        let (sample, affine) = (channels * plane, &self.affine);
        output.data_mut().par_chunks_mut(sample).zip(input.data().par_chunks(sample)).for_each(|(y, x)| {
            for ((y, x), &(scale, shift)) in y.chunks_exact_mut(plane).zip(x.chunks_exact(plane)).zip(affine) {
                pass(x, scale, shift, y);
            }
        });
        Ok(())
    }

    /// In training, the closed form through the batch statistics:
    /// `∂x = γ/√(σ² + ε) · (g − mean(g) − x̂·mean(g·x̂))`, means per channel over the
    /// batch and the spatial cells; in evaluation the statistics are constants and
    /// `∂x = γ/√(σ² + ε) · g`. Always `∂γ += Σ g·x̂`, `∂β += Σ g`.
    fn backward(
        &mut self,
        input: &Tensor<T>,
        output: &Tensor<T>,
        grad_output: &Tensor<T>,
        grad_input: Option<&mut Tensor<T>>,
    ) -> Result<(), NnError> {
        let batch = backward_batch(self, input, output, grad_output)?;
        let (channels, plane) = (self.channels(), self.plane());
        let (mean, inv_std) = (&self.mean, &self.inv_std);
        let (g_all, x_all) = (grad_output.data(), input.data());
        let rectifier = |c: usize| self.relu.then_some(self.affine[c]);
        // Per channel: Σ g and Σ g·x̂ = Σ g·(x − mean) / √(σ² + ε).
        let sums: Vec<(f64, f64)> = (0..channels)
            .into_par_iter()
            .map(|c| {
                let (mut sg, mut sgd) = (0.0, 0.0);
                for n in 0..batch {
                    let run = (n * channels + c) * plane..(n * channels + c + 1) * plane;
                    let (g, x) = (&g_all[run.clone()], &x_all[run]);
                    let (run_g, run_gd) = match rectifier(c) {
                        None => normalization::sum_and_dot_deviation(g, x, mean[c]),
                        Some(r) => normalization::sum_and_dot_deviation_rectified(g, x, mean[c], r),
                    };
                    (sg, sgd) = (sg + run_g, sgd + run_gd);
                }
                (sg, sgd * inv_std[c])
            })
            .collect();
        for (c, &(sg, sgx)) in sums.iter().enumerate() {
            self.beta.grad.data_mut()[c] += T::from_f64(sg);
            self.gamma.grad.data_mut()[c] += T::from_f64(sgx);
        }
        let Some(dx) = grad_input else { return Ok(()) };
        dx.set_batch_shape(batch, &self.shape)?;
        let training = self.training;
        // The parameters take this share's sums (the gradient sums add them across
        // processes); ∂x takes the means over the whole minibatch.
        let mut means: Vec<f64> = sums.iter().flat_map(|&(sg, sgx)| [sg, sgx]).collect();
        if training {
            add_across_processes(&mut means);
        }
        means.iter_mut().for_each(|m| *m /= self.count);
        let gamma = self.gamma.value.data();
        let sample = channels * plane;
        dx.data_mut().par_chunks_mut(sample).enumerate().for_each(|(n, dx)| {
            for (c, dx) in dx.chunks_exact_mut(plane).enumerate() {
                let at = n * sample + c * plane;
                let (g, x) = (&g_all[at..at + plane], &x_all[at..at + plane]);
                let scale = gamma[c].as_f64() * inv_std[c];
                let (mean_g, mean_gx) = if training { (means[2 * c], means[2 * c + 1]) } else { (0.0, 0.0) };
                // scale·(g − mean_g − x̂·mean_gx) with x̂ = (x − mean)·inv_std.
                let constants = [scale, mean_g, scale * inv_std[c] * mean_gx, mean[c], 0.0].map(T::from_f64);
                match rectifier(c) {
                    None => normalization::centred_difference(g, x, constants, dx),
                    Some(r) => normalization::centred_difference_rectified(g, x, constants, r, dx),
                }
            }
        });
        Ok(())
    }

    fn params(&self) -> Vec<&Param<T>> {
        vec![&self.gamma, &self.beta]
    }

    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        vec![&mut self.gamma, &mut self.beta]
    }

    fn buffers(&self) -> Vec<(&'static str, &Tensor<T>)> {
        vec![("running_mean", &self.running_mean), ("running_var", &self.running_var)]
    }

    fn buffers_mut(&mut self) -> Vec<(&'static str, &mut Tensor<T>)> {
        vec![("running_mean", &mut self.running_mean), ("running_var", &mut self.running_var)]
    }
}
