//! Depthwise convolution (one group per input channel, `C_out/C_in` filters each), any
//! number of dimensions. Each plane is copied once into scratch with its padding, so
//! that every tap reads in bounds; then a few dozen output cells of a row at a time sum
//! all their taps in registers and are written once. Work is split by planes (forward,
//! input gradient) and by output channels (weight gradient: each channel sums its
//! images in order), so results do not depend on the thread count.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod walk;

use super::ConvProblem;
use crate::simd::avx2_dispatch;
use crate::workspace::{fit, with_scratch};
use crate::Element;
use rayon::prelude::*;
use walk::{Gather, Walk};

/// Vectors of output cells a forward or input-gradient step keeps in registers, with
/// room left for the operands.
const VECTORS: usize = 4;

/// Whether `problem` is depthwise (more than one group, one input channel per group).
pub(super) fn applies(problem: &ConvProblem) -> bool {
    problem.groups() > 1 && problem.groups() == problem.in_channels()
}

/// The intrinsics build, for f32 at stride 1 along rows, where the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
fn fast(walk: &Walk) -> Option<crate::simd::Avx2Fma> {
    (walk.stride == 1).then(crate::simd::Avx2Fma::detect).flatten()
}

/// `y = conv(x, w) + b`, plane by plane.
pub(super) fn forward<T: Element>(problem: &ConvProblem, x: &[T], w: &[T], bias: Option<&[T]>, pad: T, y: &mut [T]) {
    let (c_in, c_out) = (problem.in_channels(), problem.out_channels());
    let (in_plane, out_plane, taps) =
        (problem.geometry().input_len(), problem.geometry().output_len(), problem.geometry().filter_len());
    let walk = Walk::new(problem.geometry());
    y.par_chunks_mut(out_plane).enumerate().for_each(|(plane, y)| {
        let (n, o) = (plane / c_out, plane % c_out);
        let c = o / (c_out / c_in);
        let x = &x[(n * c_in + c) * in_plane..][..in_plane];
        let (w, bias) = (&w[o * taps..][..taps], bias.map_or(T::zero(), |b| b[o]));
        with_scratch::<T, 1, _>(|[xp]| {
            let xp = fit(xp, walk.padded_len());
            walk.pad(x, pad, xp);
            #[cfg(target_arch = "x86_64")]
            if let (Some(isa), Some(w), Some(xp), Some(y)) =
                (fast(&walk), T::as_f32(w), T::as_f32(xp), T::as_f32_mut(y))
            {
                return avx2::forward_plane(isa, &walk, w, xp, bias.as_f64() as f32, y);
            }
            forward_plane(&walk, w, xp, bias, y);
        });
    });
}

avx2_dispatch!(fn forward_plane<T: Element>(walk: &Walk, w: &[T], xp: &[T], bias: T, y: &mut [T]) => forward_plane_body);

#[inline(always)]
fn forward_plane_body<T: Element>(walk: &Walk, w: &[T], xp: &[T], bias: T, y: &mut [T]) {
    for (&start, y) in walk.out_rows.iter().zip(y.chunks_exact_mut(walk.out_row)) {
        let xp = &xp[start..];
        for (j, vectors) in Steps::new(y.len(), T::WIDTH) {
            match vectors {
                0 => forward_cells::<T, 0>(walk, w, xp, j, bias, y),
                1 => forward_cells::<T, 1>(walk, w, xp, j, bias, y),
                2 => forward_cells::<T, 2>(walk, w, xp, j, bias, y),
                3 => forward_cells::<T, 3>(walk, w, xp, j, bias, y),
                _ => forward_cells::<T, VECTORS>(walk, w, xp, j, bias, y),
            }
        }
    }
}

/// A row of `len` cells cut into steps of `VECTORS` vectors, one step of fewer, and
/// single cells (steps of 0 vectors): yields (first cell, vectors). An iterator, not a
/// closure, so that the step's body is compiled into the caller's AVX2 build.
struct Steps {
    next: usize,
    len: usize,
    width: usize,
}

