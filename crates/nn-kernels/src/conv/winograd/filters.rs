//! The filters' side of the transforms, in f64: each filter expanded to its α²
//! transformed values, and the weight gradient's summed values contracted back to
//! taps, each once per call.

use super::transform::{evaluation, Input, Matrix};
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
    let (r, e, scale) = (R, evaluation::<A>(R), Input::<A>::SCALE);
    // One task per outer channel, its α² × inner values then put in place.
    let rows: Vec<Vec<T>> = (0..outer)
        .into_par_iter()
        .map(|o| {
            let mut row = vec![T::zero(); A * A * inner];
            for c in 0..inner {
                let mut taps = [[0.0; A]; A];
                for (a, taps) in taps.iter_mut().enumerate().take(r) {
                    for (b, tap) in taps.iter_mut().enumerate().take(r) {
                        *tap = filter(o, c, a, b).as_f64();
                    }
                }
                let expanded = expand(&e, r, &taps);
                for (point, value) in expanded.iter().flatten().enumerate() {
                    let (i, j) = (point / A, point % A);
                    row[point * inner + c] = T::from_f64(value / (scale[i] * scale[j]));
                }
            }
            row
        })
        .collect();
    let mut u = vec![T::zero(); A * A * inner * outer_stride];
    for (o, row) in rows.iter().enumerate() {
        for (point, values) in row.chunks_exact(inner).enumerate() {
            for (c, &value) in values.iter().enumerate() {
                u[(point * inner + c) * outer_stride + o] = value;
            }
        }
    }
    u
}

/// `E·g·Eᵀ` in f64 for an `n×n` block g and the `α×n` matrix E.
#[allow(clippy::needless_range_loop)] // matrix indices, as in the formula
fn expand<const A: usize>(e: &Matrix<A>, n: usize, g: &Matrix<A>) -> Matrix<A> {
    let mut half = [[0.0; A]; A];
    for i in 0..A {
        for a in 0..n {
            for b in 0..n {
                half[i][b] += e[i][a] * g[a][b];
            }
        }
    }
    let mut out = [[0.0; A]; A];
    for i in 0..A {
        for j in 0..A {
            for b in 0..n {
                out[i][j] += half[i][b] * e[j][b];
            }
        }
    }
    out
}

/// `Eᵀ·x·E` in f64 for an α×α block x and the `α×n` matrix E: the `n×n` result.
#[allow(clippy::needless_range_loop)] // matrix indices, as in the formula
fn contract<const A: usize>(e: &Matrix<A>, n: usize, x: &Matrix<A>) -> Matrix<A> {
    let mut half = [[0.0; A]; A];
    for a in 0..n {
        for i in 0..A {
            for j in 0..A {
                half[a][j] += e[i][a] * x[i][j];
            }
        }
    }
    let mut out = [[0.0; A]; A];
    for a in 0..n {
        for b in 0..n {
            for j in 0..A {
                out[a][b] += half[a][j] * e[j][b];
            }
        }
    }
    out
}

/// The filter tap the correlation reads at (a, b): the stored tap, or the flipped
/// one for the source's convolution.
pub(super) fn correlation_tap(mode: KernelMode, r: usize, a: usize, b: usize) -> usize {
    match mode {
        KernelMode::CrossCorrelation => a * r + b,
        KernelMode::Convolution => (r - 1 - a) * r + (r - 1 - b),
    }
}

/// `∂w += E_rᵀ·M·E_r` of the weight gradient's summed transformed values `total`
/// (`[α², C_out, in_stride]`, input channels past C_in ignored), unscaled, in f64, the
/// taps flipped back for the source's convolution.
pub(super) fn transform_back<T: Element, const A: usize, const R: usize>(
    problem: &ConvProblem,
    total: &[T],
    in_stride: usize,
    dw: &mut [T],
) {
    let (ci, co) = (problem.in_channels(), problem.out_channels());
    let (r, e, scale) = (R, evaluation::<A>(R), Input::<A>::SCALE);
    let mode = problem.geometry().mode();
    dw.par_chunks_mut(ci * r * r).enumerate().for_each(|(o, dw)| {
        for c in 0..ci {
            let mut x = [[0.0; A]; A];
            for (point, x) in x.iter_mut().flatten().enumerate() {
                let (i, j) = (point / A, point % A);
                *x = total[(point * co + o) * in_stride + c].as_f64() / (scale[i] * scale[j]);
            }
            let g = contract(&e, r, &x);
            for (a, g) in g.iter().enumerate().take(r) {
                for (b, &g) in g.iter().enumerate().take(r) {
                    dw[c * r * r + correlation_tap(mode, r, a, b)] += T::from_f64(g);
                }
            }
        }
    });
}
