//! Group and layer normalisation, up-sampling and the segmentation losses: finite
//! differences in f64, and forward passes against their definitions.

use nn_core::gradcheck::{check_layer, check_loss, GradCheckOptions};
use nn_core::prelude::*;
use rand::Rng;

const TOLERANCE: f64 = 1e-6;

fn random_tensor(shape: &[usize], seed: u64, range: std::ops::Range<f64>) -> Tensor<f64> {
    let mut rng = seeded_rng(seed);
    let len = shape.iter().product();
    Tensor::from_vec(shape, (0..len).map(|_| rng.gen_range(range.clone())).collect()).unwrap()
}

fn batch_of(per_sample: &[usize], batch: usize) -> Vec<usize> {
    let mut shape = vec![batch];
    shape.extend_from_slice(per_sample);
    shape
}

/// γ and β away from 1 and 0 (one γ exactly zero, which the input gradient must still
/// handle), so that every term of the gradients is exercised.
fn randomise_affine(layer: &mut dyn Layer<f64>, seed: u64) {
    let mut rng = seeded_rng(seed);
    for p in layer.params_mut() {
        p.value.data_mut().iter_mut().for_each(|v| *v = rng.gen_range(0.5..1.5));
    }
    layer.params_mut()[0].value.data_mut()[0] = 0.0;
}

#[test]
fn group_norm_gradients_in_one_to_three_spatial_dimensions() {
    for (shape, groups, batch) in
        [(vec![4, 7], 2, 3), (vec![6, 3, 2], 3, 2), (vec![4, 2, 3, 2], 1, 2), (vec![3, 5], 3, 2)]
    {
        let mut gn = GroupNorm::<f64>::new(&shape, groups).unwrap();
        randomise_affine(&mut gn, 1);
        let x = random_tensor(&batch_of(&shape, batch), 2, -1.0..2.0);
        let report = check_layer(&mut gn, &x, GradCheckOptions::default()).unwrap();
        assert!(report.passed(TOLERANCE), "{shape:?} in {groups} groups: {report:?}");
        assert_eq!(report.checked, x.len() + 2 * shape[0]);
    }
}

#[test]
fn layer_norm_gradients_over_one_to_all_trailing_dimensions() {
    for (shape, normalized) in [(vec![6], 1), (vec![3, 4], 1), (vec![2, 3, 4], 2), (vec![2, 3, 2], 3)] {
        let mut ln = LayerNorm::<f64>::new(&shape, normalized).unwrap();
        randomise_affine(&mut ln, 3);
        let x = random_tensor(&batch_of(&shape, 2), 4, -1.0..2.0);
        let report = check_layer(&mut ln, &x, GradCheckOptions::default()).unwrap();
        assert!(report.passed(TOLERANCE), "{shape:?} over {normalized}: {report:?}");
        let affine: usize = shape[shape.len() - normalized..].iter().product();
        assert_eq!(report.checked, x.len() + 2 * affine);
    }
}

#[test]
fn group_norm_forward_follows_the_definition() {
    let (shape, groups, batch) = ([6, 2, 3], 3, 2);
    let mut gn = GroupNorm::<f64>::with_eps(&shape, groups, 1e-3).unwrap();
    randomise_affine(&mut gn, 5);
    let (gamma, beta) = (gn.params()[0].value.data().to_vec(), gn.params()[1].value.data().to_vec());
    let x = random_tensor(&batch_of(&shape, batch), 6, -3.0..5.0);
    let mut y = Tensor::default();
    gn.forward(&x, &mut y).unwrap();
    let (plane, per_group) = (6, 2);
    for n in 0..batch {
        for g in 0..groups {
            let cells = |c: usize| (n * 6 + c) * plane..(n * 6 + c + 1) * plane;
            let values: Vec<f64> =
                (g * per_group..(g + 1) * per_group).flat_map(|c| x.data()[cells(c)].to_vec()).collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
            for c in g * per_group..(g + 1) * per_group {
                for i in cells(c) {
                    let expected = gamma[c] * (x.data()[i] - mean) / (var + 1e-3).sqrt() + beta[c];
                    assert!((y.data()[i] - expected).abs() < 1e-12, "n {n} c {c} cell {i}");
                }
            }
        }
    }
    // No batch statistics: evaluation gives the same output.
    gn.set_training(false);
    let mut y_eval = Tensor::default();
    gn.forward(&x, &mut y_eval).unwrap();
    assert_eq!(y, y_eval);
}

