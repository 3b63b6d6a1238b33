//! Dense against SPEC §2 by hand, and the network's construction errors.

use nn_core::prelude::*;

#[test]
fn dense_by_hand() {
    // n = 2 → m = 3, w[i][j] row-major: y_j = Σ_i x_i w_ij + b_j.
    let mut layer = Dense::<f64>::new(2, 3, true, Init::Constant(0.0), &mut seeded_rng(0)).unwrap();
    {
        let mut params = layer.params_mut();
        params[0].value.data_mut().copy_from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        params[1].value.data_mut().copy_from_slice(&[0.5, 0.0, -0.5]);
    }
    let x = Tensor::from_vec(&[1, 2], vec![10.0, 100.0]).unwrap();
    let mut y = Tensor::zeros(&[0]).unwrap();
    layer.forward(&x, &mut y).unwrap();
    // y_0 = 10·1 + 100·4 + 0.5, y_1 = 10·2 + 100·5, y_2 = 10·3 + 100·6 − 0.5
    assert_eq!(y.data(), &[410.5, 520.0, 629.5]);

    let dy = Tensor::from_vec(&[1, 3], vec![1.0, 0.0, 2.0]).unwrap();
    let mut dx = Tensor::zeros(&[0]).unwrap();
    layer.backward(&x, &y, &dy, Some(&mut dx)).unwrap();
    // ∂x_i = Σ_j ∂y_j w_ij: ∂x_0 = 1 + 2·3 = 7, ∂x_1 = 4 + 2·6 = 16.
    assert_eq!(dx.data(), &[7.0, 16.0]);
    // ∂w_ij = x_i ∂y_j.
    assert_eq!(layer.weight().grad.data(), &[10.0, 0.0, 20.0, 100.0, 0.0, 200.0]);
    assert_eq!(layer.bias().unwrap().grad.data(), &[1.0, 0.0, 2.0]);

    // Gradients accumulate over calls (Σ_p), until zeroed.
    layer.backward(&x, &y, &dy, None).unwrap();
    assert_eq!(layer.weight().grad.data()[0], 20.0);
}

