//! N-dimensional convolution over a batch with channels (SPEC §3):
//!
//! `y[n, o, β] = Σ_c Σ_α x′[n, c, γ(β, α)] · w[o, c, α] + b[o]`
//!
//! with `γ_i = s_i·β_i + f_i − p_i − α_i − 1` (the source's flipped filter) or
//! `γ_i = s_i·β_i − p_i + α_i` (cross-correlation), and x′ the input padded by a
//! constant value.
//!
//! # Layouts
//! All row-major: x is `[N, C_in, μ…]`, w is `[C_out, C_in, f…]`, b is `[C_out]`,
//! y is `[N, C_out, v…]`.
//!
//! # Method
//! Per image, im2col builds `col = [C_in·∏f, ∏v]`; then `y_n = W · col`,
//! `∂W += ∂y_n · colᵀ`, `∂col = Wᵀ · ∂y_n` and col2im folds ∂col back onto ∂x. Images
//! run in parallel on rayon; the weight gradient is summed over a fixed grouping of
//! images, so results do not depend on the thread count.

mod geometry;
mod im2col;
pub mod reference;
#[cfg(test)]
mod tests;

pub use geometry::{ConvGeometry, KernelMode, OutputRounding, Padding};

use crate::error::check_len;
use crate::gemm::{gemm_on_one_thread, Transpose};
use crate::{Element, GeometryError, KernelError};
use rayon::prelude::*;

/// The weight gradient is summed in this many fixed groups of images (fewer for a
/// small batch) and the group sums are added in order: enough groups to keep every
/// worker busy, and a grouping that does not depend on the thread count.
const WEIGHT_GRADIENT_GROUPS: usize = 8;

/// A convolution over `in_channels` planes of one geometry, producing `out_channels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvProblem {
    /// The per-plane geometry.
    pub geometry: ConvGeometry,
    /// C_in.
    pub in_channels: usize,
    /// C_out.
    pub out_channels: usize,
}

impl ConvProblem {
    /// A problem with validated sizes: channel counts positive and every buffer length
    /// representable.
    pub fn new(
        geometry: ConvGeometry,
        in_channels: usize,
        out_channels: usize,
    ) -> Result<Self, GeometryError> {
        if in_channels == 0 {
            return Err(GeometryError::Zero {
                what: "input channel count",
                dim: 0,
            });
        }
        if out_channels == 0 {
            return Err(GeometryError::Zero {
                what: "output channel count",
                dim: 0,
            });
        }
        let problem = Self {
            geometry,
            in_channels,
            out_channels,
        };
        problem
            .col_rows()
            .checked_mul(problem.geometry.output_len())
            .and_then(|_| problem.geometry.input_len().checked_mul(in_channels))
            .and_then(|_| problem.geometry.output_len().checked_mul(out_channels))
            .and_then(|_| problem.weight_len().checked_mul(1))
            .ok_or(GeometryError::Overflow {
                what: "convolution buffer size",
            })?;
        Ok(problem)
    }

    /// Elements of one input image: `C_in·∏μ`.
    pub fn input_image_len(&self) -> usize {
        self.in_channels * self.geometry.input_len()
    }
    /// Elements of one output image: `C_out·∏v`.
    pub fn output_image_len(&self) -> usize {
        self.out_channels * self.geometry.output_len()
    }
    /// Elements of the weight: `C_out·C_in·∏f`.
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.col_rows()
    }
    /// Rows of the column matrix: `C_in·∏f`.
    fn col_rows(&self) -> usize {
        self.in_channels * self.geometry.filter_len()
    }
    fn col_len(&self) -> usize {
        self.col_rows() * self.geometry.output_len()
    }

    fn check_batch(
        &self,
        what: &'static str,
        len: usize,
        per_image: usize,
        batch: usize,
    ) -> Result<(), KernelError> {
        let expected = batch
            .checked_mul(per_image)
            .ok_or(GeometryError::Overflow {
                what: "batch buffer size",
            })?;
        check_len(what, expected, len)
    }

    /// Fills `col` with the column matrix of one image, or borrows the image itself
    /// when the convolution is pointwise.
    fn columns<'a, T: Element>(
        &self,
        image: &'a [T],
        pad_value: T,
        col: &'a mut Vec<T>,
    ) -> &'a [T] {
        if self.geometry.is_pointwise() {
            return image;
        }
        col.resize(self.col_len(), T::zero());
        im2col::im2col(&self.geometry, self.in_channels, pad_value, image, col);
        col
    }
}

