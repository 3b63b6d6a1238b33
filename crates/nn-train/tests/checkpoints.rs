//! Weights and checkpoints: round trips, resuming identically, mismatches reported,
//! and writes that never destroy the previous file.

mod common;

use common::{small_cnn, subset, weights};
use nn_core::prelude::*;
use nn_train::checkpoint::{load_checkpoint, load_weights, save_checkpoint, save_weights, CheckpointError};
use nn_train::data::ClassificationSet;
use nn_train::optim::{Adam, Optimizer, Sgd};
use nn_train::{NoProgress, TrainConfig, TrainError, Trainer};
use std::path::Path;

fn config(epochs: usize, checkpoint: Option<&Path>) -> TrainConfig {
    TrainConfig {
        batch_size: 32,
        seed: 5,
        reduction: Reduction::Mean,
        max_epochs: Some(epochs),
        checkpoint: checkpoint.map(Path::to_path_buf),
        ..TrainConfig::default()
    }
}

fn data() -> ClassificationSet {
    let (mut train, _) = subset();
    train.truncate(160);
    train
}

fn resume_matches_uninterrupted<O: Optimizer<f32>>(make: impl Fn() -> O) {
    let train = data();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt.safetensors");

    let mut straight = small_cnn(1);
    Trainer::new(config(3, None))
        .fit(&mut straight, &mut make(), &SoftmaxCrossEntropy, &train, None, &mut NoProgress)
        .unwrap();

    let mut first = small_cnn(1);
    Trainer::new(config(1, Some(&ckpt)))
        .fit(&mut first, &mut make(), &SoftmaxCrossEntropy, &train, None, &mut NoProgress)
        .unwrap();
    // A fresh network and optimizer, as after a restart.
    let (mut resumed, mut optimizer) = (small_cnn(99), make());
    let mut trainer = Trainer::resume(config(3, None), &ckpt, &mut resumed, &mut optimizer).unwrap();
    assert_eq!((trainer.state().epoch, trainer.state().iteration), (1, 5));
    let report =
        trainer.fit(&mut resumed, &mut optimizer, &SoftmaxCrossEntropy, &train, None, &mut NoProgress).unwrap();
    assert_eq!(report.iteration, 15);
    assert_eq!(weights(&resumed), weights(&straight));
}

#[test]
fn resume_with_sgd_momentum_is_identical() {
    resume_matches_uninterrupted(|| Sgd::new(0.05).momentum(0.9).nesterov(true).weight_decay(1e-4));
}

#[test]
fn resume_with_adamw_is_identical() {
    resume_matches_uninterrupted(|| Adam::adamw(1e-3, 0.01));
}

#[test]
fn weights_round_trip_and_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let net = small_cnn(1);
    save_weights(&path, &net).unwrap();
    let mut other = small_cnn(2);
    assert_ne!(weights(&other), weights(&net));
    load_weights(&path, &mut other).unwrap();
    assert_eq!(weights(&other), weights(&net));

    // A network with a different second convolution: the first differing tensor is named.
    let mut wider = Sequential::<f32>::builder(&[1, 28, 28], 0)
        .conv(ConvSpec::new(4, &[5, 5]).padding(&[2, 2]))
        .relu()
        .max_pool(&[2, 2])
        .conv(ConvSpec::new(7, &[3, 3]).stride(&[2, 2]).rounding(OutputRounding::Floor))
        .relu()
        .flatten()
        .dense(10)
        .build()
        .unwrap();
    let before = weights(&wider);
    let err = load_weights(&path, &mut wider).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::Shape { name, expected, found, .. } if name == "3.conv.weight" && expected == &[7, 4, 3, 3] && found == &[6, 4, 3, 3]),
        "{err}"
    );
    assert_eq!(weights(&wider), before, "a failed load changes nothing");

    let mut as_f64 =
        Sequential::<f64>::builder(&[1, 28, 28], 0).conv(ConvSpec::new(4, &[5, 5]).padding(&[2, 2])).build().unwrap();
    let err = load_weights(&path, &mut as_f64).unwrap_err();
    assert!(matches!(err, CheckpointError::Dtype { expected: "F64", .. }), "{err}");

    let mut fewer =
        Sequential::<f32>::builder(&[1, 28, 28], 0).conv(ConvSpec::new(4, &[5, 5]).padding(&[2, 2])).build().unwrap();
    assert!(matches!(load_weights(&path, &mut fewer), Err(CheckpointError::Unexpected { .. })));

    std::fs::write(&path, b"not safetensors").unwrap();
    assert!(matches!(load_weights(&path, &mut other), Err(CheckpointError::Format { .. })));
}

