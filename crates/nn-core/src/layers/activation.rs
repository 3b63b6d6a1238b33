use crate::layer::{backward_batch, batch_of};
use crate::{BackwardReads, Layer, NnError, Tensor};
use nn_kernels::elementwise::{activation_backward, activation_forward, Activation};
use nn_kernels::Element;

/// An elementwise activation `y = f(x)` over any per-sample shape.
#[derive(Debug, Clone)]
pub struct ActivationLayer {
    activation: Activation,
    shape: Vec<usize>,
}

impl ActivationLayer {
    /// `activation` applied to inputs of per-sample shape `shape`.
    pub fn new(shape: &[usize], activation: Activation) -> Self {
        Self { activation, shape: shape.to_vec() }
    }

    /// The function applied.
    pub fn activation(&self) -> Activation {
        self.activation
    }
}

impl<T: Element> Layer<T> for ActivationLayer {
    fn kind(&self) -> &'static str {
        match self.activation {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::LeakyRelu { .. } => "leaky_relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Elu { .. } => "elu",
            Activation::Softplus => "softplus",
            Activation::Gelu => "gelu",
        }
    }

    fn input_shape(&self) -> &[usize] {
        &self.shape
    }

    fn output_shape(&self) -> &[usize] {
        &self.shape
    }

    fn as_activation(&self) -> Option<Activation> {
        Some(self.activation)
    }

    fn backward_reads(&self) -> BackwardReads {
        // ReLU's derivative is read off its output alone.
        if self.activation == Activation::Relu {
            BackwardReads::OUTPUT
        } else {
            BackwardReads::BOTH
        }
    }

    fn forward(&mut self, input: &Tensor<T>, output: &mut Tensor<T>) -> Result<(), NnError> {
        let batch = batch_of("activation forward", input, &self.shape)?;
        output.set_batch_shape(batch, &self.shape)?;
        activation_forward(self.activation, input.data(), output.data_mut())?;
        Ok(())
    }

    fn backward(
        &mut self,
        input: &Tensor<T>,
        output: &Tensor<T>,
        grad_output: &Tensor<T>,
        grad_input: Option<&mut Tensor<T>>,
    ) -> Result<(), NnError> {
        let batch = backward_batch(self, input, output, grad_output)?;
        if let Some(dx) = grad_input {
            dx.set_batch_shape(batch, &self.shape)?;
            // Where the input is not read, the output stands in for it (same length).
            let x = if Layer::<T>::backward_reads(self).input { input } else { output };
            activation_backward(self.activation, x.data(), output.data(), grad_output.data(), dx.data_mut())?;
        }
        Ok(())
    }
}
