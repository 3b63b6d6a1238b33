//! Losses for segmentation, on logits of any shape `[batch, …]` with a target of the
//! same shape holding values in [0, 1] (a mask, or soft labels).

use super::{Loss, Reduction};
use crate::{NnError, Tensor};
use nn_kernels::Element;

/// Checks that `target` is shaped as `prediction` (`[batch, …]`, batch positive) with
/// values in [0, 1]; returns the batch size and the cells per pattern.
fn check_mask<T: Element>(
    op: &'static str,
    prediction: &Tensor<T>,
    target: &Tensor<T>,
) -> Result<(usize, usize), NnError> {
    let shape = prediction.shape();
    if shape.len() < 2 || shape.contains(&0) {
        let dim = shape.iter().position(|&d| d == 0).unwrap_or(0);
        return Err(NnError::ZeroSized { op, shape: shape.to_vec(), dim });
    }
    if target.shape() != shape {
        return Err(NnError::Shape { op, expected: shape.to_vec(), got: target.shape().to_vec() });
    }
    if let Some((index, t)) = target.data().iter().enumerate().find(|(_, t)| !(0.0..=1.0).contains(&t.as_f64())) {
        return Err(NnError::InvalidArgument {
            what: op,
            details: format!("target value {t} at flat index {index} is not in [0, 1]"),
        });
    }
    Ok((shape[0], prediction.len() / shape[0]))
}

/// The logistic function, in a form that does not overflow for either sign.
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// The logistic sigmoid followed by binary cross-entropy, fused on logits in the stable
/// form `L_p = Σ_i max(x_i, 0) − x_i·t_i + ln(1 + e^{−|x_i|})`, so that
/// `∂L_p/∂x_i = σ(x_i) − t_i`. A pattern's loss sums its cells; `Reduction::Mean`
/// divides by the batch (not by the cells).
#[derive(Debug, Clone, Copy, Default)]
pub struct SigmoidBinaryCrossEntropy;

impl<T: Element> Loss<T> for SigmoidBinaryCrossEntropy {
    type Target = Tensor<T>;

    fn loss_and_grad(
        &self,
        prediction: &Tensor<T>,
        target: &Tensor<T>,
        reduction: Reduction,
        grad: &mut Tensor<T>,
    ) -> Result<f64, NnError> {
        let (batch, _) = check_mask("sigmoid binary cross-entropy", prediction, target)?;
        let scale = reduction.scale(batch);
        grad.set_batch_shape(batch, &prediction.shape()[1..])?;
        let mut total = 0.0;
        for ((g, &x), &t) in grad.data_mut().iter_mut().zip(prediction.data()).zip(target.data()) {
            let (x, t) = (x.as_f64(), t.as_f64());
            total += x.max(0.0) - x * t + (-x.abs()).exp().ln_1p();
            *g = T::from_f64((sigmoid(x) - t) * scale);
        }
        Ok(total * scale)
    }
}

/// The soft Dice loss on logits, per pattern: with `p = σ(x)`,
/// `L_p = 1 − (2·Σ p·t + s) / (Σ p + Σ t + s)`, the smoothing `s` (default 1) keeping
/// an empty mask and an empty prediction at loss 0.
#[derive(Debug, Clone, Copy)]
pub struct SoftDice {
    /// The smoothing term s.
    pub smooth: f64,
}

impl Default for SoftDice {
    fn default() -> Self {
        Self { smooth: 1.0 }
    }
}

impl<T: Element> Loss<T> for SoftDice {
    type Target = Tensor<T>;

    /// `∂L_p/∂x_i = −(2·t_i·D − N) / D² · p_i·(1 − p_i)`, with `N = 2·Σ p·t + s` and
    /// `D = Σ p + Σ t + s`.
    fn loss_and_grad(
        &self,
        prediction: &Tensor<T>,
        target: &Tensor<T>,
        reduction: Reduction,
        grad: &mut Tensor<T>,
    ) -> Result<f64, NnError> {
        let (batch, cells) = check_mask("soft Dice", prediction, target)?;
        if !(self.smooth.is_finite() && self.smooth > 0.0) {
            return Err(NnError::InvalidArgument {
                what: "soft Dice smoothing",
                details: format!("{} is not positive and finite", self.smooth),
            });
        }
        let scale = reduction.scale(batch);
        grad.set_batch_shape(batch, &prediction.shape()[1..])?;
        let mut total = 0.0;
        let patterns = prediction.data().chunks(cells).zip(target.data().chunks(cells));
        for ((x, t), g) in patterns.zip(grad.data_mut().chunks_mut(cells)) {
            let (mut overlap, mut sum_p, mut sum_t) = (0.0, 0.0, 0.0);
            for (&x, &t) in x.iter().zip(t) {
                let (p, t) = (sigmoid(x.as_f64()), t.as_f64());
                overlap += p * t;
                sum_p += p;
                sum_t += t;
            }
            let numerator = 2.0 * overlap + self.smooth;
            let denominator = sum_p + sum_t + self.smooth;
            total += 1.0 - numerator / denominator;
            for ((g, &x), &t) in g.iter_mut().zip(x).zip(t) {
                let p = sigmoid(x.as_f64());
                let d_p = -(2.0 * t.as_f64() * denominator - numerator) / (denominator * denominator);
                *g = T::from_f64(d_p * p * (1.0 - p) * scale);
            }
        }
        Ok(total * scale)
    }
}

/// Two losses of one target added with weights: `L = a·L₁ + b·L₂` (for segmentation,
/// binary cross-entropy plus Dice).
#[derive(Debug, Clone, Copy)]
pub struct WeightedSum<A, B> {
    /// L₁ and its weight a.
    pub first: (A, f64),
    /// L₂ and its weight b.
    pub second: (B, f64),
}

impl<T: Element, A, B> Loss<T> for WeightedSum<A, B>
where
    A: Loss<T>,
    B: Loss<T, Target = A::Target>,
{
    type Target = A::Target;

    fn loss_and_grad(
        &self,
        prediction: &Tensor<T>,
        target: &A::Target,
        reduction: Reduction,
        grad: &mut Tensor<T>,
    ) -> Result<f64, NnError> {
        let mut second = Tensor::default();
        let l2 = self.second.0.loss_and_grad(prediction, target, reduction, &mut second)?;
        let l1 = self.first.0.loss_and_grad(prediction, target, reduction, grad)?;
        let (a, b) = (T::from_f64(self.first.1), T::from_f64(self.second.1));
        for (g, &g2) in grad.data_mut().iter_mut().zip(second.data()) {
            *g = a * *g + b * g2;
        }
        Ok(self.first.1 * l1 + self.second.1 * l2)
    }
}
