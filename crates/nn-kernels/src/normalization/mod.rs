//! Kernels of batch normalisation: per-run sums for the statistics, widened to f64
//! and split over independent partial sums so the loops vectorise, and the affine
//! passes of the forward and backward. Sums run in a fixed order, whatever the thread
//! count.

#[cfg(target_arch = "x86_64")]
mod widened;

use crate::simd::{avx2_dispatch, Avx2Fma};
use crate::Element;

/// Independent partial sums per reduction: enough to hide the latency of f64 adds and
/// fill two AVX2 registers.
const PARTIALS: usize = 8;

/// The partial sums added in a fixed pairwise order.
fn combine(acc: [f64; PARTIALS]) -> f64 {
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// `Σ x`, accumulated in f64.
pub fn sum<T: Element>(x: &[T]) -> f64 {
    let done = x.len() / PARTIALS * PARTIALS;
    let mut acc = match f32_on_avx2(&x[..done]) {
        #[cfg(target_arch = "x86_64")]
        Some((x, isa)) => widened::sum(isa, x),
        _ => sum_chunks_dispatched(&x[..done]),
    };
    for (a, &v) in acc.iter_mut().zip(&x[done..]) {
        *a += v.as_f64();
    }
    combine(acc)
}

/// `Σ (x − centre)²`, accumulated in f64.
pub fn sum_squared_deviation<T: Element>(x: &[T], centre: f64) -> f64 {
    let done = x.len() / PARTIALS * PARTIALS;
    let mut acc = match f32_on_avx2(&x[..done]) {
        #[cfg(target_arch = "x86_64")]
        Some((x, isa)) => widened::sum_squared_deviation(isa, x, centre),
        _ => sum_squared_deviation_chunks_dispatched(&x[..done], centre),
    };
    for (a, &v) in acc.iter_mut().zip(&x[done..]) {
        let d = v.as_f64() - centre;
        *a += d * d;
    }
    combine(acc)
}

/// `(Σ g, Σ g·(x − centre))` over equally long runs `g` and `x`, accumulated in f64.
///
/// # Panics
/// When `g` and `x` differ in length (callers pass runs of one tensor shape).
pub fn sum_and_dot_deviation<T: Element>(g: &[T], x: &[T], centre: f64) -> (f64, f64) {
    sums_and_dots(g, x, centre, None)
}

/// [`sum_and_dot_deviation`] of the gradient through an absorbed ReLU: `g` counts
/// only where `x·scale + shift > 0`, the output the forward pass rectified (the
/// mask recomputed from the input, with the bits of the forward's, so the output
/// is not read).
///
/// # Panics
/// When `g` and `x` differ in length.
pub fn sum_and_dot_deviation_rectified<T: Element>(
    g: &[T],
    x: &[T],
    centre: f64,
    (scale, shift): (T, T),
) -> (f64, f64) {
    sums_and_dots(g, x, centre, Some((scale, shift)))
}

fn sums_and_dots<T: Element>(g: &[T], x: &[T], centre: f64, rectifier: Option<(T, T)>) -> (f64, f64) {
    assert_eq!(g.len(), x.len(), "runs of one shape");
    let done = g.len() / PARTIALS * PARTIALS;
    let (g_chunks, x_chunks) = (&g[..done], &x[..done]);
    let (mut sums, mut dots) = match (f32_on_avx2(g_chunks), T::as_f32(x_chunks)) {
        #[cfg(target_arch = "x86_64")]
        (Some((g, isa)), Some(x)) => {
            let rectifier = rectifier.map(|(s, b)| (s.as_f64() as f32, b.as_f64() as f32));
            widened::sum_and_dot_deviation(isa, g, x, centre, rectifier)
        }
        _ => sum_and_dot_deviation_chunks_dispatched(g_chunks, x_chunks, centre, rectifier),
    };
    for (l, (&g, &x)) in g[done..].iter().zip(&x[done..]).enumerate() {
        let g = rectify(g, x, rectifier).as_f64();
        sums[l] += g;
        dots[l] += g * (x.as_f64() - centre);
    }
    (combine(sums), combine(dots))
}

/// `g` where there is no rectifier or `x·scale + shift > 0`, else 0: ReLU's
/// derivative at the output the forward pass computed from `x`.
#[inline(always)]
fn rectify<T: Element>(g: T, x: T, rectifier: Option<(T, T)>) -> T {
    match rectifier {
        Some((scale, shift)) if x * scale + shift > T::zero() => g,
        Some(_) => T::zero(),
        None => g,
    }
}

/// `x` as f32 with the token for the AVX2 sums, where it is f32 and the CPU has AVX2:
/// LLVM widens and adds the portable loops one element at a time.
fn f32_on_avx2<T: Element>(x: &[T]) -> Option<(&[f32], Avx2Fma)> {
    T::as_f32(x).zip(Avx2Fma::detect())
}

/// `y = x·scale + shift` elementwise.
///
/// # Panics
/// When `x` and `y` differ in length.
pub fn scale_shift<T: Element>(x: &[T], scale: T, shift: T, y: &mut [T]) {
    assert_eq!(x.len(), y.len(), "runs of one shape");
    scale_shift_dispatched(x, scale, shift, y)
}

/// `y = max(x·scale + shift, 0)` elementwise (NaN stays NaN): batch normalisation's
/// output pass with the ReLU after it.
///
/// # Panics
/// When `x` and `y` differ in length.
pub fn scale_shift_relu<T: Element>(x: &[T], scale: T, shift: T, y: &mut [T]) {
    assert_eq!(x.len(), y.len(), "runs of one shape");
    scale_shift_relu_dispatched(x, scale, shift, y)
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

/// [`centred_difference`] of the gradient through an absorbed ReLU, masked as in
/// [`sum_and_dot_deviation_rectified`].
///
/// # Panics
/// When the runs differ in length.
pub fn centred_difference_rectified<T: Element>(g: &[T], x: &[T], constants: [T; 5], rectifier: (T, T), dx: &mut [T]) {
    assert!(g.len() == dx.len() && x.len() == dx.len(), "runs of one shape");
    centred_difference_rectified_dispatched(g, x, constants, rectifier, dx)
}

avx2_dispatch!(fn sum_chunks_dispatched<T: Element>(x: &[T]) -> [f64; PARTIALS] => sum_chunks);
avx2_dispatch!(fn sum_squared_deviation_chunks_dispatched<T: Element>(x: &[T], centre: f64) -> [f64; PARTIALS] => sum_squared_deviation_chunks);
avx2_dispatch!(fn sum_and_dot_deviation_chunks_dispatched<T: Element>(g: &[T], x: &[T], centre: f64, rectifier: Option<(T, T)>) -> ([f64; PARTIALS], [f64; PARTIALS]) => sum_and_dot_deviation_chunks);
avx2_dispatch!(fn scale_shift_dispatched<T: Element>(x: &[T], scale: T, shift: T, y: &mut [T]) => scale_shift_body);
avx2_dispatch!(fn scale_shift_relu_dispatched<T: Element>(x: &[T], scale: T, shift: T, y: &mut [T]) => scale_shift_relu_body);
avx2_dispatch!(fn centred_difference_dispatched<T: Element>(g: &[T], x: &[T], constants: [T; 5], dx: &mut [T]) => centred_difference_body);
avx2_dispatch!(fn centred_difference_rectified_dispatched<T: Element>(g: &[T], x: &[T], constants: [T; 5], rectifier: (T, T), dx: &mut [T]) => centred_difference_rectified_body);

// The portable sums over whole chunks, partial sum `l` taking every chunk's element
// `l`; the callers add the tail.

#[inline(always)]
fn sum_chunks<T: Element>(x: &[T]) -> [f64; PARTIALS] {
    let mut acc = [0.0; PARTIALS];
    for chunk in x.chunks_exact(PARTIALS) {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += v.as_f64();
        }
    }
    acc
}

#[inline(always)]
fn sum_squared_deviation_chunks<T: Element>(x: &[T], centre: f64) -> [f64; PARTIALS] {
    let mut acc = [0.0; PARTIALS];
    for chunk in x.chunks_exact(PARTIALS) {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            let d = v.as_f64() - centre;
            *a += d * d;
        }
    }
    acc
}

