//! Convolution as an implicit GEMM: f32 on CPUs with AVX-512F.
//!
//! The column matrix of im2col is never built. Copy the image once into a buffer that
//! already holds its padding (`x′`); then for filter tap k = (c, α) and output cell β,
//! `col[k, β] = x′[base(β) + offset(k)]`, where `offset(k)` depends on the tap alone
//! and `base(β)` on the cell alone. Each row of x′ is stored split by the last stride s
//! into s phases (positions ≡ 0 mod s, then ≡ 1, …), so `base` steps by one along an
//! output row at any stride, and sixteen cells of one output row are sixteen
//! consecutive floats of x′: the micro-kernel loads them as one vector per tap,
//! straight from the image, and multiplies them by the broadcast weights of up to
//! [`MAX_ROWS`] output channels. At stride 1 between rows, the end of one row and the
//! start of the next may share a vector ([`running_segments`]), so that a 56-cell row
//! does not cost four vectors. Nothing is written but the output, and the weights are
//! packed once per call instead of once per image. A batch too large for the caches
//! writes its output through a small staged band and non-temporal stores ([`Writes`]).
//!
//! The input gradient is the same product read the other way round. At stride 1,
//! `∂x[c, γ] = Σ_(o, α) w[o, c, α] · ∂y′[o, γ + p + f − 1 − tap(α)]`, with ∂y′ the
//! output gradient padded by `f − 1` zeros on each side. At stride s, the input cells
//! split into residue classes `γ ≡ e (mod s)`; each class is reached by its own
//! subset of the taps and is a stride-1 product of its own ([`InputClass`]), and the
//! classes' results are interleaved into ∂x in one pass. Either way it replaces the
//! GEMM into a column matrix and the scatter-add of col2im: each ∂x cell is written
//! once.
//!
//! Each output element is its initial value plus the sum over the taps in order, one
//! fused multiply-add per term, whatever tile it falls in: results do not depend on the
//! thread count.

mod transpose;
mod weight;

pub(super) use weight::backward_weight;
#[cfg(test)]
pub(super) use weight::{run_direction, Direction, MIN_CHANNELS};

use super::ConvProblem;
use crate::index::{row_major_strides, Odometer};
use crate::workspace::{fit, with_scratch};
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Output channels per micro-tile: each is broadcast from the packed weights and kept
/// in two accumulators, so 12 rows use 24 of the 32 vector registers.
const MAX_ROWS: usize = 12;

/// Output channels per micro-tile of three segments (8 × 3 accumulators), taken
/// where [`prefers_three_segments`] says.
const MAX_ROWS_3: usize = 8;

/// Fewer output rows than this leave too few independent accumulators to hide the
/// multiply-add latency (2·rows chains against 4 cycles × 2 ports); such products
/// (an input gradient with one to three input channels) take the column path.
pub(super) const MIN_ROWS: usize = 4;

/// Cells per segment: one 16-lane vector. A micro-tile holds two segments.
const LANES: usize = 16;

/// Whether this CPU runs the AVX-512 kernels (the standard library caches the answer).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One vector of [`LANES`] consecutive source positions: lane l reads from
/// `source + l`. Its lanes hold output cells of at most two output rows (lanes in
/// between, past a row's end, hold none), each stored with its own mask.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Offset in the padded source of lane 0's tap 0 (`base(β)` of its cell).
    source: usize,
    /// The lanes of the first and the second row.
    stores: [Store; 2],
}

/// Lanes of a segment that belong to one output row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Store {
    /// The output cell lane 0 would be in this row (lane l is cell + l).
    cell: isize,
    /// The lanes that are cells of this row.
    mask: u16,
}

impl Store {
    const NONE: Store = Store { cell: 0, mask: 0 };

    /// The lanes it writes.
    fn lanes(self) -> impl Iterator<Item = usize> {
        (0..LANES).filter(move |&l| self.mask >> l & 1 == 1)
    }

    /// The cells it writes.
    fn cells(self) -> impl Iterator<Item = isize> {
        self.lanes().map(move |l| self.cell + l as isize)
    }
}

/// One implicit product over a padded source image:
/// `out[r, cell] = init[r] + Σ_k a[r, k] · source[segment(cell) + offsets[k]]`.
#[derive(Debug)]
pub(super) struct Product {
    /// Shape of one stored source channel plane: padded, the last dimension stored as
    /// `phases` interleaved rows (see [`Product::phases`]).
    padded: Vec<usize>,
    /// The last dimension's stride s. Padded position t of a row is stored at
    /// `(t mod s)·⌈P/s⌉ + t div s` (P the padded row length), so the cells
    /// `β, β + 1, …` of an output row, which read `s·β + tap`, read consecutive floats.
    phases: usize,
    /// Padding before the data in each dimension of the padded plane.
    margin: Vec<usize>,
    /// Shape of one unpadded source channel plane.
    unpadded: Vec<usize>,
    /// Source channels.
    channels: usize,
    /// Per depth index k: where its value sits relative to a cell's base.
    pub(super) offsets: Vec<usize>,
    /// The output plane in segments, row by row.
    segments: Vec<Segment>,
    /// Output rows (channels of the result).
    rows: usize,
    /// Cells of one output plane.
    plane: usize,
}

