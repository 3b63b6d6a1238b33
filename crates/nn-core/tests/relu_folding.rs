//! A `Sequential` network leaves each ReLU after a batch norm to the batch norm, and
//! each other ReLU before a max pool to the pool, and skips it: outputs and gradients
//! must keep the bits of running every layer on its own.

use nn_core::layers::{PoolKind, PoolSpec};
use nn_core::prelude::*;

/// A ReLU first (its input gradient is the network's), ReLU → max pool twice (one
/// with overlapping, padded windows), ReLU → ReLU → max pool, ReLU → average pool
/// (not foldable); batch norm → ReLU → max pool (the batch norm takes the ReLU),
/// batch norm → ReLU → ReLU (the second stays); and a dense layer.
fn network<T: Element>() -> Sequential<T> {
    let conv = || ConvSpec::new(3, &[3, 3]).padding(&[1, 1]);
    Sequential::<T>::builder(&[2, 8, 8], 11)
        .relu()
        .max_pool(&[2, 1])
        .conv(conv())
        .relu()
        .max_pool(&[2, 2])
        .conv(conv())
        .relu()
        .pool(PoolSpec::new(PoolKind::Max, &[3, 3]).stride(&[1, 1]).padding(&[1, 1]))
        .conv(conv())
        .relu()
        .relu()
        .max_pool(&[1, 2])
        .relu()
        .avg_pool(&[2, 1])
        .conv(conv())
        .batch_norm()
        .relu()
        .max_pool(&[1, 2])
        .batch_norm()
        .relu()
        .relu()
        .flatten()
        .dense(3)
        .build()
        .unwrap()
}

/// Layers 16 and 19, the ReLUs after the batch norms.
const RELUS_AFTER_BATCH_NORMS: [usize; 2] = [16, 19];

fn input<T: Element>() -> Tensor<T> {
    // Exact zeros among the inputs, so that some windows' maxima are not positive.
    let data = (0..2 * 128).map(|i| T::from_f64(if i % 9 == 0 { 0.0 } else { (i as f64 * 0.73).sin() })).collect();
    Tensor::from_vec(&[2, 2, 8, 8], data).unwrap()
}

/// The output, the input gradient and every parameter's gradient, as bits.
type Bits = (Vec<u64>, Vec<u64>, Vec<Vec<u64>>);

fn bits<T: Element>(v: &[T]) -> Vec<u64> {
    v.iter().map(|t| t.as_f64().to_bits()).collect()
}

fn upstream<T: Element>(y: &Tensor<T>) -> Tensor<T> {
    Tensor::from_vec(y.shape(), (0..y.len()).map(|i| T::from_f64(i as f64 * 0.5 - 2.0)).collect()).unwrap()
}

fn through_the_network<T: Element>(net: &mut Sequential<T>) -> Bits {
    let y = net.forward(&input()).unwrap().clone();
    let dx = net.backward_to_input(&upstream(&y)).unwrap().clone();
    (bits(y.data()), bits(dx.data()), net.params().iter().map(|p| bits(p.grad.data())).collect())
}

/// Every layer's `forward` and `backward` called in turn, as in the source's steps.
fn layer_by_layer<T: Element>(net: &mut Sequential<T>) -> Bits {
    let layers = net.layers_mut();
    let mut xs = vec![input::<T>()];
    for layer in layers.iter_mut() {
        let mut y = Tensor::default();
        layer.forward(xs.last().unwrap(), &mut y).unwrap();
        xs.push(y);
    }
    let y = xs.last().unwrap().clone();
    let mut grad = upstream(&y);
    for (k, layer) in layers.iter_mut().enumerate().rev() {
        let mut dx = Tensor::default();
        layer.backward(&xs[k], &xs[k + 1], &grad, Some(&mut dx)).unwrap();
        grad = dx;
    }
    let grads = layers.iter().flat_map(|l| l.params()).map(|p| bits(p.grad.data())).collect();
    (bits(y.data()), bits(grad.data()), grads)
}

fn same_bits<T: Element>() {
    let (mut folded, mut apart) = (network::<T>(), network::<T>());
    let got = through_the_network(&mut folded);
    assert_eq!(got, layer_by_layer(&mut apart));
    // The ReLUs did something: zeros among the input gradients, and not only zeros.
    assert!(got.1.contains(&0) && got.1.iter().any(|&b| b != 0));
}

