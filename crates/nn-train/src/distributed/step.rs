//! One minibatch of Steps 2–4 on one process of several: forward and backward over
//! this process's share, the gradient sums and the batch's figures added across
//! processes, then the same update everywhere.

use super::{share, sum_elements, Collective};
use crate::eval::argmax_rows;
use crate::optim::Optimizer;
use crate::trainer::non_finite;
use crate::TrainError;
use nn_core::shared_statistics::{with_shared_statistics, StatisticsSum};
use nn_core::{Element, Loss, Network, Reduction, Tensor};

/// What a training step reports (a distributed step: the same on every process).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StepOutcome {
    /// The whole minibatch's loss, reduced as asked.
    pub loss: f64,
    /// Patterns of the whole minibatch classified correctly (0 without labels).
    pub correct: usize,
    /// Whether process 0 asked every process to stop after this step.
    pub stop: bool,
}

/// This process's share of a minibatch: inputs, targets, and the targets' class
/// labels where they are labels (for the accuracy).
pub(crate) struct LocalBatch<'a, T, Target: ?Sized> {
    pub inputs: &'a Tensor<T>,
    pub targets: &'a Target,
    pub labels: Option<&'a [usize]>,
}

/// Buffers a distributed step reuses: the gradients side by side, and their f64 copy
/// for element types other than f32.
#[derive(Debug, Default)]
pub(crate) struct StepBuffers<T> {
    flat: Vec<T>,
    wide: Vec<f64>,
}

/// How a distributed step runs, beyond its data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepOptions {
    /// Process 0's request to end after this step (ignored elsewhere).
    pub stop: bool,
    /// Batch normalisation's statistics over the whole minibatch (see
    /// [`TrainConfig::sync_batch_statistics`](crate::TrainConfig::sync_batch_statistics)).
    pub shared_statistics: bool,
}

/// Adds batch normalisation's sums across the processes.
struct CollectiveStatistics<'a>(&'a dyn Collective);

impl StatisticsSum for CollectiveStatistics<'_> {
    fn sum(&self, values: &mut [f64]) {
        self.0.sum_f64(values);
    }
}

/// Checks that every minibatch of an epoch over `len` patterns gives each of the
/// `processes` at least one pattern, as shared statistics need: a process without
/// one would not reach batch normalisation's sums, and the others would wait for it.
///
/// # Errors
/// [`TrainError::Config`] naming the smallest minibatch.
pub(crate) fn check_shares(len: usize, batch_size: usize, processes: usize) -> Result<(), TrainError> {
    let smallest = match len % batch_size {
        0 => batch_size,
        rest => rest,
    };
    if smallest >= processes {
        return Ok(());
    }
    let details = format!(
        "{processes} processes need at least {processes} patterns in every minibatch; {len} patterns in batches \
         of {batch_size} leave one of {smallest}"
    );
    Err(TrainError::Config { what: "synchronised batch statistics", details })
}

/// The figures summed across processes after the gradients.
const LOSS: usize = 0;
const CORRECT: usize = 1;
const STOP: usize = 2;
const FAILED: usize = 3;

