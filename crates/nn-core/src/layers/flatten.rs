use crate::layer::{backward_batch, batch_of};
use crate::{BackwardReads, Layer, NnError, Tensor};
use nn_kernels::index::checked_product;
use nn_kernels::Element;

/// Flattens each sample to one dimension: `[batch, d_1, …, d_k]` → `[batch, ∏d]`.
#[derive(Debug, Clone)]
pub struct Flatten {
    input_shape: Vec<usize>,
    output_shape: [usize; 1],
}

impl Flatten {
    /// Flattens samples of shape `input_shape`.
    ///
    /// # Errors
    /// [`NnError`] when the shape is empty or its size overflows.
    pub fn new(input_shape: &[usize]) -> Result<Self, NnError> {
        let len = checked_product(input_shape)
            .ok_or(NnError::Geometry(nn_kernels::GeometryError::Overflow { what: "flatten size" }))?;
        Ok(Self { input_shape: input_shape.to_vec(), output_shape: [len] })
    }
}

impl<T: Element> Layer<T> for Flatten {
    fn kind(&self) -> &'static str {
        "flatten"
    }

    fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    fn backward_reads(&self) -> BackwardReads {
        // Only shapes.
        BackwardReads::NEITHER
    }

    fn forward(&mut self, input: &Tensor<T>, output: &mut Tensor<T>) -> Result<(), NnError> {
        let batch = batch_of("flatten forward", input, &self.input_shape)?;
        output.set_batch_shape(batch, &self.output_shape)?;
        output.data_mut().copy_from_slice(input.data());
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
            dx.set_batch_shape(batch, &self.input_shape)?;
            dx.data_mut().copy_from_slice(grad_output.data());
        }
        Ok(())
    }
}
