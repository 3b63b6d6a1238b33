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
    /// A step produced a NaN or an infinity. The step's update was not applied: the
    /// weights and the optimizer's state are those before it.
    #[error("{}", non_finite_message(.what, .epoch, .iteration, .samples))]
    NonFinite {
        /// What went non-finite, and where it was first seen: the loss (with the first
        /// layer whose output was non-finite) or a parameter's gradient.
        what: String,
        /// The 0-based epoch, when the trainer knows it.
        epoch: Option<usize>,
        /// The update that failed (1-based: the updates done before it, plus one), when
        /// the trainer knows it.
        iteration: Option<u64>,
        /// The batch's sample indices in the dataset, when the trainer knows them.
        samples: Vec<usize>,
    },
    /// Another process of a distributed run failed, or the processes disagree.
    #[error("distributed training: {details}")]
    Distributed {
        /// What happened, and where.
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

fn non_finite_message(what: &str, epoch: &Option<usize>, iteration: &Option<u64>, samples: &[usize]) -> String {
    let mut message = format!("non-finite values in training: {what}");
    if let Some(iteration) = iteration {
        message += &format!("; update {iteration}");
    }
    if let Some(epoch) = epoch {
        message += &format!(" in epoch {epoch}");
    }
    if !samples.is_empty() {
        const SHOWN: usize = 16;
        let shown: Vec<String> = samples.iter().take(SHOWN).map(usize::to_string).collect();
        let more = if samples.len() > SHOWN { format!(", … ({} in all)", samples.len()) } else { String::new() };
        message += &format!("; batch samples [{}{more}]", shown.join(", "));
    }
    message + "; the weights are those before this update"
}
