//! Tensors, layers and the backpropagation algorithm of SPEC §1–§3.
//!
//! A network is a [`Sequential`] stack of [`Layer`]s. [`Sequential::forward`] is the
//! source's Step 2 (`x⁽ᵏ⁺¹⁾ = f⁽ᵏ⁾(x⁽ᵏ⁾, w⁽ᵏ⁾)`), and [`Sequential::backward`] is Step 3:
//! given `∂L/∂x⁽ᴺ⁾` from a [`Loss`], it walks the layers from last to first, each one
//! returning `∂L/∂x⁽ᵏ⁾` and adding `∂L/∂w⁽ᵏ⁾` into its parameters' gradients. A
//! minibatch is one batched tensor, so Step 4's sum over patterns p is computed at once.
//!
//! ```
//! use nn_core::prelude::*;
//!
//! # fn main() -> Result<(), NnError> {
//! // A 1-channel 8×8 input, a 3×3 convolution (the source's flipped filter), ReLU,
//! // 2×2 max pooling, and a dense layer to 3 classes.
//! let mut net = Sequential::<f32>::builder(&[1, 8, 8], 42)
//!     .conv(ConvSpec::new(4, &[3, 3]).padding(&[1, 1]))
//!     .relu()
//!     .max_pool(&[2, 2])
//!     .flatten()
//!     .dense(3)
//!     .build()?;
//!
//! let x = Tensor::from_vec(&[2, 1, 8, 8], (0..128).map(|i| i as f32 / 128.0).collect())?;
//! let logits = net.forward(&x)?.clone();
//! let mut grad = Tensor::zeros(logits.shape())?;
//! let loss = SoftmaxCrossEntropy.loss_and_grad(&logits, &[0, 2], Reduction::Mean, &mut grad)?;
//! net.zero_grad();
//! net.backward(&grad)?;
//! assert!(loss.is_finite());
//! assert!(net.params().iter().any(|p| p.grad.data().iter().any(|&g| g != 0.0)));
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

/// The README's code blocks, compiled and run as doctests so the front page stays true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// This crate's README, compiled and run as a doctest too.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct CrateReadmeDoctests;

mod error;
pub mod gradcheck;
mod graph;
mod init;
mod layer;
pub mod layers;
mod loss;
mod network;
mod network_trait;
pub mod shared_statistics;
mod storage;
mod tensor;

pub use error::NnError;
pub use graph::{Graph, GraphBuilder, NodeId};
pub use init::{seeded_rng, Init, SeededRng};
pub use layer::{BackwardReads, Layer, Param, ParamRole};
pub use loss::{
    Loss, MeanSquaredError, Reduction, SigmoidBinaryCrossEntropy, SoftDice, SoftmaxCrossEntropy, WeightedSum,
};
pub use network::{Sequential, SequentialBuilder};
pub use network_trait::Network;
pub use nn_kernels::conv::{ConvAlgorithm, KernelMode, OutputRounding, Padding};
pub use nn_kernels::elementwise::Activation;
pub use nn_kernels::pad::{PaddingMode, SideModes};
pub use nn_kernels::Element;
pub use tensor::Tensor;

/// Everything a user of the layers needs, in one import.
pub mod prelude {
    pub use crate::layers::{
        ActivationLayer, BatchNorm, Conv, ConvSpec, ConvTranspose, Dense, Dropout, Flatten, GlobalAvgPool, GroupNorm,
        LayerNorm, Pool, PoolKind, PoolSpec, Upsample,
    };
    pub use crate::{
        seeded_rng, Activation, ConvAlgorithm, Element, Graph, GraphBuilder, Init, KernelMode, Layer, Loss,
        MeanSquaredError, Network, NnError, OutputRounding, Padding, PaddingMode, Param, ParamRole, Reduction,
        Sequential, SideModes, SigmoidBinaryCrossEntropy, SoftDice, SoftmaxCrossEntropy, Tensor, WeightedSum,
    };
}
