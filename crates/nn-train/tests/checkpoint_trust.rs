//! Checkpoints refuse what they cannot trust (malformed metadata, missing optimizer
//! buffers, non-finite values, corrupt bytes), name the file and the key, and never
//! leave a torn file or stale temporaries behind, even when the writer is killed.

mod common;

use common::{small_cnn, weights};
use nn_core::prelude::*;
use nn_train::checkpoint::{load_checkpoint, load_weights, save_checkpoint, save_weights, CheckpointError};
use nn_train::optim::{Adam, Optimizer, Sgd};
use nn_train::{TrainError, TrainerState};
use safetensors::tensor::{SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Rewrites the safetensors file at `path` with `edit` applied to its metadata and
/// its tensors (name → (dtype, shape, bytes)), keeping the checksum as written.
fn rewrite(
    path: &Path,
    edit: impl FnOnce(&mut HashMap<String, String>, &mut Vec<(String, (safetensors::Dtype, Vec<usize>, Vec<u8>))>),
) {
    let bytes = std::fs::read(path).unwrap();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta: HashMap<String, String> = metadata.metadata().clone().unwrap_or_default().into_iter().collect();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, (view.dtype(), view.shape().to_vec(), view.data().to_vec())))
        .collect();
    edit(&mut meta, &mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, (dtype, shape, data))| (name.clone(), TensorView::new(*dtype, shape.clone(), data).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

fn state() -> TrainerState {
    TrainerState { epoch: 2, iteration: 40, base_lr: Some(0.05), ..TrainerState::default() }
}

/// A checkpoint of a trained step (so that momentum buffers exist).
fn saved(path: &Path, optimizer: &mut dyn Optimizer<f32>) -> Sequential<f32> {
    let mut net = small_cnn(1);
    for p in net.params_mut() {
        p.grad.data_mut().fill(0.01);
    }
    optimizer.step(&mut net.params_mut()).unwrap();
    save_checkpoint(path, &net, &OptimizerRef(optimizer), &state()).unwrap();
    net
}

/// Lets a `dyn Optimizer` be passed where a sized one is asked for.
struct OptimizerRef<'a>(&'a mut dyn Optimizer<f32>);

impl Optimizer<f32> for OptimizerRef<'_> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn learning_rate(&self) -> f64 {
        self.0.learning_rate()
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.0.set_learning_rate(lr)
    }
    fn step(&mut self, params: &mut [&mut Param<f32>]) -> Result<(), TrainError> {
        self.0.step(params)
    }
    fn state(&self) -> nn_train::optim::OptimizerState<f32> {
        self.0.state()
    }
    fn load_state(
        &mut self,
        state: &nn_train::optim::OptimizerState<f32>,
        params: &[&Param<f32>],
    ) -> Result<(), TrainError> {
        self.0.load_state(state, params)
    }
}

#[test]
fn malformed_metadata_is_refused_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let cases = [
        ("trainer.epoch", "-5"),
        ("trainer.epoch", "NaN"),
        ("trainer.epoch", "inf"),
        ("trainer.epoch", "3.7"),
        ("trainer.iteration", "1e3"),
        ("trainer.base_lr", "-0.1"),
        ("optim.lr", "NaN"),
        ("optim.lr", "-1"),
        ("optim.lr", "inf"),
        ("optim.momentum", "NaN"),
        ("optim.momentum", "1.5"),
    ];
    for (key, value) in cases {
        saved(&path, &mut Sgd::new(0.05).momentum(0.9));
        rewrite(&path, |meta, _| {
            meta.insert(key.to_string(), value.to_string());
        });
        let mut net = small_cnn(7);
        let before = weights(&net);
        let err = load_checkpoint(&path, &mut net, &mut Sgd::<f32>::new(0.1)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ckpt.safetensors"), "{key} = {value}: {text}");
        let names_it = text.contains(key)
            || (key == "optim.lr" && text.contains("learning rate"))
            || (key == "optim.momentum" && text.contains("momentum"));
        assert!(names_it, "{key} = {value}: {text}");
        assert_eq!(weights(&net), before, "a refused checkpoint changes nothing");
    }
}

