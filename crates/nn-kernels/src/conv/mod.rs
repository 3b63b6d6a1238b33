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
//! (`implicit/`): a micro-kernel reads filter taps straight from a padded copy of the
//! image, so no column matrix is built. It covers all three products at any stride,
//! given enough channels to fill its tiles and a filter of more than one tap.
//!
//! For f32 in one to three dimensions on a CPU with AVX2 and FMA (`direct`), the
//! forward pass, the weight gradient and the input gradient at stride 1 run as direct
//! convolutions with output channels in the vector lanes, reading taps from a padded
//! copy of the image (in AVX-512 tiles where the CPU has them; the weight gradient in
//! AVX2). With AVX-512, the direct forward pass and input gradient go before the
//! implicit ones where the planes they write have rows shorter than a vector (7×7,
//! 14×14), and after them elsewhere.
//!
//! Depthwise convolutions (one input channel per group), any element type and rank,
//! copy each plane once with its padding and sum a row's taps in registers
//! (`depthwise`; in AVX2 intrinsics for f32 at stride 1 along rows, and for the
//! forward pass and the weight gradient at stride 2).
//!
//! Everything else (f64, other CPUs, the remaining geometries) goes through column
//! matrices. Work is cut into blocks whose column matrix fits the cache: several
//! small images side by side, or tiles (ranges of output rows) of one large image.
//! For a block, im2col builds `col = [C_in·∏f, width]`; then `y = W · col`,
//! `∂W += ∂y · colᵀ`, `∂col = Wᵀ · ∂y`, and col2im folds ∂col back onto ∂x.
//!
//! Either way, images run in parallel on rayon, and the weight gradient is summed
//! over a fixed partition of the batch, so results do not depend on the thread count.
//! What depends on the problem alone is worked out once, in [`ConvProblem`]'s plan.

#[cfg(test)]
mod backward_tests;
mod columns;
mod depthwise;
#[cfg(test)]
mod depthwise_tests;
#[cfg(target_arch = "x86_64")]
mod direct;
mod im2col;
mod implicit;
mod problem;
pub mod reference;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod transpose_tests;
mod winograd;
#[cfg(test)]
mod winograd_tests;

pub use crate::geometry::{ConvGeometry, KernelMode, OutputRounding, Padding};
pub use problem::{ConvAlgorithm, ConvProblem};

use crate::error::check_len;
use crate::simd::Avx512;
use crate::{Element, KernelError};
use rayon::prelude::*;

/// The weight gradient is summed in this many fixed chunks of the batch (fewer for a
/// small batch) and the chunk sums are added in order: enough chunks to keep every
/// worker busy, and a partition that does not depend on the thread count.
const WEIGHT_GRADIENT_CHUNKS: usize = 8;

/// Forward pass: `y = conv(x, w) + b` for a batch of `batch` images.
///
/// `y` is overwritten. `bias`, when given, has `C_out` elements.
///
/// # Errors
/// [`KernelError::BufferLength`] naming the buffer whose length does not fit the problem and
/// `batch`.
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
        check_len("conv forward: bias", problem.out_channels(), b.len())?;
    }
    if depthwise::applies(problem) {
        depthwise::forward(problem, x, w, bias, pad_value, y);
        return Ok(());
    }
    if let Some(r) = winograd::filter_size(problem) {
        winograd::forward(problem, r, x, w, bias, pad_value, y);
        return Ok(());
    }
    if let (Some(x), Some(w), Some(y)) = (T::as_f32(x), T::as_f32(w), T::as_f32_mut(y)) {
        let (bias, pad_value) = (bias.and_then(T::as_f32), pad_value.as_f64() as f32);
        let implicit = |y: &mut [f32]| {
            Avx512::detect().is_some_and(|isa| {
                let writes = implicit::Writes::for_batch(x, y);
                implicit::forward(isa, problem.implicit_plan(), x, w, bias, pad_value, y, writes)
            })
        };
        #[cfg(target_arch = "x86_64")]
        let direct = |y: &mut [f32]| direct::forward(problem, x, w, bias, pad_value, y);
        #[cfg(not(target_arch = "x86_64"))]
        let direct = |_: &mut [f32]| false;
        if direct_or_implicit(problem.geometry().output(), y, direct, implicit) {
            return Ok(());
        }
    }
    columns::forward_by_columns(problem, x, w, bias, pad_value, y);
    Ok(())
}

