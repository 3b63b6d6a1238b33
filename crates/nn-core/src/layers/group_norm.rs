//! Group and layer normalisation: both normalise contiguous segments of each sample by
//! the segment's own mean and variance (no batch statistics, so training and
//! evaluation agree), then apply an affine γ, β.

use crate::layer::{backward_batch, batch_of};
use crate::{BackwardReads, Layer, NnError, Param, ParamRole, Tensor};
use nn_kernels::{normalization, Element};
use rayon::prelude::*;

/// Group normalisation of `[C, spatial…]` samples (any number of spatial dimensions):
/// the C channels fall into `groups` groups of consecutive channels, and each sample's
/// group is normalised by its own mean and (biased) variance over its channels and
/// cells, `y = γ_c·(x − μ)/√(σ² + ε) + β_c`, with γ and β per channel. PyTorch's
/// defaults: ε = 1e-5, γ = 1, β = 0.
#[derive(Debug, Clone)]
pub struct GroupNorm<T: Element>(SegmentNorm<T>);

/// Layer normalisation over a sample's trailing dimensions: each run of the trailing
/// `normalized` dimensions is normalised by its own mean and (biased) variance, with
/// γ and β per element of that run, as PyTorch's `LayerNorm(normalized_shape)`.
/// PyTorch's defaults: ε = 1e-5, γ = 1, β = 0.
#[derive(Debug, Clone)]
pub struct LayerNorm<T: Element>(SegmentNorm<T>);

impl<T: Element> GroupNorm<T> {
    /// Normalisation of `input_shape` (`[C, spatial…]`) samples in `groups` groups, ε = 1e-5.
    ///
    /// # Errors
    /// [`NnError::InvalidArgument`] for a shape without a channel axis or with a zero
    /// length, or a group count that is zero or does not divide C.
    pub fn new(input_shape: &[usize], groups: usize) -> Result<Self, NnError> {
        Self::with_eps(input_shape, groups, 1e-5)
    }

    /// As [`new`](Self::new), with ε.
    ///
    /// # Errors
    /// As for [`new`](Self::new), and for an ε that is not positive and finite.
    pub fn with_eps(input_shape: &[usize], groups: usize, eps: f64) -> Result<Self, NnError> {
        let channels = *input_shape.first().unwrap_or(&0);
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(NnError::InvalidArgument {
                what: "group norm groups",
                details: format!("{groups} groups do not divide the {channels} channels of {input_shape:?}"),
            });
        }
        let plane = input_shape.iter().skip(1).product::<usize>();
        let affine = Affine { len: channels, run: plane };
        Ok(Self(SegmentNorm::new("group_norm", input_shape, channels / groups * plane, affine, eps)?))
    }
}

impl<T: Element> LayerNorm<T> {
    /// Normalisation of `input_shape` samples over their last `normalized` dimensions
    /// (1 to all of them), ε = 1e-5.
    ///
    /// # Errors
    /// [`NnError::InvalidArgument`] for a shape with a zero length, or a count of
    /// dimensions that is zero or more than the sample has.
    pub fn new(input_shape: &[usize], normalized: usize) -> Result<Self, NnError> {
        Self::with_eps(input_shape, normalized, 1e-5)
    }

    /// As [`new`](Self::new), with ε.
    ///
    /// # Errors
    /// As for [`new`](Self::new), and for an ε that is not positive and finite.
    pub fn with_eps(input_shape: &[usize], normalized: usize, eps: f64) -> Result<Self, NnError> {
        if normalized == 0 || normalized > input_shape.len() {
            return Err(NnError::InvalidArgument {
                what: "layer norm dimensions",
                details: format!("cannot normalise the last {normalized} dimensions of {input_shape:?}"),
            });
        }
        let segment = input_shape[input_shape.len() - normalized..].iter().product::<usize>();
        let affine = Affine { len: segment, run: 1 };
        Ok(Self(SegmentNorm::new("layer_norm", input_shape, segment, affine, eps)?))
    }
}

