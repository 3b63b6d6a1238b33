//! Large f32 products on AVX2 with packed operands, blocked for the caches in the
//! manner of BLIS: a `KC × NC` block of op(B) is packed once into panels of 16
//! columns and shared by the threads, which each pack their own `MC × KC` blocks of
//! op(A) into panels of 6 rows and run a 6 × 16 register kernel over them. An element
//! of C adds its terms in the order of k whatever the thread count and `MC` (only
//! `KC` cuts the sum), so results do not depend on the number of threads.

use super::MatRef;
use crate::simd::Avx2Fma;
use crate::workspace::{fit, with_scratch};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Rows of C in one kernel call (12 accumulators of the 16 registers).
const MR: usize = 6;
/// Columns of C in one kernel call: two vectors of 8.
const NR: usize = 16;
/// Depth of one packed block: a panel of op(B), `KC × NR`, stays in L1 while the
/// kernel walks an A block.
const KC: usize = 256;
/// Rows of op(A) packed at a time, at most: `MC × KC` fits in L2 beside B's panel.
const MC: usize = 144;
/// Columns of op(B) packed at a time: `KC × NC` stays in the last-level cache.
const NC: usize = 4080;

/// `C ← α·op(A)·op(B) + β·C` for f32 with C's element (i, j) at `i·ldc + j`, on the
/// current rayon pool when `parallel`, else on the calling thread.
///
/// Panics if an operand does not fit its slice (callers pass validated sizes).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_packed(
    isa: Avx2Fma,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = a.strides(m, k);
    let (rsb, csb) = b.strides(k, n);
    assert!(ldc >= n && (m - 1) * ldc + n <= c.len(), "gemm: C out of bounds");
    let c = &mut c[..(m - 1) * ldc + n];
    if k == 0 || alpha == 0.0 {
        scale_rows(c, (m, n), ldc, beta);
        return;
    }
    if beta != 0.0 && beta != 1.0 {
        scale_rows(c, (m, n), ldc, beta);
    }
    let threads = if parallel { rayon::current_num_threads().max(1) } else { 1 };
    // Blocks of rows of about MC, as many as keeps every thread equally busy.
    let row_blocks = m.div_ceil(MC).next_multiple_of(threads).min(m.div_ceil(MR));
    let mc = m.div_ceil(row_blocks).next_multiple_of(MR);
    with_scratch::<f32, 1, _>(|[b_buffer]| {
        for j0 in (0..n).step_by(NC) {
            let nc = (n - j0).min(NC);
            let panels = nc.div_ceil(NR);
            for p0 in (0..k).step_by(KC) {
                let kc = (k - p0).min(KC);
                let packed_b = aligned(fit(b_buffer, panels * KC * NR + ALIGN), panels * KC * NR);
                let group_len = PACK_GROUP * KC * NR;
                let pack_group = |(group, dst): (usize, &mut [f32])| {
                    let j = j0 + group * PACK_GROUP * NR;
                    pack_b(b.data, rsb, csb, (p0, kc), (j, (nc + j0 - j).min(PACK_GROUP * NR)), dst);
                };
                if parallel {
                    packed_b.par_chunks_mut(group_len).enumerate().for_each(pack_group);
                } else {
                    packed_b.chunks_mut(group_len).enumerate().for_each(pack_group);
                }
                let packed_b = &*packed_b;
                let accumulate = p0 > 0 || beta != 0.0;
                let multiply_block = |(block, c_rows): (usize, &mut [f32])| {
                    let i0 = block * mc;
                    let rows = (m - i0).min(mc);
                    with_scratch::<f32, 1, _>(|[a_buffer]| {
                        let len = rows.div_ceil(MR) * KC * MR;
                        let packed_a = aligned(fit(a_buffer, len + ALIGN), len);
                        for (panel, dst) in packed_a.chunks_mut(KC * MR).enumerate() {
                            let i = i0 + panel * MR;
                            pack_a(a.data, rsa, csa, alpha, (i, (m - i).min(MR)), (p0, kc), dst);
                        }
                        let tiles = Tiles { kc, rows, cols: nc, ldc, accumulate };
                        tiles.run(isa, packed_a, packed_b, &mut c_rows[j0..]);
                    });
                };
                if parallel {
                    c.par_chunks_mut(mc * ldc).enumerate().for_each(multiply_block);
                } else {
                    c.chunks_mut(mc * ldc).enumerate().for_each(multiply_block);
                }
            }
        }
    });
}

/// Elements in a cache line: packed panels start on one, so that no vector load
/// straddles two.
const ALIGN: usize = 16;

/// The first `len` elements of `buffer` from its first cache-line boundary; `buffer`
/// holds at least `len + ALIGN`.
fn aligned(buffer: &mut [f32], len: usize) -> &mut [f32] {
    let skip = buffer.as_ptr().align_offset(ALIGN * size_of::<f32>()).min(ALIGN);
    &mut buffer[skip..skip + len]
}

