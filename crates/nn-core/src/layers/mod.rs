//! The layers: [`Dense`] (SPEC §2), [`Conv`] (SPEC §3, any number of spatial
//! dimensions), [`Pool`], [`ActivationLayer`] and [`Flatten`].

mod activation;
mod conv;
mod dense;
mod flatten;
mod pool;

pub use activation::ActivationLayer;
pub use conv::{Conv, ConvSpec};
pub use dense::Dense;
pub use flatten::Flatten;
pub use pool::{Pool, PoolKind, PoolSpec};
