//! How to train and when to stop: [`TrainConfig`] and its parts, checked by
//! [`TrainConfig::validate`].

use crate::optim::{check_domain, LrSchedule};
use crate::TrainError;
use nn_core::Reduction;
#[cfg(feature = "checkpoint")]
use std::path::PathBuf;
use std::time::Duration;

/// Which validation figure early stopping watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Monitor {
    /// Mean validation loss; lower is better.
    ValidationLoss,
    /// Validation accuracy; higher is better.
    ValidationAccuracy,
}

/// What the trainer does when a step produces a NaN or an infinity (in the loss or in
/// a gradient). Either way that step's update is not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonFinitePolicy {
    /// Stop with [`TrainError::NonFinite`], naming the update, the epoch, the batch's
    /// samples and where the values first went non-finite.
    #[default]
    Stop,
    /// Skip the batch and go on; skipped batches are counted in [`EpochStats`](super::EpochStats).
    SkipBatch,
}

/// Stop when the monitored validation figure has not improved by more than
/// `min_delta` for `patience` consecutive epochs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStopping {
    /// Epochs without improvement tolerated.
    pub patience: usize,
    /// The smallest change that counts as an improvement.
    pub min_delta: f64,
    /// What is watched.
    pub monitor: Monitor,
}

/// How to train, and when to stop. At least one of `max_iterations`, `max_epochs`,
/// `max_time` or `error_threshold` must be set.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Patterns per minibatch (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Seed of the per-epoch shuffles.
    pub seed: u64,
    /// Shuffle the patterns every epoch (else take them in order).
    pub shuffle: bool,
    /// Sum the loss over the batch as the source does, or take the mean.
    pub reduction: Reduction,
    /// Stop after this many updates (Step 5's iteration cap).
    pub max_iterations: Option<u64>,
    /// Stop once `E = Σ_p L` over the last full pass is at or below this (Step 5).
    pub error_threshold: Option<f64>,
    /// Stop after this many epochs.
    pub max_epochs: Option<usize>,
    /// Stop once this much wall time has passed in [`Trainer::fit`](super::Trainer::fit).
    pub max_time: Option<Duration>,
    /// Stop when validation stops improving (needs a validation set).
    pub early_stopping: Option<EarlyStopping>,
    /// The learning rate per epoch or per update, from the optimizer's initial rate.
    pub schedule: LrSchedule,
    /// Save a checkpoint here at the end of every epoch.
    #[cfg(feature = "checkpoint")]
    pub checkpoint: Option<PathBuf>,
    /// Also save it every this many updates, mid-epoch included: a run resumed from
    /// any of them continues exactly as the uninterrupted run would have.
    #[cfg(feature = "checkpoint")]
    pub checkpoint_every: Option<u64>,
    /// Batch size for validation passes.
    pub eval_batch_size: usize,
    /// What to do when a step goes non-finite.
    pub non_finite: NonFinitePolicy,
    /// On several processes ([`Trainer::fit_on`](super::Trainer::fit_on)): batch
    /// normalisation computes its training statistics over the whole minibatch, every
    /// process's share, instead of over each share (synchronised batch norm; see
    /// [`nn_core::shared_statistics`]). Every minibatch must then give every process a
    /// pattern. No effect on one process.
    pub sync_batch_statistics: bool,
}

impl TrainConfig {
    /// Checks every setting's domain. [`Trainer::fit`](super::Trainer::fit) calls it; a program can call it
    /// before loading data, to refuse bad settings early.
    ///
    /// # Errors
    /// [`TrainError::Config`] naming the setting: a batch size of zero, an error
    /// threshold that is negative or not finite, an early-stopping rule with no
    /// patience or a negative or non-finite `min_delta`, or no stopping rule at all.
    pub fn validate(&self) -> Result<(), TrainError> {
        let invalid = |what, details: &str| Err(TrainError::Config { what, details: details.into() });
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return invalid("batch size", "must be positive");
        }
        if let Some(threshold) = self.error_threshold {
            check_domain("error threshold", threshold, "finite and at least 0", |v| v >= 0.0)?;
        }
        if let Some(rule) = &self.early_stopping {
            if rule.patience == 0 {
                return invalid("early stopping", "patience must be at least one epoch");
            }
            check_domain("early stopping min_delta", rule.min_delta, "finite and at least 0", |v| v >= 0.0)?;
        }
        if self.max_iterations.is_none()
            && self.max_epochs.is_none()
            && self.max_time.is_none()
            && self.error_threshold.is_none()
        {
            return invalid(
                "stopping rules",
                "set at least one of max_iterations, max_epochs, max_time, error_threshold",
            );
        }
        Ok(())
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            seed: 0,
            shuffle: true,
            reduction: Reduction::Sum,
            max_iterations: None,
            error_threshold: None,
            max_epochs: None,
            max_time: None,
            early_stopping: None,
            schedule: LrSchedule::Constant,
            #[cfg(feature = "checkpoint")]
            checkpoint: None,
            #[cfg(feature = "checkpoint")]
            checkpoint_every: None,
            eval_batch_size: 64,
            non_finite: NonFinitePolicy::Stop,
            sync_batch_statistics: false,
        }
    }
}
