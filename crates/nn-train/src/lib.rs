//! Training for the `nn` crates: the source's Steps 1–5 as a [`Trainer`], with
//! optimizers, stopping rules, evaluation, data loading and checkpoints.
//!
//! ```
//! use nn_core::prelude::*;
//! use nn_train::{data::TensorSet, optim::Sgd, NoProgress, StopReason, TrainConfig, Trainer};
//!
//! # fn main() -> Result<(), nn_train::TrainError> {
//! // XOR, the source's algorithm: summed gradients, plain SGD, stop when E ≤ 0.01.
//! let inputs = Tensor::from_vec(&[4, 2], vec![0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])?;
//! let targets = Tensor::from_vec(&[4, 1], vec![0.0, 1.0, 1.0, 0.0])?;
//! let data = TensorSet::new(inputs, targets)?;
//! let mut net = Sequential::<f64>::builder(&[2], 1)
//!     .dense_with(4, true, Init::GlorotUniform).tanh()
//!     .dense_with(1, true, Init::GlorotUniform).sigmoid()
//!     .build()?;
//! let config = TrainConfig { batch_size: 4, error_threshold: Some(0.01), max_iterations: Some(20_000), ..TrainConfig::default() };
//! let report = Trainer::new(config).fit(&mut net, &mut Sgd::new(0.5), &MeanSquaredError, &data, None, &mut NoProgress)?;
//! assert!(matches!(report.reason, StopReason::ErrorThreshold { .. }), "{:?}", report.reason);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

#[cfg(feature = "checkpoint")]
pub mod checkpoint;
pub mod data;
pub mod distributed;
mod error;
mod eval;
pub mod models;
pub mod optim;
pub mod prelude;
#[cfg(feature = "progress")]
mod progress;
#[cfg(feature = "report")]
pub mod report;
mod trainer;

pub use error::TrainError;
pub use eval::{evaluate, evaluate_on, ConfusionMatrix, DiceCounts, Evaluation};
#[cfg(feature = "progress")]
pub use progress::ProgressBars;
pub use trainer::{
    train_step, BatchProgress, EarlyStopping, EpochProgress, EpochStats, Monitor, NoProgress, NonFinitePolicy,
    Observer, StopReason, TrainConfig, TrainReport, Trainer, TrainerState,
};
