//! Networks that are directed acyclic graphs of layers, joined by element-wise sums
//! (residual connections) and concatenations along channels (U-Net skips).
//!
//! Step 2 runs the nodes in the order they were added, which is a topological order;
//! Step 3 runs them in reverse, and a node used by several others receives the sum of
//! their gradients, added in a fixed order (the users' reverse order), so results do
//! not depend on the thread count.

mod builder;
mod fusion;
mod memory;
mod profile;

pub use builder::{GraphBuilder, NodeId};
pub use profile::NodeTiming;

use crate::{Layer, NnError, Param, Tensor};
use memory::MemoryPlan;
use nn_kernels::Element;
use profile::Stopwatch;
use std::time::Duration;

/// What a node computes from its inputs.
pub(crate) enum Op<T: Element> {
    /// The network's input.
    Input,
    /// A layer of one input.
    Layer(Box<dyn Layer<T>>),
    /// The element-wise sum of its inputs (same shapes), rectified if `relu`.
    Add { relu: bool },
    /// Its inputs side by side along the channel axis (the first sample dimension).
    Concat,
}

impl<T: Element> Op<T> {
    fn kind(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Layer(layer) => layer.kind(),
            Op::Add { relu: false } => "add",
            Op::Add { relu: true } => "add+relu",
            Op::Concat => "concat",
        }
    }
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
///
/// Memory: a node's output is kept for the backward pass only where a layer's
/// backward reads it ([`Layer::backward_reads`]); the others, and the gradients,
/// share buffers planned once when the graph is built.
///
/// A ReLU whose input only it reads is folded into a residual sum or a batch
/// normalisation before it ([`Layer::rectify_output`]), and otherwise a ReLU whose
/// output one node alone reads into that node where it can rectify its input (a max
/// pool: [`Layer::rectify_input`]). The node then rectifies in its own passes, with
/// the same bits, and the ReLU's node (and its name) is gone from
/// [`node_timings`](Self::node_timings).
pub struct Graph<T: Element> {
    nodes: Vec<Node<T>>,
    output: usize,
    plan: MemoryPlan,
    /// Node outputs of the last forward pass, at `plan.value_slot`.
    values: Vec<Tensor<T>>,
    /// ∂L/∂output during a backward pass, at `plan.grad_slot`, and whether each node
    /// has received its first contribution yet.
    grads: Vec<Tensor<T>>,
    has_grad: Vec<bool>,
    forward_done: bool,
    training: bool,
    /// Per node (forward, backward) of the last passes, when profiling.
    timings: Option<Vec<(Duration, Duration)>>,
}

impl<T: Element> std::fmt::Debug for Graph<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<(&str, &[usize])> = self.nodes.iter().map(|n| (n.name.as_str(), n.shape.as_slice())).collect();
        f.debug_struct("Graph").field("nodes", &nodes).finish()
    }
}