/// How γ and β index a sample: element i of the sample uses entry `(i / run) % len`.
#[derive(Debug, Clone, Copy)]
struct Affine {
    len: usize,
    run: usize,
}

impl Affine {
    /// The affine runs of segment `s` (of `segment` elements, in the whole batch): each
    /// with its γ/β index and its element range within the segment.
    fn runs(self, segment: usize, s: usize) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> {
        let Affine { len, run } = self;
        let first = s * segment / run;
        (0..segment / run).map(move |r| ((first + r) % len, r * run..(r + 1) * run))
    }
}

/// The shared core: each sample is cut into segments of `segment` elements,
/// normalised separately; every segment holds whole runs of the affine.
#[derive(Debug, Clone)]
struct SegmentNorm<T: Element> {
    kind: &'static str,
    shape: Vec<usize>,
    segment: usize,
    affine: Affine,
    gamma: Param<T>,
    beta: Param<T>,
    eps: f64,
    /// Per segment of the last forward batch: its mean and 1/√(σ² + ε).
    stats: Vec<(f64, f64)>,
}

impl<T: Element> SegmentNorm<T> {
    fn new(kind: &'static str, shape: &[usize], segment: usize, affine: Affine, eps: f64) -> Result<Self, NnError> {
        let invalid = |what, details: String| Err(NnError::InvalidArgument { what, details });
        if shape.is_empty() || shape.contains(&0) {
            return invalid("normalisation input shape", format!("{shape:?} is empty or has a zero length"));
        }
        if !(eps.is_finite() && eps > 0.0) {
            return invalid("normalisation eps", format!("{eps} is not positive and finite"));
        }
        let filled = |value: f64| Tensor::from_vec(&[affine.len], vec![T::from_f64(value); affine.len]);
        Ok(Self {
            kind,
            shape: shape.to_vec(),
            segment,
            affine,
            gamma: Param::new("weight", filled(1.0)?).with_role(ParamRole::Normalization),
            beta: Param::new("bias", filled(0.0)?).with_role(ParamRole::Normalization),
            eps,
            stats: Vec::new(),
        })
    }

    fn runs(&self, s: usize) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> {
        self.affine.runs(self.segment, s)
    }

    fn forward(&mut self, input: &Tensor<T>, output: &mut Tensor<T>) -> Result<(), NnError> {
        let batch = batch_of("normalisation forward", input, &self.shape)?;
        output.set_batch_shape(batch, &self.shape)?;
        let (segment, eps) = (self.segment, self.eps);
        self.stats.clear();
        self.stats.par_extend(input.data().par_chunks(segment).map(|x| {
            let mean = normalization::sum(x) / segment as f64;
            let var = normalization::sum_squared_deviation(x, mean) / segment as f64;
            (mean, 1.0 / (var + eps).sqrt())
        }));
        let this = &*self;
        let (gamma, beta) = (this.gamma.value.data(), this.beta.value.data());
        output.data_mut().par_chunks_mut(segment).zip(input.data().par_chunks(segment)).enumerate().for_each(
            |(s, (y, x))| {
                let (mean, inv_std) = this.stats[s];
                for (a, cells) in this.runs(s) {
                    let scale = gamma[a].as_f64() * inv_std;
                    let shift = beta[a].as_f64() - mean * scale;
                    normalization::scale_shift(
                        &x[cells.clone()],
                        T::from_f64(scale),
                        T::from_f64(shift),
                        &mut y[cells],
                    );
                }
            },
        );
        Ok(())
    }

