use crate::layer::{backward_batch, batch_of};
use crate::{BackwardReads, Layer, NnError, Tensor};
use nn_kernels::Element;

/// Global average pooling: each channel of a `[C, spatial…]` sample (any number of
/// spatial dimensions) becomes its mean, giving `[C]`.
#[derive(Debug, Clone)]
pub struct GlobalAvgPool {
    input_shape: Vec<usize>,
    output_shape: [usize; 1],
}

impl GlobalAvgPool {
    /// Pooling of samples shaped `input_shape` (`[C, spatial…]`).
    ///
    /// # Errors
    /// [`NnError::InvalidArgument`] for a shape without spatial dimensions or with a
    /// zero length.
    pub fn new(input_shape: &[usize]) -> Result<Self, NnError> {
        if input_shape.len() < 2 || input_shape.contains(&0) {
            return Err(NnError::InvalidArgument {
                what: "global average pooling input shape",
                details: format!("{input_shape:?} is not [channels, spatial…] with positive lengths"),
            });
        }
        Ok(Self { input_shape: input_shape.to_vec(), output_shape: [input_shape[0]] })
    }

    /// Cells per channel.
    fn plane(&self) -> usize {
        self.input_shape[1..].iter().product()
    }
}

impl<T: Element> Layer<T> for GlobalAvgPool {
    fn kind(&self) -> &'static str {
        "global_avg_pool"
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
        let batch = batch_of("global average pooling forward", input, &self.input_shape)?;
        output.set_batch_shape(batch, &self.output_shape)?;
        let plane = self.plane();
        let scale = T::from_f64(1.0 / plane as f64);
        for (y, x) in output.data_mut().iter_mut().zip(input.data().chunks_exact(plane)) {
            *y = nn_kernels::elementwise::sum(x) * scale;
        }
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
            let plane = self.plane();
            let scale = T::from_f64(1.0 / plane as f64);
            for (dx, &g) in dx.data_mut().chunks_exact_mut(plane).zip(grad_output.data()) {
                dx.fill(g * scale);
            }
        }
        Ok(())
    }
}
