//! Networks that are directed acyclic graphs of layers, joined by element-wise sums
//! (residual connections) and concatenations along channels (U-Net skips).
//!
//! Step 2 runs the nodes in the order they were added, which is a topological order;
//! Step 3 runs them in reverse, and a node used by several others receives the sum of
//! their gradients, added in a fixed order (the users' reverse order), so results do
//! not depend on the thread count.

mod builder;

pub use builder::{GraphBuilder, NodeId};

use crate::{Layer, NnError, Param, Tensor};
use nn_kernels::Element;

/// What a node computes from its inputs.
pub(crate) enum Op<T: Element> {
    /// The network's input.
    Input,
    /// A layer of one input.
    Layer(Box<dyn Layer<T>>),
    /// The element-wise sum of its inputs (same shapes).
    Add,
    /// Its inputs side by side along the channel axis (the first sample dimension).
    Concat,
}

/// One node: a name that says where it lives (`"stage2.block0.conv1"`), what it does,
/// which nodes it reads, and the per-sample shape it produces.
pub(crate) struct Node<T: Element> {
    pub(crate) name: String,
    pub(crate) op: Op<T>,
    pub(crate) inputs: Vec<usize>,
    pub(crate) shape: Vec<usize>,
}

/// A network whose layers form a directed acyclic graph; built by [`GraphBuilder`].
pub struct Graph<T: Element> {
    nodes: Vec<Node<T>>,
    output: usize,
    /// Each node's output of the last forward pass.
    activations: Vec<Tensor<T>>,
    /// Each node's ∂L/∂output during a backward pass, and whether it has one yet.
    grads: Vec<Tensor<T>>,
    has_grad: Vec<bool>,
    /// Scratch for a layer's input gradient before it is added to its input's.
    scratch: Tensor<T>,
    forward_done: bool,
    training: bool,
}

impl<T: Element> std::fmt::Debug for Graph<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<(&str, &[usize])> = self.nodes.iter().map(|n| (n.name.as_str(), n.shape.as_slice())).collect();
        f.debug_struct("Graph").field("nodes", &nodes).finish()
    }
}

impl<T: Element> Graph<T> {
    pub(crate) fn from_nodes(nodes: Vec<Node<T>>, output: usize) -> Self {
        let n = nodes.len();
        Self {
            nodes,
            output,
            activations: (0..n).map(|_| Tensor::default()).collect(),
            grads: (0..n).map(|_| Tensor::default()).collect(),
            has_grad: vec![false; n],
            scratch: Tensor::default(),
            forward_done: false,
            training: true,
        }
    }

