use crate::{NnError, Tensor};
use nn_kernels::elementwise::Activation;
use nn_kernels::Element;

/// What a parameter is to its layer, for optimizer options that treat the kinds
/// differently (weight decay on weights only, the usual recipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParamRole {
    /// A weight that multiplies inputs (dense, convolution).
    #[default]
    Weight,
    /// A bias added to outputs.
    Bias,
    /// A normalisation layer's scale or shift.
    Normalization,
}

/// A trainable tensor and the gradient accumulated for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Param<T> {
    /// The parameter's name within its layer ("weight", "bias").
    pub name: &'static str,
    /// The current value w.
    pub value: Tensor<T>,
    /// `Σ_p ∂⁽ᵖ⁾w` accumulated by `backward` since the last zeroing.
    pub grad: Tensor<T>,
    /// What the parameter is.
    pub role: ParamRole,
}

impl<T: Element> Param<T> {
    /// A weight with a zero gradient of the same shape.
    pub fn new(name: &'static str, value: Tensor<T>) -> Self {
        let grad = Tensor::zeros(value.shape()).expect("same shape as an existing tensor");
        Self { name, value, grad, role: ParamRole::Weight }
    }

    /// The same parameter with another role.
    pub fn with_role(mut self, role: ParamRole) -> Self {
        self.role = role;
        self
    }
}

/// Which tensors of the last forward pass a layer's `backward` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackwardReads {
    /// The layer's input x⁽ᵏ⁾ (a convolution's weight gradient needs it).
    pub input: bool,
    /// The layer's output x⁽ᵏ⁺¹⁾ (ReLU's derivative is cheapest from it).
    pub output: bool,
}

impl BackwardReads {
    /// Both tensors: the safe default.
    pub const BOTH: Self = Self { input: true, output: true };
    /// The input only.
    pub const INPUT: Self = Self { input: true, output: false };
    /// The output only.
    pub const OUTPUT: Self = Self { input: false, output: true };
    /// Neither (the layer keeps what it needs, or needs only shapes).
    pub const NEITHER: Self = Self { input: false, output: false };
}

/// One layer `x⁽ᵏ⁺¹⁾ = f⁽ᵏ⁾(x⁽ᵏ⁾, w⁽ᵏ⁾)` of a feed-forward network.
///
/// Shapes are per sample; tensors passed in carry a leading batch dimension.
pub trait Layer<T: Element>: Send + Sync {
    /// A short name of the layer type ("dense", "conv", …), used in errors and
    /// timings; it names a ReLU the layer has taken over ("batch_norm+relu").
    fn kind(&self) -> &'static str;

