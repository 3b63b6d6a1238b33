//! The source's procedure (SPEC §1): Step 1 is the dataset and η; each minibatch runs
//! Step 2 (forward), Step 3 (backward), Step 4 (update from the summed gradients);
//! Step 5 checks the stopping rules after every update.

mod config;
mod records;
mod step;

pub use config::{EarlyStopping, Monitor, NonFinitePolicy, TrainConfig};
pub use records::{
    BatchProgress, EpochProgress, EpochStats, NoProgress, Observer, StopReason, TrainReport, TrainerState,
};
use step::count_correct;
pub(crate) use step::non_finite;
pub use step::train_step;

#[cfg(feature = "checkpoint")]
use crate::checkpoint;
use crate::data::{Dataset, TargetBatch};
use crate::distributed::{
    agree_at_epoch_end, check_shares, distributed_step, share, Collective, LocalBatch, SingleProcess, StepBuffers,
    StepOptions, StepOutcome,
};
use crate::eval::evaluate_on;
use crate::optim::{check_domain, Optimizer};
use crate::TrainError;
use nn_core::{seeded_rng, Element, Loss, Network, Reduction, Tensor};
use rand::seq::SliceRandom;
#[cfg(feature = "checkpoint")]
use std::path::Path;
use std::time::{Duration, Instant};

/// Runs the training loop; keeps its counters so that training can continue or resume.
#[derive(Debug, Clone)]
pub struct Trainer {
    config: TrainConfig,
    state: TrainerState,
}

impl Trainer {
    /// A trainer starting from epoch 0.
    pub fn new(config: TrainConfig) -> Self {
        Self { config, state: TrainerState::default() }
    }

    /// A trainer continuing from the checkpoint at `path`, whose parameters and
    /// optimizer state are loaded into `net` and `optimizer`.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] when the file cannot be read or does not fit the
    /// network and optimizer; neither is changed then.
    #[cfg(feature = "checkpoint")]
    pub fn resume<T: Element, N: Network<T> + ?Sized, O: Optimizer<T>>(
        config: TrainConfig,
        path: &Path,
        net: &mut N,
        optimizer: &mut O,
    ) -> Result<Self, TrainError> {
        let state = checkpoint::load_checkpoint(path, net, optimizer)?;
        Ok(Self { config, state })
    }