#[inline(always)]
fn sum_and_dot_deviation_chunks<T: Element>(
    g: &[T],
    x: &[T],
    centre: f64,
    rectifier: Option<(T, T)>,
) -> ([f64; PARTIALS], [f64; PARTIALS]) {
    let (mut sums, mut dots) = ([0.0; PARTIALS], [0.0; PARTIALS]);
    for (gc, xc) in g.chunks_exact(PARTIALS).zip(x.chunks_exact(PARTIALS)) {
        for l in 0..PARTIALS {
            let g = rectify(gc[l], xc[l], rectifier).as_f64();
            sums[l] += g;
            dots[l] += g * (xc[l].as_f64() - centre);
        }
    }
    (sums, dots)
}

#[inline(always)]
fn scale_shift_body<T: Element>(x: &[T], scale: T, shift: T, y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x * scale + shift;
    }
}

#[inline(always)]
fn scale_shift_relu_body<T: Element>(x: &[T], scale: T, shift: T, y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = crate::elementwise::relu(x * scale + shift);
    }
}

#[inline(always)]
fn centred_difference_body<T: Element>(g: &[T], x: &[T], [a, g_mean, b, x_mean, c]: [T; 5], dx: &mut [T]) {
    for ((dx, &g), &x) in dx.iter_mut().zip(g).zip(x) {
        *dx = a * (g - g_mean) - b * (x - x_mean) - c;
    }
}

