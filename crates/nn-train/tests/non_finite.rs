//! Training that goes non-finite stops at the step where it happens, says where, and
//! keeps the last good weights; or, if asked, skips the batch.

mod common;

use common::subset;
use nn_core::prelude::*;
use nn_train::data::{ClassificationSet, TensorSet};
use nn_train::optim::Sgd;
use nn_train::{NoProgress, NonFinitePolicy, TrainConfig, TrainError, Trainer};

fn mlp(seed: u64) -> Sequential<f32> {
    Sequential::builder(&[784], seed).dense(32).relu().dense(10).build().unwrap()
}

fn data() -> ClassificationSet {
    let (train, _) = subset();
    let mut train = train.with_sample_shape(&[784]).unwrap();
    train.truncate(512);
    train
}

fn config() -> TrainConfig {
    TrainConfig { batch_size: 32, seed: 3, reduction: Reduction::Mean, max_epochs: Some(3), ..TrainConfig::default() }
}

#[test]
fn a_diverging_learning_rate_stops_training_with_the_step_named() {
    // T1's network at η = 10^6 overflows within a few updates.
    let mut net = Sequential::<f32>::builder(&[784], 1).dense(256).relu().dense(128).relu().dense(10).build().unwrap();
    let mut sgd = Sgd::new(1e6).momentum(0.9);
    let err = Trainer::new(config())
        .fit(&mut net, &mut sgd, &SoftmaxCrossEntropy, &data(), None, &mut NoProgress)
        .unwrap_err();
    let TrainError::NonFinite { what, epoch, iteration, samples } = &err else { panic!("{err}") };
    assert_eq!(*epoch, Some(0));
    assert!(iteration.is_some_and(|i| i >= 2), "{err}");
    assert_eq!(samples.len(), 32);
    assert!(what.starts_with("loss") || what.starts_with("gradient of"), "{err}");
    // The update that went non-finite was not applied.
    assert!(net.params().iter().all(|p| p.value.data().iter().all(|v| v.is_finite())), "{err}");
    assert!(err.to_string().contains("the weights are those before this update"));
}

#[test]
fn one_nan_pixel_is_caught_in_the_batch_that_holds_it() {
    // Eight patterns of four inputs, one NaN: ReLU passes it on, so the loss shows it.
    let mut inputs: Vec<f64> = (0..32).map(|i| (i % 5) as f64 * 0.1).collect();
    inputs[4 * 5 + 2] = f64::NAN;
    let targets: Vec<f64> = (0..8).map(|i| (i % 2) as f64).collect();
    let set = TensorSet::new(Tensor::from_vec(&[8, 4], inputs).unwrap(), Tensor::from_vec(&[8, 1], targets).unwrap())
        .unwrap();
    let mut net = Sequential::<f64>::builder(&[4], 2).dense(6).relu().dense(1).build().unwrap();
    let before: Vec<Vec<f64>> = net.params().iter().map(|p| p.value.data().to_vec()).collect();
    let config = TrainConfig { batch_size: 4, shuffle: false, max_epochs: Some(1), ..TrainConfig::default() };
    let err = Trainer::new(config)
        .fit(&mut net, &mut Sgd::new(0.1), &MeanSquaredError, &set, None, &mut NoProgress)
        .unwrap_err();
    let TrainError::NonFinite { what, iteration, samples, .. } = &err else { panic!("{err}") };
    assert_eq!(samples, &[4, 5, 6, 7]);
    assert_eq!(*iteration, Some(2));
    assert!(what.contains("first non-finite output: layer 0, dense"), "{err}");
    // The first batch's update was applied, the second's was not: weights are finite.
    let after: Vec<Vec<f64>> = net.params().iter().map(|p| p.value.data().to_vec()).collect();
    assert_ne!(before, after);
    assert!(after.iter().flatten().all(|v| v.is_finite()));
    // Loading can refuse such data up front.
    let err = TensorSet::new_finite(set_inputs_with_nan(), Tensor::zeros(&[8, 1]).unwrap()).unwrap_err();
    assert!(err.to_string().contains("pattern 5") && err.to_string().contains("element 2"), "{err}");
}

fn set_inputs_with_nan() -> Tensor<f64> {
    let mut inputs = vec![0.5; 32];
    inputs[4 * 5 + 2] = f64::NAN;
    Tensor::from_vec(&[8, 4], inputs).unwrap()
}

#[test]
fn skipping_policy_trains_on_past_a_bad_batch() {
    let mut inputs: Vec<f64> = (0..32).map(|i| (i % 5) as f64 * 0.1).collect();
    inputs[4 * 5 + 2] = f64::INFINITY;
    let targets: Vec<f64> = (0..8).map(|i| (i % 2) as f64).collect();
    let set = TensorSet::new(Tensor::from_vec(&[8, 4], inputs).unwrap(), Tensor::from_vec(&[8, 1], targets).unwrap())
        .unwrap();
    let mut net = Sequential::<f64>::builder(&[4], 2).dense(6).relu().dense(1).build().unwrap();
    let config = TrainConfig {
        batch_size: 4,
        shuffle: false,
        max_epochs: Some(3),
        non_finite: NonFinitePolicy::SkipBatch,
        ..TrainConfig::default()
    };
    let report =
        Trainer::new(config).fit(&mut net, &mut Sgd::new(0.1), &MeanSquaredError, &set, None, &mut NoProgress).unwrap();
    assert_eq!(report.iteration, 3, "one update per epoch, the other batch skipped");
    assert!(report.history.iter().all(|s| s.skipped_batches == 1 && s.samples == 4 && s.mean_loss.is_finite()));
    assert!(net.params().iter().all(|p| p.value.data().iter().all(|v| v.is_finite())));
}

#[test]
fn hyper_parameters_outside_their_domain_are_refused_before_training() {
    let run = |sgd: Sgd<f32>, config: TrainConfig| {
        Trainer::new(config).fit(&mut mlp(1), &mut sgd.clone(), &SoftmaxCrossEntropy, &data(), None, &mut NoProgress)
    };
    for lr in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
        let err = run(Sgd::new(lr), config()).unwrap_err();
        assert!(matches!(err, TrainError::Config { .. }), "lr {lr}: {err}");
        assert!(err.to_string().contains("learning rate"), "{err}");
    }
    for momentum in [f64::NAN, 1.0, -0.1] {
        let err = run(Sgd::new(0.1).momentum(momentum), config()).unwrap_err();
        assert!(err.to_string().contains("momentum"), "{err}");
    }
    let err = run(Sgd::new(0.1), TrainConfig { batch_size: 0, ..config() }).unwrap_err();
    assert!(err.to_string().contains("batch size"), "{err}");
    let err = run(Sgd::new(0.1), TrainConfig { error_threshold: Some(f64::NAN), ..config() }).unwrap_err();
    assert!(err.to_string().contains("error threshold"), "{err}");
    // An empty validation or evaluation set is refused, not reported as 0% of nothing.
    let empty = {
        let mut d = data();
        d.truncate(0);
        d
    };
    let err = Trainer::new(config())
        .fit(&mut mlp(1), &mut Sgd::new(0.1), &SoftmaxCrossEntropy, &data(), Some(&empty), &mut NoProgress)
        .unwrap_err();
    assert!(err.to_string().contains("validation data"), "{err}");
    let err = nn_train::evaluate(&mut mlp(1), &SoftmaxCrossEntropy, &empty, 32).unwrap_err();
    assert!(err.to_string().contains("evaluation data"), "{err}");
}
