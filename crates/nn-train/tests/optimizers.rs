//! Optimizer updates against hand-computed values.

use nn_core::{Param, Tensor};
use nn_train::optim::{Adam, Optimizer, Sgd};

fn param(w: f64, g: f64) -> Param<f64> {
    let mut p = Param::new("w", Tensor::from_vec(&[1], vec![w]).unwrap());
    p.grad.data_mut()[0] = g;
    p
}

fn step<O: Optimizer<f64>>(opt: &mut O, p: &mut Param<f64>) -> f64 {
    opt.step(&mut [p]).unwrap();
    p.value.data()[0]
}

#[test]
fn sgd_is_the_source_update() {
    // Δw = −η·Σ_p ∂w
    let mut p = param(1.0, 0.5);
    assert_eq!(step(&mut Sgd::new(0.1), &mut p), 1.0 - 0.1 * 0.5);
    let mut p = param(1.0, 0.5);
    assert_eq!(step(&mut Sgd::new(0.1).weight_decay(0.2), &mut p), 1.0 - 0.1 * (0.5 + 0.2));
}

#[test]
fn momentum_and_nesterov() {
    let mut opt = Sgd::new(0.1).momentum(0.9);
    let mut p = param(0.0, 1.0);
    // v = 1, w = −0.1; then v = 0.9 + 1 = 1.9, w = −0.1 − 0.19.
    assert!((step(&mut opt, &mut p) + 0.1).abs() < 1e-15);
    assert!((step(&mut opt, &mut p) + 0.29).abs() < 1e-15);
    let mut opt = Sgd::new(0.1).momentum(0.9).nesterov(true);
    let mut p = param(0.0, 1.0);
    // v = 1, Δw = −η(g + μv) = −0.19.
    assert!((step(&mut opt, &mut p) + 0.19).abs() < 1e-15);
}

#[test]
fn adam_first_steps_have_size_lr_and_adamw_decays() {
    let mut opt = Adam::new(0.01);
    let mut p = param(1.0, 123.0);
    // Bias-corrected first step: m̂/√v̂ = sign(g).
    assert!((step(&mut opt, &mut p) - 0.99).abs() < 1e-9);
    assert!((step(&mut opt, &mut p) - 0.98).abs() < 1e-9);
    let mut opt = Adam::adamw(0.01, 0.5);
    let mut p = param(1.0, 0.0);
    // Zero gradient: only the decoupled decay, w ← w − η·λ·w.
    assert!((step(&mut opt, &mut p) - (1.0 - 0.005)).abs() < 1e-12);
}

#[test]
fn state_round_trip_and_shape_check() {
    let mut opt = Adam::new(0.01);
    let mut p = param(1.0, 2.0);
    step(&mut opt, &mut p);
    let state = opt.state();
    let mut restored = Adam::new(0.5);
    restored.load_state(&state, &[&p]).unwrap();
    assert_eq!(restored.state(), state);
    let wrong = Param::new("w", Tensor::<f64>::zeros(&[2]).unwrap());
    let mut untouched = Adam::new(0.5);
    assert!(untouched.load_state(&state, &[&wrong]).is_err());
    // A refused state changes nothing, not even the scalars read before the buffers.
    assert_eq!(untouched.state(), Adam::<f64>::new(0.5).state());

    let mut sgd = Sgd::new(0.1).momentum(0.9);
    step(&mut sgd, &mut p);
    let saved = sgd.state();
    let mut fresh = Sgd::new(0.7);
    assert!(fresh.load_state(&saved, &[&wrong]).is_err());
    assert_eq!(fresh.state(), Sgd::<f64>::new(0.7).state());
}

/// With zero gradients a step is the decay alone: weights shrink, and with
/// `decay_weights_only` biases and normalisation parameters stay.
#[test]
fn weight_decay_on_weights_only() {
    use nn_core::prelude::*;
    let net = || {
        let mut net = Sequential::<f64>::builder(&[2, 3], 1).conv(ConvSpec::new(2, &[2])).batch_norm().build().unwrap();
        for p in net.params_mut() {
            p.value.data_mut().fill(1.0);
        }
        net
    };
    let roles = |net: &Sequential<f64>| net.params().iter().map(|p| p.role).collect::<Vec<_>>();
    assert_eq!(roles(&net()), [ParamRole::Weight, ParamRole::Bias, ParamRole::Normalization, ParamRole::Normalization]);
    let after = |optimizer: &mut dyn Optimizer<f64>| {
        let mut net = net();
        optimizer.step(&mut net.params_mut()).unwrap();
        net.params().iter().map(|p| p.value.data()[0]).collect::<Vec<_>>()
    };
    assert_eq!(after(&mut Sgd::new(0.5).weight_decay(0.1)), [0.95, 0.95, 0.95, 0.95]);
    assert_eq!(after(&mut Sgd::new(0.5).weight_decay(0.1).decay_weights_only(true)), [0.95, 1.0, 1.0, 1.0]);
    let adamw = after(&mut Adam::adamw(0.5, 0.1).decay_weights_only(true));
    assert!(adamw[0] < 1.0 && adamw[1..] == [1.0, 1.0, 1.0], "{adamw:?}");
}
