//! Running a tiled product: every image of a batch, or one image, through the
//! micro-kernels.

use super::kernel::{micro_kernel, stream_copy, Tile};
use super::segments::{Segment, Store};
use super::tiling::{TiledProduct, Writes};
use crate::simd::Avx512;
use crate::workspace::{fit, with_scratch};
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::_mm_sfence;

impl TiledProduct {
    /// The product over a batch: `sources` holds the unpadded source images, padded
    /// with `pad_value` one at a time, `outputs` the output images (`rows × plane`
    /// each), `packed` the weights from [`super::tiling::pack_rows`] with the
    /// product's slivers.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn multiply_batch(
        &self,
        isa: Avx512,
        writes: Writes,
        packed: &[f32],
        init: Option<&[f32]>,
        pad_value: f32,
        sources: &[f32],
        outputs: &mut [f32],
    ) {
        let product = &self.product;
        let source_len = product.channels * product.unpadded.iter().product::<usize>();
        let out_len = product.rows * product.plane;
        outputs.par_chunks_mut(out_len).zip(sources.par_chunks(source_len)).for_each(|(out, image)| {
            with_scratch::<f32, 2, _>(|[padded, stage]| {
                let padded = fit(padded, product.buffer_len());
                product.pad_image(image, pad_value, padded);
                self.multiply_image(isa, writes, packed, init, padded, out, stage);
            })
        });
    }

    /// One image, already padded into `source`: every sliver of rows against every
    /// group of segments, band by band. `stage` is scratch for [`Writes::Streamed`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn multiply_image(
        &self,
        _isa: Avx512,
        writes: Writes,
        packed: &[f32],
        init: Option<&[f32]>,
        source: &[f32],
        out: &mut [f32],
        stage: &mut Vec<f32>,
    ) {
        let product = &self.product;
        let tiling = self.tiling(writes);
        let (slivers, width) = (&tiling.slivers, tiling.width);
        let depth = product.offsets.len();
        // The bounds every unsafe access below relies on (and those of `TiledProduct::new`).
        assert!(product.reads_in_bounds() && source.len() == product.buffer_len());
        assert!(packed.len() == product.rows * depth && out.len() == product.rows * product.plane);
        assert!(init.is_none_or(|b| b.len() == product.rows));
        let streamed = tiling.writes != Writes::Direct;
        let segments = &product.segments;
        let group_of = |g: usize| &segments[g * width..((g + 1) * width).min(segments.len())];
        for band in &tiling.bands {
            // Where row i's cell c goes: `base + i·ld + c`.
            let (base, ld) = if streamed {
                let ld = band.cells.len();
                (fit(stage, product.rows * ld).as_mut_ptr().wrapping_sub(band.cells.start), ld)
            } else {
                (out.as_mut_ptr(), product.plane)
            };
            for group in band.groups.clone().map(group_of) {
                // Missing segments repeat the first one's loads and store nothing.
                let segment = |j: usize| group.get(j).map_or(Segment { stores: [Store::NONE; 2], ..group[0] }, |s| *s);
                let segments: [Segment; 3] = std::array::from_fn(segment);
                let sources = segments.map(|s| source[s.source..].as_ptr());
                let stores = segments.map(|s| s.stores);
                for rows in slivers {
                    let row_start = base.wrapping_add(rows.start * ld);
                    let tile = Tile {
                        depth,
                        a: packed[rows.start * depth..rows.end * depth].as_ptr(),
                        offsets: product.offsets.as_ptr(),
                        sources,
                        masks: stores.map(|pieces| pieces.map(|s| s.mask)),
                        init: init.map_or(std::ptr::null(), |b| b[rows.start..].as_ptr()),
                        outputs: stores.map(|pieces| pieces.map(|s| row_start.wrapping_offset(s.cell))),
                        ld,
                    };
                    // SAFETY: AVX-512F is present (the caller holds the token). The asserts
                    // above bound every access: the sliver's `len × depth` packed weights
                    // and `len` initial values; whole-vector loads at `source + offset`,
                    // whose last float is at most `segment source + 15 + last offset`,
                    // inside the buffer; stores to rows `rows`, each masked to lanes whose
                    // cells lie in `0..plane` (asserted above) and in the band's cells
                    // (`bands` panics otherwise): inside `out`, or inside the stage of
                    // `rows × ld` floats at `base + band start`.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        micro_kernel(rows.len(), width, &tile)
                    };
                }
            }
            if streamed {
                for (i, staged) in stage[..product.rows * ld].chunks_exact(ld).enumerate() {
                    let at = i * product.plane + band.cells.start;
                    // SAFETY: AVX-512F is present, as for the kernel.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        stream_copy(staged, &mut out[at..at + ld])
                    };
                }
            }
        }
        if streamed {
            // SAFETY: SSE is part of x86-64. The fence orders the non-temporal stores
            // before whatever the thread does next, such as telling rayon it is done.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                _mm_sfence()
            };
        }
    }
}
