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
//! For f32 on a CPU with AVX-512F, the three products run as implicit GEMMs
//! (`implicit`): a micro-kernel reads filter taps straight from a padded copy of the
//! image, so no column matrix is built. It covers all three products at any stride,
//! given enough channels to fill its tiles.
//!
//! Everything else (f64, other CPUs, the remaining geometries) goes through column
//! matrices. Work is cut into blocks whose column matrix fits the cache: several
//! small images side by side, or tiles (ranges of output rows) of one large image.
//! For a block, im2col builds `col = [C_in·∏f, width]`; then `y = W · col`,
//! `∂W += ∂y · colᵀ`, `∂col = Wᵀ · ∂y`, and col2im folds ∂col back onto ∂x.
//!
//! Either way, images run in parallel on rayon, and the weight gradient is summed
//! over a fixed partition of the batch, so results do not depend on the thread count.

mod geometry;
mod im2col;
mod implicit;
pub mod reference;
#[cfg(test)]
mod tests;

pub use geometry::{ConvGeometry, KernelMode, OutputRounding, Padding};

use crate::error::check_len;
use crate::gemm::{gemm_ld, MatRef, Transpose};
use crate::workspace::{fit, with_scratch};
use crate::{Element, GeometryError, KernelError};
use im2col::Placement;
use rayon::prelude::*;

/// The weight gradient is summed in this many fixed chunks of the batch (fewer for a
/// small batch) and the chunk sums are added in order: enough chunks to keep every
/// worker busy, and a partition that does not depend on the thread count.
const WEIGHT_GRADIENT_CHUNKS: usize = 8;

/// Column matrices of several images are built side by side, up to this many bytes,
/// so that one GEMM serves a group (fewer, larger products) while the matrix stays
/// in the L2 cache between im2col and the GEMM.
const COL_BUDGET_BYTES: usize = 1 << 20;

/// Images are put side by side until the block has this many columns (output cells):
/// narrower products waste the GEMM's packing, wider ones its cache.
const MIN_BLOCK_WIDTH: usize = 768;

/// A convolution over `in_channels` planes of one geometry, producing `out_channels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvProblem {
    /// The per-plane geometry.
    pub geometry: ConvGeometry,
    /// C_in.
    pub in_channels: usize,
    /// C_out.
    pub out_channels: usize,
    /// Bytes of column matrix one block of work may fill (see [`ConvProblem::with_col_budget`]).
    col_budget: usize,
}

impl ConvProblem {
    /// A problem with validated sizes: channel counts positive and every buffer length
    /// representable.
    pub fn new(geometry: ConvGeometry, in_channels: usize, out_channels: usize) -> Result<Self, GeometryError> {
        if in_channels == 0 {
            return Err(GeometryError::Zero { what: "input channel count", dim: 0 });
        }
        if out_channels == 0 {
            return Err(GeometryError::Zero { what: "output channel count", dim: 0 });
        }
        let checked =
            |a: usize, b: usize| a.checked_mul(b).ok_or(GeometryError::Overflow { what: "convolution buffer size" });
        let col_rows = checked(in_channels, geometry.filter_len())?;
        checked(col_rows, geometry.output_len())?;
        checked(col_rows, out_channels)?;
        checked(in_channels, geometry.input_len())?;
        checked(out_channels, geometry.output_len())?;
        let problem = Self { geometry, in_channels, out_channels, col_budget: COL_BUDGET_BYTES };
        Ok(problem)
    }

