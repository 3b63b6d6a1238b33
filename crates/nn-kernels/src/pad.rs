//! Explicit padding of N-dimensional planes, by a constant or by the plane's own cells
//! (reflect, replicate, circular), chosen per dimension and side; and its adjoint, which
//! adds each padded cell's gradient back onto the cell it copied.

use crate::index::{checked_product, Odometer};
use crate::workspace::{fit, with_scratch};
use crate::{Element, GeometryError, Padding};
use rayon::prelude::*;

/// What a padded cell holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingMode {
    /// A constant value (the convolution's padding value).
    #[default]
    Constant,
    /// The plane mirrored about its edge cell, which is not repeated:
    /// `x[−i] = x[i]`; needs padding < length.
    Reflect,
    /// The edge cell repeated.
    Replicate,
    /// The plane wrapped around: `x[−i] = x[μ − i]`; needs padding ≤ length.
    Circular,
}

/// The modes of one dimension's two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SideModes {
    /// Before index 0.
    pub before: PaddingMode,
    /// After the last index.
    pub after: PaddingMode,
}

impl SideModes {
    /// The same mode on both sides.
    pub const fn both(mode: PaddingMode) -> Self {
        Self { before: mode, after: mode }
    }
}

/// Marks a padded cell that holds the constant.
const CONSTANT: usize = usize::MAX;

/// A plan for padding planes of one shape: for each cell of the padded plane, the
/// input cell it copies, or a mark for the constant. Built once per layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PadPlan {
    input_len: usize,
    padded: Vec<usize>,
    source: Vec<usize>,
}

/// Where padded coordinate `i` (counted from the first padding cell) reads in a
/// dimension of length `len` with `before` cells before it; `None` for the constant.
fn source_index(i: usize, len: usize, before: usize, modes: SideModes) -> Option<usize> {
    let at = i as isize - before as isize;
    let len_i = len as isize;
    let (mode, inside) = if at < 0 {
        (modes.before, false)
    } else if at >= len_i {
        (modes.after, false)
    } else {
        (PaddingMode::Constant, true)
    };
    if inside {
        return Some(at as usize);
    }
    let index = match mode {
        PaddingMode::Constant => return None,
        PaddingMode::Reflect if at < 0 => -at,
        PaddingMode::Reflect => 2 * (len_i - 1) - at,
        PaddingMode::Replicate => at.clamp(0, len_i - 1),
        PaddingMode::Circular => at.rem_euclid(len_i),
    };
    Some(index as usize)
}

impl PadPlan {
    /// A plan padding planes of lengths `input` by `padding`, with `modes` per
    /// dimension.
    ///
    /// # Errors
    /// [`GeometryError::RankMismatch`] for lists of other ranks, [`GeometryError::Zero`]
    /// for a zero length, [`GeometryError::PaddingMode`] for reflect padding not below
    /// the length or circular padding above it, and [`GeometryError::Overflow`].
    pub fn new(input: &[usize], padding: &[Padding], modes: &[SideModes]) -> Result<Self, GeometryError> {
        let rank = input.len();
        for (what, got) in [("padding", padding.len()), ("padding modes", modes.len())] {
            if got != rank {
                return Err(GeometryError::RankMismatch { what, expected: rank, got });
            }
        }
        let mut padded = Vec::with_capacity(rank);
        for dim in 0..rank {
            let (len, p) = (input[dim], padding[dim]);
            if len == 0 {
                return Err(GeometryError::Zero { what: "input length", dim });
            }
            for (mode, pad) in [(modes[dim].before, p.before), (modes[dim].after, p.after)] {
                let fits = match mode {
                    PaddingMode::Reflect => pad < len,
                    PaddingMode::Circular => pad <= len,
                    PaddingMode::Constant | PaddingMode::Replicate => true,
                };
                if !fits {
                    return Err(GeometryError::PaddingMode { dim, mode, padding: pad, length: len });
                }
            }
            let total = len.checked_add(p.before).and_then(|v| v.checked_add(p.after));
            padded.push(total.ok_or(GeometryError::Overflow { what: "padded input length" })?);
        }
        let cells = checked_product(&padded).filter(|&n| n < CONSTANT / 8);
        let cells = cells.ok_or(GeometryError::Overflow { what: "padded plane size" })?;
        let mut source = Vec::with_capacity(cells);
        let mut index = Odometer::new(&padded);
        while let Some(at) = index.current() {
            let mut flat = 0;
            for dim in 0..rank {
                match source_index(at[dim], input[dim], padding[dim].before, modes[dim]) {
                    Some(i) => flat = flat * input[dim] + i,
                    None => {
                        flat = CONSTANT;
                        break;
                    }
                }
            }
            source.push(flat);
            index.advance();
        }
        Ok(Self { input_len: checked_product(input).unwrap_or(0), padded, source })
    }

    /// The padded lengths.
    pub fn padded(&self) -> &[usize] {
        &self.padded
    }

    /// Cells of one input plane (positive: lengths are checked).
    pub fn input_len(&self) -> usize {
        self.input_len
    }

    /// Cells of one padded plane.
    pub fn padded_len(&self) -> usize {
        self.source.len()
    }

    /// Pads every plane of `x` (`[planes, ∏μ]`) into `y` (`[planes, ∏padded]`), the
    /// constant cells taking `value`.
    ///
    /// # Panics
    /// When the lengths are not whole planes of one count (callers size them).
    pub fn pad<T: Element>(&self, x: &[T], value: T, y: &mut [T]) {
        assert_eq!(x.len() / self.input_len.max(1), y.len() / self.padded_len().max(1), "plane counts");
        y.par_chunks_mut(self.padded_len()).zip(x.par_chunks(self.input_len)).for_each(|(y, x)| {
            for (y, &s) in y.iter_mut().zip(&self.source) {
                *y = if s == CONSTANT { value } else { x[s] };
            }
        });
    }

