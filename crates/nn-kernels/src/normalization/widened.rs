//! The statistics' sums for f32 in AVX2: each chunk of eight values widened to two
//! vectors of f64, partial sums 0–3 in one register and 4–7 in another, each added
//! (never fused) as the portable loops add them, so the bits are theirs.

use super::PARTIALS;
use crate::simd::Avx2Fma;
use std::arch::x86_64::*;

/// Partial sums of `Σ x` over whole chunks (`x.len()` a multiple of [`PARTIALS`]).
pub(super) fn sum(_: Avx2Fma, x: &[f32]) -> [f64; PARTIALS] {
    // SAFETY: the token proves AVX2.
    unsafe { sum_avx2(x) }
}

/// Partial sums of `Σ (x − centre)²` over whole chunks.
pub(super) fn sum_squared_deviation(_: Avx2Fma, x: &[f32], centre: f64) -> [f64; PARTIALS] {
    // SAFETY: the token proves AVX2.
    unsafe { sum_squared_deviation_avx2(x, centre) }
}

/// Partial sums of `Σ g` and `Σ g·(x − centre)` over whole chunks of equally long
/// runs; with a rectifier `(scale, shift)`, `g` counts only where
/// `x·scale + shift > 0`.
pub(super) fn sum_and_dot_deviation(
    _: Avx2Fma,
    g: &[f32],
    x: &[f32],
    centre: f64,
    rectifier: Option<(f32, f32)>,
) -> ([f64; PARTIALS], [f64; PARTIALS]) {
    // SAFETY: the token proves AVX2.
    unsafe {
        match rectifier {
            None => sum_and_dot_deviation_avx2::<false>(g, x, centre, (0.0, 0.0)),
            Some(rectifier) => sum_and_dot_deviation_avx2::<true>(g, x, centre, rectifier),
        }
    }
}

/// Eight values as f64, low and high half.
#[inline(always)]
fn widen(v: __m256) -> (__m256d, __m256d) {
    // SAFETY: register operations only; the callers are compiled with AVX2.
    unsafe { (_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v))) }
}

/// A chunk's eight values as f64.
#[inline(always)]
fn load_widened(chunk: &[f32; PARTIALS]) -> (__m256d, __m256d) {
    // SAFETY: the chunk holds eight floats; the callers are compiled with AVX2.
    widen(unsafe { _mm256_loadu_ps(chunk.as_ptr()) })
}

/// The two halves as the eight partial sums.
#[inline(always)]
fn partials((low, high): (__m256d, __m256d)) -> [f64; PARTIALS] {
    let mut out = [0.0; PARTIALS];
    // SAFETY: `out` holds eight doubles; the callers are compiled with AVX2.
    unsafe {
        _mm256_storeu_pd(out.as_mut_ptr(), low);
        _mm256_storeu_pd(out.as_mut_ptr().add(4), high);
    }
    out
}

#[target_feature(enable = "avx2")]
fn sum_avx2(x: &[f32]) -> [f64; PARTIALS] {
    let (mut low, mut high) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    for chunk in x.as_chunks::<PARTIALS>().0 {
        let (l, h) = load_widened(chunk);
        (low, high) = (_mm256_add_pd(low, l), _mm256_add_pd(high, h));
    }
    partials((low, high))
}

#[target_feature(enable = "avx2")]
fn sum_squared_deviation_avx2(x: &[f32], centre: f64) -> [f64; PARTIALS] {
    let c = _mm256_set1_pd(centre);
    let (mut low, mut high) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    for chunk in x.as_chunks::<PARTIALS>().0 {
        let (l, h) = load_widened(chunk);
        let (l, h) = (_mm256_sub_pd(l, c), _mm256_sub_pd(h, c));
        low = _mm256_add_pd(low, _mm256_mul_pd(l, l));
        high = _mm256_add_pd(high, _mm256_mul_pd(h, h));
    }
    partials((low, high))
}

#[target_feature(enable = "avx2")]
fn sum_and_dot_deviation_avx2<const RECTIFIED: bool>(
    g: &[f32],
    x: &[f32],
    centre: f64,
    (scale, shift): (f32, f32),
) -> ([f64; PARTIALS], [f64; PARTIALS]) {
    let c = _mm256_set1_pd(centre);
    let (scale, shift, zero) = (_mm256_set1_ps(scale), _mm256_set1_ps(shift), _mm256_setzero_ps());
    let (mut sum_low, mut sum_high) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let (mut dot_low, mut dot_high) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    for (gc, xc) in g.as_chunks::<PARTIALS>().0.iter().zip(x.as_chunks::<PARTIALS>().0) {
        // SAFETY: each chunk holds eight floats.
        let (mut g8, x8) = unsafe { (_mm256_loadu_ps(gc.as_ptr()), _mm256_loadu_ps(xc.as_ptr())) };
        if RECTIFIED {
            // Multiplied, then added (not fused), as the forward pass computed it; an
            // ordered comparison, so a NaN output passes nothing, as ReLU's derivative.
            let y = _mm256_add_ps(_mm256_mul_ps(x8, scale), shift);
            g8 = _mm256_and_ps(g8, _mm256_cmp_ps::<_CMP_GT_OQ>(y, zero));
        }
        let ((gl, gh), (xl, xh)) = (widen(g8), widen(x8));
        (sum_low, sum_high) = (_mm256_add_pd(sum_low, gl), _mm256_add_pd(sum_high, gh));
        dot_low = _mm256_add_pd(dot_low, _mm256_mul_pd(gl, _mm256_sub_pd(xl, c)));
        dot_high = _mm256_add_pd(dot_high, _mm256_mul_pd(gh, _mm256_sub_pd(xh, c)));
    }
    (partials((sum_low, sum_high)), partials((dot_low, dot_high)))
}
