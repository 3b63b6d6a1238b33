//! Numeric kernels for the `nn` crates: slices, strides and geometry, never layers.
//!
//! - [`gemm`]: `C ← α·op(A)·op(B) + β·C` on row-major slices, with either operand
//!   transposed, split across the rayon pool for large products.
//! - [`conv`]: N-dimensional convolution geometry (any number of spatial dimensions,
//!   per-dimension stride, padding and filter length), im2col / col2im with a constant
//!   padding value and optional filter flip, and batched forward/backward kernels
//!   (implicit GEMM with an AVX-512 micro-kernel for f32 where the CPU has it).
//! - [`pool`]: N-dimensional max and average pooling.
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
pub mod index;
pub mod pool;
pub mod simd;
mod workspace;

pub use element::Element;
pub use error::{GeometryError, KernelError};
