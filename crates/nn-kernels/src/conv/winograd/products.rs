//! The point products of a block: for each transformed point, a small GEMM between
//! tiles and channels. On AVX2 (f32) they run in a kernel that reads both operands
//! where the transforms left them: a point's operands are a few KB and K is a layer's
//! channel count or a block's tiles, too short for packing them to pay; elsewhere the
//! gemm crate computes them.

use crate::gemm::{gemm_ld, MatRef, Transpose};
#[cfg(target_arch = "x86_64")]
use crate::simd::Avx2Fma;
use crate::Element;

/// A strided operand: element (i, k) at `data[i * row + k * step]`, with `row` or
/// `step` equal to 1.
#[derive(Debug, Clone, Copy)]
pub(super) struct Strided<'a, T> {
    pub(super) data: &'a [T],
    pub(super) row: usize,
    pub(super) step: usize,
}

impl<'a, T> Strided<'a, T> {
    /// The same operand as the gemm crate's view of an `m×k` matrix.
    fn matrix(self) -> MatRef<'a, T> {
        if self.step == 1 {
            MatRef::new(self.data, Transpose::No, self.row)
        } else {
            assert_eq!(self.row, 1, "one of the strides is 1");
            MatRef::new(self.data, Transpose::Yes, self.step)
        }
    }
}

