use std::path::PathBuf;
use thiserror::Error;

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
