//! The output plane cut into segments: one vector of [`LANES`] consecutive source
//! positions each, with the output cells its lanes hold.

use super::LANES;
use crate::index::Odometer;

/// One vector of [`LANES`] consecutive source positions: lane l reads from
/// `source + l`. Its lanes hold output cells of at most two output rows (lanes in
/// between, past a row's end, hold none), each stored with its own mask.
#[derive(Debug, Clone, Copy)]
pub(super) struct Segment {
    /// Offset in the padded source of lane 0's tap 0 (`base(β)` of its cell).
    pub(super) source: usize,
    /// The lanes of the first and the second row.
    pub(super) stores: [Store; 2],
}

/// Lanes of a segment that belong to one output row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Store {
    /// The output cell lane 0 would be in this row (lane l is cell + l).
    pub(super) cell: isize,
    /// The lanes that are cells of this row.
    pub(super) mask: u16,
}

impl Store {
    pub(super) const NONE: Store = Store { cell: 0, mask: 0 };

    /// The lanes it writes.
    pub(super) fn lanes(self) -> impl Iterator<Item = usize> {
        (0..LANES).filter(move |&l| self.mask >> l & 1 == 1)
    }

    /// The cells it writes.
    pub(super) fn cells(self) -> impl Iterator<Item = isize> {
        self.lanes().map(move |l| self.cell + l as isize)
    }
}

/// The segments of an output grid `output` whose cell β reads the stored source from
/// `Σ_{d<last} step_d·β_d·stride_d + β_last` (`source_strides` the stored source's
/// row-major strides; the last dimension's stride is taken by the phase layout):
/// whichever of [`row_segments`] and [`spanning_segments`] needs fewer vectors.
pub(super) fn segments(output: &[usize], step: &[usize], source_strides: &[usize]) -> Vec<Segment> {
    let rows = row_segments(output, step, source_strides);
    match spanning_segments(output, step, source_strides) {
        Some(spanning) if spanning.len() < rows.len() => spanning,
        _ => rows,
    }
}

/// Each output row cut into vectors: a row of 56 cells takes four (64 lanes).
fn row_segments(output: &[usize], step: &[usize], source_strides: &[usize]) -> Vec<Segment> {
    let last = output.len() - 1;
    let mut segments = Vec::new();
    let mut outer = Odometer::new(&output[..last]);
    let mut row = 0;
    while let Some(index) = outer.current() {
        let base: usize = (0..last).map(|d| step[d] * index[d] * source_strides[d]).sum();
        for first in (0..output[last]).step_by(LANES) {
            let len = LANES.min(output[last] - first);
            let store = Store { cell: (row * output[last] + first) as isize, mask: lane_mask(len) };
            segments.push(Segment { source: base + first, stores: [store, Store::NONE] });
        }
        row += 1;
        outer.advance();
    }
    segments
}

/// When consecutive output rows read source rows one pitch P apart (stride 1 in the
/// second-to-last dimension, P ≥ 16), the source positions of a slab of rows form one
/// span with P − v dead positions between rows, and vectors cut from that span waste
/// only those: 56-cell rows read 58 apart take 3.6 vectors a row instead of 4. None
/// otherwise.
fn spanning_segments(output: &[usize], step: &[usize], source_strides: &[usize]) -> Option<Vec<Segment>> {
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
            // Position q of the span is row q div P, column q mod P (a cell when < v).
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

/// The mask of the first `lanes` lanes (all sixteen when `lanes` ≥ 16).
pub(super) fn lane_mask(lanes: usize) -> u16 {
    if lanes >= LANES {
        u16::MAX
    } else {
        (1u16 << lanes) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::row_major_strides;
    use proptest::prelude::*;

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
            if let Some(spanning) = spanning_segments(&output, &step, &strides) {
                prop_assert_eq!(covered_cells(&spanning), expected);
            }
        }
    }

    #[test]
    fn rows_of_56_read_58_apart_span_rows() {
        let (output, step, strides) = ([56, 56], [1, 1], [58, 1]);
        let rows = row_segments(&output, &step, &strides).len();
        let chosen = segments(&output, &step, &strides);
        assert_eq!(rows, 56 * 4);
        assert_eq!(chosen.len(), (55 * 58 + 56usize).div_ceil(LANES));
        assert_eq!(covered_cells(&chosen), expected_cells(&output, &step, &strides));
    }
}
