//! N-dimensional max and average pooling over channel planes.
//!
//! The window geometry is a [`ConvGeometry`] (cross-correlation orientation: the
//! window starts at `s·β − p_before`). Padded cells never win a max and are not
//! counted in an average. Every window must hold at least one input cell, which
//! [`check_pool_geometry`] ensures.

#[cfg(test)]
mod tests;

use crate::conv::ConvGeometry;
use crate::error::check_len;
use crate::index::Odometer;
use crate::{Element, GeometryError, KernelError};
use rayon::prelude::*;

/// Rejects a pooling geometry whose padding could leave a window with no input cell:
/// padding must be smaller than the window in every dimension.
pub fn check_pool_geometry(geom: &ConvGeometry) -> Result<(), GeometryError> {
    for (dim, (p, &f)) in geom.padding().iter().zip(geom.filter()).enumerate() {
        if p.before >= f || p.after >= f {
            return Err(GeometryError::FilterTooLarge { dim, filter: p.before.max(p.after), padded: f });
        }
    }
    Ok(())
}

/// Calls `visit(out_index, in_index)` for every (output cell, in-bounds window cell)
/// pair of one plane, output cells in row-major order; the innermost dimension runs
/// as a contiguous loop so that odometers turn only once per row.
#[inline]
fn for_each_window_cell(geom: &ConvGeometry, mut visit: impl FnMut(usize, usize)) {
    let last = geom.rank() - 1;
    let (mu, s, f) = (geom.input(), geom.stride(), geom.filter());
    let in_strides = crate::index::row_major_strides(mu);
    let out_last = geom.output()[last];
    let pad_last = geom.padding()[last].before as isize;
    let mut rows = Odometer::new(&geom.output()[..last]);
    let mut out_row_start = 0;
    while let Some(beta) = rows.current() {
        // The window's extent in the outer dimensions, clamped to the input.
        let (mut lo, mut extent) = (Vec::with_capacity(last), Vec::with_capacity(last));
        for d in 0..last {
            let start = (s[d] * beta[d]) as isize - geom.padding()[d].before as isize;
            let (a, b) = (start.max(0), (start + f[d] as isize).min(mu[d] as isize));
            lo.push(a as usize);
            extent.push((b - a).max(0) as usize);
        }
        let mut cells = Odometer::new(&extent);
        while let Some(offset) = cells.current() {
            let row_base: usize = (0..last).map(|d| (lo[d] + offset[d]) * in_strides[d]).sum();
            for b in 0..out_last {
                let start = (s[last] * b) as isize - pad_last;
                let (a, e) = (start.max(0) as usize, (start + f[last] as isize).min(mu[last] as isize) as usize);
                for g in a..e {
                    visit(out_row_start + b, row_base + g);
                }
            }
            cells.advance();
        }
        out_row_start += out_last;
        rows.advance();
    }
}

fn check_planes<T>(
    geom: &ConvGeometry,
    planes: usize,
    x: &[T],
    y_len: usize,
    what: [&'static str; 2],
) -> Result<(), KernelError> {
    let overflow = || KernelError::Geometry(GeometryError::Overflow { what: "pooling buffer size" });
    check_len(what[0], planes.checked_mul(geom.input_len()).ok_or_else(overflow)?, x.len())?;
    check_len(what[1], planes.checked_mul(geom.output_len()).ok_or_else(overflow)?, y_len)
}

/// Max pooling of `planes` planes: `y[β] = max over the window of x`, recording in
/// `argmax` the in-plane index of each winner (the first one on ties).
pub fn max_pool_forward<T: Element>(
    geom: &ConvGeometry,
    planes: usize,
    x: &[T],
    y: &mut [T],
    argmax: &mut [u32],
) -> Result<(), KernelError> {
    check_planes(geom, planes, x, y.len(), ["max pool: x", "max pool: y"])?;
    check_len("max pool: argmax", y.len(), argmax.len())?;
    if geom.input_len() > u32::MAX as usize {
        return Err(GeometryError::Overflow { what: "max pool plane size (argmax is u32)" }.into());
    }
    let (in_len, out_len) = (geom.input_len(), geom.output_len());
    y.par_chunks_mut(out_len).zip(argmax.par_chunks_mut(out_len)).zip(x.par_chunks(in_len)).for_each(
        |((y_p, arg_p), x_p)| {
            arg_p.fill(u32::MAX);
            for_each_window_cell(geom, |o, i| {
                // `>` keeps the first maximum in row-major order; the first cell of a
                // window always enters, so a window holds a value even if all are NaN.
                if arg_p[o] == u32::MAX || x_p[i] > y_p[o] {
                    y_p[o] = x_p[i];
                    arg_p[o] = i as u32;
                }
            });
        },
    );
    Ok(())
}

/// Max pooling gradient: `dx[argmax[β]] += dy[β]`, with `dx` overwritten first.
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
                // An out-of-range index is a caller's stale buffer, not ours to trust.
                if let Some(cell) = dx_p.get_mut(a as usize) {
                    *cell += g;
                }
            }
        },
    );
    Ok(())
}

/// Number of in-bounds cells in each window of one plane.
fn window_counts(geom: &ConvGeometry) -> Vec<u32> {
    let mut counts = vec![0u32; geom.output_len()];
    for_each_window_cell(geom, |o, _| counts[o] += 1);
    counts
}

/// Average pooling: `y[β]` = mean of the in-bounds cells of the window (padding is
/// not counted).
pub fn avg_pool_forward<T: Element>(
    geom: &ConvGeometry,
    planes: usize,
    x: &[T],
    y: &mut [T],
) -> Result<(), KernelError> {
    check_planes(geom, planes, x, y.len(), ["avg pool: x", "avg pool: y"])?;
    let counts = window_counts(geom);
    let (in_len, out_len) = (geom.input_len(), geom.output_len());
    y.par_chunks_mut(out_len).zip(x.par_chunks(in_len)).for_each(|(y_p, x_p)| {
        y_p.fill(T::zero());
        for_each_window_cell(geom, |o, i| y_p[o] += x_p[i]);
        for (y, &c) in y_p.iter_mut().zip(&counts) {
            *y /= T::from_f64(c as f64);
        }
    });
    Ok(())
}

/// Average pooling gradient: each window cell receives `dy[β] / count(β)`; `dx` is
/// overwritten.
pub fn avg_pool_backward<T: Element>(
    geom: &ConvGeometry,
    planes: usize,
    dy: &[T],
    dx: &mut [T],
) -> Result<(), KernelError> {
    check_planes(geom, planes, dx, dy.len(), ["avg pool backward: dx", "avg pool backward: dy"])?;
    let counts = window_counts(geom);
    let (in_len, out_len) = (geom.input_len(), geom.output_len());
    dx.par_chunks_mut(in_len).zip(dy.par_chunks(out_len)).for_each(|(dx_p, dy_p)| {
        dx_p.fill(T::zero());
        for_each_window_cell(geom, |o, i| dx_p[i] += dy_p[o] / T::from_f64(counts[o] as f64));
    });
    Ok(())
}
