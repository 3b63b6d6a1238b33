use crate::layer::{backward_batch, batch_of};
use crate::{BackwardReads, Layer, NnError, Tensor};
use nn_kernels::conv::{ConvGeometry, KernelMode, OutputRounding, Padding};
use nn_kernels::pad::{PadPlan, PaddingMode, SideModes};
use nn_kernels::pool::{
    avg_pool_backward, avg_pool_forward, check_pool_geometry, max_pool_backward, max_pool_forward,
    max_pool_relu_forward,
};
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
    /// What padded cells hold, per dimension and side (`None`, or `Constant`: nothing;
    /// they are left out of the window). Reflect, replicate and circular sides hold
    /// copies of the input, which take part like any cell.
    pub padding_modes: Option<Vec<SideModes>>,
}

impl PoolSpec {
    /// Non-overlapping windows of lengths `window`.
    pub fn new(kind: PoolKind, window: &[usize]) -> Self {
        Self {
            kind,
            window: window.to_vec(),
            stride: None,
            padding: None,
            rounding: OutputRounding::Floor,
            padding_modes: None,
        }
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
    /// One padding mode for every dimension and side.
    pub fn padding_mode(mut self, mode: PaddingMode) -> Self {
        self.padding_modes = Some(vec![SideModes::both(mode); self.window.len()]);
        self
    }
    /// Padding modes per dimension and side.
    pub fn padding_modes(mut self, modes: &[SideModes]) -> Self {
        self.padding_modes = Some(modes.to_vec());
        self
    }
}

/// N-dimensional max or average pooling over each channel plane. Padding cells are
/// left out of the window (max never picks one, the average does not count them),
/// unless a padding mode fills them with copies of the input.
///
/// # Shapes
/// input `[batch, C, μ…]`, output `[batch, C, v…]` with `v_i = (μ_i + 2p_i − f_i)/s_i + 1`.
#[derive(Debug, Clone)]
pub struct Pool {
    spec: PoolSpec,
    /// The window over the input, explicitly padded on its non-constant sides by `pad`.
    geometry: ConvGeometry,
    pad: Option<PadPlan>,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    argmax: Vec<u32>,
    /// Whether a ReLU is applied to the input first ([`Layer::rectify_input`]).
    rectify_input: bool,
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
        // Sides padded by copies are padded explicitly; constant sides stay the
        // window's, left out of it.
        let modes = spec.padding_modes.as_ref().filter(|m| m.iter().any(|s| *s != SideModes::default()));
        let (pad, padding) = match modes {
            Some(modes) => {
                if modes.len() != padding.len() {
                    let (expected, got) = (padding.len(), modes.len());
                    return Err(nn_kernels::GeometryError::RankMismatch { what: "padding modes", expected, got }.into());
                }
                let copied = |mode: PaddingMode, p: usize| if mode == PaddingMode::Constant { 0 } else { p };
                let explicit: Vec<Padding> = padding
                    .iter()
                    .zip(modes)
                    .map(|(p, m)| Padding { before: copied(m.before, p.before), after: copied(m.after, p.after) })
                    .collect();
                let window: Vec<Padding> = padding
                    .iter()
                    .zip(&explicit)
                    .map(|(p, e)| Padding { before: p.before - e.before, after: p.after - e.after })
                    .collect();
                (Some(PadPlan::new(spatial, &explicit, modes)?), window)
            }
            None => (None, padding),
        };
        let window_input = pad.as_ref().map_or(spatial, PadPlan::padded);
        let geometry = ConvGeometry::new(
            window_input,
            &spec.window,
            &stride,
            &padding,
            spec.rounding,
            KernelMode::CrossCorrelation,
        )?;
        check_pool_geometry(&geometry)?;
        let mut output_shape = vec![input_shape[0]];
        output_shape.extend_from_slice(geometry.output());
        let input_shape = input_shape.to_vec();
        Ok(Self { spec, geometry, pad, input_shape, output_shape, argmax: Vec::new(), rectify_input: false })
    }
}

impl<T: Element> Layer<T> for Pool {
    fn kind(&self) -> &'static str {
        match (self.spec.kind, self.rectify_input) {
            (PoolKind::Max, false) => "max_pool",
            (PoolKind::Max, true) => "relu+max_pool",
            (PoolKind::Average, _) => "avg_pool",
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

    fn base_kind(&self) -> &'static str {
        match self.spec.kind {
            PoolKind::Max => "max_pool",
            PoolKind::Average => "avg_pool",
        }
    }

    fn rectify_input(&mut self, on: bool) -> bool {
        // The maximum commutes with ReLU; the average does not.
        self.rectify_input = on && self.spec.kind == PoolKind::Max;
        self.rectify_input
    }

    fn forward(&mut self, input: &Tensor<T>, output: &mut Tensor<T>) -> Result<(), NnError> {
        let batch = batch_of("pool forward", input, &self.input_shape)?;
        output.set_batch_shape(batch, &self.output_shape)?;
        let planes = batch * self.input_shape[0];
        let (geometry, y, argmax) = (&self.geometry, output.data_mut(), &mut self.argmax);
        let mut pool = |x: &[T]| match self.spec.kind {
            PoolKind::Max => {
                argmax.resize(y.len(), 0);
                let max_pool = if self.rectify_input { max_pool_relu_forward } else { max_pool_forward };
                max_pool(geometry, planes, x, y, argmax)
            }
            PoolKind::Average => avg_pool_forward(geometry, planes, x, y),
        };
        match &self.pad {
            Some(plan) => plan.with_padded(input.data(), T::zero(), pool)?,
            None => pool(input.data())?,
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
        if self.spec.kind == PoolKind::Max && self.argmax.len() != grad_output.len() {
            return Err(NnError::BackwardBeforeForward);
        }
        let (geometry, dy) = (&self.geometry, grad_output.data());
        let pool = |dx: &mut [T]| match self.spec.kind {
            PoolKind::Max => max_pool_backward(geometry, planes, &self.argmax, dy, dx),
            PoolKind::Average => avg_pool_backward(geometry, planes, dy, dx),
        };
        match &self.pad {
            // ∂ of the padded input, folded back onto the cells the padding copied.
            Some(plan) => plan.unpad_from(dx.data_mut(), pool)?,
            None => pool(dx.data_mut())?,
        }
        Ok(())
    }
}
