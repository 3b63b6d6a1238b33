//! Graphs: residual sums and channel concatenations with fan-out, checked against
//! finite differences in f64, built with shape errors that name the node, named by
//! scope, and bit-identical on any thread count.

use nn_core::gradcheck::{check_graph, GradCheckOptions};
use nn_core::prelude::*;
use nn_core::NodeId;
use rand::Rng;

fn random_tensor(shape: &[usize], seed: u64) -> Tensor<f64> {
    let mut rng = seeded_rng(seed);
    let len = shape.iter().product();
    Tensor::from_vec(shape, (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect()).unwrap()
}

/// A basic residual block: conv → BN → ReLU → conv → BN, plus the input (or its 1×1
/// projection at a stride), then ReLU. Written once, used for every stage.
fn basic_block<T: Element>(g: &mut GraphBuilder<T>, x: NodeId, channels: usize, stride: usize) -> NodeId {
    let conv = |c: usize, f: usize, s: usize, p: usize| {
        ConvSpec::new(c, &[f, f])
            .stride(&[s, s])
            .padding(&[p, p])
            .bias(false)
            .mode(KernelMode::CrossCorrelation)
            .rounding(OutputRounding::Floor)
    };
    let h = g.conv("conv1", x, conv(channels, 3, stride, 1));
    let h = g.batch_norm("bn1", h);
    let h = g.relu("relu1", h);
    let h = g.conv("conv2", h, conv(channels, 3, 1, 1));
    let h = g.batch_norm("bn2", h);
    let shortcut = if stride != 1 || g.shape(x)[0] != channels {
        let s = g.conv("shortcut", x, conv(channels, 1, stride, 0));
        g.batch_norm("shortcut_bn", s)
    } else {
        x
    };
    let sum = g.add("add", h, shortcut);
    g.relu("relu2", sum)
}

fn small_resnet<T: Element>(seed: u64) -> Graph<T> {
    let mut g = GraphBuilder::new(&[1, 6, 6], seed);
    let x = g.input();
    let stem = g.conv("stem", x, ConvSpec::new(2, &[3, 3]).padding(&[1, 1]).bias(false));
    let stem = g.relu("stem_relu", stem);
    let s1 = g.scope("stage1.block0", |g| basic_block(g, stem, 2, 1));
    let s2 = g.scope("stage2.block0", |g| basic_block(g, s1, 3, 2));
    let pooled = g.global_avg_pool("pool", s2);
    let out = g.dense("fc", pooled, 2);
    g.build(out).unwrap()
}

#[test]
fn a_residual_network_checks_end_to_end() {
    let mut net = small_resnet::<f64>(3);
    let x = random_tensor(&[3, 1, 6, 6], 4);
    let report = check_graph(&mut net, &x, GradCheckOptions::default()).unwrap();
    assert!(report.passed(1e-6), "{report:?}");
    let names: Vec<String> = net.named_params().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"stage2.block0.conv1.weight".to_string()), "{names:?}");
    assert!(names.contains(&"stage2.block0.shortcut_bn.bias".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("stage1.block0.shortcut")), "identity shortcut in stage 1");
}

#[test]
fn fan_out_and_concatenation_check_end_to_end() {
    // x feeds three consumers; a U-Net-like skip concatenates an early tensor into a
    // late one; the sum adds a tensor to itself through two paths.
    let mut g = GraphBuilder::<f64>::new(&[2, 5], 1);
    let x = g.input();
    let a = g.conv("a", x, ConvSpec::new(3, &[3]).padding(&[1]));
    let b = g.activation("b", a, Activation::Tanh);
    let c = g.conv("c", x, ConvSpec::new(3, &[1]));
    let sum = g.add("sum", b, c);
    let skip = g.concat("skip", sum, x);
    let d = g.conv("d", skip, ConvSpec::new(2, &[3]).padding(&[1]));
    let twice = g.add("twice", d, d);
    let flat = g.flatten("flat", twice);
    let out = g.dense("out", flat, 3);
    let mut net = g.build(out).unwrap();
    assert_eq!(net.output_shape(), &[3]);
    let x = random_tensor(&[2, 2, 5], 5);
    let report = check_graph(&mut net, &x, GradCheckOptions::default()).unwrap();
    assert!(report.passed(1e-6), "{report:?}");
}

#[test]
fn shape_errors_name_the_node_and_both_shapes() {
    let mut g = GraphBuilder::<f32>::new(&[2, 8, 8], 1);
    let x = g.input();
    let h = g.scope("stage1", |g| g.conv("conv", x, ConvSpec::new(4, &[3, 3]).padding(&[1, 1])));
    let bad = g.scope("stage1", |g| g.add("add", h, x));
    let err = g.build(bad).unwrap_err().to_string();
    assert!(err.contains("stage1.add") && err.contains("[4, 8, 8]") && err.contains("[2, 8, 8]"), "{err}");
    let mut g = GraphBuilder::<f32>::new(&[2, 8, 8], 1);
    let x = g.input();
    let small = g.pool("pool", x, PoolSpec::new(PoolKind::Max, &[2, 2]));
    let bad = g.concat("skip", small, x);
    assert!(g.build(bad).unwrap_err().to_string().contains("skip"));
}

#[test]
fn graphs_are_bit_identical_on_any_thread_count() {
    let x = random_tensor(&[4, 1, 6, 6], 6).cast::<f32>();
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut net = small_resnet::<f32>(2);
            let y = net.forward(&x).unwrap().clone();
            net.zero_grad();
            let dx = net.backward_to_input(&y).unwrap().clone();
            let grads: Vec<Vec<f32>> = net.params().iter().map(|p| p.grad.data().to_vec()).collect();
            (y, dx, grads)
        })
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn profiling_times_every_node_of_both_passes() {
    let mut net = small_resnet::<f32>(3);
    let x = random_tensor(&[3, 1, 6, 6], 4).cast::<f32>();
    assert!(net.node_timings().is_empty(), "off by default");
    net.set_profiling(true);
    let y = net.forward(&x).unwrap().clone();
    net.backward(&y).unwrap();
    let timings = net.node_timings();
    let names: Vec<&str> = timings.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(timings.len(), names.iter().collect::<std::collections::BTreeSet<_>>().len(), "one row per node");
    let conv = timings.iter().find(|t| t.name == "stage2.block0.conv1").expect("named node");
    assert_eq!(conv.kind, "conv");
    assert!(conv.forward > std::time::Duration::ZERO && conv.backward > std::time::Duration::ZERO, "{conv:?}");
    // Each block's last ReLU is folded into its sum, the first into batch norm.
    assert!(timings.iter().any(|t| t.kind == "add+relu"), "{names:?}");
    assert!(timings.iter().any(|t| t.name == "stage1.block0.bn1" && t.kind == "batch_norm+relu"), "{names:?}");
    net.set_profiling(false);
    assert!(net.node_timings().is_empty());
}
