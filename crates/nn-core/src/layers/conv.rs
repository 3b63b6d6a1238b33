use crate::layer::{backward_batch, batch_of};
use crate::{BackwardReads, Init, Layer, NnError, Param, ParamRole, Tensor};
use nn_kernels::conv::{
    conv_backward_bias, conv_backward_input, conv_backward_weight, conv_forward, ConvGeometry, ConvProblem, KernelMode,
    OutputRounding, Padding,
};
use nn_kernels::Element;
use rand::Rng;

/// The hyper-parameters of a [`Conv`] layer. Lists have one entry per spatial
/// dimension; stride defaults to 1 and padding to 0 in every dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvSpec {
    /// C_out.
    pub out_channels: usize,
    /// Filter lengths f.
    pub filter: Vec<usize>,
    /// Strides s (`None`: 1 everywhere).
    pub stride: Option<Vec<usize>>,
    /// Padding per dimension (`None`: none).
    pub padding: Option<Vec<Padding>>,
    /// The constant v read at padded cells (may be non-zero).
    pub pad_value: f64,
    /// Strict or truncating output lengths.
    pub rounding: OutputRounding,
    /// The source's flipped convolution (default) or cross-correlation.
    pub mode: KernelMode,
    /// Whether to add a bias per output channel.
    pub bias: bool,
    /// How to draw the initial weights.
    pub init: Init,
}

impl ConvSpec {
    /// `out_channels` filters of lengths `filter`, stride 1, no padding, strict
    /// geometry, the source's convolution, a bias, He-uniform weights.
    pub fn new(out_channels: usize, filter: &[usize]) -> Self {
        Self {
            out_channels,
            filter: filter.to_vec(),
            stride: None,
            padding: None,
            pad_value: 0.0,
            rounding: OutputRounding::Strict,
            mode: KernelMode::Convolution,
            bias: true,
            init: Init::HeUniform,
        }
    }
    /// Per-dimension strides.
    pub fn stride(mut self, stride: &[usize]) -> Self {
        self.stride = Some(stride.to_vec());
        self
    }
    /// Symmetric padding p_i on both sides of each dimension, as in the source.
    pub fn padding(mut self, padding: &[usize]) -> Self {
        self.padding = Some(padding.iter().map(|&p| Padding::symmetric(p)).collect());
        self
    }
    /// Padding given separately before and after the input in each dimension.
    pub fn padding_asymmetric(mut self, padding: &[Padding]) -> Self {
        self.padding = Some(padding.to_vec());
        self
    }
    /// The constant read at padded cells.
    pub fn pad_value(mut self, value: f64) -> Self {
        self.pad_value = value;
        self
    }
    /// Strict or floor output geometry.
    pub fn rounding(mut self, rounding: OutputRounding) -> Self {
        self.rounding = rounding;
        self
    }
    /// Convolution (flipped filter) or cross-correlation.
    pub fn mode(mut self, mode: KernelMode) -> Self {
        self.mode = mode;
        self
    }
    /// With or without a bias.
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// The weight initialisation.
    pub fn init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }
}

/// An N-dimensional convolution layer (SPEC §3) with batch and channels:
/// `y[n, o, β] = Σ_c Σ_α x′[n, c, γ] · w[o, c, α] + b[o]`, where
/// `γ_i = s_i·β_i + f_i − p_i − α_i − 1` (or `s_i·β_i − p_i + α_i` in
/// cross-correlation mode) and x′ is x padded with the constant v.
///
/// # Shapes
/// input `[batch, C_in, μ_1, …, μ_n]`, output `[batch, C_out, v_1, …, v_n]` with
/// `v_i = (μ_i + 2p_i − f_i) / s_i + 1`, weight `[C_out, C_in, f_1, …, f_n]`, bias
/// `[C_out]`.
#[derive(Debug, Clone)]
pub struct Conv<T: Element> {
    problem: ConvProblem,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    pad_value: T,
    weight: Param<T>,
    bias: Option<Param<T>>,
}

