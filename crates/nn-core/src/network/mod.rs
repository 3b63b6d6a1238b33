mod builder;

pub use builder::SequentialBuilder;

use crate::{Layer, NnError, Param, Tensor};
use nn_kernels::elementwise::Activation;
use nn_kernels::Element;

/// A feed-forward network: layers applied in order (SPEC §1).
///
/// The network keeps every layer's output from the last [`forward`](Self::forward)
/// (the x⁽ᵏ⁾ that Step 3 needs) in buffers it reuses, so a training step allocates
/// nothing once the batch size is steady. A ReLU layer that the layer before it can
/// apply to its output ([`Layer::rectify_output`]: batch normalisation), or else the
/// layer after it to its input ([`Layer::rectify_input`]: a max pool), is left to that
/// layer and skipped, with the same results to the bit.
pub struct Sequential<T: Element> {
    input_shape: Vec<usize>,
    layers: Vec<Box<dyn Layer<T>>>,
    /// `taken_by[k]`: the neighbour (k − 1 or k + 1) that applies layer k, a ReLU,
    /// in its own passes; layer k is then skipped.
    taken_by: Vec<Option<usize>>,
    /// `activations[k]` is the output of layer k − 1 (the network's input for k = 0;
    /// the last one is the network's output), unused after a skipped layer.
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
        let taken_by = vec![None; layers.len()];
        let input_shape = input_shape.to_vec();
        Ok(Self { input_shape, layers, taken_by, activations, grads, forward_done: false, training: true })
    }

    /// A builder that tracks the shape as layers are added, drawing initial weights
    /// from a generator seeded with `seed`.
    pub fn builder(input_shape: &[usize], seed: u64) -> SequentialBuilder<T> {
        SequentialBuilder::new(input_shape, seed)
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
        self.fold_relus();
        self.activations[0].copy_from(x);
        for index in 0..self.layers.len() {
            if self.skipped(index) {
                continue;
            }
            let from = self.holding_input(index);
            let (inputs, outputs) = self.activations.split_at_mut(index + 1);
            let layer = &mut self.layers[index];
            layer.forward(&inputs[from], &mut outputs[0]).map_err(|source| in_layer(index, &**layer, source))?;
        }
        self.forward_done = true;
        Ok(&self.activations[self.layers.len()])
    }

    /// Hands each ReLU layer to the layer before it where that layer can apply it to
    /// its output, or else to the layer after it where that one can apply it to its
    /// input, and marks the ReLU skipped. Asked anew each pass:
    /// [`layers_mut`](Self::layers_mut) may have replaced any of them.
    fn fold_relus(&mut self) {
        let n = self.layers.len();
        let relu = |layer: &dyn Layer<T>| layer.as_activation() == Some(Activation::Relu);
        self.taken_by.fill(None);
        for k in 0..n {
            // A last ReLU stays: the network's output is the last layer's.
            let before_relu = k + 2 < n && relu(&*self.layers[k + 1]);
            if self.layers[k].rectify_output(before_relu) && before_relu {
                self.taken_by[k + 1] = Some(k);
            }
            let after_free_relu = k > 0 && relu(&*self.layers[k - 1]) && self.taken_by[k - 1].is_none();
            if self.layers[k].rectify_input(after_free_relu) && after_free_relu {
                self.taken_by[k - 1] = Some(k);
            }
        }
    }

    /// For each layer, the neighbour that applies it in its own passes when the
    /// network runs (a ReLU taken over by the batch norm before it or the max pool
    /// after it), or `None`: the layers as the next [`forward`](Self::forward) will
    /// run them, for tools that time layers one by one.
    pub fn relus_taken_over(&mut self) -> &[Option<usize>] {
        self.fold_relus();
        &self.taken_by
    }

    fn skipped(&self, k: usize) -> bool {
        self.taken_by[k].is_some()
    }

    /// The index of the activation holding layer k's input x⁽ᵏ⁾: past the skipped
    /// layers before it.
    fn holding_input(&self, k: usize) -> usize {
        (0..k).rev().find(|&j| !self.skipped(j)).map_or(0, |j| j + 1)
    }

    /// The index of the gradient buffer holding ∂L/∂x⁽ᵏ⁾ after the backward pass has
    /// passed layer k: past the skipped layers from k on (`None`: the caller's
    /// gradient of the output).
    fn holding_grad(&self, k: usize) -> Option<usize> {
        (k..self.layers.len()).find(|&j| !self.skipped(j))
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
        // A network ends in a layer that is not skipped, unless it has none.
        let Some(holding) = self.holding_grad(0) else {
            self.grads[0].copy_from(grad_output);
            return Ok(&self.grads[0]);
        };
        Ok(&self.grads[holding])
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
        // Layer k reads ∂x⁽ᵏ⁺¹⁾ from grads[k + 1], or from further on past skipped
        // layers (the caller's gradient after the last layer), and writes ∂x⁽ᵏ⁾ into
        // grads[k].
        for index in (0..self.layers.len()).rev() {
            if self.skipped(index) {
                continue;
            }
            let (input, output) = (self.holding_input(index), index + 1);
            let upstream = self.holding_grad(index + 1);
            let need_input = self.holding_input(index) > 0 || want_input_grad;
            let (head, tail) = self.grads.split_at_mut(index + 1);
            let upstream = upstream.map_or(grad_output, |j| &tail[j - index - 1]);
            let layer = &mut self.layers[index];
            let write = need_input.then_some(&mut head[index]);
            layer
                .backward(&self.activations[input], &self.activations[output], upstream, write)
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
            .flat_map(|(i, l)| l.params().into_iter().map(move |p| (format!("{i}.{}.{}", l.base_kind(), p.name), p)))
            .collect()
    }

    /// [`named_params`](Self::named_params), mutably.
    pub fn named_params_mut(&mut self) -> Vec<(String, &mut Param<T>)> {
        self.layers
            .iter_mut()
            .enumerate()
            .flat_map(|(i, l)| {
                let kind = l.base_kind();
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
            .flat_map(|(i, l)| {
                l.buffers().into_iter().map(move |(name, b)| (format!("{i}.{}.{name}", l.base_kind()), b))
            })
            .collect()
    }

    /// [`named_buffers`](Self::named_buffers), mutably.
    pub fn named_buffers_mut(&mut self) -> Vec<(String, &mut Tensor<T>)> {
        self.layers
            .iter_mut()
            .enumerate()
            .flat_map(|(i, l)| {
                let kind = l.base_kind();
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
        (0..self.layers.len())
            .find(|&i| !nn_kernels::elementwise::all_finite(self.activations[self.holding_input(i + 1)].data()))
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