    /// Sets how many bytes of column matrix one block of work may fill (default 1 MiB,
    /// tuned on a 2 MiB L2). Smaller budgets cut images into tiles; larger ones put
    /// more images side by side. Results are the same up to rounding.
    pub fn with_col_budget(mut self, bytes: usize) -> Self {
        self.col_budget = bytes.max(1);
        self
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

    fn check_batch(&self, what: &'static str, len: usize, per_image: usize, batch: usize) -> Result<(), KernelError> {
        let expected = batch.checked_mul(per_image).ok_or(GeometryError::Overflow { what: "batch buffer size" })?;
        check_len(what, expected, len)
    }

    /// How to cut the batch into blocks whose column matrix fits the column budget:
    /// several whole images side by side, or tiles of runs of one image when one
    /// image's matrix is too large. A pointwise convolution uses the image itself as
    /// its column matrix: whole images, one at a time.
    fn plan<T>(&self) -> Plan {
        let runs = self.geometry.run_table().runs_per_row();
        if self.geometry.is_pointwise() {
            return Plan { images: 1, runs_per_tile: runs };
        }
        let per_image = self.col_len() * std::mem::size_of::<T>();
        if per_image <= self.col_budget {
            // Enough images side by side for a wide product, within the budget.
            let wanted = MIN_BLOCK_WIDTH.div_ceil(self.geometry.output_len());
            return Plan { images: wanted.min(self.col_budget / per_image).max(1), runs_per_tile: runs };
        }
        let per_run = per_image / runs;
        Plan { images: 1, runs_per_tile: (self.col_budget / per_run).clamp(1, runs) }
    }

    /// The column matrix of a block (`[C_in·∏f, width]`), built in `col`, or the image
    /// itself when the convolution is pointwise.
    fn block_columns<'a, T: Element>(&self, x: &'a [T], block: &Block, pad_value: T, col: &'a mut Vec<T>) -> &'a [T] {
        let in_len = self.input_image_len();
        let images = &x[block.first_image * in_len..(block.first_image + block.images) * in_len];
        if self.geometry.is_pointwise() {
            return images;
        }
        let width = block.width(&self.geometry);
        let tile_width = width / block.images;
        let col = fit(col, self.col_rows() * width);
        for (i, image) in images.chunks(in_len).enumerate() {
            let at = Placement { ld: width, offset: i * tile_width };
            im2col::im2col(&self.geometry, self.in_channels, pad_value, image, block.runs.clone(), col, at);
        }
        col
    }

    /// ∂y of a block as a `C_out × width` matrix: a strided view of the image for a
    /// single image, else gathered channel-major into `buffer`.
    fn block_gradient<'a, T: Element>(&self, dy: &'a [T], block: &Block, buffer: &'a mut Vec<T>) -> MatRef<'a, T> {
        let (out_len, plane) = (self.output_image_len(), self.geometry.output_len());
        let images = &dy[block.first_image * out_len..(block.first_image + block.images) * out_len];
        if block.images == 1 {
            let first = block.runs.start * self.geometry.output()[self.geometry.rank() - 1];
            return MatRef { data: &images[first..], ld: plane, trans: Transpose::No };
        }
        gather_channels(images, self.out_channels, plane, buffer);
        MatRef { data: &buffer[..images.len()], ld: block.images * plane, trans: Transpose::No }
    }

    /// The blocks of images `images`, in order.
    fn blocks(&self, plan: Plan, images: std::ops::Range<usize>) -> impl Iterator<Item = Block> + '_ {
        let runs = self.geometry.run_table().runs_per_row();
        let starts = images.clone().step_by(plan.images);
        starts.flat_map(move |first_image| {
            let count = plan.images.min(images.end - first_image);
            (0..runs).step_by(plan.runs_per_tile).map(move |r| Block {
                first_image,
                images: count,
                runs: r..(r + plan.runs_per_tile).min(runs),
            })
        })
    }
}

/// Images per block, or runs per tile of a single image.
#[derive(Debug, Clone, Copy)]
struct Plan {
    images: usize,
    runs_per_tile: usize,
}

/// A unit of work: `images` whole images from `first_image`, or (with one image) the
/// output runs `runs` of it.
#[derive(Debug, Clone)]
struct Block {
    first_image: usize,
    images: usize,
    runs: std::ops::Range<usize>,
}

impl Block {
    /// Columns of the block's matrix.
    fn width(&self, geometry: &ConvGeometry) -> usize {
        self.images * self.runs.len() * geometry.output()[geometry.rank() - 1]
    }
}

