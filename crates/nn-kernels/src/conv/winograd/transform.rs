//! The Cook–Toom matrices of minimal filtering over six points, and the tile
//! transforms built from them.
//!
//! A product of polynomials `h = g·u` (g of r coefficients, u of m, h of α = m + r − 1)
//! is `h = C·((E_r·g) ⊙ (E_m·u))`: both evaluated at α points (∞ standing for the
//! leading coefficient), multiplied pointwise, interpolated back (C inverts the
//! evaluation of degree α − 1). Its transpose in u is the correlation of a tile d of
//! α cells with g: `y = E_mᵀ·((E_r·g) ⊙ (Cᵀ·d))`, m outputs for α·1 products instead
//! of m·r. Swapping the roles of m and r gives the weight gradient, the correlation of
//! the same tile with m output gradients: `∂g = E_rᵀ·((E_m·∂y) ⊙ (Cᵀ·d))`. In two
//! dimensions each side is applied along rows and columns.

use std::mem::MaybeUninit;

/// Cells of a tile along each dimension.
pub(super) const ALPHA: usize = 6;

/// The finite evaluation points; the sixth is ∞. Small magnitudes and the pairs
/// ±1 and 0.5 / −2 keep the transforms' entries within 2⁴, whose rounding is what
/// the method costs in accuracy.
const POINTS: [f64; ALPHA - 1] = [0.0, 1.0, -1.0, 0.5, -2.0];

/// A 6×6 matrix of transform coefficients (unused rows and columns zero).
pub(super) type Matrix = [[f64; ALPHA]; ALPHA];

/// Tiles transformed side by side, one per lane.
pub(super) const LANES: usize = 8;

/// Outputs per tile along a dimension at most (3×3 filters: F(4, 3)).
pub(super) const MAX_M: usize = 4;

/// One value of [`LANES`] tiles.
pub(super) type Pack<T> = [T; LANES];

/// `E_n`: row j holds the powers `p_jᵏ`, k < n, of point j; the row of ∞ picks the
/// coefficient of degree n − 1.
pub(super) const fn evaluation(n: usize) -> Matrix {
    let mut e = [[0.0; ALPHA]; ALPHA];
    let mut j = 0;
    while j < ALPHA - 1 {
        let mut power = 1.0;
        let mut k = 0;
        while k < n {
            e[j][k] = power;
            power *= POINTS[j];
            k += 1;
        }
        j += 1;
    }
    e[ALPHA - 1][n - 1] = 1.0;
    e
}

/// `Cᵀ`, the input transform, each row j scaled by [`INPUT_SCALE`]`[j]` so that its
/// entries are small integers and halves (exact in f32, ±1 an addition); the filter
/// side divides by the same scales.
pub(super) const INPUT: Matrix = scaled_input_transform();

/// The scale of each row of [`INPUT`]: the inverse of its smallest nonzero magnitude.
pub(super) const INPUT_SCALE: [f64; ALPHA] = input_scales();

const fn input_scales() -> [f64; ALPHA] {
    let c = input_transform();
    let mut scales = [1.0; ALPHA];
    let mut j = 0;
    while j < ALPHA {
        let mut smallest = f64::INFINITY;
        let mut k = 0;
        while k < ALPHA {
            let v = c[j][k].abs();
            if v > 1e-12 && v < smallest {
                smallest = v;
            }
            k += 1;
        }
        scales[j] = 1.0 / smallest;
        j += 1;
    }
    scales
}

/// [`input_transform`] with rows scaled, entries snapped to the nearest half where
/// elimination left them a rounding away.
const fn scaled_input_transform() -> Matrix {
    let mut c = input_transform();
    let scales = input_scales();
    let mut j = 0;
    while j < ALPHA {
        let mut k = 0;
        while k < ALPHA {
            let v = c[j][k] * scales[j];
            let twice = if v >= 0.0 { (v * 2.0 + 0.5) as i64 } else { -((-v * 2.0 + 0.5) as i64) };
            let snapped = twice as f64 / 2.0;
            let off = if snapped > v { snapped - v } else { v - snapped };
            c[j][k] = if off < 1e-9 { snapped } else { v };
            k += 1;
        }
        j += 1;
    }
    c
}

