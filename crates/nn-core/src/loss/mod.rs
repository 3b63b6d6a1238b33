use crate::{NnError, Tensor};
use nn_kernels::Element;

mod segmentation;

pub use segmentation::{SigmoidBinaryCrossEntropy, SoftDice, WeightedSum};

/// How per-pattern losses and their gradients combine over a minibatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// `E = Σ_p L_p`, as in the source (Step 4 sums `∂⁽ᵖ⁾w` over p).
    #[default]
    Sum,
    /// `E = (1/P) Σ_p L_p`: the batch mean; gradients are scaled by 1/P too.
    Mean,
    /// `E = (1/n) Σ_p L_p` for a batch that is part of `n` patterns: each part of a
    /// minibatch split across processes is scaled by the whole minibatch's size, so
    /// that the parts' sums add up to [`Mean`](Self::Mean) of the whole.
    MeanOf(usize),
}

impl Reduction {
    fn scale(self, batch: usize) -> f64 {
        match self {
            Reduction::Sum => 1.0,
            Reduction::Mean => 1.0 / batch as f64,
            Reduction::MeanOf(patterns) => 1.0 / patterns as f64,
        }
    }
}

/// A loss `L(t, x⁽ᴺ⁾)` over a batch, with its gradient `∂L/∂x⁽ᴺ⁾` (Step 3's start).
///
/// `Sync`, like its targets, so that a training step can run on a worker of the
/// thread pool that runs its kernels.
pub trait Loss<T: Element>: Sync {
    /// What the network's output is compared with.
    type Target: ?Sized + Sync;

    /// Returns the loss of the batch (reduced as asked, accumulated in f64) and writes
    /// `∂L/∂prediction` into `grad` (reshaped to the prediction's shape).
    ///
    /// # Errors
    /// [`NnError`] when `target` does not fit `prediction` (count, shape, a class index
    /// out of range).
    fn loss_and_grad(
        &self,
        prediction: &Tensor<T>,
        target: &Self::Target,
        reduction: Reduction,
        grad: &mut Tensor<T>,
    ) -> Result<f64, NnError>;

    /// The loss alone.
    ///
    /// # Errors
    /// As for [`Loss::loss_and_grad`].
    fn loss(&self, prediction: &Tensor<T>, target: &Self::Target, reduction: Reduction) -> Result<f64, NnError> {
        let mut scratch = Tensor::default();
        self.loss_and_grad(prediction, target, reduction, &mut scratch)
    }
}

fn batch_rows<T: Element>(op: &'static str, prediction: &Tensor<T>) -> Result<(usize, usize), NnError> {
    let shape = prediction.shape();
    match *shape {
        [batch, width] if batch > 0 && width > 0 => Ok((batch, width)),
        [_, _] => {
            Err(NnError::ZeroSized { op, shape: shape.to_vec(), dim: shape.iter().position(|&d| d == 0).unwrap_or(0) })
        }
        _ => Err(NnError::Shape { op, expected: vec![0, 0], got: shape.to_vec() }),
    }
}

/// Mean squared error with the ½ convention: `L_p = ½ Σ_i (x_i − t_i)²`, so that
/// `∂L_p/∂x_i = x_i − t_i`.
///
/// # Shapes
/// prediction and target `[batch, outputs]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeanSquaredError;

impl<T: Element> Loss<T> for MeanSquaredError {
    type Target = Tensor<T>;

    fn loss_and_grad(
        &self,
        prediction: &Tensor<T>,
        target: &Tensor<T>,
        reduction: Reduction,
        grad: &mut Tensor<T>,
    ) -> Result<f64, NnError> {
        let (batch, width) = batch_rows("mse loss", prediction)?;
        if target.shape() != prediction.shape() {
            return Err(NnError::Shape {
                op: "mse loss target",
                expected: prediction.shape().to_vec(),
                got: target.shape().to_vec(),
            });
        }
        let scale = reduction.scale(batch);
        grad.set_batch_shape(batch, &[width])?;
        let mut total = 0.0;
        for ((g, &x), &t) in grad.data_mut().iter_mut().zip(prediction.data()).zip(target.data()) {
            let diff = x.as_f64() - t.as_f64();
            total += 0.5 * diff * diff;
            *g = T::from_f64(diff * scale);
        }
        Ok(total * scale)
    }
}

