//! Max pooling over 2×2 windows at stride 2 (the common pooling) for f32 in AVX2 and
//! FMA intrinsics: eight or four windows at a time, by the scalar loop's rule (the first
//! maximum in row-major order wins, and the first NaN wins over any number), as
//! selects, and rectified by ReLU's rule where asked. The scalar loop compiles its NaN
//! tests to branches, which mispredict on data.

use super::GRADIENT_STOPS;
use crate::simd::Avx2Fma;
use std::arch::x86_64::*;

const LANES: usize = 8;

/// One output row whose windows' cells are the pairs `2b, 2b + 1` of the input rows
/// starting at `top` and `bottom`, eight windows at a time (four where the row is
/// shorter), the last step overlapping the one before; returns the windows done: all
/// of them, or none for a row of under four windows. With `rectify`, as
/// `max_pool_relu_forward` says.
pub(super) fn max_of_2x2(
    _isa: Avx2Fma,
    x: &[f32],
    top: usize,
    bottom: usize,
    y_row: &mut [f32],
    arg_row: &mut [u32],
    rectify: bool,
) -> usize {
    let width = y_row.len();
    if width < 4 {
        return 0;
    }
    assert!(arg_row.len() == width && top.max(bottom) + 2 * width <= x.len(), "pooling rows");
    assert!(x.len() <= GRADIENT_STOPS as usize, "argmax indices keep bit 31 clear");
    // SAFETY: the token proves AVX2 and FMA; the assertions bound every read (2·V
    // cells from `row + 2b`, b + V ≤ width) and every write (V cells from b).
    unsafe {
        match rectify {
            true => row_avx2::<true>(x, top, bottom, y_row, arg_row),
            false => row_avx2::<false>(x, top, bottom, y_row, arg_row),
        }
    };
    width
}

#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2<const RECTIFY: bool>(x: &[f32], top: usize, bottom: usize, y_row: &mut [f32], arg_row: &mut [u32]) {
    let width = y_row.len();
    // SAFETY: AVX2, as this function's own; bounds as asserted by the caller.
    unsafe {
        if width >= LANES {
            let last = width - LANES;
            for b in (0..last).step_by(LANES).chain([last]) {
                windows_8::<RECTIFY>(x, top, bottom, b, y_row, arg_row);
            }
        } else {
            for b in [0, width - 4] {
                windows_4::<RECTIFY>(x, top, bottom, b, y_row, arg_row);
            }
        }
    }
}

/// Windows `b..b + 8`.
#[inline(always)]
unsafe fn windows_8<const RECTIFY: bool>(
    x: &[f32],
    top: usize,
    bottom: usize,
    b: usize,
    y_row: &mut [f32],
    arg_row: &mut [u32],
) {
    let evens = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    let one = _mm256_set1_epi32(1);
    // SAFETY: AVX2 is the caller's to prove, as are the bounds.
    unsafe {
        let (top_at, bottom_at) = (top + 2 * b, bottom + 2 * b);
        let (upper_left, upper_right) = deinterleave(x, top_at);
        let (lower_left, lower_right) = deinterleave(x, bottom_at);
        // In-plane indices as u32 bits (the plane is under 2³² cells).
        let upper_at = _mm256_add_epi32(_mm256_set1_epi32(top_at as u32 as i32), evens);
        let lower_at = _mm256_add_epi32(_mm256_set1_epi32(bottom_at as u32 as i32), evens);
        let (mut best, mut arg) = (upper_left, upper_at);
        update(&mut best, &mut arg, upper_right, _mm256_add_epi32(upper_at, one));
        update(&mut best, &mut arg, lower_left, lower_at);
        update(&mut best, &mut arg, lower_right, _mm256_add_epi32(lower_at, one));
        if RECTIFY {
            let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(best, _mm256_setzero_ps());
            // ReLU: +0 unless positive or NaN.
            best = _mm256_and_ps(best, _mm256_or_ps(positive, _mm256_cmp_ps::<_CMP_UNORD_Q>(best, best)));
            let stops = _mm256_andnot_si256(_mm256_castps_si256(positive), _mm256_set1_epi32(GRADIENT_STOPS as i32));
            arg = _mm256_or_si256(arg, stops);
        }
        _mm256_storeu_ps(y_row.as_mut_ptr().add(b), best);
        _mm256_storeu_si256(arg_row.as_mut_ptr().add(b).cast(), arg);
    }
}

