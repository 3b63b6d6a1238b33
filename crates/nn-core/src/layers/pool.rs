use crate::layer::{backward_batch, batch_of};
use crate::{BackwardReads, Layer, NnError, Tensor};
use nn_kernels::conv::{ConvGeometry, KernelMode, OutputRounding, Padding};
use nn_kernels::pool::{avg_pool_backward, avg_pool_forward, check_pool_geometry, max_pool_backward, max_pool_forward};
use nn_kernels::Element;

/// Which reduction a pooling window applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// The largest in-bounds value.
    Max,
    /// The mean of the in-bounds values (padding is not counted).
    Average,
}

/// The hyper-parameters of a [`Pool`] layer; stride defaults to the window (non-
/// overlapping windows), padding to 0, rounding to `Floor`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    /// Max or average.
    pub kind: PoolKind,
    /// Window lengths.
    pub window: Vec<usize>,
    /// Strides (`None`: the window lengths).
    pub stride: Option<Vec<usize>>,
    /// Padding per dimension, each side smaller than the window (`None`: none).
    pub padding: Option<Vec<Padding>>,
    /// Strict or truncating output lengths.
    pub rounding: OutputRounding,
}

impl PoolSpec {
    /// Non-overlapping windows of lengths `window`.
    pub fn new(kind: PoolKind, window: &[usize]) -> Self {
        Self { kind, window: window.to_vec(), stride: None, padding: None, rounding: OutputRounding::Floor }
    }
    /// Per-dimension strides.
    pub fn stride(mut self, stride: &[usize]) -> Self {
        self.stride = Some(stride.to_vec());
        self
    }
    /// Symmetric padding per dimension.
    pub fn padding(mut self, padding: &[usize]) -> Self {
        self.padding = Some(padding.iter().map(|&p| Padding::symmetric(p)).collect());
        self
    }
    /// Strict or floor output geometry.
    pub fn rounding(mut self, rounding: OutputRounding) -> Self {
        self.rounding = rounding;
        self
    }
}

/// N-dimensional max or average pooling over each channel plane.
///
/// # Shapes
/// input `[batch, C, μ…]`, output `[batch, C, v…]` with `v_i = (μ_i + 2p_i − f_i)/s_i + 1`.
#[derive(Debug, Clone)]
pub struct Pool {
    spec: PoolSpec,
    geometry: ConvGeometry,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    argmax: Vec<u32>,
}

impl Pool {
    /// Pooling over inputs of per-sample shape `[C, μ…]`.
    ///
    /// # Errors
    /// [`NnError`] naming the dimension for an invalid window geometry, or padding that
    /// would leave a window with no input cell.
    pub fn new(input_shape: &[usize], spec: PoolSpec) -> Result<Self, NnError> {
        if input_shape.len() < 2 {
            return Err(NnError::InvalidArgument {
                what: "pool input shape",
                details: format!("needs [channels, spatial…], got {input_shape:?}"),
            });
        }
        let spatial = &input_shape[1..];
        let stride = spec.stride.clone().unwrap_or_else(|| spec.window.clone());
        let padding = spec.padding.clone().unwrap_or_else(|| vec![Padding::default(); spatial.len()]);
        let geometry =
            ConvGeometry::new(spatial, &spec.window, &stride, &padding, spec.rounding, KernelMode::CrossCorrelation)?;
        check_pool_geometry(&geometry)?;
        let mut output_shape = vec![input_shape[0]];
        output_shape.extend_from_slice(geometry.output());
        Ok(Self { spec, geometry, input_shape: input_shape.to_vec(), output_shape, argmax: Vec::new() })
    }
}

impl<T: Element> Layer<T> for Pool {
    fn kind(&self) -> &'static str {
        match self.spec.kind {
            PoolKind::Max => "max_pool",
            PoolKind::Average => "avg_pool",
        }
    }

    fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    fn backward_reads(&self) -> BackwardReads {
        // Max pooling keeps its argmax; average pooling needs only shapes.
        BackwardReads::NEITHER
    }

    fn forward(&mut self, input: &Tensor<T>, output: &mut Tensor<T>) -> Result<(), NnError> {
        let batch = batch_of("pool forward", input, &self.input_shape)?;
        output.set_batch_shape(batch, &self.output_shape)?;
        let planes = batch * self.input_shape[0];
        match self.spec.kind {
            PoolKind::Max => {
                self.argmax.resize(output.len(), 0);
                max_pool_forward(&self.geometry, planes, input.data(), output.data_mut(), &mut self.argmax)?
            }
            PoolKind::Average => avg_pool_forward(&self.geometry, planes, input.data(), output.data_mut())?,
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
        let Some(dx) = grad_input else { return Ok(()) };
        dx.set_batch_shape(batch, &self.input_shape)?;
        let planes = batch * self.input_shape[0];
        match self.spec.kind {
            PoolKind::Max => {
                if self.argmax.len() != grad_output.len() {
                    return Err(NnError::BackwardBeforeForward);
                }
                max_pool_backward(&self.geometry, planes, &self.argmax, grad_output.data(), dx.data_mut())?
            }
            PoolKind::Average => avg_pool_backward(&self.geometry, planes, grad_output.data(), dx.data_mut())?,
        }
        Ok(())
    }
}