#[test]
fn checkpoint_checks_the_optimizer_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    let net = small_cnn(1);
    save_checkpoint(&path, &net, &Sgd::<f32>::new(0.1), &Default::default()).unwrap();
    let err = load_checkpoint(&path, &mut small_cnn(1), &mut Adam::<f32>::new(0.1)).unwrap_err();
    assert!(
        matches!(err, TrainError::Checkpoint(CheckpointError::Metadata { ref key, .. }) if key == "optimizer"),
        "{err}"
    );
    assert!(matches!(load_weights(&path, &mut small_cnn(1)), Err(CheckpointError::Metadata { .. })));
}

#[test]
fn a_refused_checkpoint_changes_neither_network_nor_optimizer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    let (mut saved_net, data) = (small_cnn(1), data());
    let mut sgd = Sgd::new(0.3).momentum(0.9);
    Trainer::new(TrainConfig { max_iterations: Some(2), ..config(1, None) })
        .fit(&mut saved_net, &mut sgd, &SoftmaxCrossEntropy, &data, None, &mut NoProgress)
        .unwrap();
    let counters = nn_train::TrainerState { epoch: 7, ..Default::default() };
    save_checkpoint(&path, &saved_net, &sgd, &counters).unwrap();
    // Corrupt the last thing read, a trainer counter (same length: the header's size
    // stays right), so that every other part of the file is valid.
    let mut bytes = std::fs::read(&path).unwrap();
    let key = br#""trainer.epoch":"7""#;
    let at = bytes.windows(key.len()).position(|w| w == key).expect("counter in the header");
    bytes[at + key.len() - 2] = b'x';
    std::fs::write(&path, bytes).unwrap();

    let (mut net, mut fresh) = (small_cnn(2), Sgd::<f32>::new(0.7));
    let before = (weights(&net), fresh.state());
    let err = load_checkpoint(&path, &mut net, &mut fresh).unwrap_err();
    assert!(
        matches!(err, TrainError::Checkpoint(CheckpointError::Metadata { ref key, .. }) if key == "trainer.epoch"),
        "{err}"
    );
    assert_eq!((weights(&net), fresh.state()), before);
}

#[test]
fn an_interrupted_write_leaves_the_previous_checkpoint_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    let net = small_cnn(1);
    save_weights(&path, &net).unwrap();
    let good = std::fs::read(&path).unwrap();
    // A crash mid-write leaves a partial temporary file beside the checkpoint, never a
    // partial checkpoint: simulate one.
    std::fs::write(dir.path().join(format!(".c.safetensors.tmp-{}", std::process::id() + 1)), &good[..100]).unwrap();
    let mut loaded = small_cnn(2);
    load_weights(&path, &mut loaded).unwrap();
    assert_eq!(weights(&loaded), weights(&net));
    // A write that fails (the target is a directory) leaves nothing half-done.
    let blocked = dir.path().join("blocked");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("keep"), b"x").unwrap();
    assert!(save_weights(&blocked, &net).is_err());
    assert!(blocked.join("keep").exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".blocked.tmp"))
        .collect();
    assert!(leftovers.is_empty());
    // Saving over an existing checkpoint replaces it whole.
    save_weights(&path, &small_cnn(3)).unwrap();
    load_weights(&path, &mut loaded).unwrap();
    assert_eq!(weights(&loaded), weights(&small_cnn(3)));
}

/// A checkpoint taken at any update, mid-epoch included, resumes exactly: the weights
/// at the end equal those of the run that was never interrupted, and so do the
/// per-epoch figures.
#[test]
fn resume_from_any_update_is_identical() {
    let train = data();
    let make = || Sgd::new(0.05).momentum(0.9);
    let dir = tempfile::tempdir().unwrap();
    let mut straight = small_cnn(1);
    let straight_report = Trainer::new(config(2, None))
        .fit(&mut straight, &mut make(), &SoftmaxCrossEntropy, &train, None, &mut NoProgress)
        .unwrap();
    // 160 samples in batches of 32: five updates an epoch. Stop after update k (k = 3
    // and 7 are mid-epoch, 5 an epoch's end) with checkpoints every update.
    for stop_at in [3u64, 5, 7] {
        let ckpt = dir.path().join(format!("ckpt-{stop_at}.safetensors"));
        let first = TrainConfig { max_iterations: Some(stop_at), checkpoint_every: Some(1), ..config(2, Some(&ckpt)) };
        Trainer::new(first)
            .fit(&mut small_cnn(1), &mut make(), &SoftmaxCrossEntropy, &train, None, &mut NoProgress)
            .unwrap();
        let (mut resumed, mut optimizer) = (small_cnn(99), make());
        let mut trainer = Trainer::resume(config(2, None), &ckpt, &mut resumed, &mut optimizer).unwrap();
        assert_eq!(trainer.state().iteration, stop_at);
        let report =
            trainer.fit(&mut resumed, &mut optimizer, &SoftmaxCrossEntropy, &train, None, &mut NoProgress).unwrap();
        assert_eq!(report.iteration, 10);
        assert_eq!(weights(&resumed), weights(&straight), "stopped after update {stop_at}");
        let last = |r: &nn_train::TrainReport| {
            let s = r.history.last().unwrap().clone();
            (s.epoch, s.samples, s.error_sum.to_bits(), s.accuracy.map(f64::to_bits))
        };
        assert_eq!(last(&report), last(&straight_report), "stopped after update {stop_at}");
    }
}

