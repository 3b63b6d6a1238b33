//! Which node outputs and gradients share memory. A node's output is kept until the
//! backward pass only if a layer's backward reads it (or it is the network's output);
//! the others live from their forward until their last reader's forward, and share
//! buffers. A gradient lives from its first contribution until its node's backward.
//! The plan is fixed when the graph is built, so steady-state steps reuse the same
//! buffers and allocate nothing.

use super::{Node, Op};
use nn_kernels::Element;

/// Buffer indices per node, and how many buffers each pool needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MemoryPlan {
    /// Whether each node's output survives until the backward pass.
    pub(super) kept: Vec<bool>,
    /// The value buffer holding each node's output.
    pub(super) value_slot: Vec<usize>,
    pub(super) values: usize,
    /// The gradient buffer holding each node's ∂L/∂output.
    pub(super) grad_slot: Vec<usize>,
    /// A gradient buffer free while a node's backward runs, for the nodes that add into
    /// a gradient another reader has begun.
    pub(super) scratch_slot: Vec<Option<usize>>,
    pub(super) grads: usize,
}

/// A stack of free buffer indices that grows the pool when empty.
struct Pool {
    free: Vec<usize>,
    count: usize,
}

impl Pool {
    fn take(&mut self) -> usize {
        self.free.pop().unwrap_or_else(|| {
            self.count += 1;
            self.count - 1
        })
    }
}

pub(super) fn plan<T: Element>(nodes: &[Node<T>], output: usize) -> MemoryPlan {
    let n = nodes.len();
    let mut kept = vec![false; n];
    kept[output] = true;
    // The index of the last node whose forward reads each node's output.
    let mut last_reader: Vec<usize> = (0..n).collect();
    for (j, node) in nodes.iter().enumerate() {
        match &node.op {
            Op::Layer(layer) => {
                let reads = layer.backward_reads();
                kept[j] |= reads.output;
                kept[node.inputs[0]] |= reads.input;
            }
            // A rectified sum's derivative is read off its output.
            Op::Add { relu: true } => kept[j] = true,
            _ => {}
        }
        for &i in &node.inputs {
            last_reader[i] = last_reader[i].max(j);
        }
    }

    // Kept outputs get buffers of their own, numbered after the shared ones.
    let mut pool = Pool { free: Vec::new(), count: 0 };
    let mut shared_slot = vec![usize::MAX; n];
    for j in 0..n {
        if !kept[j] {
            shared_slot[j] = pool.take();
        }
        // Inputs read for the last time, and a dead end's own output, free their buffers.
        let dead_end = (last_reader[j] == j).then_some(j);
        for i in nodes[j].inputs.iter().copied().filter(|&i| last_reader[i] == j).chain(dead_end) {
            if !kept[i] && !pool.free.contains(&shared_slot[i]) {
                pool.free.push(shared_slot[i]);
            }
        }
    }
    let mut values = pool.count;
    let value_slot = (0..n)
        .map(|j| {
            if kept[j] {
                values += 1;
                values - 1
            } else {
                shared_slot[j]
            }
        })
        .collect();

    let mut pool = Pool { free: Vec::new(), count: 0 };
    let mut grad_slot = vec![usize::MAX; n];
    grad_slot[output] = pool.take();
    let mut scratch_slot = vec![None; n];
    for j in (1..n).rev() {
        let mut adds_to_begun = false;
        for &i in &nodes[j].inputs {
            if grad_slot[i] == usize::MAX {
                grad_slot[i] = pool.take();
            } else {
                adds_to_begun = true;
            }
        }
        // A sum passes its gradient on as it is; layers, concatenations and rectified
        // sums compute their share first.
        if adds_to_begun && !matches!(nodes[j].op, Op::Add { relu: false }) {
            let slot = pool.take();
            scratch_slot[j] = Some(slot);
            pool.free.push(slot);
        }
        if grad_slot[j] != usize::MAX {
            pool.free.push(grad_slot[j]);
        }
    }
    if grad_slot[0] == usize::MAX {
        grad_slot[0] = pool.take();
    }
    MemoryPlan { kept, value_slot, values, grad_slot, scratch_slot, grads: pool.count }
}

#[cfg(test)]
mod tests {
    use crate::layers::ConvSpec;
    use crate::GraphBuilder;

    #[test]
    fn only_outputs_a_backward_reads_are_kept_and_the_rest_share_buffers() {
        // input → conv → bn → relu → conv → bn → add(·, relu) → relu → pool → dense;
        // the ReLUs fold into the first BN and the sum.
        let mut g = GraphBuilder::<f32>::new(&[2, 6, 6], 0);
        let x = g.input();
        let conv = |g: &mut GraphBuilder<f32>, name, x| g.conv(name, x, ConvSpec::new(2, &[3, 3]).padding(&[1, 1]));
        let c1 = conv(&mut g, "c1", x);
        let b1 = g.batch_norm("b1", c1);
        let r1 = g.relu("r1", b1);
        let c2 = conv(&mut g, "c2", r1);
        let b2 = g.batch_norm("b2", c2);
        let sum = g.add("add", b2, r1);
        let r2 = g.relu("r2", sum);
        let pooled = g.global_avg_pool("pool", r2);
        let c3 = conv(&mut g, "c3", r2);
        let b3 = g.batch_norm("b3", c3);
        let pooled_too = g.global_avg_pool("pool3", b3);
        let both = g.add("both", pooled, pooled_too);
        let out = g.dense("fc", both, 3);
        let graph = g.build(out).unwrap();
        let plan = &graph.plan;
        // Read by a backward: the input, c1, c2 and c3 (convs' and BNs' inputs), b1
        // (its ReLU's derivative), the rectified sum, the summed vector (dense) and the
        // output (the loss).
        let kept: Vec<&str> =
            (0..plan.kept.len()).filter(|&i| plan.kept[i]).map(|i| graph.nodes[i].name.as_str()).collect();
        assert_eq!(kept, ["input", "c1", "b1", "c2", "add", "c3", "both", "fc"]);
        // b2, b3 and the pooled vectors live only until their reader's forward: b2's
        // buffer is free again once the sum has read it; "pool" is still unread when
        // "pool3" is written.
        let slot = |name: &str| plan.value_slot[graph.nodes.iter().position(|n| n.name == name).unwrap()];
        assert_eq!(slot("b2"), slot("pool"), "b2's buffer is reused for pool");
        assert_ne!(slot("pool"), slot("pool3"), "pool is read after pool3 is written");
        assert_eq!(plan.values, 8 + 3);
        // Gradients: alive from their first contribution to their node's backward.
        assert!(plan.grads <= 4, "{} gradient buffers", plan.grads);
        let distinct: std::collections::BTreeSet<usize> = plan.value_slot.iter().copied().collect();
        assert_eq!(distinct.len(), plan.values);
    }
}
