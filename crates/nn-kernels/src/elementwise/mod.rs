//! Elementwise kernels and reductions: activations with their derivatives, vector
//! updates, sums. Memory-bound work, so SIMD (AVX2 where the CPU has it) only
//! where it is a plain lane-wise operation; transcendental activations are scalar.

#[cfg(test)]
mod tests;

use crate::error::check_len;
use crate::simd::{avx2_dispatch, Lanes};
use crate::{Element, KernelError};
use rayon::prelude::*;

/// An elementwise activation `y = f(x)` and its derivative.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `f(x) = x`.
    Identity,
    /// `f(x) = max(x, 0)`; `f′(0)` is taken as 0.
    Relu,
    /// `f(x) = x` for `x > 0`, else `slope·x`.
    LeakyRelu {
        /// The slope for negative inputs.
        slope: f64,
    },
    /// `f(x) = 1 / (1 + e^{−x})`.
    Sigmoid,
    /// `f(x) = tanh x`.
    Tanh,
    /// `f(x) = x` for `x > 0`, else `alpha·(e^x − 1)`.
    Elu {
        /// The scale of the negative branch.
        alpha: f64,
    },
    /// `f(x) = ln(1 + e^x)`, computed without overflow.
    Softplus,
    /// GELU in its tanh form: `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
    Gelu,
}

/// Whole vectors then a scalar tail: `body(lanes)` on full vectors, `tail(i)` on the rest.
macro_rules! lanes_then_tail {
    ($t:ty, $len:expr, |$i:ident| $vector:block, |$j:ident| $scalar:block) => {{
        let width = <$t as Lanes>::WIDTH;
        let full = $len / width * width;
        let mut $i = 0;
        while $i < full {
            $vector;
            $i += width;
        }
        for $j in full..$len {
            $scalar;
        }
    }};
}

/// Elements per parallel task of the elementwise kernels: below two of these a
/// single thread is faster than a hand-off; above, both cores' bandwidth is used.
/// Each element is computed alone, so the split never changes a result.
pub(crate) const PARALLEL_CHUNK: usize = 1 << 15;

/// `y = f(x)` elementwise.
///
/// # Errors
/// [`KernelError::BufferLength`] when the slices differ in length.
pub fn activation_forward<T: Element>(act: Activation, x: &[T], y: &mut [T]) -> Result<(), KernelError> {
    check_len("activation forward: y", x.len(), y.len())?;
    forward_unchecked(act, x, y);
    Ok(())
}

fn forward_unchecked<T: Element>(act: Activation, x: &[T], y: &mut [T]) {
    if x.len() >= 2 * PARALLEL_CHUNK {
        y.par_chunks_mut(PARALLEL_CHUNK)
            .zip(x.par_chunks(PARALLEL_CHUNK))
            .for_each(|(y, x)| forward_unchecked(act, x, y));
        return;
    }
    match act {
        Activation::Relu => relu_forward_dispatched(x, y),
        _ => {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = scalar_forward(act, x);
            }
        }
    }
}

/// `dx = dy · f′(x)` elementwise, with `y = f(x)` available where the derivative is
/// cheaper from the output.
///
/// # Errors
/// [`KernelError::BufferLength`] when the slices differ in length.
pub fn activation_backward<T: Element>(
    act: Activation,
    x: &[T],
    y: &[T],
    dy: &[T],
    dx: &mut [T],
) -> Result<(), KernelError> {
    check_len("activation backward: x", dx.len(), x.len())?;
    check_len("activation backward: y", dx.len(), y.len())?;
    check_len("activation backward: dy", dx.len(), dy.len())?;
    backward_unchecked(act, x, y, dy, dx);
    Ok(())
}

fn backward_unchecked<T: Element>(act: Activation, x: &[T], y: &[T], dy: &[T], dx: &mut [T]) {
    if dx.len() >= 2 * PARALLEL_CHUNK {
        let inputs = x.par_chunks(PARALLEL_CHUNK).zip(y.par_chunks(PARALLEL_CHUNK)).zip(dy.par_chunks(PARALLEL_CHUNK));
        dx.par_chunks_mut(PARALLEL_CHUNK)
            .zip(inputs)
            .for_each(|(dx, ((x, y), dy))| backward_unchecked(act, x, y, dy, dx));
        return;
    }
    match act {
        Activation::Relu => relu_backward_dispatched(y, dy, dx),
        _ => {
            for i in 0..dx.len() {
                dx[i] = dy[i] * scalar_derivative(act, x[i], y[i]);
            }
        }
    }
}

