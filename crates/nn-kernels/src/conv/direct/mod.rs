//! Direct convolution in one to three dimensions for AVX2 and AVX-512 CPUs (f32):
//! output channels in the vector lanes, a few output cells of a row in registers,
//! filter taps read straight from a padded copy of the image. It suits the small
//! planes and few channels of late CNN layers, where a column matrix is mostly traffic
//! (144 rows written and read for 16 products per cell in T3's first stage) and the
//! implicit kernels' row-wise vectors stay mostly empty, and volumes, whose column
//! matrix per image outgrows every cache.
//!
//! Lower ranks run as three-dimensional problems whose leading dimensions have size 1.
//! The input gradient at stride 1 is the same product on the output gradient, with
//! the filter rotated by 180° and the channel roles swapped.

#[cfg(test)]
mod tests;
mod tile;
mod weight;

pub(super) use weight::backward_weight;

use super::ConvProblem;
use crate::geometry::KernelMode;
use crate::simd::{Avx2Fma, Avx512};
use crate::workspace::{fit, with_scratch};
use rayon::prelude::*;
use tile::Simd;

/// Spatial dimensions of the path; a problem of lower rank leads with dimensions of
/// size 1 (filter 1, stride 1, no padding).
const DIMS: usize = 3;
/// Multiply-adds per output cell and channel below which the column path is faster.
const MIN_DEPTH: usize = 64;
/// Output channels below which the lanes stay too empty to pay.
const MIN_CHANNELS: usize = 8;

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
        self.out_channels >= MIN_CHANNELS && self.in_channels * self.taps() >= MIN_DEPTH
    }

    /// Vectors of `lanes` output channels.
    fn blocks(&self, lanes: usize) -> usize {
        self.out_channels.div_ceil(lanes)
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
    /// kernel's order: blocks of a vector's worth of output channels, then input
    /// channel, tap, lane; missing channels zero.
    fn pack(&self, lanes: usize, weight: impl Fn(usize, usize, usize) -> f32) -> Vec<f32> {
        let taps = self.taps();
        let mut packed = vec![0.0; self.blocks(lanes) * self.in_channels * taps * lanes];
        for o in 0..self.out_channels {
            let (block, lane) = (o / lanes, o % lanes);
            for c in 0..self.in_channels {
                let first = (block * self.in_channels + c) * taps;
                for tap in 0..taps {
                    packed[(first + tap) * lanes + lane] = weight(o, c, tap);
                }
            }
        }
        packed
    }

    /// Runs the correlation over a batch: `src` holds `[in_channels, source…]` images,
    /// `dst` `[out_channels, output…]` ones.
    fn run<S: Simd>(&self, isa: S, src: &[f32], packed: &[f32], init: Option<&[f32]>, pad_value: f32, dst: &mut [f32]) {
        let padded_len = self.padded_len();
        dst.par_chunks_mut(self.out_len()).zip(src.par_chunks(self.source_len())).for_each(|(y, x)| {
            with_scratch::<f32, 1, _>(|[xp]| {
                let xp = fit(xp, padded_len);
                self.pad(x, pad_value, xp);
                self.image(isa, xp, packed, init, pad_value == 0.0, y);
            })
        });
    }

    /// One image, two channel blocks at a time: every row of outputs in tiles of
    /// nearly equal width, at most `S::CELLS` cells and at least `S::MIN_CELLS`; where
    /// no such split exists, in tiles of `S::CELLS` and the columns left over in tiles
    /// running down the column within a depth. A short tile keeps too few sums in
    /// flight to hide the FMA latency. (Tiles that run on across row ends measured
    /// twice as slow: their cells' addresses no longer stay in registers.) Where the
    /// padding is zero, a tile skips the filter taps that would read only padding:
    /// rows and depths along a row, columns and depths down a column.
    fn image<S: Simd>(
        &self,
        isa: S,
        xp: &[f32],
        packed: &[f32],
        init: Option<&[f32]>,
        zero_padding: bool,
        y: &mut [f32],
    ) {
        let [od, oh, ow] = self.output;
        // Every tap a tile reads lies in the padded copy: the output geometry was
        // derived from these paddings.
        assert!(self.taps_fit());
        assert!(xp.len() >= self.padded_len());
        let blocks = self.blocks(S::LANES);
        assert!(packed.len() >= blocks * self.in_channels * self.taps() * S::LANES && y.len() >= self.out_len());
        let tiles = ow.div_ceil(S::CELLS);
        let (per_row, width, wider) =
            if ow / tiles >= S::MIN_CELLS { (tiles, ow / tiles, ow % tiles) } else { (ow / S::CELLS, S::CELLS, 0) };
        let first_down = per_row * width + wider;
        let taps = |d: usize, at: usize| if zero_padding { self.inner_taps(d, at) } else { (0, self.filter[d]) };
        let mut block = 0;
        while block < blocks {
            let pair = blocks - block >= 2;
            let along_rows = (0..od * oh).flat_map(|row| {
                let (depth, row) = (row / oh, row % oh);
                (0..per_row).map(move |k| {
                    let col = k * width + k.min(wider);
                    let taps = [taps(0, depth), taps(1, row), (0, self.filter[2])];
                    (Tile { block, depth, row, col, down: false, taps }, width + usize::from(k < wider))
                })
            });
            let down_columns = (0..od).flat_map(|depth| {
                (first_down..ow).flat_map(move |col| {
                    (0..oh).step_by(S::CELLS).map(move |row| {
                        let taps = [taps(0, depth), (0, self.filter[1]), taps(2, col)];
                        (Tile { block, depth, row, col, down: true, taps }, (oh - row).min(S::CELLS))
                    })
                })
            });
            for (at, cells) in along_rows.chain(down_columns) {
                // SAFETY: the asserts above bound every read of `xp` and `packed` and
                // every write of `y` the tile makes (its cells lie in the output volume;
                // its taps within the filter).
                unsafe { isa.run_tile(self, pair, cells, at, xp, packed, init, y) };
            }
            block += if pair { 2 } else { 1 };
        }
    }

    /// The filter taps `[first, end)` of dimension `d` that read the image itself, not
    /// its padding, for output index `at`.
    fn inner_taps(&self, d: usize, at: usize) -> (usize, usize) {
        let start = at * self.stride[d];
        let first = self.before[d].saturating_sub(start).min(self.filter[d]);
        let end = (self.before[d] + self.source[d]).saturating_sub(start).clamp(first, self.filter[d]);
        (first, end)
    }
}