    /// The counters.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    fn check_config<T: Element, N: Network<T> + ?Sized, D: Dataset<T>>(
        &self,
        net: &N,
        optimizer: &dyn Optimizer<T>,
        data: &D,
        has_validation: bool,
    ) -> Result<(), TrainError> {
        let c = &self.config;
        c.validate()?;
        optimizer.validate()?;
        let lr = self.state.base_lr.unwrap_or(optimizer.learning_rate());
        check_domain("learning rate", lr, "finite and above 0", |v| v > 0.0)?;
        let invalid = |what, details: &str| Err(TrainError::Config { what, details: details.into() });
        if data.is_empty() {
            return invalid("training data", "has no samples");
        }
        if data.sample_shape() != net.input_shape() {
            return Err(TrainError::Config {
                what: "training data",
                details: format!(
                    "samples have shape {:?}, the network takes {:?}",
                    data.sample_shape(),
                    net.input_shape()
                ),
            });
        }
        if c.early_stopping.is_some() && !has_validation {
            return invalid("early stopping", "needs a validation set");
        }
        Ok(())
    }

    /// Trains `net` on `train` until a stopping rule fires.
    ///
    /// After every update the rules are checked in this order: (1) the error threshold
    /// on E over the last full pass (E changes only when a pass completes; with one
    /// batch per epoch that is every update, as in the source), (2) the iteration cap,
    /// (3) the epoch cap and (4) early stopping (both at the end of an epoch), (5) wall
    /// time.
    ///
    /// # Errors
    /// [`TrainError`] from the first failing step: a configuration outside its domain, a
    /// batch that does not fit the network, an optimizer or checkpoint failure.
    pub fn fit<T, N, D, L, O>(
        &mut self,
        net: &mut N,
        optimizer: &mut O,
        loss: &L,
        train: &D,
        validation: Option<&D>,
        observer: &mut dyn Observer,
    ) -> Result<TrainReport, TrainError>
    where
        T: Element,
        N: Network<T> + ?Sized,
        D: Dataset<T>,
        L: Loss<T>,
        O: Optimizer<T>,
        D::Targets: AsRef<L::Target>,
    {
        self.fit_on(net, optimizer, loss, train, validation, observer, &SingleProcess)
    }

    /// [`fit`](Self::fit) on every process of `collective` at once, data-parallel (see
    /// [`distributed`](crate::distributed)): each process trains on its share of every
    /// minibatch, and the gradient sums are added across processes before the update.
    /// Every process must call this with the same network, data, configuration and
    /// seed. Only process 0 reports to `observer` and writes checkpoints; the stopping
    /// rules fire on every process at the same update. On one process this is `fit`.
    ///
    /// # Errors
    /// As for [`fit`](Self::fit), and [`TrainError::Distributed`] when another process
    /// failed or the processes' weights or buffers differ at an epoch's end.
    #[allow(clippy::too_many_arguments)]
    pub fn fit_on<T, N, D, L, O>(
        &mut self,
        net: &mut N,
        optimizer: &mut O,
        loss: &L,
        train: &D,
        validation: Option<&D>,
        observer: &mut dyn Observer,
        collective: &dyn Collective,
    ) -> Result<TrainReport, TrainError>
    where
        T: Element,
        N: Network<T> + ?Sized,
        D: Dataset<T>,
        L: Loss<T>,
        O: Optimizer<T>,
        D::Targets: AsRef<L::Target>,
    {
        let (rank, processes) = (collective.rank(), collective.size());
        let mut silent = NoProgress;
        let observer: &mut dyn Observer = if rank == 0 { observer } else { &mut silent };
        let mut buffers = StepBuffers::default();
        self.check_config(net, optimizer, train, validation.is_some())?;
        let shared_statistics = self.config.sync_batch_statistics && processes > 1;
        if shared_statistics {
            check_shares(train.len(), self.config.batch_size, processes)?;
        }
        if validation.is_some_and(|v| v.is_empty()) {
            return Err(TrainError::Config { what: "validation data", details: "has no samples".into() });
        }
        let config = self.config.clone();
        let started = Instant::now();
        let base_lr = *self.state.base_lr.get_or_insert(optimizer.learning_rate());
        let (mut inputs, mut targets, mut grad) =
            (Tensor::<T>::default(), D::Targets::default(), Tensor::<T>::default());
        let mut history = Vec::new();
        let mut order: Vec<usize> = (0..train.len()).collect();
        let batches = train.len().div_ceil(config.batch_size);
        // The run's length in updates, for the schedules that follow updates.
        let total_updates = config.max_iterations.or(config.max_epochs.map(|e| (e * batches) as u64));
        if config.schedule.per_iteration() && total_updates.is_none() {
            return Err(TrainError::Config {
                what: "learning-rate schedule",
                details: "a per-update schedule needs max_iterations or max_epochs".into(),
            });
        }
        loop {
            let epoch = self.state.epoch;
            if let Some(limit) = config.max_epochs.filter(|&limit| epoch >= limit) {
                return Ok(self.report(StopReason::EpochCap { limit }, history));
            }
            let lr = config.schedule.rate(base_lr, epoch);
            optimizer.set_learning_rate(lr);
            order.iter_mut().enumerate().for_each(|(i, v)| *v = i);
            if config.shuffle {
                // Each epoch's order depends only on (seed, epoch): a resumed run
                // sees the same batches as an uninterrupted one.
                order.shuffle(&mut seeded_rng(config.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            }
            // Validation at the end of the last epoch switched to evaluation and back;
            // a user's network may come in either mode.
            net.set_training(true);
            observer.epoch_start(epoch, batches);
            let epoch_started = Instant::now();
            let mut compute = Duration::ZERO;
            // A run resumed mid-epoch starts after the batches done, from their sums.
            let progress = self.state.epoch_progress.take().unwrap_or_default();
            let (mut error, mut correct, mut seen, mut skipped) =
                (progress.error_sum, progress.correct, progress.samples, progress.skipped);
            let mut stop_requested = false;
            for (b, chunk) in order.chunks(config.batch_size).enumerate().skip(progress.batches) {
                let local = &chunk[share(chunk.len(), rank, processes)];
                if !local.is_empty() {
                    train.fill_training_batch(epoch, local, &mut inputs, &mut targets)?;
                }
                if config.schedule.per_iteration() {
                    let total = total_updates.unwrap_or(u64::MAX);
                    optimizer.set_learning_rate(config.schedule.rate_at_update(base_lr, self.state.iteration, total));
                }
                let step_started = Instant::now();
                let step = if processes == 1 {
                    let step = train_step(net, optimizer, loss, &inputs, targets.as_ref(), config.reduction, &mut grad);
                    step.map(|loss| StepOutcome { loss, correct: count_correct(&targets, net.output()), stop: false })
                } else {
                    let local = (!local.is_empty()).then(|| LocalBatch {
                        inputs: &inputs,
                        targets: targets.as_ref(),
                        labels: targets.labels(),
                    });
                    let time_up = config.max_time.is_some_and(|limit| started.elapsed() >= limit);
                    let (reduction, patterns) = (config.reduction, chunk.len());
                    distributed_step(
                        net,
                        optimizer,
                        loss,
                        local,
                        reduction,
                        patterns,
                        collective,
                        StepOptions { stop: time_up, shared_statistics },
                        &mut grad,
                        &mut buffers,
                    )
                };
                compute += step_started.elapsed();
                let batch_loss = match step {
                    Err(TrainError::NonFinite { what, .. }) => {
                        if config.non_finite == NonFinitePolicy::Stop {
                            return Err(TrainError::NonFinite {
                                what,
                                epoch: Some(epoch),
                                iteration: Some(self.state.iteration + 1),
                                samples: chunk.to_vec(),
                            });
                        }
                        skipped += 1;
                        None
                    }
                    other => Some(other?),
                };
                if let Some(StepOutcome { loss: batch_loss, correct: batch_correct, stop }) = batch_loss {
                    correct += batch_correct;
                    stop_requested = stop;
                    self.state.iteration += 1;
                    seen += chunk.len();
                    error += match config.reduction {
                        Reduction::Sum => batch_loss,
                        Reduction::Mean => batch_loss * chunk.len() as f64,
                        Reduction::MeanOf(patterns) => batch_loss * patterns as f64,
                    };
                }
                let accuracy = targets.labels().map(|_| correct as f64 / seen.max(1) as f64);
                let images_per_sec = seen as f64 / compute.as_secs_f64().max(1e-9);
                observer.batch_end(&BatchProgress {
                    epoch,
                    batch: b + 1,
                    batches,
                    iteration: self.state.iteration,
                    mean_loss: error / seen.max(1) as f64,
                    accuracy,
                    images_per_sec,
                });

                let epoch_done = b + 1 == batches;
                let mut stats = EpochStats {
                    epoch,
                    complete: epoch_done,
                    iterations: self.state.iteration,
                    samples: seen,
                    error_sum: error,
                    mean_loss: error / seen.max(1) as f64,
                    accuracy,
                    validation: None,
                    images_per_sec,
                    seconds: epoch_started.elapsed().as_secs_f64(),
                    learning_rate: optimizer.learning_rate(),
                    skipped_batches: skipped,
                };
                // Mid-epoch, the state says how far the epoch got: a checkpoint taken now,
                // or a later `fit` after a stop, goes on from the next batch.
                self.state.epoch_progress = (!epoch_done).then_some(EpochProgress {
                    batches: b + 1,
                    error_sum: error,
                    correct,
                    samples: seen,
                    skipped,
                });
                let (mut epoch_cap, mut early) = (None, None);
                if epoch_done && processes > 1 {
                    agree_at_epoch_end(net, collective, epoch, &mut buffers)?;
                }
                if epoch_done {
                    self.state.epoch += 1;
                    self.state.last_error = Some(error);
                    if let Some(val) = validation {
                        stats.validation = Some(evaluate_on(net, loss, val, config.eval_batch_size, collective)?);
                    }
                    early = self.update_early_stopping(&stats);
                    epoch_cap = config.max_epochs.filter(|&limit| self.state.epoch >= limit);
                    #[cfg(feature = "checkpoint")]
                    if let Some(path) = config.checkpoint.as_ref().filter(|_| rank == 0) {
                        checkpoint::save_checkpoint(path, net, optimizer, &self.state)?;
                    }
                }
                #[cfg(feature = "checkpoint")]
                if let (Some(path), Some(every)) = (&config.checkpoint, config.checkpoint_every) {
                    if rank == 0 && !epoch_done && self.state.iteration.is_multiple_of(every.max(1)) {
                        checkpoint::save_checkpoint(path, net, optimizer, &self.state)?;
                    }
                }
                // Step 5, in the documented order.
                let stop = config
                    .error_threshold
                    .and_then(|threshold| {
                        let error = self.state.last_error.filter(|&e| e <= threshold)?;
                        Some(StopReason::ErrorThreshold { error, threshold })
                    })
                    .or_else(|| {
                        let limit = config.max_iterations.filter(|&limit| self.state.iteration >= limit)?;
                        Some(StopReason::IterationCap { limit })
                    })
                    .or(epoch_cap.map(|limit| StopReason::EpochCap { limit }))
                    .or(early)
                    .or_else(|| {
                        // Several processes stop on process 0's clock, read in the step.
                        let up = |limit| if processes == 1 { started.elapsed() >= limit } else { stop_requested };
                        let limit = config.max_time.filter(|&limit| up(limit))?;
                        Some(StopReason::WallTime { limit })
                    });
                if epoch_done || stop.is_some() {
                    observer.epoch_end(&stats);
                    history.push(stats);
                }
                if let Some(reason) = stop {
                    return Ok(self.report(reason, history));
                }
            }
        }
    }

    /// Updates the early-stopping counters after an epoch; the rule's verdict.
    fn update_early_stopping(&mut self, stats: &EpochStats) -> Option<StopReason> {
        let (rule, val) = (self.config.early_stopping?, stats.validation.as_ref()?);
        // Both figures as "lower is better".
        let figure = match rule.monitor {
            Monitor::ValidationLoss => val.mean_loss,
            Monitor::ValidationAccuracy => -val.accuracy.unwrap_or(0.0),
        };
        // An improvement is lower by more than min_delta; an equal figure is not one.
        match self.state.best {
            Some((best, _)) if figure >= best - rule.min_delta => self.state.epochs_without_improvement += 1,
            _ => {
                self.state.best = Some((figure, stats.epoch));
                self.state.epochs_without_improvement = 0;
            }
        }
        if self.state.epochs_without_improvement < rule.patience {
            return None;
        }
        let (best, best_epoch) = self.state.best?;
        let best = if rule.monitor == Monitor::ValidationAccuracy { -best } else { best };
        Some(StopReason::EarlyStopping { best_epoch, best })
    }

    fn report(&self, reason: StopReason, history: Vec<EpochStats>) -> TrainReport {
        TrainReport { reason, iteration: self.state.iteration, epoch: self.state.epoch, history }
    }
}
