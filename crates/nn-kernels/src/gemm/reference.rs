//! A direct triple loop, the definition of [`gemm`](super::gemm), for tests and as the
//! naive baseline in benchmarks.

use super::Transpose;
use crate::Element;

/// `C ← α·op(A)·op(B) + β·C`, written straight from the definition.
///
/// Panics if a slice is shorter than its shape requires (test-only helper).
#[allow(clippy::too_many_arguments)]
pub fn gemm_reference<T: Element>(
    trans_a: Transpose,
    trans_b: Transpose,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    b: &[T],
    beta: T,
    c: &mut [T],
) {
    let at = |i: usize, p: usize| match trans_a {
        Transpose::No => a[i * k + p],
        Transpose::Yes => a[p * m + i],
    };
    let bt = |p: usize, j: usize| match trans_b {
        Transpose::No => b[p * n + j],
        Transpose::Yes => b[j * k + p],
    };
    for i in 0..m {
        for j in 0..n {
            let mut acc = T::zero();
            for p in 0..k {
                acc += at(i, p) * bt(p, j);
            }
            let old = if beta == T::zero() { T::zero() } else { beta * c[i * n + j] };
            c[i * n + j] = alpha * acc + old;
        }
    }
}
