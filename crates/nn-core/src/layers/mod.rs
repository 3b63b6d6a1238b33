//! The layers: [`Dense`] (SPEC §2), [`Conv`] (SPEC §3, any number of spatial
//! dimensions) and [`ConvTranspose`], [`Pool`], [`GlobalAvgPool`], [`Upsample`], [`BatchNorm`],
//! [`GroupNorm`], [`LayerNorm`], [`Dropout`], [`ActivationLayer`] and [`Flatten`].

mod activation;
mod batch_norm;
mod conv;
mod conv_transpose;
mod dense;
mod dropout;
mod flatten;
mod global_pool;
mod group_norm;
mod pool;
mod upsample;

pub use activation::ActivationLayer;
pub use batch_norm::BatchNorm;
pub use conv::{Conv, ConvSpec};
pub use conv_transpose::ConvTranspose;
pub use dense::Dense;
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use global_pool::GlobalAvgPool;
pub use group_norm::{GroupNorm, LayerNorm};
pub use pool::{Pool, PoolKind, PoolSpec};
pub use upsample::Upsample;