#[test]
fn folded_relus_keep_the_bits_of_separate_layers() {
    same_bits::<f32>();
    same_bits::<f64>();
}

/// A layer replaced between passes is asked again: a max pool that took over the
/// ReLU before it, replaced by an average pool, leaves that ReLU to run.
#[test]
fn a_replaced_pool_gives_its_relu_back() {
    let (mut folded, mut apart) = (network::<f64>(), network::<f64>());
    through_the_network(&mut folded);
    for net in [&mut folded, &mut apart] {
        let shape = net.layers()[4].input_shape().to_vec();
        net.layers_mut()[4] =
            Box::new(nn_core::layers::Pool::new(&shape, PoolSpec::new(PoolKind::Average, &[2, 2])).unwrap());
        net.zero_grad();
    }
    assert_eq!(through_the_network(&mut folded), layer_by_layer(&mut apart));
}

/// Who takes over which ReLU, as the network reports it; parameter names do not
/// change when a batch norm takes over a ReLU.
#[test]
fn each_relu_goes_to_the_batch_norm_before_it_or_else_the_max_pool_after_it() {
    let mut net = network::<f32>();
    let names: Vec<String> = net.named_params().into_iter().map(|(name, _)| name).collect();
    let taken_by = net.relus_taken_over().to_vec();
    let mut want = vec![None; net.layers().len()];
    for (relu, by) in [(0, 1), (3, 4), (6, 7), (10, 11), (16, 15), (19, 18)] {
        want[relu] = Some(by);
    }
    assert_eq!(taken_by, want);
    for k in RELUS_AFTER_BATCH_NORMS {
        assert_eq!(net.layers()[k - 1].kind(), "batch_norm+relu");
    }
    assert_eq!(net.layers()[17].kind(), "max_pool", "the batch norm took the ReLU, not the pool");
    through_the_network(&mut net);
    let after: Vec<String> = net.named_params().into_iter().map(|(name, _)| name).collect();
    assert_eq!(after, names);
    assert!(names.contains(&"15.batch_norm.weight".to_string()), "{names:?}");
}

/// A ReLU after a batch norm replaced by another activation: the batch norm stops
/// rectifying.
#[test]
fn a_replaced_relu_is_given_back_by_the_batch_norm() {
    let (mut folded, mut apart) = (network::<f64>(), network::<f64>());
    through_the_network(&mut folded);
    for net in [&mut folded, &mut apart] {
        for k in RELUS_AFTER_BATCH_NORMS {
            let shape = net.layers()[k].input_shape().to_vec();
            net.layers_mut()[k] = Box::new(nn_core::layers::ActivationLayer::new(&shape, Activation::Tanh));
        }
        net.zero_grad();
    }
    assert_eq!(through_the_network(&mut folded), layer_by_layer(&mut apart));
    assert_eq!(folded.layers()[15].kind(), "batch_norm");
}

/// A network ending in batch norm → ReLU keeps the ReLU: its output is the network's.
#[test]
fn a_last_relu_stays_a_layer() {
    let conv = ConvSpec::new(3, &[3, 3]).padding(&[1, 1]);
    let build = || Sequential::<f64>::builder(&[2, 8, 8], 5).conv(conv.clone()).batch_norm().relu().build().unwrap();
    let (mut folded, mut apart) = (build(), build());
    assert_eq!(folded.relus_taken_over(), [None, None, None]);
    let got = through_the_network(&mut folded);
    assert_eq!(got, layer_by_layer(&mut apart));
    assert!(got.0.contains(&0) && got.0.iter().any(|&b| b != 0), "the ReLU ran");
}

#[test]
fn only_max_pools_take_over_a_relu() {
    let mut max = nn_core::layers::Pool::new(&[1, 4, 4], PoolSpec::new(PoolKind::Max, &[2, 2])).unwrap();
    let mut avg = nn_core::layers::Pool::new(&[1, 4, 4], PoolSpec::new(PoolKind::Average, &[2, 2])).unwrap();
    assert!(Layer::<f32>::rectify_input(&mut max, true));
    assert!(!Layer::<f32>::rectify_input(&mut max, false));
    assert!(!Layer::<f32>::rectify_input(&mut avg, true));
}
