//! Saving and loading parameters and training state as safetensors files.
//!
//! - [`save_weights`] / [`load_weights`]: the network's parameters and buffers (batch
//!   normalisation's running estimates), named `"{layer index}.{layer kind}.{name}"`
//!   (e.g. `"0.conv.weight"`, `"1.batch_norm.running_mean"`), readable by the
//!   `safetensors` Python package.
//! - [`save_checkpoint`] / [`load_checkpoint`]: parameters (`"param.…"`), the
//!   network's buffers (`"buffer.…"`), optimizer buffers (`"optim.…"`), and the
//!   optimizer's scalars and the trainer's counters in the file's metadata.
//!
//! Files are written to a temporary file in the same directory, flushed to disk, then
//! renamed over the target: a crash mid-write leaves the previous file intact, and the
//! next save removes the temporary files such crashes left. The metadata holds a CRC-32
//! of every tensor's name and bytes. Loading checks the checksum, every name, shape and
//! element type, that every value is finite, and every metadata entry's type and
//! domain, and reports the first fault, naming the file and the key or tensor, before
//! changing anything in the network or the optimizer.

mod error;
mod file;

pub use error::CheckpointError;

use crate::optim::{Optimizer, OptimizerState};
use crate::trainer::{EpochProgress, TrainerState};
use crate::TrainError;
use file::{expect_format, parse, read_file, read_tensor, to_bytes, write_tensors, Bytes};
use nn_core::{Element, Network, Tensor};
use safetensors::tensor::SafeTensors;
use std::collections::HashMap;
use std::path::Path;

const FORMAT_KEY: &str = "format";
const CHECKSUM_KEY: &str = "crc32";
/// Version 2 carries [`CHECKSUM_KEY`]; version 1 files (without) still load.
const CHECKPOINT_FORMAT: &str = "nn-train-checkpoint-2";
const WEIGHTS_FORMAT: &str = "nn-train-weights-2";
const CHECKPOINT_FORMAT_V1: &str = "nn-train-checkpoint-1";
const WEIGHTS_FORMAT_V1: &str = "nn-train-weights-1";

/// The network's parameters and buffers read from a file.
struct NetworkValues<T: Element> {
    params: Vec<Tensor<T>>,
    buffers: Vec<Tensor<T>>,
}

/// Reads every parameter of `net` from `{param_prefix}{name}` tensors and every buffer
/// from `{buffer_prefix}{name}`, checking that each exists with the right shape and
/// type and that no other tensor under those prefixes exists.
fn read_network<T: Element, N: Network<T> + ?Sized>(
    path: &Path,
    file: &SafeTensors,
    net: &N,
    (param_prefix, buffer_prefix): (&str, &str),
) -> Result<NetworkValues<T>, CheckpointError> {
    let named = net.named_params();
    let buffers = net.named_buffers();
    let params = named
        .iter()
        .map(|(name, p)| read_tensor(path, file, &format!("{param_prefix}{name}"), Some(p.value.shape())))
        .collect::<Result<Vec<_>, _>>()?;
    let buffer_values = buffers
        .iter()
        .map(|(name, b)| read_tensor(path, file, &format!("{buffer_prefix}{name}"), Some(b.shape())))
        .collect::<Result<Vec<_>, _>>()?;
    let known = |n: &str| {
        let is = |prefix: &str, name: &str| n.strip_prefix(prefix) == Some(name);
        named.iter().any(|(name, _)| is(param_prefix, name)) || buffers.iter().any(|(name, _)| is(buffer_prefix, name))
    };
    let mut stray: Vec<String> = file
        .names()
        .into_iter()
        .filter(|n| (n.starts_with(param_prefix) || n.starts_with(buffer_prefix)) && !known(n))
        .map(String::from)
        .collect();
    stray.sort();
    if let Some(name) = stray.into_iter().next() {
        return Err(CheckpointError::Unexpected { path: path.into(), name });
    }
    Ok(NetworkValues { params, buffers: buffer_values })
}

fn assign<T: Element, N: Network<T> + ?Sized>(net: &mut N, values: NetworkValues<T>) {
    for (p, v) in net.params_mut().into_iter().zip(values.params) {
        p.value = v;
    }
    for ((_, b), v) in net.named_buffers_mut().into_iter().zip(values.buffers) {
        *b = v;
    }
}

