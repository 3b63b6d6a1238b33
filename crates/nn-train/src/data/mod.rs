//! Data: the IDX reader, in-memory datasets, batching, and Fashion-MNIST discovery.

mod augment;
mod dataset;
pub mod fashion_mnist;
pub mod idx;

pub use augment::{Augmentation, Normalization};
pub use dataset::{ClassificationSet, Dataset, TargetBatch, TensorSet};

use std::path::PathBuf;
use thiserror::Error;

/// A data file that cannot be read as what it claims to be.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The gzip stream is corrupt or cut short.
    #[error("{path}: gzip stream broken after {decompressed} decompressed bytes: {source}")]
    Gzip {
        /// The file.
        path: PathBuf,
        /// Bytes produced before the failure.
        decompressed: usize,
        /// The cause.
        source: std::io::Error,
    },
    /// The first bytes are not an IDX magic number.
    #[error("{path}: byte offset 0: not an IDX file (magic {found:02x?})")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The element type is not unsigned bytes.
    #[error("{path}: byte offset 2: unsupported IDX element type 0x{code:02x} (only 0x08, unsigned byte)")]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The type code.
        code: u8,
    },
    /// The (decompressed) data ends before the header says it should.
    #[error("{path}: truncated at byte offset {offset}: the {what} need {needed} bytes")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where the data ends.
        offset: usize,
        /// Bytes the header requires.
        needed: usize,
        /// What was being read.
        what: &'static str,
    },
    /// Any other inconsistency, at a byte offset of the (decompressed) data.
    #[error("{path}: byte offset {offset}: {details}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: usize,
        /// What is wrong.
        details: String,
    },
    /// Images and labels do not describe the same dataset.
    #[error("{details}")]
    Mismatch {
        /// What differs.
        details: String,
    },
}
