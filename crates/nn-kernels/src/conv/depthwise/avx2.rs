//! The depthwise kernels for f32 at stride 1 along rows, in AVX2 and FMA intrinsics:
//! their accumulators must stay in registers across a step's taps, which the generic
//! builds leave to LLVM, and it spills them.
//!
//! Every load and store goes through [`load`] and [`store`], which take an eight-cell
//! slice of a checked range: the only unchecked fact is the CPU's, proven by the
//! [`Avx2Fma`] token.

use super::walk::{Gather, Walk};
use crate::simd::Avx2Fma;
use std::arch::x86_64::*;

const LANES: usize = 8;
/// Vectors of output cells a forward or input-gradient step keeps in registers.
const VECTORS: usize = 4;

/// Cells `at..at + 8` of `x`.
#[inline(always)]
unsafe fn load(x: &[f32], at: usize) -> __m256 {
    // SAFETY: the slice holds the eight cells read; AVX is the caller's to prove.
    unsafe { _mm256_loadu_ps(x[at..at + LANES].as_ptr()) }
}

/// Writes `v` to cells `at..at + 8` of `y`.
#[inline(always)]
unsafe fn store(v: __m256, y: &mut [f32], at: usize) {
    // SAFETY: as for `load`.
    unsafe { _mm256_storeu_ps(y[at..at + LANES].as_mut_ptr(), v) }
}

/// Cuts a row of `len` cells into steps of `VECTORS` vectors, then one of fewer;
/// returns the cells those cover (the rest are single cells).
macro_rules! by_steps {
    ($len:expr, $step:ident ( $($arg:expr),* )) => {{
        let len = $len;
        let mut j = 0;
        while j + VECTORS * LANES <= len {
            $step::<VECTORS>($($arg,)* j);
            j += VECTORS * LANES;
        }
        match (len - j) / LANES {
            3 => $step::<3>($($arg,)* j),
            2 => $step::<2>($($arg,)* j),
            1 => $step::<1>($($arg,)* j),
            _ => {}
        }
        j + (len - j) / LANES * LANES
    }};
}