/// Writes the network's parameters as a safetensors file.
///
/// # Errors
/// [`CheckpointError::Io`] naming the file when it cannot be written; the previous
/// file at `path`, if any, is then intact.
pub fn save_weights<T: Element, N: Network<T> + ?Sized>(path: &Path, net: &N) -> Result<(), CheckpointError> {
    let mut tensors: Vec<(String, Bytes)> =
        net.named_params().into_iter().map(|(n, p)| (n, to_bytes(&p.value))).collect();
    tensors.extend(net.named_buffers().into_iter().map(|(n, b)| (n, to_bytes(b))));
    let meta = HashMap::from([(FORMAT_KEY.to_string(), WEIGHTS_FORMAT.to_string())]);
    write_tensors(path, &tensors, meta)
}

/// Loads parameters written by [`save_weights`] into a network of the same structure.
///
/// # Errors
/// [`CheckpointError`] naming the file and the tensor or key at fault; the network is
/// then unchanged.
pub fn load_weights<T: Element, N: Network<T> + ?Sized>(path: &Path, net: &mut N) -> Result<(), CheckpointError> {
    let bytes = read_file(path)?;
    let (file, meta) = parse(path, &bytes)?;
    expect_format(path, &file, &meta, WEIGHTS_FORMAT, WEIGHTS_FORMAT_V1)?;
    let values = read_network(path, &file, net, ("", ""))?;
    assign(net, values);
    Ok(())
}

/// Writes parameters, optimizer state and trainer counters to `path`.
///
/// # Errors
/// [`CheckpointError::Io`] naming the file when it cannot be written; the previous
/// file at `path`, if any, is then intact.
pub fn save_checkpoint<T: Element, N: Network<T> + ?Sized, O: Optimizer<T>>(
    path: &Path,
    net: &N,
    optimizer: &O,
    state: &TrainerState,
) -> Result<(), CheckpointError> {
    let optim = optimizer.state();
    let mut tensors: Vec<(String, Bytes)> =
        net.named_params().into_iter().map(|(n, p)| (format!("param.{n}"), to_bytes(&p.value))).collect();
    tensors.extend(net.named_buffers().into_iter().map(|(n, b)| (format!("buffer.{n}"), to_bytes(b))));
    tensors.extend(optim.buffers.iter().map(|(n, t)| (format!("optim.{n}"), to_bytes(t))));

    let mut meta = HashMap::from([
        (FORMAT_KEY.to_string(), CHECKPOINT_FORMAT.to_string()),
        ("optimizer".to_string(), optimizer.name().to_string()),
        ("trainer.epoch".to_string(), state.epoch.to_string()),
        ("trainer.iteration".to_string(), state.iteration.to_string()),
        ("trainer.epochs_without_improvement".to_string(), state.epochs_without_improvement.to_string()),
    ]);
    // f64 Display is the shortest string that parses back to the same bits.
    let mut put = |key: &str, value: Option<f64>| {
        if let Some(v) = value {
            meta.insert(key.to_string(), v.to_string());
        }
    };
    put("trainer.last_error", state.last_error);
    put("trainer.base_lr", state.base_lr);
    put("trainer.best", state.best.map(|b| b.0));
    for (name, value) in &optim.scalars {
        put(&format!("optim.{name}"), Some(*value));
    }
    if let Some((_, best_epoch)) = state.best {
        meta.insert("trainer.best_epoch".to_string(), best_epoch.to_string());
    }
    if let Some(p) = &state.epoch_progress {
        for (key, value) in
            [("batches", p.batches), ("correct", p.correct), ("samples", p.samples), ("skipped", p.skipped)]
        {
            meta.insert(format!("trainer.epoch_progress.{key}"), value.to_string());
        }
        meta.insert("trainer.epoch_progress.error_sum".to_string(), p.error_sum.to_string());
    }
    write_tensors(path, &tensors, meta)
}

