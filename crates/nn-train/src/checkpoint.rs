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

use crate::optim::{Optimizer, OptimizerState};
use crate::trainer::{EpochProgress, TrainerState};
use crate::TrainError;
use nn_core::{Element, Network, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

const FORMAT_KEY: &str = "format";
const CHECKSUM_KEY: &str = "crc32";
/// Version 2 carries [`CHECKSUM_KEY`]; version 1 files (without) still load.
const CHECKPOINT_FORMAT: &str = "nn-train-checkpoint-2";
const WEIGHTS_FORMAT: &str = "nn-train-weights-2";
const CHECKPOINT_FORMAT_V1: &str = "nn-train-checkpoint-1";
const WEIGHTS_FORMAT_V1: &str = "nn-train-weights-1";

/// A checkpoint or weights file that cannot be written or does not fit.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid safetensors.
    #[error("{path}: not a valid safetensors file: {details}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        details: String,
    },
    /// A tensor the network or optimizer needs is absent.
    #[error("{path}: missing tensor {name:?}")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
    },
    /// The file holds a tensor nothing in the network corresponds to.
    #[error("{path}: unexpected tensor {name:?} (the network has no such parameter)")]
    Unexpected {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
    },
    /// A tensor's shape differs from the parameter's.
    #[error("{path}: tensor {name:?} has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The parameter's shape.
        expected: Vec<usize>,
        /// The file's shape.
        found: Vec<usize>,
    },
    /// A tensor's element type differs from the network's.
    #[error("{path}: tensor {name:?} has element type {found}, expected {expected}")]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The network's type.
        expected: &'static str,
        /// The file's type.
        found: String,
    },
    /// A tensor holds a NaN or an infinity.
    #[error("{path}: tensor {name:?} holds a non-finite value at element {index}")]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The first non-finite element.
        index: usize,
    },
    /// The tensors' bytes do not match the checksum written with them.
    #[error("{path}: checksum mismatch (file says {expected:08x}, data gives {found:08x}): the file is corrupt")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The checksum in the metadata.
        expected: u32,
        /// The checksum of the data read.
        found: u32,
    },
    /// The optimizer refused the saved state.
    #[error("{path}: optimizer state: {details}")]
    OptimizerState {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        details: String,
    },
    /// A metadata entry is missing or malformed.
    #[error("{path}: metadata {key:?}: {details}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        details: String,
    },
}