/// Windows `b..b + 4`, in 128-bit vectors.
#[inline(always)]
unsafe fn windows_4<const RECTIFY: bool>(
    x: &[f32],
    top: usize,
    bottom: usize,
    b: usize,
    y_row: &mut [f32],
    arg_row: &mut [u32],
) {
    // SAFETY: AVX2 is the caller's to prove, as are the bounds.
    unsafe {
        let (top_at, bottom_at) = (top + 2 * b, bottom + 2 * b);
        let (upper_left, upper_right) = pairs_4(x, top_at);
        let (lower_left, lower_right) = pairs_4(x, bottom_at);
        let (evens, one) = (_mm_setr_epi32(0, 2, 4, 6), _mm_set1_epi32(1));
        let upper_at = _mm_add_epi32(_mm_set1_epi32(top_at as u32 as i32), evens);
        let lower_at = _mm_add_epi32(_mm_set1_epi32(bottom_at as u32 as i32), evens);
        let (mut best, mut arg) = (upper_left, upper_at);
        update_4(&mut best, &mut arg, upper_right, _mm_add_epi32(upper_at, one));
        update_4(&mut best, &mut arg, lower_left, lower_at);
        update_4(&mut best, &mut arg, lower_right, _mm_add_epi32(lower_at, one));
        if RECTIFY {
            let positive = _mm_cmp_ps::<_CMP_GT_OQ>(best, _mm_setzero_ps());
            best = _mm_and_ps(best, _mm_or_ps(positive, _mm_cmp_ps::<_CMP_UNORD_Q>(best, best)));
            let stops = _mm_andnot_si128(_mm_castps_si128(positive), _mm_set1_epi32(GRADIENT_STOPS as i32));
            arg = _mm_or_si128(arg, stops);
        }
        _mm_storeu_ps(y_row.as_mut_ptr().add(b), best);
        _mm_storeu_si128(arg_row.as_mut_ptr().add(b).cast(), arg);
    }
}

/// Cells `at, at + 2, …, at + 14` and `at + 1, at + 3, …, at + 15` of `x`.
#[inline(always)]
unsafe fn deinterleave(x: &[f32], at: usize) -> (__m256, __m256) {
    // SAFETY: AVX2 is the caller's to prove; the caller bounds the 16 cells read.
    unsafe {
        let (a, b) = (_mm256_loadu_ps(x.as_ptr().add(at)), _mm256_loadu_ps(x.as_ptr().add(at + LANES)));
        // Within each 128-bit half: a0 a2 b0 b2 | a4 a6 b4 b6; then the 64-bit pairs
        // reordered to a0 a2 a4 a6 b0 b2 b4 b6.
        let (even, odd) = (_mm256_shuffle_ps::<0b10_00_10_00>(a, b), _mm256_shuffle_ps::<0b11_01_11_01>(a, b));
        let order = |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)));
        (order(even), order(odd))
    }
}

/// Where `v` supersedes `best` (greater, or the window's first NaN), takes `v` and
/// its index `at`.
#[inline(always)]
unsafe fn update(best: &mut __m256, arg: &mut __m256i, v: __m256, at: __m256i) {
    // SAFETY: AVX2 is the caller's to prove.
    unsafe {
        let greater = _mm256_cmp_ps::<_CMP_GT_OQ>(v, *best);
        let first_nan =
            _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(*best, *best), _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        let better = _mm256_or_ps(greater, first_nan);
        *best = _mm256_blendv_ps(*best, v, better);
        *arg = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(*arg), _mm256_castsi256_ps(at), better));
    }
}

/// [`deinterleave`] of 8 cells, in 128-bit vectors.
#[inline(always)]
unsafe fn pairs_4(x: &[f32], at: usize) -> (__m128, __m128) {
    // SAFETY: AVX is the caller's to prove; the caller bounds the 8 cells read.
    unsafe {
        let (a, b) = (_mm_loadu_ps(x.as_ptr().add(at)), _mm_loadu_ps(x.as_ptr().add(at + 4)));
        (_mm_shuffle_ps::<0b10_00_10_00>(a, b), _mm_shuffle_ps::<0b11_01_11_01>(a, b))
    }
}

/// [`update`] in 128-bit vectors.
#[inline(always)]
unsafe fn update_4(best: &mut __m128, arg: &mut __m128i, v: __m128, at: __m128i) {
    // SAFETY: AVX is the caller's to prove.
    unsafe {
        let greater = _mm_cmp_ps::<_CMP_GT_OQ>(v, *best);
        let first_nan = _mm_andnot_ps(_mm_cmp_ps::<_CMP_UNORD_Q>(*best, *best), _mm_cmp_ps::<_CMP_UNORD_Q>(v, v));
        let better = _mm_or_ps(greater, first_nan);
        *best = _mm_blendv_ps(*best, v, better);
        *arg = _mm_castps_si128(_mm_blendv_ps(_mm_castsi128_ps(*arg), _mm_castsi128_ps(at), better));
    }
}
