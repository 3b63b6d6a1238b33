//! The Cook–Toom matrices of minimal filtering over α points, and the tile transforms
//! built from them.
//!
//! A product of polynomials `h = g·u` (g of r coefficients, u of m, h of α = m + r − 1)
//! is `h = C·((E_r·g) ⊙ (E_m·u))`: both evaluated at α points (∞ standing for the
//! leading coefficient), multiplied pointwise, interpolated back (C inverts the
//! evaluation of degree α − 1). Its transpose in u is the correlation of a tile d of
//! α cells with g: `y = E_mᵀ·((E_r·g) ⊙ (Cᵀ·d))`, m outputs for α·1 products instead
//! of m·r. Swapping the roles of m and r gives the weight gradient, the correlation of
//! the same tile with m output gradients: `∂g = E_rᵀ·((E_m·∂y) ⊙ (Cᵀ·d))`. In two
//! dimensions each side is applied along rows and columns.
//!
//! Two tile sizes: α = 6 for 3×3 filters, F(4, 3), and α = 8 for 5×5, F(4, 5). Every
//! function here is generic in α, so that each size compiles to its own fixed sequence
//! of operations.

use std::mem::MaybeUninit;

/// The finite evaluation points of a tile of `alpha` cells (the last point is ∞).
/// Small magnitudes in pairs ±p and p, −1/p keep the transforms' entries within 2⁴,
/// whose rounding is what the method costs in accuracy.
const fn point(alpha: usize, j: usize) -> f64 {
    match alpha {
        6 => [0.0, 1.0, -1.0, 0.5, -2.0][j],
        8 => [0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0][j],
        _ => panic!("tiles of 6 or 8 cells"),
    }
}

/// Cells of the narrowest tile along a dimension.
pub(super) const MIN_ALPHA: usize = 6;

/// An α×α matrix of transform coefficients (unused rows and columns zero).
pub(super) type Matrix<const A: usize> = [[f64; A]; A];

/// Tiles transformed side by side, one per lane.
pub(super) const LANES: usize = 8;

/// Outputs per tile along a dimension at most: F(4, 3) and F(4, 5) both give 4.
pub(super) const MAX_M: usize = 4;

/// One value of [`LANES`] tiles.
pub(super) type Pack<T> = [T; LANES];

/// `E_n`: row j holds the powers `p_jᵏ`, k < n, of point j; the row of ∞ picks the
/// coefficient of degree n − 1.
pub(super) const fn evaluation<const A: usize>(n: usize) -> Matrix<A> {
    let mut e = [[0.0; A]; A];
    let mut j = 0;
    while j < A - 1 {
        let mut power = 1.0;
        let mut k = 0;
        while k < n {
            e[j][k] = power;
            power *= point(A, j);
            k += 1;
        }
        j += 1;
    }
    e[A - 1][n - 1] = 1.0;
    e
}

/// The input side of a tile of α cells.
pub(super) struct Input<const A: usize>;

impl<const A: usize> Input<A> {
    /// `Cᵀ`, the input transform, each row j scaled by [`Self::SCALE`]`[j]` so that its
    /// entries are small multiples of a quarter (exact in f32, ±1 an addition); the
    /// filter side divides by the same scales.
    pub(super) const TRANSFORM: Matrix<A> = scaled_input_transform::<A>();
    /// The scale of each row of [`Self::TRANSFORM`]: the inverse of its smallest
    /// nonzero magnitude, a multiple of 1/64.
    pub(super) const SCALE: [f64; A] = input_scales::<A>();
}

const fn input_scales<const A: usize>() -> [f64; A] {
    let c = input_transform::<A>();
    let mut scales = [1.0; A];
    let mut j = 0;
    while j < A {
        let mut smallest = f64::INFINITY;
        let mut k = 0;
        while k < A {
            let v = c[j][k].abs();
            if v > 1e-12 && v < smallest {
                smallest = v;
            }
            k += 1;
        }
        scales[j] = snap(1.0 / smallest, 64.0);
        j += 1;
    }
    scales
}

