//! Direct 2-D convolution for AVX2 CPUs (f32): output channels in the vector lanes,
//! a few output cells of a row in registers, filter taps read straight from a padded
//! copy of the image. It suits the small planes and few channels of late CNN layers,
//! where a column matrix is mostly traffic (144 rows written and read for 16 products
//! per cell in T3's first stage).
//!
//! The input gradient at stride 1 is the same product on the output gradient, with
//! the filter rotated by 180° and the channel roles swapped.

#[cfg(test)]
mod tests;
mod weight;

pub(super) use weight::backward_weight;

use super::ConvProblem;
use crate::geometry::KernelMode;
use crate::simd::Avx2Fma;
use crate::workspace::{fit, with_scratch};
use rayon::prelude::*;

/// Output channels per vector.
const LANES: usize = 8;
/// Output cells per micro-tile: 2 vectors of channels × 6 cells = 12 accumulators,
/// leaving registers for the two weight vectors and a broadcast.
const CELLS: usize = 6;
/// Multiply-adds per output cell and channel below which the column path is faster.
const MIN_DEPTH: usize = 64;

/// One correlation `y[o, i, j] = init[o] + Σ_c Σ_a Σ_b src[c, i·s₀ + a, j·s₁ + b] ·
/// filter[o, c, a, b]` over a padded source, per image.
struct Shape {
    in_channels: usize,
    out_channels: usize,
    filter: [usize; 2],
    stride: [usize; 2],
    /// The padded source plane and where the image sits in it.
    padded: [usize; 2],
    before: [usize; 2],
    source: [usize; 2],
    output: [usize; 2],
}

impl Shape {
    fn taps(&self) -> usize {
        self.filter[0] * self.filter[1]
    }

    /// Whether this product suits the path: enough output channels to fill the lanes,
    /// and enough multiply-adds per output cell to hide its scattered stores (C2, one
    /// input channel and 25 taps, runs faster on the column path; so does its input
    /// gradient, with one output channel).
    fn worthwhile(&self) -> bool {
        self.out_channels >= LANES && self.in_channels * self.taps() >= MIN_DEPTH
    }

    fn blocks(&self) -> usize {
        self.out_channels.div_ceil(LANES)
    }

    /// The padded copy of one `[in_channels, source…]` image.
    fn pad(&self, image: &[f32], value: f32, dst: &mut [f32]) {
        let [ph, pw] = self.padded;
        let [h, w] = self.source;
        for (plane, src) in dst.chunks_exact_mut(ph * pw).zip(image.chunks_exact(h * w)) {
            plane.fill(value);
            for (row, src_row) in src.chunks_exact(w).enumerate() {
                let at = (self.before[0] + row) * pw + self.before[1];
                plane[at..at + w].copy_from_slice(src_row);
            }
        }
    }

    /// Filter values `weight(o, c, a, b)` in the kernel's order: blocks of eight output
    /// channels, then input channel, tap row, tap column, lane; missing channels zero.
    fn pack(&self, weight: impl Fn(usize, usize, usize, usize) -> f32) -> Vec<f32> {
        let [fh, fw] = self.filter;
        let mut packed = vec![0.0; self.blocks() * self.in_channels * self.taps() * LANES];
        for (i, v) in packed.iter_mut().enumerate() {
            let lane = i % LANES;
            let tap = i / LANES % self.taps();
            let c = i / LANES / self.taps() % self.in_channels;
            let o = i / LANES / self.taps() / self.in_channels * LANES + lane;
            if o < self.out_channels {
                *v = weight(o, c, tap / fw, tap % fw);
            }
        }
        debug_assert_eq!(packed.len() % (fh * fw), 0);
        packed
    }

    /// Runs the correlation over a batch: `src` holds `[in_channels, source…]` images,
    /// `dst` `[out_channels, output…]` ones.
    fn run(&self, isa: Avx2Fma, src: &[f32], packed: &[f32], init: Option<&[f32]>, pad_value: f32, dst: &mut [f32]) {
        let (src_len, dst_len) = (self.in_channels * self.source[0] * self.source[1], self.out_len());
        let padded_len = self.in_channels * self.padded[0] * self.padded[1];
        dst.par_chunks_mut(dst_len).zip(src.par_chunks(src_len)).for_each(|(y, x)| {
            with_scratch::<f32, 1, _>(|[xp]| {
                let xp = fit(xp, padded_len);
                self.pad(x, pad_value, xp);
                self.image(isa, xp, packed, init, y);
            })
        });
    }

    fn out_len(&self) -> usize {
        self.out_channels * self.output[0] * self.output[1]
    }

