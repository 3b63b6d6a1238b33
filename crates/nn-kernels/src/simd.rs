//! Run-time choice of instruction set for the elementwise kernels.
//!
//! Each kernel is one `#[inline(always)]` body written with `wide` vectors. [`dispatch`]
//! runs it inside a function compiled for AVX2+FMA when the CPU has them (checked once
//! with `is_x86_feature_detected!`), and as portable code otherwise, so one binary is
//! fast on new CPUs and correct on old ones. Tests run both paths.

use std::ops::{Add, Mul, Sub};
use std::sync::atomic::{AtomicU8, Ordering};

/// The instruction set [`dispatch`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdLevel {
    /// Baseline code for the compile target (SSE2 on x86-64).
    Portable,
    /// AVX2 with FMA.
    Avx2Fma,
}

const UNKNOWN: u8 = 0;
const PORTABLE: u8 = 1;
const AVX2: u8 = 2;
static LEVEL: AtomicU8 = AtomicU8::new(UNKNOWN);

/// The instruction set this CPU supports for the elementwise kernels.
pub fn detected_level() -> SimdLevel {
    match LEVEL.load(Ordering::Relaxed) {
        PORTABLE => SimdLevel::Portable,
        AVX2 => SimdLevel::Avx2Fma,
        _ => {
            let level = detect();
            LEVEL.store(if level == SimdLevel::Avx2Fma { AVX2 } else { PORTABLE }, Ordering::Relaxed);
            level
        }
    }
}

fn detect() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return SimdLevel::Avx2Fma;
    }
    SimdLevel::Portable
}

/// Runs `body` compiled for the best instruction set this CPU has.
#[inline(always)]
pub fn dispatch<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if detected_level() == SimdLevel::Avx2Fma {
        // SAFETY: `detected_level` returned Avx2Fma only after
        // `is_x86_feature_detected!` confirmed AVX2 and FMA on this CPU.
        return unsafe { with_avx2_fma(body) };
    }
    body()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2_fma<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// A scalar type with a `wide` vector type: the lanes the kernels compute in.
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
    /// Lane-wise maximum.
    fn lanes_max(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise `if mask > 0 { a } else { b }`.
    fn select_positive(mask: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// Sum of the lanes.
    fn reduce_add(v: Self::V) -> Self;
}

macro_rules! impl_lanes {
    ($t:ty, $v:ty, $n:literal) => {
        impl Lanes for $t {
            type V = $v;
            const WIDTH: usize = $n;
            #[inline(always)]
            fn splat(x: Self) -> Self::V {
                <$v>::splat(x)
            }
            #[inline(always)]
            fn load(s: &[Self]) -> Self::V {
                let lanes: [$t; $n] = s[..$n].try_into().expect("WIDTH elements");
                <$v>::new(lanes)
            }
            #[inline(always)]
            fn store(v: Self::V, s: &mut [Self]) {
                s[..$n].copy_from_slice(&v.to_array());
            }
            #[inline(always)]
            fn lanes_max(a: Self::V, b: Self::V) -> Self::V {
                a.max(b)
            }
            #[inline(always)]
            fn select_positive(mask: Self::V, a: Self::V, b: Self::V) -> Self::V {
                mask.simd_gt(<$v>::splat(0.0)).bitselect(a, b)
            }
            #[inline(always)]
            fn reduce_add(v: Self::V) -> Self {
                v.reduce_add()
            }
        }
    };
}

impl_lanes!(f32, wide::f32x8, 8);
impl_lanes!(f64, wide::f64x4, 4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_matches_cpu() {
        let level = detected_level();
        // CI can insist that the fast path is really exercised on its machines.
        if std::env::var_os("NN_REQUIRE_AVX2").is_some() {
            assert_eq!(level, SimdLevel::Avx2Fma, "NN_REQUIRE_AVX2 is set but AVX2+FMA was not detected");
        }
        assert_eq!(level, detect());
    }
}