/// `C ← β·C` over an `m × n` block, NaN-free when β is zero.
fn scale_rows(c: &mut [f32], (m, n): (usize, usize), ldc: usize, beta: f32) {
    for row in c.chunks_mut(ldc).take(m) {
        let row = &mut row[..n];
        if beta == 0.0 {
            row.fill(0.0);
        } else {
            row.iter_mut().for_each(|x| *x *= beta);
        }
    }
}

/// Panels of B packed by one task, so that a row-major B is read a few cache lines of
/// each row at a time rather than one.
const PACK_GROUP: usize = 4;

/// Packs op(B)'s rows `p0..p0+kc`, columns `j..j+cols` (cols ≤ PACK_GROUP·NR), as
/// panels of `KC × NR` holding `kc` rows each. A last panel's columns past `cols`
/// keep what the buffer held: the kernel's sums for them are not stored.
fn pack_b(b: &[f32], rsb: isize, csb: isize, (p0, kc): (usize, usize), (j, cols): (usize, usize), dst: &mut [f32]) {
    let (rsb, csb) = (rsb as usize, csb as usize);
    if csb == 1 {
        // Row-major: each row of op(B) is contiguous, copied out panel by panel.
        for p in 0..kc {
            let row = &b[(p0 + p) * rsb + j..][..cols];
            for (panel, values) in row.chunks(NR).enumerate() {
                let start = panel * KC * NR + p * NR;
                if let Ok(values) = <&[f32; NR]>::try_from(values) {
                    // A fixed-length copy compiles to vector moves, not a call of memcpy.
                    *<&mut [f32; NR]>::try_from(&mut dst[start..start + NR]).expect("NR long") = *values;
                } else {
                    dst[start..start + values.len()].copy_from_slice(values);
                }
            }
        }
    } else {
        // Transposed: op(B)'s columns are contiguous along p.
        for (panel, dst) in dst.chunks_mut(KC * NR).enumerate().take(cols.div_ceil(NR)) {
            for col in 0..(cols - panel * NR).min(NR) {
                let column = &b[p0 * rsb + (j + panel * NR + col) * csb..][..kc];
                for (p, &x) in column.iter().enumerate() {
                    dst[p * NR + col] = x;
                }
            }
        }
    }
}

/// Packs α·op(A)'s rows `i..i+rows` (rows ≤ MR), columns `p0..p0+kc`, as `kc` columns
/// of MR; rows past `rows` keep what the buffer held, as B's columns past its end.
fn pack_a(
    a: &[f32],
    rsa: isize,
    csa: isize,
    alpha: f32,
    (i, rows): (usize, usize),
    (p0, kc): (usize, usize),
    dst: &mut [f32],
) {
    let (rsa, csa) = (rsa as usize, csa as usize);
    for (p, column) in dst.chunks_exact_mut(MR).take(kc).enumerate() {
        let start = i * rsa + (p0 + p) * csa;
        for (r, x) in column[..rows].iter_mut().enumerate() {
            *x = alpha * a[start + r * rsa];
        }
    }
}

/// One thread's share of a block: its packed rows of A against every panel of B.
struct Tiles {
    kc: usize,
    rows: usize,
    cols: usize,
    ldc: usize,
    accumulate: bool,
}

impl Tiles {
    /// Panels of B outermost, so that one stays in L1 while A's panels pass.
    fn run(&self, isa: Avx2Fma, packed_a: &[f32], packed_b: &[f32], c: &mut [f32]) {
        let _ = isa;
        assert!(packed_a.len() >= self.rows.div_ceil(MR) * KC * MR);
        assert!(packed_b.len() >= self.cols.div_ceil(NR) * KC * NR);
        assert!(self.kc <= KC && (self.rows - 1) * self.ldc + self.cols <= c.len());
        for (panel, b) in packed_b.chunks(KC * NR).take(self.cols.div_ceil(NR)).enumerate() {
            let j = panel * NR;
            let cols = (self.cols - j).min(NR);
            for (strip, a) in packed_a.chunks(KC * MR).take(self.rows.div_ceil(MR)).enumerate() {
                let i = strip * MR;
                let rows = (self.rows - i).min(MR);
                let c = &mut c[i * self.ldc + j..];
                // SAFETY: the token proves AVX2 and FMA; a panel holds KC·MR (A) or
                // KC·NR (B) elements and kc ≤ KC; the tile's rows and columns lie in
                // C by the assertion above.
                unsafe {
                    if rows == MR && cols == NR {
                        kernel(self.kc, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), self.ldc, self.accumulate);
                    } else {
                        let mut tile = [0.0f32; MR * NR];
                        if self.accumulate {
                            for r in 0..rows {
                                tile[r * NR..r * NR + cols].copy_from_slice(&c[r * self.ldc..r * self.ldc + cols]);
                            }
                        }
                        kernel(self.kc, a.as_ptr(), b.as_ptr(), tile.as_mut_ptr(), NR, self.accumulate);
                        for r in 0..rows {
                            c[r * self.ldc..r * self.ldc + cols].copy_from_slice(&tile[r * NR..r * NR + cols]);
                        }
                    }
                }
            }
        }
    }
}