#[test]
fn an_adam_checkpoint_without_its_second_moments_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adam.safetensors");
    saved(&path, &mut Adam::new(1e-3));
    // Written as a version 1 file, which has no checksum to give the edit away.
    rewrite(&path, |meta, tensors| {
        tensors.retain(|(name, _)| !name.starts_with("optim.v."));
        meta.remove("crc32");
        meta.insert("format".into(), "nn-train-checkpoint-1".into());
    });
    let err = load_checkpoint(&path, &mut small_cnn(7), &mut Adam::<f32>::new(1e-3)).unwrap_err();
    assert!(err.to_string().contains("adam.safetensors") && err.to_string().contains("second-moment"), "{err}");
}

#[test]
fn non_finite_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let mut net = small_cnn(1);
    net.params_mut()[1].value.data_mut()[2] = f32::NAN;
    save_weights(&path, &net).unwrap();
    let err = load_weights(&path, &mut small_cnn(2)).unwrap_err();
    assert!(matches!(&err, CheckpointError::NonFinite { name, index: 2, .. } if name == "0.conv.bias"), "{err}");
}

#[test]
fn a_flipped_byte_fails_the_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    save_weights(&path, &small_cnn(1)).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let err = load_weights(&path, &mut small_cnn(2)).unwrap_err();
    assert!(matches!(err, CheckpointError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("w.safetensors"));
}

#[test]
fn stale_temporaries_go_and_concurrent_saves_do_not_collide() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    // What a writer killed mid-save leaves: a temporary of a process that is gone.
    let stale = dir.path().join(".ckpt.safetensors.tmp-4000000000-abcdef");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    let net = small_cnn(1);
    save_weights(&path, &net).unwrap();
    assert!(!stale.exists(), "the stale temporary is removed by the next save");
    // Eight threads saving to one path: every save succeeds, the file is whole.
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..5 {
                    save_weights(&path, &net).unwrap();
                }
            });
        }
    });
    let mut loaded = small_cnn(3);
    load_weights(&path, &mut loaded).unwrap();
    assert_eq!(weights(&loaded), weights(&net));
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("ckpt.safetensors")]);
}

/// The child side of the kill test: saves checkpoints of generations 1, 2, 3, … to
/// the path in `NN_TEST_CHECKPOINT_WRITER` until it is killed. Generation g has every
/// parameter equal to g and `trainer.epoch` g.
#[test]
fn checkpoint_writer_child() {
    let Some(path) = std::env::var_os("NN_TEST_CHECKPOINT_WRITER") else { return };
    let mut net = small_cnn(1);
    for generation in 1.. {
        for p in net.params_mut() {
            p.value.data_mut().fill(generation as f32);
        }
        let state = TrainerState { epoch: generation, ..TrainerState::default() };
        save_checkpoint(Path::new(&path), &net, &Sgd::<f32>::new(0.1), &state).unwrap();
    }
}

#[test]
fn a_writer_killed_mid_save_leaves_the_old_or_the_new_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let mut net = small_cnn(1);
    for p in net.params_mut() {
        p.value.data_mut().fill(0.0);
    }
    save_checkpoint(&path, &net, &Sgd::<f32>::new(0.1), &TrainerState::default()).unwrap();
    let exe = std::env::current_exe().unwrap();
    for round in 0..12u64 {
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "checkpoint_writer_child", "--nocapture"])
            .env("NN_TEST_CHECKPOINT_WRITER", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a different point of the save loop each round.
        std::thread::sleep(std::time::Duration::from_millis(40 + 17 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        let mut loaded = small_cnn(5);
        let state = load_checkpoint(&path, &mut loaded, &mut Sgd::<f32>::new(0.1)).unwrap();
        let generation = state.epoch as f32;
        assert!(
            loaded.params().iter().all(|p| p.value.data().iter().all(|&v| v == generation)),
            "round {round}: parameters of generation {generation} throughout"
        );
    }
    // The killed writers' temporaries are gone after the next save.
    save_checkpoint(&path, &net, &Sgd::<f32>::new(0.1), &TrainerState::default()).unwrap();
    let left = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(left, 1);
}

/// A saved file has the permissions of any file the process creates, not the private
/// ones of a temporary file.
#[cfg(unix)]
#[test]
fn saved_files_have_ordinary_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (saved, plain) = (dir.path().join("w.safetensors"), dir.path().join("plain"));
    save_weights(&saved, &small_cnn(1)).unwrap();
    std::fs::File::create(&plain).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&saved), mode(&plain));
}