/// Sets every element to zero, on all threads for large slices.
pub fn fill_zero<T: Element>(x: &mut [T]) {
    if x.len() >= 2 * PARALLEL_CHUNK {
        x.par_chunks_mut(PARALLEL_CHUNK).for_each(|x| x.fill(T::zero()));
    } else {
        x.fill(T::zero());
    }
}

/// The settings of one SGD update (see [`sgd_update`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdStep {
    /// Learning rate η.
    pub lr: f64,
    /// Momentum μ (0: plain SGD, and no velocity is read or written).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay λ, added to the gradient.
    pub weight_decay: f64,
}

/// One SGD step on a parameter: `g ← g + λw`; with momentum `v ← μv + g` and
/// `w ← w − η·(v, or g + μv for Nesterov)`, else `w ← w − η·g`. `velocity` is ignored
/// (and may be empty) without momentum.
///
/// # Errors
/// [`KernelError::BufferLength`] when `g` or `velocity` is not as long as `w`.
pub fn sgd_update<T: Element>(step: SgdStep, w: &mut [T], g: &[T], velocity: &mut [T]) -> Result<(), KernelError> {
    check_len("sgd update: gradient", w.len(), g.len())?;
    if step.momentum != 0.0 {
        check_len("sgd update: velocity", w.len(), velocity.len())?;
    }
    sgd_unchecked(step, w, g, velocity);
    Ok(())
}

fn sgd_unchecked<T: Element>(step: SgdStep, w: &mut [T], g: &[T], velocity: &mut [T]) {
    let momentum = step.momentum != 0.0;
    if w.len() >= 2 * PARALLEL_CHUNK {
        let (w, g) = (w.par_chunks_mut(PARALLEL_CHUNK), g.par_chunks(PARALLEL_CHUNK));
        if momentum {
            w.zip(g).zip(velocity.par_chunks_mut(PARALLEL_CHUNK)).for_each(|((w, g), v)| sgd_unchecked(step, w, g, v));
        } else {
            w.zip(g).for_each(|(w, g)| sgd_unchecked(step, w, g, &mut []));
        }
        return;
    }
    let (lr, mu, wd) = (T::from_f64(step.lr), T::from_f64(step.momentum), T::from_f64(step.weight_decay));
    if !momentum {
        for (w, &g) in w.iter_mut().zip(g) {
            *w -= lr * (g + wd * *w);
        }
        return;
    }
    for ((w, &g), v) in w.iter_mut().zip(g).zip(velocity.iter_mut()) {
        let g = g + wd * *w;
        *v = flush_subnormal(mu * *v + g);
        *w -= lr * if step.nesterov { g + mu * *v } else { *v };
    }
}

/// Zero for a subnormal value. A velocity or moment whose gradient stays zero (a
/// weight on an always-blank pixel) decays geometrically into the subnormal range,
/// where every operation on it costs ~100× more and once dominated an MLP training
/// step. The value lost is below 1.2e-38 (f32).
#[inline(always)]
fn flush_subnormal<T: Element>(x: T) -> T {
    if x.abs() < T::min_positive_value() {
        T::zero()
    } else {
        x
    }
}

/// The settings of one Adam update (see [`adam_update`]), with the bias corrections
/// of step t already folded in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    /// `η·√(1−β₂ᵗ)/(1−β₁ᵗ)`.
    pub step_size: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// `ε·√(1−β₂ᵗ)`.
    pub epsilon: f64,
    /// L2 decay added to the gradient (Adam).
    pub l2: f64,
    /// Decoupled decay `η·λ` taken off the weight (AdamW).
    pub decay: f64,
}

/// One Adam step: `g ← g + l2·w`, `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
/// `w ← w − decay·w − step_size·m/(√v + ε)`.
///
/// # Errors
/// [`KernelError::BufferLength`] when `g`, `m` or `v` is not as long as `w`.
pub fn adam_update<T: Element>(
    step: AdamStep,
    w: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
) -> Result<(), KernelError> {
    check_len("adam update: gradient", w.len(), g.len())?;
    check_len("adam update: first moment", w.len(), m.len())?;
    check_len("adam update: second moment", w.len(), v.len())?;
    adam_unchecked(step, w, g, m, v);
    Ok(())
}

