use super::*;
use crate::KernelError;
use proptest::prelude::*;

fn values(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.25).collect()
}

// Each SIMD body is run both directly (portable code) and through `dispatch`
// (AVX2+FMA where the CPU has it), against a scalar loop.
#[test]
fn relu_paths_match_scalar() {
    for len in [0, 1, 7, 8, 9, 31, 64, 100] {
        let x = values(len);
        let expected: Vec<f32> = x.iter().map(|v| v.max(0.0)).collect();
        let mut portable = vec![0.0; len];
        relu_forward(&x, &mut portable);
        let mut dispatched = vec![0.0; len];
        activation_forward(Activation::Relu, &x, &mut dispatched).unwrap();
        assert_eq!(portable, expected);
        assert_eq!(dispatched, expected);

        let dy: Vec<f32> = (0..len).map(|i| i as f32 + 0.5).collect();
        let expected_dx: Vec<f32> = x.iter().zip(&dy).map(|(&y, &d)| if y > 0.0 { d } else { 0.0 }).collect();
        let mut portable_dx = vec![f32::NAN; len];
        relu_backward(&expected, &dy, &mut portable_dx);
        let mut dispatched_dx = vec![f32::NAN; len];
        activation_backward(Activation::Relu, &x, &expected, &dy, &mut dispatched_dx).unwrap();
        assert_eq!(portable_dx, expected_dx);
        assert_eq!(dispatched_dx, expected_dx);
    }
}

#[test]
fn vector_ops_paths_match_scalar() {
    for len in [0, 3, 8, 13, 50] {
        let x: Vec<f64> = (0..len).map(|i| i as f64 * 0.5 - 3.0).collect();
        let y0: Vec<f64> = (0..len).map(|i| 1.0 + i as f64).collect();
        let expected: Vec<f64> = x.iter().zip(&y0).map(|(a, b)| b + 2.0 * a).collect();
        let (mut portable, mut dispatched) = (y0.clone(), y0.clone());
        axpy_body(2.0, &x, &mut portable);
        axpy(2.0, &x, &mut dispatched).unwrap();
        assert_eq!(portable, expected);
        assert_eq!(dispatched, expected);

        let exact: f64 = x.iter().sum();
        assert!((sum_body(&x) - exact).abs() < 1e-12);
        assert_eq!(sum(&x), sum_body(&x));

        let (mut p, mut d) = (x.clone(), x.clone());
        scale_body(&mut p, 3.0);
        scale(&mut d, 3.0);
        let scaled: Vec<f64> = x.iter().map(|v| v * 3.0).collect();
        assert_eq!((p, d), (scaled.clone(), scaled));

        let (mut p, mut d) = (vec![0.0; len], vec![0.0; len]);
        add_body(&x, &y0, &mut p);
        add(&x, &y0, &mut d).unwrap();
        let sums: Vec<f64> = x.iter().zip(&y0).map(|(a, b)| a + b).collect();
        assert_eq!((p, d), (sums.clone(), sums));

        let (mut p, mut d) = (x.clone(), x.clone());
        add_scalar_body(&mut p, 1.5);
        add_scalar(&mut d, 1.5);
        let shifted: Vec<f64> = x.iter().map(|v| v + 1.5).collect();
        assert_eq!((p, d), (shifted.clone(), shifted));
    }
}

const ALL: [Activation; 8] = [
    Activation::Identity,
    Activation::Relu,
    Activation::LeakyRelu { slope: 0.1 },
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::Elu { alpha: 1.3 },
    Activation::Softplus,
    Activation::Gelu,
];

#[test]
fn activations_are_finite_at_extremes() {
    for act in ALL {
        for x in [-1e30f64, -800.0, -1.0, 0.0, 1.0, 800.0, 1e30] {
            let y = scalar_forward(act, x);
            assert!(!y.is_nan(), "{act:?}({x}) = {y}");
            assert!(!scalar_derivative(act, x, y).is_nan(), "{act:?}'({x})");
        }
    }
}

