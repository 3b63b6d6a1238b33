//! The AVX-512 micro-kernels and the streaming copy: the only code here that touches
//! intrinsics.

#[cfg(target_arch = "x86_64")]
use super::LANES;
#[cfg(target_arch = "x86_64")]
use super::{MAX_ROWS, MAX_ROWS_3};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The operands of one micro-tile: up to [`MAX_ROWS`] rows by two segments, or up
/// to [`MAX_ROWS_3`] by three (the kernel reads the first S of each array).
pub(super) struct Tile {
    pub(super) depth: usize,
    /// Packed weights of the sliver: `depth × rows`.
    pub(super) a: *const f32,
    /// `depth` tap offsets.
    pub(super) offsets: *const usize,
    /// Each segment's base in the padded source.
    pub(super) sources: [*const f32; 3],
    /// Per segment, the lanes of each of its two output rows.
    pub(super) masks: [[u16; 2]; 3],
    /// The rows' initial values (the bias), or null for zero.
    pub(super) init: *const f32,
    /// Per segment and output row: where lane 0 would be stored in the sliver's
    /// first channel (only the masked lanes are).
    pub(super) outputs: [[*mut f32; 2]; 3],
    /// Cells between output rows.
    pub(super) ld: usize,
}

/// Runs the kernel compiled for `rows` rows and `width` segments, so that a short
/// sliver wastes no work.
///
/// # Safety
/// As for [`kernel`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn micro_kernel(rows: usize, width: usize, tile: &Tile) {
    macro_rules! by_rows {
        ($width:literal, $($rows:literal)*) => {
            match rows {
                $($rows => kernel::<$rows, $width>(tile),)*
                _ => unreachable!("slivers have 1..=MAX_ROWS rows, 1..=MAX_ROWS_3 for three segments"),
            }
        };
    }
    const _: () = assert!(MAX_ROWS == 12 && MAX_ROWS_3 == 8);
    // SAFETY: forwarded to the caller.
    unsafe {
        match width {
            2 => by_rows!(2, 1 2 3 4 5 6 7 8 9 10 11 12),
            3 => by_rows!(3, 1 2 3 4 5 6 7 8),
            _ => unreachable!("two or three segments"),
        }
    }
}

/// `out[i, segment cells] = init[i] + Σ_k a[k, i] · source[segment + offsets[k]]` for
/// the `R` rows of a tile.
///
/// # Safety
/// AVX-512F must be present. `a` must hold `depth × R` floats, `offsets` `depth`
/// offsets, `init` (unless null) `R`; for each of the first S segments (missing ones
/// repeat the first) and every k, the 16 floats at `source + offsets[k]` must be
/// readable, and for each of their (output, mask) pairs the masked lanes of
/// `output + i·ld` writable for i < R. Lanes that are no cell are computed from
/// whatever they read and never stored.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const R: usize, const S: usize>(tile: &Tile) {
    let mut acc = [[_mm512_setzero_ps(); S]; R];
    if !tile.init.is_null() {
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: `init` holds R values.
            *row = [_mm512_set1_ps(unsafe { *tile.init.add(i) }); S];
        }
    }
    let sources: [*const f32; S] = std::array::from_fn(|j| tile.sources[j]);
    let mut a = tile.a;
    for k in 0..tile.depth {
        // SAFETY: k < depth; the caller guarantees the whole-vector loads readable;
        // `a` advances R floats per k within its sliver.
        unsafe {
            let offset = *tile.offsets.add(k);
            let b: [__m512; S] = std::array::from_fn(|j| _mm512_loadu_ps(sources[j].wrapping_add(offset)));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*a.add(i));
                for (lanes, b) in row.iter_mut().zip(&b) {
                    *lanes = _mm512_fmadd_ps(ai, *b, *lanes);
                }
            }
            a = a.add(R);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for ((lanes, outputs), masks) in row.iter().zip(tile.outputs).zip(tile.masks) {
            for (output, mask) in outputs.into_iter().zip(masks) {
                // SAFETY: masked stores to the caller's writable cells of row i.
                unsafe { _mm512_mask_storeu_ps(output.wrapping_add(i * tile.ld), mask, *lanes) };
            }
        }
    }
}

/// `dst ← src` with non-temporal stores for the whole cache lines of `dst`, plain
/// stores for the partial lines at either end (which a neighbouring band or image
/// may share).
///
/// # Safety
/// AVX-512F must be present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn stream_copy(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    let head = dst.as_ptr().align_offset(64).min(dst.len());
    let body = (dst.len() - head) / LANES * LANES;
    dst[..head].copy_from_slice(&src[..head]);
    for at in (head..head + body).step_by(LANES) {
        // SAFETY: `at + 16 ≤ head + body ≤ len` for both slices, and `dst + at` is
        // 64-byte aligned, as the streaming store requires.
        unsafe { _mm512_stream_ps(dst.as_mut_ptr().add(at), _mm512_loadu_ps(src.as_ptr().add(at))) };
    }
    dst[head + body..].copy_from_slice(&src[head + body..]);
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::simd::Avx512;

    #[test]
    fn stream_copy_copies_at_every_alignment() {
        if Avx512::detect().is_none() {
            return;
        }
        let src: Vec<f32> = (0..100).map(|i| i as f32).collect();
        for offset in 0..LANES {
            for len in 0..=80 {
                let mut dst = vec![-1.0f32; 100];
                // SAFETY: AVX-512F is present (checked above).
                unsafe { stream_copy(&src[..len], &mut dst[offset..offset + len]) };
                assert!(dst[..offset].iter().chain(&dst[offset + len..]).all(|&v| v == -1.0));
                assert_eq!(&dst[offset..offset + len], &src[..len], "offset {offset}, length {len}");
            }
        }
    }
}