fn adam_unchecked<T: Element>(step: AdamStep, w: &mut [T], g: &[T], m: &mut [T], v: &mut [T]) {
    if w.len() >= 2 * PARALLEL_CHUNK {
        let moments = m.par_chunks_mut(PARALLEL_CHUNK).zip(v.par_chunks_mut(PARALLEL_CHUNK));
        w.par_chunks_mut(PARALLEL_CHUNK)
            .zip(g.par_chunks(PARALLEL_CHUNK))
            .zip(moments)
            .for_each(|((w, g), (m, v))| adam_unchecked(step, w, g, m, v));
        return;
    }
    let f = T::from_f64;
    let (b1, b2, one_b1, one_b2) = (f(step.beta1), f(step.beta2), f(1.0 - step.beta1), f(1.0 - step.beta2));
    let (size, eps, l2, decay) = (f(step.step_size), f(step.epsilon), f(step.l2), f(step.decay));
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g + l2 * *w;
        *m = flush_subnormal(b1 * *m + one_b1 * g);
        *v = flush_subnormal(b2 * *v + one_b2 * g * g);
        *w -= decay * *w + size * *m / (v.sqrt() + eps);
    }
}

/// `f(x)` for one value.
pub fn scalar_forward<T: Element>(act: Activation, x: T) -> T {
    let zero = T::zero();
    match act {
        Activation::Identity => x,
        Activation::Relu => relu(x),
        Activation::LeakyRelu { slope } => {
            if x > zero {
                x
            } else {
                T::from_f64(slope) * x
            }
        }
        Activation::Sigmoid => stable_sigmoid(x),
        Activation::Tanh => x.tanh(),
        Activation::Elu { alpha } => {
            if x > zero {
                x
            } else {
                T::from_f64(alpha) * x.exp_m1()
            }
        }
        Activation::Softplus => x.max(zero) + (-x.abs()).exp().ln_1p(),
        Activation::Gelu => {
            let (half, c, k) =
                (T::from_f64(0.5), T::from_f64((2.0 / std::f64::consts::PI).sqrt()), T::from_f64(0.044715));
            half * x * (T::one() + (c * (x + k * x * x * x)).tanh())
        }
    }
}

/// `f′(x)`, given `y = f(x)`.
pub fn scalar_derivative<T: Element>(act: Activation, x: T, y: T) -> T {
    let (zero, one) = (T::zero(), T::one());
    match act {
        Activation::Identity => one,
        Activation::Relu => {
            if y > zero {
                one
            } else {
                zero
            }
        }
        Activation::LeakyRelu { slope } => {
            if x > zero {
                one
            } else {
                T::from_f64(slope)
            }
        }
        Activation::Sigmoid => y * (one - y),
        Activation::Tanh => one - y * y,
        Activation::Elu { alpha } => {
            if x > zero {
                one
            } else {
                y + T::from_f64(alpha)
            }
        }
        Activation::Softplus => stable_sigmoid(x),
        Activation::Gelu => {
            let (half, c, k) =
                (T::from_f64(0.5), T::from_f64((2.0 / std::f64::consts::PI).sqrt()), T::from_f64(0.044715));
            let t = (c * (x + k * x * x * x)).tanh();
            half * (one + t) + half * x * (one - t * t) * c * (one + T::from_f64(3.0) * k * x * x)
        }
    }
}

/// `1 / (1 + e^{−x})` without overflow for large |x|.
fn stable_sigmoid<T: Element>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

/// `max(x, 0)`, NaN for NaN (as IEEE's maximum and PyTorch do): a NaN input must reach
/// the loss, where training notices it, not vanish into a zero.
#[inline(always)]
pub(crate) fn relu<T: Element>(x: T) -> T {
    if x.is_nan() || x > T::zero() {
        x
    } else {
        T::zero()
    }
}

#[inline(always)]
pub(crate) fn relu_forward<T: Element>(x: &[T], y: &mut [T]) {
    let zero = T::splat(T::zero());
    lanes_then_tail!(T, x.len(), |i| { T::store(T::lanes_max(T::load(&x[i..]), zero), &mut y[i..]) }, |j| {
        y[j] = relu(x[j])
    });
}

