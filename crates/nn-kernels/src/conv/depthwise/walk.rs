//! Where a depthwise kernel reads and writes within one plane: the plane padded by
//! its constant, then rows of output cells, each the sum over filter rows of a few
//! shifted input rows. Worked out once per call, for any rank.

use crate::conv::ConvGeometry;
use crate::index::{row_major_strides, Odometer};
use crate::Element;

/// One plane's walk. A "row" is a line along the last dimension; the other
/// dimensions index rows.
pub(super) struct Walk {
    /// Cells of the padded plane.
    padded_len: usize,
    /// Padding before index 0, per dimension.
    before: Vec<usize>,
    /// Where each input row starts in the padded plane, and the stretches between
    /// rows (and before the first and after the last) that hold the padding.
    in_rows: Vec<usize>,
    gaps: Vec<(usize, usize)>,
    /// Per output row: where its taps start in the padded plane (before the filter
    /// row's and the tap's offsets).
    pub(super) out_rows: Vec<usize>,
    /// Per filter row (all filter dimensions but the last): its offset in the padded
    /// plane, and the index of its first weight.
    pub(super) tap_rows: Vec<(usize, usize)>,
    /// Per tap of the last dimension: its offset along the row (flip and dilation in).
    pub(super) offsets: Vec<usize>,
    /// Output and input row lengths, and the stride along rows.
    pub(super) out_row: usize,
    pub(super) in_row: usize,
    pub(super) stride: usize,
}

impl Walk {
    pub(super) fn new(g: &ConvGeometry) -> Self {
        let rank = g.rank();
        let last = rank - 1;
        let before: Vec<usize> = g.padding().iter().map(|p| p.before).collect();
        let padded: Vec<usize> = (0..rank).map(|d| before[d] + g.input()[d] + g.padding()[d].after).collect();
        let padded_strides = row_major_strides(&padded);

        let mut out_rows = Vec::new();
        let mut index = Odometer::new(&g.output()[..last]);
        while let Some(beta) = index.current() {
            out_rows.push((0..last).map(|d| g.stride()[d] * beta[d] * padded_strides[d]).sum());
            index.advance();
        }
        let mut tap_rows = Vec::new();
        let mut index = Odometer::new(&g.filter()[..last]);
        while let Some(alpha) = index.current() {
            let offset = (0..last).map(|d| g.tap_offset(d, alpha[d]) as usize * padded_strides[d]).sum();
            tap_rows.push((offset, tap_rows.len() * g.filter()[last]));
            index.advance();
        }
        let mut in_rows = Vec::new();
        let mut index = Odometer::new(&g.input()[..last]);
        while let Some(mu) = index.current() {
            in_rows.push((0..last).map(|d| (mu[d] + before[d]) * padded_strides[d]).sum::<usize>() + before[last]);
            index.advance();
        }
        let padded_len = padded.iter().product();
        let ends = in_rows.iter().map(|&start| start + g.input()[last]);
        let gaps = std::iter::once(0).chain(ends).zip(in_rows.iter().copied().chain([padded_len])).collect();
        Self {
            offsets: (0..g.filter()[last]).map(|k| g.tap_offset(last, k) as usize).collect(),
            out_row: g.output()[last],
            in_row: g.input()[last],
            stride: g.stride()[last],
            padded_len,
            before,
            in_rows,
            gaps,
            out_rows,
            tap_rows,
        }
    }

    /// Cells of the padded plane.
    pub(super) fn padded_len(&self) -> usize {
        self.padded_len
    }

    /// Copies the plane `x` into `xp` (`padded_len` long), `value` in the padding.
    pub(super) fn pad<T: Element>(&self, x: &[T], value: T, xp: &mut [T]) {
        for &(start, end) in &self.gaps {
            xp[start..end].fill(value);
        }
        for (row, &start) in x.chunks_exact(self.in_row).zip(&self.in_rows) {
            xp[start..start + self.in_row].copy_from_slice(row);
        }
    }