impl Product {
    fn padded_len(&self) -> usize {
        self.channels * self.padded.iter().product::<usize>()
    }

    /// The padded image plus a tail of one vector: the kernel loads whole vectors
    /// even for a segment of fewer cells (a masked load costs the multiply-add ports
    /// a blend), and the tail keeps the last such load inside the buffer.
    fn buffer_len(&self) -> usize {
        self.padded_len() + LANES
    }

    /// True when every load the kernel makes, a whole vector from each segment's
    /// first cell, lies inside the buffer. The geometry guarantees it; this check
    /// makes the guarantee local to this file.
    fn reads_in_bounds(&self) -> bool {
        let last_cell = self.segments.iter().map(|s| s.source + LANES - 1).max();
        let last_offset = self.offsets.iter().copied().max();
        match (last_cell, last_offset) {
            (Some(cell), Some(offset)) => cell.checked_add(offset).is_some_and(|end| end < self.buffer_len()),
            _ => false,
        }
    }

    /// Copies one source image (`[channels, unpadded…]`) into `dst` with its margins
    /// filled with `value`, each row split into its phases.
    ///
    /// The copy walks the padded rows in order, each filled where it is written (in
    /// L1), with the rows that hold image data listed once per call. Filling the
    /// whole buffer first was a second sweep through L2; working out each row's place
    /// and whether it held data from an n-dimensional index, once per row, cost more
    /// than the copy itself on short rows. The listed rows against that index, one
    /// cached image, medians of 25 batches, three runs each: C4's geometry 49–52 →
    /// 37–39 µs, C5's 71–73 → 53–60, C6's (rows of 32) 107–109 → 72–78 (a memcpy of
    /// the same image: 18–21, 18–21, 32–37 µs).
    fn pad_image(&self, image: &[f32], value: f32, dst: &mut [f32]) {
        let last = self.unpadded.len() - 1;
        let (plane, width) = (self.padded.iter().product::<usize>(), self.padded[last]);
        let (run, margin) = (self.unpadded[last], self.margin[last]);
        let phase_len = width / self.phases;
        // Whether each row of a padded plane, in order, holds a row of the image.
        let mut data_rows = Vec::with_capacity(plane / width);
        let mut outer = Odometer::new(&self.padded[..last]);
        while let Some(index) = outer.current() {
            data_rows.push((0..last).all(|d| (self.margin[d]..self.margin[d] + self.unpadded[d]).contains(&index[d])));
            outer.advance();
        }
        let mut rows = image.chunks_exact(run);
        dst[self.padded_len()..].fill(value);
        for planes in dst.chunks_exact_mut(plane).take(self.channels) {
            for (dst, &holds_data) in planes.chunks_exact_mut(width).zip(&data_rows) {
                if !holds_data {
                    dst.fill(value);
                    continue;
                }
                let row = rows.next().expect("image holds channels·∏μ cells");
                if self.phases == 1 {
                    dst[..margin].fill(value);
                    dst[margin..margin + run].copy_from_slice(row);
                    dst[margin + run..].fill(value);
                } else if self.phases == 2 {
                    // Stride 2, the common case: one pass over the row writes both
                    // phases. Cell i sits at padded position t = m + i, stored in
                    // phase t mod 2 at t div 2: even cells from m div 2 in phase
                    // m mod 2, odd ones from ⌈m/2⌉ in the other.
                    dst.fill(value);
                    let (lo, hi) = dst.split_at_mut(phase_len);
                    let (even, odd) = if margin.is_multiple_of(2) { (lo, hi) } else { (hi, lo) };
                    let (even, odd) = (&mut even[margin / 2..], &mut odd[margin.div_ceil(2)..]);
                    for (j, pair) in row.chunks_exact(2).enumerate() {
                        even[j] = pair[0];
                        odd[j] = pair[1];
                    }
                    if run % 2 == 1 {
                        even[run / 2] = row[run - 1];
                    }
                } else {
                    // Phase q holds the padded positions t ≡ q (mod s): every s-th cell
                    // of the row from the first such one, stored side by side.
                    dst.fill(value);
                    for q in 0..self.phases {
                        let first = (q + self.phases - margin % self.phases) % self.phases;
                        let at = q * phase_len + (margin + first) / self.phases;
                        let cells = &row[first.min(run)..];
                        let out = &mut dst[at..][..cells.len().div_ceil(self.phases)];
                        for (j, slot) in out.iter_mut().enumerate() {
                            *slot = cells[j * self.phases];
                        }
                    }
                }
            }
        }
    }

    /// `base(β)` of every output cell in row-major order.
    fn cell_bases(&self) -> impl Iterator<Item = usize> + '_ {
        self.segments.iter().flat_map(|segment| {
            segment.stores.into_iter().flat_map(move |store| store.lanes().map(move |l| segment.source + l))
        })
    }
}

/// The segments of an output grid `output` whose cell β reads the stored source from
/// `Σ_{d<last} step_d·β_d·stride_d + β_last` (`source_strides` the stored source's
/// row-major strides; the last dimension's stride is taken by the phase layout):
/// whichever of [`row_segments`] and [`running_segments`] needs fewer vectors.
fn segments(output: &[usize], step: &[usize], source_strides: &[usize]) -> Vec<Segment> {
    let rows = row_segments(output, step, source_strides);
    match running_segments(output, step, source_strides) {
        Some(running) if running.len() < rows.len() => running,
        _ => rows,
    }
}

