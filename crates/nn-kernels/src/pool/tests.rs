use super::*;
use crate::geometry::{KernelMode, OutputRounding, Padding};
use proptest::prelude::*;

/// Max, first position of the max (in row-major window order; the first NaN wins
/// over any number) and mean of each window, computed from the definition with an
/// odometer over the window (padding cells skipped).
fn reference(geom: &ConvGeometry, x: &[f64]) -> (Vec<f64>, Vec<u32>, Vec<f64>) {
    let (mut maxes, mut args, mut means) = (Vec::new(), Vec::new(), Vec::new());
    let mut betas = Odometer::new(geom.output());
    while let Some(beta) = betas.current() {
        let (mut best, mut arg, mut total, mut count) = (f64::NEG_INFINITY, 0, 0.0, 0);
        let mut alphas = Odometer::new(geom.filter());
        while let Some(alpha) = alphas.current() {
            let gamma: Vec<isize> = (0..geom.rank())
                .map(|d| (geom.stride()[d] * beta[d] + alpha[d]) as isize - geom.padding()[d].before as isize)
                .collect();
            if gamma.iter().zip(geom.input()).all(|(&g, &m)| g >= 0 && g < m as isize) {
                let idx = gamma.iter().zip(geom.input()).fold(0, |acc, (&g, &m)| acc * m + g as usize);
                if x[idx] > best || (x[idx].is_nan() && !best.is_nan()) {
                    (best, arg) = (x[idx], idx as u32);
                }
                total += x[idx];
                count += 1;
            }
            alphas.advance();
        }
        maxes.push(best);
        args.push(arg);
        means.push(total / count as f64);
        betas.advance();
    }
    (maxes, args, means)
}

fn geometry() -> impl Strategy<Value = ConvGeometry> {
    (1usize..=4)
        .prop_flat_map(|rank| prop::collection::vec((1usize..6, 1usize..4, 1usize..4, 0usize..3, 0usize..3), rank))
        .prop_filter_map("window must fit", |dims| {
            let input: Vec<usize> = dims.iter().map(|d| d.0).collect();
            let filter: Vec<usize> = dims.iter().map(|d| d.1).collect();
            let stride: Vec<usize> = dims.iter().map(|d| d.2).collect();
            let padding: Vec<Padding> =
                dims.iter().map(|d| Padding { before: d.3.min(d.1 - 1), after: d.4.min(d.1 - 1) }).collect();
            let g = ConvGeometry::new(
                &input,
                &filter,
                &stride,
                &padding,
                OutputRounding::Floor,
                KernelMode::CrossCorrelation,
            )
            .ok()?;
            check_pool_geometry(&g).ok()?;
            Some(g)
        })
}

/// Geometries whose last dimension pools pairs `2b, 2b + 1` without padding (the
/// paired fast path of max pooling), any windows in the other dimensions.
fn paired_geometry() -> impl Strategy<Value = ConvGeometry> {
    (0usize..=2)
        .prop_flat_map(|outer| {
            (prop::collection::vec((1usize..7, 1usize..4, 1usize..3, 0usize..2), outer), 2usize..12, any::<bool>())
        })
        .prop_filter_map("window must fit", |(dims, last, strict)| {
            let mut input: Vec<usize> = dims.iter().map(|d| d.0).collect();
            let mut filter: Vec<usize> = dims.iter().map(|d| d.1).collect();
            let mut stride: Vec<usize> = dims.iter().map(|d| d.2).collect();
            let mut padding: Vec<Padding> = dims.iter().map(|d| Padding::symmetric(d.3.min(d.1 - 1))).collect();
            input.push(last);
            filter.push(2);
            stride.push(2);
            padding.push(Padding::default());
            // Floor rounding drops an odd input's last cell; strict refuses it.
            let rounding = if strict { OutputRounding::Strict } else { OutputRounding::Floor };
            let g =
                ConvGeometry::new(&input, &filter, &stride, &padding, rounding, KernelMode::CrossCorrelation).ok()?;
            check_pool_geometry(&g).ok()?;
            Some(g)
        })
}

proptest! {
    #[test]
    fn pooling_matches_reference(geom in geometry(), planes in 1usize..3, seed in 0u64..1000) {
        check_pooling(&geom, planes, seed)?;
    }

    #[test]
    fn paired_max_pooling_matches_reference(geom in paired_geometry(), planes in 1usize..3, seed in 0u64..1000) {
        prop_assert!(Windows::new(&geom).is_paired());
        check_pooling(&geom, planes, seed)?;
    }
}