    /// One image: every row of outputs in tiles of [`CELLS`] cells, two channel blocks
    /// at a time, and the columns a row leaves over (one of a 7-wide row) in tiles
    /// running down the column. A short tile keeps too few sums in flight to hide the
    /// FMA latency: in rows alone a 7×7 plane takes seven one-cell tiles, down the
    /// last column one of six and one of one. (Tiles that run on across row ends
    /// measured twice as slow: their cells' addresses no longer stay in registers.)
    fn image(&self, isa: Avx2Fma, xp: &[f32], packed: &[f32], init: Option<&[f32]>, y: &mut [f32]) {
        let [oh, ow] = self.output;
        let [fh, fw] = self.filter;
        // Every tap a tile reads lies in the padded copy: the output geometry was
        // derived from these paddings, so (o − 1)·s + f ≤ padded in each dimension.
        assert!((oh - 1) * self.stride[0] + fh <= self.padded[0] && (ow - 1) * self.stride[1] + fw <= self.padded[1]);
        assert!(xp.len() >= self.in_channels * self.padded[0] * self.padded[1]);
        assert!(packed.len() >= self.blocks() * self.in_channels * self.taps() * LANES && y.len() >= self.out_len());
        let whole = ow - ow % CELLS;
        let mut block = 0;
        while block < self.blocks() {
            let pair = self.blocks() - block >= 2;
            let along_rows = (0..oh).flat_map(|row| {
                (0..whole).step_by(CELLS).map(move |col| (Tile { block, row, col, down: false }, CELLS))
            });
            let down_columns = (whole..ow).flat_map(|col| {
                (0..oh).step_by(CELLS).map(move |row| (Tile { block, row, col, down: true }, (oh - row).min(CELLS)))
            });
            for (at, cells) in along_rows.chain(down_columns) {
                // SAFETY: AVX2 and FMA were detected (`isa`); the asserts above bound
                // every read of `xp` and `packed` and every write of `y` the tile
                // makes (its cells lie in the output plane).
                unsafe { dispatch_tile(isa, self, pair, cells, at, xp, packed, init, y) };
            }
            block += if pair { 2 } else { 1 };
        }
    }
}

/// Where a micro-tile sits: its first channel block, first output cell, and whether
/// its cells run along the row or down the column.
#[derive(Clone, Copy)]
struct Tile {
    block: usize,
    row: usize,
    col: usize,
    down: bool,
}

/// Picks the tile compiled for this many channel blocks and cells.
///
/// # Safety
/// AVX2 and FMA must be available; the tile's reads and writes must lie in the
/// buffers (as [`Shape::image`] checks).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn dispatch_tile(
    _isa: Avx2Fma,
    shape: &Shape,
    pair: bool,
    cells: usize,
    at: Tile,
    xp: &[f32],
    packed: &[f32],
    init: Option<&[f32]>,
    y: &mut [f32],
) {
    macro_rules! by_cells {
        ($blocks:literal) => {
            match cells {
                1 => tile::<$blocks, 1>(shape, at, xp, packed, init, y),
                2 => tile::<$blocks, 2>(shape, at, xp, packed, init, y),
                3 => tile::<$blocks, 3>(shape, at, xp, packed, init, y),
                4 => tile::<$blocks, 4>(shape, at, xp, packed, init, y),
                5 => tile::<$blocks, 5>(shape, at, xp, packed, init, y),
                _ => tile::<$blocks, CELLS>(shape, at, xp, packed, init, y),
            }
        };
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        if pair {
            by_cells!(2)
        } else {
            by_cells!(1)
        }
    }
}

/// `B` blocks of eight output channels by `R` output cells of one row.
///
/// # Safety
/// As for [`dispatch_tile`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)] // Indices over two register arrays read clearer.
unsafe fn tile<const B: usize, const R: usize>(
    shape: &Shape,
    at: Tile,
    xp: &[f32],
    packed: &[f32],
    init: Option<&[f32]>,
    y: &mut [f32],
) {
    use std::arch::x86_64::*;
    let [fh, fw] = shape.filter;
    let [s0, s1] = shape.stride;
    let pw = shape.padded[1];
    let plane = shape.padded[0] * pw;
    let block_len = shape.in_channels * shape.taps() * LANES;
    let [oh, ow] = shape.output;
    // From one cell of the tile to the next, in the padded source and in the output.
    let (source_step, output_step) = if at.down { (s0 * pw, ow) } else { (s1, 1) };
    // SAFETY (whole body): the caller guarantees AVX2/FMA and that every offset below
    // stays inside `xp`, `packed` and `y`.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); R]; B];
        let x0 = xp.as_ptr().add(at.row * s0 * pw + at.col * s1);
        for c in 0..shape.in_channels {
            let w_c = packed.as_ptr().add(at.block * block_len + c * shape.taps() * LANES);
            for a in 0..fh {
                let x_row = x0.add(c * plane + a * pw);
                for b in 0..fw {
                    let w_tap = w_c.add((a * fw + b) * LANES);
                    let mut wv = [_mm256_setzero_ps(); B];
                    for (k, v) in wv.iter_mut().enumerate() {
                        *v = _mm256_loadu_ps(w_tap.add(k * block_len));
                    }
                    for r in 0..R {
                        let xv = _mm256_broadcast_ss(&*x_row.add(r * source_step + b));
                        for k in 0..B {
                            acc[k][r] = _mm256_fmadd_ps(xv, wv[k], acc[k][r]);
                        }
                    }
                }
            }
        }
        let mut lanes = [0.0f32; LANES];
        for (k, acc) in acc.iter().enumerate() {
            let first = (at.block + k) * LANES;
            let channels = (shape.out_channels - first).min(LANES);
            for (r, v) in acc.iter().enumerate() {
                _mm256_storeu_ps(lanes.as_mut_ptr(), *v);
                for (l, &value) in lanes.iter().enumerate().take(channels) {
                    let o = first + l;
                    let bias = init.map_or(0.0, |b| b[o]);
                    *y.get_unchecked_mut((o * oh + at.row) * ow + at.col + r * output_step) = bias + value;
                }
            }
        }
    }
}

