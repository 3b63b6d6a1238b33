use crate::layer::{backward_batch, batch_of};
use crate::{BackwardReads, Init, Layer, NnError, Param, ParamRole, Tensor};
use nn_kernels::elementwise::add_assign;
use nn_kernels::gemm::{gemm, Transpose};
use nn_kernels::Element;
use rand::Rng;

/// A fully-connected layer (SPEC §2): `y_j = Σ_i x_i·w_ij (+ b_j)`.
///
/// # Shapes
/// input `[batch, n]`, output `[batch, m]`, weight `[n, m]` (`w[i][j]` as in the source),
/// bias `[m]`.
#[derive(Debug, Clone)]
pub struct Dense<T: Element> {
    input_shape: [usize; 1],
    output_shape: [usize; 1],
    weight: Param<T>,
    bias: Option<Param<T>>,
}

impl<T: Element> Dense<T> {
    /// A dense layer from `inputs` to `outputs` neurons, weights drawn by `init`
    /// (fan-in n, fan-out m), bias zero when present.
    ///
    /// # Errors
    /// [`NnError`] when `inputs` or `outputs` is zero or their product overflows.
    pub fn new<R: Rng>(inputs: usize, outputs: usize, bias: bool, init: Init, rng: &mut R) -> Result<Self, NnError> {
        for (dim, len) in [inputs, outputs].into_iter().enumerate() {
            if len == 0 {
                return Err(NnError::ZeroSized { op: "dense", shape: vec![inputs, outputs], dim });
            }
        }
        let mut weight = Tensor::zeros(&[inputs, outputs])?;
        init.fill(inputs, outputs, rng, weight.data_mut())?;
        Ok(Self {
            input_shape: [inputs],
            output_shape: [outputs],
            weight: Param::new("weight", weight),
            bias: if bias {
                Some(Param::new("bias", Tensor::zeros(&[outputs])?).with_role(ParamRole::Bias))
            } else {
                None
            },
        })
    }

    /// The weight, `[n, m]`.
    pub fn weight(&self) -> &Param<T> {
        &self.weight
    }

    /// The bias, `[m]`, when the layer has one.
    pub fn bias(&self) -> Option<&Param<T>> {
        self.bias.as_ref()
    }
}

impl<T: Element> Layer<T> for Dense<T> {
    fn kind(&self) -> &'static str {
        "dense"
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
        let batch = batch_of("dense forward", input, &self.input_shape)?;
        let ([n], [m]) = (self.input_shape, self.output_shape);
        output.set_batch_shape(batch, &self.output_shape)?;
        gemm(
            Transpose::No,
            Transpose::No,
            batch,
            m,
            n,
            T::one(),
            input.data(),
            self.weight.value.data(),
            T::zero(),
            output.data_mut(),
        )?;
        if let Some(bias) = &self.bias {
            for row in output.data_mut().chunks_mut(m) {
                add_assign(row, bias.value.data())?;
            }
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
        let ([n], [m]) = (self.input_shape, self.output_shape);
        let dy = grad_output.data();
        // ∂w_ij += Σ_p x_i·∂y_j : Xᵀ·∂Y
        gemm(
            Transpose::Yes,
            Transpose::No,
            n,
            m,
            batch,
            T::one(),
            input.data(),
            dy,
            T::one(),
            self.weight.grad.data_mut(),
        )?;
        if let Some(bias) = &mut self.bias {
            for row in dy.chunks(m) {
                add_assign(bias.grad.data_mut(), row)?;
            }
        }
        if let Some(dx) = grad_input {
            // ∂x_i = Σ_j ∂y_j·w_ij : ∂Y·Wᵀ
            dx.set_batch_shape(batch, &self.input_shape)?;
            gemm(
                Transpose::No,
                Transpose::Yes,
                batch,
                n,
                m,
                T::one(),
                dy,
                self.weight.value.data(),
                T::zero(),
                dx.data_mut(),
            )?;
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