/// `[n, C, P]` (image-major) to `[C, n·P]` (channel-major), the layout in which a
/// group's gradient multiplies its column matrix.
fn gather_channels<T: Element>(src: &[T], channels: usize, plane: usize, dst: &mut Vec<T>) {
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
    problem.check_batch("conv forward: y", y.len(), problem.output_image_len(), batch)?;
    check_len("conv forward: w", problem.weight_len(), w.len())?;
    if let Some(b) = bias {
        check_len("conv forward: bias", problem.out_channels, b.len())?;
    }
    if let (Some(x), Some(w), Some(y)) = (T::as_f32(x), T::as_f32(w), T::as_f32_mut(y)) {
        let bias = bias.and_then(T::as_f32);
        let writes = implicit::Writes::for_batch(x, y);
        if implicit::forward(problem, x, w, bias, pad_value.as_f64() as f32, y, writes) {
            return Ok(());
        }
    }
    forward_by_columns(problem, x, w, bias, pad_value, y);
    Ok(())
}

/// The forward pass through column matrices and GEMMs (any element type and CPU).
fn forward_by_columns<T: Element>(
    problem: &ConvProblem,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    pad_value: T,
    y: &mut [T],
) {
    let out_len = problem.output_image_len();
    let (plane, rows, c_out) = (problem.geometry.output_len(), problem.col_rows(), problem.out_channels);
    let plan = problem.plan::<T>();
    let w = MatRef::new(w, Transpose::No, rows);
    y.par_chunks_mut(plan.images * out_len).enumerate().for_each(|(task, y_task)| {
        with_scratch::<T, 2, _>(|[col, product]| {
            let first = task * plan.images;
            for block in problem.blocks(plan, first..first + y_task.len() / out_len) {
                let cols = problem.block_columns(x, &block, pad_value, col);
                let width = block.width(&problem.geometry);
                let cols = MatRef::new(cols, Transpose::No, width);
                if block.images == 1 {
                    // Straight into the image's planes, at the tile's columns.
                    let offset = block.runs.start * problem.geometry.output()[problem.geometry.rank() - 1];
                    let y_n = &mut y_task[(block.first_image - first) * out_len..][..out_len];
                    gemm_ld(c_out, width, rows, T::one(), w, cols, T::zero(), &mut y_n[offset..], plane);
                } else {
                    let product = fit(product, c_out * width);
                    gemm_ld(c_out, width, rows, T::one(), w, cols, T::zero(), product, width);
                    let images = &mut y_task[(block.first_image - first) * out_len..][..block.images * out_len];
                    scatter_channels(product, c_out, plane, images);
                }
            }
            if let Some(b) = bias {
                for (i, y_plane) in y_task.chunks_mut(plane).enumerate() {
                    crate::elementwise::add_scalar(y_plane, b[i % c_out]);
                }
            }
        })
    });
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
    problem.check_batch("conv backward input: dy", dy.len(), problem.output_image_len(), batch)?;
    problem.check_batch("conv backward input: dx", dx.len(), problem.input_image_len(), batch)?;
    check_len("conv backward input: w", problem.weight_len(), w.len())?;
    if let (Some(w), Some(dy), Some(dx)) = (T::as_f32(w), T::as_f32(dy), T::as_f32_mut(dx)) {
        let writes = implicit::Writes::for_batch(dy, dx);
        if implicit::backward_input(problem, w, dy, dx, writes) {
            return Ok(());
        }
    }
    backward_input_by_columns(problem, w, dy, dx);
    Ok(())
}

