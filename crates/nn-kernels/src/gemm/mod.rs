//! General matrix multiply on row-major slices: `C ← α·op(A)·op(B) + β·C`.
//!
//! For f32 on a CPU with AVX2 but not AVX-512, products of at least 2²⁰ multiply-adds
//! run in our packed kernel (`packed.rs`: BLIS-style blocking, a 6 × 16 register
//! tile); elsewhere, and for smaller products, the `gemm` crate's micro-kernels do
//! (AVX-512, AVX2/FMA or portable, chosen at run time by that crate; it measured
//! faster than `matrixmultiply` on every workload here). A product at least 512 × 512
//! in C runs as one parallel call (the packed kernel's threads sharing one packed
//! block of B, or the crate's own rayon threading); a smaller one is cut into a fixed
//! number of blocks of rows (or columns) of C, decided by the shape alone, and the
//! blocks are shared among the workers. Every element of C is therefore computed by
//! the same arithmetic in the same order whatever the thread count: results are
//! bit-identical across thread counts.

mod crate_call;
pub(crate) use crate_call::crate_call;
#[cfg(target_arch = "x86_64")]
mod packed;
pub mod reference;
#[cfg(test)]
mod tests;

use crate::error::check_len;
use crate::{Element, KernelError};
use rayon::prelude::*;

/// Whether an operand is used as stored or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transpose {
    /// `op(X) = X`.
    No,
    /// `op(X) = Xᵀ`.
    Yes,
}

/// Below this many multiply-adds a product runs on the calling thread: splitting
/// costs a rayon hand-off and another packing of the shared operand (G1, 64³, gains
/// nothing from a second thread; G2, 256³, does).
const PARALLEL_MIN_WORK: usize = 1 << 20;

/// Rows (or columns) of C in one block are a multiple of this, so blocks line up with
/// the micro-kernels' tiles.
const SPLIT_ALIGN: usize = 16;

/// A large product is cut into at most this many blocks. Each block packs the shared
/// operand again, so more blocks cost more; four keep two workers busy with even
/// loads. Fixed, not the thread count, so that results do not depend on it: the
/// `gemm` crate's bits for an element do depend on how C is cut (a 65×32×513 f32
/// product cut after row 16 differs from the whole in the last bits), so one block
/// per worker would make results depend on the thread count.
const MAX_BLOCKS: usize = 4;

/// From this many multiply-adds a product on one thread runs in the packed kernel
/// (f32, AVX2 without AVX-512); below, packing costs more than it saves (G1, 64³, ran
/// at 0.8 of the `gemm` crate's speed).
const PACKED_MIN_WORK: usize = 1 << 20;

/// When C has at least this many rows and columns, the packed kernel (or one call of
/// the `gemm` crate with its own rayon threading) beats our blocks, which pack the
/// shared operand once per block; neither's bits depend on the thread count
/// (`bit_identical_across_thread_counts`). Narrower products scale better on our
/// blocks (docs/performance.md, "GEMM").
const OWN_THREADS_MIN: usize = 512;

/// The row and column strides of `op(X)` for X stored row-major.
fn strides(trans: Transpose, rows: usize, cols: usize) -> (isize, isize) {
    match trans {
        // op(X) is rows×cols, stored as such.
        Transpose::No => (cols as isize, 1),
        // op(X) is rows×cols, stored as its transpose (cols×rows).
        Transpose::Yes => (1, rows as isize),
    }
}

