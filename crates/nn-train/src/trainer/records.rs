//! What training reports and keeps: why it stopped, figures per epoch and per batch,
//! the observer that receives them, and the counters that make it resumable.

use crate::eval::Evaluation;
use std::time::Duration;

/// Why training stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// `E = Σ_p L` over the last full pass fell to the threshold.
    ErrorThreshold {
        /// E.
        error: f64,
        /// The threshold.
        threshold: f64,
    },
    /// The update count reached its cap.
    IterationCap {
        /// The cap.
        limit: u64,
    },
    /// The epoch count reached its cap.
    EpochCap {
        /// The cap.
        limit: usize,
    },
    /// Validation did not improve for `patience` epochs.
    EarlyStopping {
        /// The epoch (0-based) with the best figure.
        best_epoch: usize,
        /// The best figure.
        best: f64,
    },
    /// The wall-time budget ran out.
    WallTime {
        /// The budget.
        limit: Duration,
    },
}

/// Figures of one epoch (or of the partial epoch in which training stopped).
#[derive(Debug, Clone, PartialEq)]
pub struct EpochStats {
    /// 0-based epoch.
    pub epoch: usize,
    /// False for an epoch cut short by an iteration or time cap.
    pub complete: bool,
    /// Updates done in total by the end of this epoch.
    pub iterations: u64,
    /// Patterns seen in this epoch.
    pub samples: usize,
    /// `E = Σ_p L` over this epoch's patterns, each measured when its batch was
    /// forwarded (before that batch's update).
    pub error_sum: f64,
    /// `E / samples`.
    pub mean_loss: f64,
    /// Training accuracy over the epoch, for class targets.
    pub accuracy: Option<f64>,
    /// Validation figures at the end of the epoch.
    pub validation: Option<Evaluation>,
    /// Patterns per second of forward + backward + update (data loading excluded).
    pub images_per_sec: f64,
    /// Wall time of the epoch, data loading included.
    pub seconds: f64,
    /// η of the epoch's last update.
    pub learning_rate: f64,
    /// Batches skipped because they went non-finite ([`NonFinitePolicy::SkipBatch`](super::NonFinitePolicy::SkipBatch)).
    pub skipped_batches: usize,
}

/// Progress after one update.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchProgress {
    /// 0-based epoch.
    pub epoch: usize,
    /// 1-based batch within the epoch.
    pub batch: usize,
    /// Batches in the epoch.
    pub batches: usize,
    /// Updates done in total.
    pub iteration: u64,
    /// Mean loss per pattern so far this epoch.
    pub mean_loss: f64,
    /// Training accuracy so far this epoch, for class targets.
    pub accuracy: Option<f64>,
    /// Patterns per second of compute so far this epoch.
    pub images_per_sec: f64,
}

/// Receives progress as training runs (a progress bar, a logger, a test probe).
pub trait Observer {
    /// An epoch begins.
    fn epoch_start(&mut self, _epoch: usize, _batches: usize) {}
    /// An update finished.
    fn batch_end(&mut self, _progress: &BatchProgress) {}
    /// An epoch finished (also called for a partial epoch when training stops early).
    fn epoch_end(&mut self, _stats: &EpochStats) {}
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Observer for NoProgress {}

/// Counters that make training resumable; saved in checkpoints.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainerState {
    /// Epochs completed.
    pub epoch: usize,
    /// Updates done.
    pub iteration: u64,
    /// E over the last full pass.
    pub last_error: Option<f64>,
    /// The learning rate the schedule starts from.
    pub base_lr: Option<f64>,
    /// The best early-stopping figure so far, and its epoch.
    pub best: Option<(f64, usize)>,
    /// Epochs since the best.
    pub epochs_without_improvement: usize,
    /// Where in its epoch a mid-epoch checkpoint was taken (`None` at an epoch's end).
    pub epoch_progress: Option<EpochProgress>,
}

/// How far the current epoch had got: its batches done and the sums its figures are
/// made of, so that a run resumed mid-epoch reports the same epoch as one that was not
/// interrupted.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EpochProgress {
    /// Batches of the epoch done (updated or skipped).
    pub batches: usize,
    /// `Σ_p L` over the epoch's patterns so far.
    pub error_sum: f64,
    /// Patterns classified correctly so far.
    pub correct: usize,
    /// Patterns seen so far (of batches not skipped).
    pub samples: usize,
    /// Batches skipped so far.
    pub skipped: usize,
}

/// The outcome of [`Trainer::fit`](super::Trainer::fit).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// Which rule stopped training.
    pub reason: StopReason,
    /// Updates done in total when it stopped.
    pub iteration: u64,
    /// Epochs completed when it stopped.
    pub epoch: usize,
    /// Per-epoch figures of this run.
    pub history: Vec<EpochStats>,
}
