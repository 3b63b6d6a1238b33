//! The transposed convolution's backward pass in one walk against its two products
//! run separately (each tested against the reference in `tests`).

use super::tests::{assert_close, case, data, narrow};
use super::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    // f64 runs the column path on every CPU: the weight gradient to the bit, the input
    // gradient to rounding (its blocks may be cut differently). f32 takes whichever
    // path the CPU has, against the f64 results.
    #[test]
    fn transposed_backward_matches_its_separate_gradients(case in case()) {
        let (p, batch) = (&case.problem, case.batch);
        let (dz, x) = (data(batch * p.input_image_len(), 31), data(batch * p.output_image_len(), 32));
        let (w, start) = (data(p.weight_len(), 33), data(p.weight_len(), 34));
        let mut want_dx = vec![f64::NAN; x.len()];
        conv_forward(p, batch, &dz, &w, None, 0.0, &mut want_dx).unwrap();
        let mut want_dw = start.clone();
        conv_backward_weight(p, batch, &dz, &x, 0.0, &mut want_dw).unwrap();

        let (mut dx, mut dw) = (vec![f64::NAN; x.len()], start.clone());
        conv_transpose_backward(p, batch, &dz, &x, &w, Some(&mut dx), &mut dw).unwrap();
        prop_assert_eq!(&dw, &want_dw);
        let terms = p.group_rows();
        for (i, (&got, &want)) in dx.iter().zip(&want_dx).enumerate() {
            prop_assert!((got - want).abs() <= 1e-14 * (terms as f64 + 1.0), "dx cell {}: {} vs {}", i, got, want);
        }
        let mut alone = start.clone();
        conv_transpose_backward(p, batch, &dz, &x, &w, None, &mut alone).unwrap();
        prop_assert_eq!(&alone, &want_dw);

        let (mut dx32, mut dw32) = (vec![f32::NAN; x.len()], narrow(&start));
        conv_transpose_backward(p, batch, &narrow(&dz), &narrow(&x), &narrow(&w), Some(&mut dx32), &mut dw32).unwrap();
        assert_close("input gradient", &dx32, &want_dx, terms)?;
        assert_close("weight gradient", &dw32, &want_dw, batch * p.geometry().output_len())?;
    }
}

#[test]
fn transposed_backward_refuses_buffers_that_do_not_fit() {
    let g = ConvGeometry::new(
        &[4, 4],
        &[2, 2],
        &[2, 2],
        &[Padding::symmetric(0); 2],
        OutputRounding::Strict,
        KernelMode::Convolution,
    )
    .unwrap();
    let p = ConvProblem::new(g, 3, 2).unwrap();
    let (dz, x, w) = (vec![0.0f64; 2 * 48], vec![0.0; 2 * 8], vec![0.0; p.weight_len()]);
    let (mut dx, mut dw) = (vec![0.0; 2 * 8], vec![0.0; p.weight_len()]);
    assert!(conv_transpose_backward(&p, 2, &dz, &x, &w, Some(&mut dx), &mut dw).is_ok());
    assert!(conv_transpose_backward(&p, 2, &dz, &x, &w, Some(&mut dx[..15]), &mut dw).is_err());
    assert!(conv_transpose_backward(&p, 2, &dz, &x[..15], &w, Some(&mut dx), &mut dw).is_err());
    assert!(conv_transpose_backward(&p, 2, &dz, &x, &w, Some(&mut dx), &mut dw[..3]).is_err());
}

// Column budgets that cut images into tiles, put several images in one block, or
// both, on C10's kind of geometry (stride equal to the filter, 3-D) with a batch of
// 10 (chunks of 2 images): every block of a chunk adds into the chunk's sum.
#[test]
fn transposed_backward_over_tiles_and_blocks_of_images() {
    let g = ConvGeometry::new(
        &[8, 6, 6],
        &[2, 2, 2],
        &[2, 2, 2],
        &[Padding::symmetric(0); 3],
        OutputRounding::Strict,
        KernelMode::Convolution,
    )
    .unwrap();
    let batch = 10;
    for budget in [256, 4096, 1 << 20] {
        let p = ConvProblem::new(g.clone(), 5, 3).unwrap().with_col_budget(budget);
        let (dz, x) = (data(batch * p.input_image_len(), 41), data(batch * p.output_image_len(), 42));
        let (w, start) = (data(p.weight_len(), 43), data(p.weight_len(), 44));
        let mut want_dx = vec![f64::NAN; x.len()];
        conv_forward(&p, batch, &dz, &w, None, 0.0, &mut want_dx).unwrap();
        let mut want_dw = start.clone();
        conv_backward_weight(&p, batch, &dz, &x, 0.0, &mut want_dw).unwrap();
        let (mut dx, mut dw) = (vec![f64::NAN; x.len()], start.clone());
        conv_transpose_backward(&p, batch, &dz, &x, &w, Some(&mut dx), &mut dw).unwrap();
        assert_eq!(dw, want_dw, "budget {budget}");
        assert!(dx.iter().zip(&want_dx).all(|(a, b)| (a - b).abs() <= 1e-13), "budget {budget}");
    }
}