/// Each output row cut into vectors: a row of 56 cells takes four (64 lanes).
fn row_segments(output: &[usize], step: &[usize], source_strides: &[usize]) -> Vec<Segment> {
    let last = output.len() - 1;
    let mut segments = Vec::new();
    let mut outer = Odometer::new(&output[..last]);
    let mut run = 0;
    while let Some(index) = outer.current() {
        let base: usize = (0..last).map(|d| step[d] * index[d] * source_strides[d]).sum();
        for first in (0..output[last]).step_by(LANES) {
            let len = LANES.min(output[last] - first);
            let store = Store { cell: (run * output[last] + first) as isize, mask: lane_mask(len) };
            segments.push(Segment { source: base + first, stores: [store, Store::NONE] });
        }
        run += 1;
        outer.advance();
    }
    segments
}

/// When consecutive output rows read source rows one pitch P apart (stride 1 in the
/// second-to-last dimension, P ≥ 16), the source positions of a slab of rows form one
/// run with P − v dead positions between rows, and vectors cut from that run waste
/// only those: 56-cell rows read 58 apart take 3.6 vectors a row instead of 4. None
/// otherwise.
fn running_segments(output: &[usize], step: &[usize], source_strides: &[usize]) -> Option<Vec<Segment>> {
    let rank = output.len();
    let pitch_dim = rank.checked_sub(2)?;
    let width = output[rank - 1];
    let pitch = step[pitch_dim] * source_strides[pitch_dim];
    if step[pitch_dim] != 1 || pitch < LANES.max(width) {
        return None;
    }
    let (rows, span) = (output[pitch_dim], (output[pitch_dim] - 1) * pitch + width);
    let mut segments = Vec::new();
    let mut slabs = Odometer::new(&output[..pitch_dim]);
    let mut slab = 0;
    while let Some(index) = slabs.current() {
        let base: usize = (0..pitch_dim).map(|d| step[d] * index[d] * source_strides[d]).sum();
        let first_cell = slab * rows * width;
        for start in (0..span).step_by(LANES) {
            // Position q of the run is row q div P, column q mod P (a cell when < v).
            let store_of_row = |row: usize| {
                let mask = (0..LANES)
                    .filter(|&l| {
                        let q = start + l;
                        q < span && q / pitch == row && q % pitch < width
                    })
                    .fold(0u16, |mask, l| mask | 1 << l);
                let cell = (first_cell + row * width) as isize + start as isize - (row * pitch) as isize;
                if mask == 0 {
                    Store::NONE
                } else {
                    Store { cell, mask }
                }
            };
            let row = start / pitch;
            let stores = [store_of_row(row), store_of_row(row + 1)];
            if stores.iter().any(|s| s.mask != 0) {
                segments.push(Segment { source: base + start, stores });
            }
        }
        slab += 1;
        slabs.advance();
    }
    Some(segments)
}

/// Offsets of the depth indices `k = (c, α)` (c outer, α row-major): channel `c`'s
/// plane plus `Σ_d shift(d, α_d)·stride_d`.
fn tap_offsets(
    channels: usize,
    filter: &[usize],
    plane: usize,
    source_strides: &[usize],
    shift: impl Fn(usize, usize) -> usize,
) -> Vec<usize> {
    let mut offsets = Vec::with_capacity(channels * filter.iter().product::<usize>());
    for c in 0..channels {
        let mut taps = Odometer::new(filter);
        while let Some(alpha) = taps.current() {
            offsets.push(
                c * plane + alpha.iter().enumerate().map(|(d, &a)| shift(d, a) * source_strides[d]).sum::<usize>(),
            );
            taps.advance();
        }
    }
    offsets
}

/// The forward product: source = x′ (`μ + p` per dimension, rows split into phases
/// by the last stride), rows = C_out, depth `(c, α)`, one cell per output β.
pub(super) fn forward_product(problem: &ConvProblem) -> Product {
    let g = &problem.geometry;
    let last = g.rank() - 1;
    let phases = g.stride()[last];
    let mut padded: Vec<usize> = g.input().iter().zip(g.padding()).map(|(&mu, p)| mu + p.before + p.after).collect();
    let phase_len = padded[last].div_ceil(phases);
    padded[last] = phases * phase_len;
    let strides = row_major_strides(&padded);
    let plane = padded.iter().product();
    // γ′ = s·β + tap(α) in padded coordinates (tap = f − 1 − α or α, never negative);
    // along rows, tap t sits in phase t mod s, t div s cells in.
    let shift = |d: usize, a: usize| {
        let tap = g.tap_offset(d, a) as usize;
        if d == last {
            (tap % phases) * phase_len + tap / phases
        } else {
            tap
        }
    };
    let offsets = tap_offsets(problem.in_channels, g.filter(), plane, &strides, shift);
    Product {
        margin: g.padding().iter().map(|p| p.before).collect(),
        unpadded: g.input().to_vec(),
        channels: problem.in_channels,
        offsets,
        segments: segments(g.output(), g.stride(), &strides),
        rows: problem.out_channels,
        plane: g.output_len(),
        padded,
        phases,
    }
}