/// A training step over this process's [`share`] of a minibatch of `patterns`
/// patterns. `local` is `None` when the share is empty.
///
/// Every process reaches the same collective calls whatever happens locally: a
/// process whose forward or loss fails still takes part, and then every process
/// returns an error, so that none waits forever.
///
/// # Errors
/// This process's own error, [`TrainError::Distributed`] when another process's step
/// failed, [`TrainError::NonFinite`] when the summed loss or gradients are not finite
/// (on every process alike; nothing is updated then).
#[allow(clippy::too_many_arguments)]
pub(crate) fn distributed_step<T, N, L, O>(
    net: &mut N,
    optimizer: &mut O,
    loss: &L,
    local: Option<LocalBatch<'_, T, L::Target>>,
    reduction: Reduction,
    patterns: usize,
    collective: &dyn Collective,
    options: StepOptions,
    grad: &mut Tensor<T>,
    buffers: &mut StepBuffers<T>,
) -> Result<StepOutcome, TrainError>
where
    T: Element,
    N: Network<T> + ?Sized,
    L: Loss<T>,
    O: Optimizer<T> + ?Sized,
{
    let reduction = match reduction {
        Reduction::Mean => Reduction::MeanOf(patterns),
        other => other,
    };
    let mut figures = [0.0; 4];
    // Layers that draw per pattern draw this share's part of the whole batch's draws.
    let mine = share(patterns, collective.rank(), collective.size());
    let local_work = || {
        net.zero_grad();
        net.skip_patterns(mine.start);
        let outcome = local.map(|batch| local_pass(net, loss, batch, reduction, grad));
        net.skip_patterns(patterns - mine.end);
        match outcome? {
            Ok((batch_loss, correct)) => {
                (figures[LOSS], figures[CORRECT]) = (batch_loss, correct as f64);
                None
            }
            Err(error) => {
                net.zero_grad();
                figures[FAILED] = 1.0;
                Some(error)
            }
        }
    };
    // The local pass runs on a worker of the pool, as `train_step` does, and the
    // collective calls on the calling thread, the one that initialised MPI; shared
    // statistics call the collective from inside the pass, so it runs here then.
    let local_error = if options.shared_statistics {
        with_shared_statistics(&CollectiveStatistics(collective), local_work)
    } else {
        rayon::scope(|_| local_work())
    };
    figures[STOP] = f64::from(u8::from(options.stop && collective.rank() == 0));

    let StepBuffers { flat, wide } = buffers;
    flat.clear();
    for param in net.params() {
        flat.extend_from_slice(param.grad.data());
    }
    sum_elements(collective, flat, wide);
    let mut at = 0;
    for param in net.params_mut() {
        let grad = param.grad.data_mut();
        grad.copy_from_slice(&flat[at..at + grad.len()]);
        at += grad.len();
    }
    collective.sum_f64(&mut figures);

    if let Some(error) = local_error {
        return Err(error);
    }
    if figures[FAILED] > 0.0 {
        let details = format!("{} other process(es) failed in this step", figures[FAILED]);
        return Err(TrainError::Distributed { details });
    }
    let batch_loss = figures[LOSS];
    if !batch_loss.is_finite() {
        return Err(non_finite(format!("loss {batch_loss} (summed over processes)")));
    }
    if !net.grads_are_finite() {
        let name = net.first_non_finite_grad().unwrap_or_default();
        return Err(non_finite(format!("gradient of {name} (summed over processes)")));
    }
    optimizer.step(&mut net.params_mut())?;
    Ok(StepOutcome { loss: batch_loss, correct: figures[CORRECT] as usize, stop: figures[STOP] > 0.0 })
}

/// Forward, loss and backward over this process's patterns; the loss as reduced and
/// the patterns classified correctly.
fn local_pass<T, N, L>(
    net: &mut N,
    loss: &L,
    LocalBatch { inputs, targets, labels }: LocalBatch<'_, T, L::Target>,
    reduction: Reduction,
    grad: &mut Tensor<T>,
) -> Result<(f64, usize), TrainError>
where
    T: Element,
    N: Network<T> + ?Sized,
    L: Loss<T>,
{
    let outputs = net.forward(inputs)?;
    let batch_loss = loss.loss_and_grad(outputs, targets, reduction, grad)?;
    let correct = labels.map_or(0, |labels| labels.iter().zip(argmax_rows(outputs)).filter(|(&t, p)| t == *p).count());
    net.backward(grad)?;
    Ok((batch_loss, correct))
}

/// At an epoch's end on several processes: the buffers (batch normalisation's running
/// statistics, which each process gathered from its own shares) replaced by their
/// mean over processes, then a check that every process holds the same weights and
/// buffers.
///
/// # Errors
/// [`TrainError::Distributed`] naming the epoch when the checksums differ.
pub(crate) fn agree_at_epoch_end<T: Element, N: Network<T> + ?Sized>(
    net: &mut N,
    collective: &dyn Collective,
    epoch: usize,
    buffers: &mut StepBuffers<T>,
) -> Result<(), TrainError> {
    // A division, not a product with 1/P: buffers that already agree (dropout's
    // generator state, the same on every process) come back exactly.
    let size = T::from_f64(collective.size() as f64);
    for (_, buffer) in net.named_buffers_mut() {
        sum_elements(collective, buffer.data_mut(), &mut buffers.wide);
        buffer.data_mut().iter_mut().for_each(|v| *v /= size);
    }
    let (low, high) = collective.min_max(super::network_checksum(net));
    if low != high {
        let details = format!(
            "the processes' weights or buffers differ after epoch {epoch} (checksums {low:#018x} to {high:#018x})"
        );
        return Err(TrainError::Distributed { details });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_statistics_need_a_pattern_per_process_in_every_minibatch() {
        assert!(check_shares(60_000, 64, 3).is_ok(), "the last batch holds 32");
        assert!(check_shares(128, 64, 64).is_ok());
        let error = check_shares(65, 64, 2).unwrap_err().to_string();
        assert!(error.contains("leave one of 1"), "{error}");
        assert!(check_shares(5, 64, 8).is_err(), "one batch of 5 over 8 processes");
        assert!(check_shares(64, 2, 3).is_err(), "batches of 2 over 3 processes");
    }
}