/// Forward results against [`reference`], and both backward passes by their adjoint
/// identities.
fn check_pooling(geom: &ConvGeometry, planes: usize, seed: u64) -> Result<(), TestCaseError> {
    {
        // Few distinct values, so windows hold ties: the winner must be the first.
        let x: Vec<f64> =
            (0..planes * geom.input_len()).map(|i| ((i as u64 * 7919 + seed * 104729) % 7) as f64 / 3.0).collect();
        let out = planes * geom.output_len();
        let (mut y, mut arg, mut avg) = (vec![0.0; out], vec![0u32; out], vec![0.0; out]);
        max_pool_forward(geom, planes, &x, &mut y, &mut arg).unwrap();
        avg_pool_forward(geom, planes, &x, &mut avg).unwrap();
        for p in 0..planes {
            let plane = &x[p * geom.input_len()..(p + 1) * geom.input_len()];
            let (maxes, args, means) = reference(geom, plane);
            let range = p * geom.output_len()..(p + 1) * geom.output_len();
            prop_assert_eq!(&y[range.clone()], &maxes[..]);
            for (a, b) in avg[range.clone()].iter().zip(&means) {
                prop_assert!((a - b).abs() < 1e-12);
            }
            prop_assert_eq!(&arg[range], &args[..]);
        }
        // Adjoint identities: <pool(x), dy> = <x, poolᵀ(dy)> for the linear average, and
        // the max gradient routes each dy to its argmax.
        let dy: Vec<f64> = (0..out).map(|i| (i % 5) as f64 - 2.0).collect();
        let mut dx = vec![f64::NAN; x.len()];
        avg_pool_backward(geom, planes, &dy, &mut dx).unwrap();
        let lhs: f64 = avg.iter().zip(&dy).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
        prop_assert!((lhs - rhs).abs() < 1e-9 * (1.0 + lhs.abs()));
        max_pool_backward(geom, planes, &arg, &dy, &mut dx).unwrap();
        let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
        prop_assert!((lhs - rhs).abs() < 1e-9 * (1.0 + lhs.abs()));
    }
    Ok(())
}

#[test]
fn padding_as_large_as_the_window_is_refused() {
    let g = ConvGeometry::new(
        &[4],
        &[2],
        &[1],
        &[Padding::symmetric(2)],
        OutputRounding::Floor,
        KernelMode::CrossCorrelation,
    )
    .unwrap();
    let expected = GeometryError::PaddingTooLarge { dim: 0, padding: 2, window: 2 };
    assert_eq!(check_pool_geometry(&g), Err(expected.clone()));
    // Every kernel refuses it: an average over no cell would divide by zero.
    let planes = 1;
    let (x, mut y, mut arg) = (vec![1.0f32; 4], vec![0.0f32; g.output_len()], vec![0u32; g.output_len()]);
    let mut dx = vec![0.0f32; 4];
    let err = Err(KernelError::Geometry(expected));
    assert_eq!(avg_pool_forward(&g, planes, &x, &mut y), err);
    assert_eq!(avg_pool_backward(&g, planes, &y.clone(), &mut dx), err);
    assert_eq!(max_pool_forward(&g, planes, &x, &mut y, &mut arg), err);
    assert_eq!(max_pool_backward(&g, planes, &arg, &y.clone(), &mut dx), err);
}

#[test]
fn max_pool_2x2_by_hand() {
    let g = ConvGeometry::new(
        &[2, 4],
        &[2, 2],
        &[2, 2],
        &[Padding::default(); 2],
        OutputRounding::Strict,
        KernelMode::CrossCorrelation,
    )
    .unwrap();
    let x = [1.0f32, 5.0, 2.0, 2.0, 3.0, 4.0, 9.0, 2.0];
    let (mut y, mut arg) = ([0.0; 2], [0u32; 2]);
    max_pool_forward(&g, 1, &x, &mut y, &mut arg).unwrap();
    assert_eq!(y, [5.0, 9.0]);
    assert_eq!(arg, [1, 6]);
}

