use thiserror::Error;

/// Geometry that cannot describe a convolution or pooling window.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum GeometryError {
    /// A per-dimension list has the wrong number of entries.
    #[error("{what} has {got} entries, but the input has {expected} spatial dimensions")]
    RankMismatch {
        /// Which list (e.g. "stride").
        what: &'static str,
        /// The number of spatial dimensions.
        expected: usize,
        /// The number of entries given.
        got: usize,
    },
    /// A length that must be positive is zero.
    #[error("{what} is zero in spatial dimension {dim}")]
    Zero {
        /// Which quantity (e.g. "stride", "input length").
        what: &'static str,
        /// The spatial dimension (0-based).
        dim: usize,
    },
    /// A padding mode that cannot produce this much padding (reflect needs padding
    /// below the length, circular at most the length).
    #[error("{mode:?} padding of {padding} does not fit the length {length} of spatial dimension {dim}")]
    PaddingMode {
        /// The spatial dimension (0-based).
        dim: usize,
        /// The mode.
        mode: crate::pad::PaddingMode,
        /// The padding on the offending side.
        padding: usize,
        /// The input length.
        length: usize,
    },
    /// A group count that does not divide both channel counts.
    #[error("{groups} groups do not divide both {in_channels} input and {out_channels} output channels")]
    Groups {
        /// The group count.
        groups: usize,
        /// C_in.
        in_channels: usize,
        /// C_out.
        out_channels: usize,
    },
    /// There must be at least one spatial dimension.
    #[error("a convolution needs at least one spatial dimension")]
    NoSpatialDims,
    /// The filter does not fit inside the padded input.
    #[error("filter extent {filter} exceeds the padded input length {padded} in spatial dimension {dim}")]
    FilterTooLarge {
        /// The spatial dimension (0-based).
        dim: usize,
        /// The filter's extent `d·(f − 1) + 1`: its length f when undilated.
        filter: usize,
        /// μ + p_before + p_after.
        padded: usize,
    },
    /// Pooling padding as large as the window, which could leave a window with no
    /// input cell.
    #[error("pooling padding {padding} is not smaller than the window length {window} in spatial dimension {dim}")]
    PaddingTooLarge {
        /// The spatial dimension (0-based).
        dim: usize,
        /// The larger of the two paddings.
        padding: usize,
        /// The window length.
        window: usize,
    },
    /// `(μ + p_before + p_after − d·(f − 1) − 1) / s` is not an integer in strict mode.
    #[error(
        "strict geometry: (input {input} + padding {pad_before}+{pad_after} - filter {filter}) / stride {stride} \
         is not an integer in spatial dimension {dim} (remainder {remainder}); use Floor to truncate"
    )]
    NotDivisible {
        /// The spatial dimension (0-based).
        dim: usize,
        /// Input length μ.
        input: usize,
        /// Padding before the input.
        pad_before: usize,
        /// Padding after the input.
        pad_after: usize,
        /// The filter's extent `d·(f − 1) + 1`: its length f when undilated.
        filter: usize,
        /// Stride s.
        stride: usize,
        /// The remainder of the division.
        remainder: usize,
    },
    /// A size computation overflowed `usize`.
    #[error("size overflow computing {what}")]
    Overflow {
        /// What was being computed.
        what: &'static str,
    },
}

/// An error from a kernel call: bad geometry or a buffer of the wrong length.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The geometry is invalid.
    #[error(transparent)]
    Geometry(#[from] GeometryError),
    /// A buffer does not have the length the shapes require.
    #[error("{what}: expected {expected} elements, got {got}")]
    BufferLength {
        /// Which buffer (e.g. "gemm: A").
        what: &'static str,
        /// The length the shapes imply.
        expected: usize,
        /// The length passed.
        got: usize,
    },
}

pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::BufferLength { what, expected, got })
    }
}
