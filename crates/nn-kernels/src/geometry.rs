//! The geometry of a window sliding over an N-dimensional plane: a convolution's
//! filter or a pooling window, with per-dimension stride and padding (SPEC §3).

use crate::index::checked_product;
use crate::GeometryError;

/// What to do when `(μ + p_before + p_after − f) / s` is not an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputRounding {
    /// Refuse the geometry with [`GeometryError::NotDivisible`].
    #[default]
    Strict,
    /// Truncate: input cells past the last full window are not used.
    Floor,
}

/// Which way the filter runs over the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelMode {
    /// The source's true convolution: `γ_i = s_i·β_i + f_i − p_i − α_i − 1`
    /// (the filter is flipped); dilated, `γ_i = s_i·β_i + d_i·(f_i − 1 − α_i) − p_i`.
    #[default]
    Convolution,
    /// Cross-correlation, as most frameworks compute: `γ_i = s_i·β_i − p_i + α_i`;
    /// dilated, `γ_i = s_i·β_i − p_i + d_i·α_i`.
    CrossCorrelation,
}

/// Padding of one spatial dimension: cells added before index 0 and after the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Padding {
    /// Cells before the input (the source's p_i).
    pub before: usize,
    /// Cells after the input (the source's p_i when symmetric).
    pub after: usize,
}

impl Padding {
    /// The same padding `p` on both sides, as in the source.
    pub const fn symmetric(p: usize) -> Self {
        Self { before: p, after: p }
    }
}

/// The validated geometry of an N-dimensional convolution (or pooling window) over one
/// channel plane: input lengths μ, filter lengths f, strides s, padding p, dilations d
/// (1 unless set by [`ConvGeometry::with_dilation`]), and the output lengths
/// `v_i = (μ_i + p_before_i + p_after_i − d_i·(f_i − 1) − 1) / s_i + 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvGeometry {
    input: Vec<usize>,
    filter: Vec<usize>,
    stride: Vec<usize>,
    padding: Vec<Padding>,
    dilation: Vec<usize>,
    rounding: OutputRounding,
    output: Vec<usize>,
    mode: KernelMode,
    input_len: usize,
    filter_len: usize,
    output_len: usize,
}

impl ConvGeometry {
    /// Validates the geometry and computes the output lengths, with checked arithmetic.
    ///
    /// Every list has one entry per spatial dimension.
    ///
    /// # Errors
    /// [`GeometryError`] naming the dimension: lists of different ranks, a zero length or
    /// stride, a filter longer than the padded input, a non-integer output length under
    /// [`OutputRounding::Strict`], or a size that overflows.
    pub fn new(
        input: &[usize],
        filter: &[usize],
        stride: &[usize],
        padding: &[Padding],
        rounding: OutputRounding,
        mode: KernelMode,
    ) -> Result<Self, GeometryError> {
        Self::dilated(input, filter, stride, padding, &vec![1; input.len()], rounding, mode)
    }

    /// The same geometry with the filter's taps spaced `dilation[i]` cells apart in
    /// dimension i (1: adjacent), the output lengths recomputed.
    ///
    /// # Errors
    /// As for [`ConvGeometry::new`], with the dilated filter extent `d·(f − 1) + 1` in
    /// place of f, and [`GeometryError::Zero`] for a zero dilation.
    pub fn with_dilation(&self, dilation: &[usize]) -> Result<Self, GeometryError> {
        Self::dilated(&self.input, &self.filter, &self.stride, &self.padding, dilation, self.rounding, self.mode)
    }

