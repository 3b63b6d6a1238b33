use crate::layer::{backward_batch, batch_of};
use crate::{BackwardReads, Init, Layer, NnError, Param, ParamRole, Tensor};
use nn_kernels::conv::{
    conv_backward, conv_forward, ConvAlgorithm, ConvGeometry, ConvProblem, KernelMode, OutputRounding, Padding,
};
use nn_kernels::pad::{PadPlan, PaddingMode, SideModes};
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
    /// Dilations d: the spacing of the filter's taps (`None`: 1 everywhere, adjacent).
    pub dilation: Option<Vec<usize>>,
    /// Channel groups g (1: every output reads every input; C_in: depthwise).
    pub groups: usize,
    /// Extra output cells o_i < s_i of a [`ConvTranspose`](super::ConvTranspose)
    /// (`None`: 0); a [`Conv`] refuses any other value.
    pub output_padding: Option<Vec<usize>>,
    /// The constant v read at padded cells (may be non-zero).
    pub pad_value: f64,
    /// What padded cells hold, per dimension and side (`None`: the constant v).
    pub padding_modes: Option<Vec<SideModes>>,
    /// Strict or truncating output lengths.
    pub rounding: OutputRounding,
    /// The source's flipped convolution (default) or cross-correlation.
    pub mode: KernelMode,
    /// Whether to add a bias per output channel.
    pub bias: bool,
    /// How to draw the initial weights.
    pub init: Init,
    /// Exact sums (default) or Winograd minimal filtering where the geometry suits it.
    pub algorithm: ConvAlgorithm,
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
            dilation: None,
            groups: 1,
            output_padding: None,
            pad_value: 0.0,
            padding_modes: None,
            rounding: OutputRounding::Strict,
            mode: KernelMode::Convolution,
            bias: true,
            init: Init::HeUniform,
            algorithm: ConvAlgorithm::Exact,
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
    /// Per-dimension dilations: the filter's taps `d_i` cells apart.
    pub fn dilation(mut self, dilation: &[usize]) -> Self {
        self.dilation = Some(dilation.to_vec());
        self
    }
    /// Channel groups: C_in and C_out split into `groups` groups of consecutive
    /// channels, each output reading only its group's inputs (`groups = C_in`:
    /// depthwise, `C_out/C_in` filters per input channel).
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
    /// A transposed convolution's extra output cells per dimension (each below the
    /// stride), choosing among the output lengths that map back to its input length.
    pub fn output_padding(mut self, output_padding: &[usize]) -> Self {
        self.output_padding = Some(output_padding.to_vec());
        self
    }
    /// The constant read at padded cells.
    pub fn pad_value(mut self, value: f64) -> Self {
        self.pad_value = value;
        self
    }
    /// One padding mode for every dimension and side.
    pub fn padding_mode(mut self, mode: PaddingMode) -> Self {
        self.padding_modes = Some(vec![SideModes::both(mode); self.filter.len()]);
        self
    }
    /// Padding modes per dimension and side.
    pub fn padding_modes(mut self, modes: &[SideModes]) -> Self {
        self.padding_modes = Some(modes.to_vec());
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
    /// How the sums are computed: [`ConvAlgorithm::Winograd`] trades a documented
    /// rounding difference for fewer multiplications (2-D, stride 1, 3×3 or 5×5).
    pub fn algorithm(mut self, algorithm: ConvAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }
}

impl ConvSpec {
    /// The weight `[d0, d1, f…]`, drawn with the fans PyTorch counts (fan-in `d1·∏f`,
    /// fan-out `d0·∏f`: a grouped filter sees `C_in/g` channels), and the bias `[C_out]`,
    /// zero, when asked.
    pub(super) fn make_params<T: Element, R: Rng>(
        &self,
        d0: usize,
        d1: usize,
        rng: &mut R,
    ) -> Result<(Param<T>, Option<Param<T>>), NnError> {
        let mut shape = vec![d0, d1];
        shape.extend_from_slice(&self.filter);
        let mut weight = Tensor::zeros(&shape)?;
        let filter_len: usize = self.filter.iter().product();
        self.init.fill(d1 * filter_len, d0 * filter_len, rng, weight.data_mut())?;
        let bias = if self.bias {
            Some(Param::new("bias", Tensor::zeros(&[self.out_channels])?).with_role(ParamRole::Bias))
        } else {
            None
        };
        Ok((Param::new("weight", weight), bias))
    }
}

