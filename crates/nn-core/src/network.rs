use crate::layers::{
    ActivationLayer, BatchNorm, Conv, ConvSpec, ConvTranspose, Dense, Dropout, Flatten, GlobalAvgPool, GroupNorm,
    LayerNorm, Pool, PoolKind, PoolSpec, Upsample,
};
use crate::{seeded_rng, Init, Layer, NnError, Param, SeededRng, Tensor};
use nn_kernels::elementwise::Activation;
use nn_kernels::Element;

/// A feed-forward network: layers applied in order (SPEC §1).
///
/// The network keeps every layer's output from the last [`forward`](Self::forward)
/// (the x⁽ᵏ⁾ that Step 3 needs) in buffers it reuses, so a training step allocates
/// nothing once the batch size is steady.
pub struct Sequential<T: Element> {
    input_shape: Vec<usize>,
    layers: Vec<Box<dyn Layer<T>>>,
    /// `activations[k]` is the input of layer k; the last one is the network's output.
    activations: Vec<Tensor<T>>,
    /// `grads[k]` is ∂L/∂x⁽ᵏ⁾, the gradient of layer k's input. One buffer per layer,
    /// not two used in turn: each then keeps its size from step to step, and a step
    /// neither re-grows nor zero-fills them.
    grads: Vec<Tensor<T>>,
    forward_done: bool,
    training: bool,
}

impl<T: Element> std::fmt::Debug for Sequential<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<_> = self.layers.iter().map(|l| l.kind()).collect();
        f.debug_struct("Sequential").field("input_shape", &self.input_shape).field("layers", &kinds).finish()
    }
}

impl<T: Element> Sequential<T> {
    /// A network of `layers` taking samples of shape `input_shape`. Fails on the first
    /// layer whose input shape differs from what the previous layer produces.
    ///
    /// # Errors
    /// [`NnError::Shape`] naming the layer whose input shape does not match.
    pub fn new(input_shape: &[usize], layers: Vec<Box<dyn Layer<T>>>) -> Result<Self, NnError> {
        let mut expected = input_shape.to_vec();
        for (index, layer) in layers.iter().enumerate() {
            if layer.input_shape() != expected {
                return Err(match index.checked_sub(1) {
                    Some(prev) => NnError::LayerMismatch {
                        index: prev,
                        kind: layers[prev].kind(),
                        output: expected,
                        next_index: index,
                        next_kind: layer.kind(),
                        next_input: layer.input_shape().to_vec(),
                    },
                    None => NnError::Layer {
                        index,
                        kind: layer.kind(),
                        input: layer.input_shape().to_vec(),
                        source: Box::new(NnError::Shape {
                            op: "network input",
                            expected: input_shape.to_vec(),
                            got: layer.input_shape().to_vec(),
                        }),
                    },
                });
            }
            expected = layer.output_shape().to_vec();
        }
        let activations = (0..=layers.len()).map(|_| Tensor::default()).collect();
        let grads = (0..layers.len().max(1)).map(|_| Tensor::default()).collect();
        Ok(Self { input_shape: input_shape.to_vec(), layers, activations, grads, forward_done: false, training: true })
    }

    /// A builder that tracks the shape as layers are added, drawing initial weights
    /// from a generator seeded with `seed`.
    pub fn builder(input_shape: &[usize], seed: u64) -> SequentialBuilder<T> {
        SequentialBuilder {
            input_shape: input_shape.to_vec(),
            shape: input_shape.to_vec(),
            layers: Vec::new(),
            rng: seeded_rng(seed),
            error: None,
        }
    }

    /// The per-sample input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// The per-sample output shape.
    pub fn output_shape(&self) -> &[usize] {
        self.layers.last().map_or(&self.input_shape, |l| l.output_shape())
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Box<dyn Layer<T>>] {
        &self.layers
    }

    /// The layers, mutably (e.g. to time or inspect one layer alone).
    pub fn layers_mut(&mut self) -> &mut [Box<dyn Layer<T>>] {
        &mut self.layers
    }