/// The input cells `γ ≡ first (mod s)` in every dimension and the product that
/// computes their gradient.
///
/// Input cell γ = first + s·u receives `w[o, c, α] · ∂y[o, β]` from the taps with
/// `s·β − p + tap(α) = γ`, that is `β = u + q(α)` with `q = (first + p − tap)/s`, for
/// exactly the taps where that division leaves no remainder. So each class is a
/// stride-1 product over u with its own taps: source = ∂y′ (∂y with zero margins wide
/// enough for every class), rows = C_in, depth `(o, α)` over the class's taps. At
/// stride 1 there is one class, the whole plane.
struct InputClass {
    /// The class's first input cell in each dimension (`< s`).
    first: Vec<usize>,
    /// Its cells per dimension.
    cells: Vec<usize>,
    /// The filter taps (flat α, row-major) that reach it, in order.
    taps: Vec<usize>,
    product: Product,
}

/// The classes of [`InputClass`] with at least one cell, in row-major order of `first`.
fn input_gradient_classes(problem: &ConvProblem) -> Vec<InputClass> {
    let g = &problem.geometry;
    let rank = g.rank();
    let (s, f, mu, v) = (g.stride(), g.filter(), g.input(), g.output());
    // q(d, first, α) when the tap reaches the class, else None.
    let q = |d: usize, first: usize, a: usize| {
        let t = (first + g.padding()[d].before) as isize - g.tap_offset(d, a);
        (t.rem_euclid(s[d] as isize) == 0).then(|| t.div_euclid(s[d] as isize))
    };
    let count = |d: usize, first: usize| mu[d].saturating_sub(first).div_ceil(s[d]);
    // β + margin ≥ 0 since q ≥ −(f − 1)/s; the margin after covers the largest
    // u + q of any class and tap (those β past the output read zeros).
    let margin: Vec<usize> = (0..rank).map(|d| (f[d] - 1).div_ceil(s[d])).collect();
    let after: Vec<usize> = (0..rank)
        .map(|d| {
            let reach = (0..s[d]).flat_map(|e| (0..f[d]).filter_map(move |a| Some(count(d, e) as isize + q(d, e, a)?)));
            reach.map(|end| end - v[d] as isize).max().unwrap_or(0).max(0) as usize
        })
        .collect();
    let padded: Vec<usize> = (0..rank).map(|d| v[d] + margin[d] + after[d]).collect();
    let strides = row_major_strides(&padded);
    let plane: usize = padded.iter().product();
    let mut classes = Vec::new();
    let mut residues = Odometer::new(s);
    while let Some(first) = residues.current() {
        let cells: Vec<usize> = (0..rank).map(|d| count(d, first[d])).collect();
        if cells.iter().all(|&n| n > 0) {
            let (mut taps, mut reach) = (Vec::new(), Vec::new());
            let mut alphas = Odometer::new(f);
            let mut flat = 0;
            while let Some(alpha) = alphas.current() {
                if let Some(shifts) = (0..rank).map(|d| q(d, first[d], alpha[d])).collect::<Option<Vec<_>>>() {
                    taps.push(flat);
                    reach
                        .push((0..rank).map(|d| (shifts[d] + margin[d] as isize) as usize * strides[d]).sum::<usize>());
                }
                flat += 1;
                alphas.advance();
            }
            let offsets = (0..problem.out_channels).flat_map(|o| reach.iter().map(move |r| o * plane + r)).collect();
            let product = Product {
                padded: padded.clone(),
                phases: 1,
                margin: margin.clone(),
                unpadded: v.to_vec(),
                channels: problem.out_channels,
                offsets,
                segments: segments(&cells, &vec![1; rank], &strides),
                rows: problem.in_channels,
                plane: cells.iter().product(),
            };
            classes.push(InputClass { first: first.to_vec(), cells, taps, product });
        }
        residues.advance();
    }
    classes
}

/// Where each row of an input plane takes its cells from: for row r (row-major over
/// all dimensions but the last) and each first cell e < s of the last dimension, entry
/// `r·s + e` holds the class whose cells those are and where that row starts in
/// channel 0 of the class's result (None for first cells past the input, which have
/// no class). Worked out once per call rather than from each row's n-dimensional index
/// for every channel: C5's input gradient ran 5–8% faster on one thread and 2–8% on
/// two (alternating pairs in both orders, three and four).
fn row_sources(classes: &[InputClass], input: &[usize], stride: &[usize]) -> Vec<Option<(usize, usize)>> {
    let last = input.len() - 1;
    let mut by_first = vec![None; stride.iter().product()];
    for (i, class) in classes.iter().enumerate() {
        by_first[class.first.iter().zip(stride).fold(0, |at, (&e, &s)| at * s + e)] = Some(i);
    }
    let mut sources = Vec::new();
    let mut outer = Odometer::new(&input[..last]);
    while let Some(gamma) = outer.current() {
        let outer_residue = gamma.iter().zip(stride).fold(0, |at, (&g, &s)| at * s + g % s) * stride[last];
        for e in 0..stride[last] {
            sources.push(by_first[outer_residue + e].map(|i: usize| {
                let cells = &classes[i].cells;
                let row = (0..last).fold(0, |at, d| at * cells[d] + gamma[d] / stride[d]);
                (i, row * cells[last])
            }));
        }
        outer.advance();
    }
    sources
}