/// The geometry as a direct correlation, or `None` where this path does not apply
/// (other ranks; dilated taps; channel groups).
/// Whether the forward pass and the weight gradient of `problem` run here (both
/// take the same shapes), on this CPU.
pub(in crate::conv) fn takes(problem: &ConvProblem) -> bool {
    Avx2Fma::detect().is_some() && forward_shape(problem).is_some_and(|shape| shape.worthwhile())
}

fn forward_shape(problem: &ConvProblem) -> Option<Shape> {
    let g = problem.geometry();
    if g.rank() != 2 || !g.is_undilated() || problem.groups() > 1 {
        return None;
    }
    let pad = g.padding();
    let (input, filter, stride, output) = (g.input(), g.filter(), g.stride(), g.output());
    Some(Shape {
        in_channels: problem.in_channels(),
        out_channels: problem.out_channels(),
        filter: [filter[0], filter[1]],
        stride: [stride[0], stride[1]],
        padded: [pad[0].before + input[0] + pad[0].after, pad[1].before + input[1] + pad[1].after],
        before: [pad[0].before, pad[1].before],
        source: [input[0], input[1]],
        output: [output[0], output[1]],
    })
}

/// The filter oriented for correlation: the source's convolution reads tap f − 1 − α
/// where cross-correlation reads α.
fn oriented(problem: &ConvProblem, w: &[f32], o: usize, c: usize, a: usize, b: usize) -> f32 {
    let f = problem.geometry().filter();
    let (a, b) = match problem.geometry().mode() {
        KernelMode::Convolution => (f[0] - 1 - a, f[1] - 1 - b),
        KernelMode::CrossCorrelation => (a, b),
    };
    w[((o * problem.in_channels() + c) * f[0] + a) * f[1] + b]
}

/// Forward pass on the direct path; `false` (nothing written) where it does not apply.
pub(super) fn forward(
    problem: &ConvProblem,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    pad: f32,
    y: &mut [f32],
) -> bool {
    let (Some(isa), Some(shape)) = (Avx2Fma::detect(), forward_shape(problem)) else { return false };
    if !shape.worthwhile() {
        return false;
    }
    debug_assert!(takes(problem));
    let packed = shape.pack(|o, c, a, b| oriented(problem, w, o, c, a, b));
    shape.run(isa, x, &packed, bias, pad, y);
    true
}

/// Input gradient on the direct path (stride 1): the output gradient, padded by
/// f − 1 − p before and so that the result has the input's size after, correlated with
/// the filter rotated by 180° and its channel roles swapped. `false` where it does not
/// apply (another stride, or padding as wide as the filter).
pub(super) fn backward_input(problem: &ConvProblem, w: &[f32], dy: &[f32], dx: &mut [f32]) -> bool {
    let (Some(isa), Some(fwd)) = (Avx2Fma::detect(), forward_shape(problem)) else { return false };
    if fwd.stride != [1, 1] {
        return false;
    }
    let mut before = [0; 2];
    let mut padded = [0; 2];
    for d in 0..2 {
        let Some(b) = (fwd.filter[d] - 1).checked_sub(fwd.before[d]) else { return false };
        // Output cells o reach input cells o − p + a, so dx's last cell needs dy cells up
        // to input − 1 + p_before, padded out where they do not exist.
        let after = (fwd.source[d] + fwd.before[d]).checked_sub(fwd.output[d]);
        let Some(after) = after else { return false };
        before[d] = b;
        padded[d] = b + fwd.output[d] + after;
    }
    let shape = Shape {
        in_channels: fwd.out_channels,
        out_channels: fwd.in_channels,
        filter: fwd.filter,
        stride: [1, 1],
        padded,
        before,
        source: fwd.output,
        output: fwd.source,
    };
    if !shape.worthwhile() {
        return false;
    }
    let [fh, fw] = fwd.filter;
    let packed = shape.pack(|c, o, a, b| oriented(problem, w, o, c, fh - 1 - a, fw - 1 - b));
    shape.run(isa, dy, &packed, None, 0.0, dx);
    true
}