impl<T: Element> Graph<T> {
    /// The graph of `nodes`, with ReLUs folded into the nodes before them if `fold`.
    pub(crate) fn from_nodes(nodes: Vec<Node<T>>, output: usize, fold: bool) -> Self {
        let (nodes, output) = if fold { fusion::fold_relus(nodes, output) } else { (nodes, output) };
        let plan = memory::plan(&nodes, output);
        Self {
            values: (0..plan.values).map(|_| Tensor::default()).collect(),
            grads: (0..plan.grads).map(|_| Tensor::default()).collect(),
            has_grad: vec![false; nodes.len()],
            nodes,
            output,
            plan,
            forward_done: false,
            training: true,
            timings: None,
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
        let Self { nodes, plan, values, timings, .. } = self;
        for (index, node) in nodes.iter_mut().enumerate() {
            let watch = Stopwatch::start(timings.is_some());
            // Out of the pool while it is written; the planner gave it a buffer no
            // input of this node is using.
            let mut out = std::mem::take(&mut values[plan.value_slot[index]]);
            let input = |k: usize| &values[plan.value_slot[node.inputs[k]]];
            let result = match &mut node.op {
                Op::Input => {
                    out.copy_from(x);
                    Ok(())
                }
                Op::Layer(layer) => layer.forward(input(0), &mut out).map_err(|e| in_node(&node.name, e)),
                // The builder gives an addition two inputs.
                &mut Op::Add { relu } => out.set_batch_shape(batch, &node.shape).and_then(|()| {
                    let (a, b, out) = (input(0).data(), input(1).data(), out.data_mut());
                    let sum = if relu { nn_kernels::elementwise::add_relu } else { nn_kernels::elementwise::add };
                    Ok(sum(a, b, out)?)
                }),
                Op::Concat => out.set_batch_shape(batch, &node.shape).map(|()| {
                    let parts: Vec<&Tensor<T>> = (0..node.inputs.len()).map(input).collect();
                    concat_channels(&parts, batch, out.data_mut());
                }),
            };
            values[plan.value_slot[index]] = out;
            result?;
            watch.stop(timings.as_mut().map(|t| &mut t[index].0));
        }
        self.forward_done = true;
        Ok(&self.values[self.plan.value_slot[self.output]])
    }

    /// The output of the last forward pass, if any.
    pub fn output(&self) -> Option<&Tensor<T>> {
        self.forward_done.then(|| &self.values[self.plan.value_slot[self.output]])
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
        let slot = self.plan.grad_slot[0];
        if !self.has_grad[0] {
            let shape = self.values[self.plan.value_slot[0]].shape().to_vec();
            self.grads[slot] = Tensor::zeros(&shape)?;
        }
        Ok(&self.grads[slot])
    }

    fn backward_impl(&mut self, grad_output: &Tensor<T>, want_input_grad: bool) -> Result<(), NnError> {
        let expected = self.output().ok_or(NnError::BackwardBeforeForward)?.shape();
        if grad_output.shape() != expected {
            return Err(NnError::Shape {
                op: "graph backward",
                expected: expected.to_vec(),
                got: grad_output.shape().to_vec(),
            });
        }
        let batch = grad_output.shape()[0];
        let Self { nodes, plan, values, grads, has_grad, timings, .. } = self;
        has_grad.fill(false);
        grads[plan.grad_slot[self.output]].copy_from(grad_output);
        has_grad[self.output] = true;
        // Stands in for a tensor a layer's backward does not read.
        let unread = Tensor::default();
        for index in (1..nodes.len()).rev() {
            if !has_grad[index] {
                continue; // Nothing downstream of this node reaches the output.
            }
            let watch = Stopwatch::start(timings.is_some());
            let (earlier, rest) = nodes.split_at_mut(index);
            let node = &mut rest[0];
            // Out of the pool while read; the planner gave no input the same buffer.
            let upstream = std::mem::take(&mut grads[plan.grad_slot[index]]);
            // Where an input's gradient was begun by another reader, this node's share is
            // computed here first (a buffer the planner found free at this point).
            let mut scratch = plan.scratch_slot[index].map(|s| std::mem::take(&mut grads[s])).unwrap_or_default();
            let result = match &mut node.op {
                Op::Input => Ok(()),
                Op::Layer(layer) => {
                    let input = node.inputs[0];
                    let reads = layer.backward_reads();
                    let x = if reads.input { &values[plan.value_slot[input]] } else { &unread };
                    let y = if reads.output { &values[plan.value_slot[index]] } else { &unread };
                    // The network's input needs no gradient unless asked for it: a layer
                    // reading it skips its input-gradient pass.
                    if input == 0 && !want_input_grad {
                        layer.backward(x, y, &upstream, None)
                    } else if !has_grad[input] {
                        has_grad[input] = true;
                        layer.backward(x, y, &upstream, Some(&mut grads[plan.grad_slot[input]]))
                    } else {
                        layer.backward(x, y, &upstream, Some(&mut scratch)).and_then(|()| {
                            let into = grads[plan.grad_slot[input]].data_mut();
                            Ok(nn_kernels::elementwise::add_assign(into, scratch.data())?)
                        })
                    }
                    .map_err(|e| in_node(&node.name, e))
                }
                Op::Add { relu: false } => node.inputs.iter().try_for_each(|&input| {
                    accumulate(&mut grads[plan.grad_slot[input]], &mut has_grad[input], &upstream)
                }),
                // Each input's share is the gradient masked where the output is zero,
                // written straight into its gradient (through the scratch buffer where
                // another reader has begun that).
                Op::Add { relu: true } => {
                    let y = values[plan.value_slot[index]].data();
                    node.inputs.iter().try_for_each(|&input| {
                        let begun = std::mem::replace(&mut has_grad[input], true);
                        let share = if begun { &mut scratch } else { &mut grads[plan.grad_slot[input]] };
                        share.set_batch_shape(batch, &node.shape)?;
                        let relu = nn_kernels::elementwise::Activation::Relu;
                        nn_kernels::elementwise::activation_backward(relu, y, y, upstream.data(), share.data_mut())?;
                        if begun {
                            let into = grads[plan.grad_slot[input]].data_mut();
                            nn_kernels::elementwise::add_assign(into, scratch.data())?;
                        }
                        Ok(())
                    })
                }
                Op::Concat => {
                    let mut first = 0;
                    node.inputs.iter().try_for_each(|&input| {
                        let shape = &earlier[input].shape;
                        let into = &mut grads[plan.grad_slot[input]];
                        if has_grad[input] {
                            split_channels(&upstream, batch, first, &mut scratch, shape)?;
                            nn_kernels::elementwise::add_assign(into.data_mut(), scratch.data())?;
                        } else {
                            split_channels(&upstream, batch, first, into, shape)?;
                            has_grad[input] = true;
                        }
                        first += shape[0];
                        Ok(())
                    })
                }
            };
            grads[plan.grad_slot[index]] = upstream;
            if let Some(s) = plan.scratch_slot[index] {
                grads[s] = scratch;
            }
            result?;
            watch.stop(timings.as_mut().map(|t| &mut t[index].1));
        }
        Ok(())
    }

    /// Starts (`true`) or stops recording the time of each node in every pass; see
    /// [`node_timings`](Self::node_timings).
    pub fn set_profiling(&mut self, on: bool) {
        self.timings = on.then(|| vec![(Duration::ZERO, Duration::ZERO); self.nodes.len()]);
    }

    /// Each node's time in the last forward and backward pass (empty when profiling is
    /// off).
    pub fn node_timings(&self) -> Vec<NodeTiming> {
        let Some(timings) = &self.timings else { return Vec::new() };
        self.nodes
            .iter()
            .zip(timings)
            .map(|(node, &(forward, backward))| NodeTiming {
                name: node.name.clone(),
                kind: node.op.kind(),
                forward,
                backward,
            })
            .collect()
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

    /// [`Layer::skip_patterns`](crate::Layer::skip_patterns) on every layer.
    pub fn skip_patterns(&mut self, patterns: usize) {
        for node in &mut self.nodes {
            if let Op::Layer(l) = &mut node.op {
                l.skip_patterns(patterns);
            }
        }
    }

    /// True in training mode (the default).
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// The name of the first node whose output in the last forward pass holds a NaN or
    /// an infinity, among the nodes whose outputs are kept for the backward pass (an
    /// output only the next node's forward reads is overwritten by then).
    pub fn first_non_finite_output(&self) -> Option<&str> {
        if !self.forward_done {
            return None;
        }
        let finite = |i: usize| nn_kernels::elementwise::all_finite(self.values[self.plan.value_slot[i]].data());
        (1..self.nodes.len()).find(|&i| self.plan.kept[i] && !finite(i)).map(|i| self.nodes[i].name.as_str())
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

/// Writes `parts` (each `[batch, C_i, rest…]`) side by side along channels.
fn concat_channels<T: Element>(parts: &[&Tensor<T>], batch: usize, out: &mut [T]) {
    let per_sample: usize = out.len() / batch.max(1);
    for n in 0..batch {
        let mut at = n * per_sample;
        for part in parts {
            let len = part.len() / batch;
            out[at..at + len].copy_from_slice(&part.data()[n * len..(n + 1) * len]);
            at += len;
        }
    }
}

/// The channels `first..first + C` of `grad` (`[batch, ΣC, rest…]`) into `out`, shaped
/// `[batch, per_sample…]` where `per_sample` is `[C, rest…]`.
fn split_channels<T: Element>(
    grad: &Tensor<T>,
    batch: usize,
    first: usize,
    out: &mut Tensor<T>,
    per_sample: &[usize],
) -> Result<(), NnError> {
    out.set_batch_shape(batch, per_sample)?;
    let from_len = grad.len() / batch.max(1);
    let plane: usize = per_sample[1..].iter().product();
    let len = out.len() / batch.max(1);
    for n in 0..batch {
        let from = n * from_len + first * plane;
        out.data_mut()[n * len..(n + 1) * len].copy_from_slice(&grad.data()[from..from + len]);
    }
    Ok(())
}