/// Writes channel `c` of the classes' results (`results[i]`: `[rows, class i's
/// cells]`) into `dx_plane` (one input plane of ∂x, rows of `width` at last stride
/// `s`), one pass over each input row: cell j of a row comes from the class row that
/// [`row_sources`] gives for j mod s.
fn interleave_channel(
    classes: &[InputClass],
    sources: &[Option<(usize, usize)>],
    results: &[&[f32]],
    c: usize,
    (width, s): (usize, usize),
    dx_plane: &mut [f32],
) {
    for (dx_row, row_sources) in dx_plane.chunks_exact_mut(width).zip(sources.chunks_exact(s)) {
        let class_row = |e: usize| -> &[f32] {
            let Some((i, at)) = row_sources[e] else { return &[] };
            let len = classes[i].cells.last().copied().unwrap_or(0);
            &results[i][c * classes[i].product.plane + at..][..len]
        };
        if s == 2 {
            let (even, odd) = (class_row(0), class_row(1));
            for (pair, (&a, &b)) in dx_row.chunks_exact_mut(2).zip(even.iter().zip(odd)) {
                pair[0] = a;
                pair[1] = b;
            }
            if width % 2 == 1 {
                dx_row[width - 1] = even[width / 2];
            }
        } else {
            for e in 0..s {
                for (j, &value) in class_row(e).iter().enumerate() {
                    dx_row[e + s * j] = value;
                }
            }
        }
    }
}

/// Whether `rows` by `segments` runs as tiles of at most 8 rows by three segments
/// rather than 12 by two (24 accumulators either way). A three-segment tile cost
/// 2–12% more than a two-segment one (forward passes of C1, C3, C4, C6 and 32-channel
/// variants, one thread), so it is taken when it needs at least 10% fewer tiles: when
/// the rows fill 8-row slivers better than 12-row ones (16, 32 or 64 rows) and the
/// plane's last group of three wastes little. Against two segments everywhere, on
/// two threads in alternating pairs of both orders: C4's forward and input gradient
/// (64 rows, 203 segments a plane: 544 tiles against 612) about +5%, C6's forward (32
/// rows) +3%; C3 (14 segments a plane: 40 tiles against 42) ran 7% slower with three
/// and keeps two.
fn prefers_three_segments(rows: usize, segments: usize) -> bool {
    let tiles = |max_rows: usize, width: usize| rows.div_ceil(max_rows) * segments.div_ceil(width);
    10 * tiles(MAX_ROWS_3, 3) <= 9 * tiles(MAX_ROWS, 2)
}

/// Output rows per micro-tile: balanced heights of at most [`MAX_ROWS`] (64 rows are
/// 11, 11, 11, 11, 10, 10, not five 12s and an inefficient 4).
fn slivers(rows: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    slivers_of(rows, MAX_ROWS)
}

/// `rows` cut into the fewest ranges of at most `max` rows, of balanced heights.
fn slivers_of(rows: usize, max: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let count = rows.div_ceil(max);
    let (height, taller) = (rows / count.max(1), rows % count.max(1));
    (0..count).scan(0, move |start, i| {
        let range = *start..*start + height + usize::from(i < taller);
        *start = range.end;
        Some(range)
    })
}

/// `a(r, k)` packed sliver by sliver (a tiling's [`Tiling::slivers`]): within a
/// sliver of rows `r0..r1`, depth index k holds the sliver's rows side by side at
/// `r0·depth + k·(r1 − r0)`.
fn pack_rows(slivers: &[std::ops::Range<usize>], depth: usize, a: impl Fn(usize, usize) -> f32, packed: &mut [f32]) {
    for sliver in slivers.iter().cloned() {
        let out = &mut packed[sliver.start * depth..sliver.end * depth];
        for (k, group) in out.chunks_exact_mut(sliver.len()).enumerate() {
            for (i, slot) in group.iter_mut().enumerate() {
                *slot = a(sliver.start + i, k);
            }
        }
    }
}

/// How a product's outputs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Writes {
    /// Straight from the micro-kernels' masked stores.
    Direct,
    /// A band of about `band_bytes` at a time into a stage that stays in cache, then
    /// copied out with non-temporal stores. Written directly, the output of a batch
    /// larger than the caches is read from memory line by line before it is written
    /// (the stores' read for ownership) and pushes the padded image out of L2 on its
    /// way: C4's forward ran 12% faster on one thread (mean of three runs) when, as an
    /// experiment, every image's output went to one buffer that stayed in cache.
    Streamed { band_bytes: usize },
}

impl Writes {
    /// Streamed, in bands of [`BAND_BYTES`], for a batch of at least
    /// [`STREAM_MIN_BYTES`] of sources and outputs; direct otherwise.
    pub(super) fn for_batch(sources: &[f32], outputs: &[f32]) -> Writes {
        if std::mem::size_of_val(sources) + std::mem::size_of_val(outputs) >= STREAM_MIN_BYTES {
            Writes::Streamed { band_bytes: BAND_BYTES }
        } else {
            Writes::Direct
        }
    }
}