/// Whether the direct path goes before the implicit one for a product writing planes
/// of these `extents`: the implicit kernels vectorise along rows and leave most of
/// their 16 lanes empty on rows shorter than that; the direct path vectorises along
/// channels. (On longer rows the implicit kernels measured faster.)
fn direct_goes_first(extents: &[usize]) -> bool {
    extents.last().is_some_and(|&row| row < implicit::LANES)
}

/// Offers `out` (planes of `extents`) to the direct and the implicit product in the
/// order [`direct_goes_first`] picks; whether one of them took it.
fn direct_or_implicit(
    extents: &[usize],
    out: &mut [f32],
    direct: impl Fn(&mut [f32]) -> bool,
    implicit: impl Fn(&mut [f32]) -> bool,
) -> bool {
    if direct_goes_first(extents) {
        return direct(out) || implicit(out);
    }
    implicit(out) || direct(out)
}

/// Input gradient: `∂x = convᵀ(∂y, w)`, overwriting `dx`. Padding cells have no
/// gradient (they are constants), so the padding value plays no part.
///
/// # Errors
/// [`KernelError::BufferLength`] naming the buffer whose length does not fit.
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
    if depthwise::applies(problem) {
        depthwise::backward_input(problem, w, dy, dx);
        return Ok(());
    }
    if let Some(r) = winograd::filter_size(problem) {
        winograd::backward_input(problem, r, w, dy, dx);
        return Ok(());
    }
    if let (Some(w), Some(dy), Some(dx)) = (T::as_f32(w), T::as_f32(dy), T::as_f32_mut(dx)) {
        let implicit = |dx: &mut [f32]| {
            Avx512::detect().is_some_and(|isa| {
                let writes = implicit::Writes::for_batch(dy, dx);
                implicit::backward_input(isa, problem.implicit_plan(), problem, w, dy, dx, writes)
            })
        };
        #[cfg(target_arch = "x86_64")]
        let direct = |dx: &mut [f32]| direct::backward_input(problem, w, dy, dx);
        #[cfg(not(target_arch = "x86_64"))]
        let direct = |_: &mut [f32]| false;
        if direct_or_implicit(problem.geometry().input(), dx, direct, implicit) {
            return Ok(());
        }
    }
    columns::backward_input_by_columns(problem, w, dy, dx);
    Ok(())
}

/// Weight gradient: `∂w += Σ_n ∂y_n · col(x′_n)ᵀ`, accumulated into `dw`. Padded cells
/// contribute the padding value, as the source's `∂y_β/∂w_α = x′_γ` says.
///
/// # Errors
/// [`KernelError::BufferLength`] naming the buffer whose length does not fit.
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
    if depthwise::applies(problem) {
        depthwise::backward_weight(problem, batch, x, dy, pad_value, dw);
        return Ok(());
    }
    let per_chunk = batch.div_ceil(WEIGHT_GRADIENT_CHUNKS.min(batch));
    if let Some(r) = winograd::filter_size(problem) {
        winograd::backward_weight(problem, r, batch, per_chunk, x, dy, pad_value, dw);
        return Ok(());
    }
    if let (Some(isa), Some(x), Some(dy), Some(dw)) = (Avx512::detect(), T::as_f32(x), T::as_f32(dy), T::as_f32_mut(dw))
    {
        let pad_value = pad_value.as_f64() as f32;
        if implicit::backward_weight(isa, problem.implicit_plan(), problem, batch, per_chunk, x, dy, pad_value, dw) {
            return Ok(());
        }
    }
    #[cfg(target_arch = "x86_64")]
    if let (Some(x), Some(dy), Some(dw)) = (T::as_f32(x), T::as_f32(dy), T::as_f32_mut(dw)) {
        if direct::backward_weight(problem, batch, per_chunk, x, dy, pad_value.as_f64() as f32, dw) {
            return Ok(());
        }
    }
    columns::backward_weight_by_columns(problem, batch, per_chunk, x, dy, pad_value, dw)
}