#[inline(always)]
fn centred_difference_rectified_body<T: Element>(
    g: &[T],
    x: &[T],
    [a, g_mean, b, x_mean, c]: [T; 5],
    (scale, shift): (T, T),
    dx: &mut [T],
) {
    let zero = T::zero();
    for ((dx, &g), &x) in dx.iter_mut().zip(g).zip(x) {
        // ReLU's derivative, written as a select so that the loop vectorises.
        let g = if x * scale + shift > zero { g } else { zero };
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

    /// The sums as the portable loops make them: value `i` into partial sum `i % 8`.
    fn in_partials(values: impl Iterator<Item = f64>) -> f64 {
        let mut acc = [0.0; PARTIALS];
        for (i, v) in values.enumerate() {
            acc[i % PARTIALS] += v;
        }
        combine(acc)
    }

    #[test]
    fn sums_of_f32_have_the_bits_of_the_portable_loops() {
        // Whichever path runs (AVX2 where the CPU has it; the portable loops under
        // NN_KERNELS_PORTABLE), the bits are the same.
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 49, 196, 784, 1000] {
            let (x, g) = (values(len, 11), values(len, 13));
            let centre = -1.0 / 3.0; // a mean: (x − centre) rounds, as in use
            let wide = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<_>>();
            let (x64, g64) = (wide(&x), wide(&g));
            assert_eq!(sum(&x).to_bits(), in_partials(x64.iter().copied()).to_bits(), "{len}");
            let squares = in_partials(x64.iter().map(|&v| (v - centre) * (v - centre)));
            assert_eq!(sum_squared_deviation(&x, centre).to_bits(), squares.to_bits(), "{len}");
            let (s, d) = sum_and_dot_deviation(&g, &x, centre);
            assert_eq!(s.to_bits(), in_partials(g64.iter().copied()).to_bits(), "{len}");
            let dot = in_partials(g64.iter().zip(&x64).map(|(&g, &x)| g * (x - centre)));
            assert_eq!(d.to_bits(), dot.to_bits(), "{len}");
        }
    }

    #[test]
    fn rectified_passes_are_the_plain_ones_on_the_masked_gradient() {
        // Whichever path runs, a rectified pass gives the bits of the plain pass on
        // the gradient ReLU's backward would have passed on, NaN outputs included.
        let (scale, shift) = (1.25f32, 0.375f32);
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 49, 196] {
            let (mut x, g) = (values(len, 17), values(len, 19));
            if len > 9 {
                x[9] = f32::NAN;
            }
            let masked: Vec<f32> =
                g.iter().zip(&x).map(|(&g, &x)| if x * scale + shift > 0.0 { g } else { 0.0 }).collect();
            let passed = masked.iter().filter(|&&g| g != 0.0).count();
            assert!(len < 16 || (passed > 0 && passed < len), "the mask passes some, not all");
            let centre = 1.0 / 3.0;
            let (s, d) = sum_and_dot_deviation_rectified(&g, &x, centre, (scale, shift));
            let (s0, d0) = sum_and_dot_deviation(&masked, &x, centre);
            assert_eq!((s.to_bits(), d.is_nan()), (s0.to_bits(), d0.is_nan()), "{len}");
            assert!(d.is_nan() || d.to_bits() == d0.to_bits(), "{len}");
            let constants = [1.5, 0.25, 0.5, -1.0, 0.125];
            let (mut dx, mut dx0) = (vec![0.0f32; len], vec![0.0f32; len]);
            centred_difference_rectified(&g, &x, constants, (scale, shift), &mut dx);
            centred_difference(&masked, &x, constants, &mut dx0);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&dx), bits(&dx0), "{len}");
        }
    }

    #[test]
    fn affine_passes_follow_their_formulas() {
        let (x, g) = (values(37, 7), values(37, 9));
        let mut y = vec![0.0f32; 37];
        scale_shift(&x, 1.5, -0.5, &mut y);
        assert!(y.iter().zip(&x).all(|(&y, &x)| y == x * 1.5 - 0.5));
        let (mut rectified, mut with_nan) = (vec![0.0f32; 37], x.clone());
        scale_shift_relu(&x, 1.5, -0.5, &mut rectified);
        assert!(rectified.iter().zip(&y).all(|(&r, &y)| r.to_bits() == y.max(0.0).to_bits()));
        assert!(rectified.contains(&0.0) && rectified.iter().any(|&r| r > 0.0));
        with_nan[20] = f32::NAN;
        scale_shift_relu(&with_nan.clone(), 1.5, -0.5, &mut with_nan);
        assert!(with_nan[20].is_nan(), "ReLU keeps a NaN");
        let mut dx = vec![0.0f32; 37];
        centred_difference(&g, &x, [2.0, 0.25, 0.5, -1.0, 0.125], &mut dx);
        for ((&dx, &g), &x) in dx.iter().zip(&g).zip(&x) {
            assert_eq!(dx, 2.0 * (g - 0.25) - 0.5 * (x + 1.0) - 0.125);
        }
    }
}