proptest! {
    // The derivative of each activation against a central difference in f64, away
    // from the kinks of the piecewise ones.
    #[test]
    fn derivatives_match_finite_differences(x in -6.0f64..6.0, which in 0usize..8) {
        prop_assume!(x.abs() > 1e-3);
        let act = ALL[which];
        let h = 1e-6;
        let numeric = (scalar_forward(act, x + h) - scalar_forward(act, x - h)) / (2.0 * h);
        let analytic = scalar_derivative(act, x, scalar_forward(act, x));
        prop_assert!((numeric - analytic).abs() < 1e-6 * (1.0 + analytic.abs()), "{act:?} at {x}: {numeric} vs {analytic}");
    }
}

// Long slices take the parallel path; every element must match the one-element result.
#[test]
fn parallel_paths_match_element_by_element() {
    let len = 2 * PARALLEL_CHUNK + 123;
    let x: Vec<f64> = (0..len).map(|i| ((i * 7919) % 1000) as f64 / 500.0 - 1.0).collect();
    let g: Vec<f64> = (0..len).map(|i| ((i * 104729) % 997) as f64 / 997.0 - 0.5).collect();

    let mut y = vec![0.0; len];
    activation_forward(Activation::Tanh, &x, &mut y).unwrap();
    let mut dx = vec![0.0; len];
    activation_backward(Activation::Tanh, &x, &y, &g, &mut dx).unwrap();
    for i in [0, PARALLEL_CHUNK - 1, PARALLEL_CHUNK, len - 1] {
        assert_eq!(y[i], x[i].tanh());
        assert_eq!(dx[i], g[i] * (1.0 - y[i] * y[i]));
    }

    let step = SgdStep { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 0.01 };
    let (mut w, mut v) = (x.clone(), vec![0.5; len]);
    sgd_update(step, &mut w, &g, &mut v).unwrap();
    let plain = SgdStep { momentum: 0.0, nesterov: false, ..step };
    let mut w_plain = x.clone();
    sgd_update(plain, &mut w_plain, &g, &mut []).unwrap();
    let adam = AdamStep { step_size: 0.01, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, l2: 0.0, decay: 0.001 };
    let (mut w_adam, mut m, mut s) = (x.clone(), vec![0.0; len], vec![0.0; len]);
    adam_update(adam, &mut w_adam, &g, &mut m, &mut s).unwrap();
    for i in [0, PARALLEL_CHUNK, len - 1] {
        let (mut wi, mut vi) = ([x[i]], [0.5]);
        sgd_update(step, &mut wi, &g[i..=i], &mut vi).unwrap();
        assert_eq!((w[i], v[i]), (wi[0], vi[0]));
        let mut wi = [x[i]];
        sgd_update(plain, &mut wi, &g[i..=i], &mut []).unwrap();
        assert_eq!(w_plain[i], wi[0]);
        let (mut wi, mut mi, mut si) = ([x[i]], [0.0], [0.0]);
        adam_update(adam, &mut wi, &g[i..=i], &mut mi, &mut si).unwrap();
        assert_eq!((w_adam[i], m[i], s[i]), (wi[0], mi[0], si[0]));
    }

    let (mut sums, mut copied, mut accumulated) = (vec![0.0; len], vec![0.0; len], g.clone());
    let mut rectified = vec![0.0; len];
    add_relu(&x, &g, &mut rectified).unwrap();
    add(&x, &g, &mut sums).unwrap();
    copy(&x, &mut copied).unwrap();
    axpy(-0.5, &x, &mut accumulated).unwrap();
    assert_eq!(copied, x);
    for i in 0..len {
        assert_eq!((sums[i], accumulated[i]), (x[i] + g[i], g[i] + -0.5 * x[i]), "{i}");
        assert_eq!(rectified[i], (x[i] + g[i]).max(0.0), "{i}");
    }

    let mut z = x.clone();
    fill_zero(&mut z);
    assert!(z.iter().all(|&v| v == 0.0));
}

