use super::Sequential;
use crate::layers::{
    ActivationLayer, BatchNorm, Conv, ConvSpec, ConvTranspose, Dense, Dropout, Flatten, GlobalAvgPool, GroupNorm,
    LayerNorm, Pool, PoolKind, PoolSpec, Upsample,
};
use crate::{seeded_rng, Init, Layer, NnError, SeededRng};
use nn_kernels::elementwise::Activation;
use nn_kernels::Element;

/// Builds a [`Sequential`] layer by layer, tracking the per-sample shape so each
/// layer's input size is inferred. The first error is kept and returned by
/// [`build`](Self::build), naming the layer's index.
pub struct SequentialBuilder<T: Element> {
    input_shape: Vec<usize>,
    shape: Vec<usize>,
    layers: Vec<Box<dyn Layer<T>>>,
    rng: SeededRng,
    error: Option<NnError>,
}

impl<T: Element> SequentialBuilder<T> {
    pub(super) fn new(input_shape: &[usize], seed: u64) -> Self {
        Self {
            input_shape: input_shape.to_vec(),
            shape: input_shape.to_vec(),
            layers: Vec::new(),
            rng: seeded_rng(seed),
            error: None,
        }
    }

    fn push_with(
        mut self,
        kind: &'static str,
        make: impl FnOnce(&[usize], &mut SeededRng) -> Result<Box<dyn Layer<T>>, NnError>,
    ) -> Self {
        if self.error.is_some() {
            return self;
        }
        match make(&self.shape, &mut self.rng) {
            Ok(layer) => {
                self.shape = layer.output_shape().to_vec();
                self.layers.push(layer);
            }
            Err(source) => {
                self.error = Some(NnError::Layer {
                    index: self.layers.len(),
                    kind,
                    input: self.shape.clone(),
                    source: Box::new(source),
                })
            }
        }
        self
    }

    /// The per-sample shape the next layer will receive.
    pub fn current_shape(&self) -> &[usize] {
        &self.shape
    }

    /// A dense layer to `outputs` neurons with a bias and He-uniform weights. The input
    /// must be one-dimensional (add [`flatten`](Self::flatten) after a convolution).
    pub fn dense(self, outputs: usize) -> Self {
        self.dense_with(outputs, true, Init::HeUniform)
    }

    /// A dense layer with explicit bias and initialisation.
    pub fn dense_with(self, outputs: usize, bias: bool, init: Init) -> Self {
        self.push_with("dense", |shape, rng| match *shape {
            [inputs] => Ok(Box::new(Dense::new(inputs, outputs, bias, init, rng)?)),
            _ => Err(NnError::InvalidArgument {
                what: "dense input",
                details: format!("needs a one-dimensional sample, got {shape:?}; add flatten() first"),
            }),
        })
    }

    /// A convolution layer.
    pub fn conv(self, spec: ConvSpec) -> Self {
        self.push_with("conv", |shape, rng| Ok(Box::new(Conv::new(shape, &spec, rng)?)))
    }

    /// A transposed convolution (the adjoint of the convolution `spec` describes).
    pub fn conv_transpose(self, spec: ConvSpec) -> Self {
        self.push_with("conv_transpose", |shape, rng| Ok(Box::new(ConvTranspose::new(shape, &spec, rng)?)))
    }

    /// An elementwise activation.
    pub fn activation(self, activation: Activation) -> Self {
        self.push_with("activation", |shape, _| Ok(Box::new(ActivationLayer::new(shape, activation))))
    }

    /// ReLU.
    pub fn relu(self) -> Self {
        self.activation(Activation::Relu)
    }

    /// Sigmoid.
    pub fn sigmoid(self) -> Self {
        self.activation(Activation::Sigmoid)
    }

    /// tanh.
    pub fn tanh(self) -> Self {
        self.activation(Activation::Tanh)
    }

    /// Max pooling with non-overlapping windows.
    pub fn max_pool(self, window: &[usize]) -> Self {
        self.pool(PoolSpec::new(PoolKind::Max, window))
    }

    /// Average pooling with non-overlapping windows.
    pub fn avg_pool(self, window: &[usize]) -> Self {
        self.pool(PoolSpec::new(PoolKind::Average, window))
    }

    /// A pooling layer.
    pub fn pool(self, spec: PoolSpec) -> Self {
        self.push_with("pool", |shape, _| Ok(Box::new(Pool::new(shape, spec)?)))
    }

    /// Batch normalisation over the channel axis (PyTorch's momentum and ε).
    pub fn batch_norm(self) -> Self {
        self.push_with("batch_norm", |shape, _| Ok(Box::new(BatchNorm::new(shape)?)))
    }

    /// Group normalisation in `groups` groups of channels (ε = 1e-5).
    pub fn group_norm(self, groups: usize) -> Self {
        self.push_with("group_norm", |shape, _| Ok(Box::new(GroupNorm::new(shape, groups)?)))
    }

    /// Layer normalisation over the last `normalized` dimensions of a sample (ε = 1e-5).
    pub fn layer_norm(self, normalized: usize) -> Self {
        self.push_with("layer_norm", |shape, _| Ok(Box::new(LayerNorm::new(shape, normalized)?)))
    }

    /// Nearest-neighbour up-sampling by an integer factor per spatial dimension.
    pub fn upsample(self, factors: &[usize]) -> Self {
        self.push_with("upsample", |shape, _| Ok(Box::new(Upsample::new(shape, factors)?)))
    }

    /// Dropout of probability `p` (inverted scaling), its masks seeded from the
    /// builder's seed.
    pub fn dropout(self, p: f64) -> Self {
        self.push_with("dropout", |shape, rng| Ok(Box::new(Dropout::new(shape, p, rng)?)))
    }

    /// Global average pooling: `[C, spatial…]` to `[C]`.
    pub fn global_avg_pool(self) -> Self {
        self.push_with("global_avg_pool", |shape, _| Ok(Box::new(GlobalAvgPool::new(shape)?)))
    }

    /// Flattens each sample to one dimension.
    pub fn flatten(self) -> Self {
        self.push_with("flatten", |shape, _| Ok(Box::new(Flatten::new(shape)?)))
    }

    /// Any layer, built from the current shape (for layers defined outside this crate).
    pub fn layer(self, make: impl FnOnce(&[usize]) -> Result<Box<dyn Layer<T>>, NnError>) -> Self {
        self.push_with("custom", |shape, _| make(shape))
    }

    /// The network, or the first error met while adding layers.
    ///
    /// # Errors
    /// The first [`NnError`] a layer's construction returned (an invalid geometry, a
    /// shape a layer cannot take).
    pub fn build(self) -> Result<Sequential<T>, NnError> {
        match self.error {
            Some(e) => Err(e),
            None => Sequential::new(&self.input_shape, self.layers),
        }
    }
}
