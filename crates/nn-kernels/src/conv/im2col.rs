//! N-dimensional im2col and its transpose col2im.
//!
//! The column matrix of one image has one row per (input channel, filter index α) and
//! one column per output index β: `col[(c, α), β] = x′[c, γ(β, α)]`, with x′ the input
//! padded by a constant. A convolution is then the matrix product `W · col`.
//!
//! Both walk the matrix row by row; the innermost spatial dimension is handled as a
//! contiguous run (a straight copy when the stride is 1), the outer ones with an
//! odometer, so the same code serves every number of dimensions.

use super::geometry::ConvGeometry;
use crate::index::Odometer;
use crate::Element;

/// Visits every contiguous run of one column-matrix row: for each outer output index,
/// calls `run(col_start, input_start)` where `col_start` indexes the row's first cell of
/// the run, and `input_start` is `Some(offset of γ for β_last = 0 in the channel plane)`
/// when the outer coordinates are inside the input, or `None` when the whole run reads
/// padding. Offsets are signed: β_last = 0 may itself fall in the padding.
#[inline]
fn for_each_run(
    geom: &ConvGeometry,
    alpha: &[usize],
    strides: &[usize],
    mut run: impl FnMut(usize, Option<isize>),
) {
    let last = geom.rank() - 1;
    let out_last = geom.output()[last];
    let mut outer = Odometer::new(&geom.output()[..last]);
    let mut col_start = 0;
    while let Some(beta) = outer.current() {
        let mut base: isize = 0;
        let mut inside = true;
        for d in 0..last {
            let gamma = (geom.stride()[d] * beta[d]) as isize - geom.padding()[d].before as isize
                + geom.tap_offset(d, alpha[d]);
            if gamma < 0 || gamma >= geom.input()[d] as isize {
                inside = false;
                break;
            }
            base += gamma * strides[d] as isize;
        }
        let inner = geom.tap_offset(last, alpha[last]) - geom.padding()[last].before as isize;
        run(col_start, inside.then_some(base + inner));
        col_start += out_last;
        outer.advance();
    }
}

/// Fills the column matrix of one image.
///
/// `input` is `[channels, ∏μ]`, `col` is `[channels·∏f, ∏v]`; `pad_value` is read at
/// every padded cell. Lengths are the caller's to check.
pub(crate) fn im2col<T: Element>(
    geom: &ConvGeometry,
    channels: usize,
    pad_value: T,
    input: &[T],
    col: &mut [T],
) {
    let last = geom.rank() - 1;
    let stride = geom.stride()[last];
    let strides = geom.input_strides();
    let (in_len, out_len) = (geom.input_len(), geom.output_len());
    let mut row = 0;
    for c in 0..channels {
        let plane = &input[c * in_len..(c + 1) * in_len];
        let mut taps = Odometer::new(geom.filter());
        while let Some(alpha) = taps.current() {
            let col_row = &mut col[row * out_len..(row + 1) * out_len];
            let (lo, hi) = geom.inner_valid_range(geom.tap_offset(last, alpha[last]));
            for_each_run(geom, alpha, &strides, |start, input_start| {
                let run = &mut col_row[start..start + geom.output()[last]];
                match input_start {
                    None => run.fill(pad_value),
                    Some(origin) => {
                        run[..lo].fill(pad_value);
                        run[hi..].fill(pad_value);
                        if lo == hi {
                            return;
                        }
                        let first = (origin + (stride * lo) as isize) as usize;
                        if stride == 1 {
                            run[lo..hi].copy_from_slice(&plane[first..first + (hi - lo)]);
                        } else {
                            for (dst, src) in run[lo..hi]
                                .iter_mut()
                                .zip(plane[first..].iter().step_by(stride))
                            {
                                *dst = *src;
                            }
                        }
                    }
                }
            });
            row += 1;
            taps.advance();
        }
    }
}

/// Adds the column matrix of one image back onto the input it came from:
/// `input[c, γ] += col[(c, α), β]` for every in-bounds γ; padded cells are dropped,
/// because they are constants with no gradient.
pub(crate) fn col2im_add<T: Element>(
    geom: &ConvGeometry,
    channels: usize,
    col: &[T],
    input: &mut [T],
) {
    let last = geom.rank() - 1;
    let stride = geom.stride()[last];
    let strides = geom.input_strides();
    let (in_len, out_len) = (geom.input_len(), geom.output_len());
    let mut row = 0;
    for c in 0..channels {
        let plane = &mut input[c * in_len..(c + 1) * in_len];
        let mut taps = Odometer::new(geom.filter());
        while let Some(alpha) = taps.current() {
            let col_row = &col[row * out_len..(row + 1) * out_len];
            let (lo, hi) = geom.inner_valid_range(geom.tap_offset(last, alpha[last]));
            for_each_run(geom, alpha, &strides, |start, input_start| {
                if let (Some(origin), true) = (input_start, lo < hi) {
                    let run = &col_row[start + lo..start + hi];
                    let first = (origin + (stride * lo) as isize) as usize;
                    for (src, dst) in run.iter().zip(plane[first..].iter_mut().step_by(stride)) {
                        *dst += *src;
                    }
                }
            });
            row += 1;
            taps.advance();
        }
    }
}