#[test]
fn length_mismatches_are_errors() {
    let (x, mut y) = ([1.0f32; 3], [0.0f32; 2]);
    assert_eq!(
        activation_forward(Activation::Relu, &x, &mut y),
        Err(KernelError::BufferLength { what: "activation forward: y", expected: 3, got: 2 })
    );
    assert!(axpy(1.0, &x, &mut y).is_err());
    assert!(add(&x, &x, &mut y).is_err() && add(&x[..2], &x, &mut y).is_err() && copy(&x, &mut y).is_err());
    assert!(add_relu(&x[..2], &x, &mut y).is_err());
    let step = SgdStep { lr: 0.1, momentum: 0.9, nesterov: false, weight_decay: 0.0 };
    assert!(sgd_update(step, &mut [0.0f32; 2], &[0.0; 2], &mut []).is_err());
}

#[test]
fn decaying_velocity_flushes_to_zero_instead_of_going_subnormal() {
    let step = SgdStep { lr: 0.1, momentum: 0.5, nesterov: false, weight_decay: 0.0 };
    let (mut w, mut v) = ([1.0f32], [1.0f32]);
    for _ in 0..200 {
        sgd_update(step, &mut w, &[0.0], &mut v).unwrap();
        assert!(v[0] == 0.0 || v[0].is_normal(), "velocity {} is subnormal", v[0]);
    }
    assert_eq!(v[0], 0.0);
}

// A NaN input must reach the loss, where training notices it: ReLU keeps it, on the
// vector lanes and on the scalar tail alike (IEEE's maximum, PyTorch's ReLU).
#[test]
fn relu_propagates_nan() {
    for len in [1, 8, 13, 40] {
        for at in 0..len {
            let mut x = values(len);
            x[at] = f32::NAN;
            let mut y = vec![0.0; len];
            activation_forward(Activation::Relu, &x, &mut y).unwrap();
            assert!(y[at].is_nan(), "length {len}, NaN at {at}");
            let mut portable = vec![0.0; len];
            relu_forward(&x, &mut portable);
            assert!(portable[at].is_nan(), "portable body, length {len}, NaN at {at}");
            assert!(y.iter().enumerate().all(|(i, &v)| i == at || v == x[i].max(0.0)));
            // The residual sum's ReLU: the bits of a sum, then ReLU.
            let (b, mut fused, mut sum) = (values(len + 1), vec![0.0; len], vec![0.0; len]);
            add_relu(&x, &b[1..], &mut fused).unwrap();
            add(&x, &b[1..], &mut sum).unwrap();
            activation_forward(Activation::Relu, &sum.clone(), &mut sum).unwrap();
            assert!(fused[at].is_nan(), "add relu, length {len}, NaN at {at}");
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fused), bits(&sum));
            assert!(len < 13 || (fused.contains(&0.0) && fused.iter().any(|&v| v > 0.0)), "{fused:?}");
        }
    }
    assert!(scalar_forward(Activation::Relu, f64::NAN).is_nan());
}

#[test]
fn all_finite_finds_every_non_finite_value() {
    for len in [0, 1, 7, 8, 31, 32, 33, 100, 1 << 16] {
        let x: Vec<f32> = values(len);
        assert!(all_finite(&x), "length {len}");
        assert!(all_finite_body(&x));
        let positions = [0, len / 2, len.saturating_sub(1), len.saturating_sub(5)];
        for at in positions.into_iter().filter(|&at| at < len) {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut y = x.clone();
                y[at] = bad;
                assert!(!all_finite(&y), "length {len}, {bad} at {at}");
                assert!(!all_finite_body(&y), "portable body, length {len}, {bad} at {at}");
            }
        }
    }
    // Finite values of the largest magnitude are finite.
    assert!(all_finite(&[f64::MAX; 20]) && all_finite(&[f32::MIN; 20]));
}