    /// A geometry whose filter taps are spaced `dilation[i]` cells apart, validated as
    /// dilated (a strict length that only the dilated extent divides is accepted).
    ///
    /// # Errors
    /// As for [`ConvGeometry::with_dilation`].
    pub fn dilated(
        input: &[usize],
        filter: &[usize],
        stride: &[usize],
        padding: &[Padding],
        dilation: &[usize],
        rounding: OutputRounding,
        mode: KernelMode,
    ) -> Result<Self, GeometryError> {
        let rank = input.len();
        if rank == 0 {
            return Err(GeometryError::NoSpatialDims);
        }
        let lists = [
            ("filter", filter.len()),
            ("stride", stride.len()),
            ("padding", padding.len()),
            ("dilation", dilation.len()),
        ];
        for (what, got) in lists {
            if got != rank {
                return Err(GeometryError::RankMismatch { what, expected: rank, got });
            }
        }
        let mut output = Vec::with_capacity(rank);
        for dim in 0..rank {
            let (mu, f, s, p, d) = (input[dim], filter[dim], stride[dim], padding[dim], dilation[dim]);
            for (what, value) in [("input length", mu), ("filter length", f), ("stride", s), ("dilation", d)] {
                if value == 0 {
                    return Err(GeometryError::Zero { what, dim });
                }
            }
            let padded = mu
                .checked_add(p.before)
                .and_then(|v| v.checked_add(p.after))
                .ok_or(GeometryError::Overflow { what: "padded input length" })?;
            let extent = (f - 1)
                .checked_mul(d)
                .and_then(|e| e.checked_add(1))
                .ok_or(GeometryError::Overflow { what: "dilated filter extent" })?;
            if extent > padded {
                return Err(GeometryError::FilterTooLarge { dim, filter: extent, padded });
            }
            let span = padded - extent;
            let remainder = span % s;
            if remainder != 0 && rounding == OutputRounding::Strict {
                return Err(GeometryError::NotDivisible {
                    dim,
                    input: mu,
                    pad_before: p.before,
                    pad_after: p.after,
                    filter: extent,
                    stride: s,
                    remainder,
                });
            }
            output.push(span / s + 1);
        }
        // Coordinates are computed as isize: keep every padded length representable.
        if input.iter().zip(padding).any(|(&mu, p)| mu + p.before + p.after > isize::MAX as usize) {
            return Err(GeometryError::Overflow { what: "padded input length" });
        }
        let overflow = |what| GeometryError::Overflow { what };
        Ok(Self {
            input_len: checked_product(input).ok_or(overflow("input size"))?,
            filter_len: checked_product(filter).ok_or(overflow("filter size"))?,
            output_len: checked_product(&output).ok_or(overflow("output size"))?,
            input: input.to_vec(),
            filter: filter.to_vec(),
            stride: stride.to_vec(),
            padding: padding.to_vec(),
            dilation: dilation.to_vec(),
            rounding,
            output,
            mode,
        })
    }

    /// Number of spatial dimensions n.
    pub fn rank(&self) -> usize {
        self.input.len()
    }
    /// Input lengths μ.
    pub fn input(&self) -> &[usize] {
        &self.input
    }
    /// Filter lengths f.
    pub fn filter(&self) -> &[usize] {
        &self.filter
    }
    /// Strides s.
    pub fn stride(&self) -> &[usize] {
        &self.stride
    }
    /// Padding per dimension.
    pub fn padding(&self) -> &[Padding] {
        &self.padding
    }
    /// Dilations d: the spacing of the filter's taps (1 when adjacent).
    pub fn dilation(&self) -> &[usize] {
        &self.dilation
    }
    /// True when every dilation is 1: the filter's taps are adjacent.
    pub fn is_undilated(&self) -> bool {
        self.dilation.iter().all(|&d| d == 1)
    }
    /// How a non-integer output length is treated.
    pub fn rounding(&self) -> OutputRounding {
        self.rounding
    }
    /// Output lengths v.
    pub fn output(&self) -> &[usize] {
        &self.output
    }
    /// The kernel mode.
    pub fn mode(&self) -> KernelMode {
        self.mode
    }
    /// ∏μ: cells in one input plane.
    pub fn input_len(&self) -> usize {
        self.input_len
    }
    /// ∏f: cells in one filter plane.
    pub fn filter_len(&self) -> usize {
        self.filter_len
    }
    /// ∏v: cells in one output plane.
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// The offset added to `s·β − p_before` for filter index α in dimension `dim`:
    /// `d·(f − 1 − α)` for the source's convolution, `d·α` for cross-correlation.
    #[inline]
    pub(crate) fn tap_offset(&self, dim: usize, alpha: usize) -> isize {
        let tap = match self.mode {
            KernelMode::Convolution => self.filter[dim] - 1 - alpha,
            KernelMode::CrossCorrelation => alpha,
        };
        (tap * self.dilation[dim]) as isize
    }

    /// True when im2col would copy the input unchanged (1×…×1 filter, stride 1, no
    /// padding), so the input itself can serve as the column matrix.
    pub fn is_pointwise(&self) -> bool {
        self.filter.iter().all(|&f| f == 1)
            && self.stride.iter().all(|&s| s == 1)
            && self.padding.iter().all(|p| p.before == 0 && p.after == 0)
    }
}

/// The β in `0..out` with `0 ≤ s·β − pad + offset < len`, as a half-open range.
#[inline]
pub(crate) fn valid_range(s: usize, pad: usize, offset: isize, len: usize, out: usize) -> (usize, usize) {
    let (s, shift) = (s as isize, offset - pad as isize);
    // γ = s·β + shift ≥ 0  ⇔  β ≥ ceil(−shift / s)
    let lo = if shift >= 0 { 0 } else { (-shift + s - 1) / s };
    // γ ≤ len − 1  ⇔  β ≤ floor((len − 1 − shift) / s)
    let top = len as isize - 1 - shift;
    let hi = if top < 0 { 0 } else { top / s + 1 };
    let lo = (lo as usize).min(out);
    (lo, (hi as usize).clamp(lo, out))
}