    /// Runs `f` on every plane of `x` padded, in a scratch buffer of this thread that
    /// later calls reuse (no allocation in steady state).
    pub fn with_padded<T: Element, R>(&self, x: &[T], value: T, f: impl FnOnce(&[T]) -> R) -> R {
        with_scratch::<T, 1, _>(|[buffer]| {
            let padded = fit(buffer, x.len() / self.input_len * self.padded_len());
            self.pad(x, value, padded);
            f(padded)
        })
    }

    /// Runs `f` to write the gradient of the padded input (a scratch buffer of the
    /// padded planes of `dx`, which `f` must overwrite), then folds it onto `dx`
    /// (overwritten) with [`unpad_add`](Self::unpad_add).
    pub fn unpad_from<T: Element, R>(&self, dx: &mut [T], f: impl FnOnce(&mut [T]) -> R) -> R {
        with_scratch::<T, 1, _>(|[buffer]| {
            let padded = fit(buffer, dx.len() / self.input_len * self.padded_len());
            let result = f(padded);
            self.unpad_add(padded, dx);
            result
        })
    }

    /// The adjoint of [`pad`](Self::pad): `dx` (overwritten) gets each padded cell's
    /// gradient added onto the cell it copied; constant cells have none.
    ///
    /// # Panics
    /// As for [`pad`](Self::pad).
    pub fn unpad_add<T: Element>(&self, dy: &[T], dx: &mut [T]) {
        assert_eq!(dx.len() / self.input_len.max(1), dy.len() / self.padded_len().max(1), "plane counts");
        dx.par_chunks_mut(self.input_len).zip(dy.par_chunks(self.padded_len())).for_each(|(dx, dy)| {
            dx.fill(T::zero());
            for (&g, &s) in dy.iter().zip(&self.source) {
                if s != CONSTANT {
                    dx[s] += g;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PaddingMode::*;

    fn padded_row(len: usize, before: usize, after: usize, modes: SideModes) -> Vec<f64> {
        let plan = PadPlan::new(&[len], &[Padding { before, after }], &[modes]).unwrap();
        let x: Vec<f64> = (1..=len).map(|v| v as f64).collect();
        let mut y = vec![0.0; plan.padded_len()];
        plan.pad(&x, -1.0, &mut y);
        y
    }

    #[test]
    fn each_mode_follows_its_definition() {
        assert_eq!(padded_row(4, 2, 3, SideModes::both(Reflect)), [3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0, 1.0]);
        assert_eq!(padded_row(3, 2, 1, SideModes::both(Replicate)), [1.0, 1.0, 1.0, 2.0, 3.0, 3.0]);
        assert_eq!(padded_row(3, 3, 2, SideModes::both(Circular)), [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0]);
        let mixed = SideModes { before: Constant, after: Reflect };
        assert_eq!(padded_row(3, 1, 2, mixed), [-1.0, 1.0, 2.0, 3.0, 2.0, 1.0]);
    }

    #[test]
    fn modes_combine_across_dimensions() {
        // 2×2 plane, reflect rows by 1 on top, replicate columns by 1 on the right.
        let modes = [SideModes { before: Reflect, after: Constant }, SideModes { before: Constant, after: Replicate }];
        let padding = [Padding { before: 1, after: 0 }, Padding { before: 0, after: 1 }];
        let plan = PadPlan::new(&[2, 2], &padding, &modes).unwrap();
        assert_eq!(plan.padded(), &[3, 3]);
        let mut y = vec![0.0; 9];
        plan.pad(&[1.0, 2.0, 3.0, 4.0], 0.0, &mut y);
        assert_eq!(y, [3.0, 4.0, 4.0, 1.0, 2.0, 2.0, 3.0, 4.0, 4.0]);
    }

    #[test]
    fn unpadding_is_the_adjoint() {
        let modes =
            [SideModes::both(Reflect), SideModes { before: Circular, after: Replicate }, SideModes::both(Constant)];
        let padding = [Padding { before: 2, after: 1 }, Padding { before: 3, after: 2 }, Padding::symmetric(1)];
        let plan = PadPlan::new(&[3, 4, 2], &padding, &modes).unwrap();
        let planes = 2;
        let x: Vec<f64> = (0..planes * 24).map(|i| ((i * 7) % 11) as f64 - 5.0).collect();
        let dy: Vec<f64> = (0..planes * plan.padded_len()).map(|i| ((i * 5) % 13) as f64 - 6.0).collect();
        let mut y = vec![0.0; dy.len()];
        plan.pad(&x, 0.0, &mut y);
        let mut dx = vec![f64::NAN; x.len()];
        plan.unpad_add(&dy, &mut dx);
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
        assert_eq!(dot(&y, &dy), dot(&x, &dx));
    }

    #[test]
    fn modes_that_cannot_apply_are_errors() {
        let e = PadPlan::new(&[3], &[Padding::symmetric(3)], &[SideModes::both(Reflect)]).unwrap_err();
        assert_eq!(e, GeometryError::PaddingMode { dim: 0, mode: Reflect, padding: 3, length: 3 });
        assert!(PadPlan::new(&[3], &[Padding::symmetric(3)], &[SideModes::both(Circular)]).is_ok());
        assert!(PadPlan::new(&[3], &[Padding::symmetric(4)], &[SideModes::both(Circular)]).is_err());
        assert!(PadPlan::new(&[3], &[Padding::symmetric(9)], &[SideModes::both(Replicate)]).is_ok());
        assert!(PadPlan::new(&[3, 3], &[Padding::symmetric(1)], &[SideModes::default()]).is_err());
    }
}