/// `v` rounded to the nearest multiple of `1 / parts` when it lies within rounding of
/// one (the elimination's error, which would otherwise pass to every transformed
/// value), else `v`.
const fn snap(v: f64, parts: f64) -> f64 {
    let units = if v >= 0.0 { (v * parts + 0.5) as i64 } else { -((-v * parts + 0.5) as i64) };
    let snapped = units as f64 / parts;
    let off = if snapped > v { snapped - v } else { v - snapped };
    if off < 1e-9 * (1.0 + if v < 0.0 { -v } else { v }) {
        snapped
    } else {
        v
    }
}

/// [`input_transform`] with rows scaled, entries snapped to the nearest quarter where
/// elimination left them a rounding away.
const fn scaled_input_transform<const A: usize>() -> Matrix<A> {
    let mut c = input_transform::<A>();
    let scales = input_scales::<A>();
    let mut j = 0;
    while j < A {
        let mut k = 0;
        while k < A {
            c[j][k] = snap(c[j][k] * scales[j], 4.0);
            k += 1;
        }
        j += 1;
    }
    c
}

/// `Cᵀ` unscaled: the transposed inverse of `E_α`, by Gauss–Jordan elimination with
/// partial pivoting.
const fn input_transform<const A: usize>() -> Matrix<A> {
    let mut a = evaluation::<A>(A);
    let mut inv = [[0.0; A]; A];
    let mut i = 0;
    while i < A {
        inv[i][i] = 1.0;
        i += 1;
    }
    let mut col = 0;
    while col < A {
        let mut pivot = col;
        let mut row = col + 1;
        while row < A {
            if a[row][col].abs() > a[pivot][col].abs() {
                pivot = row;
            }
            row += 1;
        }
        (a[col], a[pivot]) = (a[pivot], a[col]);
        (inv[col], inv[pivot]) = (inv[pivot], inv[col]);
        let scale = a[col][col];
        let mut k = 0;
        while k < A {
            a[col][k] /= scale;
            inv[col][k] /= scale;
            k += 1;
        }
        let mut row = 0;
        while row < A {
            let factor = a[row][col];
            if row != col && factor != 0.0 {
                let mut k = 0;
                while k < A {
                    a[row][k] -= factor * a[col][k];
                    inv[row][k] -= factor * inv[col][k];
                    k += 1;
                }
            }
            row += 1;
        }
        col += 1;
    }
    transpose(&inv)
}

/// Runs `$body` with `$i` bound to each of 0..8 below `$n` in turn, written out, so
/// that indices into constant matrices are constants: the compiler then drops zero
/// coefficients and turns ±1 into additions, which a loop would leave as branches.
macro_rules! unroll8 {
    ($i:ident < $n:expr => $body:block) => {{
        unroll8!(@ $i < $n => $body; 0 1 2 3 4 5 6 7)
    }};
    (@ $i:ident < $n:expr => $body:block; $($k:literal)*) => {{
        $(
            {
                let $i = $k;
                if $i < $n $body
            }
        )*
    }};
}

/// The arithmetic a transform needs on one pack of lanes. The portable transforms
/// compute in [`Pack`] arrays; the AVX2 ones in registers (`avx2::Packed`), which
/// keeps a tile's values out of memory between the two passes. Each operation is
/// IEEE arithmetic lane by lane, so both give the same bits.
pub(super) trait PackMath: Copy {
    fn zero() -> Self;
    fn add(self, other: Self) -> Self;
    fn sub(self, other: Self) -> Self;
    fn neg(self) -> Self;
    /// `c·self`.
    fn scale(self, c: f64) -> Self;
    /// `c·self + sum`, fused.
    fn scale_add(self, c: f64, sum: Self) -> Self;
}