#[inline(always)]
pub(crate) fn relu_backward<T: Element>(y: &[T], dy: &[T], dx: &mut [T]) {
    let zero = T::splat(T::zero());
    lanes_then_tail!(
        T,
        dx.len(),
        |i| { T::store(T::select_positive(T::load(&y[i..]), T::load(&dy[i..]), zero), &mut dx[i..],) },
        |j| { dx[j] = if y[j] > T::zero() { dy[j] } else { T::zero() } }
    );
}

/// `x[i] += value` for every i.
pub fn add_scalar<T: Element>(x: &mut [T], value: T) {
    add_scalar_dispatched(x, value)
}

#[inline(always)]
pub(crate) fn add_scalar_body<T: Element>(x: &mut [T], value: T) {
    let v = T::splat(value);
    lanes_then_tail!(T, x.len(), |i| { T::store(T::load(&x[i..]) + v, &mut x[i..]) }, |j| { x[j] += value });
}

/// `dst[i] += src[i]`.
///
/// # Errors
/// [`KernelError::BufferLength`] when the slices differ in length.
pub fn add_assign<T: Element>(dst: &mut [T], src: &[T]) -> Result<(), KernelError> {
    axpy(T::one(), src, dst)
}

/// `y[i] += alpha·x[i]`.
///
/// # Errors
/// [`KernelError::BufferLength`] when the slices differ in length.
pub fn axpy<T: Element>(alpha: T, x: &[T], y: &mut [T]) -> Result<(), KernelError> {
    check_len("axpy: x", y.len(), x.len())?;
    if y.len() >= 2 * PARALLEL_CHUNK {
        y.par_chunks_mut(PARALLEL_CHUNK)
            .zip(x.par_chunks(PARALLEL_CHUNK))
            .for_each(|(y, x)| axpy_dispatched(alpha, x, y));
    } else {
        axpy_dispatched(alpha, x, y);
    }
    Ok(())
}

/// `out[i] = a[i] + b[i]`: one pass where a copy and an [`add_assign`] take two.
///
/// # Errors
/// [`KernelError::BufferLength`] when the slices differ in length.
pub fn add<T: Element>(a: &[T], b: &[T], out: &mut [T]) -> Result<(), KernelError> {
    in_pieces(["add: a", "add: b"], a, b, out, add_dispatched)
}

