//! The depthwise kernels for f32 at stride 1 along rows (the forward pass and the
//! weight gradient at stride 2 too), in AVX2 and FMA intrinsics:
//! their accumulators must stay in registers across a step's taps, which the generic
//! builds leave to LLVM, and it spills them. The taps along a row are a compile-time
//! count (filters up to [`MAX_ROW_TAPS`] wide), so that a step is straight-line code.
//!
//! Loads and stores are unchecked: each plane's entry point asserts, once, that the
//! furthest cell any step reads or writes lies inside its slice (see the SAFETY notes);
//! the CPU features are proven by the [`Avx2Fma`] token.

use super::walk::{Gather, Walk};
use crate::simd::Avx2Fma;
use std::arch::x86_64::*;

const LANES: usize = 8;
/// Vectors of output cells a forward or input-gradient step keeps in registers.
const VECTORS: usize = 8;
/// Widest filter rows the kernels unroll; wider ones take the generic build.
pub(super) const MAX_ROW_TAPS: usize = 7;
/// Accumulators of the weight gradient's block (filter rows × taps of a row).
const WEIGHT_ACCUMULATORS: usize = 12;

/// Whether these kernels take filter rows of `walk`'s width.
pub(super) fn takes(walk: &Walk) -> bool {
    (1..=MAX_ROW_TAPS).contains(&walk.offsets.len())
}

/// Runs `$body::<K>` with the filter row's width as the constant `K`.
macro_rules! with_row_taps {
    ($walk:expr, $body:ident ( $($arg:expr),* )) => {
        match $walk.offsets.len() {
            1 => $body::<1>($($arg),*),
            2 => $body::<2>($($arg),*),
            3 => $body::<3>($($arg),*),
            4 => $body::<4>($($arg),*),
            5 => $body::<5>($($arg),*),
            6 => $body::<6>($($arg),*),
            7 => $body::<7>($($arg),*),
            _ => unreachable!("`takes` admits filter rows of 1 to 7 taps"),
        }
    };
}

/// Cuts a row of `len` cells into steps of `VECTORS` vectors, then one of fewer;
/// returns the cells those cover (the rest are single cells).
macro_rules! by_steps {
    ($len:expr, $step:ident :: < $($g:ident),+ > ( $($arg:expr),* )) => {{
        let len = $len;
        let mut j = 0;
        while j + VECTORS * LANES <= len {
            $step::<VECTORS, $($g),+>($($arg,)* j);
            j += VECTORS * LANES;
        }
        match (len - j) / LANES {
            7 => $step::<7, $($g),+>($($arg,)* j),
            6 => $step::<6, $($g),+>($($arg,)* j),
            5 => $step::<5, $($g),+>($($arg,)* j),
            4 => $step::<4, $($g),+>($($arg,)* j),
            3 => $step::<3, $($g),+>($($arg,)* j),
            2 => $step::<2, $($g),+>($($arg,)* j),
            1 => $step::<1, $($g),+>($($arg,)* j),
            _ => {}
        }
        j + (len - j) / LANES * LANES
    }};
}

/// The last cell plus one that a step reads from the padded plane: the last output
/// row's start, plus the furthest filter row and tap, plus the row's length times the
/// stride (at stride 2 a step reads the odd cell after its last even one).
fn padded_reach(walk: &Walk) -> usize {
    let last_row = walk.out_rows.last().copied().unwrap_or(0);
    let furthest_tap_row = walk.tap_rows.iter().map(|&(row, _)| row).max().unwrap_or(0);
    last_row + furthest_tap_row + walk.offsets.iter().copied().max().unwrap_or(0) + walk.stride * walk.out_row
}

/// Whether the forward and weight-gradient kernels take `walk`: stride 1 or 2 along
/// rows.
pub(super) fn takes_strided(walk: &Walk) -> bool {
    takes(walk) && (walk.stride == 1 || walk.stride == 2)
}