    /// Step 2: runs the batch `x` (`[batch, input_shape…]`) through every layer and
    /// returns the output x⁽ᴺ⁾.
    ///
    /// # Errors
    /// [`NnError::Shape`] when `x` is not `[batch, input_shape…]`.
    pub fn forward(&mut self, x: &Tensor<T>) -> Result<&Tensor<T>, NnError> {
        crate::layer::batch_of("network forward", x, &self.input_shape)?;
        self.forward_done = false;
        self.activations[0].copy_from(x);
        for (index, layer) in self.layers.iter_mut().enumerate() {
            let (inputs, outputs) = self.activations.split_at_mut(index + 1);
            layer.forward(&inputs[index], &mut outputs[0]).map_err(|source| in_layer(index, &**layer, source))?;
        }
        self.forward_done = true;
        Ok(&self.activations[self.layers.len()])
    }

    /// The output of the last forward pass, if any.
    pub fn output(&self) -> Option<&Tensor<T>> {
        self.forward_done.then(|| &self.activations[self.layers.len()])
    }

    /// Step 3: from `∂L/∂x⁽ᴺ⁾` (shaped like the last output), adds every parameter's
    /// gradient into [`Param::grad`]. The first layer's input gradient is skipped.
    ///
    /// # Errors
    /// [`NnError`] when no forward pass preceded, or `grad_output` is not shaped like the
    /// last output.
    pub fn backward(&mut self, grad_output: &Tensor<T>) -> Result<(), NnError> {
        self.backward_impl(grad_output, false)
    }

    /// [`backward`](Self::backward), also returning `∂L/∂x⁽¹⁾`, the gradient with
    /// respect to the network's input.
    ///
    /// # Errors
    /// As for [`backward`](Self::backward).
    pub fn backward_to_input(&mut self, grad_output: &Tensor<T>) -> Result<&Tensor<T>, NnError> {
        self.backward_impl(grad_output, true)?;
        if self.layers.is_empty() {
            self.grads[0].copy_from(grad_output);
        }
        Ok(&self.grads[0])
    }

    fn backward_impl(&mut self, grad_output: &Tensor<T>, want_input_grad: bool) -> Result<(), NnError> {
        if !self.forward_done {
            return Err(NnError::BackwardBeforeForward);
        }
        let out = &self.activations[self.layers.len()];
        if grad_output.shape() != out.shape() {
            return Err(NnError::Shape {
                op: "network backward",
                expected: out.shape().to_vec(),
                got: grad_output.shape().to_vec(),
            });
        }
        // Layer k reads ∂x⁽ᵏ⁺¹⁾ from grads[k + 1] (the caller's gradient for the last
        // layer) and writes ∂x⁽ᵏ⁾ into grads[k].
        let last = self.layers.len().saturating_sub(1);
        for index in (0..self.layers.len()).rev() {
            let (head, tail) = self.grads.split_at_mut(index + 1);
            let write = &mut head[index];
            let upstream = if index == last { grad_output } else { &tail[0] };
            let need_input = index > 0 || want_input_grad;
            let layer = &mut self.layers[index];
            layer
                .backward(&self.activations[index], &self.activations[index + 1], upstream, need_input.then_some(write))
                .map_err(|source| in_layer(index, &**layer, source))?;
        }
        Ok(())
    }

    /// Every parameter, layer by layer.
    pub fn params(&self) -> Vec<&Param<T>> {
        self.layers.iter().flat_map(|l| l.params()).collect()
    }