fn bn_cnn(seed: u64) -> Sequential<f32> {
    Sequential::builder(&[1, 28, 28], seed)
        .conv(ConvSpec::new(4, &[3, 3]).stride(&[2, 2]).bias(false).rounding(OutputRounding::Floor))
        .batch_norm()
        .relu()
        .global_avg_pool()
        .dense(10)
        .build()
        .unwrap()
}

fn running_stats(net: &Sequential<f32>) -> Vec<Vec<f32>> {
    net.named_buffers().into_iter().map(|(_, b)| b.data().to_vec()).collect()
}

/// Batch normalisation's running estimates are saved and restored with the weights,
/// and a resumed run with them is the uninterrupted one to the bit.
#[test]
fn batch_norm_running_estimates_are_checkpointed() {
    let train = data();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("bn.safetensors");
    let make = || Sgd::new(0.05).momentum(0.9);
    let mut straight = bn_cnn(1);
    Trainer::new(config(2, None))
        .fit(&mut straight, &mut make(), &SoftmaxCrossEntropy, &train, None, &mut NoProgress)
        .unwrap();
    assert_ne!(running_stats(&straight), running_stats(&bn_cnn(1)), "training moved the estimates");

    Trainer::new(config(1, Some(&ckpt)))
        .fit(&mut bn_cnn(1), &mut make(), &SoftmaxCrossEntropy, &train, None, &mut NoProgress)
        .unwrap();
    let (mut resumed, mut optimizer) = (bn_cnn(9), make());
    let mut trainer = Trainer::resume(config(2, None), &ckpt, &mut resumed, &mut optimizer).unwrap();
    trainer.fit(&mut resumed, &mut optimizer, &SoftmaxCrossEntropy, &train, None, &mut NoProgress).unwrap();
    assert_eq!(weights(&resumed), weights(&straight));
    assert_eq!(running_stats(&resumed), running_stats(&straight));

    let path = dir.path().join("w.safetensors");
    save_weights(&path, &straight).unwrap();
    let mut loaded = bn_cnn(3);
    load_weights(&path, &mut loaded).unwrap();
    assert_eq!(running_stats(&loaded), running_stats(&straight));
    // A file without the estimates does not fit a network that has them.
    let mut no_bn = Sequential::<f32>::builder(&[1, 28, 28], 0)
        .conv(ConvSpec::new(4, &[3, 3]).stride(&[2, 2]).bias(false).rounding(OutputRounding::Floor))
        .relu()
        .global_avg_pool()
        .dense(10)
        .build()
        .unwrap();
    let no_bn_path = dir.path().join("plain.safetensors");
    save_weights(&no_bn_path, &no_bn).unwrap();
    let err = load_weights(&no_bn_path, &mut loaded).unwrap_err();
    assert!(matches!(&err, CheckpointError::Missing { .. }), "{err}");
    let err = load_weights(&path, &mut no_bn).unwrap_err();
    assert!(matches!(err, CheckpointError::Missing { .. } | CheckpointError::Unexpected { .. }), "{err}");
}

/// `evaluate` uses the running estimates and leaves the network in its mode.
#[test]
fn evaluation_runs_in_evaluation_mode() {
    let train = data();
    let mut net = bn_cnn(1);
    let eval = nn_train::evaluate(&mut net, &SoftmaxCrossEntropy, &train, 32).unwrap();
    assert!(net.is_training(), "the mode it came in");
    // Fresh running estimates (mean 0, variance 1) and batch statistics differ, so
    // the losses tell which were used.
    net.set_training(false);
    let by_running = nn_train::evaluate(&mut net, &SoftmaxCrossEntropy, &train, 32).unwrap();
    assert!(!net.is_training());
    assert_eq!(eval.mean_loss.to_bits(), by_running.mean_loss.to_bits());
    assert!(running_stats(&net).iter().flatten().zip([0.0f32; 4].iter().chain(&[1.0; 4])).all(|(a, b)| a == b));
}