impl Steps {
    #[inline(always)]
    fn new(len: usize, width: usize) -> Self {
        Self { next: 0, len, width }
    }
}

impl Iterator for Steps {
    type Item = (usize, usize);

    #[inline(always)]
    fn next(&mut self) -> Option<(usize, usize)> {
        let (j, left) = (self.next, self.len - self.next);
        let vectors = (left / self.width).min(VECTORS);
        self.next += if vectors == 0 { 1 } else { vectors * self.width };
        (left > 0).then_some((j, vectors))
    }
}

/// `WIDTH` cells of `x` from `first`, `stride` apart.
#[inline(always)]
fn load<T: Element>(x: &[T], first: usize, stride: usize) -> T::V {
    if stride == 1 {
        return T::load(&x[first..]);
    }
    let mut lanes = [T::zero(); 8];
    for (l, lane) in lanes[..T::WIDTH].iter_mut().enumerate() {
        *lane = x[first + l * stride];
    }
    T::load(&lanes)
}

/// Cells `j..` of output row `y` (V vectors of them, or one cell when V is 0), whose
/// taps start at `xp[0]`.
#[inline(always)]
fn forward_cells<T: Element, const V: usize>(walk: &Walk, w: &[T], xp: &[T], j: usize, bias: T, y: &mut [T]) {
    let (stride, width) = (walk.stride, T::WIDTH);
    if V == 0 {
        let mut sum = bias;
        for &(row, first_weight) in &walk.tap_rows {
            for (&offset, &weight) in walk.offsets.iter().zip(&w[first_weight..]) {
                sum += weight * xp[row + j * stride + offset];
            }
        }
        y[j] = sum;
        return;
    }
    let mut acc = [T::splat(bias); V];
    for &(row, first_weight) in &walk.tap_rows {
        let x = &xp[row + j * stride..];
        for (&offset, &weight) in walk.offsets.iter().zip(&w[first_weight..]) {
            let weight = T::splat(weight);
            for (v, acc) in acc.iter_mut().enumerate() {
                *acc = *acc + weight * load::<T>(x, offset + v * width * stride, stride);
            }
        }
    }
    for (v, &acc) in acc.iter().enumerate() {
        T::store(acc, &mut y[j + v * width..]);
    }
}

/// `∂x = convᵀ(∂y, w)`, plane by plane: at stride 1 along rows each input cell
/// gathers its taps in registers; otherwise the taps are scattered into a padded
/// gradient plane whose interior is then kept (padded cells are constants).
pub(super) fn backward_input<T: Element>(problem: &ConvProblem, w: &[T], dy: &[T], dx: &mut [T]) {
    let (c_in, c_out) = (problem.in_channels(), problem.out_channels());
    let (in_plane, out_plane, taps) =
        (problem.geometry().input_len(), problem.geometry().output_len(), problem.geometry().filter_len());
    let multiplier = c_out / c_in;
    let walk = Walk::new(problem.geometry());
    let gather = (walk.stride == 1).then(|| Gather::new(&walk, problem.geometry()));
    dx.par_chunks_mut(in_plane).enumerate().for_each(|(plane, dx)| {
        let (n, c) = (plane / c_in, plane % c_in);
        // The output channels of input channel c, side by side in dy and w.
        let dy = &dy[(n * c_out + c * multiplier) * out_plane..][..multiplier * out_plane];
        let w = &w[c * multiplier * taps..][..multiplier * taps];
        with_scratch::<T, 1, _>(|[scratch]| match &gather {
            Some(gather) => {
                let dyp = fit(scratch, multiplier * gather.plane_len());
                for (dy, dyp) in dy.chunks_exact(out_plane).zip(dyp.chunks_exact_mut(gather.plane_len())) {
                    gather.pad(walk.out_row, dy, dyp);
                }
                #[cfg(target_arch = "x86_64")]
                if let (Some(isa), Some(w), Some(dyp), Some(dx)) =
                    (fast(&walk), T::as_f32(w), T::as_f32(dyp), T::as_f32_mut(dx))
                {
                    return avx2::gather_plane(isa, &walk, gather, w, dyp, dx);
                }
                gather_plane(&walk, gather, w, dyp, dx);
            }
            None => {
                let dxp = fit(scratch, walk.padded_len());
                dxp.fill(T::zero());
                for (w, dy) in w.chunks_exact(taps).zip(dy.chunks_exact(out_plane)) {
                    scatter_plane(&walk, w, dy, dxp);
                }
                walk.unpad(dxp, dx);
            }
        });
    });
}