/// Bias gradient: `∂b[o] += Σ_n Σ_β ∂y[n, o, β]`.
///
/// # Errors
/// [`KernelError::BufferLength`] naming the buffer whose length does not fit.
pub fn conv_backward_bias<T: Element>(
    problem: &ConvProblem,
    batch: usize,
    dy: &[T],
    db: &mut [T],
) -> Result<(), KernelError> {
    problem.check_batch("conv backward bias: dy", dy.len(), problem.output_image_len(), batch)?;
    check_len("conv backward bias: db", problem.out_channels(), db.len())?;
    add_channel_sums(dy, problem.geometry().output_len(), db);
    Ok(())
}

/// All of a convolution's derivatives in one call: [`conv_backward_bias`] when `db` is
/// given, [`conv_backward_weight`], and [`conv_backward_input`] (overwriting `dx`) when
/// `dx` is given; the same bits as the separate calls. A depthwise problem with at
/// least two input channels per thread takes all three in one walk over each
/// channel's planes, reading x and ∂y from memory once.
///
/// # Errors
/// [`KernelError::BufferLength`] naming the buffer whose length does not fit.
#[allow(clippy::too_many_arguments)]
pub fn conv_backward<T: Element>(
    problem: &ConvProblem,
    batch: usize,
    x: &[T],
    w: &[T],
    dy: &[T],
    pad_value: T,
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
) -> Result<(), KernelError> {
    // Fewer channels than that would leave threads idle that the separate passes,
    // parallel over images too, keep busy.
    let one_walk = depthwise::applies(problem) && problem.in_channels() >= 2 * rayon::current_num_threads();
    if !one_walk || batch == 0 {
        if let Some(db) = db {
            conv_backward_bias(problem, batch, dy, db)?;
        }
        conv_backward_weight(problem, batch, x, dy, pad_value, dw)?;
        return match dx {
            Some(dx) => conv_backward_input(problem, batch, w, dy, dx),
            None => Ok(()),
        };
    }
    problem.check_batch("conv backward: x", x.len(), problem.input_image_len(), batch)?;
    problem.check_batch("conv backward: dy", dy.len(), problem.output_image_len(), batch)?;
    check_len("conv backward: w", problem.weight_len(), w.len())?;
    check_len("conv backward: dw", problem.weight_len(), dw.len())?;
    if let Some(dx) = &dx {
        problem.check_batch("conv backward: dx", dx.len(), problem.input_image_len(), batch)?;
    }
    if let Some(db) = &db {
        check_len("conv backward: db", problem.out_channels(), db.len())?;
    }
    depthwise::backward(problem, batch, x, w, dy, pad_value, dx, dw, db);
    Ok(())
}

/// Transposed convolution, the adjoint of `problem`'s convolution with respect to its
/// input: `z = convᵀ(x, w) + b`, x shaped as the convolution's output
/// (`[batch, C_out, v…]`), z as its input (`[batch, C_in, μ…]`), b with `C_in`
/// elements. It is [`conv_backward_input`] with a bias; its input gradient is
/// [`conv_forward`] (padding value 0, no bias), its weight gradient
/// [`conv_backward_weight`] with `∂z` as the input and x as the output gradient.
///
/// # Errors
/// [`KernelError::BufferLength`] naming the buffer whose length does not fit.
pub fn conv_transpose_forward<T: Element>(
    problem: &ConvProblem,
    batch: usize,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    z: &mut [T],
) -> Result<(), KernelError> {
    conv_backward_input(problem, batch, w, x, z)?;
    if let Some(b) = bias {
        check_len("conv transpose forward: bias", problem.in_channels(), b.len())?;
        let plane = problem.geometry().input_len();
        z.par_chunks_mut(plane).enumerate().for_each(|(i, z)| crate::elementwise::add_scalar(z, b[i % b.len()]));
    }
    Ok(())
}

