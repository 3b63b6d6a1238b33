//! N-dimensional im2col and its transpose col2im.
//!
//! The column matrix of one image has one row per (input channel, filter index α) and
//! one column per output index β: `col[(c, α), β] = x′[c, γ(β, α)]`, with x′ the input
//! padded by a constant. A convolution is then the matrix product `W · col`.
//!
//! Each row is a sequence of lines, one per outer output index (all dimensions but the
//! last), each line one output row long. Where a line starts in the input depends only
//! on the outer filter and output indices, not on the channel, so those offsets are
//! computed once per geometry ([`LineTable`]) and the per-line work is a table lookup
//! and a copy. The same code serves every number of dimensions.

use crate::geometry::{valid_range, ConvGeometry};
use crate::index::{checked_product, row_major_strides, Odometer};
use crate::Element;
use crate::GeometryError;
use std::ops::Range;

/// Marks a line that lies wholly in the padding.
const PADDING: isize = isize::MIN;

/// Precomputed line starts of one geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LineTable {
    /// ∏v over the outer dimensions: lines per row.
    lines_per_row: usize,
    /// `starts[a·lines_per_row + b]`: for outer filter index a and outer output index b,
    /// the input offset of the line's outer coordinates, or [`PADDING`].
    starts: Vec<isize>,
    /// Per filter index of the last dimension: the valid output range `lo..hi` and
    /// the input offset of β_last = 0, `tap_offset − p_before` (may be negative).
    inner: Vec<(usize, usize, isize)>,
}

impl LineTable {
    /// Lines per row of the column matrix: ∏v over all dimensions but the last.
    pub(crate) fn lines_per_row(&self) -> usize {
        self.lines_per_row
    }

    /// Refuses a table (outer filter cells × outer output cells) larger than one
    /// allocation can hold, before [`LineTable::new`] would try.
    pub(crate) fn check_size(geom: &ConvGeometry) -> Result<(), GeometryError> {
        let last = geom.rank() - 1;
        let entries = checked_product(&geom.filter()[..last])
            .zip(checked_product(&geom.output()[..last]))
            .and_then(|(f, v)| f.checked_mul(v))
            .filter(|&n| n <= isize::MAX as usize / size_of::<isize>());
        entries.map(|_| ()).ok_or(GeometryError::Overflow { what: "im2col line table" })
    }

    pub(crate) fn new(geom: &ConvGeometry) -> Self {
        let last = geom.rank() - 1;
        let strides = row_major_strides(geom.input());
        let (outer_filter, outer_out) = (&geom.filter()[..last], &geom.output()[..last]);
        let lines_per_row = outer_out.iter().product();
        let mut starts = Vec::with_capacity(outer_filter.iter().product::<usize>() * lines_per_row);
        let mut taps = Odometer::new(outer_filter);
        while let Some(alpha) = taps.current() {
            let mut outs = Odometer::new(outer_out);
            while let Some(beta) = outs.current() {
                let mut start = 0isize;
                for d in 0..last {
                    let gamma = (geom.stride()[d] * beta[d]) as isize - geom.padding()[d].before as isize
                        + geom.tap_offset(d, alpha[d]);
                    if gamma < 0 || gamma >= geom.input()[d] as isize {
                        start = PADDING;
                        break;
                    }
                    start += gamma * strides[d] as isize;
                }
                starts.push(start);
                outs.advance();
            }
            taps.advance();
        }
        let (s, pad, mu, v) =
            (geom.stride()[last], geom.padding()[last].before, geom.input()[last], geom.output()[last]);
        let inner = (0..geom.filter()[last])
            .map(|a| {
                let offset = geom.tap_offset(last, a);
                let (lo, hi) = valid_range(s, pad, offset, mu, v);
                (lo, hi, offset - pad as isize)
            })
            .collect();
        Self { lines_per_row, starts, inner }
    }
}

/// Where one image's columns sit in a wider matrix: row r starts at `r·ld + offset`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placement {
    /// The wider matrix's row length.
    pub ld: usize,
    /// The first column of this image's (or tile's) columns.
    pub offset: usize,
}