avx2_dispatch!(fn gather_plane<T: Element>(walk: &Walk, gather: &Gather, w: &[T], dyp: &[T], dx: &mut [T]) => gather_plane_body);

#[inline(always)]
fn gather_plane_body<T: Element>(walk: &Walk, gather: &Gather, w: &[T], dyp: &[T], dx: &mut [T]) {
    for (row, dx) in dx.chunks_exact_mut(walk.in_row).enumerate() {
        for (c, vectors) in Steps::new(dx.len(), T::WIDTH) {
            match vectors {
                0 => gather_cells::<T, 0>(walk, gather, row, w, dyp, c, dx),
                1 => gather_cells::<T, 1>(walk, gather, row, w, dyp, c, dx),
                2 => gather_cells::<T, 2>(walk, gather, row, w, dyp, c, dx),
                3 => gather_cells::<T, 3>(walk, gather, row, w, dyp, c, dx),
                _ => gather_cells::<T, VECTORS>(walk, gather, row, w, dyp, c, dx),
            }
        }
    }
}

/// Cells `c..` of input row `row` (V vectors of them, or one cell when V is 0):
/// `Σ_o Σ_links Σ_k w·∂y`, the output gradient read from its padded copies `dyp` (one
/// per output channel of this input channel).
#[inline(always)]
fn gather_cells<T: Element, const V: usize>(
    walk: &Walk,
    gather: &Gather,
    row: usize,
    w: &[T],
    dyp: &[T],
    c: usize,
    dx: &mut [T],
) {
    let width = T::WIDTH;
    let taps = w.len() / (dyp.len() / gather.plane_len());
    let mut acc = [T::splat(T::zero()); V];
    let mut sum = T::zero();
    for (w, dyp) in w.chunks_exact(taps).zip(dyp.chunks_exact(gather.plane_len())) {
        for &(out_row, first_weight) in gather.links(row) {
            let g = &dyp[out_row + gather.shift + c - gather.margin()..];
            for (&offset, &weight) in walk.offsets.iter().zip(&w[first_weight..]) {
                // The margin is the largest offset, so this read starts in bounds.
                let at = gather.margin() - offset;
                if V == 0 {
                    sum += weight * g[at];
                }
                let weight = T::splat(weight);
                for (v, acc) in acc.iter_mut().enumerate() {
                    *acc = *acc + weight * T::load(&g[at + v * width..]);
                }
            }
        }
    }
    if V == 0 {
        dx[c] = sum;
    }
    for (v, &acc) in acc.iter().enumerate() {
        T::store(acc, &mut dx[c + v * width..]);
    }
}

avx2_dispatch!(fn scatter_plane<T: Element>(walk: &Walk, w: &[T], dy: &[T], dxp: &mut [T]) => scatter_plane_body);

#[inline(always)]
fn scatter_plane_body<T: Element>(walk: &Walk, w: &[T], dy: &[T], dxp: &mut [T]) {
    let stride = walk.stride;
    for (&start, dy) in walk.out_rows.iter().zip(dy.chunks_exact(walk.out_row)) {
        for &(row, first_weight) in &walk.tap_rows {
            for (&offset, &weight) in walk.offsets.iter().zip(&w[first_weight..]) {
                let dxp = &mut dxp[start + row + offset..];
                for (j, &g) in dy.iter().enumerate() {
                    dxp[j * stride] += weight * g;
                }
            }
        }
    }
}

