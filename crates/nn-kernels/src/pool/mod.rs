//! N-dimensional max and average pooling over channel planes.
//!
//! The window geometry is a [`ConvGeometry`] (cross-correlation orientation: the
//! window starts at `s·β − p_before`). Padded cells never win a max and are not
//! counted in an average. Every window must hold at least one input cell, which
//! [`check_pool_geometry`] ensures.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(test)]
mod tests;

use crate::error::check_len;
use crate::geometry::ConvGeometry;
use crate::index::Odometer;
use crate::{Element, GeometryError, KernelError};
use rayon::prelude::*;

/// Rejects a pooling geometry whose padding could leave a window with no input cell:
/// padding must be smaller than the window in every dimension.
///
/// # Errors
/// [`GeometryError::PaddingTooLarge`] naming the dimension.
pub fn check_pool_geometry(geom: &ConvGeometry) -> Result<(), GeometryError> {
    for (dim, (p, &f)) in geom.padding().iter().zip(geom.filter()).enumerate() {
        if p.before >= f || p.after >= f {
            return Err(GeometryError::PaddingTooLarge { dim, padding: p.before.max(p.after), window: f });
        }
    }
    Ok(())
}

/// The windows of one plane, precomputed once per call and shared by every plane:
/// for each output row (all dimensions but the last), the offsets of the input rows
/// its windows cover; for each index of the last dimension, the covered input range.
struct Windows {
    /// `row_starts[r]..row_starts[r + 1]` indexes `rows` for output row r.
    row_starts: Vec<usize>,
    /// Input row offsets (in-bounds rows only).
    rows: Vec<usize>,
    /// Per last-dimension output index: the in-bounds input range `a..e`.
    inner: Vec<(usize, usize)>,
}

impl Windows {
    fn new(geom: &ConvGeometry) -> Self {
        let last = geom.rank() - 1;
        let (mu, s, f) = (geom.input(), geom.stride(), geom.filter());
        let in_strides = crate::index::row_major_strides(mu);
        let clamp = |d: usize, b: usize| {
            let start = (s[d] * b) as isize - geom.padding()[d].before as isize;
            (start.max(0) as usize, (start + f[d] as isize).min(mu[d] as isize).max(0) as usize)
        };
        let (mut row_starts, mut rows) = (vec![0], Vec::new());
        let mut outer = Odometer::new(&geom.output()[..last]);
        while let Some(beta) = outer.current() {
            let ranges: Vec<(usize, usize)> = (0..last).map(|d| clamp(d, beta[d])).collect();
            let extent: Vec<usize> = ranges.iter().map(|&(a, e)| e.saturating_sub(a)).collect();
            let mut cells = Odometer::new(&extent);
            while let Some(offset) = cells.current() {
                rows.push((0..last).map(|d| (ranges[d].0 + offset[d]) * in_strides[d]).sum());
                cells.advance();
            }
            row_starts.push(rows.len());
            outer.advance();
        }
        let inner = (0..geom.output()[last]).map(|b| clamp(last, b)).collect();
        Self { row_starts, rows, inner }
    }

    /// True when the last dimension's windows are the pairs `2b, 2b + 1`, all in
    /// bounds (a 2-wide window at stride 2 without padding: the common pooling).
    fn is_paired(&self) -> bool {
        self.inner.iter().enumerate().all(|(b, &(a, e))| a == 2 * b && e == a + 2)
    }

    /// The input row offsets of output row `r`'s windows.
    fn window_rows(&self, r: usize) -> &[usize] {
        &self.rows[self.row_starts[r]..self.row_starts[r + 1]]
    }

    /// Calls `visit(out_index, rows, a..e)` for every output cell of one plane: its
    /// window's in-bounds cells are `base + g` for `base` in `rows` and `g` in `a..e`,
    /// in row-major order.
    #[inline(always)]
    fn for_each_output(&self, mut visit: impl FnMut(usize, &[usize], std::ops::Range<usize>)) {
        let width = self.inner.len();
        for r in 0..self.row_starts.len() - 1 {
            let rows = &self.rows[self.row_starts[r]..self.row_starts[r + 1]];
            for (b, &(a, e)) in self.inner.iter().enumerate() {
                visit(r * width + b, rows, a..e);
            }
        }
    }