    /// The layer type alone, without a ReLU taken over: the kind in a
    /// [`Sequential`](crate::Sequential) network's parameter names, which must not
    /// change when the network folds a ReLU into the layer.
    fn base_kind(&self) -> &'static str {
        self.kind()
    }

    /// The per-sample input shape this layer was built for.
    fn input_shape(&self) -> &[usize];

    /// The per-sample output shape.
    fn output_shape(&self) -> &[usize];

    /// Step 2 for this layer: computes `output` (reshaped to `[batch, output_shape…]`)
    /// from `input` (`[batch, input_shape…]`).
    ///
    /// # Errors
    /// [`NnError::Shape`] when `input` is not `[batch, input_shape…]`.
    fn forward(&mut self, input: &Tensor<T>, output: &mut Tensor<T>) -> Result<(), NnError>;

    /// Step 3 for this layer: given the `input` and `output` of the last forward and
    /// `∂L/∂output`, adds `∂L/∂w` into each parameter's gradient and, when asked,
    /// writes `∂L/∂input` into `grad_input` (reshaped to the input's shape).
    ///
    /// # Errors
    /// [`NnError::Shape`] when a tensor's shape does not match the last forward pass.
    fn backward(
        &mut self,
        input: &Tensor<T>,
        output: &Tensor<T>,
        grad_output: &Tensor<T>,
        grad_input: Option<&mut Tensor<T>>,
    ) -> Result<(), NnError>;

    /// Which of `input` and `output` [`Layer::backward`] reads. A [`Graph`](crate::Graph)
    /// keeps a tensor until the backward pass only if some layer reads it, and hands a
    /// layer an empty tensor in place of one it declared it does not read.
    fn backward_reads(&self) -> BackwardReads {
        BackwardReads::BOTH
    }

    /// The trainable parameters, in a fixed order.
    fn params(&self) -> Vec<&Param<T>> {
        Vec::new()
    }

    /// The trainable parameters, mutably, in the same order as [`Layer::params`].
    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        Vec::new()
    }

    /// State that is not trained but saved with the parameters (batch normalisation's
    /// running estimates), by name, in a fixed order.
    fn buffers(&self) -> Vec<(&'static str, &Tensor<T>)> {
        Vec::new()
    }

    /// The buffers, mutably, in the same order as [`Layer::buffers`].
    fn buffers_mut(&mut self) -> Vec<(&'static str, &mut Tensor<T>)> {
        Vec::new()
    }

    /// Moves past `patterns` patterns as a forward pass over them would, for layers
    /// that draw random numbers per pattern (dropout): a process that runs only its
    /// share of a minibatch skips the patterns before and after it, and draws what one
    /// process running the whole minibatch would. Other layers ignore it.
    fn skip_patterns(&mut self, _patterns: usize) {}

    /// The elementwise activation this layer is, if it is one (a graph folds a ReLU
    /// into the layer before it where that layer [rectifies its output](Self::rectify_output)).
    fn as_activation(&self) -> Option<Activation> {
        None
    }

    /// Turns on or off applying a ReLU to this layer's output within the layer's own
    /// passes, with the bits a ReLU layer after it would give; returns whether it is
    /// on. When on, `forward` writes `max(y, 0)` and `backward` masks the output
    /// gradient where that is zero. A [`Sequential`](crate::Sequential) network turns
    /// it on in the layer before each ReLU and then skips the ReLU layer, and a
    /// [`Graph`](crate::Graph) drops the ReLU's node: a sweep over memory fewer each
    /// way. Layers that cannot (most) stay off and return `false`; batch
    /// normalisation can.
    fn rectify_output(&mut self, _on: bool) -> bool {
        false
    }

    /// Turns on or off applying a ReLU to this layer's input within the layer's own
    /// passes, with the bits a ReLU layer before it would give; returns whether it is
    /// on. A [`Sequential`](crate::Sequential) network turns it on in the layer after
    /// each ReLU and then skips the ReLU layer, and a [`Graph`](crate::Graph) drops
    /// the ReLU's node: a sweep over memory fewer each way.
    /// Layers that cannot (most) stay off and return `false`; max pooling can, as
    /// ReLU commutes with the maximum.
    fn rectify_input(&mut self, _on: bool) -> bool {
        false
    }

    /// Switches between training (the default) and evaluation, for layers that behave
    /// differently (batch statistics against running estimates). The trainer and
    /// `evaluate` set the mode themselves.
    fn set_training(&mut self, _training: bool) {}
}

/// Checks that `tensor` is `[batch, per_sample…]` with a positive batch, and returns
/// the batch size.
pub(crate) fn batch_of<T: Element>(
    op: &'static str,
    tensor: &Tensor<T>,
    per_sample: &[usize],
) -> Result<usize, NnError> {
    let shape = tensor.shape();
    if shape.len() != per_sample.len() + 1 || &shape[1..] != per_sample {
        let mut expected = vec![0];
        expected.extend_from_slice(per_sample);
        return Err(NnError::Shape { op, expected, got: shape.to_vec() });
    }
    if shape[0] == 0 {
        return Err(NnError::ZeroSized { op, shape: shape.to_vec(), dim: 0 });
    }
    Ok(shape[0])
}

/// Checks the tensors handed to `backward`: `grad_output` shaped as the layer's output
/// with a positive batch, and those of `input` and `output` the layer reads (see
/// [`Layer::backward_reads`]) of the same shape; returns the batch size.
pub(crate) fn backward_batch<T: Element, L: Layer<T> + ?Sized>(
    layer: &L,
    input: &Tensor<T>,
    output: &Tensor<T>,
    grad_output: &Tensor<T>,
) -> Result<usize, NnError> {
    let batch = batch_of("backward grad_output", grad_output, layer.output_shape())?;
    let reads = layer.backward_reads();
    if reads.input && batch_of("backward input", input, layer.input_shape())? != batch {
        let mut expected = vec![batch];
        expected.extend_from_slice(layer.input_shape());
        return Err(NnError::Shape { op: "backward input", expected, got: input.shape().to_vec() });
    }
    if reads.output && output.shape() != grad_output.shape() {
        let op = "backward output (shaped as grad_output)";
        return Err(NnError::Shape { op, expected: grad_output.shape().to_vec(), got: output.shape().to_vec() });
    }
    Ok(batch)
}
