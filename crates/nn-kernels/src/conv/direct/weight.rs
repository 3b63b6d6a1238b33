//! The weight gradient on the direct path: `∂w[o, c, tap] += Σ_n Σ_cells ∂y[n, o, cell]
//! · x′[n, c, cell·s + tap]`, with output channels in the vector lanes (∂y transposed to
//! channel-last per image) and six filter taps in registers, summed over every output
//! cell of an image.

use super::tile::Simd;
use super::Shape;
use crate::conv::ConvProblem;
use crate::geometry::KernelMode;
use crate::simd::Avx2Fma;
use crate::workspace::{fit, with_scratch};
use rayon::prelude::*;

/// Output channels per vector: the weight gradient's tiles are AVX2 only.
const LANES: usize = Avx2Fma::LANES;
/// Filter taps (input channel, tap row, tap column) per micro-tile.
const TAPS: usize = 6;
/// Bytes of the transposed gradient one strip of output rows holds: every tile of the
/// strip rereads it, so it should stay in L2.
const STRIP_BYTES: usize = 64 << 10;

/// Weight gradient on the direct path, summed over fixed chunks of `per_chunk` images
/// and added into `dw` chunk by chunk in order (so the result does not depend on the
/// thread count); `false` (nothing written) where the path does not apply.
pub(in crate::conv) fn backward_weight(
    problem: &ConvProblem,
    batch: usize,
    per_chunk: usize,
    x: &[f32],
    dy: &[f32],
    pad_value: f32,
    dw: &mut [f32],
) -> bool {
    let (Some(isa), Some(shape)) = (Avx2Fma::detect(), super::forward_shape(problem)) else { return false };
    if !shape.worthwhile() {
        return false;
    }
    debug_assert!(super::takes(problem));
    let channels = shape.blocks(LANES) * LANES;
    let taps = shape.in_channels * shape.taps();
    let (x_len, dy_len) = (shape.source_len(), shape.out_len());
    let (padded_len, cells) = (shape.padded_len(), shape.output_cells());
    let starts = window_starts(&shape);
    let partials: Vec<Vec<f32>> = (0..batch.div_ceil(per_chunk))
        .into_par_iter()
        .map(|chunk| {
            let mut partial = vec![0.0; taps * channels];
            with_scratch::<f32, 2, _>(|[xp, dyt]| {
                for n in chunk * per_chunk..((chunk + 1) * per_chunk).min(batch) {
                    let xp = fit(xp, padded_len);
                    shape.pad(&x[n * x_len..(n + 1) * x_len], pad_value, xp);
                    let dyt = fit(dyt, cells * channels);
                    to_channel_last(&dy[n * dy_len..(n + 1) * dy_len], shape.out_channels, channels, dyt);
                    image(isa, &shape, &starts, xp, dyt, &mut partial);
                }
            });
            partial
        })
        .collect();
    let per_channel = shape.taps();
    let flip = problem.geometry().mode() == KernelMode::Convolution;
    for partial in &partials {
        for (t, per_tap) in partial.chunks_exact(channels).enumerate() {
            let (c, tap) = (t / per_channel, t % per_channel);
            // The correlation's tap α is the source convolution's f − 1 − α in every
            // dimension: the row-major tap index reversed.
            let tap = if flip { per_channel - 1 - tap } else { tap };
            for (o, &g) in per_tap.iter().take(shape.out_channels).enumerate() {
                dw[(o * shape.in_channels + c) * per_channel + tap] += g;
            }
        }
    }
    true
}

/// Where the window of each tap (input channel, then tap row-major) starts in a padded
/// image: worked out once, as a tile dividing its taps apart cost more than its sums
/// on 7×7 planes.
fn window_starts(shape: &Shape) -> Vec<usize> {
    let [fd, fh, fw] = shape.filter;
    let [pd, ph, pw] = shape.padded;
    let mut starts = Vec::with_capacity(shape.in_channels * shape.taps());
    for c in 0..shape.in_channels {
        for t in 0..fd {
            for a in 0..fh {
                starts.extend((0..fw).map(|b| ((c * pd + t) * ph + a) * pw + b));
            }
        }
    }
    starts
}

/// `[C, cells]` to `[cells, padded C]`, the channels past `C` zero.
fn to_channel_last(src: &[f32], channels: usize, padded: usize, dst: &mut [f32]) {
    let cells = src.len() / channels;
    for (cell, row) in dst.chunks_exact_mut(padded).enumerate().take(cells) {
        for (o, v) in row.iter_mut().enumerate() {
            *v = if o < channels { src[o * cells + cell] } else { 0.0 };
        }
    }
}