impl<T: crate::Element> PackMath for Pack<T> {
    #[inline(always)]
    fn zero() -> Self {
        [T::zero(); LANES]
    }
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        std::array::from_fn(|l| self[l] + other[l])
    }
    #[inline(always)]
    fn sub(self, other: Self) -> Self {
        std::array::from_fn(|l| self[l] - other[l])
    }
    #[inline(always)]
    fn neg(self) -> Self {
        self.map(|x| -x)
    }
    #[inline(always)]
    fn scale(self, c: f64) -> Self {
        self.map(|x| T::from_f64(c) * x)
    }
    #[inline(always)]
    fn scale_add(self, c: f64, sum: Self) -> Self {
        std::array::from_fn(|l| T::from_f64(c).mul_add(self[l], sum[l]))
    }
}

/// `out = L·x·Lᵀ` for a `q×q` block x and the `p×q` matrix L (the first p rows and q
/// columns of `left`): x's rows come from `row(k)` (q packs), and each `out[i][j]`
/// goes to `emit(i, j, value)` as soon as it is summed. Rows are transformed first,
/// then columns, so that few values are live at once. Inlined with a constant
/// `left`, p and q, it is a fixed sequence of additions and multiply-adds by the
/// nonzero coefficients.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indices into a block and a matrix at once
pub(super) fn sandwich<P: PackMath, const A: usize>(
    left: &Matrix<A>,
    p: usize,
    q: usize,
    row: impl Fn(usize) -> [P; A],
    mut emit: impl FnMut(usize, usize, P),
) {
    // Left uninitialised (zeroing it would be a memset per call): entries (k, j) with
    // k < q and j < p are written by the first loop before the second reads exactly
    // those.
    let mut half = [[const { MaybeUninit::<P>::uninit() }; A]; A];
    for k in 0..q {
        let x = row(k);
        unroll8!(j < A => {
            if j < p {
                half[k][j].write(combination(&left[j], q, |l| x[l]));
            }
        });
    }
    for j in 0..p {
        unroll8!(i < A => {
            if i < p {
                // SAFETY: k < q and j < p: written above.
                emit(i, j, combination(&left[i], q, |k| unsafe { half[k][j].assume_init() }));
            }
        });
    }
}

/// `Σ_k c[k]·x(k)` over the first q coefficients, zero ones skipped, starting from
/// the first term (±1 as a copy or negation, then additions and subtractions, other
/// coefficients fused into a multiply-add). Points `k` and `k + 1` of equal
/// magnitude (the pairs ±p of [`point`]) enter as one term `c[k]·(x(k) ± x(k + 1))`:
/// the same sum and difference serve every row of the matrix, so the compiler
/// computes each once.
#[inline(always)]
fn combination<P: PackMath, const A: usize>(c: &[f64; A], q: usize, x: impl Fn(usize) -> P) -> P {
    let mut sum: Option<P> = None;
    let mut add = |coefficient: f64, term: P| {
        sum = Some(match (sum, coefficient) {
            (None, 1.0) => term,
            (None, -1.0) => term.neg(),
            (None, c) => term.scale(c),
            (Some(s), 1.0) => s.add(term),
            (Some(s), -1.0) => s.sub(term),
            (Some(s), c) => term.scale_add(c, s),
        });
    };
    unroll8!(k < A => {
        if k < q && c[k] != 0.0 && !(k > 0 && paired(c, q, k - 1)) {
            if paired(c, q, k) {
                let (a, b) = (x(k), x(k + 1));
                add(c[k], if c[k + 1] == c[k] { a.add(b) } else { a.sub(b) });
            } else {
                add(c[k], x(k));
            }
        }
    });
    sum.unwrap_or(P::zero())
}

/// Whether coefficients k and k + 1 (k odd, a pair of points ±p) have equal magnitude.
#[inline(always)]
fn paired<const A: usize>(c: &[f64; A], q: usize, k: usize) -> bool {
    k % 2 == 1 && k + 1 < q && c[k] != 0.0 && c[k + 1].abs() == c[k].abs()
}

/// The evaluation matrices of a tile of α cells giving m outputs for a filter of r
/// taps.
pub(super) struct Sizes<const A: usize, const R: usize>;

