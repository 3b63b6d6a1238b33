//! One minibatch of Steps 2–4 on one process.

use crate::data::TargetBatch;
use crate::eval::argmax_rows;
use crate::optim::Optimizer;
use crate::TrainError;
use nn_core::{Element, Loss, Network, Reduction, Tensor};

/// One minibatch of Steps 2–4: forward, loss and its gradient, backward (gradients
/// zeroed first, then summed over the batch), and one optimizer update. Returns the
/// batch loss as reduced by `reduction`; `grad` is a reusable buffer. A loss or a
/// gradient that is not finite stops the step before the update.
///
/// The step runs on a worker of the current rayon pool: the calling thread when it is
/// one, else a worker it waits for (so thread-local state of the caller is not seen).
///
/// # Errors
/// [`TrainError::NonFinite`] when the loss or a gradient holds a NaN or an infinity
/// (the parameters and the optimizer are then unchanged); [`TrainError`] when a tensor
/// does not fit the network or the loss, or the optimizer fails.
pub fn train_step<T, N, L, O>(
    net: &mut N,
    optimizer: &mut O,
    loss: &L,
    inputs: &Tensor<T>,
    targets: &L::Target,
    reduction: Reduction,
    grad: &mut Tensor<T>,
) -> Result<f64, TrainError>
where
    T: Element,
    N: Network<T> + ?Sized,
    L: Loss<T>,
    O: Optimizer<T> + ?Sized,
{
    // The step runs on a worker of the current rayon pool (in place when called from
    // one), so that each kernel's parallel loop starts among its workers instead of
    // being handed over from a thread outside the pool and back: T1 makes some twenty
    // such calls a step, and the hand-overs halved its speed on one thread.
    rayon::scope(|_| {
        let outputs = net.forward(inputs)?;
        let batch_loss = loss.loss_and_grad(outputs, targets, reduction, grad)?;
        if !batch_loss.is_finite() {
            let layer = net.non_finite_output().map_or(String::new(), |at| format!(" (first non-finite output: {at})"));
            return Err(non_finite(format!("loss {batch_loss}{layer}")));
        }
        net.zero_grad();
        net.backward(grad)?;
        // One pass over the gradients, before the update can spread a NaN into the
        // weights and the optimizer's state.
        if !net.grads_are_finite() {
            let name = net.first_non_finite_grad().unwrap_or_default();
            return Err(non_finite(format!("gradient of {name}")));
        }
        optimizer.step(&mut net.params_mut())?;
        Ok(batch_loss)
    })
}

/// Patterns of the last batch classified correctly, where the targets are labels.
pub(super) fn count_correct<T: Element, B: TargetBatch>(targets: &B, outputs: Option<&Tensor<T>>) -> usize {
    match (targets.labels(), outputs) {
        (Some(labels), Some(outputs)) => labels.iter().zip(argmax_rows(outputs)).filter(|(&t, p)| t == *p).count(),
        _ => 0,
    }
}

/// [`TrainError::NonFinite`] without the trainer's context.
pub(crate) fn non_finite(what: String) -> TrainError {
    TrainError::NonFinite { what, epoch: None, iteration: None, samples: Vec::new() }
}
