//! The filters' side of the transforms, in f64: each filter expanded to its α²
//! transformed values, and the weight gradient's summed values contracted back to
//! taps, each once per call.

use super::transform::{evaluation, Input};
use super::ConvProblem;
use crate::geometry::KernelMode;
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
    let (e, scale) = (evaluation::<A>(R), Input::<A>::SCALE);
    // One task per inner channel, the outer channels innermost, so that every step
    // below is a run along contiguous values.
    let rows: Vec<Vec<T>> = (0..inner)
        .into_par_iter()
        .map(|c| {
            let mut taps = vec![0.0; R * R * outer];
            for (o, (a, b)) in (0..outer).flat_map(|o| (0..R * R).map(move |t| (o, (t / R, t % R)))) {
                taps[(a * R + b) * outer + o] = filter(o, c, a, b).as_f64();
            }
            // Down the columns, half[i, b] = Σ_a E[i, a]·taps[a, b]; then along the
            // rows, out[i, j] = Σ_b half[i, b]·E[j, b].
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
        })
        .collect();
    let mut u = vec![T::zero(); A * A * inner * outer_stride];
    for (c, row) in rows.iter().enumerate() {
        for (point, values) in row.chunks_exact(outer).enumerate() {
            u[(point * inner + c) * outer_stride..][..outer].copy_from_slice(values);
        }
    }
    u
}

/// `sum += coefficient · values`, nothing for a zero coefficient.
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
    let (e, scale) = (evaluation::<A>(R), Input::<A>::SCALE);
    let mode = problem.geometry().mode();
    let len = A * A * co * in_stride;
    // One task per output channel, the input channels innermost, as in
    // `transform_filters`.
    dw.par_chunks_mut(ci * R * R).enumerate().for_each(|(o, dw)| {
        let mut x = vec![0.0; A * A * ci];
        for (point, x) in x.chunks_exact_mut(ci).enumerate() {
            let (i, j) = (point / A, point % A);
            let at = (point * co + o) * in_stride;
            for (c, x) in x.iter_mut().enumerate() {
                let sum = (1..chunks).fold(partials[at + c], |sum, part| sum + partials[part * len + at + c]);
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
    });
}
