//! Depthwise convolution (one group per input channel, `C_out/C_in` filters each), any
//! number of dimensions: each output plane is a sum of shifted, scaled lines of one
//! input plane, walked with the column path's line table but accumulated in place, so
//! no column matrix and no per-channel GEMM. Work is split by planes (forward, input
//! gradient) and by output channels (weight gradient: each channel sums its images in
//! order), so results do not depend on the thread count.

use super::im2col::for_each_line;
use super::ConvProblem;
use crate::simd::avx2_dispatch;
use crate::Element;
use rayon::prelude::*;

/// Whether `problem` is depthwise (more than one group, one input channel per group).
pub(super) fn applies(problem: &ConvProblem) -> bool {
    problem.groups() > 1 && problem.groups() == problem.in_channels()
}

/// `y = conv(x, w) + b`, plane by plane.
pub(super) fn forward<T: Element>(problem: &ConvProblem, x: &[T], w: &[T], bias: Option<&[T]>, pad: T, y: &mut [T]) {
    let (c_in, c_out) = (problem.in_channels(), problem.out_channels());
    let (in_plane, out_plane, taps) =
        (problem.geometry().input_len(), problem.geometry().output_len(), problem.geometry().filter_len());
    y.par_chunks_mut(out_plane).enumerate().for_each(|(plane, y)| {
        let (n, o) = (plane / c_out, plane % c_out);
        let c = o / (c_out / c_in);
        let x = &x[(n * c_in + c) * in_plane..][..in_plane];
        y.fill(bias.map_or(T::zero(), |b| b[o]));
        forward_plane(problem, &w[o * taps..][..taps], x, pad, y);
    });
}

avx2_dispatch!(fn forward_plane<T: Element>(problem: &ConvProblem, w: &[T], x: &[T], pad: T, y: &mut [T]) => forward_plane_body);

#[inline(always)]
fn forward_plane_body<T: Element>(problem: &ConvProblem, w: &[T], x: &[T], pad: T, y: &mut [T]) {
    let g = problem.geometry();
    let (v_last, stride) = (g.output()[g.rank() - 1], g.stride()[g.rank() - 1]);
    let lines = 0..problem.lines().lines_per_row();
    for_each_line(g, problem.lines(), 1, lines, |_, tap, line, lo, hi, first| {
        let (weight, y) = (w[tap], &mut y[line * v_last..][..v_last]);
        let Some(first) = first else {
            y.iter_mut().for_each(|y| *y += weight * pad);
            return;
        };
        if pad != T::zero() {
            let (before, rest) = y.split_at_mut(lo);
            before.iter_mut().chain(&mut rest[hi - lo..]).for_each(|y| *y += weight * pad);
        }
        if stride == 1 {
            for (y, &x) in y[lo..hi].iter_mut().zip(&x[first..]) {
                *y += weight * x;
            }
        } else {
            for (y, &x) in y[lo..hi].iter_mut().zip(x[first..].iter().step_by(stride)) {
                *y += weight * x;
            }
        }
    });
}

/// `∂x = convᵀ(∂y, w)`: each input plane gathers the lines of its channel's output
/// gradients, scaled by their taps, in output-channel order.
pub(super) fn backward_input<T: Element>(problem: &ConvProblem, w: &[T], dy: &[T], dx: &mut [T]) {
    let (c_in, c_out) = (problem.in_channels(), problem.out_channels());
    let (in_plane, out_plane, taps) =
        (problem.geometry().input_len(), problem.geometry().output_len(), problem.geometry().filter_len());
    let multiplier = c_out / c_in;
    dx.par_chunks_mut(in_plane).enumerate().for_each(|(plane, dx)| {
        let (n, c) = (plane / c_in, plane % c_in);
        dx.fill(T::zero());
        for o in c * multiplier..(c + 1) * multiplier {
            let dy = &dy[(n * c_out + o) * out_plane..][..out_plane];
            backward_input_plane(problem, &w[o * taps..][..taps], dy, dx);
        }
    });
}

avx2_dispatch!(fn backward_input_plane<T: Element>(problem: &ConvProblem, w: &[T], dy: &[T], dx: &mut [T]) => backward_input_plane_body);

#[inline(always)]
fn backward_input_plane_body<T: Element>(problem: &ConvProblem, w: &[T], dy: &[T], dx: &mut [T]) {
    let g = problem.geometry();
    let (v_last, stride) = (g.output()[g.rank() - 1], g.stride()[g.rank() - 1]);
    let lines = 0..problem.lines().lines_per_row();
    // Padded cells are constants: only the lines' in-bounds cells receive gradient.
    for_each_line(g, problem.lines(), 1, lines, |_, tap, line, lo, hi, first| {
        let Some(first) = first else { return };
        let (weight, dy) = (w[tap], &dy[line * v_last..][lo..hi]);
        if stride == 1 {
            for (dx, &g) in dx[first..].iter_mut().zip(dy) {
                *dx += weight * g;
            }
        } else {
            for (dx, &g) in dx[first..].iter_mut().step_by(stride).zip(dy) {
                *dx += weight * g;
            }
        }
    });
}

/// `∂w += Σ_n Σ_β ∂y[n, o, β]·x′[n, c, γ(β, α)]`, one output channel per task, its
/// images summed in order.
pub(super) fn backward_weight<T: Element>(
    problem: &ConvProblem,
    batch: usize,
    x: &[T],
    dy: &[T],
    pad: T,
    dw: &mut [T],
) {
    let (c_in, c_out) = (problem.in_channels(), problem.out_channels());
    let (in_plane, out_plane, taps) =
        (problem.geometry().input_len(), problem.geometry().output_len(), problem.geometry().filter_len());
    let multiplier = c_out / c_in;
    dw.par_chunks_mut(taps).enumerate().for_each(|(o, dw)| {
        let c = o / multiplier;
        for n in 0..batch {
            let x = &x[(n * c_in + c) * in_plane..][..in_plane];
            let dy = &dy[(n * c_out + o) * out_plane..][..out_plane];
            backward_weight_plane(problem, x, dy, pad, dw);
        }
    });
}

avx2_dispatch!(fn backward_weight_plane<T: Element>(problem: &ConvProblem, x: &[T], dy: &[T], pad: T, dw: &mut [T]) => backward_weight_plane_body);

#[inline(always)]
fn backward_weight_plane_body<T: Element>(problem: &ConvProblem, x: &[T], dy: &[T], pad: T, dw: &mut [T]) {
    let g = problem.geometry();
    let (v_last, stride) = (g.output()[g.rank() - 1], g.stride()[g.rank() - 1]);
    let lines = 0..problem.lines().lines_per_row();
    for_each_line(g, problem.lines(), 1, lines, |_, tap, line, lo, hi, first| {
        let dy = &dy[line * v_last..][..v_last];
        let mut sum = T::zero();
        match first {
            None => sum = pad * dy.iter().copied().sum::<T>(),
            Some(first) => {
                if pad != T::zero() {
                    sum = pad * dy[..lo].iter().chain(&dy[hi..]).copied().sum::<T>();
                }
                if stride == 1 {
                    sum += dot(&dy[lo..hi], &x[first..first + (hi - lo)]);
                } else {
                    sum += dy[lo..hi].iter().zip(x[first..].iter().step_by(stride)).map(|(&g, &x)| g * x).sum::<T>();
                }
            }
        }
        dw[tap] += sum;
    });
}

/// `Σ a·b` in eight independent partial sums, so the loop vectorises.
#[inline(always)]
fn dot<T: Element>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (a, b) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += a[l] * b[l];
        }
    }
    for (l, (&a, &b)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[l] += a * b;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}
