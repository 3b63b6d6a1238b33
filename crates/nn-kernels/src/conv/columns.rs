//! The column path: im2col, GEMM and col2im, for any element type and CPU. Work is
//! cut into blocks whose column matrix fits the cache (see [`ConvProblem::blocking`]).

use super::im2col::{self, Placement};
use super::problem::{Block, Blocking, ConvProblem};
use crate::gemm::{gemm_ld, MatRef, Transpose};
use crate::workspace::{fit, with_scratch};
use crate::{Element, KernelError};
use rayon::prelude::*;

/// `[n, C, P]` (image-major) to `[C, n·P]` (channel-major), the layout in which a
/// group's gradient multiplies its column matrix.
pub(super) fn gather_channels<T: Element>(src: &[T], channels: usize, plane: usize, dst: &mut Vec<T>) {
    let n = src.len() / (channels * plane);
    let dst = fit(dst, src.len());
    for (i, image) in src.chunks(channels * plane).enumerate() {
        for (c, run) in image.chunks(plane).enumerate() {
            dst[c * n * plane + i * plane..][..plane].copy_from_slice(run);
        }
    }
}

/// `[C, n·P]` back to `[n, C, P]`.
fn scatter_channels<T: Element>(src: &[T], channels: usize, plane: usize, dst: &mut [T]) {
    let n = src.len() / (channels * plane);
    for (i, image) in dst.chunks_mut(channels * plane).enumerate() {
        for (c, run) in image.chunks_mut(plane).enumerate() {
            run.copy_from_slice(&src[c * n * plane + i * plane..][..plane]);
        }
    }
}

/// The forward pass through column matrices and GEMMs (any element type and CPU).
pub(super) fn forward_by_columns<T: Element>(
    problem: &ConvProblem,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    pad_value: T,
    y: &mut [T],
) {
    let (out_len, plane, c_out) = (problem.output_image_len(), problem.geometry().output_len(), problem.out_channels());
    let blocking = problem.blocking::<T>();
    let w = MatRef::new(w, Transpose::No, problem.group_rows());
    y.par_chunks_mut(blocking.images * out_len).enumerate().for_each(|(task, y_task)| {
        with_scratch::<T, 2, _>(|[col, product]| {
            let first = task * blocking.images;
            for block in problem.blocks(blocking, first..first + y_task.len() / out_len) {
                let cols = problem.block_columns(x, &block, pad_value, col);
                let images = &mut y_task[(block.first_image - first) * out_len..][..block.images * out_len];
                multiply_block(problem, &block, w, cols, product, images);
            }
            if let Some(b) = bias {
                for (i, y_plane) in y_task.chunks_mut(plane).enumerate() {
                    crate::elementwise::add_scalar(y_plane, b[i % c_out]);
                }
            }
        })
    });
}

/// `W · cols` for one block, written into its `images` of the output (the whole
/// images of the block, `[images, C_out, plane]`): a one-image block straight into the
/// image's planes at the tile's columns, a block of several through `product`.
fn multiply_block<T: Element>(
    problem: &ConvProblem,
    block: &Block,
    w: MatRef<'_, T>,
    cols: &[T],
    product: &mut Vec<T>,
    images: &mut [T],
) {
    let (plane, rows, c_out) = (problem.geometry().output_len(), problem.group_rows(), problem.out_channels());
    let (groups, group_out) = (problem.groups(), c_out / problem.groups());
    let width = block.width(problem.geometry());
    let cols = MatRef::new(cols, Transpose::No, width);
    // Group g: its outputs' rows of W times its inputs' rows of the columns.
    let w_g = |g: usize| w.skip_stored_rows(g * group_out);
    let cols_g = |g: usize| cols.skip_stored_rows(g * rows);
    if block.images == 1 {
        let offset = block.lines.start * problem.geometry().output()[problem.geometry().rank() - 1];
        for g in 0..groups {
            let y_g = &mut images[offset + g * group_out * plane..];
            gemm_ld(group_out, width, rows, T::one(), w_g(g), cols_g(g), T::zero(), y_g, plane);
        }
    } else {
        let product = fit(product, c_out * width);
        for g in 0..groups {
            let p_g = &mut product[g * group_out * width..];
            gemm_ld(group_out, width, rows, T::one(), w_g(g), cols_g(g), T::zero(), p_g, width);
        }
        scatter_channels(product, c_out, plane, images);
    }
}

/// The input gradient through GEMMs into column matrices and col2im (any element type
/// and CPU).
pub(super) fn backward_input_by_columns<T: Element>(problem: &ConvProblem, w: &[T], dy: &[T], dx: &mut [T]) {
    let in_len = problem.input_image_len();
    let (rows, c_out) = (problem.group_rows(), problem.out_channels());
    let (groups, group_out) = (problem.groups(), c_out / problem.groups());
    let blocking = problem.blocking::<T>();
    let w = MatRef::new(w, Transpose::Yes, rows);
    // Group g: ∂col's rows of its inputs = its outputs' rows of W, transposed, times ∂y's.
    let w_g = |g: usize| w.skip_stored_rows(g * group_out);
    dx.par_chunks_mut(blocking.images * in_len).enumerate().for_each(|(task, dx_task)| {
        with_scratch::<T, 2, _>(|[dcol, gathered]| {
            let first = task * blocking.images;
            if problem.geometry().is_pointwise() {
                // The column matrix is the input itself: ∂x = Wᵀ·∂y directly.
                for block in problem.blocks(blocking, first..first + dx_task.len() / in_len) {
                    let width = block.width(problem.geometry());
                    let dy_mat = problem.block_gradient(dy, &block, gathered);
                    let dx_n = &mut dx_task[(block.first_image - first) * in_len..][..in_len];
                    for g in 0..groups {
                        let (dy_g, dx_g) = (dy_mat.skip_stored_rows(g * group_out), &mut dx_n[g * rows * width..]);
                        gemm_ld(rows, width, group_out, T::one(), w_g(g), dy_g, T::zero(), dx_g, width);
                    }
                }
                return;
            }
            dx_task.fill(T::zero());
            for block in problem.blocks(blocking, first..first + dx_task.len() / in_len) {
                let width = block.width(problem.geometry());
                let dy_mat = problem.block_gradient(dy, &block, gathered);
                let dcol = fit(dcol, problem.col_rows() * width);
                for g in 0..groups {
                    let (dy_g, dcol_g) = (dy_mat.skip_stored_rows(g * group_out), &mut dcol[g * rows * width..]);
                    gemm_ld(rows, width, group_out, T::one(), w_g(g), dy_g, T::zero(), dcol_g, width);
                }
                let tile_width = width / block.images;
                let images = &mut dx_task[(block.first_image - first) * in_len..][..block.images * in_len];
                for (i, dx_n) in images.chunks_mut(in_len).enumerate() {
                    let at = Placement { ld: width, offset: i * tile_width };
                    im2col::col2im_add(
                        problem.geometry(),
                        problem.lines(),
                        problem.in_channels(),
                        dcol,
                        at,
                        block.lines.clone(),
                        dx_n,
                    );
                }
            }
        })
    });
}