/// The forward pass of one plane: see `super::forward_plane`. At stride 2, `xp` needs
/// one cell past the padded plane, whose value is read and discarded.
pub(super) fn forward_plane(_isa: Avx2Fma, walk: &Walk, w: &[f32], xp: &[f32], bias: f32, y: &mut [f32]) {
    assert!(takes_strided(walk), "depthwise AVX2 forward: filter rows of 1–7 taps, stride 1 or 2");
    assert!(padded_reach(walk) <= xp.len() && walk.out_rows.len() * walk.out_row <= y.len(), "plane sizes");
    assert!(walk.tap_rows.iter().all(|&(_, first)| first + walk.offsets.len() <= w.len()), "filter size");
    // SAFETY: the token proves AVX2 and FMA; the assertions above bound every load
    // and store of the steps (a step's cells end within its row).
    unsafe {
        if walk.stride == 2 {
            with_row_taps!(walk, forward_plane_stride_2(walk, w, xp, bias, y))
        } else {
            with_row_taps!(walk, forward_plane_avx2(walk, w, xp, bias, y))
        }
    }
}

/// Cells `0, 2, …, 14` from `x`.
#[inline(always)]
unsafe fn evens(x: *const f32) -> __m256 {
    // SAFETY: AVX2 is the caller's to prove, as are the 16 cells read.
    unsafe {
        let (a, b) = (_mm256_loadu_ps(x), _mm256_loadu_ps(x.add(LANES)));
        // a0 a2 b0 b2 | a4 a6 b4 b6, then the 64-bit pairs in order: a0 a2 a4 a6 b0 b2 b4 b6.
        let pairs = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(pairs)))
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn forward_plane_avx2<const K: usize>(walk: &Walk, w: &[f32], xp: &[f32], bias: f32, y: &mut [f32]) {
    // SAFETY: AVX2 and FMA, as this function's own; bounds as asserted by the caller.
    unsafe { forward_rows::<K, 1>(walk, w, xp, bias, y) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn forward_plane_stride_2<const K: usize>(walk: &Walk, w: &[f32], xp: &[f32], bias: f32, y: &mut [f32]) {
    // SAFETY: AVX2 and FMA, as this function's own; bounds as asserted by the caller.
    unsafe { forward_rows::<K, 2>(walk, w, xp, bias, y) }
}

/// Every output row of the plane, at stride S (1 or 2) along rows.
#[inline(always)]
unsafe fn forward_rows<const K: usize, const S: usize>(walk: &Walk, w: &[f32], xp: &[f32], bias: f32, y: &mut [f32]) {
    let offsets: [usize; K] = std::array::from_fn(|k| walk.offsets[k]);
    for (&start, y) in walk.out_rows.iter().zip(y.chunks_exact_mut(walk.out_row)) {
        let (x, out) = (xp[start..].as_ptr(), y.as_mut_ptr());
        // SAFETY: AVX2 and FMA are the caller's to prove, as are the bounds.
        let done = unsafe { by_steps!(y.len(), forward_cells::<K, S>(walk, w, &offsets, x, bias, out)) };
        for j in done..y.len() {
            let mut sum = bias;
            for &(row, first_weight) in &walk.tap_rows {
                for (&offset, &weight) in walk.offsets.iter().zip(&w[first_weight..]) {
                    sum = weight.mul_add(xp[start + row + S * j + offset], sum);
                }
            }
            y[j] = sum;
        }
    }
}

/// Output cells `j..j + 8V` at stride S of a row whose taps start at `x`.
#[inline(always)]
unsafe fn forward_cells<const V: usize, const K: usize, const S: usize>(
    walk: &Walk,
    w: &[f32],
    offsets: &[usize; K],
    x: *const f32,
    bias: f32,
    y: *mut f32,
    j: usize,
) {
    // SAFETY: AVX2 and FMA are the caller's to prove, as are the bounds of x and y.
    unsafe {
        let mut acc = [_mm256_set1_ps(bias); V];
        for &(row, first_weight) in &walk.tap_rows {
            let x = x.add(row + S * j);
            let w = w.as_ptr().add(first_weight);
            for (k, &offset) in offsets.iter().enumerate() {
                let weight = _mm256_broadcast_ss(&*w.add(k));
                for (v, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(weight, cells::<S>(x.add(offset + S * v * LANES)), *acc);
                }
            }
        }
        for (v, &acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(y.add(j + v * LANES), acc);
        }
    }
}

/// Eight cells S apart from `x`: as they lie at stride 1, the even ones of sixteen at 2.
#[inline(always)]
unsafe fn cells<const S: usize>(x: *const f32) -> __m256 {
    // SAFETY: AVX2 is the caller's to prove, as are the 8·S cells read.
    unsafe {
        if S == 1 {
            _mm256_loadu_ps(x)
        } else {
            evens(x)
        }
    }
}

/// The input gradient of one plane, gathered: see `super::gather_plane`.
pub(super) fn gather_plane(_isa: Avx2Fma, walk: &Walk, gather: &Gather, w: &[f32], dyp: &[f32], dx: &mut [f32]) {
    assert!(takes(walk) && walk.stride == 1, "depthwise AVX2 kernels: filter rows of 1–7 taps, stride 1");
    let planes = dyp.len() / gather.plane_len();
    let (furthest_row, furthest_weight) = gather.furthest_link();
    assert!(
        furthest_row + gather.shift + walk.in_row <= gather.plane_len() && dx.len().is_multiple_of(walk.in_row),
        "sizes"
    );
    assert!(furthest_weight + walk.offsets.len() <= w.len() / planes, "filter size");
    // SAFETY: the token proves AVX2 and FMA. Reads are at most `furthest_row + shift
    // + in_row − 1` into a channel's copy (asserted above) and at least `out_row`, as
    // the margin is the largest tap offset; stores end within their row.
    unsafe { with_row_taps!(walk, gather_plane_avx2(walk, gather, w, dyp, dx)) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn gather_plane_avx2<const K: usize>(walk: &Walk, gather: &Gather, w: &[f32], dyp: &[f32], dx: &mut [f32]) {
    let taps = w.len() / (dyp.len() / gather.plane_len());
    let offsets: [usize; K] = std::array::from_fn(|k| walk.offsets[k]);
    for (row, dx) in dx.chunks_exact_mut(walk.in_row).enumerate() {
        let out = dx.as_mut_ptr();
        // SAFETY: AVX2 and FMA, as this function's own; bounds as asserted by the caller.
        let done = unsafe { by_steps!(dx.len(), gather_cells::<K>(gather, row, taps, &offsets, w, dyp, out)) };
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

/// Input cells `c..c + 8V` of input row `row`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn gather_cells<const V: usize, const K: usize>(
    gather: &Gather,
    row: usize,
    taps: usize,
    offsets: &[usize; K],
    w: &[f32],
    dyp: &[f32],
    dx: *mut f32,
    c: usize,
) {
    // SAFETY: AVX2 and FMA are the caller's to prove, as are the bounds of dyp and dx.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); V];
        for (w, dyp) in w.chunks_exact(taps).zip(dyp.chunks_exact(gather.plane_len())) {
            for &(out_row, first_weight) in gather.links(row) {
                let g = dyp.as_ptr().add(out_row + gather.shift + c);
                let w = w.as_ptr().add(first_weight);
                for (k, &offset) in offsets.iter().enumerate() {
                    let weight = _mm256_broadcast_ss(&*w.add(k));
                    let g = g.sub(offset);
                    for (v, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm256_fmadd_ps(weight, _mm256_loadu_ps(g.add(v * LANES)), *acc);
                    }
                }
            }
        }
        for (v, &acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(dx.add(c + v * LANES), acc);
        }
    }
}

/// The weight gradient of one plane: see `super::weight_plane`. At stride 2, `xp`
/// needs one cell past the padded plane, as for the forward pass.
pub(super) fn weight_plane(_isa: Avx2Fma, walk: &Walk, xp: &[f32], dy: &[f32], dw: &mut [f32]) {
    assert!(takes_strided(walk), "depthwise AVX2 weight gradient: filter rows of 1–7 taps, stride 1 or 2");
    assert!(padded_reach(walk) <= xp.len() && walk.out_rows.len() * walk.out_row <= dy.len(), "plane sizes");
    // SAFETY: the token proves AVX2 and FMA; the assertion above bounds every load.
    unsafe {
        if walk.stride == 2 {
            with_row_taps!(walk, weight_plane_stride_2(walk, xp, dy, dw))
        } else {
            with_row_taps!(walk, weight_plane_avx2(walk, xp, dy, dw))
        }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn weight_plane_avx2<const K: usize>(walk: &Walk, xp: &[f32], dy: &[f32], dw: &mut [f32]) {
    // SAFETY: AVX2 and FMA, as this function's own; bounds as asserted by the caller.
    unsafe { weight_rows::<K, 1>(walk, xp, dy, dw) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn weight_plane_stride_2<const K: usize>(walk: &Walk, xp: &[f32], dy: &[f32], dw: &mut [f32]) {
    // SAFETY: AVX2 and FMA, as this function's own; bounds as asserted by the caller.
    unsafe { weight_rows::<K, 2>(walk, xp, dy, dw) }
}

/// Every filter row's weight gradient at stride S, in blocks of rows: enough
/// accumulators to hide the multiply-add's latency.
#[inline(always)]
unsafe fn weight_rows<const K: usize, const S: usize>(walk: &Walk, xp: &[f32], dy: &[f32], dw: &mut [f32]) {
    let mut rows = walk.tap_rows.as_slice();
    // SAFETY: AVX2 and FMA are the caller's to prove, as are the bounds.
    unsafe {
        while !rows.is_empty() {
            let taken = match rows.len().min(WEIGHT_ACCUMULATORS / K).clamp(1, 4) {
                1 => weight_block::<K, 1, S>(walk, rows, xp, dy, dw),
                2 => weight_block::<K, 2, S>(walk, rows, xp, dy, dw),
                3 => weight_block::<K, 3, S>(walk, rows, xp, dy, dw),
                _ => weight_block::<K, 4, S>(walk, rows, xp, dy, dw),
            };
            rows = &rows[taken..];
        }
    }
}

/// Adds to the weights of the first R filter rows in `rows` `Σ_rows Σ_j ∂y·x′` at
/// stride S (1 or 2): one load of ∂y serves R·K taps, and the sums stay in registers
/// over the whole plane; returns R.
#[inline(always)]
unsafe fn weight_block<const K: usize, const R: usize, const S: usize>(
    walk: &Walk,
    rows: &[(usize, usize)],
    xp: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) -> usize {
    let tap_rows: [(usize, usize); R] = std::array::from_fn(|r| rows[r]);
    let offsets: [usize; K] = std::array::from_fn(|k| walk.offsets[k]);
    let mut rest = [[0.0f32; K]; R];
    // SAFETY: AVX2 and FMA are the caller's to prove, as are the bounds of xp; ∂y's
    // loads end within their row.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); K]; R];
        for (&start, dy) in walk.out_rows.iter().zip(dy.chunks_exact(walk.out_row)) {
            let whole = dy.len() / LANES * LANES;
            for j in (0..whole).step_by(LANES) {
                let g = _mm256_loadu_ps(dy.as_ptr().add(j));
                for (acc, &(row, _)) in acc.iter_mut().zip(&tap_rows) {
                    let x = xp.as_ptr().add(start + row + S * j);
                    for k in 0..K {
                        acc[k] = _mm256_fmadd_ps(g, cells::<S>(x.add(offsets[k])), acc[k]);
                    }
                }
            }
            for (j, &g) in dy.iter().enumerate().skip(whole) {
                for (rest, &(row, _)) in rest.iter_mut().zip(&tap_rows) {
                    for k in 0..K {
                        rest[k] = g.mul_add(xp[start + row + offsets[k] + S * j], rest[k]);
                    }
                }
            }
        }
        let mut lanes = [0.0f32; LANES];
        for ((acc, rest), &(_, first_weight)) in acc.iter().zip(&rest).zip(&tap_rows) {
            for k in 0..K {
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[k]);
                dw[first_weight + k] += (((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
                    + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7])))
                    + rest[k];
            }
        }
    }
    R
}
