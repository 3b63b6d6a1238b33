//! One implicit product over a padded source image, and the forward pass's.

use super::segments::{segments, Segment};
use super::LANES;
use crate::conv::ConvProblem;
use crate::index::{row_major_strides, Odometer};

/// One implicit product over a padded source image:
/// `out[r, cell] = init[r] + Σ_k a[r, k] · source[segment(cell) + offsets[k]]`.
#[derive(Debug, Clone)]
pub(super) struct Product {
    /// Shape of one stored source channel plane: padded, the last dimension stored as
    /// `phases` interleaved rows (see [`Product::phases`]).
    pub(super) padded: Vec<usize>,
    /// The last dimension's stride s. Padded position t of a row is stored at
    /// `(t mod s)·⌈P/s⌉ + t div s` (P the padded row length), so the cells
    /// `β, β + 1, …` of an output row, which read `s·β + tap`, read consecutive floats.
    pub(super) phases: usize,
    /// Padding before the data in each dimension of the padded plane.
    pub(super) margin: Vec<usize>,
    /// Shape of one unpadded source channel plane.
    pub(super) unpadded: Vec<usize>,
    /// Source channels.
    pub(super) channels: usize,
    /// Per depth index k: where its value sits relative to a cell's base.
    pub(super) offsets: Vec<usize>,
    /// The output plane in segments, row by row.
    pub(super) segments: Vec<Segment>,
    /// Output rows (channels of the result).
    pub(super) rows: usize,
    /// Cells of one output plane.
    pub(super) plane: usize,
}

impl Product {
    pub(super) fn padded_len(&self) -> usize {
        self.channels * self.padded.iter().product::<usize>()
    }

    /// The padded image plus a tail of one vector: the kernel loads whole vectors
    /// even for a segment of fewer cells (a masked load costs the multiply-add ports
    /// a blend), and the tail keeps the last such load inside the buffer.
    pub(super) fn buffer_len(&self) -> usize {
        self.padded_len() + LANES
    }

    /// True when every load the kernel makes, a whole vector from each segment's
    /// first cell, lies inside the buffer. The geometry guarantees it; this check
    /// makes the guarantee local to this file.
    pub(super) fn reads_in_bounds(&self) -> bool {
        let last_cell = self.segments.iter().map(|s| s.source + LANES - 1).max();
        let last_offset = self.offsets.iter().copied().max();
        match (last_cell, last_offset) {
            (Some(cell), Some(offset)) => cell.checked_add(offset).is_some_and(|end| end < self.buffer_len()),
            _ => false,
        }
    }

    /// `base(β)` of every output cell in row-major order.
    pub(super) fn cell_bases(&self) -> impl Iterator<Item = usize> + '_ {
        self.segments.iter().flat_map(|segment| {
            segment.stores.into_iter().flat_map(move |store| store.lanes().map(move |l| segment.source + l))
        })
    }
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
    let g = problem.geometry();
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
    let offsets = tap_offsets(problem.in_channels(), g.filter(), plane, &strides, shift);
    Product {
        margin: g.padding().iter().map(|p| p.before).collect(),
        unpadded: g.input().to_vec(),
        channels: problem.in_channels(),
        offsets,
        segments: segments(g.output(), g.stride(), &strides),
        rows: problem.out_channels(),
        plane: g.output_len(),
        padded,
        phases,
    }
}