/// Softmax followed by cross-entropy against a class label, fused so that large logits
/// stay finite: `L_p = log Σ_j e^{x_j} − x_t`, computed with the maximum logit
/// subtracted, and `∂L_p/∂x_j = softmax(x)_j − [j = t]`.
///
/// # Shapes
/// prediction (logits) `[batch, classes]`, target `[batch]` labels in `0..classes`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SoftmaxCrossEntropy;

impl<T: Element> Loss<T> for SoftmaxCrossEntropy {
    type Target = [usize];

    fn loss_and_grad(
        &self,
        prediction: &Tensor<T>,
        target: &[usize],
        reduction: Reduction,
        grad: &mut Tensor<T>,
    ) -> Result<f64, NnError> {
        let (batch, classes) = batch_rows("softmax cross-entropy", prediction)?;
        if target.len() != batch {
            return Err(NnError::Shape {
                op: "softmax cross-entropy labels",
                expected: vec![batch],
                got: vec![target.len()],
            });
        }
        if let Some((index, &label)) = target.iter().enumerate().find(|(_, &l)| l >= classes) {
            return Err(NnError::LabelOutOfRange { index, label, classes });
        }
        let scale = reduction.scale(batch);
        grad.set_batch_shape(batch, &[classes])?;
        let mut total = 0.0;
        for ((logits, g), &label) in
            prediction.data().chunks(classes).zip(grad.data_mut().chunks_mut(classes)).zip(target)
        {
            let max = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x.as_f64()));
            let sum_exp: f64 = logits.iter().map(|&x| (x.as_f64() - max).exp()).sum();
            let log_sum = sum_exp.ln();
            total += log_sum - (logits[label].as_f64() - max);
            for (j, (g, &x)) in g.iter_mut().zip(logits).enumerate() {
                let p = ((x.as_f64() - max) - log_sum).exp();
                *g = T::from_f64((p - if j == label { 1.0 } else { 0.0 }) * scale);
            }
        }
        Ok(total * scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_is_stable_for_huge_logits() {
        let x = Tensor::from_vec(&[2, 3], vec![1e4f32, 0.0, -1e4, -3e38, 3e38, 0.0]).unwrap();
        let mut g = Tensor::zeros(&[1]).unwrap();
        let loss = SoftmaxCrossEntropy.loss_and_grad(&x, &[0, 0], Reduction::Sum, &mut g).unwrap();
        assert!(loss.is_finite());
        assert!((loss - 6e38).abs() / 6e38 < 1e-6, "second row loses 3e38 - (-3e38), got {loss}");
        assert!(g.data().iter().all(|v| v.is_finite()));
        assert_eq!(g.data()[0], 0.0);
        assert_eq!(g.data()[3], -1.0);
        assert_eq!(g.data()[4], 1.0);
    }

    #[test]
    fn mse_uses_half_convention_and_reductions() {
        let x = Tensor::from_vec(&[2, 1], vec![3.0f64, 1.0]).unwrap();
        let t = Tensor::from_vec(&[2, 1], vec![1.0f64, 1.0]).unwrap();
        let mut g = Tensor::zeros(&[1]).unwrap();
        assert_eq!(MeanSquaredError.loss_and_grad(&x, &t, Reduction::Sum, &mut g).unwrap(), 2.0);
        assert_eq!(g.data(), &[2.0, 0.0]);
        assert_eq!(MeanSquaredError.loss_and_grad(&x, &t, Reduction::Mean, &mut g).unwrap(), 1.0);
        assert_eq!(g.data(), &[1.0, 0.0]);
    }

    #[test]
    fn bad_targets_are_errors() {
        let x = Tensor::from_vec(&[2, 3], vec![0.0f32; 6]).unwrap();
        assert_eq!(
            SoftmaxCrossEntropy.loss(&x, &[1, 3], Reduction::Sum),
            Err(NnError::LabelOutOfRange { index: 1, label: 3, classes: 3 })
        );
        assert!(matches!(SoftmaxCrossEntropy.loss(&x, &[1], Reduction::Sum), Err(NnError::Shape { .. })));
        let t = Tensor::from_vec(&[3, 2], vec![0.0f32; 6]).unwrap();
        assert!(matches!(MeanSquaredError.loss(&x, &t, Reduction::Sum), Err(NnError::Shape { .. })));
    }
}