/// Source and output bytes of a batch from which its outputs are streamed. Forward
/// passes against direct writes, alternating pairs: C4 (51 MB) +1–9% on two threads
/// (median +5%, 8 of 8 pairs faster), +4–7% on one; C5 (38 MB) +3–8% on two (median
/// +4%, 6 of 6), −1 to +7% on one. C6 (25 MB) and C1 (17 MB), which this machine's
/// caches seem to keep between calls, ran 1–5% slower and 0–3% either way streamed.
const STREAM_MIN_BYTES: usize = 32 << 20;

/// Bytes of one staged band. Bands of 128 KiB ran C4 and C5 about as fast as 512
/// KiB; with 32 KiB C5 ran 2–10% slower (more of each row's lines are the partial
/// ones at its ends, written by plain stores).
const BAND_BYTES: usize = 128 << 10;

/// Runs a tiling's product over a batch: `sources` holds the unpadded source images,
/// `outputs` the output images (`rows × plane` each), `packed` the weights from
/// [`pack_rows`] with the tiling's slivers.
fn run(tiling: &Tiling, packed: &[f32], init: Option<&[f32]>, pad_value: f32, sources: &[f32], outputs: &mut [f32]) {
    let product = tiling.product;
    let source_len = product.channels * product.unpadded.iter().product::<usize>();
    let out_len = product.rows * product.plane;
    outputs.par_chunks_mut(out_len).zip(sources.par_chunks(source_len)).for_each(|(out, image)| {
        with_scratch::<f32, 2, _>(|[padded, stage]| {
            let padded = fit(padded, product.buffer_len());
            product.pad_image(image, pad_value, padded);
            run_image(tiling, packed, init, padded, out, stage);
        })
    });
}

/// How the tiles of a product run, the same for every image: worked out once per
/// call, since checking the bands walks every output cell.
struct Tiling<'a> {
    product: &'a Product,
    /// Output rows per micro-tile.
    slivers: Vec<std::ops::Range<usize>>,
    /// Segments per micro-tile (2 or 3).
    width: usize,
    /// Consecutive groups of `width` segments, with the cells they store.
    bands: Vec<Band>,
    writes: Writes,
}

impl<'a> Tiling<'a> {
    /// Panics unless every segment stores only cells of the output plane.
    fn new(product: &'a Product, writes: Writes) -> Self {
        let plane = product.plane as isize;
        let stores = product.segments.iter().flat_map(|s| s.stores);
        assert!(stores.flat_map(Store::cells).all(|cell| (0..plane).contains(&cell)));
        let (slivers, width) = if prefers_three_segments(product.rows, product.segments.len()) {
            (slivers_of(product.rows, MAX_ROWS_3).collect(), 3)
        } else {
            (slivers(product.rows).collect(), 2)
        };
        let band_cells = match writes {
            Writes::Direct => usize::MAX,
            Writes::Streamed { band_bytes } => (band_bytes / size_of::<f32>() / product.rows).max(1),
        };
        let groups: Vec<&[Segment]> = product.segments.chunks(width).collect();
        Tiling { product, bands: bands(&groups, band_cells), slivers, width, writes }
    }
}

/// One image of the tiling's product: every sliver of rows against every group of
/// segments, band by band. `stage` is scratch for [`Writes::Streamed`].
fn run_image(
    tiling: &Tiling,
    packed: &[f32],
    init: Option<&[f32]>,
    source: &[f32],
    out: &mut [f32],
    stage: &mut Vec<f32>,
) {
    let (product, slivers, width) = (tiling.product, &tiling.slivers, tiling.width);
    let depth = product.offsets.len();
    // The bounds every unsafe access below relies on (and those of `Tiling::new`).
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
                // SAFETY: AVX-512F is present (callers check `available`). The asserts
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

/// A run of consecutive segment groups and the output cells their stores cover.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Band {
    /// Group g is segments `g·width..(g + 1)·width`.
    groups: std::ops::Range<usize>,
    /// Output cells (of every row) the groups store, each exactly once.
    cells: std::ops::Range<usize>,
}

/// The groups cut into bands of at least one group and about `cells` output cells
/// (one band for `usize::MAX`). Panics unless the bands' cell ranges increase and
/// each is stored whole, every cell once, by its groups' masked lanes: so a staged
/// band is overwritten entirely before it is copied out.
fn bands(groups: &[&[Segment]], cells: usize) -> Vec<Band> {
    let mut bands: Vec<Band> = Vec::new();
    let mut stored = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let lanes = group.iter().flat_map(|s| s.stores).flat_map(Store::cells).map(|cell| cell as usize);
        let (lo, hi, count) = lanes.fold((usize::MAX, 0, 0), |(lo, hi, n), c| (lo.min(c), hi.max(c + 1), n + 1));
        if count == 0 {
            continue;
        }
        match (bands.last_mut(), stored.last_mut()) {
            (Some(band), Some(n)) if band.cells.len() < cells => {
                band.groups.end = g + 1;
                band.cells = band.cells.start.min(lo)..band.cells.end.max(hi);
                *n += count;
            }
            _ => {
                bands.push(Band { groups: g..g + 1, cells: lo..hi });
                stored.push(count);
            }
        }
    }
    assert!(bands.iter().zip(&stored).all(|(band, &n)| band.cells.len() == n), "bands are stored whole");
    assert!(bands.windows(2).all(|pair| pair[0].cells.end <= pair[1].cells.start), "bands follow each other");
    bands
}

