//! The filters' side of the transforms, in f64: each filter expanded to its α²
//! transformed values, and the weight gradient's summed values contracted back to
//! taps, each once per call.

use super::transform::{evaluation, Input};
use super::ConvProblem;
use crate::geometry::KernelMode;
use crate::simd::avx2_dispatch;
use crate::Element;
use rayon::prelude::*;

/// The α² transformed filters `E_r·w_eff[o, c]·E_rᵀ`, each point divided by the
/// input transform's scales, as `[α², inner, outer_stride]` (columns past `outer`
/// zero), where `filter(o, c, a, b)` gives the correlation's tap.
pub(super) fn transform_filters<T: Element, const A: usize, const R: usize>(
    outer: usize,
    inner: usize,
    outer_stride: usize,
    filter: impl Fn(usize, usize, usize, usize) -> T + Sync,
) -> Vec<T> {
    // One task per inner channel, the outer channels innermost, so that every step
    // below is a run along contiguous values.
    let rows: Vec<Vec<T>> =
        (0..inner).into_par_iter().map(|c| transformed_channel::<T, A, R>(outer, c, &filter)).collect();
    let mut u = vec![T::zero(); A * A * inner * outer_stride];
    u.par_chunks_mut(inner * outer_stride).enumerate().for_each(|(point, u)| {
        for (u, row) in u.chunks_exact_mut(outer_stride).zip(&rows) {
            u[..outer].copy_from_slice(&row[point * outer..][..outer]);
        }
    });
    u
}

avx2_dispatch!(
    /// Inner channel `c`'s transformed filters, `[α², outer]`: the arithmetic compiled
    /// for AVX2 where the CPU has it (the same operations on wider vectors, so the
    /// same bits), else as portable code.
    fn transformed_channel<T: Element, const A: usize, const R: usize>(
        outer: usize,
        c: usize,
        filter: &(impl Fn(usize, usize, usize, usize) -> T + Sync),
    ) -> Vec<T> => transformed_channel_body
);

#[inline(always)]
fn transformed_channel_body<T: Element, const A: usize, const R: usize>(
    outer: usize,
    c: usize,
    filter: &(impl Fn(usize, usize, usize, usize) -> T + Sync),
) -> Vec<T> {
    let (e, scale) = (evaluation::<A>(R), Input::<A>::SCALE);
    let mut taps = vec![0.0; R * R * outer];
    for (o, (a, b)) in (0..outer).flat_map(|o| (0..R * R).map(move |t| (o, (t / R, t % R)))) {
        taps[(a * R + b) * outer + o] = filter(o, c, a, b).as_f64();
    }
    // Down the columns, half[i, b] = Σ_a E[i, a]·taps[a, b]; then along the rows,
    // out[i, j] = Σ_b half[i, b]·E[j, b].
    let mut half = vec![0.0; A * R * outer];
    for (i, half) in half.chunks_exact_mut(R * outer).enumerate() {
        for (a, taps) in taps.chunks_exact(R * outer).enumerate() {
            add_scaled(half, e[i][a], taps);
        }
    }
    let mut row = vec![T::zero(); A * A * outer];
    let mut sum = vec![0.0; outer];
    for (point, row) in row.chunks_exact_mut(outer).enumerate() {
        let (i, j) = (point / A, point % A);
        sum.fill(0.0);
        for (b, half) in half[i * R * outer..][..R * outer].chunks_exact(outer).enumerate() {
            add_scaled(&mut sum, e[j][b], half);
        }
        for (value, &s) in row.iter_mut().zip(&sum) {
            *value = T::from_f64(s / (scale[i] * scale[j]));
        }
    }
    row
}

/// `sum += coefficient · values`, nothing for a zero coefficient.
#[inline(always)]
fn add_scaled(sum: &mut [f64], coefficient: f64, values: &[f64]) {
    if coefficient != 0.0 {
        sum.iter_mut().zip(values).for_each(|(s, &v)| *s += coefficient * v);
    }
}

/// The filter tap the correlation reads at (a, b): the stored tap, or the flipped
/// one for the source's convolution.
pub(super) fn correlation_tap(mode: KernelMode, r: usize, a: usize, b: usize) -> usize {
    match mode {
        KernelMode::CrossCorrelation => a * r + b,
        KernelMode::Convolution => (r - 1 - a) * r + (r - 1 - b),
    }
}

/// `∂w += E_rᵀ·M·E_r` of the weight gradient's transformed values, unscaled, in f64,
/// the taps flipped back for the source's convolution. `partials` holds `chunks`
/// partial sums, each `[α², C_out, in_stride]` (input channels past C_in ignored),
/// added in order here, where each task reads only its own output channel's values:
/// the reduction runs in parallel and its result does not depend on the threads.
pub(super) fn transform_back<T: Element, const A: usize, const R: usize>(
    problem: &ConvProblem,
    partials: &[T],
    chunks: usize,
    in_stride: usize,
    dw: &mut [T],
) {
    let (ci, co) = (problem.in_channels(), problem.out_channels());
    let sums = ChunkSums { partials, chunks, len: A * A * co * in_stride, co, in_stride };
    let mode = problem.geometry().mode();
    // One task per output channel, the input channels innermost, as in
    // `transform_filters`.
    dw.par_chunks_mut(ci * R * R).enumerate().for_each(|(o, dw)| transform_back_channel::<T, A, R>(&sums, mode, o, dw));
}

