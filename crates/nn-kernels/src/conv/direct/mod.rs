//! Direct convolution in one to three dimensions for AVX2 CPUs (f32): output channels
//! in the vector lanes, a few output cells of a row in registers, filter taps read
//! straight from a padded copy of the image. It suits the small planes and few channels
//! of late CNN layers, where a column matrix is mostly traffic (144 rows written and
//! read for 16 products per cell in T3's first stage), and volumes, whose column matrix
//! per image outgrows every cache.
//!
//! Lower ranks run as three-dimensional problems whose leading dimensions have size 1.
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

/// Spatial dimensions of the path; a problem of lower rank leads with dimensions of
/// size 1 (filter 1, stride 1, no padding).
const DIMS: usize = 3;
/// Output channels per vector.
const LANES: usize = 8;
/// Output cells per micro-tile: 2 vectors of channels × 6 cells = 12 accumulators,
/// leaving registers for the two weight vectors and a broadcast.
const CELLS: usize = 6;
/// Multiply-adds per output cell and channel below which the column path is faster.
const MIN_DEPTH: usize = 64;

/// One correlation `y[o, k, i, j] = init[o] + Σ_c Σ_t Σ_a Σ_b src[c, k·s₀ + t, i·s₁ + a,
/// j·s₂ + b] · filter[o, c, t, a, b]` over a padded source, per image. Dimensions are
/// (depth, row, column).
struct Shape {
    in_channels: usize,
    out_channels: usize,
    filter: [usize; DIMS],
    stride: [usize; DIMS],
    /// The padded source volume and where the image sits in it.
    padded: [usize; DIMS],
    before: [usize; DIMS],
    source: [usize; DIMS],
    output: [usize; DIMS],
}