/// `dst ← src` with non-temporal stores for the whole cache lines of `dst`, plain
/// stores for the partial lines at either end (which a neighbouring band or image
/// may share).
///
/// # Safety
/// AVX-512F must be present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stream_copy(src: &[f32], dst: &mut [f32]) {
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

/// The mask of the first `lanes` lanes (all sixteen when `lanes` ≥ 16).
fn lane_mask(lanes: usize) -> u16 {
    if lanes >= LANES {
        u16::MAX
    } else {
        (1u16 << lanes) - 1
    }
}

/// The operands of one micro-tile: up to [`MAX_ROWS`] rows by two segments, or up
/// to [`MAX_ROWS_3`] by three (the kernel reads the first S of each array).
struct Tile {
    depth: usize,
    /// Packed weights of the sliver: `depth × rows`.
    a: *const f32,
    /// `depth` tap offsets.
    offsets: *const usize,
    /// Each segment's base in the padded source.
    sources: [*const f32; 3],
    /// Per segment, the lanes of each of its two output rows.
    masks: [[u16; 2]; 3],
    /// The rows' initial values (the bias), or null for zero.
    init: *const f32,
    /// Per segment and output row: where lane 0 would be stored in the sliver's
    /// first channel (only the masked lanes are).
    outputs: [[*mut f32; 2]; 3],
    /// Cells between output rows.
    ld: usize,
}

/// Runs the kernel compiled for `rows` rows and `width` segments, so that a short
/// sliver wastes no work.
///
/// # Safety
/// As for [`kernel`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn micro_kernel(rows: usize, width: usize, tile: &Tile) {
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

/// The forward pass by implicit GEMM, when it applies (f32, AVX-512F, not pointwise,
/// at least [`MIN_ROWS`] output channels), its outputs written as `writes` says
/// ([`Writes::for_batch`] is the measured choice); returns false, having done
/// nothing, otherwise. Lengths are the caller's to check.
pub(super) fn forward(
    problem: &ConvProblem,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    pad_value: f32,
    y: &mut [f32],
    writes: Writes,
) -> bool {
    let g = &problem.geometry;
    if !available() || g.is_pointwise() || problem.out_channels < MIN_ROWS {
        return false;
    }
    let product = forward_product(problem);
    if !product.reads_in_bounds() {
        return false;
    }
    let depth = product.offsets.len();
    with_scratch::<f32, 1, _>(|[packed]| {
        let packed = fit(packed, product.rows * depth);
        let tiling = Tiling::new(&product, writes);
        pack_rows(&tiling.slivers, depth, |o, k| w[o * depth + k], packed);
        run(&tiling, packed, bias, pad_value, x, y);
    });
    true
}

