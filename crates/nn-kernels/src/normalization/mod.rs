//! Kernels of batch normalisation: per-run sums for the statistics, widened to f64
//! and split over independent partial sums so the loops vectorise, and the affine
//! passes of the forward and backward. Sums run in a fixed order, whatever the thread
//! count.

use crate::simd::avx2_dispatch;
use crate::Element;

/// Independent partial sums per reduction: enough to hide the latency of f64 adds and
/// fill AVX2 registers.
const PARTIALS: usize = 8;

/// The partial sums added in a fixed pairwise order.
fn combine(acc: [f64; PARTIALS]) -> f64 {
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// `Σ x`, accumulated in f64.
pub fn sum<T: Element>(x: &[T]) -> f64 {
    sum_dispatched(x)
}

/// `Σ (x − centre)²`, accumulated in f64.
pub fn sum_squared_deviation<T: Element>(x: &[T], centre: f64) -> f64 {
    sum_squared_deviation_dispatched(x, centre)
}

/// `(Σ g, Σ g·(x − centre))` over equally long runs `g` and `x`, accumulated in f64.
///
/// # Panics
/// When `g` and `x` differ in length (callers pass runs of one tensor shape).
pub fn sum_and_dot_deviation<T: Element>(g: &[T], x: &[T], centre: f64) -> (f64, f64) {
    assert_eq!(g.len(), x.len(), "runs of one shape");
    sum_and_dot_deviation_dispatched(g, x, centre)
}

/// `y = x·scale + shift` elementwise.
///
/// # Panics
/// When `x` and `y` differ in length.
pub fn scale_shift<T: Element>(x: &[T], scale: T, shift: T, y: &mut [T]) {
    assert_eq!(x.len(), y.len(), "runs of one shape");
    scale_shift_dispatched(x, scale, shift, y)
}

/// `dx = a·(g − g_mean) − b·(x − x_mean) − c` elementwise: a normalisation's input
/// gradient with the statistics folded into five constants (`c` is zero for batch
/// normalisation; group normalisation, whose γ varies within a group, needs it).
///
/// # Panics
/// When the runs differ in length.
pub fn centred_difference<T: Element>(g: &[T], x: &[T], constants: [T; 5], dx: &mut [T]) {
    assert!(g.len() == dx.len() && x.len() == dx.len(), "runs of one shape");
    centred_difference_dispatched(g, x, constants, dx)
}

avx2_dispatch!(fn sum_dispatched<T: Element>(x: &[T]) -> f64 => sum_body);
avx2_dispatch!(fn sum_squared_deviation_dispatched<T: Element>(x: &[T], centre: f64) -> f64 => sum_squared_deviation_body);
avx2_dispatch!(fn sum_and_dot_deviation_dispatched<T: Element>(g: &[T], x: &[T], centre: f64) -> (f64, f64) => sum_and_dot_deviation_body);
avx2_dispatch!(fn scale_shift_dispatched<T: Element>(x: &[T], scale: T, shift: T, y: &mut [T]) => scale_shift_body);
avx2_dispatch!(fn centred_difference_dispatched<T: Element>(g: &[T], x: &[T], constants: [T; 5], dx: &mut [T]) => centred_difference_body);

#[inline(always)]
fn sum_body<T: Element>(x: &[T]) -> f64 {
    let mut acc = [0.0; PARTIALS];
    let mut chunks = x.chunks_exact(PARTIALS);
    for chunk in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += v.as_f64();
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += v.as_f64();
    }
    combine(acc)
}

#[inline(always)]
fn sum_squared_deviation_body<T: Element>(x: &[T], centre: f64) -> f64 {
    let mut acc = [0.0; PARTIALS];
    let mut chunks = x.chunks_exact(PARTIALS);
    for chunk in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            let d = v.as_f64() - centre;
            *a += d * d;
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        let d = v.as_f64() - centre;
        *a += d * d;
    }
    combine(acc)
}

#[inline(always)]
fn sum_and_dot_deviation_body<T: Element>(g: &[T], x: &[T], centre: f64) -> (f64, f64) {
    let (mut sums, mut dots) = ([0.0; PARTIALS], [0.0; PARTIALS]);
    let (mut gs, mut xs) = (g.chunks_exact(PARTIALS), x.chunks_exact(PARTIALS));
    for (gc, xc) in (&mut gs).zip(&mut xs) {
        for l in 0..PARTIALS {
            let g = gc[l].as_f64();
            sums[l] += g;
            dots[l] += g * (xc[l].as_f64() - centre);
        }
    }
    for (l, (&g, &x)) in gs.remainder().iter().zip(xs.remainder()).enumerate() {
        sums[l] += g.as_f64();
        dots[l] += g.as_f64() * (x.as_f64() - centre);
    }
    (combine(sums), combine(dots))
}

#[inline(always)]
fn scale_shift_body<T: Element>(x: &[T], scale: T, shift: T, y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x * scale + shift;
    }
}

#[inline(always)]
fn centred_difference_body<T: Element>(g: &[T], x: &[T], [a, g_mean, b, x_mean, c]: [T; 5], dx: &mut [T]) {
    for ((dx, &g), &x) in dx.iter_mut().zip(g).zip(x) {
        *dx = a * (g - g_mean) - b * (x - x_mean) - c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 22) as f32 - 2.0
            })
            .collect()
    }

    #[test]
    fn sums_match_plain_f64_loops_at_every_remainder() {
        for len in [0, 1, 7, 8, 9, 49, 196, 784] {
            let (x, g) = (values(len, 3), values(len, 5));
            let plain: f64 = x.iter().map(|&v| v as f64).sum();
            let centre = 0.25;
            let squares: f64 = x.iter().map(|&v| (v as f64 - centre).powi(2)).sum();
            let dot: f64 = g.iter().zip(&x).map(|(&g, &x)| g as f64 * (x as f64 - centre)).sum();
            let g_sum: f64 = g.iter().map(|&v| v as f64).sum();
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * (1.0 + b.abs());
            assert!(close(sum(&x), plain), "{len}");
            assert!(close(sum_squared_deviation(&x, centre), squares), "{len}");
            let (s, d) = sum_and_dot_deviation(&g, &x, centre);
            assert!(close(s, g_sum) && close(d, dot), "{len}");
        }
    }

    #[test]
    fn affine_passes_follow_their_formulas() {
        let (x, g) = (values(37, 7), values(37, 9));
        let mut y = vec![0.0f32; 37];
        scale_shift(&x, 1.5, -0.5, &mut y);
        assert!(y.iter().zip(&x).all(|(&y, &x)| y == x * 1.5 - 0.5));
        let mut dx = vec![0.0f32; 37];
        centred_difference(&g, &x, [2.0, 0.25, 0.5, -1.0, 0.125], &mut dx);
        for ((&dx, &g), &x) in dx.iter().zip(&g).zip(&x) {
            assert_eq!(dx, 2.0 * (g - 0.25) - 0.5 * (x + 1.0) - 0.125);
        }
    }
}