/// The forward pass of one plane: see `super::forward_plane`.
pub(super) fn forward_plane(_isa: Avx2Fma, walk: &Walk, w: &[f32], xp: &[f32], bias: f32, y: &mut [f32]) {
    // SAFETY: the token proves AVX2 and FMA.
    unsafe { forward_plane_avx2(walk, w, xp, bias, y) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn forward_plane_avx2(walk: &Walk, w: &[f32], xp: &[f32], bias: f32, y: &mut [f32]) {
    for (&start, y) in walk.out_rows.iter().zip(y.chunks_exact_mut(walk.out_row)) {
        let xp = &xp[start..];
        // SAFETY: AVX2 and FMA, as this function's own.
        let done = unsafe { by_steps!(y.len(), forward_cells(walk, w, xp, bias, y)) };
        for j in done..y.len() {
            let mut sum = bias;
            for &(row, first_weight) in &walk.tap_rows {
                for (&offset, &weight) in walk.offsets.iter().zip(&w[first_weight..]) {
                    sum = weight.mul_add(xp[row + j + offset], sum);
                }
            }
            y[j] = sum;
        }
    }
}

#[inline(always)]
unsafe fn forward_cells<const V: usize>(walk: &Walk, w: &[f32], xp: &[f32], bias: f32, y: &mut [f32], j: usize) {
    // SAFETY: AVX2 and FMA are the caller's to prove; reads and writes are checked.
    unsafe {
        let mut acc = [_mm256_set1_ps(bias); V];
        for &(row, first_weight) in &walk.tap_rows {
            let x = &xp[row + j..];
            for (&offset, &weight) in walk.offsets.iter().zip(&w[first_weight..]) {
                let weight = _mm256_set1_ps(weight);
                for (v, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(weight, load(x, offset + v * LANES), *acc);
                }
            }
        }
        for (v, &acc) in acc.iter().enumerate() {
            store(acc, y, j + v * LANES);
        }
    }
}

/// The input gradient of one plane, gathered: see `super::gather_plane`.
pub(super) fn gather_plane(_isa: Avx2Fma, walk: &Walk, gather: &Gather, w: &[f32], dyp: &[f32], dx: &mut [f32]) {
    // SAFETY: the token proves AVX2 and FMA.
    unsafe { gather_plane_avx2(walk, gather, w, dyp, dx) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn gather_plane_avx2(walk: &Walk, gather: &Gather, w: &[f32], dyp: &[f32], dx: &mut [f32]) {
    let taps = w.len() / (dyp.len() / gather.plane_len());
    for (row, dx) in dx.chunks_exact_mut(walk.in_row).enumerate() {
        // SAFETY: AVX2 and FMA, as this function's own.
        let done = unsafe { by_steps!(dx.len(), gather_cells(walk, gather, row, taps, w, dyp, dx)) };
        for (c, dx) in dx.iter_mut().enumerate().skip(done) {
            let mut sum = 0.0f32;
            for (w, dyp) in w.chunks_exact(taps).zip(dyp.chunks_exact(gather.plane_len())) {
                for &(out_row, first_weight) in gather.links(row) {
                    let at = out_row + gather.shift + c;
                    for (&offset, &weight) in walk.offsets.iter().zip(&w[first_weight..]) {
                        sum = weight.mul_add(dyp[at - offset], sum);
                    }
                }
            }
            *dx = sum;
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn gather_cells<const V: usize>(
    walk: &Walk,
    gather: &Gather,
    row: usize,
    taps: usize,
    w: &[f32],
    dyp: &[f32],
    dx: &mut [f32],
    c: usize,
) {
    // SAFETY: AVX2 and FMA are the caller's to prove; reads and writes are checked.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); V];
        for (w, dyp) in w.chunks_exact(taps).zip(dyp.chunks_exact(gather.plane_len())) {
            for &(out_row, first_weight) in gather.links(row) {
                // The margin is the largest offset: every read below starts in bounds.
                let g = &dyp[out_row + gather.shift + c - gather.margin()..];
                for (&offset, &weight) in walk.offsets.iter().zip(&w[first_weight..]) {
                    let (weight, at) = (_mm256_set1_ps(weight), gather.margin() - offset);
                    for (v, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm256_fmadd_ps(weight, load(g, at + v * LANES), *acc);
                    }
                }
            }
        }
        for (v, &acc) in acc.iter().enumerate() {
            store(acc, dx, c + v * LANES);
        }
    }
}

/// The weight gradient of one plane: see `super::weight_plane`.
pub(super) fn weight_plane(_isa: Avx2Fma, walk: &Walk, xp: &[f32], dy: &[f32], dw: &mut [f32]) {
    // SAFETY: the token proves AVX2 and FMA.
    unsafe { weight_plane_avx2(walk, xp, dy, dw) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn weight_plane_avx2(walk: &Walk, xp: &[f32], dy: &[f32], dw: &mut [f32]) {
    for &(row, first_weight) in &walk.tap_rows {
        let dw = &mut dw[first_weight..][..walk.offsets.len()];
        let xp = &xp[row..];
        let mut k = 0;
        // SAFETY: AVX2 and FMA, as this function's own.
        unsafe {
            while k < dw.len() {
                k += match dw.len() - k {
                    1 => weight_taps::<1>(walk, xp, dy, k, dw),
                    2 => weight_taps::<2>(walk, xp, dy, k, dw),
                    3 => weight_taps::<3>(walk, xp, dy, k, dw),
                    _ => weight_taps::<4>(walk, xp, dy, k, dw),
                };
            }
        }
    }
}

/// Adds to `dw[k..k + K]` `Σ_rows Σ_j ∂y·x′`: one load of ∂y serves K taps, and the
/// sums stay in registers over the whole plane.
#[inline(always)]
unsafe fn weight_taps<const K: usize>(walk: &Walk, xp: &[f32], dy: &[f32], k: usize, dw: &mut [f32]) -> usize {
    let offsets: [usize; K] = std::array::from_fn(|i| walk.offsets[k + i]);
    let mut rest = [0.0f32; K];
    // SAFETY: AVX2 and FMA are the caller's to prove; reads are checked.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); K];
        for (&start, dy) in walk.out_rows.iter().zip(dy.chunks_exact(walk.out_row)) {
            let x = &xp[start..];
            let whole = dy.len() / LANES * LANES;
            for j in (0..whole).step_by(LANES) {
                let g = load(dy, j);
                for i in 0..K {
                    acc[i] = _mm256_fmadd_ps(g, load(x, offsets[i] + j), acc[i]);
                }
            }
            for (j, &g) in dy.iter().enumerate().skip(whole) {
                for i in 0..K {
                    rest[i] = g.mul_add(x[offsets[i] + j], rest[i]);
                }
            }
        }
        let mut lanes = [0.0f32; LANES];
        for i in 0..K {
            store(acc[i], &mut lanes, 0);
            dw[k + i] += (((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
                + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7])))
                + rest[i];
        }
    }
    K
}