/// `∂w += Σ_n Σ_β ∂y[n, o, β]·x′[n, c, γ(β, α)]`, one output channel per task, its
/// images summed in order.
pub(super) fn backward_weight<T: Element>(
    problem: &ConvProblem,
    batch: usize,
    x: &[T],
    dy: &[T],
    pad: T,
    dw: &mut [T],
) {
    let (c_in, c_out) = (problem.in_channels(), problem.out_channels());
    let (in_plane, out_plane, taps) =
        (problem.geometry().input_len(), problem.geometry().output_len(), problem.geometry().filter_len());
    let multiplier = c_out / c_in;
    let walk = Walk::new(problem.geometry());
    dw.par_chunks_mut(taps).enumerate().for_each(|(o, dw)| {
        let c = o / multiplier;
        with_scratch::<T, 1, _>(|[xp]| {
            let xp = fit(xp, walk.padded_len());
            for n in 0..batch {
                walk.pad(&x[(n * c_in + c) * in_plane..][..in_plane], pad, xp);
                let dy = &dy[(n * c_out + o) * out_plane..][..out_plane];
                #[cfg(target_arch = "x86_64")]
                if let (Some(isa), Some(xp), Some(dy), Some(dw)) =
                    (fast(&walk), T::as_f32(xp), T::as_f32(dy), T::as_f32_mut(dw))
                {
                    avx2::weight_plane(isa, &walk, xp, dy, dw);
                    continue;
                }
                weight_plane(&walk, xp, dy, dw);
            }
        });
    });
}

avx2_dispatch!(fn weight_plane<T: Element>(walk: &Walk, xp: &[T], dy: &[T], dw: &mut [T]) => weight_plane_body);

#[inline(always)]
fn weight_plane_body<T: Element>(walk: &Walk, xp: &[T], dy: &[T], dw: &mut [T]) {
    for &(row, first_weight) in &walk.tap_rows {
        let dw = &mut dw[first_weight..][..walk.offsets.len()];
        let mut k = 0;
        while k < dw.len() {
            k += match dw.len() - k {
                1 => weight_taps::<T, 1>(walk, &xp[row..], dy, k, dw),
                2 => weight_taps::<T, 2>(walk, &xp[row..], dy, k, dw),
                3 => weight_taps::<T, 3>(walk, &xp[row..], dy, k, dw),
                _ => weight_taps::<T, 4>(walk, &xp[row..], dy, k, dw),
            };
        }
    }
}

/// Adds to `dw[k..k + K]` (taps along the row) `Σ_rows Σ_j ∂y·x′`, with one load of
/// ∂y serving K taps and the sums kept in registers over the whole plane; returns K.
#[inline(always)]
fn weight_taps<T: Element, const K: usize>(walk: &Walk, xp: &[T], dy: &[T], k: usize, dw: &mut [T]) -> usize {
    let (stride, width) = (walk.stride, T::WIDTH);
    let offsets: [usize; K] = std::array::from_fn(|i| walk.offsets[k + i]);
    let mut acc = [T::splat(T::zero()); K];
    let mut rest = [T::zero(); K];
    for (&start, dy) in walk.out_rows.iter().zip(dy.chunks_exact(walk.out_row)) {
        let x = &xp[start..];
        let whole = dy.len() / width * width;
        for j in (0..whole).step_by(width) {
            let g = T::load(&dy[j..]);
            for i in 0..K {
                acc[i] = acc[i] + g * load::<T>(x, offsets[i] + j * stride, stride);
            }
        }
        for (j, &g) in dy.iter().enumerate().skip(whole) {
            for i in 0..K {
                rest[i] += g * x[offsets[i] + j * stride];
            }
        }
    }
    for i in 0..K {
        dw[k + i] += T::reduce_add(acc[i]) + rest[i];
    }
    K
}