    /// Calls `visit(out_index, in_index)` for every (output cell, in-bounds window
    /// cell) pair of one plane; for each output cell, window cells come in row-major
    /// order.
    #[inline(always)]
    fn for_each(&self, mut visit: impl FnMut(usize, usize)) {
        let width = self.inner.len();
        for r in 0..self.row_starts.len() - 1 {
            for &base in &self.rows[self.row_starts[r]..self.row_starts[r + 1]] {
                for (b, &(a, e)) in self.inner.iter().enumerate() {
                    for g in a..e {
                        visit(r * width + b, base + g);
                    }
                }
            }
        }
    }
}

/// The checks every pooling kernel makes: buffer lengths for `planes` planes, and a
/// geometry in which every window holds an input cell (else a max has no candidate
/// and an average divides by zero).
fn check_planes<T>(
    geom: &ConvGeometry,
    planes: usize,
    x: &[T],
    y_len: usize,
    what: [&'static str; 2],
) -> Result<(), KernelError> {
    let overflow = || KernelError::Geometry(GeometryError::Overflow { what: "pooling buffer size" });
    check_len(what[0], planes.checked_mul(geom.input_len()).ok_or_else(overflow)?, x.len())?;
    check_len(what[1], planes.checked_mul(geom.output_len()).ok_or_else(overflow)?, y_len)?;
    Ok(check_pool_geometry(geom)?)
}

/// The bit of an argmax entry that stops its window's gradient (see
/// [`max_pool_relu_forward`]); the other bits still index the winner, as planes hold
/// at most 2³¹ cells (indices below 2³¹).
pub const GRADIENT_STOPS: u32 = 1 << 31;

/// Max pooling of `planes` planes: `y[β] = max over the window of x` (NaN where the
/// window holds a NaN), recording in `argmax` the in-plane index of each winner (the
/// first one on ties).
///
/// # Errors
/// [`KernelError`] when a buffer's length does not fit `geom` and `planes`, or the
/// geometry leaves a window without an input cell.
pub fn max_pool_forward<T: Element>(
    geom: &ConvGeometry,
    planes: usize,
    x: &[T],
    y: &mut [T],
    argmax: &mut [u32],
) -> Result<(), KernelError> {
    max_pool(geom, planes, x, y, argmax, false)
}

/// Max pooling of `ReLU(x)`, as [`max_pool_forward`] after a ReLU layer would give
/// it, without the pass over `x` the ReLU takes: ReLU is monotonic, so
/// `max(ReLU(x)) = ReLU(max(x))`. A window whose result is not positive has
/// [`GRADIENT_STOPS`] set in its argmax, so that [`max_pool_backward`] sends its
/// gradient nowhere, as the ReLU's derivative would. Outputs and gradients keep the
/// bits of the two layers apart.
///
/// # Errors
/// As for [`max_pool_forward`].
pub fn max_pool_relu_forward<T: Element>(
    geom: &ConvGeometry,
    planes: usize,
    x: &[T],
    y: &mut [T],
    argmax: &mut [u32],
) -> Result<(), KernelError> {
    max_pool(geom, planes, x, y, argmax, true)
}

fn max_pool<T: Element>(
    geom: &ConvGeometry,
    planes: usize,
    x: &[T],
    y: &mut [T],
    argmax: &mut [u32],
    rectify: bool,
) -> Result<(), KernelError> {
    check_planes(geom, planes, x, y.len(), ["max pool: x", "max pool: y"])?;
    check_len("max pool: argmax", y.len(), argmax.len())?;
    if geom.input_len() > GRADIENT_STOPS as usize {
        return Err(GeometryError::Overflow { what: "max pool plane size (argmax is 31 bits of a u32)" }.into());
    }
    let (in_len, out_len) = (geom.input_len(), geom.output_len());
    let windows = Windows::new(geom);
    let paired = windows.is_paired();
    y.par_chunks_mut(out_len).zip(argmax.par_chunks_mut(out_len)).zip(x.par_chunks(in_len)).for_each(
        |((y_p, arg_p), x_p)| {
            if paired {
                let width = windows.inner.len();
                for (r, (y_row, arg_row)) in y_p.chunks_exact_mut(width).zip(arg_p.chunks_exact_mut(width)).enumerate()
                {
                    max_of_pairs(x_p, windows.window_rows(r), y_row, arg_row, rectify);
                }
            } else {
                windows.for_each_output(|o, rows, cols| {
                    // The first cell starts the max (every window has one, checked
                    // above); the first maximum in row-major order wins, and the first
                    // NaN wins over any number (see `supersedes`). Selects, not
                    // branches: a comparison on data mispredicts half the time.
                    let (mut best, mut arg) = (x_p[rows[0] + cols.start], rows[0] + cols.start);
                    for &base in rows {
                        let first = base + cols.start;
                        for (i, &v) in x_p[first..base + cols.end].iter().enumerate() {
                            let better = supersedes(v, best);
                            best = if better { v } else { best };
                            arg = if better { first + i } else { arg };
                        }
                    }
                    y_p[o] = best;
                    arg_p[o] = arg as u32;
                });
                if rectify {
                    rectify_maxima(y_p, arg_p);
                }
            }
        },
    );
    Ok(())
}

/// ReLU of maxima by the ReLU layer's rule (`elementwise::relu`: NaN stays), with `|`
/// and selects: the short-circuit in `elementwise::relu` compiled to a branch per
/// window here. The gradient passes only where the result is positive.
fn rectify_maxima<T: Element>(y: &mut [T], argmax: &mut [u32]) {
    for (y, arg) in y.iter_mut().zip(argmax) {
        let positive = *y > T::zero();
        *y = if positive | y.is_nan() { *y } else { T::zero() };
        *arg |= if positive { 0 } else { GRADIENT_STOPS };
    }
}

/// Whether `v` replaces `best` as a window's maximum: when greater, or when it is the
/// window's first NaN. Max pooling propagates NaN, as IEEE's maximum and PyTorch do,
/// so that a NaN input reaches the loss instead of vanishing.
#[inline(always)]
fn supersedes<T: Element>(v: T, best: T) -> bool {
    (v > best) | (v.is_nan() & !best.is_nan())
}

/// One output row of max pooling whose windows are the pairs `2b, 2b + 1` of the
/// input rows at `rows`: the same first-maximum rule as the general loop, with the
/// bounds checked once per row instead of once per cell.
/// Rectified as [`max_pool_relu_forward`] says where `rectify` is set.
fn max_of_pairs<T: Element>(x_p: &[T], rows: &[usize], y_row: &mut [T], arg_row: &mut [u32], rectify: bool) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if let (&[top, bottom], Some(isa), Some(x), Some(y)) =
        (rows, crate::simd::Avx2Fma::detect(), T::as_f32(x_p), T::as_f32_mut(y_row))
    {
        done = avx2::max_of_2x2(isa, x, top, bottom, y, arg_row, rectify);
    }
    max_of_pairs_from(done, x_p, rows, y_row, arg_row);
    if rectify {
        rectify_maxima(&mut y_row[done..], &mut arg_row[done..]);
    }
}