/// `c[i·ldc + j] = Σ_k a(i, k) · b[k·ldb + j]` for `i < m`, `j < n`, added to what `c`
/// holds when `accumulate`.
#[allow(clippy::too_many_arguments)]
pub(super) fn product<T: Element>(
    (m, n, k): (usize, usize, usize),
    a: Strided<'_, T>,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let (Some(isa), Some(a_data), Some(b), Some(c)) =
        (Avx2Fma::detect(), T::as_f32(a.data), T::as_f32(b), T::as_f32_mut(c))
    {
        if n % avx2::WIDTH == 0 {
            let a = Strided { data: a_data, row: a.row, step: a.step };
            return avx2::product(isa, (m, n, k), a, b, ldb, c, ldc, accumulate);
        }
    }
    let beta = if accumulate { T::one() } else { T::zero() };
    gemm_ld(m, n, k, T::one(), a.matrix(), MatRef::new(b, Transpose::No, ldb), beta, c, ldc);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Strided;
    use crate::simd::Avx2Fma;
    use std::arch::x86_64::*;

    /// Columns of C in one vector: `n` must be a multiple.
    pub(super) const WIDTH: usize = 8;

    /// Rows and vectors of C a kernel call keeps in registers (12 of the 16, plus two
    /// of B and one broadcast of A).
    const ROWS: usize = 6;
    const VECTORS: usize = 2;

    /// [`super::product`] for f32, `n` a multiple of [`WIDTH`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn product(
        isa: Avx2Fma,
        (m, n, k): (usize, usize, usize),
        a: Strided<'_, f32>,
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        let _ = isa;
        assert!(n % WIDTH == 0 && ldb >= n && ldc >= n, "product: n, ldb, ldc");
        if k > 0 {
            assert!((m - 1) * a.row + (k - 1) * a.step < a.data.len(), "product: A out of bounds");
            assert!((k - 1) * ldb + n <= b.len(), "product: B out of bounds");
        }
        assert!((m - 1) * ldc + n <= c.len(), "product: C out of bounds");
        // SAFETY: the token proves AVX2 and FMA; the assertions above bound every
        // index the kernels form (rows below m, columns below n, steps below k), and
        // `c` is a unique borrow.
        unsafe { product_avx2((m, n, k), a, b.as_ptr(), ldb, c.as_mut_ptr(), ldc, accumulate) }
    }

    /// Panels of `VECTORS · WIDTH` columns, each over groups of `ROWS` rows, so that a
    /// panel of B (K rows of 64 bytes) stays in L1 while A's rows pass.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn product_avx2(
        (m, n, k): (usize, usize, usize),
        a: Strided<'_, f32>,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let a_ptr = a.data.as_ptr();
        for j in (0..n).step_by(VECTORS * WIDTH) {
            let vectors = ((n - j) / WIDTH).min(VECTORS);
            for i in (0..m).step_by(ROWS) {
                let rows = (m - i).min(ROWS);
                let call = Call {
                    k,
                    a: a_ptr.add(i * a.row),
                    a_row: a.row,
                    a_step: a.step,
                    b: b.add(j),
                    ldb,
                    c: c.add(i * ldc + j),
                    ldc,
                    accumulate,
                };
                match (rows, vectors) {
                    (6, 2) => kernel::<6, 2>(call),
                    (5, 2) => kernel::<5, 2>(call),
                    (4, 2) => kernel::<4, 2>(call),
                    (3, 2) => kernel::<3, 2>(call),
                    (2, 2) => kernel::<2, 2>(call),
                    (1, 2) => kernel::<1, 2>(call),
                    (6, _) => kernel::<6, 1>(call),
                    (5, _) => kernel::<5, 1>(call),
                    (4, _) => kernel::<4, 1>(call),
                    (3, _) => kernel::<3, 1>(call),
                    (2, _) => kernel::<2, 1>(call),
                    _ => kernel::<1, 1>(call),
                }
            }
        }
    }

    /// One kernel call's operands: `R × V·WIDTH` of C from A's first R rows and B's
    /// first V vectors of columns.
    #[derive(Clone, Copy)]
    struct Call {
        k: usize,
        a: *const f32,
        a_row: usize,
        a_step: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    }

    /// Caller: every `a + r·a_row + s·a_step` (r < R, s < k), `b + s·ldb + v·WIDTH`
    /// (v < V) and `c + r·ldc + v·WIDTH` with its `WIDTH` lanes lies in its operand.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn kernel<const R: usize, const V: usize>(call: Call) {
        let mut sums = [[_mm256_setzero_ps(); V]; R];
        if call.accumulate {
            for (r, sums) in sums.iter_mut().enumerate() {
                for (v, sum) in sums.iter_mut().enumerate() {
                    *sum = _mm256_loadu_ps(call.c.add(r * call.ldc + v * WIDTH));
                }
            }
        }
        // A's rows as pointers of their own, stepped by one shared offset: an address
        // per broadcast that needs no arithmetic of its own.
        let rows: [*const f32; R] = std::array::from_fn(|r| call.a.add(r * call.a_row));
        let mut b = call.b;
        for s in 0..call.k {
            let columns: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(b.add(v * WIDTH)));
            let offset = s * call.a_step;
            for (sums, row) in sums.iter_mut().zip(rows) {
                let x = _mm256_broadcast_ss(&*row.add(offset));
                for (sum, column) in sums.iter_mut().zip(columns) {
                    *sum = _mm256_fmadd_ps(x, column, *sum);
                }
            }
            b = b.add(call.ldb);
        }
        for (r, sums) in sums.iter().enumerate() {
            for (v, sum) in sums.iter().enumerate() {
                _mm256_storeu_ps(call.c.add(r * call.ldc + v * WIDTH), *sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape class of the AVX2 kernel (row tails 1–5, a single-vector panel,
    /// both stride orders of A, K of 0 and 1, accumulation) against sums in f64;
    /// also the portable path.
    #[test]
    fn products_match_the_direct_sums() {
        let value = |i: usize| ((i * 7919 % 1013) as f32 - 506.0) / 253.0;
        for (m, n, k) in [(13, 24, 37), (6, 16, 1), (1, 8, 5), (17, 40, 0), (64, 32, 80), (5, 8, 32)] {
            for a_transposed in [false, true] {
                for accumulate in [false, true] {
                    let (ldb, ldc) = (n + 8, n + 3);
                    let (row, step) = if a_transposed { (1, m + 2) } else { (k + 5, 1) };
                    let a: Vec<f32> = (0..(m + 2) * (k + 5)).map(value).collect();
                    let b: Vec<f32> = (0..k.max(1) * ldb).map(|i| value(i + 11)).collect();
                    let start: Vec<f32> = (0..m * ldc).map(|i| value(i + 29)).collect();
                    let mut c = start.clone();
                    let operand = Strided { data: &a, row, step };
                    product((m, n, k), operand, &b, ldb, &mut c, ldc, accumulate);
                    for i in 0..m {
                        for j in 0..ldc {
                            let got = c[i * ldc + j] as f64;
                            if j >= n {
                                assert_eq!(got, start[i * ldc + j] as f64, "column {j} past n written");
                                continue;
                            }
                            let terms = (0..k).map(|s| a[i * row + s * step] as f64 * b[s * ldb + j] as f64);
                            let (sum, size): (f64, f64) = terms.fold((0.0, 0.0), |(s, z), t| (s + t, z + t.abs()));
                            let want = sum + if accumulate { start[i * ldc + j] as f64 } else { 0.0 };
                            let bound = 1e-6 * (size + want.abs() + 1.0);
                            assert!((got - want).abs() <= bound, "({m}, {n}, {k}) c[{i}][{j}] = {got}, want {want}");
                        }
                    }
                }
            }
        }
    }
}
