//! Elementwise kernels and reductions: activations with their derivatives, vector
//! updates, sums. Memory-bound work, so SIMD (through [`crate::simd::dispatch`]) only
//! where it is a plain lane-wise operation; transcendental activations are scalar.

#[cfg(test)]
mod tests;

use crate::simd::{dispatch, Lanes};
use crate::Element;

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

/// `y = f(x)` elementwise. Panics if the lengths differ (internal callers check).
pub fn activation_forward<T: Element>(act: Activation, x: &[T], y: &mut [T]) {
    assert_eq!(x.len(), y.len(), "activation_forward: length mismatch");
    match act {
        Activation::Relu => dispatch(|| relu_forward(x, y)),
        _ => {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = scalar_forward(act, x);
            }
        }
    }
}

/// `dx = dy · f′(x)` elementwise, with `y = f(x)` available where the derivative is
/// cheaper from the output. Panics if the lengths differ (internal callers check).
pub fn activation_backward<T: Element>(act: Activation, x: &[T], y: &[T], dy: &[T], dx: &mut [T]) {
    assert!(x.len() == dx.len() && y.len() == dx.len() && dy.len() == dx.len(), "activation_backward: length mismatch");
    match act {
        Activation::Relu => dispatch(|| relu_backward(y, dy, dx)),
        _ => {
            for i in 0..dx.len() {
                dx[i] = dy[i] * scalar_derivative(act, x[i], y[i]);
            }
        }
    }
}

/// `f(x)` for one value.
pub fn scalar_forward<T: Element>(act: Activation, x: T) -> T {
    let zero = T::zero();
    match act {
        Activation::Identity => x,
        Activation::Relu => x.max(zero),
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

#[inline(always)]
pub(crate) fn relu_forward<T: Element>(x: &[T], y: &mut [T]) {
    let zero = T::splat(T::zero());
    lanes_then_tail!(T, x.len(), |i| { T::store(T::lanes_max(T::load(&x[i..]), zero), &mut y[i..]) }, |j| {
        y[j] = x[j].max(T::zero())
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
    dispatch(|| add_scalar_body(x, value))
}

#[inline(always)]
pub(crate) fn add_scalar_body<T: Element>(x: &mut [T], value: T) {
    let v = T::splat(value);
    lanes_then_tail!(T, x.len(), |i| { T::store(T::load(&x[i..]) + v, &mut x[i..]) }, |j| { x[j] += value });
}

/// `dst[i] += src[i]`. Panics if the lengths differ (internal callers check).
pub fn add_assign<T: Element>(dst: &mut [T], src: &[T]) {
    axpy(T::one(), src, dst)
}

/// `y[i] += alpha·x[i]`. Panics if the lengths differ.
pub fn axpy<T: Element>(alpha: T, x: &[T], y: &mut [T]) {
    assert_eq!(x.len(), y.len(), "axpy: length mismatch");
    dispatch(|| axpy_body(alpha, x, y))
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
    dispatch(|| scale_body(x, alpha))
}

#[inline(always)]
pub(crate) fn scale_body<T: Element>(x: &mut [T], alpha: T) {
    let a = T::splat(alpha);
    lanes_then_tail!(T, x.len(), |i| { T::store(T::load(&x[i..]) * a, &mut x[i..]) }, |j| { x[j] *= alpha });
}

/// `Σ x[i]`, in a fixed order (vector lanes, then the lanes added, then the tail), so
/// the same input always gives the same bits.
pub fn sum<T: Element>(x: &[T]) -> T {
    dispatch(|| sum_body(x))
}

#[inline(always)]
pub(crate) fn sum_body<T: Element>(x: &[T]) -> T {
    let mut acc = T::splat(T::zero());
    let mut tail = T::zero();
    lanes_then_tail!(T, x.len(), |i| { acc = acc + T::load(&x[i..]) }, |j| { tail += x[j] });
    T::reduce_add(acc) + tail
}