/// The derivatives of [`conv_transpose_forward`] but its bias's: `∂x = conv(∂z, w)`
/// (padding value 0, no bias) when `dx` is given, overwriting it, and
/// `∂w += conv_w(∂z, x)`, [`conv_backward_weight`] with `∂z` as the input and x as
/// the output gradient. Where both run on the column path, each block's column matrix
/// of `∂z` is built once for both products (the same `∂w` bits as the separate call).
///
/// # Errors
/// [`KernelError::BufferLength`] naming the buffer whose length does not fit.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose_backward<T: Element>(
    problem: &ConvProblem,
    batch: usize,
    dz: &[T],
    x: &[T],
    w: &[T],
    dx: Option<&mut [T]>,
    dw: &mut [T],
) -> Result<(), KernelError> {
    let Some(dx) = dx else { return conv_backward_weight(problem, batch, dz, x, T::zero(), dw) };
    if !columns_take_forward_and_weight::<T>(problem) {
        conv_backward_weight(problem, batch, dz, x, T::zero(), dw)?;
        return conv_forward(problem, batch, dz, w, None, T::zero(), dx);
    }
    problem.check_batch("conv transpose backward: dz", dz.len(), problem.input_image_len(), batch)?;
    problem.check_batch("conv transpose backward: x", x.len(), problem.output_image_len(), batch)?;
    problem.check_batch("conv transpose backward: dx", dx.len(), problem.output_image_len(), batch)?;
    check_len("conv transpose backward: w", problem.weight_len(), w.len())?;
    check_len("conv transpose backward: dw", problem.weight_len(), dw.len())?;
    if batch == 0 {
        return Ok(());
    }
    let per_chunk = batch.div_ceil(WEIGHT_GRADIENT_CHUNKS.min(batch));
    columns::forward_and_weight_by_columns(problem, per_chunk, dz, w, x, dx, dw)
}

/// Whether [`conv_forward`] and [`conv_backward_weight`] both take the column path
/// for `problem` and element type `T` on this CPU.
fn columns_take_forward_and_weight<T: Element>(problem: &ConvProblem) -> bool {
    let f32_elements = T::as_f32(&[T::zero()]).is_some();
    if depthwise::applies(problem) || winograd::filter_size(problem).is_some() {
        return false;
    }
    if f32_elements && Avx512::detect().is_some() && problem.implicit_plan().has_forward_or_weight() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if f32_elements && direct::takes(problem) {
        return false;
    }
    true
}

/// The bias gradient of [`conv_transpose_forward`]: `∂b[c] += Σ_n Σ_γ ∂z[n, c, γ]`.
///
/// # Errors
/// [`KernelError::BufferLength`] naming the buffer whose length does not fit.
pub fn conv_transpose_backward_bias<T: Element>(
    problem: &ConvProblem,
    batch: usize,
    dz: &[T],
    db: &mut [T],
) -> Result<(), KernelError> {
    problem.check_batch("conv transpose backward bias: dz", dz.len(), problem.input_image_len(), batch)?;
    check_len("conv transpose backward bias: db", problem.in_channels(), db.len())?;
    add_channel_sums(dz, problem.geometry().input_len(), db);
    Ok(())
}

/// `db[c] += Σ` of every plane of channel c in `[n, C, plane]` data (C = `db.len()`).
fn add_channel_sums<T: Element>(data: &[T], plane: usize, db: &mut [T]) {
    if plane == 0 {
        return;
    }
    // The planes are summed on every worker, then added in order: the same sums in
    // the same order as one plane after another, a memory sweep shared by the cores.
    let planes_per_task = crate::elementwise::PARALLEL_CHUNK.div_ceil(plane);
    let sums: Vec<T> = data.par_chunks(plane).with_min_len(planes_per_task).map(crate::elementwise::sum).collect();
    let channels = db.len();
    for (i, sum) in sums.into_iter().enumerate() {
        db[i % channels] += sum;
    }
}