#[test]
fn layer_norm_over_a_whole_sample_is_group_norm_in_one_group() {
    let shape = [4, 3, 5];
    let x = random_tensor(&batch_of(&shape, 3), 7, -2.0..2.0);
    let (mut ln, mut gn) = (LayerNorm::<f64>::new(&shape, 3).unwrap(), GroupNorm::<f64>::new(&shape, 1).unwrap());
    let (mut a, mut b) = (Tensor::default(), Tensor::default());
    ln.forward(&x, &mut a).unwrap();
    gn.forward(&x, &mut b).unwrap();
    assert!(a.data().iter().zip(b.data()).all(|(a, b)| (a - b).abs() < 1e-12));
}

#[test]
fn normalisation_arguments_are_checked() {
    assert!(matches!(GroupNorm::<f32>::new(&[6, 4], 4), Err(NnError::InvalidArgument { .. })));
    assert!(matches!(GroupNorm::<f32>::new(&[6, 4], 0), Err(NnError::InvalidArgument { .. })));
    assert!(matches!(LayerNorm::<f32>::new(&[6, 4], 3), Err(NnError::InvalidArgument { .. })));
    assert!(matches!(LayerNorm::<f32>::new(&[6, 0], 1), Err(NnError::InvalidArgument { .. })));
    let mut gn = GroupNorm::<f32>::new(&[4, 3], 2).unwrap();
    let wrong = Tensor::<f32>::zeros(&[2, 4, 4]).unwrap();
    assert!(matches!(gn.forward(&wrong, &mut Tensor::default()), Err(NnError::Shape { .. })));
}

