//! Everything a training script needs, in one import: the layers' prelude of
//! `nn-core` and the trainer, optimizers, datasets and evaluation of this crate.

pub use crate::data::{ClassificationSet, Dataset, TensorSet};
pub use crate::optim::{Adam, LrSchedule, Optimizer, Sgd};
#[cfg(feature = "progress")]
pub use crate::ProgressBars;
pub use crate::{
    evaluate, EarlyStopping, Evaluation, NoProgress, NonFinitePolicy, Observer, StopReason, TrainConfig, TrainError,
    TrainReport, Trainer,
};
pub use nn_core::prelude::*;