/// Forward pass: `y = conv(x, w) + b` for a batch of `batch` images.
///
/// `y` is overwritten. `bias`, when given, has `C_out` elements.
pub fn conv_forward<T: Element>(
    problem: &ConvProblem,
    batch: usize,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    pad_value: T,
    y: &mut [T],
) -> Result<(), KernelError> {
    problem.check_batch("conv forward: x", x.len(), problem.input_image_len(), batch)?;
    problem.check_batch(
        "conv forward: y",
        y.len(),
        problem.output_image_len(),
        batch,
    )?;
    check_len("conv forward: w", problem.weight_len(), w.len())?;
    if let Some(b) = bias {
        check_len("conv forward: bias", problem.out_channels, b.len())?;
    }
    let (in_len, out_len) = (problem.input_image_len(), problem.output_image_len());
    let plane = problem.geometry.output_len();
    y.par_chunks_mut(out_len)
        .zip(x.par_chunks(in_len))
        .for_each_init(Vec::new, |col, (y_n, x_n)| {
            let cols = problem.columns(x_n, pad_value, col);
            gemm_on_one_thread(
                Transpose::No,
                Transpose::No,
                problem.out_channels,
                plane,
                problem.col_rows(),
                T::one(),
                w,
                cols,
                T::zero(),
                y_n,
            );
            if let Some(b) = bias {
                for (y_plane, &b_o) in y_n.chunks_mut(plane).zip(b) {
                    crate::elementwise::add_scalar(y_plane, b_o);
                }
            }
        });
    Ok(())
}

/// Input gradient: `∂x = convᵀ(∂y, w)`, overwriting `dx`. Padding cells have no
/// gradient (they are constants), so the padding value plays no part.
pub fn conv_backward_input<T: Element>(
    problem: &ConvProblem,
    batch: usize,
    w: &[T],
    dy: &[T],
    dx: &mut [T],
) -> Result<(), KernelError> {
    problem.check_batch(
        "conv backward input: dy",
        dy.len(),
        problem.output_image_len(),
        batch,
    )?;
    problem.check_batch(
        "conv backward input: dx",
        dx.len(),
        problem.input_image_len(),
        batch,
    )?;
    check_len("conv backward input: w", problem.weight_len(), w.len())?;
    let (in_len, out_len) = (problem.input_image_len(), problem.output_image_len());
    let plane = problem.geometry.output_len();
    let rows = problem.col_rows();
    dx.par_chunks_mut(in_len)
        .zip(dy.par_chunks(out_len))
        .for_each_init(Vec::new, |dcol: &mut Vec<T>, (dx_n, dy_n)| {
            if problem.geometry.is_pointwise() {
                gemm_on_one_thread(
                    Transpose::Yes,
                    Transpose::No,
                    rows,
                    plane,
                    problem.out_channels,
                    T::one(),
                    w,
                    dy_n,
                    T::zero(),
                    dx_n,
                );
                return;
            }
            dcol.resize(problem.col_len(), T::zero());
            gemm_on_one_thread(
                Transpose::Yes,
                Transpose::No,
                rows,
                plane,
                problem.out_channels,
                T::one(),
                w,
                dy_n,
                T::zero(),
                dcol,
            );
            dx_n.fill(T::zero());
            im2col::col2im_add(&problem.geometry, problem.in_channels, dcol, dx_n);
        });
    Ok(())
}

/// Weight gradient: `∂w += Σ_n ∂y_n · col(x′_n)ᵀ`, accumulated into `dw`. Padded cells
/// contribute the padding value, as the source's `∂y_β/∂w_α = x′_γ` says.
pub fn conv_backward_weight<T: Element>(
    problem: &ConvProblem,
    batch: usize,
    x: &[T],
    dy: &[T],
    pad_value: T,
    dw: &mut [T],
) -> Result<(), KernelError> {
    problem.check_batch(
        "conv backward weight: x",
        x.len(),
        problem.input_image_len(),
        batch,
    )?;
    problem.check_batch(
        "conv backward weight: dy",
        dy.len(),
        problem.output_image_len(),
        batch,
    )?;
    check_len("conv backward weight: dw", problem.weight_len(), dw.len())?;
    if batch == 0 {
        return Ok(());
    }
    let (in_len, out_len) = (problem.input_image_len(), problem.output_image_len());
    let plane = problem.geometry.output_len();
    let per_group = batch.div_ceil(WEIGHT_GRADIENT_GROUPS.min(batch));
    let partials: Vec<Vec<T>> = (0..batch.div_ceil(per_group))
        .into_par_iter()
        .map(|group| {
            let mut partial = vec![T::zero(); dw.len()];
            let mut col = Vec::new();
            for n in group * per_group..((group + 1) * per_group).min(batch) {
                let cols = problem.columns(&x[n * in_len..(n + 1) * in_len], pad_value, &mut col);
                gemm_on_one_thread(
                    Transpose::No,
                    Transpose::Yes,
                    problem.out_channels,
                    problem.col_rows(),
                    plane,
                    T::one(),
                    &dy[n * out_len..(n + 1) * out_len],
                    cols,
                    T::one(),
                    &mut partial,
                );
            }
            partial
        })
        .collect();
    for partial in &partials {
        crate::elementwise::add_assign(dw, partial);
    }
    Ok(())
}

/// Bias gradient: `∂b[o] += Σ_n Σ_β ∂y[n, o, β]`.
pub fn conv_backward_bias<T: Element>(
    problem: &ConvProblem,
    batch: usize,
    dy: &[T],
    db: &mut [T],
) -> Result<(), KernelError> {
    problem.check_batch(
        "conv backward bias: dy",
        dy.len(),
        problem.output_image_len(),
        batch,
    )?;
    check_len("conv backward bias: db", problem.out_channels, db.len())?;
    let plane = problem.geometry.output_len();
    for (i, dy_plane) in dy.chunks(plane).enumerate() {
        db[i % problem.out_channels] += crate::elementwise::sum(dy_plane);
    }
    Ok(())
}
