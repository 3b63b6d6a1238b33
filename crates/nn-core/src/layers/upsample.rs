use crate::layer::{backward_batch, batch_of};
use crate::{BackwardReads, Layer, NnError, Tensor};
use nn_kernels::Element;
use rayon::prelude::*;

/// Nearest-neighbour up-sampling of `[C, spatial…]` samples by an integer factor per
/// spatial dimension (any number of them): `y[c, β] = x[c, ⌊β_i / k_i⌋]`. Its
/// backward sums each output block's gradient into the input cell it copied.
#[derive(Debug, Clone)]
pub struct Upsample {
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    /// For each cell of an output plane, the input cell it copies (built once).
    source: Vec<usize>,
    input_plane: usize,
}

impl Upsample {
    /// Up-sampling of `input_shape` (`[C, spatial…]`) samples by `factors` (one per
    /// spatial dimension).
    ///
    /// # Errors
    /// [`NnError::InvalidArgument`] for a shape without spatial dimensions or with a
    /// zero length, a factor list of another rank, a zero factor, or an output too
    /// large to index.
    pub fn new(input_shape: &[usize], factors: &[usize]) -> Result<Self, NnError> {
        let invalid = |details: String| Err(NnError::InvalidArgument { what: "up-sampling", details });
        if input_shape.len() < 2 || input_shape.contains(&0) {
            return invalid(format!("input shape {input_shape:?} is not [channels, spatial…] with positive lengths"));
        }
        let spatial = &input_shape[1..];
        if factors.len() != spatial.len() || factors.contains(&0) {
            return invalid(format!("factors {factors:?} do not give a positive factor per dimension of {spatial:?}"));
        }
        let Some(output) = spatial.iter().zip(factors).map(|(&m, &k)| m.checked_mul(k)).collect::<Option<Vec<_>>>()
        else {
            return invalid(format!("{spatial:?} × {factors:?} overflows"));
        };
        if output.iter().try_fold(input_shape[0], |acc, &v| acc.checked_mul(v)).is_none() {
            return invalid(format!("output {output:?} with {} channels is too large", input_shape[0]));
        }
        let source = source_cells(spatial, factors, &output);
        let mut output_shape = vec![input_shape[0]];
        output_shape.extend_from_slice(&output);
        Ok(Self { input_plane: spatial.iter().product(), input_shape: input_shape.to_vec(), output_shape, source })
    }
}

/// For each output cell (row-major), the row-major index of the input cell it copies.
fn source_cells(input: &[usize], factors: &[usize], output: &[usize]) -> Vec<usize> {
    let mut source = vec![0];
    // Grow one dimension at a time: the cells of the first d dimensions, then append
    // dimension d to each of them.
    for ((&m, &k), &v) in input.iter().zip(factors).zip(output) {
        source = source.iter().flat_map(|&outer| (0..v).map(move |b| outer * m + b / k)).collect();
    }
    source
}

impl<T: Element> Layer<T> for Upsample {
    fn kind(&self) -> &'static str {
        "upsample"
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
        let batch = batch_of("up-sampling forward", input, &self.input_shape)?;
        output.set_batch_shape(batch, &self.output_shape)?;
        let plane = self.source.len();
        output.data_mut().par_chunks_mut(plane).zip(input.data().par_chunks(self.input_plane)).for_each(|(y, x)| {
            for (y, &s) in y.iter_mut().zip(&self.source) {
                *y = x[s];
            }
        });
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
        let Some(dx) = grad_input else { return Ok(()) };
        dx.set_batch_shape(batch, &self.input_shape)?;
        let plane = self.source.len();
        dx.data_mut().par_chunks_mut(self.input_plane).zip(grad_output.data().par_chunks(plane)).for_each(|(dx, g)| {
            dx.fill(T::zero());
            for (&g, &s) in g.iter().zip(&self.source) {
                dx[s] += g;
            }
        });
        Ok(())
    }
}