/// The input gradient by implicit GEMM, when it applies (f32, AVX-512F, not
/// pointwise, at least [`MIN_ROWS`] input channels), ∂x written as `writes` says
/// ([`Writes::for_batch`] is the measured choice; at a stride, ∂x is streamed a plane
/// at a time whatever the band size); returns false, having done nothing, otherwise.
/// `dx` is overwritten. Lengths are the caller's to check.
pub(super) fn backward_input(problem: &ConvProblem, w: &[f32], dy: &[f32], dx: &mut [f32], writes: Writes) -> bool {
    let g = &problem.geometry;
    if !available() || g.is_pointwise() || problem.in_channels < MIN_ROWS {
        return false;
    }
    let classes = input_gradient_classes(problem);
    if classes.iter().any(|class| !class.taps.is_empty() && !class.product.reads_in_bounds()) {
        return false;
    }
    let (taps, c_in, c_out) = (g.filter_len(), problem.in_channels, problem.out_channels);
    let depths: Vec<usize> = classes.iter().map(|class| class.product.offsets.len()).collect();
    // At a stride the classes' results stay in cache, and only ∂x may be streamed.
    let stride_1 = g.stride().iter().all(|&s| s == 1);
    let class_writes = if stride_1 { writes } else { Writes::Direct };
    let tilings: Vec<Tiling> = classes.iter().map(|class| Tiling::new(&class.product, class_writes)).collect();
    with_scratch::<f32, 1, _>(|[packed]| {
        let packed = fit(packed, c_in * depths.iter().sum::<usize>());
        // Per class, row c, depth (o, j) is w[o, c, α_j] for the class's taps α_j.
        let mut rest = &mut packed[..];
        let mut weights = Vec::with_capacity(classes.len());
        for ((class, &depth), tiling) in classes.iter().zip(&depths).zip(&tilings) {
            let (mine, others) = rest.split_at_mut(c_in * depth);
            let m = class.taps.len();
            pack_rows(&tiling.slivers, depth, |c, k| w[((k / m) * c_in + c) * taps + class.taps[k % m]], mine);
            weights.push(&*mine);
            rest = others;
        }
        if stride_1 {
            // One class, the whole plane with every tap: written in place.
            return run(&tilings[0], weights[0], None, 0.0, dy, dx);
        }
        let source = &classes[0].product;
        let sources = row_sources(&classes, g.input(), g.stride());
        let row_shape = (g.input()[g.rank() - 1], g.stride()[g.rank() - 1]);
        let streamed = writes != Writes::Direct;
        let source_len = c_out * g.output_len();
        dx.par_chunks_mut(c_in * g.input_len()).zip(dy.par_chunks(source_len)).for_each(|(dx_image, dy_image)| {
            with_scratch::<f32, 3, _>(|[padded, all_results, stage]| {
                let padded = fit(padded, source.buffer_len());
                source.pad_image(dy_image, 0.0, padded);
                // The classes partition the input cells: their results fill one image.
                let mut rest = fit(all_results, dx_image.len());
                let mut results = Vec::with_capacity(classes.len());
                for ((class, packed), tiling) in classes.iter().zip(&weights).zip(&tilings) {
                    let (result, others) = rest.split_at_mut(c_in * class.product.plane);
                    if class.taps.is_empty() {
                        // No tap reaches these cells (a stride longer than the filter).
                        result.fill(0.0);
                    } else {
                        run_image(tiling, packed, None, padded, result, stage);
                    }
                    results.push(&*result);
                    rest = others;
                }
                let input_plane = g.input_len();
                for (c, dx_plane) in dx_image.chunks_exact_mut(input_plane).enumerate() {
                    if streamed {
                        // Interleaved into a stage in cache (12.5 KB for C5), then
                        // streamed out without the read for ownership of each line.
                        let staged = fit(stage, input_plane);
                        interleave_channel(&classes, &sources, &results, c, row_shape, staged);
                        // SAFETY: AVX-512F is present (checked on entry).
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            stream_copy(staged, dx_plane)
                        };
                    } else {
                        interleave_channel(&classes, &sources, &results, c, row_shape, dx_plane);
                    }
                }
                if streamed {
                    // SAFETY: SSE is part of x86-64; as in `run_image`, the fence orders
                    // the non-temporal stores before the worker reports its task done.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        _mm_sfence()
                    };
                }
            })
        });
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every output cell, once, with its `base(β)`, in row-major order: what the
    /// segments must cover whichever way they cut the plane.
    fn expected_cells(output: &[usize], step: &[usize], strides: &[usize]) -> Vec<(isize, usize)> {
        let last = output.len() - 1;
        let mut cells = Vec::new();
        let mut index = Odometer::new(output);
        while let Some(beta) = index.current() {
            let base = (0..last).map(|d| step[d] * beta[d] * strides[d]).sum::<usize>() + beta[last];
            cells.push((cells.len() as isize, base));
            index.advance();
        }
        cells
    }

    fn covered_cells(segments: &[Segment]) -> Vec<(isize, usize)> {
        let pairs = |s: Segment, store: Store| store.lanes().map(move |l| (store.cell + l as isize, s.source + l));
        segments.iter().flat_map(|&s| s.stores.into_iter().flat_map(move |store| pairs(s, store))).collect()
    }

    proptest! {
        #[test]
        fn segments_cover_every_cell_once(
            dims in prop::collection::vec((1usize..40, 1usize..3, 0usize..5), 1..=3),
        ) {
            let output: Vec<usize> = dims.iter().map(|d| d.0).collect();
            let step: Vec<usize> = dims.iter().map(|d| d.1).collect();
            // A stored source at least as large as the cells read.
            let stored: Vec<usize> = dims.iter().map(|d| d.1 * d.0 + d.2).collect();
            let strides = row_major_strides(&stored);
            let expected = expected_cells(&output, &step, &strides);
            for cut in [row_segments(&output, &step, &strides), segments(&output, &step, &strides)] {
                prop_assert_eq!(covered_cells(&cut), expected.clone());
            }
            if let Some(running) = running_segments(&output, &step, &strides) {
                prop_assert_eq!(covered_cells(&running), expected);
            }
        }
    }

    #[test]
    fn stream_copy_copies_at_every_alignment() {
        if !available() {
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

    #[test]
    fn bands_cover_the_plane_in_order() {
        let (output, step, strides) = ([56, 56], [1, 1], [58, 1]);
        let segments = segments(&output, &step, &strides);
        let groups: Vec<&[Segment]> = segments.chunks(2).collect();
        for cells in [1, 100, 512, usize::MAX] {
            let bands = bands(&groups, cells);
            assert_eq!(bands.first().map(|b| b.cells.start), Some(0));
            assert_eq!(bands.last().map(|b| (b.groups.end, b.cells.end)), Some((groups.len(), 56 * 56)));
            for pair in bands.windows(2) {
                assert_eq!((pair[0].groups.end, pair[0].cells.end), (pair[1].groups.start, pair[1].cells.start));
            }
            // Bands close once they reach `cells`, so none but the last is short.
            assert!(bands.iter().rev().skip(1).all(|b| b.cells.len() >= cells.min(56 * 56)));
        }
    }

    #[test]
    fn rows_of_56_read_58_apart_run_across_rows() {
        let (output, step, strides) = ([56, 56], [1, 1], [58, 1]);
        let rows = row_segments(&output, &step, &strides).len();
        let chosen = segments(&output, &step, &strides);
        assert_eq!(rows, 56 * 4);
        assert_eq!(chosen.len(), (55 * 58 + 56usize).div_ceil(LANES));
        assert_eq!(covered_cells(&chosen), expected_cells(&output, &step, &strides));
    }
}