impl Shape {
    /// Filter taps per input channel.
    fn taps(&self) -> usize {
        self.filter.iter().product()
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

    /// Values of one padded input channel.
    fn padded_volume(&self) -> usize {
        self.padded.iter().product()
    }

    /// Output rows, over every depth.
    fn output_rows(&self) -> usize {
        self.output[0] * self.output[1]
    }

    fn source_len(&self) -> usize {
        self.in_channels * self.source.iter().product::<usize>()
    }

    /// Output cells per channel.
    fn output_cells(&self) -> usize {
        self.output.iter().product()
    }

    fn out_len(&self) -> usize {
        self.out_channels * self.output_cells()
    }

    /// Values of one padded `[in_channels, padded…]` image.
    fn padded_len(&self) -> usize {
        self.in_channels * self.padded_volume()
    }

    /// Every tap of the last output cell lies in the padded source, in each dimension.
    fn taps_fit(&self) -> bool {
        (0..DIMS).all(|d| (self.output[d] - 1) * self.stride[d] + self.filter[d] <= self.padded[d])
    }

    /// The padded copy of one `[in_channels, source…]` image.
    fn pad(&self, image: &[f32], value: f32, dst: &mut [f32]) {
        let [_, ph, pw] = self.padded;
        let [_, h, w] = self.source;
        let volume = self.source.iter().product::<usize>();
        for (padded, src) in dst.chunks_exact_mut(self.padded_volume()).zip(image.chunks_exact(volume)) {
            padded.fill(value);
            for (depth, src_plane) in src.chunks_exact(h * w).enumerate() {
                for (row, src_row) in src_plane.chunks_exact(w).enumerate() {
                    let at = ((self.before[0] + depth) * ph + self.before[1] + row) * pw + self.before[2];
                    padded[at..at + w].copy_from_slice(src_row);
                }
            }
        }
    }

    /// Filter values `weight(o, c, tap)` (taps row-major over the filter) in the
    /// kernel's order: blocks of eight output channels, then input channel, tap, lane;
    /// missing channels zero.
    fn pack(&self, weight: impl Fn(usize, usize, usize) -> f32) -> Vec<f32> {
        let taps = self.taps();
        let mut packed = vec![0.0; self.blocks() * self.in_channels * taps * LANES];
        for o in 0..self.out_channels {
            let (block, lane) = (o / LANES, o % LANES);
            for c in 0..self.in_channels {
                let first = (block * self.in_channels + c) * taps;
                for tap in 0..taps {
                    packed[(first + tap) * LANES + lane] = weight(o, c, tap);
                }
            }
        }
        packed
    }

    /// Runs the correlation over a batch: `src` holds `[in_channels, source…]` images,
    /// `dst` `[out_channels, output…]` ones.
    fn run(&self, isa: Avx2Fma, src: &[f32], packed: &[f32], init: Option<&[f32]>, pad_value: f32, dst: &mut [f32]) {
        let padded_len = self.padded_len();
        dst.par_chunks_mut(self.out_len()).zip(src.par_chunks(self.source_len())).for_each(|(y, x)| {
            with_scratch::<f32, 1, _>(|[xp]| {
                let xp = fit(xp, padded_len);
                self.pad(x, pad_value, xp);
                self.image(isa, xp, packed, init, y);
            })
        });
    }

    /// One image: every row of outputs in tiles of [`CELLS`] cells, two channel blocks
    /// at a time, and the columns a row leaves over (one of a 7-wide row) in tiles
    /// running down the column within a depth. A short tile keeps too few sums in
    /// flight to hide the FMA latency: in rows alone a 7×7 plane takes seven one-cell
    /// tiles, down the last column one of six and one of one. (Tiles that run on across
    /// row ends measured twice as slow: their cells' addresses no longer stay in
    /// registers.)
    fn image(&self, isa: Avx2Fma, xp: &[f32], packed: &[f32], init: Option<&[f32]>, y: &mut [f32]) {
        let [od, oh, ow] = self.output;
        // Every tap a tile reads lies in the padded copy: the output geometry was
        // derived from these paddings.
        assert!(self.taps_fit());
        assert!(xp.len() >= self.padded_len());
        assert!(packed.len() >= self.blocks() * self.in_channels * self.taps() * LANES && y.len() >= self.out_len());
        let whole = ow - ow % CELLS;
        let mut block = 0;
        while block < self.blocks() {
            let pair = self.blocks() - block >= 2;
            let along_rows = (0..od * oh).flat_map(|row| {
                let (depth, row) = (row / oh, row % oh);
                (0..whole).step_by(CELLS).map(move |col| (Tile { block, depth, row, col, down: false }, CELLS))
            });
            let down_columns = (0..od).flat_map(|depth| {
                (whole..ow).flat_map(move |col| {
                    (0..oh)
                        .step_by(CELLS)
                        .map(move |row| (Tile { block, depth, row, col, down: true }, (oh - row).min(CELLS)))
                })
            });
            for (at, cells) in along_rows.chain(down_columns) {
                // SAFETY: AVX2 and FMA were detected (`isa`); the asserts above bound
                // every read of `xp` and `packed` and every write of `y` the tile
                // makes (its cells lie in the output volume).
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
    depth: usize,
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
    // Whole tiles along a row at stride 1 read neighbouring cells: a step known at
    // compile time leaves the broadcasts plain offsets, not address arithmetic.
    let unit_step = !at.down && cells == CELLS && shape.stride[2] == 1;
    macro_rules! by_cells {
        ($blocks:literal) => {
            match cells {
                _ if unit_step => tile::<$blocks, CELLS, true>(shape, at, xp, packed, init, y),
                1 => tile::<$blocks, 1, false>(shape, at, xp, packed, init, y),
                2 => tile::<$blocks, 2, false>(shape, at, xp, packed, init, y),
                3 => tile::<$blocks, 3, false>(shape, at, xp, packed, init, y),
                4 => tile::<$blocks, 4, false>(shape, at, xp, packed, init, y),
                5 => tile::<$blocks, 5, false>(shape, at, xp, packed, init, y),
                _ => tile::<$blocks, CELLS, false>(shape, at, xp, packed, init, y),
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

/// `B` blocks of eight output channels by `R` output cells of one row (or column);
/// `UNIT_STEP`: the cells are neighbours in the source (a row at stride 1).
///
/// # Safety
/// As for [`dispatch_tile`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)] // Indices over two register arrays read clearer.
unsafe fn tile<const B: usize, const R: usize, const UNIT_STEP: bool>(
    shape: &Shape,
    at: Tile,
    xp: &[f32],
    packed: &[f32],
    init: Option<&[f32]>,
    y: &mut [f32],
) {
    use std::arch::x86_64::*;
    let [fd, fh, fw] = shape.filter;
    let [sd, s0, s1] = shape.stride;
    let [pd, ph, pw] = shape.padded;
    let plane = ph * pw;
    let block_len = shape.in_channels * shape.taps() * LANES;
    let [_, oh, ow] = shape.output;
    // From one cell of the tile to the next, in the padded source and in the output.
    let (source_step, output_step) = match (UNIT_STEP, at.down) {
        (true, _) => (1, 1),
        (false, true) => (s0 * pw, ow),
        (false, false) => (s1, 1),
    };
    // SAFETY (whole body): the caller guarantees AVX2/FMA and that every offset below
    // stays inside `xp`, `packed` and `y`.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); R]; B];
        let x0 = xp.as_ptr().add(at.depth * sd * plane + at.row * s0 * pw + at.col * s1);
        let w_block = packed.as_ptr().add(at.block * block_len);
        // Input channel c and filter depth t in one loop (a fourth loop level kept the
        // accumulators in memory), counted without a division.
        let (mut c, mut t) = (0, 0);
        for q in 0..shape.in_channels * fd {
            let x_plane = x0.add((c * pd + t) * plane);
            t += 1;
            if t == fd {
                (c, t) = (c + 1, 0);
            }
            let w_plane = w_block.add(q * fh * fw * LANES);
            for a in 0..fh {
                let x_row = x_plane.add(a * pw);
                for b in 0..fw {
                    let w_tap = w_plane.add((a * fw + b) * LANES);
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
        let first_cell = (at.depth * oh + at.row) * ow + at.col;
        let cells = shape.output_cells();
        for (k, acc) in acc.iter().enumerate() {
            let first = (at.block + k) * LANES;
            let channels = (shape.out_channels - first).min(LANES);
            for (r, v) in acc.iter().enumerate() {
                _mm256_storeu_ps(lanes.as_mut_ptr(), *v);
                for (l, &value) in lanes.iter().enumerate().take(channels) {
                    let o = first + l;
                    let bias = init.map_or(0.0, |b| b[o]);
                    *y.get_unchecked_mut(o * cells + first_cell + r * output_step) = bias + value;
                }
            }
        }
    }
}

/// Whether the forward pass and the weight gradient of `problem` run here (both
/// take the same shapes), on this CPU.
pub(in crate::conv) fn takes(problem: &ConvProblem) -> bool {
    Avx2Fma::detect().is_some() && forward_shape(problem).is_some_and(|shape| shape.worthwhile())
}

/// The geometry as a direct correlation, or `None` where this path does not apply
/// (ranks above three; dilated taps; channel groups).
fn forward_shape(problem: &ConvProblem) -> Option<Shape> {
    let g = problem.geometry();
    let rank = g.rank();
    if rank > DIMS || !g.is_undilated() || problem.groups() > 1 {
        return None;
    }
    // Dimension d of the shape is the geometry's d − (DIMS − rank), or size 1.
    let lead = DIMS - rank;
    let per_dim = |of: &dyn Fn(usize) -> usize, absent: usize| -> [usize; DIMS] {
        std::array::from_fn(|d| if d < lead { absent } else { of(d - lead) })
    };
    let pad = g.padding();
    let (input, filter, stride, output) = (g.input(), g.filter(), g.stride(), g.output());
    Some(Shape {
        in_channels: problem.in_channels(),
        out_channels: problem.out_channels(),
        filter: per_dim(&|d| filter[d], 1),
        stride: per_dim(&|d| stride[d], 1),
        padded: per_dim(&|d| pad[d].before + input[d] + pad[d].after, 1),
        before: per_dim(&|d| pad[d].before, 0),
        source: per_dim(&|d| input[d], 1),
        output: per_dim(&|d| output[d], 1),
    })
}

/// The filter oriented for correlation, as `weight(o, c, tap)`: the source's
/// convolution reads tap f − 1 − α where cross-correlation reads α, in every dimension,
/// which reverses the row-major tap index.
fn oriented<'w>(problem: &ConvProblem, w: &'w [f32]) -> impl Fn(usize, usize, usize) -> f32 + 'w {
    let (taps, in_channels) = (problem.geometry().filter_len(), problem.in_channels());
    let flip = problem.geometry().mode() == KernelMode::Convolution;
    move |o, c, tap| w[(o * in_channels + c) * taps + if flip { taps - 1 - tap } else { tap }]
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
    let packed = shape.pack(oriented(problem, w));
    shape.run(isa, x, &packed, bias, pad, y);
    true
}

/// Input gradient on the direct path (stride 1): the output gradient, padded by
/// f − 1 − p before and so that the result has the input's size after, correlated with
/// the filter rotated by 180° and its channel roles swapped. `false` where it does not
/// apply (another stride, or padding as wide as the filter).
pub(super) fn backward_input(problem: &ConvProblem, w: &[f32], dy: &[f32], dx: &mut [f32]) -> bool {
    let (Some(isa), Some(fwd)) = (Avx2Fma::detect(), forward_shape(problem)) else { return false };
    if fwd.stride != [1; DIMS] {
        return false;
    }
    let mut before = [0; DIMS];
    let mut padded = [0; DIMS];
    for d in 0..DIMS {
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
        stride: [1; DIMS],
        padded,
        before,
        source: fwd.output,
        output: fwd.source,
    };
    if !shape.worthwhile() {
        return false;
    }
    let (taps, weight) = (shape.taps(), oriented(problem, w));
    let packed = shape.pack(|c, o, tap| weight(o, c, taps - 1 - tap));
    shape.run(isa, dy, &packed, None, 0.0, dx);
    true
}