#[test]
fn f32_and_f64_networks_agree() {
    let build = || {
        Sequential::<f64>::builder(&[1, 6, 6], 9)
            .conv(ConvSpec::new(2, &[3, 3]))
            .relu()
            .flatten()
            .dense(3)
            .build()
            .unwrap()
    };
    let mut net64 = build();
    let mut net32 = Sequential::<f32>::builder(&[1, 6, 6], 9)
        .conv(ConvSpec::new(2, &[3, 3]))
        .relu()
        .flatten()
        .dense(3)
        .build()
        .unwrap();
    let x64 = Tensor::from_vec(&[2, 1, 6, 6], (0..72).map(|i| (i as f64 * 0.37).sin()).collect()).unwrap();
    let y64 = net64.forward(&x64).unwrap().clone();
    let y32 = net32.forward(&x64.cast::<f32>()).unwrap().clone();
    for (a, b) in y64.data().iter().zip(y32.data()) {
        assert!((a - *b as f64).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn mismatched_layers_are_reported_by_index_and_shape() {
    let mut rng = seeded_rng(0);
    let layers: Vec<Box<dyn Layer<f32>>> = vec![
        Box::new(Dense::new(4, 3, true, Init::HeUniform, &mut rng).unwrap()),
        Box::new(ActivationLayer::new(&[3], Activation::Relu)),
        Box::new(Dense::new(5, 2, true, Init::HeUniform, &mut rng).unwrap()),
    ];
    let err = Sequential::new(&[4], layers).unwrap_err();
    assert_eq!(
        err,
        NnError::LayerMismatch {
            index: 1,
            kind: "relu",
            output: vec![3],
            next_index: 2,
            next_kind: "dense",
            next_input: vec![5]
        }
    );
    assert_eq!(err.to_string(), "layer 1 (relu) outputs [3] but layer 2 (dense) expects [5]");
}

#[test]
fn builder_errors_name_the_layer() {
    let err =
        Sequential::<f32>::builder(&[1, 5, 5], 0).conv(ConvSpec::new(2, &[2, 2]).stride(&[2, 2])).build().unwrap_err();
    let NnError::Layer { index: 0, kind: "conv", source, .. } = &err else { panic!("{err:?}") };
    assert!(matches!(**source, NnError::Geometry(nn_kernels::GeometryError::NotDivisible { dim: 0, .. })), "{err}");

    let err = Sequential::<f32>::builder(&[1, 4, 4], 0).relu().dense(3).build().unwrap_err();
    assert!(matches!(err, NnError::Layer { index: 1, kind: "dense", .. }), "{err}");
    assert!(err.to_string().contains("flatten"));

    let err = Sequential::<f32>::builder(&[1, 4, 4], 0).conv(ConvSpec::new(2, &[9, 1])).build().unwrap_err();
    assert!(err.to_string().contains("filter extent 9 exceeds the padded input length 4"), "{err}");

    let err = Sequential::<f32>::builder(&[1, 4], 0).conv(ConvSpec::new(2, &[1]).stride(&[0])).build().unwrap_err();
    assert!(err.to_string().contains("stride is zero in spatial dimension 0"), "{err}");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let mut net = Sequential::<f32>::builder(&[3], 0).dense(2).build().unwrap();
    let wrong = Tensor::zeros(&[2, 4]).unwrap();
    assert!(matches!(net.forward(&wrong), Err(NnError::Shape { .. })));
    let empty = Tensor::zeros(&[0, 3]).unwrap();
    assert!(matches!(net.forward(&empty), Err(NnError::ZeroSized { .. })));
    assert_eq!(net.backward(&Tensor::zeros(&[1, 2]).unwrap()), Err(NnError::BackwardBeforeForward));
    net.forward(&Tensor::zeros(&[1, 3]).unwrap()).unwrap();
    assert!(matches!(net.backward(&Tensor::zeros(&[2, 2]).unwrap()), Err(NnError::Shape { .. })));
    assert!(matches!(
        Tensor::<f32>::from_vec(&[2, 2], vec![0.0; 3]),
        Err(NnError::DataLength { expected: 4, got: 3, .. })
    ));
    assert!(Tensor::<f32>::zeros(&[usize::MAX, 2]).is_err());
}

#[test]
fn named_parameters_say_where_they_live() {
    let net = Sequential::<f32>::builder(&[1, 4, 4], 0)
        .conv(ConvSpec::new(2, &[3, 3]))
        .relu()
        .flatten()
        .dense(3)
        .build()
        .unwrap();
    let names: Vec<String> = net.named_params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0.conv.weight", "0.conv.bias", "3.dense.weight", "3.dense.bias"]);
    assert_eq!(net.num_params(), 2 * 9 + 2 + 8 * 3 + 3);
}

/// The network reuses its gradient buffers from step to step without clearing them:
/// a step must not depend on what the previous one left there, nor on a change of
/// batch size in between.
#[test]
fn a_step_does_not_see_the_previous_steps_buffers() {
    let build = || {
        Sequential::<f64>::builder(&[2, 6, 6], 4)
            .conv(ConvSpec::new(3, &[3, 3]).padding(&[1, 1]))
            .relu()
            .max_pool(&[2, 2])
            .flatten()
            .dense(4)
            .build()
            .unwrap()
    };
    let input = |batch: usize, phase: f64| {
        let data = (0..batch * 72).map(|i| (i as f64 * 0.61 + phase).sin()).collect();
        Tensor::from_vec(&[batch, 2, 6, 6], data).unwrap()
    };
    let (x_old, x_new) = (input(3, 0.0), input(2, 1.0));
    let upstream = |net: &Sequential<f64>, scale: f64| {
        let y = net.output().unwrap();
        Tensor::from_vec(y.shape(), y.data().iter().map(|v| scale * v + 0.25).collect()).unwrap()
    };

    let mut used = build();
    used.forward(&x_old).unwrap();
    let dy = upstream(&used, 7.0);
    used.backward_to_input(&dy).unwrap();
    used.zero_grad();
    used.forward(&x_new).unwrap();
    let dy = upstream(&used, 1.0);
    let dx_used = used.backward_to_input(&dy).unwrap().clone();

    let mut fresh = build();
    fresh.forward(&x_new).unwrap();
    let dy = upstream(&fresh, 1.0);
    let dx_fresh = fresh.backward_to_input(&dy).unwrap().clone();

    assert_eq!(dx_used, dx_fresh);
    for (a, b) in used.params().iter().zip(fresh.params()) {
        assert_eq!(a.grad, b.grad, "{}", a.name);
    }
}