    /// Every parameter, mutably, in the order of [`params`](Self::params).
    pub fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        self.layers.iter_mut().flat_map(|l| l.params_mut()).collect()
    }

    /// Every parameter with a name that says where it lives: `"{index}.{kind}.{name}"`,
    /// e.g. `"0.conv.weight"`.
    pub fn named_params(&self) -> Vec<(String, &Param<T>)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.params().into_iter().map(move |p| (format!("{i}.{}.{}", l.kind(), p.name), p)))
            .collect()
    }

    /// [`named_params`](Self::named_params), mutably.
    pub fn named_params_mut(&mut self) -> Vec<(String, &mut Param<T>)> {
        self.layers
            .iter_mut()
            .enumerate()
            .flat_map(|(i, l)| {
                let kind = l.kind();
                l.params_mut().into_iter().map(move |p| (format!("{i}.{kind}.{}", p.name), p))
            })
            .collect()
    }

    /// Every buffer (state saved with the parameters but not trained, such as batch
    /// normalisation's running estimates), named as parameters are:
    /// `"{index}.{kind}.{name}"`.
    pub fn named_buffers(&self) -> Vec<(String, &Tensor<T>)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.buffers().into_iter().map(move |(name, b)| (format!("{i}.{}.{name}", l.kind()), b)))
            .collect()
    }

    /// [`named_buffers`](Self::named_buffers), mutably.
    pub fn named_buffers_mut(&mut self) -> Vec<(String, &mut Tensor<T>)> {
        self.layers
            .iter_mut()
            .enumerate()
            .flat_map(|(i, l)| {
                let kind = l.kind();
                l.buffers_mut().into_iter().map(move |(name, b)| (format!("{i}.{kind}.{name}"), b))
            })
            .collect()
    }

    /// Switches every layer to training (`true`) or evaluation mode; see
    /// [`Layer::set_training`].
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
        for layer in &mut self.layers {
            layer.set_training(training);
        }
    }

    /// [`Layer::skip_patterns`] on every layer.
    pub fn skip_patterns(&mut self, patterns: usize) {
        for layer in &mut self.layers {
            layer.skip_patterns(patterns);
        }
    }

    /// True in training mode (the default), false in evaluation mode.
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// Sets every parameter gradient to zero (the start of a minibatch's Σ_p).
    pub fn zero_grad(&mut self) {
        for p in self.params_mut() {
            nn_kernels::elementwise::fill_zero(p.grad.data_mut());
        }
    }

    /// The index of the first layer whose output in the last forward pass holds a NaN
    /// or an infinity (`None` when every output is finite, or before a forward pass).
    /// A diagnosis for when training has gone non-finite: it reads every activation.
    pub fn first_non_finite_output(&self) -> Option<usize> {
        if !self.forward_done {
            return None;
        }
        (0..self.layers.len()).find(|&i| !nn_kernels::elementwise::all_finite(self.activations[i + 1].data()))
    }

    /// The number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.value.len()).sum()
    }
}

/// An error of layer `index`, wrapped with the layer's kind and input shape.
fn in_layer<T: Element>(index: usize, layer: &dyn Layer<T>, source: NnError) -> NnError {
    NnError::Layer { index, kind: layer.kind(), input: layer.input_shape().to_vec(), source: Box::new(source) }
}

/// Builds a [`Sequential`] layer by layer, tracking the per-sample shape so each
/// layer's input size is inferred. The first error is kept and returned by
/// [`build`](Self::build), naming the layer's index.
pub struct SequentialBuilder<T: Element> {
    input_shape: Vec<usize>,
    shape: Vec<usize>,
    layers: Vec<Box<dyn Layer<T>>>,
    rng: SeededRng,
    error: Option<NnError>,
}

impl<T: Element> SequentialBuilder<T> {
    fn push_with(
        mut self,
        kind: &'static str,
        make: impl FnOnce(&[usize], &mut SeededRng) -> Result<Box<dyn Layer<T>>, NnError>,
    ) -> Self {
        if self.error.is_some() {
            return self;
        }
        match make(&self.shape, &mut self.rng) {
            Ok(layer) => {
                self.shape = layer.output_shape().to_vec();
                self.layers.push(layer);
            }
            Err(source) => {
                self.error = Some(NnError::Layer {
                    index: self.layers.len(),
                    kind,
                    input: self.shape.clone(),
                    source: Box::new(source),
                })
            }
        }
        self
    }

    /// The per-sample shape the next layer will receive.
    pub fn current_shape(&self) -> &[usize] {
        &self.shape
    }

    /// A dense layer to `outputs` neurons with a bias and He-uniform weights. The input
    /// must be one-dimensional (add [`flatten`](Self::flatten) after a convolution).
    pub fn dense(self, outputs: usize) -> Self {
        self.dense_with(outputs, true, Init::HeUniform)
    }

    /// A dense layer with explicit bias and initialisation.
    pub fn dense_with(self, outputs: usize, bias: bool, init: Init) -> Self {
        self.push_with("dense", |shape, rng| match *shape {
            [inputs] => Ok(Box::new(Dense::new(inputs, outputs, bias, init, rng)?)),
            _ => Err(NnError::InvalidArgument {
                what: "dense input",
                details: format!("needs a one-dimensional sample, got {shape:?}; add flatten() first"),
            }),
        })
    }