    /// The adjoint of [`pad`](Self::pad) at value 0: the interior of `xp` into `x`.
    pub(super) fn unpad<T: Element>(&self, xp: &[T], x: &mut [T]) {
        for (row, &start) in x.chunks_exact_mut(self.in_row).zip(&self.in_rows) {
            row.copy_from_slice(&xp[start..start + self.in_row]);
        }
    }
}

/// The input gradient's walk at stride 1 along rows: each input row gathers from the
/// output-gradient rows its cells fed, read from a copy padded with zeros along rows
/// so that every tap's read is in bounds.
pub(super) struct Gather {
    /// Zeros before each copied row (the largest tap offset), and the copied row's length.
    margin: usize,
    row_len: usize,
    plane_len: usize,
    /// Per input row, `entries[starts[i]..starts[i + 1]]`: (the output row's start in the
    /// padded copy, the first weight of the filter row that links them).
    starts: Vec<usize>,
    entries: Vec<(usize, usize)>,
    /// Added to an input cell's index along the row to find, less the tap's offset, its
    /// output cell in the padded copy.
    pub(super) shift: usize,
    furthest: (usize, usize),
}

impl Gather {
    pub(super) fn new(walk: &Walk, g: &ConvGeometry) -> Self {
        let last = g.rank() - 1;
        let margin = walk.offsets.iter().copied().max().unwrap_or(0);
        let row_len = margin + walk.out_row.max(walk.before[last] + walk.in_row);
        let out_strides = row_major_strides(&g.output()[..last]);
        let (mut starts, mut entries) = (vec![0], Vec::new());
        let mut input = Odometer::new(&g.input()[..last]);
        while let Some(mu) = input.current() {
            let mut filter = Odometer::new(&g.filter()[..last]);
            let mut tap_row = 0;
            while let Some(alpha) = filter.current() {
                // β_d = (μ_d + p_d − offset_d) / s_d, where that is a whole output index.
                let out_row = (0..last).try_fold(0, |row, d| {
                    let at = (mu[d] + walk.before[d]).checked_sub(g.tap_offset(d, alpha[d]) as usize)?;
                    let beta = at / g.stride()[d];
                    (at % g.stride()[d] == 0 && beta < g.output()[d]).then_some(row + beta * out_strides[d])
                });
                if let Some(out_row) = out_row {
                    entries.push((out_row * row_len, tap_row * walk.offsets.len()));
                }
                tap_row += 1;
                filter.advance();
            }
            starts.push(entries.len());
            input.advance();
        }
        let plane_len = walk.out_rows.len() * row_len;
        let furthest = entries.iter().fold((0, 0), |(row, weight), &(r, w)| (row.max(r), weight.max(w)));
        Self { margin, row_len, plane_len, starts, entries, shift: margin + walk.before[last], furthest }
    }

    /// Zeros before each copied row: the largest tap offset.
    #[inline(always)]
    pub(super) fn margin(&self) -> usize {
        self.margin
    }

    /// Cells of one padded output-gradient plane.
    pub(super) fn plane_len(&self) -> usize {
        self.plane_len
    }

    /// Copies output-gradient planes (rows of `out_row` cells) into `dyp`, each row
    /// framed by zeros.
    pub(super) fn pad<T: Element>(&self, out_row: usize, dy: &[T], dyp: &mut [T]) {
        for (row, dyp) in dy.chunks_exact(out_row).zip(dyp.chunks_exact_mut(self.row_len)) {
            dyp[..self.margin].fill(T::zero());
            dyp[self.margin..self.margin + out_row].copy_from_slice(row);
            dyp[self.margin + out_row..].fill(T::zero());
        }
    }

    /// The furthest output row's start in a copied plane, and the furthest filter
    /// row's first weight, over every link.
    pub(super) fn furthest_link(&self) -> (usize, usize) {
        self.furthest
    }

    /// The links of input row `row`.
    #[inline(always)]
    pub(super) fn links(&self, row: usize) -> &[(usize, usize)] {
        &self.entries[self.starts[row]..self.starts[row + 1]]
    }
}