/// `C ← α·op(A)·op(B) + β·C` with `op(A)` m×k, `op(B)` k×n and C m×n, all row-major.
///
/// A holds m·k elements (stored k×m when transposed), B holds k·n (stored n×k when
/// transposed), C holds m·n. When β is zero, C's previous contents are ignored (NaN
/// included).
///
/// Large products run on the current rayon pool; the result does not depend on the
/// number of threads.
///
/// # Errors
/// [`KernelError::BufferLength`] naming the operand whose length does not match its shape.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Element>(
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
) -> Result<(), KernelError> {
    let overflow = KernelError::Geometry(crate::GeometryError::Overflow { what: "gemm sizes" });
    check_len("gemm: A", m.checked_mul(k).ok_or(overflow.clone())?, a.len())?;
    check_len("gemm: B", k.checked_mul(n).ok_or(overflow.clone())?, b.len())?;
    check_len("gemm: C", m.checked_mul(n).ok_or(overflow.clone())?, c.len())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (rsa, csa) = strides(trans_a, m, k);
    let (rsb, csb) = strides(trans_b, k, n);
    let work = m.saturating_mul(n).saturating_mul(k);
    if work < PARALLEL_MIN_WORK {
        gemm_on_one_thread(trans_a, trans_b, m, n, k, alpha, a, b, beta, c);
        return Ok(());
    }
    if m >= OWN_THREADS_MIN && n >= OWN_THREADS_MIN {
        #[cfg(target_arch = "x86_64")]
        if let Some((isa, a, b, c)) = packed_operands(a, b, c) {
            let a_view = MatRef::new(a, trans_a, if trans_a == Transpose::No { k } else { m });
            let b_view = MatRef::new(b, trans_b, if trans_b == Transpose::No { n } else { k });
            let (alpha, beta) = (alpha.as_f64() as f32, beta.as_f64() as f32);
            packed::gemm_packed(isa, (m, n, k), alpha, a_view, b_view, beta, c, n, true);
            return Ok(());
        }
        // SAFETY: the checked lengths keep every strided index of A, B and C inside
        // their slices; `c` is a unique borrow and cannot alias `a` or `b`.
        unsafe {
            T::gemm_strided(
                m,
                k,
                n,
                alpha,
                a.as_ptr(),
                rsa,
                csa,
                b.as_ptr(),
                rsb,
                csb,
                beta,
                c.as_mut_ptr(),
                n as isize,
                1,
                rayon::current_num_threads(),
            )
        };
        return Ok(());
    }
    // Blocks are handed out by rayon's work splitting (`par_*`), which lets an idle
    // worker steal half of what is left at once. Each block packs the operand the
    // blocks share again, so the split shares the smaller one: blocks of rows share
    // B (k × n), blocks of columns A (m × k). A square C is cut into columns, which
    // the `gemm` crate runs faster than rows (docs/performance.md, "GEMM").
    if m > n {
        let a_cols = if trans_a == Transpose::No { k } else { m };
        let b_view = MatRef::new(b, trans_b, if trans_b == Transpose::No { n } else { k });
        let mut rest = &mut c[..];
        let mut blocks = Vec::with_capacity(MAX_BLOCKS);
        for rows in balanced_blocks(m) {
            let (mine, others) = rest.split_at_mut(rows.len() * n);
            blocks.push((rows.start, mine));
            rest = others;
        }
        blocks.into_par_iter().for_each(|(row0, c_rows)| {
            // Rows row0.. of op(A): further down A, or further along it when transposed.
            let start = if trans_a == Transpose::No { row0 * k } else { row0 };
            let a_view = MatRef::new(&a[start..], trans_a, a_cols);
            gemm_ld(c_rows.len() / n, n, k, alpha, a_view, b_view, beta, c_rows, n);
        });
    } else {
        let c_ptr = SendPtr(c.as_mut_ptr());
        let blocks: Vec<std::ops::Range<usize>> = balanced_blocks(n).collect();
        blocks.into_par_iter().for_each(|columns| {
            let c_base = c_ptr.get();
            let (col0, cols) = (columns.start, columns.len());
            // SAFETY: each task writes only columns col0..col0+cols of C, and the column
            // ranges of different tasks are disjoint, so no element is written twice or
            // read while another task writes it; `c` stays borrowed until every task
            // has finished. op(B)'s columns start at col0·csb, in bounds by the checked
            // lengths, as is every index of A and of C's columns.
            unsafe {
                T::gemm_strided(
                    m,
                    k,
                    cols,
                    alpha,
                    a.as_ptr(),
                    rsa,
                    csa,
                    b.as_ptr().offset(col0 as isize * csb),
                    rsb,
                    csb,
                    beta,
                    c_base.add(col0),
                    n as isize,
                    1,
                    1,
                )
            }
        });
    }
    Ok(())
}

/// A row-major matrix stored in a slice with a leading dimension: stored element
/// (i, j) is at `i·ld + j`; `trans` says whether the product uses it or its transpose.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatRef<'a, T> {
    pub data: &'a [T],
    pub ld: usize,
    pub trans: Transpose,
}

impl<'a, T> MatRef<'a, T> {
    /// A contiguous `rows × cols` operand (as stored), used as is or transposed.
    pub fn new(data: &'a [T], trans: Transpose, stored_cols: usize) -> Self {
        Self { data, ld: stored_cols, trans }
    }

    /// The operand without its first `count` stored rows (a group's block of rows, or
    /// of columns when transposed).
    pub fn skip_stored_rows(self, count: usize) -> Self {
        Self { data: &self.data[count * self.ld..], ..self }
    }