/// `Cᵀ` unscaled: the transposed inverse of `E_α`, by Gauss–Jordan elimination with
/// partial pivoting.
const fn input_transform() -> Matrix {
    let mut a = evaluation(ALPHA);
    let mut inv = [[0.0; ALPHA]; ALPHA];
    let mut i = 0;
    while i < ALPHA {
        inv[i][i] = 1.0;
        i += 1;
    }
    let mut col = 0;
    while col < ALPHA {
        let mut pivot = col;
        let mut row = col + 1;
        while row < ALPHA {
            if a[row][col].abs() > a[pivot][col].abs() {
                pivot = row;
            }
            row += 1;
        }
        (a[col], a[pivot]) = (a[pivot], a[col]);
        (inv[col], inv[pivot]) = (inv[pivot], inv[col]);
        let scale = a[col][col];
        let mut k = 0;
        while k < ALPHA {
            a[col][k] /= scale;
            inv[col][k] /= scale;
            k += 1;
        }
        let mut row = 0;
        while row < ALPHA {
            let factor = a[row][col];
            if row != col && factor != 0.0 {
                let mut k = 0;
                while k < ALPHA {
                    a[row][k] -= factor * a[col][k];
                    inv[row][k] -= factor * inv[col][k];
                    k += 1;
                }
            }
            row += 1;
        }
        col += 1;
    }
    let mut transposed = [[0.0; ALPHA]; ALPHA];
    let mut i = 0;
    while i < ALPHA {
        let mut j = 0;
        while j < ALPHA {
            transposed[i][j] = inv[j][i];
            j += 1;
        }
        i += 1;
    }
    transposed
}

/// Runs `$body` with `$i` bound to each of 0..6 in turn, written out, so that
/// indices into constant matrices are constants: the compiler then drops zero
/// coefficients and turns ±1 into additions, which a loop would leave as branches.
macro_rules! unroll6 {
    ($i:ident => $body:block) => {{
        {
            let $i = 0usize;
            $body
        }
        {
            let $i = 1usize;
            $body
        }
        {
            let $i = 2usize;
            $body
        }
        {
            let $i = 3usize;
            $body
        }
        {
            let $i = 4usize;
            $body
        }
        {
            let $i = 5usize;
            $body
        }
    }};
}

/// `out = L·x·Lᵀ` for a `q×q` block x and the `p×q` matrix L (the first p rows and q
/// columns of `left`): x's rows come from `row(k)` (q packs), and each `out[i][j]`
/// goes to `emit(i, j, value)` as soon as it is summed. Rows are transformed first,
/// then columns, so that few values are live at once. Inlined with a constant
/// `left`, p and q, it is a fixed sequence of additions and multiplications by the
/// nonzero coefficients.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indices into a block and a matrix at once
pub(super) fn sandwich<T: crate::Element>(
    left: &Matrix,
    p: usize,
    q: usize,
    row: impl Fn(usize) -> [Pack<T>; ALPHA],
    mut emit: impl FnMut(usize, usize, Pack<T>),
) {
    // Left uninitialised (a zeroed block costs a memset per call, a tenth of a
    // convolution's time): entries (k, j) with k < q and j < p are written by the
    // first loop before the second reads exactly those.
    let mut half = [[const { MaybeUninit::<Pack<T>>::uninit() }; ALPHA]; ALPHA];
    for k in 0..q {
        let x = row(k);
        unroll6!(j => {
            if j < p {
                half[k][j].write(combination(&left[j], q, |l| x[l]));
            }
        });
    }
    for j in 0..p {
        unroll6!(i => {
            if i < p {
                // SAFETY: k < q and j < p: written above.
                emit(i, j, combination(&left[i], q, |k| unsafe { half[k][j].assume_init() }));
            }
        });
    }
}