impl<const A: usize, const R: usize> Sizes<A, R> {
    /// Outputs per tile along a dimension.
    pub(super) const M: usize = {
        assert!(A + 1 - R <= MAX_M, "at most four outputs a tile");
        A + 1 - R
    };
    /// `E_m`, expanding a tile of output gradients (α×m).
    pub(super) const TILE: Matrix<A> = evaluation::<A>(A + 1 - R);
    /// `E_mᵀ`, contracting a tile of outputs (m×α).
    pub(super) const TILE_BACK: Matrix<A> = transpose(&evaluation::<A>(A + 1 - R));
}

/// The transpose of an α×α matrix.
const fn transpose<const A: usize>(m: &Matrix<A>) -> Matrix<A> {
    let mut t = [[0.0; A]; A];
    let mut i = 0;
    while i < A {
        let mut j = 0;
        while j < A {
            t[i][j] = m[j][i];
            j += 1;
        }
        i += 1;
    }
    t
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // matrix indices, as in the formulas
mod tests {
    use super::*;

    /// The scaled rows hold small multiples of a quarter only, and the scales are the
    /// exact rationals (an elimination's rounding left in them would pass to every
    /// transformed filter).
    fn entries_are_exact_quarters<const A: usize>() {
        for row in Input::<A>::TRANSFORM {
            for v in row {
                assert!((v * 4.0).fract() == 0.0 && v.abs() <= 16.0, "α = {A}: {row:?}");
            }
        }
        for scale in Input::<A>::SCALE {
            assert!((scale * 64.0).fract() == 0.0, "α = {A}: scale {scale}");
        }
    }

    #[test]
    fn input_transform_entries_are_exact_quarters() {
        entries_are_exact_quarters::<6>();
        entries_are_exact_quarters::<8>();
    }

    /// `C·E_α = I`: the input transform inverts the evaluation.
    fn inverts_the_evaluation<const A: usize>() {
        let e = evaluation::<A>(A);
        for i in 0..A {
            for j in 0..A {
                let product: f64 = (0..A).map(|k| Input::<A>::TRANSFORM[k][i] / Input::<A>::SCALE[k] * e[k][j]).sum();
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((product - expected).abs() < 1e-12, "α = {A}: (C·E)[{i}][{j}] = {product}");
            }
        }
    }

    #[test]
    fn input_transform_inverts_the_evaluation() {
        inverts_the_evaluation::<6>();
        inverts_the_evaluation::<8>();
    }

    /// One dimension, m outputs of the correlation of an α-cell tile with r taps, for
    /// every split m + r = α + 1, against the direct sum.
    fn correlation_matches_the_direct_sum<const A: usize>() {
        let d: [f64; A] = std::array::from_fn(|k| [0.3, -1.2, 2.5, 0.7, -0.4, 1.9, -0.8, 1.1][k]);
        let (input, scale) = (Input::<A>::TRANSFORM, Input::<A>::SCALE);
        for r in 1..A {
            let m = A + 1 - r;
            let g: Vec<f64> = (0..r).map(|k| 0.5 - 0.37 * k as f64).collect();
            let (er, em) = (evaluation::<A>(r), evaluation::<A>(m));
            let transformed: Vec<f64> = (0..A)
                .map(|j| {
                    let gj: f64 = (0..r).map(|k| er[j][k] * g[k]).sum();
                    let dj: f64 = (0..A).map(|k| input[j][k] * d[k]).sum();
                    gj / scale[j] * dj
                })
                .collect();
            for i in 0..m {
                let y: f64 = (0..A).map(|j| em[j][i] * transformed[j]).sum();
                let direct: f64 = (0..r).map(|k| d[i + k] * g[k]).sum();
                assert!((y - direct).abs() < 1e-11, "α = {A}, r = {r}, y[{i}] = {y}, direct {direct}");
            }
        }
    }

    #[test]
    fn one_dimensional_correlation_matches_the_direct_sum() {
        correlation_matches_the_direct_sum::<6>();
        correlation_matches_the_direct_sum::<8>();
    }
}