/// Where a micro-tile sits: its first channel block, first output cell, whether its
/// cells run along the row or down the column, and the filter taps `[first, end)` it
/// sums in each dimension.
#[derive(Clone, Copy)]
struct Tile {
    block: usize,
    depth: usize,
    row: usize,
    col: usize,
    down: bool,
    taps: [(usize, usize); DIMS],
}

/// Whether the forward pass and the weight gradient of `problem` run here (both
/// take the same shapes), on this CPU.
pub(in crate::conv) fn takes(problem: &ConvProblem) -> bool {
    Avx2Fma::detect().is_some() && forward_shape(problem).is_some_and(|shape| shape.worthwhile())
}

/// An instruction set the tiles are compiled for, with the token that proves it.
#[derive(Clone, Copy)]
enum TileSet {
    Avx512(Avx512),
    Avx2(Avx2Fma),
}

impl TileSet {
    /// The widest this CPU runs.
    fn widest() -> Option<Self> {
        Avx512::detect().map(TileSet::Avx512).or_else(|| Avx2Fma::detect().map(TileSet::Avx2))
    }

    /// Every one this CPU runs, so that the tests cover each.
    #[cfg(test)]
    fn all() -> Vec<Self> {
        [Avx2Fma::detect().map(TileSet::Avx2), Avx512::detect().map(TileSet::Avx512)].into_iter().flatten().collect()
    }
}

/// `$body` with `$isa` bound to the token of `$tiles`: the generic code, compiled once
/// per instruction set.
macro_rules! on_tiles {
    ($tiles:expr, $isa:ident => $body:expr) => {
        match $tiles {
            TileSet::Avx512($isa) => $body,
            TileSet::Avx2($isa) => $body,
        }
    };
}
#[cfg(test)]
use on_tiles;

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

/// Forward pass on the direct path, in the widest tiles this CPU runs; `false`
/// (nothing written) where it does not apply.
pub(super) fn forward(
    problem: &ConvProblem,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    pad: f32,
    y: &mut [f32],
) -> bool {
    TileSet::widest().is_some_and(|tiles| on_tiles!(tiles, isa => forward_on(isa, problem, x, w, bias, pad, y)))
}

/// [`forward`] in the tiles of `isa`.
fn forward_on<S: Simd>(
    isa: S,
    problem: &ConvProblem,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    pad: f32,
    y: &mut [f32],
) -> bool {
    let Some(shape) = forward_shape(problem).filter(Shape::worthwhile) else { return false };
    let packed = shape.pack(S::LANES, oriented(problem, w));
    shape.run(isa, x, &packed, bias, pad, y);
    true
}

/// Input gradient on the direct path (stride 1), in the widest tiles this CPU runs:
/// the output gradient, padded by f − 1 − p before and so that the result has the
/// input's size after, correlated with the filter rotated by 180° and its channel
/// roles swapped. `false` where it does not apply (another stride, or padding as wide
/// as the filter).
pub(super) fn backward_input(problem: &ConvProblem, w: &[f32], dy: &[f32], dx: &mut [f32]) -> bool {
    TileSet::widest().is_some_and(|tiles| on_tiles!(tiles, isa => backward_input_on(isa, problem, w, dy, dx)))
}

/// [`backward_input`] in the tiles of `isa`.
fn backward_input_on<S: Simd>(isa: S, problem: &ConvProblem, w: &[f32], dy: &[f32], dx: &mut [f32]) -> bool {
    let Some(fwd) = forward_shape(problem) else { return false };
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
    let packed = shape.pack(S::LANES, |c, o, tap| weight(o, c, taps - 1 - tap));
    shape.run(isa, dy, &packed, None, 0.0, dx);
    true
}