impl<T: Element> Conv<T> {
    /// A convolution over inputs of per-sample shape `[C_in, μ_1, …, μ_n]`.
    ///
    /// # Errors
    /// [`NnError`] naming the dimension for an invalid geometry (a zero length, a filter
    /// longer than the padded input, a non-integer output length under `Strict`, ranks
    /// that differ) or a size that overflows.
    pub fn new<R: Rng>(input_shape: &[usize], spec: &ConvSpec, rng: &mut R) -> Result<Self, NnError> {
        let invalid = |details: String| NnError::InvalidArgument { what: "conv input shape", details };
        let (&in_channels, spatial) =
            input_shape.split_first().ok_or_else(|| invalid("needs [channels, spatial…], got []".into()))?;
        if spatial.is_empty() {
            return Err(invalid(format!(
                "needs at least one spatial dimension after the channels, got {input_shape:?}"
            )));
        }
        let rank = spatial.len();
        let stride = spec.stride.clone().unwrap_or_else(|| vec![1; rank]);
        let padding = spec.padding.clone().unwrap_or_else(|| vec![Padding::default(); rank]);
        let geometry = ConvGeometry::new(spatial, &spec.filter, &stride, &padding, spec.rounding, spec.mode)?;
        let problem = ConvProblem::new(geometry, in_channels, spec.out_channels)?;
        let mut weight_shape = vec![spec.out_channels, in_channels];
        weight_shape.extend_from_slice(&spec.filter);
        let mut weight = Tensor::zeros(&weight_shape)?;
        let filter_len = problem.geometry().filter_len();
        spec.init.fill(in_channels * filter_len, spec.out_channels * filter_len, rng, weight.data_mut())?;
        let mut output_shape = vec![spec.out_channels];
        output_shape.extend_from_slice(problem.geometry().output());
        Ok(Self {
            input_shape: input_shape.to_vec(),
            output_shape,
            pad_value: T::from_f64(spec.pad_value),
            weight: Param::new("weight", weight),
            bias: if spec.bias {
                Some(Param::new("bias", Tensor::zeros(&[spec.out_channels])?).with_role(ParamRole::Bias))
            } else {
                None
            },
            problem,
        })
    }

    /// The validated geometry.
    pub fn geometry(&self) -> &ConvGeometry {
        self.problem.geometry()
    }

    /// The weight, `[C_out, C_in, f…]`.
    pub fn weight(&self) -> &Param<T> {
        &self.weight
    }

    /// The bias, `[C_out]`, when present.
    pub fn bias(&self) -> Option<&Param<T>> {
        self.bias.as_ref()
    }
}

impl<T: Element> Layer<T> for Conv<T> {
    fn kind(&self) -> &'static str {
        "conv"
    }

    fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    fn backward_reads(&self) -> BackwardReads {
        // The weight gradient multiplies by the input.
        BackwardReads::INPUT
    }

    fn forward(&mut self, input: &Tensor<T>, output: &mut Tensor<T>) -> Result<(), NnError> {
        let batch = batch_of("conv forward", input, &self.input_shape)?;
        output.set_batch_shape(batch, &self.output_shape)?;
        let bias = self.bias.as_ref().map(|b| b.value.data());
        conv_forward(
            &self.problem,
            batch,
            input.data(),
            self.weight.value.data(),
            bias,
            self.pad_value,
            output.data_mut(),
        )?;
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
        let dy = grad_output.data();
        if let Some(bias) = &mut self.bias {
            conv_backward_bias(&self.problem, batch, dy, bias.grad.data_mut())?;
        }
        conv_backward_weight(&self.problem, batch, input.data(), dy, self.pad_value, self.weight.grad.data_mut())?;
        if let Some(dx) = grad_input {
            dx.set_batch_shape(batch, &self.input_shape)?;
            conv_backward_input(&self.problem, batch, self.weight.value.data(), dy, dx.data_mut())?;
        }
        Ok(())
    }

    fn params(&self) -> Vec<&Param<T>> {
        std::iter::once(&self.weight).chain(self.bias.as_ref()).collect()
    }

    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        std::iter::once(&mut self.weight).chain(self.bias.as_mut()).collect()
    }
}