/// Dropout's generator is saved with the weights: a run resumed mid-epoch draws the
/// masks the uninterrupted run drew, and ends with its weights to the bit.
#[test]
fn dropout_resumes_with_its_masks() {
    let train = data();
    let net = |seed| {
        Sequential::<f32>::builder(&[1, 28, 28], seed)
            .conv(ConvSpec::new(4, &[5, 5]).stride(&[3, 3]).rounding(OutputRounding::Floor))
            .relu()
            .flatten()
            .dropout(0.3)
            .dense(10)
            .build()
            .unwrap()
    };
    let make = || Sgd::new(0.05).momentum(0.9);
    let mut straight = net(1);
    Trainer::new(config(2, None))
        .fit(&mut straight, &mut make(), &SoftmaxCrossEntropy, &train, None, &mut NoProgress)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("dropout.safetensors");
    let first = TrainConfig { max_iterations: Some(7), checkpoint_every: Some(7), ..config(2, Some(&ckpt)) };
    Trainer::new(first).fit(&mut net(1), &mut make(), &SoftmaxCrossEntropy, &train, None, &mut NoProgress).unwrap();
    let (mut resumed, mut optimizer) = (net(42), make());
    let mut trainer = Trainer::resume(config(2, None), &ckpt, &mut resumed, &mut optimizer).unwrap();
    trainer.fit(&mut resumed, &mut optimizer, &SoftmaxCrossEntropy, &train, None, &mut NoProgress).unwrap();
    assert_eq!(weights(&resumed), weights(&straight));
}

/// A residual graph trains, evaluates and resumes as a chain does: names by scope,
/// running estimates included, the uninterrupted run's weights to the bit.
#[test]
fn a_residual_graph_trains_and_resumes_exactly() {
    fn graph(seed: u64) -> Graph<f32> {
        let mut g = GraphBuilder::new(&[1, 28, 28], seed);
        let x = g.input();
        let spec = |c: usize, s: usize| {
            ConvSpec::new(c, &[3, 3]).stride(&[s, s]).padding(&[1, 1]).bias(false).rounding(OutputRounding::Floor)
        };
        let stem = g.conv("stem", x, spec(4, 2));
        let stem = g.relu("stem_relu", stem);
        let block = g.scope("stage1.block0", |g| {
            let h = g.conv("conv1", stem, spec(4, 1));
            let h = g.batch_norm("bn1", h);
            let h = g.relu("relu1", h);
            let sum = g.add("add", h, stem);
            g.relu("relu2", sum)
        });
        let pooled = g.global_avg_pool("pool", block);
        let out = g.dense("fc", pooled, 10);
        g.build(out).unwrap()
    }
    let train = data();
    let make = || Sgd::new(0.05).momentum(0.9);
    let mut straight = graph(1);
    let report = Trainer::new(config(2, None))
        .fit(&mut straight, &mut make(), &SoftmaxCrossEntropy, &train, None, &mut NoProgress)
        .unwrap();
    assert_eq!(report.iteration, 10);
    let eval = nn_train::evaluate(&mut straight, &SoftmaxCrossEntropy, &train, 32).unwrap();
    assert!(eval.mean_loss.is_finite() && straight.is_training());

    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("graph.safetensors");
    let first = TrainConfig { max_iterations: Some(3), checkpoint_every: Some(3), ..config(2, Some(&ckpt)) };
    Trainer::new(first).fit(&mut graph(1), &mut make(), &SoftmaxCrossEntropy, &train, None, &mut NoProgress).unwrap();
    let (mut resumed, mut optimizer) = (graph(5), make());
    let mut trainer = Trainer::resume(config(2, None), &ckpt, &mut resumed, &mut optimizer).unwrap();
    trainer.fit(&mut resumed, &mut optimizer, &SoftmaxCrossEntropy, &train, None, &mut NoProgress).unwrap();
    let values = |g: &Graph<f32>| g.params().iter().map(|p| p.value.data().to_vec()).collect::<Vec<_>>();
    assert_eq!(values(&resumed), values(&straight));
    let names: Vec<String> = resumed.named_buffers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["stage1.block0.bn1.running_mean", "stage1.block0.bn1.running_var"]);
}
