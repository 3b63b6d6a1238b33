//! The instruction sets the kernels use, detected once, and the one idiom for using
//! them: a token type per instruction set that only detection can make.
//!
//! Holding an [`Avx512`] or an [`Avx2Fma`] proves that the CPU has those instructions,
//! so code that takes one may call functions compiled for them; every fast path is
//! reached through [`Avx512::detect`] or [`Avx2Fma::detect`] (the elementwise kernels
//! through `avx2_dispatch!`, which generates both versions of a kernel), and falls back
//! to portable code where they return `None`. The `gemm` crates detect for their own
//! micro-kernels in the same way, at run time.
//!
//! Setting `NN_KERNELS_PORTABLE=1` in the environment makes both return `None`, so
//! that the portable paths can be tested on any machine.

mod lanes;

pub use lanes::{Lanes, Vector};

use std::sync::OnceLock;

/// What this CPU offers the kernels, detected on first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Features {
    avx2_fma: bool,
    avx512f: bool,
}

fn features() -> Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    *FEATURES.get_or_init(|| {
        if std::env::var_os("NN_KERNELS_PORTABLE").is_some_and(|v| v != "0") {
            return Features { avx2_fma: false, avx512f: false };
        }
        #[cfg(target_arch = "x86_64")]
        return Features {
            avx2_fma: std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            avx512f: std::arch::is_x86_feature_detected!("avx512f"),
        };
        #[cfg(not(target_arch = "x86_64"))]
        Features { avx2_fma: false, avx512f: false }
    })
}

/// Proof that the CPU has AVX-512F (the convolution's implicit-GEMM kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Avx512(());

impl Avx512 {
    /// The token, where this CPU has AVX-512F.
    pub fn detect() -> Option<Self> {
        features().avx512f.then_some(Avx512(()))
    }
}

/// Proof that the CPU has AVX2 and FMA (the elementwise kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Avx2Fma(());

impl Avx2Fma {
    /// The token, where this CPU has AVX2 and FMA.
    pub fn detect() -> Option<Self> {
        features().avx2_fma.then_some(Avx2Fma(()))
    }
}

/// `$vis fn $name<T: Element>(args) -> R` running `$body(args)` compiled for AVX2 and
/// FMA where the CPU has them ([`Avx2Fma::detect`]), else as portable code. `$body`
/// must be `#[inline(always)]`, so that it is compiled into each version: a body
/// called through a closure is not inlined into a `#[target_feature]` function, and
/// would run as baseline code either way.
macro_rules! avx2_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<T: Element>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:path) => {
        $(#[$meta])*
        $vis fn $name<T: $crate::Element>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if $crate::simd::Avx2Fma::detect().is_some() {
                /// # Safety
                /// The CPU must have AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<T: $crate::Element>($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                // SAFETY: detection found AVX2 and FMA on this CPU.
                return unsafe { avx2($($arg),*) };
            }
            $body($($arg),*)
        }
    };
    // The same with const parameters, which the body takes explicitly.
    ($(#[$meta:meta])* $vis:vis fn $name:ident<T: Element, $(const $c:ident: usize),+>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:ident) => {
        $(#[$meta])*
        $vis fn $name<T: $crate::Element, $(const $c: usize),+>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if $crate::simd::Avx2Fma::detect().is_some() {
                /// # Safety
                /// The CPU must have AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<T: $crate::Element, $(const $c: usize),+>($($arg: $ty),*) $(-> $ret)? {
                    $body::<T, $($c),+>($($arg),*)
                }
                // SAFETY: detection found AVX2 and FMA on this CPU.
                return unsafe { avx2::<T, $($c),+>($($arg),*) };
            }
            $body::<T, $($c),+>($($arg),*)
        }
    };
}
pub(crate) use avx2_dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    /// CI sets `NN_REQUIRE_AVX2` or `NN_REQUIRE_AVX512` on machines that have them, so
    /// that a fast path silently not taken fails instead of passing on the fallback.
    #[test]
    fn required_instruction_sets_are_detected() {
        let required = |name: &str| std::env::var_os(name).is_some_and(|v| v != "0");
        if required("NN_REQUIRE_AVX2") {
            assert!(Avx2Fma::detect().is_some(), "NN_REQUIRE_AVX2 is set but AVX2+FMA was not detected");
        }
        if required("NN_REQUIRE_AVX512") {
            assert!(Avx512::detect().is_some(), "NN_REQUIRE_AVX512 is set but AVX-512F was not detected");
        }
        #[cfg(target_arch = "x86_64")]
        if std::env::var_os("NN_KERNELS_PORTABLE").is_none() {
            assert_eq!(Avx512::detect().is_some(), std::arch::is_x86_feature_detected!("avx512f"));
        }
    }
}
