//! Winograd minimal filtering (`ConvAlgorithm::Winograd`, chosen explicitly): 2-D
//! convolutions at stride 1 with 3×3 or 5×5 filters, F(4×4, 3×3) in tiles of 6×6
//! input cells or F(4×4, 5×5) in tiles of 8×8.
//!
//! Each tile of α×α cells of the (padded) source and each filter is transformed to α²
//! values (`transform`; eight channels of a tile in the lanes, `tiles`; the filters
//! in f64, `filters`); the channel sums then become α² GEMMs of `[tiles, C_in]` by
//! `[C_in, C_out]`, and each tile's α² products transform back to its 4×4 outputs: 36
//! multiply-adds per 16 outputs and input channel instead of 144 (3×3), or 64 instead
//! of 400 (5×5). A tile's values for all α² points and channels lie together, so the
//! transforms walk memory in order. The transforms' rounding makes results
//! differ from the exact sums by a few units of the last place times the transforms'
//! growth: a choice the caller makes.
//!
//! The input gradient is the same correlation of the output gradient with the filter
//! rotated by 180° and the channel roles swapped; the weight gradient is the dual
//! F(r, m), sharing the input transform, summed in the α² transformed values over a
//! fixed partition of the batch before one transform back.

/// Cells of a tile along each dimension for filters of `r` taps: F(4, 3) over 6, F(4,
/// 5) over 8.
pub(in crate::conv) const fn tile_size(r: usize) -> usize {
    if r == 3 {
        6
    } else {
        8
    }
}

