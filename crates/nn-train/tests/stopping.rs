//! Each stopping rule of Step 5 fires when it should, and reports itself.

mod common;

use common::{xor, xor_net};
use nn_core::prelude::*;
use nn_train::optim::Sgd;
use nn_train::{EarlyStopping, Monitor, NoProgress, StopReason, TrainConfig, TrainError, Trainer};
use std::time::Duration;

fn run(config: TrainConfig, lr: f64) -> Result<nn_train::TrainReport, TrainError> {
    let data = xor();
    Trainer::new(config).fit(&mut xor_net(1), &mut Sgd::new(lr), &MeanSquaredError, &data, Some(&data), &mut NoProgress)
}

fn full_batch() -> TrainConfig {
    TrainConfig { batch_size: 4, shuffle: false, ..TrainConfig::default() }
}

#[test]
fn iteration_cap() {
    let report = run(TrainConfig { batch_size: 1, max_iterations: Some(5), ..TrainConfig::default() }, 0.1).unwrap();
    assert_eq!(report.reason, StopReason::IterationCap { limit: 5 });
    assert_eq!((report.iteration, report.epoch), (5, 1));
    // One full epoch of 4 updates, then a partial one with 1.
    assert_eq!(report.history.len(), 2);
    assert!(report.history[0].complete && !report.history[1].complete);
}

#[test]
fn error_threshold_is_the_sum_over_the_last_pass() {
    let report =
        run(TrainConfig { error_threshold: Some(0.02), max_iterations: Some(50_000), ..full_batch() }, 0.5).unwrap();
    let StopReason::ErrorThreshold { error, threshold } = report.reason else { panic!("{:?}", report.reason) };
    assert!(error <= threshold);
    let last = report.history.last().unwrap();
    assert_eq!(last.error_sum, error);
    // The previous pass was still above the threshold.
    assert!(report.history[report.history.len() - 2].error_sum > threshold);
}

#[test]
fn error_threshold_comes_before_the_iteration_cap() {
    let first =
        run(TrainConfig { error_threshold: Some(0.02), max_iterations: Some(50_000), ..full_batch() }, 0.5).unwrap();
    // Both rules fire at the same update: the error threshold is checked first.
    let both =
        run(TrainConfig { error_threshold: Some(0.02), max_iterations: Some(first.iteration), ..full_batch() }, 0.5)
            .unwrap();
    assert!(matches!(both.reason, StopReason::ErrorThreshold { .. }), "{:?}", both.reason);
    assert_eq!(both.iteration, first.iteration);
}

#[test]
fn epoch_cap() {
    let report = run(TrainConfig { batch_size: 3, max_epochs: Some(3), ..TrainConfig::default() }, 0.1).unwrap();
    assert_eq!(report.reason, StopReason::EpochCap { limit: 3 });
    assert_eq!((report.epoch, report.iteration), (3, 6));
    assert_eq!(report.history.iter().map(|s| s.samples).collect::<Vec<_>>(), vec![4, 4, 4]);
}

#[test]
fn wall_time() {
    let report = run(TrainConfig { max_time: Some(Duration::ZERO), ..full_batch() }, 0.1).unwrap();
    assert_eq!(report.reason, StopReason::WallTime { limit: Duration::ZERO });
    assert_eq!(report.iteration, 1);
}

#[test]
fn early_stopping_on_a_flat_validation_loss() {
    // With a vanishing η no epoch improves by min_delta after the first (η = 0 itself
    // is refused as a learning rate).
    let rule = EarlyStopping { patience: 2, min_delta: 1e-9, monitor: Monitor::ValidationLoss };
    let report = run(TrainConfig { early_stopping: Some(rule), max_epochs: Some(100), ..full_batch() }, 1e-15).unwrap();
    let StopReason::EarlyStopping { best_epoch, .. } = report.reason else { panic!("{:?}", report.reason) };
    assert_eq!((best_epoch, report.epoch), (0, 3));
}

#[test]
fn configuration_errors() {
    assert!(matches!(run(full_batch(), 0.1), Err(TrainError::Config { what: "stopping rules", .. })));
    assert!(matches!(
        run(TrainConfig { batch_size: 0, max_epochs: Some(1), ..full_batch() }, 0.1),
        Err(TrainError::Config { .. })
    ));
    let data = xor();
    let mut wrong = Sequential::<f64>::builder(&[3], 0).dense(1).build().unwrap();
    let err = Trainer::new(TrainConfig { max_epochs: Some(1), ..full_batch() })
        .fit(&mut wrong, &mut Sgd::new(0.1), &MeanSquaredError, &data, None, &mut NoProgress)
        .unwrap_err();
    assert!(err.to_string().contains("samples have shape [2], the network takes [3]"), "{err}");
}

#[test]
fn per_update_schedules_follow_the_updates() {
    use nn_train::optim::{LrSchedule, Optimizer};
    let schedule = LrSchedule::CosineUpdates { warmup: 1, min_lr: 0.001 };
    let config = TrainConfig { batch_size: 1, max_epochs: Some(3), schedule, ..TrainConfig::default() };
    let (train, mut net) = (common::xor(), common::xor_net(1));
    let mut sgd = nn_train::optim::Sgd::new(0.1);
    let report =
        Trainer::new(config).fit(&mut net, &mut sgd, &MeanSquaredError, &train, None, &mut NoProgress).unwrap();
    assert_eq!(report.iteration, 12);
    // The last of 12 updates (11 after the warm-up) ran one step short of min_lr;
    // each epoch reports its last update's rate.
    let last = 0.001 + (0.1 - 0.001) * 0.5 * (1.0 + (std::f64::consts::PI * 10.0 / 11.0).cos());
    assert!((Optimizer::<f64>::learning_rate(&sgd) - last).abs() < 1e-15);
    let rates: Vec<f64> = report.history.iter().map(|s| s.learning_rate).collect();
    assert!(rates.windows(2).all(|w| w[1] < w[0]) && (rates[2] - last).abs() < 1e-15, "{rates:?}");
    // Without a length the schedule cannot be laid out.
    let open = TrainConfig { batch_size: 1, error_threshold: Some(0.0), schedule, ..TrainConfig::default() };
    let err = Trainer::new(open).fit(&mut net, &mut sgd, &MeanSquaredError, &train, None, &mut NoProgress);
    assert!(matches!(err, Err(TrainError::Config { what: "learning-rate schedule", .. })));
}
