//! Vectors of lanes for the elementwise kernels, in plain arrays.

use std::ops::{Add, Mul, Sub};

/// A scalar type with a vector of lanes: what the elementwise kernels compute in.
pub trait Lanes: Copy + PartialOrd + 'static {
    /// The vector type.
    type V: Copy + Add<Output = Self::V> + Sub<Output = Self::V> + Mul<Output = Self::V>;
    /// Lanes per vector.
    const WIDTH: usize;
    /// All lanes equal to `x`.
    fn splat(x: Self) -> Self::V;
    /// The first `WIDTH` elements of `s`.
    fn load(s: &[Self]) -> Self::V;
    /// Writes the lanes to the first `WIDTH` elements of `s`.
    fn store(v: Self::V, s: &mut [Self]);
    /// Lane-wise maximum that propagates NaN: `a` where `a` is NaN or greater, else `b`.
    fn lanes_max(a: Self::V, b: Self::V) -> Self::V;
    /// 0 where every lane of every vector added so far is finite: `Σ v·0` is 0 for
    /// finite lanes and NaN for an infinite or NaN one.
    fn non_finite_probe(acc: Self::V, v: Self::V) -> Self::V;
    /// Lane-wise `if mask > 0 { a } else { b }`.
    fn select_positive(mask: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// Sum of the lanes: each half summed left to right, then the two halves added.
    fn reduce_add(v: Self::V) -> Self;
}

/// `N` lanes of `T` in a plain array. Each operation is a loop over the lanes, which
/// the compiler turns into vector instructions of whatever width the enclosing
/// function is compiled for (`avx2_dispatch!` picks AVX2 at run time); IEEE arithmetic
/// lane by lane gives the same bits at any width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vector<T, const N: usize>([T; N]);

macro_rules! lane_op {
    ($trait:ident, $method:ident, $op:tt) => {
        impl<T: Copy + std::ops::$trait<Output = T>, const N: usize> $trait for Vector<T, N> {
            type Output = Self;
            #[inline(always)]
            fn $method(self, rhs: Self) -> Self {
                let mut out = self.0;
                for (o, r) in out.iter_mut().zip(rhs.0) {
                    *o = *o $op r;
                }
                Vector(out)
            }
        }
    };
}
lane_op!(Add, add, +);
lane_op!(Sub, sub, -);
lane_op!(Mul, mul, *);

macro_rules! impl_lanes {
    ($t:ty, $n:literal) => {
        impl Lanes for $t {
            type V = Vector<$t, $n>;
            const WIDTH: usize = $n;
            #[inline(always)]
            fn splat(x: Self) -> Self::V {
                Vector([x; $n])
            }
            #[inline(always)]
            fn load(s: &[Self]) -> Self::V {
                let mut lanes = [0.0; $n];
                lanes.copy_from_slice(&s[..$n]);
                Vector(lanes)
            }
            #[inline(always)]
            fn store(v: Self::V, s: &mut [Self]) {
                s[..$n].copy_from_slice(&v.0);
            }
            #[inline(always)]
            fn lanes_max(a: Self::V, b: Self::V) -> Self::V {
                let mut out = b.0;
                for (o, a) in out.iter_mut().zip(a.0) {
                    *o = if a.is_nan() || a > *o { a } else { *o };
                }
                Vector(out)
            }
            #[inline(always)]
            fn non_finite_probe(acc: Self::V, v: Self::V) -> Self::V {
                let mut out = acc.0;
                for (o, v) in out.iter_mut().zip(v.0) {
                    *o += v * 0.0;
                }
                Vector(out)
            }
            #[inline(always)]
            fn select_positive(mask: Self::V, a: Self::V, b: Self::V) -> Self::V {
                let mut out = b.0;
                for ((o, a), m) in out.iter_mut().zip(a.0).zip(mask.0) {
                    *o = if m > 0.0 { a } else { *o };
                }
                Vector(out)
            }
            #[inline(always)]
            fn reduce_add(v: Self::V) -> Self {
                let (lo, hi) = v.0.split_at($n / 2);
                lo.iter().sum::<$t>() + hi.iter().sum::<$t>()
            }
        }
    };
}

impl_lanes!(f32, 8);
impl_lanes!(f64, 4);