/// `f::<…, α, r>(args)` for the filter size `r` (3 or 5) and its [`tile_size`], each
/// pair compiled on its own.
macro_rules! by_size {
    ($r:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $r {
            3 => $f::<{ $crate::conv::winograd::tile_size(3) }, 3>($($arg),*),
            _ => $f::<{ $crate::conv::winograd::tile_size(5) }, 5>($($arg),*),
        }
    };
    ($r:expr, $f:ident::<$($g:ty),+>($($arg:expr),* $(,)?)) => {
        match $r {
            3 => $f::<$($g,)+ { $crate::conv::winograd::tile_size(3) }, 3>($($arg),*),
            _ => $f::<$($g,)+ { $crate::conv::winograd::tile_size(5) }, 5>($($arg),*),
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
mod filters;
mod products;
mod tiles;
mod transform;

use super::im2col::copy_line;
use super::ConvProblem;
use crate::workspace::{fit, with_scratch};
use crate::Element;
use filters::{correlation_tap, transform_back, transform_filters};
use products::{product, Strided};
use rayon::prelude::*;
use std::ops::Range;
use tiles::PAD_SLACK;
use transform::LANES;

/// Channels of a tile's transformed values as stored: whole packs of [`LANES`].
fn packed(channels: usize) -> usize {
    channels.next_multiple_of(LANES)
}

/// Elements from one tile's transformed values to the next's: its α² points of
/// `channels`, and a cache line more, so that a product walking one point across
/// tiles does not put every row in the same L1 set (α² · 32 channels of f32 is 8 KB).
fn tile_stride(points: usize, channels: usize) -> usize {
    points * channels + 16
}

/// Bytes of transformed tiles (input and output side together) one block may fill:
/// enough tiles for wide products, few enough that they are still in cache when the
/// output transform reads them back.
const BLOCK_BUDGET_BYTES: usize = 2 << 20;

/// Tiles per block at most: beyond this the GEMMs gain nothing from width.
const MAX_BLOCK_TILES: usize = 256;

/// The filter size r when the problem asked for Winograd and its geometry suits it:
/// two dimensions, stride 1, undilated, one channel group, an r×r filter with r 3 or 5.
pub(super) fn filter_size(problem: &ConvProblem) -> Option<usize> {
    let g = problem.geometry();
    let r = g.filter()[0];
    let suits = g.rank() == 2
        && g.stride() == [1, 1]
        && g.is_undilated()
        && problem.groups() == 1
        && g.filter() == [r, r]
        && (r == 3 || r == 5);
    (problem.winograd_requested() && suits).then_some(r)
}

/// One correlation over a batch, `dst[n, o, i, j] = bias[o] + Σ_c Σ_a Σ_b
/// src′[n, c, i + a, j + b] · filter[o, c, a, b]`, where `src′[q, u]` is the source at
/// `(q + offset₀, u + offset₁)` and `fill` outside it.
#[derive(Debug, Clone, Copy)]
struct Correlation {
    src_channels: usize,
    dst_channels: usize,
    source: [usize; 2],
    output: [usize; 2],
    offset: [isize; 2],
    r: usize,
}

impl Correlation {
    /// The forward pass of `problem`: x to y.
    fn forward(problem: &ConvProblem, r: usize) -> Self {
        let g = problem.geometry();
        let offset = |d: usize| -(g.padding()[d].before as isize);
        Self {
            src_channels: problem.in_channels(),
            dst_channels: problem.out_channels(),
            source: [g.input()[0], g.input()[1]],
            output: [g.output()[0], g.output()[1]],
            offset: [offset(0), offset(1)],
            r,
        }
    }

    /// The input gradient of `problem`: ∂y to ∂x, each ∂x cell reading the ∂y cells
    /// its input reached, `i − p + r − 1 − a′` for the rotated tap a′.
    fn input_gradient(problem: &ConvProblem, r: usize) -> Self {
        let g = problem.geometry();
        let offset = |d: usize| g.padding()[d].before as isize - (r as isize - 1);
        Self {
            src_channels: problem.out_channels(),
            dst_channels: problem.in_channels(),
            source: [g.output()[0], g.output()[1]],
            output: [g.input()[0], g.input()[1]],
            offset: [offset(0), offset(1)],
            r,
        }
    }

    /// Cells of a tile along each dimension.
    fn alpha(&self) -> usize {
        tile_size(self.r)
    }
    /// Transformed values per tile.
    fn points(&self) -> usize {
        self.alpha() * self.alpha()
    }
    fn m(&self) -> usize {
        self.alpha() + 1 - self.r
    }
    fn tiles(&self) -> [usize; 2] {
        [self.output[0].div_ceil(self.m()), self.output[1].div_ceil(self.m())]
    }
    fn tiles_per_image(&self) -> usize {
        self.tiles()[0] * self.tiles()[1]
    }
    /// The source plane as the tiles read it: every tile's α×α cells inside.
    fn padded(&self) -> [usize; 2] {
        let [th, tw] = self.tiles();
        [th * self.m() + self.r - 1, tw * self.m() + self.r - 1]
    }
    fn padded_image_len(&self) -> usize {
        self.src_channels * self.padded()[0] * self.padded()[1]
    }
    fn src_image_len(&self) -> usize {
        self.src_channels * self.source[0] * self.source[1]
    }
    fn dst_image_len(&self) -> usize {
        self.dst_channels * self.output[0] * self.output[1]
    }

    /// Tiles per block, and images per task: whole images, enough for a block when
    /// one image has fewer tiles.
    fn blocking<T>(&self) -> (usize, usize) {
        let per_tile = self.points() * (packed(self.src_channels) + packed(self.dst_channels)) * size_of::<T>();
        let block = (BLOCK_BUDGET_BYTES / per_tile).clamp(1, MAX_BLOCK_TILES);
        (block, (block / self.tiles_per_image()).max(1))
    }

    /// Images per task of a batch's forward pass, at most `images`: a number of
    /// tasks the worker threads share evenly where the batch allows (128 images in
    /// five tasks of 27 went to two threads as 54 and 74). Each image's outputs are
    /// the same whatever the partition.
    fn balanced(batch: usize, images: usize) -> usize {
        let threads = rayon::current_num_threads().max(1);
        if batch == 0 {
            return images;
        }
        let mut tasks = batch.div_ceil(images).next_multiple_of(threads);
        while tasks < batch && !batch.div_ceil(batch.div_ceil(tasks)).is_multiple_of(threads) {
            tasks += threads;
        }
        batch.div_ceil(tasks.min(batch))
    }

    /// The padded copies of `[src_channels, source…]` images, each cell written once
    /// and the rows copied without `memcpy` calls: small planes have rows of a few
    /// cells, where a call's overhead is most of the copy.
    fn pad<T: Element>(&self, images: &[T], fill: T, dst: &mut [T]) {
        let [ph, pw] = self.padded();
        let [h, w] = self.source;
        // Padded index i of dimension d holds source index i + offset_d where that is
        // in range: indices [first, first + len) from source index `start`.
        let overlap = |d: usize, padded: usize, source: usize| {
            let first = (-self.offset[d]).max(0);
            let end = (padded as isize).min(source as isize - self.offset[d]);
            let len = (end - first).max(0) as usize;
            (first as usize, len, (first + self.offset[d]).max(0) as usize)
        };
        let (top, rows, start_row) = overlap(0, ph, h);
        let (left, cols, start_col) = overlap(1, pw, w);
        for (plane, src) in dst.chunks_exact_mut(ph * pw).zip(images.chunks_exact(h * w)) {
            let (above, rest) = plane.split_at_mut(top * pw);
            let (inside, below) = rest.split_at_mut(rows * pw);
            above.fill(fill);
            below.fill(fill);
            for (row, s) in inside.chunks_exact_mut(pw).zip(src.chunks_exact(w).skip(start_row)) {
                let (before, rest) = row.split_at_mut(left);
                let (copied, after) = rest.split_at_mut(cols);
                before.fill(fill);
                copy_line(copied, &s[start_col..start_col + cols]);
                after.fill(fill);
            }
        }
    }

    /// Runs the correlation over a batch with the transformed filter `u`
    /// (`[α², src_channels, packed(dst_channels)]`).
    fn run<T: Element>(&self, src: &[T], u: &[T], bias: Option<&[T]>, fill: T, dst: &mut [T]) {
        let (src_len, dst_len) = (self.src_image_len(), self.dst_image_len());
        let (block, images) = self.blocking::<T>();
        let images = Self::balanced(src.len() / src_len, images);
        let (ci, co) = (self.src_channels, self.dst_channels);
        let (ci_packed, co_packed) = (packed(ci), packed(co));
        let (src_stride, dst_stride) = (tile_stride(self.points(), ci_packed), tile_stride(self.points(), co_packed));
        dst.par_chunks_mut(images * dst_len).zip(src.par_chunks(images * src_len)).for_each(|(y, x)| {
            with_scratch::<T, 3, _>(|[padded, v, products]| {
                let count = y.len() / dst_len;
                let padded = fit(padded, count * self.padded_image_len() + PAD_SLACK);
                for (p, x) in padded.chunks_exact_mut(self.padded_image_len()).zip(x.chunks_exact(src_len)) {
                    self.pad(x, fill, p);
                }
                let tiles = count * self.tiles_per_image();
                for start in (0..tiles).step_by(block) {
                    let range = start..(start + block).min(tiles);
                    let width = range.len();
                    let v = fit(v, width * src_stride);
                    let products = fit(products, width * dst_stride);
                    tiles::inputs(self, padded, range.clone(), v);
                    // Per point: products[t, ξ, o] = Σ_c v[t, ξ, c] · u[ξ, c, o].
                    for (point, u) in u.chunks_exact(ci * co_packed).enumerate() {
                        let v = Strided { data: &v[point * ci_packed..], row: src_stride, step: 1 };
                        let p = &mut products[point * co_packed..];
                        product((width, co_packed, ci), v, u, co_packed, p, dst_stride, false);
                    }
                    tiles::outputs(self, products, range, bias, y);
                }
            })
        });
    }

    /// Where each tile of `tiles` (counted over a task's images, row by row) starts:
    /// its image, and its first output row and column. Steps from tile to tile rather
    /// than dividing for each: small planes make many tiles.
    fn tile_origins(&self, tiles: Range<usize>) -> impl Iterator<Item = (usize, usize, usize)> {
        let ([th, tw], m) = (self.tiles(), self.m());
        let (mut image, within) = (tiles.start / (th * tw), tiles.start % (th * tw));
        let (mut i, mut j) = (within / tw, within % tw);
        tiles.map(move |_| {
            let origin = (image, i * m, j * m);
            j += 1;
            if j == tw {
                (i, j) = (i + 1, 0);
                if i == th {
                    (image, i) = (image + 1, 0);
                }
            }
            origin
        })
    }
}

/// Forward pass, as [`super::conv_forward`].
#[allow(clippy::too_many_arguments)]
pub(super) fn forward<T: Element>(
    problem: &ConvProblem,
    r: usize,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    pad_value: T,
    y: &mut [T],
) {
    let (ci, co, mode) = (problem.in_channels(), problem.out_channels(), problem.geometry().mode());
    let tap = |o: usize, c: usize, a, b| w[(o * ci + c) * r * r + correlation_tap(mode, r, a, b)];
    let u = by_size!(r, transform_filters::<T>(co, ci, packed(co), tap));
    Correlation::forward(problem, r).run(x, &u, bias, pad_value, y);
}

/// Input gradient, as [`super::conv_backward_input`].
pub(super) fn backward_input<T: Element>(problem: &ConvProblem, r: usize, w: &[T], dy: &[T], dx: &mut [T]) {
    let (ci, co, mode) = (problem.in_channels(), problem.out_channels(), problem.geometry().mode());
    let tap = |c: usize, o: usize, a, b| w[(o * ci + c) * r * r + correlation_tap(mode, r, r - 1 - a, r - 1 - b)];
    let u = by_size!(r, transform_filters::<T>(ci, co, packed(ci), tap));
    Correlation::input_gradient(problem, r).run(dy, &u, None, T::zero(), dx);
}

/// Weight gradient, as [`super::conv_backward_weight`]: chunks of `per_chunk` images
/// each sum their tiles' transformed products, and each value's chunk sums are added
/// in order as it transforms back, once.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_weight<T: Element>(
    problem: &ConvProblem,
    r: usize,
    batch: usize,
    per_chunk: usize,
    x: &[T],
    dy: &[T],
    pad_value: T,
    dw: &mut [T],
) {
    let job = Correlation::forward(problem, r);
    let (ci, co) = (job.src_channels, job.dst_channels);
    let (ci_packed, co_packed) = (packed(ci), packed(co));
    let (block, images) = job.blocking::<T>();
    let (x_len, dy_len) = (job.src_image_len(), job.dst_image_len());
    let chunks = batch.div_ceil(per_chunk);
    let points = job.points();
    let (x_stride, dy_stride) = (tile_stride(points, ci_packed), tile_stride(points, co_packed));
    let len = points * co * ci_packed;
    // The chunks' sums in one scratch buffer kept between calls: fresh ones would be
    // fresh pages, faulted in on every call.
    with_scratch::<T, 1, _>(|[partials]| {
        let partials = fit(partials, chunks * len);
        partials.par_chunks_mut(len).enumerate().for_each(|(chunk, sums)| {
            let chunk = chunk * per_chunk..((chunk + 1) * per_chunk).min(batch);
            // The chunk's first block writes the sums, the rest add to them.
            let mut accumulate = false;
            with_scratch::<T, 3, _>(|[padded, v, gradients]| {
                // Groups of images as in the forward pass, so that small planes still
                // make wide products; the sums run over the chunk's tiles in order.
                for first in chunk.clone().step_by(images) {
                    let group = first..(first + images).min(chunk.end);
                    let padded = fit(padded, group.len() * job.padded_image_len() + PAD_SLACK);
                    for (p, n) in padded.chunks_exact_mut(job.padded_image_len()).zip(group.clone()) {
                        job.pad(&x[n * x_len..][..x_len], pad_value, p);
                    }
                    let dy = &dy[group.start * dy_len..group.end * dy_len];
                    let tiles = group.len() * job.tiles_per_image();
                    for start in (0..tiles).step_by(block) {
                        let range = start..(start + block).min(tiles);
                        let width = range.len();
                        let v = fit(v, width * x_stride);
                        let gradients = fit(gradients, width * dy_stride);
                        tiles::inputs(&job, padded, range.clone(), v);
                        tiles::gradients(&job, dy, range, gradients);
                        // Per point: sums[ξ, o, c] += Σ_t gradients[t, ξ, o] · v[t, ξ, c].
                        for (point, sums) in sums.chunks_exact_mut(co * ci_packed).enumerate() {
                            let g = Strided { data: &gradients[point * co_packed..], row: 1, step: dy_stride };
                            let v = &v[point * ci_packed..];
                            product((co, ci_packed, width), g, v, x_stride, sums, ci_packed, accumulate);
                        }
                        accumulate = true;
                    }
                }
            });
        });
        by_size!(r, transform_back::<T>(problem, partials, chunks, ci_packed, dw));
    });
}

#[cfg(test)]
mod tests {
    use super::Correlation;

    /// Stepping gives each tile the origin its index divides out to, from any start.
    #[test]
    fn tile_origins_step_as_the_division_gives() {
        for (output, r) in [([7, 7], 3), ([14, 9], 5), ([1, 5], 3), ([9, 1], 5)] {
            let job = Correlation { src_channels: 1, dst_channels: 1, source: output, output, offset: [0, 0], r };
            let ([th, tw], m) = (job.tiles(), job.m());
            let divided = |t: usize| (t / (th * tw), t % (th * tw) / tw * m, t % tw * m);
            for start in 0..2 * th * tw {
                for len in [0, 1, tw, th * tw + 1, 3 * th * tw] {
                    let got: Vec<_> = job.tile_origins(start..start + len).collect();
                    let want: Vec<_> = (start..start + len).map(divided).collect();
                    assert_eq!(got, want, "{output:?}, r = {r}, tiles {start}..+{len}");
                }
            }
        }
    }

    /// Tasks of at most the asked images, as many per thread where the batch allows.
    #[test]
    fn tasks_are_shared_evenly() {
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for (batch, images) in [(128, 27), (64, 5), (128, 5), (7, 3), (1, 4), (5, 9), (3, 1)] {
                let per_task = pool.install(|| Correlation::balanced(batch, images));
                let tasks = batch.div_ceil(per_task);
                assert!((1..=images).contains(&per_task), "{batch} images by {images}: {per_task} a task");
                assert!(
                    tasks.is_multiple_of(threads) || tasks == batch,
                    "{batch} by {images} on {threads}: {tasks} tasks"
                );
            }
        }
    }
}
