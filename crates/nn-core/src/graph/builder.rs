use super::{Graph, Node, Op};
use crate::init::SeededRng;
use crate::layers::{
    ActivationLayer, BatchNorm, Conv, ConvSpec, ConvTranspose, Dense, Dropout, Flatten, GlobalAvgPool, GroupNorm,
    LayerNorm, Pool, PoolSpec, Upsample,
};
use crate::{seeded_rng, Activation, Layer, NnError};
use nn_kernels::Element;

/// A node of a graph being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeId(usize);

/// Builds a [`Graph`] node by node, each from nodes built before (so the graph is
/// acyclic by construction). Names nest with [`scope`](Self::scope): a residual block
/// written once as a function and called in `scope("stage2.block0", …)` names its
/// parameters `"stage2.block0.conv1.weight"`. Shapes are checked as nodes are added;
/// the first error, naming the node and the shapes, is returned by
/// [`build`](Self::build).
pub struct GraphBuilder<T: Element> {
    nodes: Vec<Node<T>>,
    scope: Vec<String>,
    rng: SeededRng,
    error: Option<NnError>,
}

impl<T: Element> GraphBuilder<T> {
    /// A builder for samples of shape `input_shape`, weights drawn from `seed`; the
    /// input node is [`GraphBuilder::input`].
    pub fn new(input_shape: &[usize], seed: u64) -> Self {
        let input = Node { name: "input".into(), op: Op::Input, inputs: Vec::new(), shape: input_shape.to_vec() };
        Self { nodes: vec![input], scope: Vec::new(), rng: seeded_rng(seed), error: None }
    }

    /// The network's input.
    pub fn input(&self) -> NodeId {
        NodeId(0)
    }

    /// The per-sample shape `node` produces.
    pub fn shape(&self, node: NodeId) -> &[usize] {
        &self.nodes[node.0].shape
    }

    /// Runs `body` with `name` appended to the names of the nodes it adds.
    pub fn scope<R>(&mut self, name: &str, body: impl FnOnce(&mut Self) -> R) -> R {
        self.scope.push(name.to_string());
        let result = body(self);
        self.scope.pop();
        result
    }

    fn full_name(&self, name: &str) -> String {
        self.scope.iter().map(String::as_str).chain([name]).collect::<Vec<_>>().join(".")
    }

    fn push(&mut self, name: &str, op: Op<T>, inputs: Vec<usize>, shape: Vec<usize>) -> NodeId {
        self.nodes.push(Node { name: self.full_name(name), op, inputs, shape });
        NodeId(self.nodes.len() - 1)
    }

    /// Keeps the first error; a failed node stands in as a copy of its input, so that
    /// building can go on to `build`, which reports it.
    fn fail(&mut self, name: &str, input: NodeId, error: NnError) -> NodeId {
        if self.error.is_none() {
            let details = format!("{}: {error}", self.full_name(name));
            self.error = Some(NnError::InvalidArgument { what: "graph node", details });
        }
        input
    }

    /// A layer named `name` reading `input`, made from the input's per-sample shape.
    pub fn layer(
        &mut self,
        name: &str,
        input: NodeId,
        make: impl FnOnce(&[usize], &mut SeededRng) -> Result<Box<dyn Layer<T>>, NnError>,
    ) -> NodeId {
        let shape = self.nodes[input.0].shape.clone();
        match make(&shape, &mut self.rng) {
            Ok(layer) => {
                let out = layer.output_shape().to_vec();
                self.push(name, Op::Layer(layer), vec![input.0], out)
            }
            Err(e) => self.fail(name, input, e),
        }
    }

    /// A convolution.
    pub fn conv(&mut self, name: &str, input: NodeId, spec: ConvSpec) -> NodeId {
        self.layer(name, input, |shape, rng| Ok(Box::new(Conv::new(shape, &spec, rng)?)))
    }

    /// A transposed convolution (the adjoint of the convolution `spec` describes).
    pub fn conv_transpose(&mut self, name: &str, input: NodeId, spec: ConvSpec) -> NodeId {
        self.layer(name, input, |shape, rng| Ok(Box::new(ConvTranspose::new(shape, &spec, rng)?)))
    }

    /// A dense layer of `outputs` neurons with a bias.
    pub fn dense(&mut self, name: &str, input: NodeId, outputs: usize) -> NodeId {
        self.layer(name, input, |shape, rng| match *shape {
            [inputs] => Ok(Box::new(Dense::new(inputs, outputs, true, Default::default(), rng)?)),
            _ => Err(NnError::InvalidArgument {
                what: "dense input",
                details: format!("needs a one-dimensional sample, got {shape:?}; flatten or pool first"),
            }),
        })
    }