    /// The per-sample input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.nodes[0].shape
    }

    /// The per-sample output shape.
    pub fn output_shape(&self) -> &[usize] {
        &self.nodes[self.output].shape
    }

    /// Step 2: runs the batch `x` (`[batch, input_shape…]`) through every node and
    /// returns the output node's.
    ///
    /// # Errors
    /// [`NnError::Shape`] when `x` is not `[batch, input_shape…]`; a layer's error,
    /// naming its node.
    pub fn forward(&mut self, x: &Tensor<T>) -> Result<&Tensor<T>, NnError> {
        let batch = crate::layer::batch_of("graph forward", x, self.input_shape())?;
        self.forward_done = false;
        for index in 0..self.nodes.len() {
            let (done, rest) = self.activations.split_at_mut(index);
            let out = &mut rest[0];
            let node = &mut self.nodes[index];
            match &mut node.op {
                Op::Input => out.copy_from(x),
                Op::Layer(layer) => layer.forward(&done[node.inputs[0]], out).map_err(|e| in_node(&node.name, e))?,
                Op::Add => {
                    out.copy_from(&done[node.inputs[0]]);
                    for &i in &node.inputs[1..] {
                        nn_kernels::elementwise::add_assign(out.data_mut(), done[i].data())?;
                    }
                }
                Op::Concat => {
                    out.set_batch_shape(batch, &node.shape)?;
                    concat_channels(done, &node.inputs, batch, out.data_mut());
                }
            }
        }
        self.forward_done = true;
        Ok(&self.activations[self.output])
    }

    /// The output of the last forward pass, if any.
    pub fn output(&self) -> Option<&Tensor<T>> {
        self.forward_done.then(|| &self.activations[self.output])
    }

    /// Step 3: from `∂L/∂output`, adds every parameter's gradient into
    /// [`Param::grad`].
    ///
    /// # Errors
    /// [`NnError`] when no forward pass preceded or `grad_output` is not shaped like the
    /// output; a layer's error, naming its node.
    pub fn backward(&mut self, grad_output: &Tensor<T>) -> Result<(), NnError> {
        self.backward_impl(grad_output, false)
    }

    /// [`backward`](Self::backward), also returning ∂L/∂input.
    ///
    /// # Errors
    /// As for [`backward`](Self::backward).
    pub fn backward_to_input(&mut self, grad_output: &Tensor<T>) -> Result<&Tensor<T>, NnError> {
        self.backward_impl(grad_output, true)?;
        if !self.has_grad[0] {
            let shape = self.activations[0].shape().to_vec();
            self.grads[0] = Tensor::zeros(&shape)?;
        }
        Ok(&self.grads[0])
    }

    fn backward_impl(&mut self, grad_output: &Tensor<T>, want_input_grad: bool) -> Result<(), NnError> {
        if !self.forward_done {
            return Err(NnError::BackwardBeforeForward);
        }
        let out = &self.activations[self.output];
        if grad_output.shape() != out.shape() {
            return Err(NnError::Shape {
                op: "graph backward",
                expected: out.shape().to_vec(),
                got: grad_output.shape().to_vec(),
            });
        }
        self.has_grad.fill(false);
        self.grads[self.output].copy_from(grad_output);
        self.has_grad[self.output] = true;
        let batch = grad_output.shape()[0];
        for index in (1..self.nodes.len()).rev() {
            if !self.has_grad[index] {
                continue; // Nothing downstream of this node reaches the output.
            }
            let (before, rest) = self.grads.split_at_mut(index);
            let upstream = &rest[0];
            let node = &mut self.nodes[index];
            match &mut node.op {
                Op::Input => {}
                Op::Layer(layer) => {
                    let input = node.inputs[0];
                    // The network's input needs no gradient unless asked for it: a layer
                    // reading it skips its input-gradient pass.
                    let wanted = input != 0 || want_input_grad;
                    let scratch = wanted.then_some(&mut self.scratch);
                    layer
                        .backward(&self.activations[input], &self.activations[index], upstream, scratch)
                        .map_err(|e| in_node(&node.name, e))?;
                    if wanted {
                        accumulate(&mut before[input], &mut self.has_grad[input], &self.scratch)?;
                    }
                }
                Op::Add => {
                    for &input in &node.inputs {
                        accumulate(&mut before[input], &mut self.has_grad[input], upstream)?;
                    }
                }
                Op::Concat => {
                    let mut first = 0;
                    for &input in &node.inputs {
                        let channels = self.activations[input].shape()[1];
                        split_channels(upstream, batch, first, &mut self.scratch, &self.activations[input])?;
                        accumulate(&mut before[input], &mut self.has_grad[input], &self.scratch)?;
                        first += channels;
                    }
                }
            }
        }
        Ok(())
    }

    /// Every parameter, node by node.
    pub fn params(&self) -> Vec<&Param<T>> {
        self.layers().flat_map(|(_, l)| l.params()).collect()
    }

    /// Every parameter, mutably, in the order of [`params`](Self::params).
    pub fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        self.nodes
            .iter_mut()
            .filter_map(|n| match &mut n.op {
                Op::Layer(l) => Some(l.params_mut()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Every parameter named `"{node name}.{parameter}"`, e.g.
    /// `"stage2.block0.conv1.weight"`.
    pub fn named_params(&self) -> Vec<(String, &Param<T>)> {
        self.layers()
            .flat_map(|(node, l)| l.params().into_iter().map(move |p| (format!("{node}.{}", p.name), p)))
            .collect()
    }

    /// Every buffer (batch normalisation's running estimates), named as parameters.
    pub fn named_buffers(&self) -> Vec<(String, &Tensor<T>)> {
        self.layers()
            .flat_map(|(node, l)| l.buffers().into_iter().map(move |(n, b)| (format!("{node}.{n}"), b)))
            .collect()
    }

    /// [`named_buffers`](Self::named_buffers), mutably.
    pub fn named_buffers_mut(&mut self) -> Vec<(String, &mut Tensor<T>)> {
        self.nodes
            .iter_mut()
            .filter_map(|n| match &mut n.op {
                Op::Layer(l) => {
                    let node = n.name.clone();
                    Some(l.buffers_mut().into_iter().map(move |(b, t)| (format!("{node}.{b}"), t)))
                }
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The layers with their node names, in order.
    fn layers(&self) -> impl Iterator<Item = (&str, &dyn Layer<T>)> {
        self.nodes.iter().filter_map(|n| match &n.op {
            Op::Layer(l) => Some((n.name.as_str(), &**l)),
            _ => None,
        })
    }

    /// Switches every layer to training (`true`) or evaluation mode.
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
        for node in &mut self.nodes {
            if let Op::Layer(l) = &mut node.op {
                l.set_training(training);
            }
        }
    }

    /// True in training mode (the default).
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// The name of the first node whose output in the last forward pass holds a NaN or
    /// an infinity.
    pub fn first_non_finite_output(&self) -> Option<&str> {
        if !self.forward_done {
            return None;
        }
        let finite = |i: usize| nn_kernels::elementwise::all_finite(self.activations[i].data());
        (1..self.nodes.len()).find(|&i| !finite(i)).map(|i| self.nodes[i].name.as_str())
    }
}

/// A layer's error, wrapped with its node's name.
fn in_node(name: &str, source: NnError) -> NnError {
    NnError::InvalidArgument { what: "graph node", details: format!("{name}: {source}") }
}

/// `into ← from` for the first contribution, `into += from` after.
fn accumulate<T: Element>(into: &mut Tensor<T>, has: &mut bool, from: &Tensor<T>) -> Result<(), NnError> {
    if *has {
        nn_kernels::elementwise::add_assign(into.data_mut(), from.data())?;
    } else {
        into.copy_from(from);
        *has = true;
    }
    Ok(())
}

/// Writes the tensors `parts` of `tensors` (each `[batch, C_i, rest…]`) side by side
/// along channels.
fn concat_channels<T: Element>(tensors: &[Tensor<T>], parts: &[usize], batch: usize, out: &mut [T]) {
    let per_sample: usize = out.len() / batch.max(1);
    for n in 0..batch {
        let mut at = n * per_sample;
        for part in parts.iter().map(|&i| &tensors[i]) {
            let len = part.len() / batch;
            out[at..at + len].copy_from_slice(&part.data()[n * len..(n + 1) * len]);
            at += len;
        }
    }
}

/// The channels `first..first + C` of `grad` (`[batch, ΣC, rest…]`) into `out`, shaped
/// like `like` (`[batch, C, rest…]`).
fn split_channels<T: Element>(
    grad: &Tensor<T>,
    batch: usize,
    first: usize,
    out: &mut Tensor<T>,
    like: &Tensor<T>,
) -> Result<(), NnError> {
    out.set_batch_shape(batch, &like.shape()[1..])?;
    let per_sample = grad.len() / batch.max(1);
    let plane: usize = like.shape()[2..].iter().product();
    let len = like.len() / batch.max(1);
    for n in 0..batch {
        let from = n * per_sample + first * plane;
        out.data_mut()[n * len..(n + 1) * len].copy_from_slice(&grad.data()[from..from + len]);
    }
    Ok(())
}