// A NaN in a window wins its max, on the paired path (2×2 at stride 2) and the
// general one, so that it reaches the loss (IEEE's maximum, PyTorch's max pooling).
#[test]
fn max_pooling_propagates_nan() {
    for (window, stride) in [([2, 2], [2, 2]), ([3, 3], [1, 1])] {
        let geom = ConvGeometry::new(
            &[6, 6],
            &window,
            &stride,
            &[Padding::default(); 2],
            OutputRounding::Floor,
            KernelMode::CrossCorrelation,
        )
        .unwrap();
        for at in [0, 7, 14, 35] {
            let mut x: Vec<f32> = (0..36).map(|i| (i % 7) as f32).collect();
            x[at] = f32::NAN;
            let mut y = vec![0.0; geom.output_len()];
            let mut argmax = vec![0; y.len()];
            max_pool_forward(&geom, 1, &x, &mut y, &mut argmax).unwrap();
            let (row, col) = (at / 6, at % 6);
            let mut odometer = Odometer::new(geom.output());
            let mut o = 0;
            while let Some(beta) = odometer.current() {
                let covers = |d: usize, g: usize| (stride[d] * beta[d]..stride[d] * beta[d] + window[d]).contains(&g);
                let holds_nan = covers(0, row) && covers(1, col);
                assert_eq!(y[o].is_nan(), holds_nan, "window {window:?}, NaN at {at}, output {beta:?}");
                if holds_nan {
                    assert_eq!(argmax[o] as usize, at);
                }
                o += 1;
                odometer.advance();
            }
        }
    }
}

/// Paired geometries (2×2 at stride 2 among them) with rows long enough for the AVX2
/// build's eight windows at a time and its scalar rest.
fn long_paired_geometry() -> impl Strategy<Value = ConvGeometry> {
    (1usize..6, 2usize..60, 1usize..4).prop_filter_map("window must fit", |(rows, last, window)| {
        let g = ConvGeometry::new(
            &[rows, last],
            &[window.min(rows), 2],
            &[2, 2],
            &[Padding::default(); 2],
            OutputRounding::Floor,
            KernelMode::CrossCorrelation,
        )
        .ok()?;
        check_pool_geometry(&g).ok()?;
        Some(g)
    })
}

proptest! {
    // f32 (its AVX2 build where the CPU has it) against the f64 reference, on data
    // with ties and NaNs: the same maxima, the same winners.
    #[test]
    fn f32_paired_max_pooling_matches_reference(
        geom in long_paired_geometry(),
        planes in 1usize..3,
        seed in 0u64..1000,
        nans in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let len = planes * geom.input_len();
        let mut x: Vec<f64> = (0..len).map(|i| ((i as u64 * 7919 + seed * 104729) % 5) as f64 - 2.0).collect();
        for at in &nans {
            x[at.index(len)] = f64::NAN;
        }
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let out = planes * geom.output_len();
        let (mut y, mut arg) = (vec![0.0f32; out], vec![0u32; out]);
        max_pool_forward(&geom, planes, &x32, &mut y, &mut arg).unwrap();
        for p in 0..planes {
            let (maxes, args, _) = reference(&geom, &x[p * geom.input_len()..(p + 1) * geom.input_len()]);
            for (o, (&want, &want_arg)) in maxes.iter().zip(&args).enumerate() {
                let (got, got_arg) = (y[p * geom.output_len() + o], arg[p * geom.output_len() + o]);
                prop_assert!(got.is_nan() == want.is_nan() && (want.is_nan() || got as f64 == want), "max {}: {} vs {}", o, got, want);
                prop_assert_eq!(got_arg, want_arg, "argmax {}", o);
            }
        }
    }
}

/// Values with ties, zeros of both signs, negatives and, where `nans` says, NaNs.
fn rectifier_test_data(len: usize, seed: u64, nans: &[prop::sample::Index]) -> Vec<f64> {
    let mut x: Vec<f64> = (0..len)
        .map(|i| match (i as u64 * 7919 + seed * 104729) % 7 {
            0 => -0.0,
            k => k as f64 / 2.0 - 2.0,
        })
        .collect();
    for at in nans {
        x[at.index(len)] = f64::NAN;
    }
    x
}

/// The values' bits, so that comparisons tell −0 from +0 and see NaNs.
fn bits<T: Element>(v: &[T]) -> Vec<u64> {
    v.iter().map(|t| t.as_f64().to_bits()).collect()
}