    /// Batch normalisation.
    pub fn batch_norm(&mut self, name: &str, input: NodeId) -> NodeId {
        self.layer(name, input, |shape, _| Ok(Box::new(BatchNorm::new(shape)?)))
    }

    /// Group normalisation in `groups` groups of channels.
    pub fn group_norm(&mut self, name: &str, input: NodeId, groups: usize) -> NodeId {
        self.layer(name, input, |shape, _| Ok(Box::new(GroupNorm::new(shape, groups)?)))
    }

    /// Layer normalisation over the last `normalized` dimensions of a sample.
    pub fn layer_norm(&mut self, name: &str, input: NodeId, normalized: usize) -> NodeId {
        self.layer(name, input, |shape, _| Ok(Box::new(LayerNorm::new(shape, normalized)?)))
    }

    /// Nearest-neighbour up-sampling by an integer factor per spatial dimension.
    pub fn upsample(&mut self, name: &str, input: NodeId, factors: &[usize]) -> NodeId {
        self.layer(name, input, |shape, _| Ok(Box::new(Upsample::new(shape, factors)?)))
    }

    /// An activation.
    pub fn activation(&mut self, name: &str, input: NodeId, activation: Activation) -> NodeId {
        self.layer(name, input, |shape, _| Ok(Box::new(ActivationLayer::new(shape, activation))))
    }

    /// ReLU.
    pub fn relu(&mut self, name: &str, input: NodeId) -> NodeId {
        self.activation(name, input, Activation::Relu)
    }

    /// A pooling layer.
    pub fn pool(&mut self, name: &str, input: NodeId, spec: PoolSpec) -> NodeId {
        self.layer(name, input, |shape, _| Ok(Box::new(Pool::new(shape, spec)?)))
    }

    /// Global average pooling.
    pub fn global_avg_pool(&mut self, name: &str, input: NodeId) -> NodeId {
        self.layer(name, input, |shape, _| Ok(Box::new(GlobalAvgPool::new(shape)?)))
    }

    /// Dropout of probability `p`.
    pub fn dropout(&mut self, name: &str, input: NodeId, p: f64) -> NodeId {
        self.layer(name, input, |shape, rng| Ok(Box::new(Dropout::new(shape, p, rng)?)))
    }

    /// Flattens each sample.
    pub fn flatten(&mut self, name: &str, input: NodeId) -> NodeId {
        self.layer(name, input, |shape, _| Ok(Box::new(Flatten::new(shape)?)))
    }

    /// The element-wise sum of `a` and `b` (a residual connection); their shapes must
    /// be equal.
    pub fn add(&mut self, name: &str, a: NodeId, b: NodeId) -> NodeId {
        let (sa, sb) = (self.nodes[a.0].shape.clone(), self.nodes[b.0].shape.clone());
        if sa != sb {
            let error = NnError::Shape { op: "graph add", expected: sa, got: sb };
            return self.fail(name, a, error);
        }
        self.push(name, Op::Add { relu: false }, vec![a.0, b.0], sa)
    }

    /// `a` and `b` side by side along channels (a U-Net skip); all other dimensions
    /// must be equal.
    pub fn concat(&mut self, name: &str, a: NodeId, b: NodeId) -> NodeId {
        let (sa, sb) = (self.nodes[a.0].shape.clone(), self.nodes[b.0].shape.clone());
        if sa.is_empty() || sa.len() != sb.len() || sa[1..] != sb[1..] {
            let error = NnError::Shape { op: "graph concat (all but channels equal)", expected: sa, got: sb };
            return self.fail(name, a, error);
        }
        let mut shape = sa.clone();
        shape[0] += sb[0];
        self.push(name, Op::Concat, vec![a.0, b.0], shape)
    }

    /// The graph whose output is `output`, or the first error met while adding nodes.
    ///
    /// # Errors
    /// The first [`NnError`] of a node, naming it: a layer that cannot take its input's
    /// shape, a sum of different shapes, a concatenation whose shapes differ beyond the
    /// channels.
    pub fn build(self, output: NodeId) -> Result<Graph<T>, NnError> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(Graph::from_nodes(self.nodes, output.0, true)),
        }
    }

    /// [`build`](Self::build) without folding ReLUs into the nodes before them, for
    /// setting the two side by side.
    #[cfg(test)]
    pub(crate) fn build_unfused(self, output: NodeId) -> Result<Graph<T>, NnError> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(Graph::from_nodes(self.nodes, output.0, false)),
        }
    }
}