/// [`max_of_pairs`] from window `first` of the row on.
fn max_of_pairs_from<T: Element>(first: usize, x_p: &[T], rows: &[usize], y_row: &mut [T], arg_row: &mut [u32]) {
    let width = y_row.len();
    let row = |base: usize| x_p[base..base + 2 * width].chunks_exact(2);
    let update = |best: &mut T, arg: &mut usize, v: T, at: usize| {
        let better = supersedes(v, *best);
        *best = if better { v } else { *best };
        *arg = if better { at } else { *arg };
    };
    if let &[top, bottom] = rows {
        for (b, (((y, slot), upper), lower)) in
            y_row.iter_mut().zip(arg_row.iter_mut()).zip(row(top)).zip(row(bottom)).enumerate().skip(first)
        {
            let (mut best, mut arg) = (upper[0], top + 2 * b);
            update(&mut best, &mut arg, upper[1], top + 2 * b + 1);
            update(&mut best, &mut arg, lower[0], bottom + 2 * b);
            update(&mut best, &mut arg, lower[1], bottom + 2 * b + 1);
            *y = best;
            *slot = arg as u32;
        }
        return;
    }
    for (b, ((y, slot), pair)) in y_row.iter_mut().zip(arg_row.iter_mut()).zip(row(rows[0])).enumerate().skip(first) {
        let (mut best, mut arg) = (pair[0], rows[0] + 2 * b);
        update(&mut best, &mut arg, pair[1], rows[0] + 2 * b + 1);
        for &base in &rows[1..] {
            let pair = &x_p[base + 2 * b..base + 2 * b + 2];
            update(&mut best, &mut arg, pair[0], base + 2 * b);
            update(&mut best, &mut arg, pair[1], base + 2 * b + 1);
        }
        *y = best;
        *slot = arg as u32;
    }
}