#[test]
fn upsampling_copies_each_cell_into_its_block() {
    let mut up = Upsample::new(&[1, 2, 3], &[2, 1]).unwrap();
    let x = Tensor::from_vec(&[1, 1, 2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let mut y = Tensor::default();
    up.forward(&x, &mut y).unwrap();
    assert_eq!(y.shape(), &[1, 1, 4, 3]);
    assert_eq!(y.data(), &[1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 4.0, 5.0, 6.0]);
    let mut up = Upsample::new(&[2, 2], &[3]).unwrap();
    let x = Tensor::from_vec(&[1, 2, 2], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
    up.forward(&x, &mut y).unwrap();
    assert_eq!(y.data(), &[1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0, 4.0, 4.0]);
}

#[test]
fn upsampling_backward_is_the_adjoint_in_one_to_four_dimensions() {
    for (shape, factors) in [
        (vec![2, 3], vec![2]),
        (vec![2, 2, 3], vec![1, 3]),
        (vec![1, 2, 2, 3], vec![2, 2, 2]),
        (vec![2, 2, 1, 2, 2], vec![2, 3, 1, 2]),
    ] {
        let mut up = Upsample::new(&shape, &factors).unwrap();
        let x = random_tensor(&batch_of(&shape, 2), 8, -1.0..1.0);
        let mut y = Tensor::default();
        up.forward(&x, &mut y).unwrap();
        let r = random_tensor(y.shape(), 9, -1.0..1.0);
        let mut dx = Tensor::default();
        up.backward(&Tensor::default(), &Tensor::default(), &r, Some(&mut dx)).unwrap();
        let dot = |a: &Tensor<f64>, b: &Tensor<f64>| a.data().iter().zip(b.data()).map(|(a, b)| a * b).sum::<f64>();
        assert!((dot(&y, &r) - dot(&x, &dx)).abs() < 1e-12, "{shape:?} × {factors:?}");
        let report = check_layer(&mut up, &x, GradCheckOptions::default()).unwrap();
        assert!(report.passed(TOLERANCE), "{shape:?}: {report:?}");
    }
    assert!(Upsample::new(&[2, 3], &[2, 2]).is_err());
    assert!(Upsample::new(&[2, 3], &[0]).is_err());
}

fn mask(shape: &[usize], seed: u64) -> Tensor<f64> {
    let mut rng = seeded_rng(seed);
    let len = shape.iter().product();
    Tensor::from_vec(shape, (0..len).map(|_| if rng.gen_bool(0.4) { 1.0 } else { 0.0 }).collect()).unwrap()
}

#[test]
fn segmentation_losses_have_their_gradients() {
    let shape = [3, 1, 4, 5];
    let x = random_tensor(&shape, 10, -3.0..3.0);
    let t = mask(&shape, 11);
    for reduction in [Reduction::Sum, Reduction::Mean] {
        let options = GradCheckOptions::default();
        let bce = check_loss(&SigmoidBinaryCrossEntropy, &x, &t, reduction, options).unwrap();
        assert!(bce.passed(TOLERANCE), "{bce:?}");
        let dice = check_loss(&SoftDice::default(), &x, &t, reduction, options).unwrap();
        assert!(dice.passed(TOLERANCE), "{dice:?}");
        let both = WeightedSum { first: (SigmoidBinaryCrossEntropy, 0.5), second: (SoftDice { smooth: 0.5 }, 2.0) };
        let sum = check_loss(&both, &x, &t, reduction, options).unwrap();
        assert!(sum.passed(TOLERANCE), "{sum:?}");
    }
}

#[test]
fn segmentation_losses_follow_their_definitions() {
    let x = Tensor::from_vec(&[2, 3], vec![0.5, -2.0, 800.0, -800.0, 0.0, 3.0]).unwrap();
    let t = Tensor::from_vec(&[2, 3], vec![1.0, 0.0, 1.0, 0.0, 0.25, 1.0]).unwrap();
    let naive = |x: f64, t: f64| {
        let p = 1.0 / (1.0 + (-x).exp());
        -(t * p.ln() + (1.0 - t) * (1.0 - p).ln())
    };
    // Huge logits stay finite and exact (the naive form would take ln 0).
    let expected: f64 = [(0.5, 1.0), (-2.0, 0.0), (0.0, 0.25), (3.0, 1.0)].iter().map(|&(x, t)| naive(x, t)).sum();
    let loss = SigmoidBinaryCrossEntropy.loss(&x, &t, Reduction::Sum).unwrap();
    assert!((loss - expected).abs() < 1e-12, "{loss} vs {expected}");
    assert_eq!(SigmoidBinaryCrossEntropy.loss(&x, &t, Reduction::Mean).unwrap(), loss / 2.0);

    // A confident, correct prediction has a Dice loss near 0; the inverted one near 1.
    let truth = mask(&[2, 1, 8, 8], 12);
    let confident =
        Tensor::from_vec(truth.shape(), truth.data().iter().map(|&t| if t > 0.5 { 40.0 } else { -40.0 }).collect())
            .unwrap();
    let inverted = Tensor::from_vec(truth.shape(), confident.data().iter().map(|&x| -x).collect()).unwrap();
    let dice = SoftDice { smooth: 1e-9 };
    assert!(dice.loss(&confident, &truth, Reduction::Mean).unwrap() < 1e-9);
    assert!(dice.loss(&inverted, &truth, Reduction::Mean).unwrap() > 1.0 - 1e-9);
    // One pattern by hand: p = (σ(0), σ(0)) = (½, ½), t = (1, 0), s = 1: 1 − 2/3.
    let half = Tensor::from_vec(&[1, 2], vec![0.0, 0.0]).unwrap();
    let t = Tensor::from_vec(&[1, 2], vec![1.0, 0.0]).unwrap();
    assert!((SoftDice::default().loss(&half, &t, Reduction::Sum).unwrap() - 1.0 / 3.0).abs() < 1e-15);
}

#[test]
fn segmentation_targets_are_checked() {
    let x = Tensor::from_vec(&[1, 2], vec![0.0f32, 1.0]).unwrap();
    let bad = Tensor::from_vec(&[1, 2], vec![0.0f32, 1.5]).unwrap();
    let err = SigmoidBinaryCrossEntropy.loss(&x, &bad, Reduction::Sum).unwrap_err();
    assert!(err.to_string().contains("flat index 1"), "{err}");
    let wrong_shape = Tensor::from_vec(&[2, 1], vec![0.0f32, 1.0]).unwrap();
    assert!(matches!(SoftDice::default().loss(&x, &wrong_shape, Reduction::Sum), Err(NnError::Shape { .. })));
}