/// A tensor serialised as little-endian bytes.
struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn dtype_of<T: Element>() -> Dtype {
    if T::DTYPE == "F32" {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

fn to_bytes<T: Element>(tensor: &Tensor<T>) -> Bytes {
    let data = match dtype_of::<T>() {
        Dtype::F32 => tensor.data().iter().flat_map(|v| (v.as_f64() as f32).to_le_bytes()).collect(),
        _ => tensor.data().iter().flat_map(|v| v.as_f64().to_le_bytes()).collect(),
    };
    Bytes { dtype: dtype_of::<T>(), shape: tensor.shape().to_vec(), data }
}

/// Reads tensor `name` as T, checking element type and (when given) shape.
fn read_tensor<T: Element>(
    path: &Path,
    file: &SafeTensors,
    name: &str,
    expected_shape: Option<&[usize]>,
) -> Result<Tensor<T>, CheckpointError> {
    let view = file.tensor(name).map_err(|_| CheckpointError::Missing { path: path.into(), name: name.into() })?;
    if view.dtype() != dtype_of::<T>() {
        return Err(CheckpointError::Dtype {
            path: path.into(),
            name: name.into(),
            expected: T::DTYPE,
            found: format!("{:?}", view.dtype()),
        });
    }
    if let Some(expected) = expected_shape.filter(|&e| e != view.shape()) {
        return Err(CheckpointError::Shape {
            path: path.into(),
            name: name.into(),
            expected: expected.to_vec(),
            found: view.shape().to_vec(),
        });
    }
    let values: Vec<T> = match view.dtype() {
        Dtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|b| T::from_f64(f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64))
            .collect(),
        _ => view
            .data()
            .chunks_exact(8)
            .map(|b| T::from_f64(f64::from_le_bytes(b.try_into().expect("8 bytes"))))
            .collect(),
    };
    if !nn_kernels::elementwise::all_finite(&values) {
        let index = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(CheckpointError::NonFinite { path: path.into(), name: name.into(), index });
    }
    Tensor::from_vec(view.shape(), values)
        .map_err(|e| CheckpointError::Format { path: path.into(), details: e.to_string() })
}

/// Writes `bytes` to `path` through a temporary file of a unique name in the same
/// directory, flushed to disk, then renamed over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.into(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().ok_or_else(|| io(std::io::Error::other("the path names no file")))?;
    let prefix = format!(".{}.tmp-", file_name.to_string_lossy());
    remove_stale_temporaries(dir, &prefix);
    // Dropped on an error, the temporary file is removed. The name carries this
    // process's id, so that a later save can tell a crashed writer's leftovers.
    let own_prefix = format!("{prefix}{}-", std::process::id());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&own_prefix);
    // A checkpoint gets the permissions any new file gets (0666 less the umask), not
    // the private 0600 of a temporary file.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    // The data must be on disk before the rename makes it the checkpoint.
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    // Persist the rename itself (the directory entry); not possible on every OS.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes the temporary files `{prefix}{pid}-…` that saves by processes no longer
/// running left behind (killed mid-write). A live process's files, this one's
/// included, are left alone: another thread or process may be writing them. Where a
/// process's liveness cannot be told (no `/proc`), files older than a day go.
fn remove_stale_temporaries(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let proc_fs = Path::new("/proc/self").exists();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let stale = if proc_fs {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        } else {
            let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            age.is_some_and(|age| age.as_secs() > 24 * 3600)
        };
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// CRC-32 of every tensor's name and bytes, in name order.
fn checksum<'a>(tensors: impl Iterator<Item = (&'a str, &'a [u8])>) -> u32 {
    let mut sorted: Vec<_> = tensors.collect();
    sorted.sort_by_key(|&(name, _)| name);
    let mut hasher = crc32fast::Hasher::new();
    for (name, bytes) in sorted {
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hasher.finalize()
}

/// Serialises `tensors` with `meta` and the checksum, and writes them atomically.
fn write_tensors(
    path: &Path,
    tensors: &[(String, Bytes)],
    mut meta: HashMap<String, String>,
) -> Result<(), CheckpointError> {
    let sum = checksum(tensors.iter().map(|(n, b)| (n.as_str(), b.data.as_slice())));
    meta.insert(CHECKSUM_KEY.to_string(), format!("{sum:08x}"));
    let bytes = safetensors::serialize(tensors.iter().map(|(n, b)| (n.as_str(), b)), Some(meta))
        .map_err(|e| CheckpointError::Format { path: path.into(), details: e.to_string() })?;
    write_atomically(path, &bytes)
}

/// Checks the file's checksum, where it has one (version 2 files always do).
fn verify_checksum(
    path: &Path,
    file: &SafeTensors,
    meta: &HashMap<String, String>,
    required: bool,
) -> Result<(), CheckpointError> {
    let Some(text) = meta.get(CHECKSUM_KEY) else {
        if required {
            return Err(CheckpointError::Metadata {
                path: path.into(),
                key: CHECKSUM_KEY.into(),
                details: "missing".into(),
            });
        }
        return Ok(());
    };
    let expected = u32::from_str_radix(text, 16).map_err(|e| CheckpointError::Metadata {
        path: path.into(),
        key: CHECKSUM_KEY.into(),
        details: format!("{text:?}: {e}"),
    })?;
    let views = file.tensors();
    let found = checksum(views.iter().map(|(n, v)| (n.as_str(), v.data())));
    if found != expected {
        return Err(CheckpointError::Checksum { path: path.into(), expected, found });
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    std::fs::read(path).map_err(|source| CheckpointError::Io { path: path.into(), source })
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<(SafeTensors<'a>, HashMap<String, String>), CheckpointError> {
    let format =
        |e: safetensors::SafeTensorError| CheckpointError::Format { path: path.into(), details: e.to_string() };
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(format)?;
    let meta = metadata.metadata().clone().unwrap_or_default();
    Ok((SafeTensors::deserialize(bytes).map_err(format)?, meta))
}

/// Checks the format (the current one or its version 1) and the checksum.
fn expect_format(
    path: &Path,
    file: &SafeTensors,
    meta: &HashMap<String, String>,
    format: &str,
    format_v1: &str,
) -> Result<(), CheckpointError> {
    match meta.get(FORMAT_KEY) {
        Some(f) if f == format => verify_checksum(path, file, meta, true),
        Some(f) if f == format_v1 => verify_checksum(path, file, meta, false),
        found => Err(CheckpointError::Metadata {
            path: path.into(),
            key: FORMAT_KEY.into(),
            details: format!("expected {format:?}, found {found:?}"),
        }),
    }
}

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