/// Loads a checkpoint written by [`save_checkpoint`] into `net` and `optimizer`, and
/// returns the trainer counters. The network and the optimizer are changed only if
/// everything fits; the optimizer must be of the kind that wrote the file.
///
/// # Errors
/// [`TrainError::Checkpoint`] naming the file and the tensor or metadata key at fault:
/// a checksum mismatch, a missing, misshapen or non-finite tensor, a counter that is
/// not a whole number, a scalar outside the optimizer's domain.
pub fn load_checkpoint<T: Element, N: Network<T> + ?Sized, O: Optimizer<T>>(
    path: &Path,
    net: &mut N,
    optimizer: &mut O,
) -> Result<TrainerState, TrainError> {
    let bytes = read_file(path)?;
    let (file, meta) = parse(path, &bytes)?;
    expect_format(path, &file, &meta, CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_V1)?;
    let meta_err =
        |key: &str, details: String| CheckpointError::Metadata { path: path.into(), key: key.into(), details };
    // A finite number (every scalar the trainer and the optimizers save is one).
    let get = |key: &str| -> Result<Option<f64>, CheckpointError> {
        let Some(text) = meta.get(key) else { return Ok(None) };
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            Ok(v) => Err(meta_err(key, format!("{v} is not finite"))),
            Err(e) => Err(meta_err(key, format!("{text:?}: {e}"))),
        }
    };
    let required = |key: &str| get(key)?.ok_or_else(|| meta_err(key, "missing".into()));
    // A counter: a whole number written as such ("3", not "3.0", "-5" or "inf").
    let count = |key: &str| -> Result<Option<u64>, CheckpointError> {
        let Some(text) = meta.get(key) else { return Ok(None) };
        text.parse::<u64>().map(Some).map_err(|e| meta_err(key, format!("{text:?} is not a count: {e}")))
    };
    let required_count = |key: &str| count(key)?.ok_or_else(|| meta_err(key, "missing".into()));
    let index = |key: &str| -> Result<usize, CheckpointError> {
        usize::try_from(required_count(key)?).map_err(|e| meta_err(key, e.to_string()))
    };
    match meta.get("optimizer") {
        Some(name) if name == optimizer.name() => {}
        found => {
            return Err(meta_err("optimizer", format!("file has {found:?}, loading into {:?}", optimizer.name())).into())
        }
    }
    let values = read_network(path, &file, net, ("param.", "buffer."))?;

    let mut state = OptimizerState::default();
    for key in meta.keys().filter_map(|k| k.strip_prefix("optim.")) {
        state.scalars.push((key.to_string(), required(&format!("optim.{key}"))?));
    }
    for name in file.names().into_iter().filter_map(|n| n.strip_prefix("optim.")) {
        state.buffers.push((name.to_string(), read_tensor(path, &file, &format!("optim.{name}"), None)?));
    }
    let best_epoch = count("trainer.best_epoch")?.map(usize::try_from).transpose();
    let trainer = TrainerState {
        epoch: index("trainer.epoch")?,
        iteration: required_count("trainer.iteration")?,
        last_error: get("trainer.last_error")?,
        base_lr: get("trainer.base_lr")?,
        best: get("trainer.best")?.zip(best_epoch.map_err(|e| meta_err("trainer.best_epoch", e.to_string()))?),
        epochs_without_improvement: index("trainer.epochs_without_improvement")?,
        epoch_progress: match count("trainer.epoch_progress.batches")? {
            None => None,
            Some(_) => Some(EpochProgress {
                batches: index("trainer.epoch_progress.batches")?,
                error_sum: required("trainer.epoch_progress.error_sum")?,
                correct: index("trainer.epoch_progress.correct")?,
                samples: index("trainer.epoch_progress.samples")?,
                skipped: index("trainer.epoch_progress.skipped")?,
            }),
        },
    };
    if let Some(lr) = trainer.base_lr.filter(|&lr| lr <= 0.0) {
        return Err(meta_err("trainer.base_lr", format!("{lr} is not positive")).into());
    }
    // The optimizer takes its state last of all checks, and all or nothing; the
    // network's values are assigned only after it accepted.
    {
        let params: Vec<_> = values
            .params
            .iter()
            .zip(net.params())
            .map(|(v, p)| nn_core::Param { name: p.name, value: v.clone(), grad: v.clone(), role: p.role })
            .collect();
        optimizer.load_state(&state, &params.iter().collect::<Vec<_>>()).map_err(|e| match e {
            TrainError::OptimizerState { details } => {
                TrainError::from(CheckpointError::OptimizerState { path: path.into(), details })
            }
            TrainError::Config { what, details } => TrainError::from(CheckpointError::OptimizerState {
                path: path.into(),
                details: format!("{what}: {details}"),
            }),
            other => other,
        })?;
    }
    assign(net, values);
    Ok(trainer)
}
