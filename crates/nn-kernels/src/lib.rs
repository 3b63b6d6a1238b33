//! Numeric kernels for the `nn` crates: slices, strides and geometry, never layers.
//!
//! - [`gemm`]: `C ← α·op(A)·op(B) + β·C` on row-major slices, with either operand
//!   transposed, split across the rayon pool for large products.
//! - [`geometry`]: a window sliding over an N-dimensional plane (any number of
//!   spatial dimensions, per-dimension stride, padding and window length), shared by
//!   convolution and pooling.
//! - [`conv`]: batched N-dimensional convolution, forward and backward, with a
//!   constant padding value and optional filter flip: implicit GEMM with AVX-512
//!   micro-kernels for f32 where the CPU has them, direct AVX2 kernels for 2-D f32
//!   with enough channels, im2col / col2im and GEMM otherwise.
//! - [`pool`]: N-dimensional max and average pooling.
//! - [`pad`]: explicit padding by a constant, reflection, replication or wrapping.
//! - [`normalization`]: batch normalisation's sums and affine passes.
//! - [`simd`]: the instruction sets the kernels use, detected once.
//! - [`elementwise`]: activations, reductions, vector and optimizer updates; SIMD where
//!   it pays, all threads for long slices.
//!
//! Every kernel has a slow reference implementation written straight from the formula,
//! against which the fast path is tested.

#![warn(missing_docs)]

pub mod conv;
mod element;
pub mod elementwise;
mod error;
pub mod gemm;
pub mod geometry;
pub mod index;
pub mod normalization;
pub mod pad;
pub mod pool;
pub mod simd;
mod workspace;

pub use element::Element;
pub use error::{GeometryError, KernelError};
pub use geometry::{ConvGeometry, KernelMode, OutputRounding, Padding};