/// Max pooling gradient: `dx[argmax[β]] += dy[β]`, with `dx` overwritten first; a
/// window whose argmax has [`GRADIENT_STOPS`] set adds nothing.
///
/// # Errors
/// [`KernelError`] when a buffer's length does not fit `geom` and `planes`.
pub fn max_pool_backward<T: Element>(
    geom: &ConvGeometry,
    planes: usize,
    argmax: &[u32],
    dy: &[T],
    dx: &mut [T],
) -> Result<(), KernelError> {
    check_planes(geom, planes, dx, dy.len(), ["max pool backward: dx", "max pool backward: dy"])?;
    check_len("max pool backward: argmax", dy.len(), argmax.len())?;
    let (in_len, out_len) = (geom.input_len(), geom.output_len());
    dx.par_chunks_mut(in_len).zip(dy.par_chunks(out_len).zip(argmax.par_chunks(out_len))).for_each(
        |(dx_p, (dy_p, arg_p))| {
            dx_p.fill(T::zero());
            for (&g, &a) in dy_p.iter().zip(arg_p) {
                // A stopped window adds +0 to its winner: a cell starts at +0, so it is
                // never −0 (a sum is −0 only when both terms are) and adding +0 keeps
                // its bits. Chosen by index: an `if` here compiles to a branch on data,
                // which mispredicts.
                let g = [g, T::zero()][(a / GRADIENT_STOPS) as usize];
                // An out-of-range index is a caller's stale buffer, not ours to trust.
                if let Some(cell) = dx_p.get_mut((a & !GRADIENT_STOPS) as usize) {
                    *cell += g;
                }
            }
        },
    );
    Ok(())
}

/// Number of in-bounds cells in each window of one plane.
fn window_counts(geom: &ConvGeometry, windows: &Windows) -> Vec<u32> {
    let mut counts = vec![0u32; geom.output_len()];
    windows.for_each(|o, _| counts[o] += 1);
    counts
}

/// Average pooling: `y[β]` = mean of the in-bounds cells of the window (padding is
/// not counted).
///
/// # Errors
/// [`KernelError`] when a buffer's length does not fit `geom` and `planes`, or the
/// geometry leaves a window without an input cell.
pub fn avg_pool_forward<T: Element>(
    geom: &ConvGeometry,
    planes: usize,
    x: &[T],
    y: &mut [T],
) -> Result<(), KernelError> {
    check_planes(geom, planes, x, y.len(), ["avg pool: x", "avg pool: y"])?;
    let windows = Windows::new(geom);
    let counts = window_counts(geom, &windows);
    let (in_len, out_len) = (geom.input_len(), geom.output_len());
    y.par_chunks_mut(out_len).zip(x.par_chunks(in_len)).for_each(|(y_p, x_p)| {
        y_p.fill(T::zero());
        windows.for_each(|o, i| y_p[o] += x_p[i]);
        for (y, &c) in y_p.iter_mut().zip(&counts) {
            *y /= T::from_f64(c as f64);
        }
    });
    Ok(())
}

/// Average pooling gradient: each window cell receives `dy[β] / count(β)`; `dx` is
/// overwritten.
///
/// # Errors
/// [`KernelError`] when a buffer's length does not fit `geom` and `planes`.
pub fn avg_pool_backward<T: Element>(
    geom: &ConvGeometry,
    planes: usize,
    dy: &[T],
    dx: &mut [T],
) -> Result<(), KernelError> {
    check_planes(geom, planes, dx, dy.len(), ["avg pool backward: dx", "avg pool backward: dy"])?;
    let windows = Windows::new(geom);
    let counts = window_counts(geom, &windows);
    let (in_len, out_len) = (geom.input_len(), geom.output_len());
    dx.par_chunks_mut(in_len).zip(dy.par_chunks(out_len)).for_each(|(dx_p, dy_p)| {
        dx_p.fill(T::zero());
        windows.for_each(|o, i| dx_p[i] += dy_p[o] / T::from_f64(counts[o] as f64));
    });
    Ok(())
}