/// Copies a short line without a `memcpy` call: lines here are one row of a plane
/// (often under 32 elements), where the call costs more than the copy. Fixed-size blocks
/// compile to plain vector moves; a loop would be turned back into a `memcpy` call.
#[inline(always)]
pub(in crate::conv) fn copy_line<T: Copy>(dst: &mut [T], src: &[T]) {
    fn block<T: Copy, const N: usize>(dst: &mut [T], src: &[T], at: usize) {
        let chunk: [T; N] = src[at..at + N].try_into().expect("N elements");
        dst[at..at + N].copy_from_slice(&chunk);
    }
    let len = dst.len();
    if len >= 8 {
        let mut at = 0;
        while at + 8 < len {
            block::<T, 8>(dst, src, at);
            at += 8;
        }
        // The last block may overlap the previous one: the same values, written twice.
        block::<T, 8>(dst, src, len - 8);
        return;
    }
    let mut at = 0;
    if len & 4 != 0 {
        block::<T, 4>(dst, src, at);
        at += 4;
    }
    if len & 2 != 0 {
        block::<T, 2>(dst, src, at);
        at += 2;
    }
    if len & 1 != 0 {
        dst[at] = src[at];
    }
}

/// Calls `visit(channel, row, line, lo, hi, first)` for the lines `lines` of every row of
/// the column matrix: `line` counts from `lines.start`, cells `lo..hi` of the line read the input
/// starting at offset `first` of the channel plane (step: the last stride), and the
/// other cells read padding. `first` is `None` for a line wholly in the padding.
#[inline(always)]
fn for_each_line(
    geom: &ConvGeometry,
    table: &LineTable,
    channels: usize,
    lines: Range<usize>,
    mut visit: impl FnMut(usize, usize, usize, usize, usize, Option<usize>),
) {
    let (f_last, s_last) = (geom.filter()[geom.rank() - 1], geom.stride()[geom.rank() - 1]);
    let mut row = 0;
    for c in 0..channels {
        for starts in table.starts.chunks(table.lines_per_row.max(1)) {
            for &(lo, hi, shift) in &table.inner[..f_last] {
                for (line, &start) in starts[lines.clone()].iter().enumerate() {
                    let first =
                        (start != PADDING && lo < hi).then(|| (start + shift + (s_last * lo) as isize) as usize);
                    visit(c, row, line, lo, hi, first);
                }
                row += 1;
            }
        }
    }
}

/// Fills the columns of lines `lines` (outer output indices; all of them give the whole
/// matrix) of one image's column matrix into a wider matrix: row r goes to
/// `col[r·ld + offset ..]`, so that several images, or a tile of one, can sit side by
/// side (e.g. `ld` = images·∏v, `offset` = image·∏v).
///
/// `input` is `[channels, ∏μ]`; the rows are `channels·∏f`; `pad_value` is read at
/// every padded cell. Lengths are the caller's to check.
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col<T: Element>(
    geom: &ConvGeometry,
    table: &LineTable,
    channels: usize,
    pad_value: T,
    input: &[T],
    lines: Range<usize>,
    col: &mut [T],
    at: Placement,
) {
    let Placement { ld, offset } = at;
    let (in_len, v_last) = (geom.input_len(), geom.output()[geom.rank() - 1]);
    let stride = geom.stride()[geom.rank() - 1];
    for_each_line(geom, table, channels, lines, |c, row, line, lo, hi, first| {
        let plane = &input[c * in_len..(c + 1) * in_len];
        let cells = &mut col[row * ld + offset + line * v_last..][..v_last];
        match first {
            None => cells.fill(pad_value),
            Some(first) => {
                cells[..lo].fill(pad_value);
                cells[hi..].fill(pad_value);
                if stride == 1 {
                    copy_line(&mut cells[lo..hi], &plane[first..first + (hi - lo)]);
                } else {
                    for (dst, src) in cells[lo..hi].iter_mut().zip(plane[first..].iter().step_by(stride)) {
                        *dst = *src;
                    }
                }
            }
        }
    });
}

/// Adds the columns of lines `lines` of one image's column matrix back onto the input
/// they came from:
/// `input[c, γ] += col[(c, α), β]` for every in-bounds γ; padded cells are dropped,
/// because they are constants with no gradient. `ld` and `offset` place the image's
/// columns in a wider matrix, as for [`im2col`].
pub(crate) fn col2im_add<T: Element>(
    geom: &ConvGeometry,
    table: &LineTable,
    channels: usize,
    col: &[T],
    at: Placement,
    lines: Range<usize>,
    input: &mut [T],
) {
    let Placement { ld, offset } = at;
    let (in_len, v_last) = (geom.input_len(), geom.output()[geom.rank() - 1]);
    let stride = geom.stride()[geom.rank() - 1];
    for_each_line(geom, table, channels, lines, |c, row, line, lo, hi, first| {
        if let Some(first) = first {
            let plane = &mut input[c * in_len..(c + 1) * in_len];
            let cells = &col[row * ld + offset + line * v_last..][lo..hi];
            for (src, dst) in cells.iter().zip(plane[first..].iter_mut().step_by(stride)) {
                *dst += *src;
            }
        }
    });
}