    /// A convolution layer.
    pub fn conv(self, spec: ConvSpec) -> Self {
        self.push_with("conv", |shape, rng| Ok(Box::new(Conv::new(shape, &spec, rng)?)))
    }

    /// A transposed convolution (the adjoint of the convolution `spec` describes).
    pub fn conv_transpose(self, spec: ConvSpec) -> Self {
        self.push_with("conv_transpose", |shape, rng| Ok(Box::new(ConvTranspose::new(shape, &spec, rng)?)))
    }

    /// An elementwise activation.
    pub fn activation(self, activation: Activation) -> Self {
        self.push_with("activation", |shape, _| Ok(Box::new(ActivationLayer::new(shape, activation))))
    }

    /// ReLU.
    pub fn relu(self) -> Self {
        self.activation(Activation::Relu)
    }

    /// Sigmoid.
    pub fn sigmoid(self) -> Self {
        self.activation(Activation::Sigmoid)
    }

    /// tanh.
    pub fn tanh(self) -> Self {
        self.activation(Activation::Tanh)
    }

    /// Max pooling with non-overlapping windows.
    pub fn max_pool(self, window: &[usize]) -> Self {
        self.pool(PoolSpec::new(PoolKind::Max, window))
    }

    /// Average pooling with non-overlapping windows.
    pub fn avg_pool(self, window: &[usize]) -> Self {
        self.pool(PoolSpec::new(PoolKind::Average, window))
    }

    /// A pooling layer.
    pub fn pool(self, spec: PoolSpec) -> Self {
        self.push_with("pool", |shape, _| Ok(Box::new(Pool::new(shape, spec)?)))
    }

    /// Batch normalisation over the channel axis (PyTorch's momentum and ε).
    pub fn batch_norm(self) -> Self {
        self.push_with("batch_norm", |shape, _| Ok(Box::new(BatchNorm::new(shape)?)))
    }

    /// Group normalisation in `groups` groups of channels (ε = 1e-5).
    pub fn group_norm(self, groups: usize) -> Self {
        self.push_with("group_norm", |shape, _| Ok(Box::new(GroupNorm::new(shape, groups)?)))
    }

    /// Layer normalisation over the last `normalized` dimensions of a sample (ε = 1e-5).
    pub fn layer_norm(self, normalized: usize) -> Self {
        self.push_with("layer_norm", |shape, _| Ok(Box::new(LayerNorm::new(shape, normalized)?)))
    }

    /// Nearest-neighbour up-sampling by an integer factor per spatial dimension.
    pub fn upsample(self, factors: &[usize]) -> Self {
        self.push_with("upsample", |shape, _| Ok(Box::new(Upsample::new(shape, factors)?)))
    }

    /// Dropout of probability `p` (inverted scaling), its masks seeded from the
    /// builder's seed.
    pub fn dropout(self, p: f64) -> Self {
        self.push_with("dropout", |shape, rng| Ok(Box::new(Dropout::new(shape, p, rng)?)))
    }

    /// Global average pooling: `[C, spatial…]` to `[C]`.
    pub fn global_avg_pool(self) -> Self {
        self.push_with("global_avg_pool", |shape, _| Ok(Box::new(GlobalAvgPool::new(shape)?)))
    }

    /// Flattens each sample to one dimension.
    pub fn flatten(self) -> Self {
        self.push_with("flatten", |shape, _| Ok(Box::new(Flatten::new(shape)?)))
    }

    /// Any layer, built from the current shape (for layers defined outside this crate).
    pub fn layer(self, make: impl FnOnce(&[usize]) -> Result<Box<dyn Layer<T>>, NnError>) -> Self {
        self.push_with("custom", |shape, _| make(shape))
    }

    /// The network, or the first error met while adding layers.
    ///
    /// # Errors
    /// The first [`NnError`] a layer's construction returned (an invalid geometry, a
    /// shape a layer cannot take).
    pub fn build(self) -> Result<Sequential<T>, NnError> {
        match self.error {
            Some(e) => Err(e),
            None => Sequential::new(&self.input_shape, self.layers),
        }
    }
}