/// Adds one image's contribution to `partial` (`[taps, padded channels]`).
fn image(isa: Avx2Fma, shape: &Shape, starts: &[usize], xp: &[f32], dyt: &[f32], partial: &mut [f32]) {
    let (rows, ow) = (shape.output_rows(), shape.output[2]);
    let taps = shape.in_channels * shape.taps();
    // Every read lies in the buffers: (o − 1)·s + f ≤ padded in each dimension, the
    // transposed gradient has a row per output cell, the partial a row per tap.
    assert!(shape.taps_fit());
    assert!(xp.len() >= shape.padded_len());
    let blocks = shape.blocks(LANES);
    assert!(dyt.len() >= rows * ow * blocks * LANES && partial.len() >= taps * blocks * LANES);
    let strip = (STRIP_BYTES / (ow * blocks * LANES * 4)).clamp(1, rows);
    for first in (0..rows).step_by(strip) {
        let rows = first..(first + strip).min(rows);
        let mut block = 0;
        while block < blocks {
            let pair = blocks - block >= 2;
            let mut tap = 0;
            while tap < taps {
                let count = (taps - tap).min(TAPS);
                let at = At { block, starts: &starts[tap..tap + count], tap, rows: rows.clone() };
                // SAFETY: AVX2 and FMA were detected (`isa`); the asserts above bound
                // every read and write the tile makes.
                unsafe { dispatch(isa, shape, pair, count, at, xp, dyt, partial) };
                tap += count;
            }
            block += if pair { 2 } else { 1 };
        }
    }
}

/// A tile's first channel block, first tap, and the output rows it sums over (counted
/// over every depth).
struct At<'s> {
    block: usize,
    /// Where the windows of the tile's taps start in the padded image.
    starts: &'s [usize],
    tap: usize,
    rows: std::ops::Range<usize>,
}

/// Picks the tile compiled for this many channel blocks and taps.
///
/// # Safety
/// AVX2 and FMA must be available; the tile's reads and writes must lie in the
/// buffers (as [`image`] checks).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn dispatch(
    _isa: Avx2Fma,
    shape: &Shape,
    pair: bool,
    count: usize,
    at: At,
    xp: &[f32],
    dyt: &[f32],
    partial: &mut [f32],
) {
    macro_rules! by_taps {
        ($blocks:literal) => {
            match count {
                1 => tile::<$blocks, 1>(shape, &at, xp, dyt, partial),
                2 => tile::<$blocks, 2>(shape, &at, xp, dyt, partial),
                3 => tile::<$blocks, 3>(shape, &at, xp, dyt, partial),
                4 => tile::<$blocks, 4>(shape, &at, xp, dyt, partial),
                5 => tile::<$blocks, 5>(shape, &at, xp, dyt, partial),
                _ => tile::<$blocks, TAPS>(shape, &at, xp, dyt, partial),
            }
        };
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        if pair {
            by_taps!(2)
        } else {
            by_taps!(1)
        }
    }
}

/// `B` blocks of eight output channels by `R` taps, over the output cells of a strip
/// of rows.
///
/// # Safety
/// As for [`dispatch`].
#[inline(always)]
#[allow(clippy::needless_range_loop)] // Indices over two register arrays read clearer.
unsafe fn tile<const B: usize, const R: usize>(shape: &Shape, at: &At, xp: &[f32], dyt: &[f32], partial: &mut [f32]) {
    use std::arch::x86_64::*;
    let (block, first_tap) = (at.block, at.tap);
    let [_, oh, ow] = shape.output;
    let [sd, s0, s1] = shape.stride;
    let [_, ph, pw] = shape.padded;
    let channels = shape.blocks(LANES) * LANES;
    // SAFETY (whole body): the caller guarantees AVX2/FMA and that every offset below
    // stays inside `xp`, `dyt` and `partial`.
    unsafe {
        let sources: [*const f32; R] = std::array::from_fn(|r| xp.as_ptr().add(at.starts[r]));
        let mut acc = [[_mm256_setzero_ps(); R]; B];
        // Output depth and row of output row i, counted without a division per row.
        let (mut depth, mut row_in_depth) = (at.rows.start / oh, at.rows.start % oh);
        for i in at.rows.clone() {
            let row = dyt.as_ptr().add(i * ow * channels + block * LANES);
            let row_start = (depth * sd * ph + row_in_depth * s0) * pw;
            row_in_depth += 1;
            if row_in_depth == oh {
                (depth, row_in_depth) = (depth + 1, 0);
            }
            for j in 0..ow {
                let offset = row_start + j * s1;
                let mut g = [_mm256_setzero_ps(); B];
                for (k, v) in g.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(row.add(j * channels + k * LANES));
                }
                for r in 0..R {
                    let xv = _mm256_broadcast_ss(&*sources[r].add(offset));
                    for k in 0..B {
                        acc[k][r] = _mm256_fmadd_ps(xv, g[k], acc[k][r]);
                    }
                }
            }
        }
        for r in 0..R {
            for k in 0..B {
                let at = partial.as_mut_ptr().add((first_tap + r) * channels + (block + k) * LANES);
                _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), acc[k][r]));
            }
        }
    }
}
