//! Every layer, loss and a whole network against finite differences in f64.

use nn_core::gradcheck::{check_layer, check_loss, check_network, GradCheckOptions};
use nn_core::prelude::*;
use rand::Rng;

const TOLERANCE: f64 = 1e-6;

fn random_tensor(shape: &[usize], seed: u64) -> Tensor<f64> {
    let mut rng = seeded_rng(seed);
    let len = shape.iter().product();
    Tensor::from_vec(shape, (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect()).unwrap()
}

fn assert_layer(layer: &mut dyn Layer<f64>, batch: usize, seed: u64) {
    let mut shape = vec![batch];
    shape.extend_from_slice(layer.input_shape());
    let x = random_tensor(&shape, seed);
    let report = check_layer(layer, &x, GradCheckOptions::default()).unwrap();
    assert!(report.passed(TOLERANCE), "{}: {report:?}", layer.kind());
    let expected = x.len() + layer.params().iter().map(|p| p.value.len()).sum::<usize>();
    assert_eq!(report.checked, expected);
}

#[test]
fn dense_with_and_without_bias() {
    for bias in [true, false] {
        let mut layer = Dense::<f64>::new(5, 3, bias, Init::HeUniform, &mut seeded_rng(1)).unwrap();
        if let Some(b) = layer.params_mut().get_mut(1) {
            b.value.data_mut().copy_from_slice(&[0.1, -0.2, 0.3]);
        }
        assert_layer(&mut layer, 4, 2);
    }
}

#[test]
fn conv_in_one_to_four_dimensions() {
    let cases: Vec<(Vec<usize>, ConvSpec)> = vec![
        (vec![2, 9], ConvSpec::new(3, &[3]).stride(&[2]).padding(&[1]).pad_value(0.5)),
        (vec![2, 6, 5], ConvSpec::new(2, &[3, 2]).stride(&[1, 2]).padding(&[1, 0]).rounding(OutputRounding::Floor)),
        (
            vec![1, 4, 5, 3],
            ConvSpec::new(2, &[2, 3, 1])
                .padding_asymmetric(&[
                    Padding { before: 1, after: 0 },
                    Padding::symmetric(1),
                    Padding { before: 0, after: 2 },
                ])
                .pad_value(-1.5)
                .mode(KernelMode::CrossCorrelation),
        ),
        (
            vec![2, 3, 3, 2, 3],
            ConvSpec::new(2, &[2, 2, 1, 2])
                .stride(&[1, 2, 1, 1])
                .padding(&[1, 1, 0, 0])
                .rounding(OutputRounding::Floor)
                .bias(false),
        ),
        (vec![2, 7, 8], ConvSpec::new(3, &[3, 2]).dilation(&[2, 3]).padding(&[2, 1]).pad_value(0.5)),
        (
            vec![1, 9, 4, 6],
            ConvSpec::new(2, &[2, 2, 3])
                .dilation(&[3, 1, 2])
                .stride(&[2, 1, 1])
                .rounding(OutputRounding::Floor)
                .mode(KernelMode::CrossCorrelation),
        ),
        // Padding modes: reflect everywhere; per dimension and side, with a constant side.
        (vec![2, 5, 6], ConvSpec::new(2, &[3, 3]).padding(&[2, 1]).padding_mode(PaddingMode::Reflect)),
        (
            vec![1, 4, 3, 5],
            ConvSpec::new(2, &[2, 3, 2])
                .padding_asymmetric(&[Padding { before: 1, after: 2 }, Padding::symmetric(3), Padding::symmetric(1)])
                .padding_modes(&[
                    SideModes { before: PaddingMode::Replicate, after: PaddingMode::Circular },
                    SideModes::both(PaddingMode::Circular),
                    SideModes { before: PaddingMode::Constant, after: PaddingMode::Reflect },
                ])
                .pad_value(0.75)
                .stride(&[2, 1, 1])
                .rounding(OutputRounding::Floor),
        ),
        // Two groups; depthwise with two filters per channel, dilated.
        (vec![4, 5, 6], ConvSpec::new(6, &[3, 3]).groups(2).padding(&[1, 1]).pad_value(0.25)),
        (vec![3, 7, 5], ConvSpec::new(6, &[2, 3]).groups(3).dilation(&[2, 1]).stride(&[1, 2])),
    ];
    for (i, (shape, spec)) in cases.into_iter().enumerate() {
        let mut layer = Conv::<f64>::new(&shape, &spec, &mut seeded_rng(i as u64)).unwrap();
        layer.params_mut().iter_mut().for_each(|p| {
            if p.name == "bias" {
                p.value.data_mut().iter_mut().enumerate().for_each(|(j, b)| *b = j as f64 * 0.1);
            }
        });
        assert_layer(&mut layer, 2, 10 + i as u64);
    }
}

/// Depthwise layers on one thread, where the backward pass takes all three gradients in
/// one walk over each channel's planes (it needs at least two input channels per
/// thread), with a constant padding value and with reflection.
#[test]
fn depthwise_conv_in_one_walk() {
    let cases: Vec<(Vec<usize>, ConvSpec)> = vec![
        (vec![2, 5, 9], ConvSpec::new(4, &[3, 3]).groups(2).padding(&[1, 1]).pad_value(0.5)),
        (vec![3, 4, 10], ConvSpec::new(3, &[3, 5]).groups(3).padding(&[1, 2]).padding_mode(PaddingMode::Reflect)),
    ];
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    for (i, (shape, spec)) in cases.into_iter().enumerate() {
        let mut layer = Conv::<f64>::new(&shape, &spec, &mut seeded_rng(i as u64)).unwrap();
        one_thread.install(|| assert_layer(&mut layer, 2, 30 + i as u64));
    }
}

/// Winograd minimal filtering, opted into per layer: 3×3 and 5×5, padding beyond the
/// filter's reach, a non-zero padding value, both kernel modes.
#[test]
fn conv_by_winograd() {
    let cases: Vec<(Vec<usize>, ConvSpec)> = vec![
        (vec![3, 7, 9], ConvSpec::new(4, &[3, 3]).padding(&[1, 3]).pad_value(0.5)),
        (vec![2, 6, 5], ConvSpec::new(3, &[5, 5]).padding(&[2, 2]).mode(KernelMode::CrossCorrelation)),
    ];
    for (i, (shape, spec)) in cases.into_iter().enumerate() {
        let mut layer =
            Conv::<f64>::new(&shape, &spec.algorithm(ConvAlgorithm::Winograd), &mut seeded_rng(i as u64)).unwrap();
        assert_layer(&mut layer, 2, 40 + i as u64);
    }
}

#[test]
fn transposed_conv_in_one_to_three_dimensions() {
    let cases: Vec<(Vec<usize>, ConvSpec)> = vec![
        (vec![2, 4], ConvSpec::new(3, &[3]).stride(&[2]).padding(&[1]).output_padding(&[1])),
        (vec![4, 3, 4], ConvSpec::new(2, &[2, 3]).stride(&[2, 1]).groups(2).dilation(&[1, 2])),
        (
            vec![3, 2, 3, 2],
            ConvSpec::new(3, &[2, 2, 2])
                .stride(&[2, 2, 3])
                .output_padding(&[0, 1, 2])
                .mode(KernelMode::CrossCorrelation),
        ),
    ];
    for (i, (shape, spec)) in cases.into_iter().enumerate() {
        let mut layer = ConvTranspose::<f64>::new(&shape, &spec, &mut seeded_rng(i as u64)).unwrap();
        layer.params_mut()[1].value.data_mut().iter_mut().enumerate().for_each(|(j, b)| *b = j as f64 * 0.1 - 0.1);
        assert_layer(&mut layer, 2, 20 + i as u64);
    }
}

#[test]
fn activations() {
    for act in [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu { slope: 0.05 },
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Elu { alpha: 1.0 },
        Activation::Softplus,
        Activation::Gelu,
    ] {
        assert_layer(&mut ActivationLayer::new(&[3, 7], act), 3, 5);
    }
}

#[test]
fn pooling_and_flatten() {
    let specs = [
        PoolSpec::new(PoolKind::Max, &[2, 2]),
        PoolSpec::new(PoolKind::Average, &[2, 2]),
        PoolSpec::new(PoolKind::Max, &[3, 2]).stride(&[2, 1]).padding(&[1, 1]),
        PoolSpec::new(PoolKind::Average, &[3, 2]).stride(&[2, 1]).padding(&[1, 1]),
        // Copies in the padding: reflect everywhere; replicate rows, one constant side.
        PoolSpec::new(PoolKind::Average, &[3, 3]).padding(&[2, 2]).stride(&[1, 2]).padding_mode(PaddingMode::Reflect),
        PoolSpec::new(PoolKind::Max, &[3, 2]).stride(&[2, 1]).padding(&[1, 1]).padding_modes(&[
            SideModes::both(PaddingMode::Replicate),
            SideModes { before: PaddingMode::Constant, after: PaddingMode::Circular },
        ]),
    ];
    for spec in specs {
        assert_layer(&mut Pool::new(&[2, 5, 4], spec).unwrap(), 2, 6);
    }
    assert_layer(&mut Pool::new(&[1, 4, 4, 4], PoolSpec::new(PoolKind::Max, &[2, 2, 2])).unwrap(), 2, 7);
    assert_layer(&mut Flatten::new(&[2, 3, 2]).unwrap(), 2, 8);
}

#[test]
fn losses() {
    let x = random_tensor(&[4, 5], 9);
    for reduction in [Reduction::Sum, Reduction::Mean] {
        let r = check_loss(&SoftmaxCrossEntropy, &x, &[0, 4, 2, 2], reduction, GradCheckOptions::default()).unwrap();
        assert!(r.passed(TOLERANCE), "{r:?}");
        let t = random_tensor(&[4, 5], 10);
        let r = check_loss(&MeanSquaredError, &x, &t, reduction, GradCheckOptions::default()).unwrap();
        assert!(r.passed(TOLERANCE), "{r:?}");
    }
}

#[test]
fn whole_network_end_to_end() {
    let mut net = Sequential::<f64>::builder(&[2, 6, 6], 3)
        .conv(ConvSpec::new(3, &[3, 3]).padding(&[1, 1]).pad_value(0.25))
        .tanh()
        .avg_pool(&[2, 2])
        .conv(ConvSpec::new(2, &[2, 2]).mode(KernelMode::CrossCorrelation))
        .flatten()
        .dense(4)
        .sigmoid()
        .dense(3)
        .build()
        .unwrap();
    let x = random_tensor(&[2, 2, 6, 6], 11);
    let report = check_network(&mut net, &x, GradCheckOptions::default()).unwrap();
    assert!(report.passed(TOLERANCE), "{report:?}");
}

#[test]
fn the_check_catches_a_wrong_gradient() {
    // A layer whose backward is off by a factor must fail the check: the test can fail.
    struct Doubled(ActivationLayer);
    impl Layer<f64> for Doubled {
        fn kind(&self) -> &'static str {
            "doubled"
        }
        fn input_shape(&self) -> &[usize] {
            Layer::<f64>::input_shape(&self.0)
        }
        fn output_shape(&self) -> &[usize] {
            Layer::<f64>::output_shape(&self.0)
        }
        fn forward(&mut self, x: &Tensor<f64>, y: &mut Tensor<f64>) -> Result<(), NnError> {
            self.0.forward(x, y)
        }
        fn backward(
            &mut self,
            x: &Tensor<f64>,
            y: &Tensor<f64>,
            dy: &Tensor<f64>,
            dx: Option<&mut Tensor<f64>>,
        ) -> Result<(), NnError> {
            let dx = dx.unwrap();
            self.0.backward(x, y, dy, Some(&mut *dx))?;
            dx.data_mut().iter_mut().for_each(|v| *v *= 2.0);
            Ok(())
        }
    }
    let mut layer = Doubled(ActivationLayer::new(&[4], Activation::Tanh));
    let x = random_tensor(&[2, 4], 12);
    let report = check_layer(&mut layer, &x, GradCheckOptions::default()).unwrap();
    assert!(!report.passed(TOLERANCE));
    assert!(report.worst.starts_with("input["));
}
