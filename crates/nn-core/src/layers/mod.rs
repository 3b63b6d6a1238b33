//! The layers: [`Dense`] (SPEC §2), [`Conv`] (SPEC §3, any number of spatial
//! dimensions), [`Pool`], [`GlobalAvgPool`], [`BatchNorm`], [`Dropout`],
//! [`ActivationLayer`] and [`Flatten`].

mod activation;
mod batch_norm;
mod conv;
mod dense;
mod dropout;
mod flatten;
mod global_pool;
mod pool;

pub use activation::ActivationLayer;
pub use batch_norm::BatchNorm;
pub use conv::{Conv, ConvSpec};
pub use dense::Dense;
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use global_pool::GlobalAvgPool;
pub use pool::{Pool, PoolKind, PoolSpec};
