//! One call of the `gemm` crates' kernels for f32 or f64.
//!
//! We depend on `gemm-f32` and `gemm-f64` rather than the `gemm` umbrella crate, which
//! also compiles complex and f16 kernels we never call (a fifth of a cold build). The
//! umbrella's only work besides dispatch is the argument normalisation below, kept
//! identical so that results are the same bits.

use gemm_common::Parallelism;

/// An element type with a `gemm` kernel.
pub(crate) trait CrateGemm: Copy + 'static {
    /// `dst ← α·dst + β·lhs·rhs`, the kernel's own convention (m×k times k×n; column
    /// stride before row stride).
    ///
    /// # Safety
    /// As for the `gemm` crate: every index `i·rs + j·cs` in range of each matrix's
    /// dimensions lies inside its allocation, and dst aliases neither operand.
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut Self,
        dst_cs: isize,
        dst_rs: isize,
        read_dst: bool,
        lhs: *const Self,
        lhs_cs: isize,
        lhs_rs: isize,
        rhs: *const Self,
        rhs_cs: isize,
        rhs_rs: isize,
        alpha: Self,
        beta: Self,
        parallelism: Parallelism,
    );
}

macro_rules! impl_crate_gemm {
    ($t:ty, $module:path) => {
        impl CrateGemm for $t {
            #[inline]
            unsafe fn kernel(
                m: usize,
                n: usize,
                k: usize,
                dst: *mut Self,
                dst_cs: isize,
                dst_rs: isize,
                read_dst: bool,
                lhs: *const Self,
                lhs_cs: isize,
                lhs_rs: isize,
                rhs: *const Self,
                rhs_cs: isize,
                rhs_rs: isize,
                alpha: Self,
                beta: Self,
                parallelism: Parallelism,
            ) {
                use $module as kernels;
                // SAFETY: forwarded to the caller; no conjugation for real types.
                unsafe {
                    kernels::get_gemm_fn()(
                        m,
                        n,
                        k,
                        dst,
                        dst_cs,
                        dst_rs,
                        read_dst,
                        lhs,
                        lhs_cs,
                        lhs_rs,
                        rhs,
                        rhs_cs,
                        rhs_rs,
                        alpha,
                        beta,
                        false,
                        false,
                        false,
                        parallelism,
                    )
                }
            }
        }
    };
}

impl_crate_gemm!(f32, gemm_f32::gemm::f32);
impl_crate_gemm!(f64, gemm_f64::gemm::f64);

/// `dst ← α·dst + β·lhs·rhs` as the umbrella crate's `gemm::gemm` computes it: a
/// destination stored column-oriented is multiplied as its transpose (the kernels
/// prefer it), `dstᵀ = rhsᵀ·lhsᵀ`. Strides are never negative here.
///
/// # Safety
/// As for [`CrateGemm::kernel`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn crate_call<T: CrateGemm>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_cs: isize,
    dst_rs: isize,
    read_dst: bool,
    lhs: *const T,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const T,
    rhs_cs: isize,
    rhs_rs: isize,
    alpha: T,
    beta: T,
    parallelism: Parallelism,
) {
    debug_assert!([dst_cs, dst_rs, lhs_cs, lhs_rs, rhs_cs, rhs_rs].iter().all(|&s| s >= 0));
    // SAFETY: forwarded to the caller; the transposed call reads and writes the same
    // elements.
    unsafe {
        if dst_cs.abs() < dst_rs.abs() {
            T::kernel(
                n,
                m,
                k,
                dst,
                dst_rs,
                dst_cs,
                read_dst,
                rhs,
                rhs_rs,
                rhs_cs,
                lhs,
                lhs_rs,
                lhs_cs,
                alpha,
                beta,
                parallelism,
            )
        } else {
            T::kernel(
                m,
                n,
                k,
                dst,
                dst_cs,
                dst_rs,
                read_dst,
                lhs,
                lhs_cs,
                lhs_rs,
                rhs,
                rhs_cs,
                rhs_rs,
                alpha,
                beta,
                parallelism,
            )
        }
    }
}