/// `C[r][0..NR] (+)= Σ_p a[p·MR + r] · b[p·NR..]` for r < MR.
///
/// # Safety
/// AVX2 and FMA; `a` holds `k·MR` elements, `b` `k·NR`, and `c + r·ldc` NR for r < MR.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel(k: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, accumulate: bool) {
    let mut sums = [[_mm256_setzero_ps(); 2]; MR];
    for r in 0..MR {
        _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc + NR - 1) as *const i8);
    }
    let step = |sums: &mut [[__m256; 2]; MR], a: *const f32, b: *const f32| {
        let b0 = _mm256_loadu_ps(b);
        let b1 = _mm256_loadu_ps(b.add(8));
        for (r, sums) in sums.iter_mut().enumerate() {
            let x = _mm256_broadcast_ss(&*a.add(r));
            sums[0] = _mm256_fmadd_ps(x, b0, sums[0]);
            sums[1] = _mm256_fmadd_ps(x, b1, sums[1]);
        }
    };
    let (mut a, mut b) = (a, b);
    for _ in 0..k / 4 {
        for u in 0..4 {
            step(&mut sums, a.add(u * MR), b.add(u * NR));
        }
        a = a.add(4 * MR);
        b = b.add(4 * NR);
    }
    for _ in 0..k % 4 {
        step(&mut sums, a, b);
        a = a.add(MR);
        b = b.add(NR);
    }
    for (r, sums) in sums.iter().enumerate() {
        let row = c.add(r * ldc);
        let (mut s0, mut s1) = (sums[0], sums[1]);
        if accumulate {
            s0 = _mm256_add_ps(s0, _mm256_loadu_ps(row));
            s1 = _mm256_add_ps(s1, _mm256_loadu_ps(row.add(8)));
        }
        _mm256_storeu_ps(row, s0);
        _mm256_storeu_ps(row.add(8), s1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::Transpose;

    fn value(i: usize) -> f32 {
        ((i * 7919 % 1013) as f32 - 506.0) / 253.0
    }

    /// Shapes crossing every block edge (rows past MC and not a multiple of MR,
    /// columns past NC with a partial panel, depth past KC, depth 1 and 0), each
    /// transpose, α and β (zero over NaN), C with a leading dimension past n; against
    /// f64 sums, and the same bits on 1, 2 and 3 threads.
    #[test]
    fn packed_products_match_the_direct_sums() {
        let Some(isa) = Avx2Fma::detect() else {
            eprintln!("skipped: no AVX2 and FMA on this CPU");
            return;
        };
        let shapes = [(151, 40, 300), (7, NC + 20, 3), (13, 17, 1), (9, 33, 0), (2 * MC + 5, 16, KC)];
        for (m, n, k) in shapes {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                for (alpha, beta) in [(1.0, 0.0), (0.5, 1.0), (-1.5, -0.5)] {
                    let a: Vec<f32> = (0..m * k).map(value).collect();
                    let b: Vec<f32> = (0..k * n).map(|i| value(i + 11)).collect();
                    let ldc = n + 3;
                    let start: Vec<f32> =
                        (0..m * ldc).map(|i| if beta == 0.0 { f32::NAN } else { value(i + 29) }).collect();
                    let op = |t: bool| if t { Transpose::Yes } else { Transpose::No };
                    let a_view = MatRef::new(&a[..], op(trans_a), if trans_a { m } else { k });
                    let b_view = MatRef::new(&b[..], op(trans_b), if trans_b { k } else { n });
                    let run = |threads: usize| {
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                        let mut c = start.clone();
                        pool.install(|| {
                            gemm_packed(isa, (m, n, k), alpha, a_view, b_view, beta, &mut c, ldc, threads > 1)
                        });
                        c
                    };
                    let c = run(1);
                    for threads in [2, 3] {
                        let other = run(threads);
                        assert!(c.iter().zip(&other).all(|(x, y)| x.to_bits() == y.to_bits()), "{threads} threads");
                    }
                    let a_at = |i: usize, p: usize| a[if trans_a { p * m + i } else { i * k + p }] as f64;
                    let b_at = |p: usize, j: usize| b[if trans_b { j * k + p } else { p * n + j }] as f64;
                    for i in 0..m {
                        for j in 0..ldc {
                            let got = c[i * ldc + j] as f64;
                            if j >= n {
                                assert!(got.is_nan() || got == start[i * ldc + j] as f64, "column {j} past n written");
                                continue;
                            }
                            let terms = (0..k).map(|p| alpha as f64 * a_at(i, p) * b_at(p, j));
                            let (sum, size) = terms.fold((0.0, 0.0), |(s, z), t: f64| (s + t, z + t.abs()));
                            let kept = if beta == 0.0 { 0.0 } else { beta as f64 * start[i * ldc + j] as f64 };
                            let want = sum + kept;
                            let bound = 1e-6 * (size + kept.abs() + 1.0);
                            assert!((got - want).abs() <= bound, "({m}, {n}, {k}) c[{i}][{j}] = {got}, want {want}");
                        }
                    }
                }
            }
        }
    }
}
