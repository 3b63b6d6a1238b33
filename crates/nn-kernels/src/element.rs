use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// A floating-point element type the kernels support: `f32` or `f64`.
pub trait Element:
    num_traits::Float
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + crate::simd::Lanes
    + 'static
{
    /// The type's name as used in file formats ("F32" or "F64").
    const DTYPE: &'static str;

    /// Converts from `f64`, rounding to nearest.
    fn from_f64(value: f64) -> Self;

    /// Widens (or keeps) the value as `f64`.
    fn as_f64(self) -> f64;

    /// The slice itself when `Self` is `f32`, else `None`: lets a generic kernel hand
    /// its work to code written for `f32` alone.
    fn as_f32(values: &[Self]) -> Option<&[f32]>;

    /// The mutable counterpart of [`Element::as_f32`].
    fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]>;

    /// `C ← α·A·B + β·C` on strided matrices: A is m×k, B is k×n, C is m×n (the `gemm`
    /// crate's kernels, chosen at run time for this CPU), on the calling thread when
    /// `threads` ≤ 1, else on that many workers of the current rayon pool. When β is
    /// zero, C is not read.
    ///
    /// # Safety
    /// Every index `i·rs + j·cs` in range of each matrix's dimensions must lie inside
    /// the allocation its pointer points into, and C must not alias A or B.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_strided(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
        threads: usize,
    );
}

macro_rules! impl_element {
    ($t:ty, $name:literal, |$values:ident| $as_f32:expr) => {
        impl Element for $t {
            const DTYPE: &'static str = $name;

            #[inline(always)]
            fn from_f64(value: f64) -> Self {
                value as $t
            }

            #[inline(always)]
            fn as_f64(self) -> f64 {
                self as f64
            }

            #[inline(always)]
            fn as_f32($values: &[Self]) -> Option<&[f32]> {
                $as_f32
            }

            #[inline(always)]
            fn as_f32_mut($values: &mut [Self]) -> Option<&mut [f32]> {
                $as_f32
            }

            #[inline]
            unsafe fn gemm_strided(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
                threads: usize,
            ) {
                let parallelism =
                    if threads > 1 { gemm_common::Parallelism::Rayon(threads) } else { gemm_common::Parallelism::None };
                // SAFETY: the caller upholds the contract stated on this method, which
                // is the `gemm` kernels'. They compute dst ← α′·dst + β′·lhs·rhs, so our
                // α and β trade places, and dst is read only when β ≠ 0.
                unsafe {
                    crate::gemm::crate_call::<$t>(
                        m,
                        n,
                        k,
                        c,
                        csc,
                        rsc,
                        beta != 0.0,
                        a,
                        csa,
                        rsa,
                        b,
                        csb,
                        rsb,
                        beta,
                        alpha,
                        parallelism,
                    )
                }
            }
        }
    };
}

impl_element!(f32, "F32", |values| Some(values));
impl_element!(f64, "F64", |_values| None);
