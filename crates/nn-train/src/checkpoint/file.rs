//! The file side of checkpoints: tensors to and from little-endian bytes, the
//! checksum, the format check, and atomic writes that clean up after killed writers.

use super::{CheckpointError, CHECKSUM_KEY, FORMAT_KEY};
use nn_core::{Element, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// A tensor serialised as little-endian bytes.
pub(super) struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    pub(super) data: Vec<u8>,
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

pub(super) fn dtype_of<T: Element>() -> Dtype {
    if T::DTYPE == "F32" {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

pub(super) fn to_bytes<T: Element>(tensor: &Tensor<T>) -> Bytes {
    let data = match dtype_of::<T>() {
        Dtype::F32 => tensor.data().iter().flat_map(|v| (v.as_f64() as f32).to_le_bytes()).collect(),
        _ => tensor.data().iter().flat_map(|v| v.as_f64().to_le_bytes()).collect(),
    };
    Bytes { dtype: dtype_of::<T>(), shape: tensor.shape().to_vec(), data }
}

/// Reads tensor `name` as T, checking element type and (when given) shape.
pub(super) fn read_tensor<T: Element>(
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
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
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
pub(super) fn remove_stale_temporaries(dir: &Path, prefix: &str) {
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
pub(super) fn checksum<'a>(tensors: impl Iterator<Item = (&'a str, &'a [u8])>) -> u32 {
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
pub(super) fn write_tensors(
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
pub(super) fn verify_checksum(
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

pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    std::fs::read(path).map_err(|source| CheckpointError::Io { path: path.into(), source })
}

pub(super) fn parse<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<(SafeTensors<'a>, HashMap<String, String>), CheckpointError> {
    let format =
        |e: safetensors::SafeTensorError| CheckpointError::Format { path: path.into(), details: e.to_string() };
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(format)?;
    let meta = metadata.metadata().clone().unwrap_or_default();
    Ok((SafeTensors::deserialize(bytes).map_err(format)?, meta))
}

/// Checks the format (the current one or its version 1) and the checksum.
pub(super) fn expect_format(
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
