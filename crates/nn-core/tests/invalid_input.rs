//! Inputs that once panicked inside the library (capacity overflows, a NaN bound in
//! the random number generator's range) are errors now, each naming its cause.

use nn_core::prelude::*;
use nn_kernels::conv::{ConvGeometry, ConvProblem};

#[test]
fn tensors_too_large_to_allocate_are_refused() {
    // 2^62 f32 elements: the count fits in usize, the bytes do not.
    let err = Tensor::<f32>::zeros(&[1 << 62]).unwrap_err();
    assert!(err.to_string().contains("tensor size"), "{err}");
    assert!(Tensor::<f64>::zeros(&[1 << 61, 4]).is_err());
    let mut t = Tensor::<f32>::default();
    assert!(t.set_batch_shape(1 << 40, &[1 << 30]).is_err());
}

#[test]
fn non_finite_initialiser_bounds_are_refused() {
    for bound in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let err = Sequential::<f32>::builder(&[4], 1)
            .dense_with(3, true, Init::Uniform { bound })
            .build()
            .expect_err("a non-finite bound");
        assert!(err.to_string().contains("Init::Uniform bound"), "{err}");
    }
    let err =
        Sequential::<f64>::builder(&[1, 6], 1).conv(ConvSpec::new(2, &[3]).init(Init::Constant(f64::NAN))).build();
    assert!(err.is_err());
}

#[test]
fn convolutions_too_large_to_plan_are_refused() {
    // An outer filter of 2^31 cells over an input of 2^32: the im2col line table
    // would hold 2^62 entries.
    let err = Sequential::<f32>::builder(&[1, 1 << 32, 1], 1).conv(ConvSpec::new(1, &[1 << 31, 1])).build();
    assert!(err.unwrap_err().to_string().contains("overflow"));
    let g = ConvGeometry::new(
        &[1 << 32, 1],
        &[1 << 31, 1],
        &[1, 1],
        &[Padding::default(); 2],
        OutputRounding::Strict,
        KernelMode::Convolution,
    )
    .unwrap();
    assert!(ConvProblem::new(g.clone(), 1, 1).is_err());
    // Channel counts whose buffers could not be allocated.
    let small = ConvGeometry::new(
        &[4, 4],
        &[3, 3],
        &[1, 1],
        &[Padding::symmetric(1); 2],
        OutputRounding::Strict,
        KernelMode::Convolution,
    )
    .unwrap();
    assert!(ConvProblem::new(small.clone(), 1 << 62, 1).is_err());
    assert!(ConvProblem::new(small.clone(), 0, 1).is_err());
    assert!(ConvProblem::new(small, 1, 0).is_err());
}

#[test]
fn non_finite_values_are_located() {
    let mut net = Sequential::<f32>::builder(&[3], 2).dense(4).relu().dense(2).build().unwrap();
    let x = Tensor::from_vec(&[1, 3], vec![1.0, f32::NAN, 0.5]).unwrap();
    net.forward(&x).unwrap();
    // ReLU keeps the NaN, so the first non-finite output is the first layer's.
    assert_eq!(net.first_non_finite_output(), Some(0));
    assert!(net.output().unwrap().data().iter().any(|v| v.is_nan()));
    net.zero_grad();
    assert!(net.grads_are_finite());
    net.backward(&Tensor::from_vec(&[1, 2], vec![1.0, 1.0]).unwrap()).unwrap();
    assert!(!net.grads_are_finite());
    assert_eq!(net.first_non_finite_grad().as_deref(), Some("0.dense.weight"));
}