/// The weight gradient through column matrices and GEMMs (any element type and CPU),
/// summed over chunks of `per_chunk` images.
pub(super) fn backward_weight_by_columns<T: Element>(
    problem: &ConvProblem,
    batch: usize,
    per_chunk: usize,
    x: &[T],
    dy: &[T],
    pad_value: T,
    dw: &mut [T],
) -> Result<(), KernelError> {
    let blocking = weight_blocking::<T>(problem, per_chunk);
    let partials: Vec<Vec<T>> = (0..batch.div_ceil(per_chunk))
        .into_par_iter()
        .map(|chunk| {
            let mut partial = vec![T::zero(); dw.len()];
            with_scratch::<T, 2, _>(|[col, gathered]| {
                for block in problem.blocks(blocking, chunk * per_chunk..((chunk + 1) * per_chunk).min(batch)) {
                    let cols = problem.block_columns(x, &block, pad_value, col);
                    let dy_mat = problem.block_gradient(dy, &block, gathered);
                    add_block_weight_gradient(problem, &block, dy_mat, cols, &mut partial);
                }
            });
            partial
        })
        .collect();
    add_in_order(dw, &partials)
}

/// The column walk's blocks for a weight gradient summed over chunks of `per_chunk`
/// images: no block spans two chunks.
fn weight_blocking<T: Element>(problem: &ConvProblem, per_chunk: usize) -> Blocking {
    let blocking = problem.blocking::<T>();
    Blocking { images: blocking.images.min(per_chunk), ..blocking }
}

/// Adds one block's `∂y · colsᵀ` into `dw`, group by group: each group's block of
/// ∂W is its outputs' ∂y times its inputs' columns.
fn add_block_weight_gradient<T: Element>(
    problem: &ConvProblem,
    block: &Block,
    dy: MatRef<'_, T>,
    cols: &[T],
    dw: &mut [T],
) {
    let (rows, group_out) = (problem.group_rows(), problem.out_channels() / problem.groups());
    let width = block.width(problem.geometry());
    let cols = MatRef::new(cols, Transpose::Yes, width);
    for g in 0..problem.groups() {
        let (dy_g, cols_g) = (dy.skip_stored_rows(g * group_out), cols.skip_stored_rows(g * rows));
        gemm_ld(group_out, rows, width, T::one(), dy_g, cols_g, T::one(), &mut dw[g * group_out * rows..], rows);
    }
}

/// `dw += Σ partials`, in the partials' order (the same bits on any thread count).
fn add_in_order<T: Element>(dw: &mut [T], partials: &[Vec<T>]) -> Result<(), KernelError> {
    for partial in partials {
        crate::elementwise::add_assign(dw, partial)?;
    }
    Ok(())
}

/// A transposed convolution's two gradients in one walk: `y = conv(x, w)` (no bias,
/// padding value 0) and `dw += Σ_n g_n · col(x_n)ᵀ`, each block's column matrix of x
/// built once and used by both products while it is in cache. `dw` is summed over
/// chunks of `per_chunk` images in order, as [`backward_weight_by_columns`] sums it.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_and_weight_by_columns<T: Element>(
    problem: &ConvProblem,
    per_chunk: usize,
    x: &[T],
    w: &[T],
    g: &[T],
    y: &mut [T],
    dw: &mut [T],
) -> Result<(), KernelError> {
    let out_len = problem.output_image_len();
    let blocking = weight_blocking::<T>(problem, per_chunk);
    let w = MatRef::new(w, Transpose::No, problem.group_rows());
    let partials: Vec<Vec<T>> = y
        .par_chunks_mut(per_chunk * out_len)
        .enumerate()
        .map(|(chunk, y_chunk)| {
            let mut partial = vec![T::zero(); dw.len()];
            with_scratch::<T, 3, _>(|[col, product, gathered]| {
                let first = chunk * per_chunk;
                for block in problem.blocks(blocking, first..first + y_chunk.len() / out_len) {
                    let cols = problem.block_columns(x, &block, T::zero(), col);
                    let images = &mut y_chunk[(block.first_image - first) * out_len..][..block.images * out_len];
                    multiply_block(problem, &block, w, cols, product, images);
                    let g_mat = problem.block_gradient(g, &block, gathered);
                    add_block_weight_gradient(problem, &block, g_mat, cols, &mut partial);
                }
            });
            partial
        })
        .collect();
    add_in_order(dw, &partials)
}