/// The weight gradient's chunk sums, `chunks` of `[α², C_out, in_stride]` each `len`
/// long.
struct ChunkSums<'a, T> {
    partials: &'a [T],
    chunks: usize,
    len: usize,
    co: usize,
    in_stride: usize,
}

avx2_dispatch!(
    /// Output channel `o`'s part of [`transform_back`], into its `[C_in, r, r]` taps
    /// `dw`: compiled for AVX2 where the CPU has it, as [`transformed_channel`] is.
    fn transform_back_channel<T: Element, const A: usize, const R: usize>(
        sums: &ChunkSums<'_, T>,
        mode: KernelMode,
        o: usize,
        dw: &mut [T],
    ) => transform_back_channel_body
);

#[inline(always)]
fn transform_back_channel_body<T: Element, const A: usize, const R: usize>(
    sums: &ChunkSums<'_, T>,
    mode: KernelMode,
    o: usize,
    dw: &mut [T],
) {
    let (e, scale) = (evaluation::<A>(R), Input::<A>::SCALE);
    let ci = dw.len() / (R * R);
    let mut x = vec![0.0; A * A * ci];
    for (point, x) in x.chunks_exact_mut(ci).enumerate() {
        let (i, j) = (point / A, point % A);
        let at = (point * sums.co + o) * sums.in_stride;
        for (c, x) in x.iter_mut().enumerate() {
            let first = sums.partials[at + c];
            let sum = (1..sums.chunks).fold(first, |sum, part| sum + sums.partials[part * sums.len + at + c]);
            *x = sum.as_f64() / (scale[i] * scale[j]);
        }
    }
    // half[a, j] = Σ_i E[i, a]·x[i, j], then g[a, b] = Σ_j half[a, j]·E[j, b].
    let mut half = vec![0.0; R * A * ci];
    for (a, half) in half.chunks_exact_mut(A * ci).enumerate() {
        for (i, x) in x.chunks_exact(A * ci).enumerate() {
            add_scaled(half, e[i][a], x);
        }
    }
    let mut g = vec![0.0; ci];
    for (a, b) in (0..R).flat_map(|a| (0..R).map(move |b| (a, b))) {
        g.fill(0.0);
        for (j, half) in half[a * A * ci..][..A * ci].chunks_exact(ci).enumerate() {
            add_scaled(&mut g, e[j][b], half);
        }
        let tap = correlation_tap(mode, R, a, b);
        for (c, &g) in g.iter().enumerate() {
            dw[c * R * R + tap] += T::from_f64(g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filter transforms compiled for AVX2 give the bits of the portable code, both
    /// ways and both sizes: the claim that lets either run.
    #[test]
    fn avx2_filter_transforms_keep_the_portable_bits() {
        let value = |i: usize| ((i * 7919 % 1013) as f32 - 506.0) / 97.0;
        let (outer, inner) = (11, 3);
        for r in [3, 5] {
            let w: Vec<f32> = (0..outer * inner * r * r).map(value).collect();
            let filter = |o: usize, c: usize, a: usize, b: usize| w[(o * inner + c) * r * r + a * r + b];
            for c in 0..inner {
                let (fast, portable) = match r {
                    3 => (
                        transformed_channel::<f32, 6, 3>(outer, c, &filter),
                        transformed_channel_body::<f32, 6, 3>(outer, c, &filter),
                    ),
                    _ => (
                        transformed_channel::<f32, 8, 5>(outer, c, &filter),
                        transformed_channel_body::<f32, 8, 5>(outer, c, &filter),
                    ),
                };
                assert!(fast.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits()), "r = {r}, channel {c}");
            }
            let (a, points) = (super::super::tile_size(r), super::super::tile_size(r).pow(2));
            let (chunks, co, in_stride) = (3, outer, inner.next_multiple_of(8));
            let partials: Vec<f32> = (0..chunks * points * co * in_stride).map(|i| value(i + 3)).collect();
            let sums = ChunkSums { partials: &partials, chunks, len: points * co * in_stride, co, in_stride };
            for o in 0..co {
                let (mut fast, mut portable) = (vec![0.5; inner * r * r], vec![0.5; inner * r * r]);
                for mode in [KernelMode::Convolution, KernelMode::CrossCorrelation] {
                    match a {
                        6 => {
                            transform_back_channel::<f32, 6, 3>(&sums, mode, o, &mut fast);
                            transform_back_channel_body::<f32, 6, 3>(&sums, mode, o, &mut portable);
                        }
                        _ => {
                            transform_back_channel::<f32, 8, 5>(&sums, mode, o, &mut fast);
                            transform_back_channel_body::<f32, 8, 5>(&sums, mode, o, &mut portable);
                        }
                    }
                }
                assert!(fast.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits()), "r = {r}, back {o}");
            }
        }
    }
}
