use nn_kernels::{GeometryError, KernelError};
use thiserror::Error;

/// Everything that can go wrong building or running a network.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum NnError {
    /// A tensor has the wrong shape for an operation.
    #[error("{op}: expected shape {expected:?}, got {got:?}")]
    Shape {
        /// The operation (e.g. "dense forward").
        op: &'static str,
        /// The shape required ("0" in a batch position means any positive batch).
        expected: Vec<usize>,
        /// The shape given.
        got: Vec<usize>,
    },
    /// A tensor's data length does not match its shape.
    #[error("shape {shape:?} needs {expected} elements, got {got}")]
    DataLength {
        /// The shape.
        shape: Vec<usize>,
        /// ∏shape.
        expected: usize,
        /// The data length.
        got: usize,
    },
    /// A dimension that must be positive is zero.
    #[error("{op}: dimension {dim} of shape {shape:?} is zero")]
    ZeroSized {
        /// The operation.
        op: &'static str,
        /// The shape.
        shape: Vec<usize>,
        /// The zero dimension.
        dim: usize,
    },
    /// A layer cannot take its input: reported with the layer's position.
    #[error("layer {index} ({kind}) with input shape {input:?}: {source}")]
    Layer {
        /// 0-based position in the network.
        index: usize,
        /// The layer kind (e.g. "conv").
        kind: &'static str,
        /// The per-sample input shape it was given.
        input: Vec<usize>,
        /// What went wrong.
        #[source]
        source: Box<NnError>,
    },
    /// Layer `index` produces a shape that layer `index + 1` does not take.
    #[error("layer {index} ({kind}) outputs {output:?} but layer {next_index} ({next_kind}) expects {next_input:?}")]
    LayerMismatch {
        /// The producing layer.
        index: usize,
        /// Its kind.
        kind: &'static str,
        /// Its per-sample output shape.
        output: Vec<usize>,
        /// The consuming layer.
        next_index: usize,
        /// Its kind.
        next_kind: &'static str,
        /// Its per-sample input shape.
        next_input: Vec<usize>,
    },
    /// A class label is not below the number of classes.
    #[error("label {label} at batch index {index} is out of range for {classes} classes")]
    LabelOutOfRange {
        /// Position in the batch.
        index: usize,
        /// The label.
        label: usize,
        /// The number of classes.
        classes: usize,
    },
    /// An argument outside its domain.
    #[error("{what}: {details}")]
    InvalidArgument {
        /// The argument.
        what: &'static str,
        /// Why it is refused.
        details: String,
    },
    /// `backward` was called without a matching `forward`.
    #[error("backward called before forward")]
    BackwardBeforeForward,
    /// Invalid convolution or pooling geometry.
    #[error(transparent)]
    Geometry(#[from] GeometryError),
    /// A kernel refused its buffers.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}