/// The input gradient through GEMMs into column matrices and col2im (any element type
/// and CPU).
fn backward_input_by_columns<T: Element>(problem: &ConvProblem, w: &[T], dy: &[T], dx: &mut [T]) {
    let in_len = problem.input_image_len();
    let (rows, c_out) = (problem.col_rows(), problem.out_channels);
    let plan = problem.plan::<T>();
    let w = MatRef::new(w, Transpose::Yes, rows);
    dx.par_chunks_mut(plan.images * in_len).enumerate().for_each(|(task, dx_task)| {
        with_scratch::<T, 2, _>(|[dcol, gathered]| {
            let first = task * plan.images;
            if problem.geometry.is_pointwise() {
                // The column matrix is the input itself: ∂x = Wᵀ·∂y directly.
                for block in problem.blocks(plan, first..first + dx_task.len() / in_len) {
                    let width = block.width(&problem.geometry);
                    let dy_mat = problem.block_gradient(dy, &block, gathered);
                    let dx_n = &mut dx_task[(block.first_image - first) * in_len..][..in_len];
                    gemm_ld(rows, width, c_out, T::one(), w, dy_mat, T::zero(), dx_n, width);
                }
                return;
            }
            dx_task.fill(T::zero());
            for block in problem.blocks(plan, first..first + dx_task.len() / in_len) {
                let width = block.width(&problem.geometry);
                let dy_mat = problem.block_gradient(dy, &block, gathered);
                let dcol = fit(dcol, rows * width);
                gemm_ld(rows, width, c_out, T::one(), w, dy_mat, T::zero(), dcol, width);
                let tile_width = width / block.images;
                let images = &mut dx_task[(block.first_image - first) * in_len..][..block.images * in_len];
                for (i, dx_n) in images.chunks_mut(in_len).enumerate() {
                    let at = Placement { ld: width, offset: i * tile_width };
                    im2col::col2im_add(&problem.geometry, problem.in_channels, dcol, at, block.runs.clone(), dx_n);
                }
            }
        })
    });
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
    problem.check_batch("conv backward weight: x", x.len(), problem.input_image_len(), batch)?;
    problem.check_batch("conv backward weight: dy", dy.len(), problem.output_image_len(), batch)?;
    check_len("conv backward weight: dw", problem.weight_len(), dw.len())?;
    if batch == 0 {
        return Ok(());
    }
    let per_chunk = batch.div_ceil(WEIGHT_GRADIENT_CHUNKS.min(batch));
    if let (Some(x), Some(dy), Some(dw)) = (T::as_f32(x), T::as_f32(dy), T::as_f32_mut(dw)) {
        if implicit::backward_weight(problem, batch, per_chunk, x, dy, pad_value.as_f64() as f32, dw) {
            return Ok(());
        }
    }
    backward_weight_by_columns(problem, batch, per_chunk, x, dy, pad_value, dw)
}

/// The weight gradient through column matrices and GEMMs (any element type and CPU),
/// summed over chunks of `per_chunk` images.
fn backward_weight_by_columns<T: Element>(
    problem: &ConvProblem,
    batch: usize,
    per_chunk: usize,
    x: &[T],
    dy: &[T],
    pad_value: T,
    dw: &mut [T],
) -> Result<(), KernelError> {
    let (rows, c_out) = (problem.col_rows(), problem.out_channels);
    let plan = problem.plan::<T>();
    let plan = Plan { images: plan.images.min(per_chunk), ..plan };
    let partials: Vec<Vec<T>> = (0..batch.div_ceil(per_chunk))
        .into_par_iter()
        .map(|chunk| {
            let mut partial = vec![T::zero(); dw.len()];
            with_scratch::<T, 2, _>(|[col, gathered]| {
                for block in problem.blocks(plan, chunk * per_chunk..((chunk + 1) * per_chunk).min(batch)) {
                    let width = block.width(&problem.geometry);
                    let cols = MatRef::new(problem.block_columns(x, &block, pad_value, col), Transpose::Yes, width);
                    let dy_mat = problem.block_gradient(dy, &block, gathered);
                    gemm_ld(c_out, rows, width, T::one(), dy_mat, cols, T::one(), &mut partial, rows);
                }
            });
            partial
        })
        .collect();
    for partial in &partials {
        crate::elementwise::add_assign(dw, partial)?;
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
    problem.check_batch("conv backward bias: dy", dy.len(), problem.output_image_len(), batch)?;
    check_len("conv backward bias: db", problem.out_channels, db.len())?;
    let plane = problem.geometry.output_len();
    if plane == 0 {
        return Ok(());
    }
    // The planes are summed on every worker, then added in order: the same sums in
    // the same order as one plane after another, a memory sweep shared by the cores
    // (C2's bias gradient alone was 11% of its two-thread forward and backward).
    let planes_per_task = crate::elementwise::PARALLEL_CHUNK.div_ceil(plane);
    let sums: Vec<T> = dy.par_chunks(plane).with_min_len(planes_per_task).map(crate::elementwise::sum).collect();
    for (i, sum) in sums.into_iter().enumerate() {
        db[i % problem.out_channels] += sum;
    }
    Ok(())
}
