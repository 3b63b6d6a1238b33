use super::ConvSpec;
use crate::layer::{backward_batch, batch_of};
use crate::{BackwardReads, Layer, NnError, Param, Tensor};
use nn_kernels::conv::{
    conv_transpose_backward, conv_transpose_backward_bias, conv_transpose_forward, ConvGeometry, ConvProblem,
    OutputRounding, Padding,
};
use nn_kernels::Element;
use rand::Rng;

/// An N-dimensional transposed convolution: the exact adjoint, with respect to its
/// input, of the [`Conv`](super::Conv) with the same filter, stride, padding,
/// dilation, groups and mode, mapping that convolution's output shape back to its
/// input shape, plus a bias.
///
/// Built from a [`ConvSpec`] (whose `out_channels` are this layer's outputs) and its
/// `output_padding`: an input of lengths `μ_i` gives outputs of
/// `v_i = (μ_i − 1)·s_i − p_before_i − p_after_i + d_i·(f_i − 1) + 1 + o_i`, where the
/// output padding `o_i < s_i` picks among the lengths the convolution maps back to `μ_i`.
///
/// # Shapes
/// input `[batch, C_in, μ…]`, output `[batch, C_out, v…]`, weight `[C_in, C_out/g, f…]`
/// (the adjoint convolution's weight), bias `[C_out]`.
#[derive(Debug, Clone)]
pub struct ConvTranspose<T: Element> {
    /// The convolution this layer is the adjoint of: from `[C_out, v…]` to `[C_in, μ…]`.
    problem: ConvProblem,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    weight: Param<T>,
    bias: Option<Param<T>>,
}

impl<T: Element> ConvTranspose<T> {
    /// A transposed convolution over inputs of per-sample shape `[C_in, μ_1, …, μ_n]`.
    ///
    /// # Errors
    /// [`NnError`] naming the dimension for an invalid geometry: a zero or negative
    /// output length, an output padding not smaller than the stride, ranks that differ,
    /// channel counts the groups do not divide, or a non-zero padding value (the
    /// adjoint reads no padding).
    pub fn new<R: Rng>(input_shape: &[usize], spec: &ConvSpec, rng: &mut R) -> Result<Self, NnError> {
        let invalid = |what, details: String| NnError::InvalidArgument { what, details };
        let (&in_channels, spatial) = input_shape.split_first().filter(|(_, s)| !s.is_empty()).ok_or_else(|| {
            invalid("conv transpose input shape", format!("{input_shape:?} is not [channels, spatial…]"))
        })?;
        if spec.pad_value != 0.0 {
            return Err(invalid(
                "conv transpose padding value",
                format!("{} ≠ 0: the adjoint reads no padding", spec.pad_value),
            ));
        }
        let rank = spatial.len();
        let ones = vec![1; rank];
        let stride = spec.stride.clone().unwrap_or_else(|| ones.clone());
        let padding = spec.padding.clone().unwrap_or_else(|| vec![Padding::default(); rank]);
        let dilation = spec.dilation.clone().unwrap_or_else(|| ones.clone());
        let extra = spec.output_padding.clone().unwrap_or_else(|| vec![0; rank]);
        let lists = [("filter", spec.filter.len()), ("stride", stride.len()), ("padding", padding.len())];
        let lists = lists.into_iter().chain([("dilation", dilation.len()), ("output padding", extra.len())]);
        if let Some((what, got)) = lists.into_iter().find(|&(_, got)| got != rank) {
            return Err(nn_kernels::GeometryError::RankMismatch { what, expected: rank, got }.into());
        }
        let mut output = Vec::with_capacity(rank);
        for dim in 0..rank {
            if extra[dim] >= stride[dim].max(1) {
                return Err(invalid(
                    "conv transpose output padding",
                    format!("{} is not smaller than the stride {} in dimension {dim}", extra[dim], stride[dim]),
                ));
            }
            let length = (spatial[dim] as i128 - 1) * stride[dim] as i128
                - padding[dim].before as i128
                - padding[dim].after as i128
                + dilation[dim] as i128 * (spec.filter[dim] as i128 - 1)
                + 1
                + extra[dim] as i128;
            if length < 1 || length > isize::MAX as i128 {
                return Err(invalid("conv transpose output length", format!("{length} in dimension {dim}")));
            }
            output.push(length as usize);
        }
        // The convolution from this layer's output back to its input; Floor drops the
        // output padding's cells, which it never reads.
        let geometry = ConvGeometry::dilated(
            &output,
            &spec.filter,
            &stride,
            &padding,
            &dilation,
            OutputRounding::Floor,
            spec.mode,
        )?;
        debug_assert_eq!(geometry.output(), spatial, "the adjoint maps back to the input");
        let problem = ConvProblem::grouped(geometry, spec.out_channels, in_channels, spec.groups)?;
        // The adjoint convolution's weight, `[C_in, C_out/g, f…]`.
        let (weight, bias) = spec.make_params(in_channels, spec.out_channels / spec.groups, rng)?;
        let mut output_shape = vec![spec.out_channels];
        output_shape.extend_from_slice(&output);
        Ok(Self { input_shape: input_shape.to_vec(), output_shape, weight, bias, problem })
    }

    /// The convolution this layer is the adjoint of (its input is this layer's output).
    pub fn adjoint_geometry(&self) -> &ConvGeometry {
        self.problem.geometry()
    }
}

impl<T: Element> Layer<T> for ConvTranspose<T> {
    fn kind(&self) -> &'static str {
        "conv_transpose"
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
        let batch = batch_of("conv transpose forward", input, &self.input_shape)?;
        output.set_batch_shape(batch, &self.output_shape)?;
        let bias = self.bias.as_ref().map(|b| b.value.data());
        conv_transpose_forward(&self.problem, batch, input.data(), self.weight.value.data(), bias, output.data_mut())?;
        Ok(())
    }

    /// The adjoint's derivatives: `∂x = conv(∂z, w)` (no padding value, no bias),
    /// `∂w += conv_w(∂z, x)`, `∂b += Σ ∂z`.
    fn backward(
        &mut self,
        input: &Tensor<T>,
        output: &Tensor<T>,
        grad_output: &Tensor<T>,
        grad_input: Option<&mut Tensor<T>>,
    ) -> Result<(), NnError> {
        let batch = backward_batch(self, input, output, grad_output)?;
        let dz = grad_output.data();
        if let Some(bias) = &mut self.bias {
            conv_transpose_backward_bias(&self.problem, batch, dz, bias.grad.data_mut())?;
        }
        let dx = match grad_input {
            Some(dx) => {
                dx.set_batch_shape(batch, &self.input_shape)?;
                Some(dx.data_mut())
            }
            None => None,
        };
        let (w, dw) = (self.weight.value.data(), self.weight.grad.data_mut());
        conv_transpose_backward(&self.problem, batch, dz, input.data(), w, dx, dw)?;
        Ok(())
    }

    fn params(&self) -> Vec<&Param<T>> {
        std::iter::once(&self.weight).chain(self.bias.as_ref()).collect()
    }

    fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        std::iter::once(&mut self.weight).chain(self.bias.as_mut()).collect()
    }
}
