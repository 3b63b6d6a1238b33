//! Matrix transposition between the channel-major layout of tensors and the
//! cell-major layout of the implicit kernels, 16 × 16 blocks at a time in registers.

use super::segments::lane_mask;
use crate::simd::Avx512;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `dst[c·dst_ld + r] = src[r·src_ld + c]` for r < rows, c < cols; nothing else in
/// `dst` is written.
///
/// # Panics
/// When `src` or `dst` is too short for the shapes.
pub(super) fn transpose(src: &[f32], rows: usize, cols: usize, src_ld: usize, dst: &mut [f32], dst_ld: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    // The bounds the unsafe kernel relies on.
    assert!(cols <= src_ld && rows <= dst_ld);
    assert!(src.len() >= (rows - 1) * src_ld + cols && dst.len() >= (cols - 1) * dst_ld + rows);
    #[cfg(target_arch = "x86_64")]
    if Avx512::detect().is_some() {
        // SAFETY: AVX-512F is present (detected); the asserts above bound every access the
        // kernel makes (it reads and writes only the r < rows, c < cols elements).
        unsafe { transpose_avx512(src.as_ptr(), rows, cols, src_ld, dst.as_mut_ptr(), dst_ld) };
        return;
    }
    transpose_portable(src, rows, cols, src_ld, dst, dst_ld);
}

/// The portable fallback, a line of L1 at a time.
fn transpose_portable(src: &[f32], rows: usize, cols: usize, src_ld: usize, dst: &mut [f32], dst_ld: usize) {
    const BLOCK: usize = 16;
    for r0 in (0..rows).step_by(BLOCK) {
        for c in 0..cols {
            let out = &mut dst[c * dst_ld..];
            for r in r0..(r0 + BLOCK).min(rows) {
                out[r] = src[r * src_ld + c];
            }
        }
    }
}

/// # Safety
/// AVX-512F must be present; `src` must hold `(rows − 1)·src_ld + cols` floats and
/// `dst` `(cols − 1)·dst_ld + rows`, with `cols ≤ src_ld` and `rows ≤ dst_ld`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_avx512(src: *const f32, rows: usize, cols: usize, src_ld: usize, dst: *mut f32, dst_ld: usize) {
    for r0 in (0..rows).step_by(16) {
        let (height, row_mask) = ((rows - r0).min(16), lane_mask(rows - r0));
        for c0 in (0..cols).step_by(16) {
            let (width, col_mask) = ((cols - c0).min(16), lane_mask(cols - c0));
            // SAFETY: loads of rows r0 + i < rows at columns c0.. masked to c < cols;
            // stores of columns c0 + j < cols at rows r0.. masked to r < rows.
            unsafe {
                let block: [__m512; 16] = std::array::from_fn(|i| {
                    if i < height {
                        _mm512_maskz_loadu_ps(col_mask, src.add((r0 + i) * src_ld + c0))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                let columns = transpose_16x16(block);
                for (j, column) in columns.iter().enumerate().take(width) {
                    _mm512_mask_storeu_ps(dst.add((c0 + j) * dst_ld + r0), row_mask, *column);
                }
            }
        }
    }
}

/// Sixteen rows of sixteen floats to their sixteen columns: 32-bit then 64-bit
/// interleaves within 128-bit lanes (each lane then holds a 4 × 4 block of one column),
/// then two rounds of 128-bit lane shuffles that gather a column's four blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn transpose_16x16(r: [__m512; 16]) -> [__m512; 16] {
    // t[2i], t[2i+1]: rows 2i and 2i+1 interleaved, low and high halves of each lane.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // u[4i + j], lane L: column 4L + j of rows 4i..4i + 4.
    let u: [__m512; 16] = std::array::from_fn(|n| {
        let (i, j) = (n / 4, n % 4);
        let (a, b) = (_mm512_castps_pd(t[4 * i + j / 2]), _mm512_castps_pd(t[4 * i + 2 + j / 2]));
        _mm512_castpd_ps(if j % 2 == 0 { _mm512_unpacklo_pd(a, b) } else { _mm512_unpackhi_pd(a, b) })
    });
    // Column 4L + j gathers lane L of u[j], u[4 + j], u[8 + j], u[12 + j].
    let mut columns = [_mm512_setzero_ps(); 16];
    for j in 0..4 {
        let low01 = _mm512_shuffle_f32x4::<0x44>(u[j], u[4 + j]);
        let high01 = _mm512_shuffle_f32x4::<0xEE>(u[j], u[4 + j]);
        let low23 = _mm512_shuffle_f32x4::<0x44>(u[8 + j], u[12 + j]);
        let high23 = _mm512_shuffle_f32x4::<0xEE>(u[8 + j], u[12 + j]);
        columns[j] = _mm512_shuffle_f32x4::<0x88>(low01, low23);
        columns[4 + j] = _mm512_shuffle_f32x4::<0xDD>(low01, low23);
        columns[8 + j] = _mm512_shuffle_f32x4::<0x88>(high01, high23);
        columns[12 + j] = _mm512_shuffle_f32x4::<0xDD>(high01, high23);
    }
    columns
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // On a CPU with AVX-512 this runs the register kernel, elsewhere the fallback;
        // both against the definition, with padding around both matrices untouched.
        #[test]
        fn transposes_any_shape(rows in 1usize..40, cols in 1usize..40, src_pad in 0usize..5, dst_pad in 0usize..5) {
            let (src_ld, dst_ld) = (cols + src_pad, rows + dst_pad);
            let src: Vec<f32> = (0..rows * src_ld).map(|i| i as f32).collect();
            let mut dst = vec![-1.0; cols * dst_ld];
            transpose(&src, rows, cols, src_ld, &mut dst, dst_ld);
            let mut portable = vec![-1.0; cols * dst_ld];
            transpose_portable(&src, rows, cols, src_ld, &mut portable, dst_ld);
            for c in 0..cols {
                for r in 0..dst_ld {
                    let expected = if r < rows { src[r * src_ld + c] } else { -1.0 };
                    prop_assert_eq!(dst[c * dst_ld + r], expected, "r {} c {}", r, c);
                    prop_assert_eq!(portable[c * dst_ld + r], expected, "portable r {} c {}", r, c);
                }
            }
        }
    }
}
