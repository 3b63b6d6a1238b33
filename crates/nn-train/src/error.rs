#[cfg(feature = "checkpoint")]
use crate::checkpoint::CheckpointError;
use crate::data::DataError;
use nn_core::NnError;
use nn_kernels::KernelError;
use thiserror::Error;

/// Anything that can stop training with an error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A network or tensor error.
    #[error(transparent)]
    Nn(#[from] NnError),
    /// A data file error.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A checkpoint error.
    #[cfg(feature = "checkpoint")]
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A setting outside its domain.
    #[error("training configuration: {what}: {details}")]
    Config {
        /// The setting.
        what: &'static str,
        /// Why it is refused.
        details: String,
    },
    /// Optimizer state that does not fit the parameters.
    #[error("optimizer state: {details}")]
    OptimizerState {
        /// What does not fit.
        details: String,
    },
    /// Writing a report file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl From<KernelError> for TrainError {
    fn from(error: KernelError) -> Self {
        TrainError::Nn(error.into())
    }
}