/// `Σ_k c[k]·x(k)` over the first q coefficients, zero ones skipped, starting from
/// the first term (±1 as a copy or negation, then additions and subtractions).
#[inline(always)]
fn combination<T: crate::Element>(c: &[f64; ALPHA], q: usize, x: impl Fn(usize) -> Pack<T>) -> Pack<T> {
    let mut sum: Option<Pack<T>> = None;
    unroll6!(k => {
        if k < q && c[k] != 0.0 {
            let x = x(k);
            let mut next = sum.unwrap_or([T::zero(); LANES]);
            let first = sum.is_none();
            for (s, x) in next.iter_mut().zip(x) {
                *s = match (first, c[k]) {
                    (true, 1.0) => x,
                    (true, -1.0) => -x,
                    (true, c) => T::from_f64(c) * x,
                    (false, 1.0) => *s + x,
                    (false, -1.0) => *s - x,
                    (false, c) => *s + T::from_f64(c) * x,
                };
            }
            sum = Some(next);
        }
    });
    sum.unwrap_or([T::zero(); LANES])
}

/// The evaluation matrices of a tile's m outputs for a filter of r taps.
pub(super) struct Sizes<const R: usize>;

impl<const R: usize> Sizes<R> {
    /// Outputs per tile along a dimension.
    pub(super) const M: usize = {
        assert!(ALPHA + 1 - R <= MAX_M, "filters of 3 taps or more");
        ALPHA + 1 - R
    };
    /// `E_m`, expanding a tile of output gradients (6×m).
    pub(super) const TILE: Matrix = evaluation(ALPHA + 1 - R);
    /// `E_mᵀ`, contracting a tile of outputs (m×6).
    pub(super) const TILE_BACK: Matrix = transpose(&evaluation(ALPHA + 1 - R));
}

/// The transpose of a 6×6 matrix.
const fn transpose(m: &Matrix) -> Matrix {
    let mut t = [[0.0; ALPHA]; ALPHA];
    let mut i = 0;
    while i < ALPHA {
        let mut j = 0;
        while j < ALPHA {
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

    /// The scaled rows hold small integers and halves only.
    #[test]
    fn input_transform_entries_are_exact_halves() {
        for row in INPUT {
            for v in row {
                assert!((v * 2.0).fract() == 0.0 && v.abs() <= 8.0, "{row:?}");
            }
        }
    }

    /// `C·E_α = I`: the input transform inverts the evaluation.
    #[test]
    fn input_transform_inverts_the_evaluation() {
        let e = evaluation(ALPHA);
        for i in 0..ALPHA {
            for j in 0..ALPHA {
                let product: f64 = (0..ALPHA).map(|k| INPUT[k][i] / INPUT_SCALE[k] * e[k][j]).sum();
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((product - expected).abs() < 1e-12, "(C·E)[{i}][{j}] = {product}");
            }
        }
    }

    /// One dimension, m outputs of the correlation of a 6-cell tile with r taps, for
    /// every split m + r = 7, against the direct sum.
    #[test]
    fn one_dimensional_correlation_matches_the_direct_sum() {
        let d: [f64; ALPHA] = [0.3, -1.2, 2.5, 0.7, -0.4, 1.9];
        for r in 1..ALPHA {
            let m = ALPHA + 1 - r;
            let g: Vec<f64> = (0..r).map(|k| 0.5 - 0.37 * k as f64).collect();
            let (er, em) = (evaluation(r), evaluation(m));
            let transformed: Vec<f64> = (0..ALPHA)
                .map(|j| {
                    let gj: f64 = (0..r).map(|k| er[j][k] * g[k]).sum();
                    let dj: f64 = (0..ALPHA).map(|k| INPUT[j][k] * d[k]).sum();
                    gj / INPUT_SCALE[j] * dj
                })
                .collect();
            for i in 0..m {
                let y: f64 = (0..ALPHA).map(|j| em[j][i] * transformed[j]).sum();
                let direct: f64 = (0..r).map(|k| d[i + k] * g[k]).sum();
                assert!((y - direct).abs() < 1e-12, "r = {r}, y[{i}] = {y}, direct {direct}");
            }
        }
    }
}