/// An N-dimensional convolution layer (SPEC §3) with batch and channels:
/// `y[n, o, β] = Σ_c Σ_α x′[n, c, γ] · w[o, c, α] + b[o]`, where
/// `γ_i = s_i·β_i + d_i·(f_i − 1 − α_i) − p_i` (or `s_i·β_i − p_i + d_i·α_i` in
/// cross-correlation mode; the source's formula is d = 1) and x′ is x padded with the
/// constant v.
///
/// # Shapes
/// input `[batch, C_in, μ_1, …, μ_n]`, output `[batch, C_out, v_1, …, v_n]` with
/// `v_i = (μ_i + p_before_i + p_after_i − d_i·(f_i − 1) − 1) / s_i + 1`; with g channel
/// groups, c runs over the C_in/g inputs of o's group and the weight is
/// `[C_out, C_in/g, f_1, …, f_n]`; otherwise weight `[C_out, C_in, f_1, …, f_n]`, bias
/// `[C_out]`.
#[derive(Debug, Clone)]
pub struct Conv<T: Element> {
    /// The convolution run: over the explicitly padded input when `pad` is set.
    problem: ConvProblem,
    /// Explicit padding, for padding modes other than the constant.
    pad: Option<PadPlan>,
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
        if spec.output_padding.as_ref().is_some_and(|o| o.iter().any(|&o| o != 0)) {
            return Err(NnError::InvalidArgument {
                what: "conv output padding",
                details: "applies to transposed convolutions only".into(),
            });
        }
        let rank = spatial.len();
        let stride = spec.stride.clone().unwrap_or_else(|| vec![1; rank]);
        let padding = spec.padding.clone().unwrap_or_else(|| vec![Padding::default(); rank]);
        // Modes other than the constant pad the input explicitly; the convolution then
        // runs unpadded over the padded input.
        let modes = spec.padding_modes.as_ref().filter(|m| m.iter().any(|s| *s != SideModes::default()));
        let pad = modes.map(|modes| PadPlan::new(spatial, &padding, modes)).transpose()?;
        let (conv_input, padding) = match &pad {
            Some(plan) => (plan.padded(), vec![Padding::default(); rank]),
            None => (spatial, padding),
        };
        let dilation = spec.dilation.clone().unwrap_or_else(|| vec![1; rank]);
        let geometry =
            ConvGeometry::dilated(conv_input, &spec.filter, &stride, &padding, &dilation, spec.rounding, spec.mode)?;
        let problem =
            ConvProblem::grouped(geometry, in_channels, spec.out_channels, spec.groups)?.with_algorithm(spec.algorithm);
        let (weight, bias) = spec.make_params(spec.out_channels, in_channels / spec.groups, rng)?;
        let mut output_shape = vec![spec.out_channels];
        output_shape.extend_from_slice(problem.geometry().output());
        Ok(Self {
            input_shape: input_shape.to_vec(),
            output_shape,
            pad_value: T::from_f64(spec.pad_value),
            pad,
            weight,
            bias,
            problem,
        })
    }

    /// The validated geometry of the convolution run: over the explicitly padded input
    /// (and unpadded) when a padding mode other than the constant is set.
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
        let (p, w, y) = (&self.problem, self.weight.value.data(), output.data_mut());
        match &self.pad {
            Some(plan) => {
                plan.with_padded(input.data(), self.pad_value, |x| conv_forward(p, batch, x, w, bias, T::zero(), y))?
            }
            None => conv_forward(p, batch, input.data(), w, bias, self.pad_value, y)?,
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
        let dx = match grad_input {
            Some(dx) => {
                dx.set_batch_shape(batch, &self.input_shape)?;
                Some(dx.data_mut())
            }
            None => None,
        };
        let (p, dy) = (&self.problem, grad_output.data());
        let (w, dw) = (self.weight.value.data(), self.weight.grad.data_mut());
        let db = self.bias.as_mut().map(|bias| bias.grad.data_mut());
        match &self.pad {
            // ∂ of the padded input, folded back onto the cells the padding copied.
            Some(plan) => plan.with_padded(input.data(), self.pad_value, |x| match dx {
                Some(dx) => plan.unpad_from(dx, |dxp| conv_backward(p, batch, x, w, dy, T::zero(), Some(dxp), dw, db)),
                None => conv_backward(p, batch, x, w, dy, T::zero(), None, dw, db),
            })?,
            None => conv_backward(p, batch, input.data(), w, dy, self.pad_value, dx, dw, db)?,
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