    /// With x̂ = (x − μ)·r and ĝ = γ·g over one segment of S cells:
    /// `∂x = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))`; `∂γ += Σ g·x̂`, `∂β += Σ g`.
    fn backward(
        &mut self,
        input: &Tensor<T>,
        grad_output: &Tensor<T>,
        grad_input: Option<&mut Tensor<T>>,
        batch: usize,
    ) -> Result<(), NnError> {
        let segment = self.segment;
        let this = &*self;
        // Per segment, per run: (Σ g, Σ g·(x − μ)); summed into γ and β in a fixed order.
        let sums: Vec<Vec<(f64, f64)>> = grad_output
            .data()
            .par_chunks(segment)
            .zip(input.data().par_chunks(segment))
            .enumerate()
            .map(|(s, (g, x))| {
                let mean = this.stats[s].0;
                this.runs(s)
                    .map(|(_, cells)| normalization::sum_and_dot_deviation(&g[cells.clone()], &x[cells], mean))
                    .collect()
            })
            .collect();
        for (s, runs) in sums.iter().enumerate() {
            let inv_std = self.stats[s].1;
            for ((a, _), &(sg, sgd)) in self.runs(s).zip(runs) {
                self.beta.grad.data_mut()[a] += T::from_f64(sg);
                self.gamma.grad.data_mut()[a] += T::from_f64(sgd * inv_std);
            }
        }
        let Some(dx) = grad_input else { return Ok(()) };
        dx.set_batch_shape(batch, &self.shape)?;
        let this = &*self;
        let gamma = this.gamma.value.data();
        let (g_all, x_all) = (grad_output.data(), input.data());
        dx.data_mut().par_chunks_mut(segment).enumerate().for_each(|(s, dx)| {
            let (mean, inv_std) = this.stats[s];
            let (g, x) = (&g_all[s * segment..(s + 1) * segment], &x_all[s * segment..(s + 1) * segment]);
            // mean(ĝ) and mean(ĝ·x̂) over the segment.
            let (mut m1, mut m2) = (0.0, 0.0);
            for ((a, _), &(sg, sgd)) in this.runs(s).zip(&sums[s]) {
                m1 += gamma[a].as_f64() * sg;
                m2 += gamma[a].as_f64() * sgd * inv_std;
            }
            let (m1, m2) = (m1 / segment as f64, m2 / segment as f64);
            for (a, cells) in this.runs(s) {
                // r·γ·g − r²·m2·(x − μ) − r·m1.
                let constants = [gamma[a].as_f64() * inv_std, 0.0, inv_std * inv_std * m2, mean, inv_std * m1];
                normalization::centred_difference(
                    &g[cells.clone()],
                    &x[cells.clone()],
                    constants.map(T::from_f64),
                    &mut dx[cells],
                );
            }
        });
        Ok(())
    }
}

/// Both layers are the shared core under their own names.
macro_rules! segment_norm_layer {
    ($layer:ident) => {
        impl<T: Element> Layer<T> for $layer<T> {
            fn kind(&self) -> &'static str {
                self.0.kind
            }
            fn input_shape(&self) -> &[usize] {
                &self.0.shape
            }
            fn output_shape(&self) -> &[usize] {
                &self.0.shape
            }
            fn backward_reads(&self) -> BackwardReads {
                // x̂ is recomputed from the input and the saved statistics.
                BackwardReads::INPUT
            }
            fn forward(&mut self, input: &Tensor<T>, output: &mut Tensor<T>) -> Result<(), NnError> {
                self.0.forward(input, output)
            }
            fn backward(
                &mut self,
                input: &Tensor<T>,
                output: &Tensor<T>,
                grad_output: &Tensor<T>,
                grad_input: Option<&mut Tensor<T>>,
            ) -> Result<(), NnError> {
                let batch = backward_batch(self, input, output, grad_output)?;
                if self.0.stats.len() != batch * self.0.shape.iter().product::<usize>() / self.0.segment {
                    return Err(NnError::InvalidArgument {
                        what: "normalisation backward",
                        details: format!("batch of {batch} does not match the last forward pass"),
                    });
                }
                self.0.backward(input, grad_output, grad_input, batch)
            }
            fn params(&self) -> Vec<&Param<T>> {
                vec![&self.0.gamma, &self.0.beta]
            }
            fn params_mut(&mut self) -> Vec<&mut Param<T>> {
                vec![&mut self.0.gamma, &mut self.0.beta]
            }
        }
    };
}

segment_norm_layer!(GroupNorm);
segment_norm_layer!(LayerNorm);
