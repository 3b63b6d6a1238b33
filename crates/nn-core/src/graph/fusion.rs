//! Folds each ReLU into the node before it where that node rectifies its own output
//! in its own passes (a residual sum; batch normalisation), or else into the node
//! after it where that node rectifies its input (max pooling): a ReLU node on its own
//! sweeps the whole activation once more each way. Only a node whose output the ReLU
//! alone reads, or a ReLU whose output one node alone reads, is folded, so nothing
//! else sees the change; results keep their bits.

use super::{Node, Op};
use crate::Activation;
use nn_kernels::Element;

/// The nodes with foldable ReLUs folded away, and the output's new index.
pub(super) fn fold_relus<T: Element>(nodes: Vec<Node<T>>, output: usize) -> (Vec<Node<T>>, usize) {
    let mut readers = vec![0usize; nodes.len()];
    // The node reading each node's output last (the only one, where there is one).
    let mut reader = vec![usize::MAX; nodes.len()];
    readers[output] += 1;
    for (j, node) in nodes.iter().enumerate() {
        for &i in &node.inputs {
            readers[i] += 1;
            reader[i] = j;
        }
    }
    let mut kept: Vec<Node<T>> = Vec::with_capacity(nodes.len());
    // Where each node's output now comes from, by old index.
    let mut moved: Vec<usize> = Vec::with_capacity(nodes.len());
    // Taken in order, so that a ReLU can still change a node after it.
    let mut later: Vec<Option<Node<T>>> = nodes.into_iter().map(Some).collect();
    for index in 0..later.len() {
        let mut node = later[index].take().expect("each node is taken once");
        let is_relu = matches!(&node.op, Op::Layer(l) if l.as_activation() == Some(Activation::Relu));
        if is_relu && readers[node.inputs[0]] == 1 {
            let before = moved[node.inputs[0]];
            let absorbed = match &mut kept[before].op {
                Op::Add { relu } => !std::mem::replace(relu, true),
                Op::Layer(layer) => layer.rectify_output(true),
                Op::Input | Op::Concat => false,
            };
            if absorbed {
                moved.push(before);
                continue;
            }
        }
        if is_relu && readers[index] == 1 {
            // The reader then reads the ReLU's input in its place.
            let after = later.get_mut(reader[index]).and_then(Option::as_mut);
            if let Some(Node { op: Op::Layer(layer), .. }) = after {
                if layer.rectify_input(true) {
                    moved.push(moved[node.inputs[0]]);
                    continue;
                }
            }
        }
        node.inputs.iter_mut().for_each(|i| *i = moved[*i]);
        moved.push(kept.len());
        kept.push(node);
    }
    (kept, moved[output])
}

#[cfg(test)]
mod tests {
    use crate::layers::{ConvSpec, PoolKind, PoolSpec};
    use crate::{seeded_rng, Element, Graph, GraphBuilder, NodeId, Tensor};
    use rand::Rng;

    /// conv → BN → ReLU → conv → BN, + the block's input, → ReLU; then a ReLU after
    /// a convolution (nothing to fold into), a BN whose output a ReLU and a sum both
    /// read (not folded), two ReLUs after a BN (both folded: ReLU is idempotent), and
    /// conv → ReLU → max pool (the ReLU folded into the pool).
    fn network<T: Element>(fold: bool) -> Graph<T> {
        let mut g = GraphBuilder::<T>::new(&[2, 5, 5], 7);
        let conv = |g: &mut GraphBuilder<T>, name, x| g.conv(name, x, ConvSpec::new(2, &[3, 3]).padding(&[1, 1]));
        let x = g.input();
        let c0 = conv(&mut g, "c0", x);
        let stem = g.relu("stem_relu", c0);
        let c1 = conv(&mut g, "c1", stem);
        let b1 = g.batch_norm("b1", c1);
        let r1 = g.relu("r1", b1);
        let c2 = conv(&mut g, "c2", r1);
        let b2 = g.batch_norm("b2", c2);
        let sum = g.add("add", b2, stem);
        let r2 = g.relu("r2", sum);
        let b3 = g.batch_norm("b3", r2);
        let r3 = g.relu("r3", b3);
        let both = g.add("both", r3, b3);
        let b4 = g.batch_norm("b4", both);
        let r4 = g.relu("r4", b4);
        let again = g.relu("r4_again", r4);
        let c5 = conv(&mut g, "c5", again);
        let r5 = g.relu("r5", c5);
        let out: NodeId = g.pool("pool", r5, PoolSpec::new(PoolKind::Max, &[2, 2]));
        if fold {
            g.build(out).unwrap()
        } else {
            g.build_unfused(out).unwrap()
        }
    }

    #[test]
    fn relus_fold_only_into_nodes_they_alone_read() {
        let graph = network::<f32>(true);
        let kinds: Vec<(&str, &str)> = graph.nodes.iter().map(|n| (n.name.as_str(), n.op.kind())).collect();
        assert_eq!(
            kinds,
            [
                ("input", "input"),
                ("c0", "conv"),
                ("stem_relu", "relu"),
                ("c1", "conv"),
                ("b1", "batch_norm+relu"),
                ("c2", "conv"),
                ("b2", "batch_norm"),
                ("add", "add+relu"),
                ("b3", "batch_norm"),
                ("r3", "relu"),
                ("both", "add"),
                ("b4", "batch_norm+relu"),
                ("c5", "conv"),
                ("pool", "relu+max_pool"),
            ]
        );
        assert_eq!(graph.output, kinds.len() - 1);
        let inputs: Vec<&[usize]> = graph.nodes.iter().map(|n| n.inputs.as_slice()).collect();
        let expected = [&[][..], &[0], &[1], &[2], &[3], &[4], &[5], &[6, 2], &[7], &[8], &[9, 8], &[10], &[11], &[12]];
        assert_eq!(inputs, expected);
    }

    fn random<T: Element>(shape: &[usize], seed: u64) -> Tensor<T> {
        let mut rng = seeded_rng(seed);
        let len = shape.iter().product();
        Tensor::from_vec(shape, (0..len).map(|_| T::from_f64(rng.gen_range(-1.0..1.0))).collect()).unwrap()
    }

    /// Output, input gradient and every parameter's gradient, as bits.
    fn step<T: Element>(graph: &mut Graph<T>) -> Vec<u64> {
        let x = random::<T>(&[3, 2, 5, 5], 1);
        let y = graph.forward(&x).unwrap().clone();
        let dy = random::<T>(y.shape(), 2);
        let dx = graph.backward_to_input(&dy).unwrap().clone();
        let grads = graph.params().into_iter().flat_map(|p| p.grad.data().to_vec());
        let all: Vec<T> = y.data().iter().chain(dx.data()).copied().chain(grads).collect();
        all.iter().map(|v| v.as_f64().to_bits()).collect()
    }

    fn same_bits_folded_or_not<T: Element>() {
        let (mut folded, mut apart) = (network::<T>(true), network::<T>(false));
        let (a, b) = (step(&mut folded), step(&mut apart));
        assert_eq!(a.len(), b.len());
        // Some outputs and gradients are zero and some not: the masks did something.
        assert!(a.contains(&0) && a.iter().any(|&v| v != 0));
        assert_eq!(a, b);
        // Evaluation mode: the running statistics, the same rectification.
        folded.set_training(false);
        apart.set_training(false);
        assert_eq!(step(&mut folded), step(&mut apart));
    }

    #[test]
    fn folded_relus_give_the_bits_of_separate_nodes() {
        same_bits_folded_or_not::<f32>();
        same_bits_folded_or_not::<f64>();
    }
}
