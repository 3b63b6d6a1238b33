//! Depthwise convolution (one group per input channel, `C_out/C_in` filters each), any
//! number of dimensions. Each plane is copied once into scratch with its padding, so
//! that every tap reads in bounds; then a few dozen output cells of a row at a time sum
//! all their taps in registers and are written once. Work is split by planes (forward,
//! input gradient), by output channels (weight gradient: each channel sums its images
//! in order) or by input channels (all gradients in one walk), so results do not
//! depend on the thread count.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod backward;
mod walk;

pub(super) use backward::{backward, backward_input, backward_weight};

use super::ConvProblem;
use crate::simd::avx2_dispatch;
use crate::workspace::{fit, with_scratch};
use crate::Element;
use rayon::prelude::*;
use walk::Walk;

/// Vectors of output cells a forward or input-gradient step keeps in registers, with
/// room left for the operands.
const VECTORS: usize = 4;

/// A depthwise problem's channels (each input channel has `multiplier` output
/// channels) and the cells of its input plane, output plane and filter.
struct Sizes {
    c_in: usize,
    c_out: usize,
    multiplier: usize,
    in_plane: usize,
    out_plane: usize,
    taps: usize,
}

impl Sizes {
    fn of(problem: &ConvProblem) -> Self {
        let (c_in, c_out, g) = (problem.in_channels(), problem.out_channels(), problem.geometry());
        let multiplier = c_out / c_in;
        Self { c_in, c_out, multiplier, in_plane: g.input_len(), out_plane: g.output_len(), taps: g.filter_len() }
    }
}

/// Whether `problem` is depthwise (more than one group, one input channel per group).
pub(super) fn applies(problem: &ConvProblem) -> bool {
    problem.groups() > 1 && problem.groups() == problem.in_channels()
}

/// The intrinsics build of the input gradient, for f32 at stride 1 along rows with
/// filter rows it unrolls, where the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
fn fast(walk: &Walk) -> Option<crate::simd::Avx2Fma> {
    (walk.stride == 1 && avx2::takes(walk)).then(crate::simd::Avx2Fma::detect).flatten()
}

/// The intrinsics build of the forward pass and the weight gradient, which also take
/// stride 2 along rows (given one cell of slack after the padded plane).
#[cfg(target_arch = "x86_64")]
fn fast_strided(walk: &Walk) -> Option<crate::simd::Avx2Fma> {
    avx2::takes_strided(walk).then(crate::simd::Avx2Fma::detect).flatten()
}

/// `y = conv(x, w) + b`, plane by plane.
pub(super) fn forward<T: Element>(problem: &ConvProblem, x: &[T], w: &[T], bias: Option<&[T]>, pad: T, y: &mut [T]) {
    let Sizes { c_in, c_out, multiplier, in_plane, out_plane, taps } = Sizes::of(problem);
    let walk = Walk::new(problem.geometry());
    y.par_chunks_mut(out_plane).enumerate().for_each(|(plane, y)| {
        let (n, o) = (plane / c_out, plane % c_out);
        let c = o / multiplier;
        let x = &x[(n * c_in + c) * in_plane..][..in_plane];
        let (w, bias) = (&w[o * taps..][..taps], bias.map_or(T::zero(), |b| b[o]));
        with_scratch::<T, 1, _>(|[xp]| {
            // One cell of slack, which the AVX2 build at stride 2 reads and discards.
            let xp = fit(xp, walk.padded_len() + 1);
            walk.pad(x, pad, xp);
            #[cfg(target_arch = "x86_64")]
            if let (Some(isa), Some(w), Some(xp), Some(y)) =
                (fast_strided(&walk), T::as_f32(w), T::as_f32(xp), T::as_f32_mut(y))
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
