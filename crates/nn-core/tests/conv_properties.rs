//! The convolution layer over random geometry: forward against the direct SPEC §3 sum,
//! backward against finite differences.

use nn_core::gradcheck::{check_layer, GradCheckOptions};
use nn_core::prelude::*;
use nn_kernels::conv::reference::conv_forward_reference;
use nn_kernels::conv::{ConvGeometry, ConvProblem};
use proptest::prelude::*;
use rand::Rng;

#[derive(Debug, Clone)]
struct Case {
    shape: Vec<usize>,
    spec: ConvSpec,
    batch: usize,
}

fn case(max_cells: usize) -> impl Strategy<Value = Case> {
    let dims = (1usize..=4)
        .prop_flat_map(|rank| prop::collection::vec((1usize..6, 1usize..4, 1usize..3, 0usize..3, 0usize..2), rank));
    (
        dims,
        1usize..3,
        1usize..3,
        1usize..3,
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![0.0, 1.0, -0.7]),
        any::<bool>(),
    )
        .prop_filter_map(
            "valid, small geometry",
            move |(dims, c_in, c_out, batch, floor, flip, pad_value, bias)| {
                let mut shape = vec![c_in];
                shape.extend(dims.iter().map(|d| d.0));
                let filter: Vec<usize> = dims.iter().map(|d| d.1).collect();
                let stride: Vec<usize> = dims.iter().map(|d| d.2).collect();
                let padding: Vec<Padding> = dims.iter().map(|d| Padding { before: d.3, after: d.3 + d.4 }).collect();
                let spec = ConvSpec::new(c_out, &filter)
                    .stride(&stride)
                    .padding_asymmetric(&padding)
                    .pad_value(pad_value)
                    .rounding(if floor { OutputRounding::Floor } else { OutputRounding::Strict })
                    .mode(if flip { KernelMode::Convolution } else { KernelMode::CrossCorrelation })
                    .bias(bias);
                let cells: usize = shape.iter().product::<usize>() * filter.iter().product::<usize>() * c_out * batch;
                (cells <= max_cells).then_some(())?;
                Conv::<f64>::new(&shape, &spec, &mut seeded_rng(0)).ok()?;
                Some(Case { shape, spec, batch })
            },
        )
}

fn input(case: &Case, seed: u64) -> Tensor<f64> {
    let mut shape = vec![case.batch];
    shape.extend_from_slice(&case.shape);
    let mut rng = seeded_rng(seed);
    Tensor::from_vec(&shape, (0..shape.iter().product()).map(|_| rng.gen_range(-1.0..1.0)).collect()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    #[test]
    fn forward_matches_the_source_formula(case in case(20_000), seed in 0u64..100) {
        let mut layer = Conv::<f64>::new(&case.shape, &case.spec, &mut seeded_rng(seed)).unwrap();
        if let Some(b) = layer.params_mut().get_mut(1) {
            b.value.data_mut().iter_mut().enumerate().for_each(|(i, v)| *v = 0.3 * i as f64 - 0.2);
        }
        let x = input(&case, seed + 1);
        let mut y = Tensor::zeros(&[0]).unwrap();
        layer.forward(&x, &mut y).unwrap();

        let geometry = ConvGeometry::new(
            &case.shape[1..], &case.spec.filter, case.spec.stride.as_ref().unwrap(), case.spec.padding.as_ref().unwrap(),
            case.spec.rounding, case.spec.mode,
        ).unwrap();
        let problem = ConvProblem::new(geometry, case.shape[0], case.spec.out_channels).unwrap();
        let bias = layer.bias().map(|b| b.value.data().to_vec());
        let expected = conv_forward_reference(&problem, case.batch, x.data(), layer.weight().value.data(), bias.as_deref(), case.spec.pad_value);
        prop_assert_eq!(y.shape()[2..].to_vec(), problem.geometry().output().to_vec());
        for (a, b) in y.data().iter().zip(&expected) {
            prop_assert!((a - b).abs() < 1e-12, "{} vs {}", a, b);
        }
    }

    #[test]
    fn backward_matches_finite_differences(case in case(1_500), seed in 0u64..100) {
        let mut layer = Conv::<f64>::new(&case.shape, &case.spec, &mut seeded_rng(seed)).unwrap();
        let report = check_layer(&mut layer, &input(&case, seed + 1), GradCheckOptions::default()).unwrap();
        prop_assert!(report.passed(1e-6), "{:?}", report);
    }
}

#[test]
fn padding_value_reaches_the_weight_gradient_and_never_the_input_gradient() {
    // Same weights and input; only the padding value differs. The input gradient must
    // not change; the weight gradient changes by exactly v × (∂y summed over the
    // windows where each tap reads padding).
    let grads = |pad_value: f64| {
        let spec = ConvSpec::new(1, &[3]).padding(&[1]).pad_value(pad_value).bias(false);
        let mut layer = Conv::<f64>::new(&[1, 4], &spec, &mut seeded_rng(3)).unwrap();
        let x = Tensor::from_vec(&[1, 1, 4], vec![0.5, -1.0, 2.0, 0.25]).unwrap();
        let mut y = Tensor::zeros(&[0]).unwrap();
        layer.forward(&x, &mut y).unwrap();
        let dy = Tensor::from_vec(y.shape(), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let mut dx = Tensor::zeros(&[0]).unwrap();
        layer.backward(&x, &y, &dy, Some(&mut dx)).unwrap();
        (layer.weight().grad.data().to_vec(), dx.into_vec())
    };
    let (w0, dx0) = grads(0.0);
    let (w3, dx3) = grads(3.0);
    assert_eq!(dx0, dx3);
    // With the flipped filter, tap α reads γ = β + 2 − 1 − α = β + 1 − α: tap 2 reads
    // padding at β = 0 (γ = −1), tap 0 reads padding at β = 3 (γ = 4); tap 1 never does.
    let diff: Vec<f64> = w3.iter().zip(&w0).map(|(a, b)| a - b).collect();
    assert_eq!(diff, vec![3.0 * 4.0, 0.0, 3.0 * 1.0]);
}
