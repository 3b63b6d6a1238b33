use crate::{Graph, NnError, Param, Sequential, Tensor};
use nn_kernels::Element;

/// What training needs of a network, chain ([`Sequential`]) or graph ([`Graph`]):
/// Steps 2 and 3, the parameters and buffers by name, the mode, and where values
/// went non-finite. The provided methods (`zero_grad`, `grads_are_finite`, …) serve
/// both kinds.
pub trait Network<T: Element>: Send {
    /// The per-sample input shape.
    fn input_shape(&self) -> &[usize];

    /// Step 2 on a batch; the output.
    ///
    /// # Errors
    /// [`NnError`] when `x` does not fit the network, or a layer fails.
    fn forward(&mut self, x: &Tensor<T>) -> Result<&Tensor<T>, NnError>;

    /// The output of the last forward pass, if any.
    fn output(&self) -> Option<&Tensor<T>>;

    /// Step 3 from `∂L/∂output`: every parameter's gradient added into
    /// [`Param::grad`].
    ///
    /// # Errors
    /// [`NnError`] when no forward pass preceded or `grad_output` does not fit.
    fn backward(&mut self, grad_output: &Tensor<T>) -> Result<(), NnError>;

    /// Every parameter, in a fixed order.
    fn params(&self) -> Vec<&Param<T>>;

    /// Every parameter, mutably, in the order of [`params`](Self::params).
    fn params_mut(&mut self) -> Vec<&mut Param<T>>;

    /// Every parameter with a name that says where it lives.
    fn named_params(&self) -> Vec<(String, &Param<T>)>;

    /// Every buffer (state saved with the parameters but not trained), named.
    fn named_buffers(&self) -> Vec<(String, &Tensor<T>)>;

    /// [`named_buffers`](Self::named_buffers), mutably.
    fn named_buffers_mut(&mut self) -> Vec<(String, &mut Tensor<T>)>;

    /// Switches to training (`true`) or evaluation mode.
    fn set_training(&mut self, training: bool);

    /// True in training mode.
    fn is_training(&self) -> bool;

    /// Moves every layer that draws per pattern past `patterns` patterns
    /// ([`Layer::skip_patterns`](crate::Layer::skip_patterns)).
    fn skip_patterns(&mut self, patterns: usize);

    /// Where the last forward pass first went non-finite (a layer or node), if it did.
    fn non_finite_output(&self) -> Option<String>;

    /// Sets every parameter gradient to zero.
    fn zero_grad(&mut self) {
        for p in self.params_mut() {
            nn_kernels::elementwise::fill_zero(p.grad.data_mut());
        }
    }

    /// Whether every parameter gradient is finite: one cheap pass over them.
    fn grads_are_finite(&self) -> bool {
        self.params().iter().all(|p| nn_kernels::elementwise::all_finite(p.grad.data()))
    }

    /// The name of the first parameter whose gradient holds a NaN or an infinity.
    fn first_non_finite_grad(&self) -> Option<String> {
        let mut params = self.named_params().into_iter();
        params.find(|(_, p)| !nn_kernels::elementwise::all_finite(p.grad.data())).map(|(name, _)| name)
    }

    /// The number of trainable scalars.
    fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.value.len()).sum()
    }
}

impl<T: Element> Network<T> for Sequential<T> {
    fn input_shape(&self) -> &[usize] {
        Sequential::input_shape(self)
    }
    fn forward(&mut self, x: &Tensor<T>) -> Result<&Tensor<T>, NnError> {
        Sequential::forward(self, x)
    }
    fn output(&self) -> Option<&Tensor<T>> {
        Sequential::output(self)
    }
    fn backward(&mut self, grad_output: &Tensor<T>) -> Result<(), NnError> {
        Sequential::backward(self, grad_output)
    }
    fn params(&self) -> Vec<&Param<T>> {
        Sequential::params(self)
    }
    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        Sequential::params_mut(self)
    }
    fn named_params(&self) -> Vec<(String, &Param<T>)> {
        Sequential::named_params(self)
    }
    fn named_buffers(&self) -> Vec<(String, &Tensor<T>)> {
        Sequential::named_buffers(self)
    }
    fn named_buffers_mut(&mut self) -> Vec<(String, &mut Tensor<T>)> {
        Sequential::named_buffers_mut(self)
    }
    fn set_training(&mut self, training: bool) {
        Sequential::set_training(self, training)
    }
    fn is_training(&self) -> bool {
        Sequential::is_training(self)
    }
    fn skip_patterns(&mut self, patterns: usize) {
        Sequential::skip_patterns(self, patterns)
    }
    fn non_finite_output(&self) -> Option<String> {
        let index = self.first_non_finite_output()?;
        Some(format!("layer {index}, {}", self.layers()[index].kind()))
    }
}

impl<T: Element> Network<T> for Graph<T> {
    fn input_shape(&self) -> &[usize] {
        Graph::input_shape(self)
    }
    fn forward(&mut self, x: &Tensor<T>) -> Result<&Tensor<T>, NnError> {
        Graph::forward(self, x)
    }
    fn output(&self) -> Option<&Tensor<T>> {
        Graph::output(self)
    }
    fn backward(&mut self, grad_output: &Tensor<T>) -> Result<(), NnError> {
        Graph::backward(self, grad_output)
    }
    fn params(&self) -> Vec<&Param<T>> {
        Graph::params(self)
    }
    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        Graph::params_mut(self)
    }
    fn named_params(&self) -> Vec<(String, &Param<T>)> {
        Graph::named_params(self)
    }
    fn named_buffers(&self) -> Vec<(String, &Tensor<T>)> {
        Graph::named_buffers(self)
    }
    fn named_buffers_mut(&mut self) -> Vec<(String, &mut Tensor<T>)> {
        Graph::named_buffers_mut(self)
    }
    fn set_training(&mut self, training: bool) {
        Graph::set_training(self, training)
    }
    fn is_training(&self) -> bool {
        Graph::is_training(self)
    }
    fn skip_patterns(&mut self, patterns: usize) {
        Graph::skip_patterns(self, patterns)
    }
    fn non_finite_output(&self) -> Option<String> {
        self.first_non_finite_output().map(|node| format!("node {node}"))
    }
}