    /// Checks that op(self), `rows × cols`, lies inside the slice; returns its strides.
    fn strides(&self, rows: usize, cols: usize) -> (isize, isize) {
        let (stored_rows, stored_cols) = match self.trans {
            Transpose::No => (rows, cols),
            Transpose::Yes => (cols, rows),
        };
        assert!(
            self.ld >= stored_cols
                && (stored_rows == 0 || (stored_rows - 1) * self.ld + stored_cols <= self.data.len()),
            "gemm: operand out of bounds"
        );
        match self.trans {
            Transpose::No => (self.ld as isize, 1),
            Transpose::Yes => (1, self.ld as isize),
        }
    }
}

/// `C ← α·op(A)·op(B) + β·C` on the calling thread, with leading dimensions, for
/// kernels that already run one task per worker. C's element (i, j) is at `i·ldc + j`.
///
/// Panics if an operand does not fit its slice: callers inside this crate derive the
/// sizes from validated geometry.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_ld<T: Element>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T,
    c: &mut [T],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = a.strides(m, k);
    let (rsb, csb) = b.strides(k, n);
    assert!(ldc >= n && (m - 1) * ldc + n <= c.len(), "gemm: C out of bounds");
    #[cfg(target_arch = "x86_64")]
    if let Some((isa, a_data, b_data, c)) =
        packed_operands(a.data, b.data, c).filter(|_| m.saturating_mul(n).saturating_mul(k) >= PACKED_MIN_WORK)
    {
        let a = MatRef { data: a_data, ld: a.ld, trans: a.trans };
        let b = MatRef { data: b_data, ld: b.ld, trans: b.trans };
        let (alpha, beta) = (alpha.as_f64() as f32, beta.as_f64() as f32);
        packed::gemm_packed(isa, (m, n, k), alpha, a, b, beta, c, ldc, false);
        return;
    }
    // SAFETY: the assertions above keep every strided index of A, B and C inside
    // their slices; `c` is a unique borrow and cannot alias `a` or `b`.
    unsafe {
        T::gemm_strided(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            rsa,
            csa,
            b.data.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
            1,
        )
    };
}

/// The packed kernel's token and A, B and C as f32.
#[cfg(target_arch = "x86_64")]
type PackedOperands<'a> = (crate::simd::Avx2Fma, &'a [f32], &'a [f32], &'a mut [f32]);

/// The packed kernel's token and operands as f32, where it applies: f32 elements on a
/// CPU with AVX2 but not AVX-512 (whose wider kernels in the `gemm` crate are faster).
#[cfg(target_arch = "x86_64")]
fn packed_operands<'a, T: Element>(a: &'a [T], b: &'a [T], c: &'a mut [T]) -> Option<PackedOperands<'a>> {
    if crate::simd::Avx512::detect().is_some() {
        return None;
    }
    Some((crate::simd::Avx2Fma::detect()?, T::as_f32(a)?, T::as_f32(b)?, T::as_f32_mut(c)?))
}

/// [`gemm()`] on the calling thread, for contiguous operands of exactly their sizes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_on_one_thread<T: Element>(
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
    assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n, "gemm: inconsistent lengths");
    let a_cols = if trans_a == Transpose::No { k } else { m };
    let b_cols = if trans_b == Transpose::No { n } else { k };
    gemm_ld(m, n, k, alpha, MatRef::new(a, trans_a, a_cols), MatRef::new(b, trans_b, b_cols), beta, c, n);
}

/// `len` cut into at most [`MAX_BLOCKS`] ranges of whole [`SPLIT_ALIGN`] units (but
/// the last), their unit counts differing by at most one: 784 rows as 208, 192, 192,
/// 192, not 208, 208, 208, 160, which leaves one worker a quarter more to do.
fn balanced_blocks(len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let units = len.div_ceil(SPLIT_ALIGN);
    let count = units.clamp(1, MAX_BLOCKS);
    let (per, extra) = (units / count, units % count);
    (0..count).scan(0, move |start, i| {
        let end = (*start + (per + usize::from(i < extra)) * SPLIT_ALIGN).min(len);
        let range = *start..end;
        *start = end;
        Some(range)
    })
}

/// A raw pointer that may cross to a rayon task; see the SAFETY note where it is used.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
impl<T> SendPtr<T> {
    /// The pointer; a method, so that closures capture the whole (Send) wrapper.
    fn get(self) -> *mut T {
        self.0
    }
}

// SAFETY: only used to hand disjoint column blocks of one matrix to scoped tasks.
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}