/// A ReLU layer then max pooling, forward and backward, against the fused pass: the
/// same outputs and input gradients, bit for bit.
fn check_rectified_max_pool<T: Element>(geom: &ConvGeometry, planes: usize, x: &[f64]) -> Result<(), TestCaseError> {
    use crate::elementwise::{activation_backward, activation_forward, Activation};
    let x: Vec<T> = x.iter().map(|&v| T::from_f64(v)).collect();
    let out = planes * geom.output_len();
    let dy: Vec<T> = (0..out).map(|i| T::from_f64(if i % 6 == 0 { -0.0 } else { (i % 5) as f64 - 1.5 })).collect();

    let mut rectified = vec![T::zero(); x.len()];
    activation_forward(Activation::Relu, &x, &mut rectified).unwrap();
    let (mut y_apart, mut arg_apart) = (vec![T::zero(); out], vec![0u32; out]);
    max_pool_forward(geom, planes, &rectified, &mut y_apart, &mut arg_apart).unwrap();
    let mut d_rectified = vec![T::zero(); x.len()];
    max_pool_backward(geom, planes, &arg_apart, &dy, &mut d_rectified).unwrap();
    let mut dx_apart = vec![T::zero(); x.len()];
    activation_backward(Activation::Relu, &x, &rectified, &d_rectified, &mut dx_apart).unwrap();

    let (mut y, mut arg) = (vec![T::zero(); out], vec![0u32; out]);
    max_pool_relu_forward(geom, planes, &x, &mut y, &mut arg).unwrap();
    let mut dx = vec![T::one(); x.len()];
    max_pool_backward(geom, planes, &arg, &dy, &mut dx).unwrap();
    prop_assert_eq!(bits(&y), bits(&y_apart));
    prop_assert_eq!(bits(&dx), bits(&dx_apart));
    Ok(())
}

proptest! {
    #[test]
    fn rectified_max_pooling_keeps_the_bits_of_relu_then_pool(
        geom in geometry(),
        long in long_paired_geometry(),
        planes in 1usize..3,
        seed in 0u64..1000,
        nans in prop::collection::vec(any::<prop::sample::Index>(), 0..3),
    ) {
        for geom in [&geom, &long] {
            let x = rectifier_test_data(planes * geom.input_len(), seed, &nans);
            check_rectified_max_pool::<f64>(geom, planes, &x)?;
            check_rectified_max_pool::<f32>(geom, planes, &x)?;
        }
    }
}

/// The max pooling gradient by its definition: every window's gradient added into
/// its winner, unless the window's gradient stops.
fn scattered<T: Element>(geom: &ConvGeometry, planes: usize, argmax: &[u32], dy: &[T]) -> Vec<T> {
    let mut dx = vec![T::zero(); planes * geom.input_len()];
    for (o, (&a, &g)) in argmax.iter().zip(dy).enumerate() {
        if a & GRADIENT_STOPS == 0 {
            dx[o / geom.output_len() * geom.input_len() + a as usize] += g;
        }
    }
    dx
}

fn check_backward_bits<T: Element>(geom: &ConvGeometry, planes: usize, x: &[f64]) -> Result<(), TestCaseError> {
    let x: Vec<T> = x.iter().map(|&v| T::from_f64(v)).collect();
    let out = planes * geom.output_len();
    let dy: Vec<T> = (0..out).map(|i| T::from_f64(if i % 4 == 1 { -0.0 } else { i as f64 * 0.25 - 3.0 })).collect();
    for rectify in [false, true] {
        let (mut y, mut arg) = (vec![T::zero(); out], vec![0u32; out]);
        let forward = if rectify { max_pool_relu_forward } else { max_pool_forward };
        forward(geom, planes, &x, &mut y, &mut arg).unwrap();
        let mut dx = vec![T::one(); x.len()];
        max_pool_backward(geom, planes, &arg, &dy, &mut dx).unwrap();
        prop_assert_eq!(bits(&dx), bits(&scattered(geom, planes, &arg, &dy)), "rectify {}", rectify);
    }
    Ok(())
}

proptest! {
    // Paired windows (their forward pass has a path of its own) and any others, with
    // and without rectifying: the bits of the definition's scatter, −0 gradients
    // and stopped windows included.
    #[test]
    fn max_pool_gradients_keep_the_bits_of_a_scatter(
        paired in paired_geometry(),
        long in long_paired_geometry(),
        any in geometry(),
        planes in 1usize..3,
        seed in 0u64..1000,
        nans in prop::collection::vec(any::<prop::sample::Index>(), 0..3),
    ) {
        for geom in [&paired, &long, &any] {
            let x = rectifier_test_data(planes * geom.input_len(), seed, &nans);
            check_backward_bits::<f32>(geom, planes, &x)?;
            check_backward_bits::<f64>(geom, planes, &x)?;
        }
    }
}