/// `kernel(a, b, out)` on equally long slices (named `names` in the error), over
/// `PARALLEL_CHUNK` pieces on all threads for long ones.
fn in_pieces<T: Element>(
    names: [&'static str; 2],
    a: &[T],
    b: &[T],
    out: &mut [T],
    kernel: fn(&[T], &[T], &mut [T]),
) -> Result<(), KernelError> {
    check_len(names[0], out.len(), a.len())?;
    check_len(names[1], out.len(), b.len())?;
    if out.len() >= 2 * PARALLEL_CHUNK {
        let inputs = a.par_chunks(PARALLEL_CHUNK).zip(b.par_chunks(PARALLEL_CHUNK));
        out.par_chunks_mut(PARALLEL_CHUNK).zip(inputs).for_each(|(out, (a, b))| kernel(a, b, out));
    } else {
        kernel(a, b, out);
    }
    Ok(())
}

#[inline(always)]
pub(crate) fn add_body<T: Element>(a: &[T], b: &[T], out: &mut [T]) {
    lanes_then_tail!(T, out.len(), |i| { T::store(T::load(&a[i..]) + T::load(&b[i..]), &mut out[i..]) }, |j| {
        out[j] = a[j] + b[j]
    });
}

/// `out[i] = max(a[i] + b[i], 0)` (NaN stays NaN, as in [`Activation::Relu`]): a
/// residual sum and the ReLU after it in one pass.
///
/// # Errors
/// [`KernelError::BufferLength`] when the slices differ in length.
pub fn add_relu<T: Element>(a: &[T], b: &[T], out: &mut [T]) -> Result<(), KernelError> {
    in_pieces(["add relu: a", "add relu: b"], a, b, out, add_relu_dispatched)
}

#[inline(always)]
pub(crate) fn add_relu_body<T: Element>(a: &[T], b: &[T], out: &mut [T]) {
    let zero = T::splat(T::zero());
    lanes_then_tail!(
        T,
        out.len(),
        |i| { T::store(T::lanes_max(T::load(&a[i..]) + T::load(&b[i..]), zero), &mut out[i..]) },
        |j| { out[j] = relu(a[j] + b[j]) }
    );
}

/// `dst ← src`, on all threads for long slices (one core's copy does not reach the
/// memory bandwidth two have).
///
/// # Errors
/// [`KernelError::BufferLength`] when the slices differ in length.
pub fn copy<T: Element>(src: &[T], dst: &mut [T]) -> Result<(), KernelError> {
    check_len("copy: src", dst.len(), src.len())?;
    if dst.len() >= 2 * PARALLEL_CHUNK {
        dst.par_chunks_mut(PARALLEL_CHUNK).zip(src.par_chunks(PARALLEL_CHUNK)).for_each(|(d, s)| d.copy_from_slice(s));
    } else {
        dst.copy_from_slice(src);
    }
    Ok(())
}

#[inline(always)]
pub(crate) fn axpy_body<T: Element>(alpha: T, x: &[T], y: &mut [T]) {
    let a = T::splat(alpha);
    lanes_then_tail!(T, y.len(), |i| { T::store(T::load(&y[i..]) + a * T::load(&x[i..]), &mut y[i..]) }, |j| {
        y[j] += alpha * x[j]
    });
}

/// `x[i] *= alpha`.
pub fn scale<T: Element>(x: &mut [T], alpha: T) {
    scale_dispatched(x, alpha)
}

#[inline(always)]
pub(crate) fn scale_body<T: Element>(x: &mut [T], alpha: T) {
    let a = T::splat(alpha);
    lanes_then_tail!(T, x.len(), |i| { T::store(T::load(&x[i..]) * a, &mut x[i..]) }, |j| { x[j] *= alpha });
}

/// `Σ x[i]`, in a fixed order (vector lanes, then the lanes added, then the tail), so
/// the same input always gives the same bits.
pub fn sum<T: Element>(x: &[T]) -> T {
    sum_dispatched(x)
}

#[inline(always)]
pub(crate) fn sum_body<T: Element>(x: &[T]) -> T {
    let mut acc = T::splat(T::zero());
    let mut tail = T::zero();
    lanes_then_tail!(T, x.len(), |i| { acc = acc + T::load(&x[i..]) }, |j| { tail += x[j] });
    T::reduce_add(acc) + tail
}

avx2_dispatch!(fn relu_forward_dispatched<T: Element>(x: &[T], y: &mut [T]) => relu_forward);
avx2_dispatch!(fn relu_backward_dispatched<T: Element>(y: &[T], dy: &[T], dx: &mut [T]) => relu_backward);
avx2_dispatch!(fn add_scalar_dispatched<T: Element>(x: &mut [T], value: T) => add_scalar_body);
avx2_dispatch!(fn add_relu_dispatched<T: Element>(a: &[T], b: &[T], out: &mut [T]) => add_relu_body);
avx2_dispatch!(fn add_dispatched<T: Element>(a: &[T], b: &[T], out: &mut [T]) => add_body);
avx2_dispatch!(fn axpy_dispatched<T: Element>(alpha: T, x: &[T], y: &mut [T]) => axpy_body);
avx2_dispatch!(fn scale_dispatched<T: Element>(x: &mut [T], alpha: T) => scale_body);
avx2_dispatch!(fn sum_dispatched<T: Element>(x: &[T]) -> T => sum_body);
avx2_dispatch!(fn all_finite_dispatched<T: Element>(x: &[T]) -> bool => all_finite_body);

/// Whether every element is finite (no NaN, no infinity).
///
/// A pass of independent vector operations with no branch, cheap enough to run over
/// every gradient of every training step.
pub fn all_finite<T: Element>(x: &[T]) -> bool {
    if x.len() >= 2 * PARALLEL_CHUNK {
        return x.par_chunks(PARALLEL_CHUNK).all(all_finite_dispatched);
    }
    all_finite_dispatched(x)
}

#[inline(always)]
pub(crate) fn all_finite_body<T: Element>(x: &[T]) -> bool {
    // Four accumulators, so that the adds do not wait on each other.
    let width = <T as Lanes>::WIDTH;
    let zero = T::splat(T::zero());
    let mut acc = [zero; 4];
    let mut blocks = x.chunks_exact(4 * width);
    for block in &mut blocks {
        for (a, lanes) in acc.iter_mut().zip(block.chunks_exact(width)) {
            *a = T::non_finite_probe(*a, T::load(lanes));
        }
    }
    let total = T::reduce_add(acc[0] + acc[1] + (acc[2] + acc[3]));
    total == T::zero() && blocks.remainder().iter().all(|v| v.is_finite())
}
