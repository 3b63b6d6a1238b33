//! [`conv_backward`] against the three separate gradient calls (each tested against
//! the reference in `tests`): the same bits, depthwise problems in one walk included.

use super::tests::{case, data, narrow};
use super::*;
use proptest::prelude::*;

/// `case()`'s random geometry as a depthwise problem: 2–7 channels, multiplier 1–3.
fn depthwise_case() -> impl Strategy<Value = super::tests::Case> {
    (case(), 2usize..8, 1usize..4).prop_map(|(mut case, channels, multiplier)| {
        let geometry = case.problem.geometry().clone();
        case.problem = ConvProblem::grouped(geometry, channels, channels * multiplier, channels).unwrap();
        case
    })
}

/// `(∂x, ∂w, ∂b)` from the separate calls and from `conv_backward`, on `threads`
/// threads, for the given choice of ∂x and ∂b.
fn both_ways<T: Element>(
    case: &super::tests::Case,
    threads: usize,
    with_dx: bool,
    with_db: bool,
    narrowed: fn(&[f64]) -> Vec<T>,
) -> [(Vec<T>, Vec<T>, Vec<T>); 2] {
    let (p, batch) = (&case.problem, case.batch);
    let x = narrowed(&data(batch * p.input_image_len(), 41));
    let w = narrowed(&data(p.weight_len(), 42));
    let dy = narrowed(&data(batch * p.output_image_len(), 43));
    let (dw0, db0) = (narrowed(&data(p.weight_len(), 44)), narrowed(&data(p.out_channels(), 45)));
    let pad = T::from_f64(case.pad_value);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let (mut dx, mut dw, mut db) = (vec![T::from_f64(f64::NAN); x.len()], dw0.clone(), db0.clone());
        if with_db {
            conv_backward_bias(p, batch, &dy, &mut db).unwrap();
        }
        conv_backward_weight(p, batch, &x, &dy, pad, &mut dw).unwrap();
        if with_dx {
            conv_backward_input(p, batch, &w, &dy, &mut dx).unwrap();
        }
        let separate = (dx, dw, db);
        let (mut dx, mut dw, mut db) = (vec![T::from_f64(f64::NAN); x.len()], dw0.clone(), db0.clone());
        let dx_arg = with_dx.then_some(&mut dx[..]);
        let db_arg = with_db.then_some(&mut db[..]);
        conv_backward(p, batch, &x, &w, &dy, pad, dx_arg, &mut dw, db_arg).unwrap();
        [separate, (dx, dw, db)]
    })
}

fn same_bits<T: Element>(a: &[T], b: &[T]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.as_f64().to_bits() == b.as_f64().to_bits())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    // One thread lets a depthwise problem of two channels take the one walk; two keep
    // it for four channels or more. f32 runs the AVX2 build where the CPU has it.
    #[test]
    fn one_call_gives_the_separate_calls_bits(
        case in prop_oneof![depthwise_case(), case()],
        threads in 1usize..3,
        with_dx: bool,
        with_db: bool,
    ) {
        let [separate, together] = both_ways::<f64>(&case, threads, with_dx, with_db, |v| v.to_vec());
        prop_assert!(same_bits(&separate.0, &together.0), "input gradient");
        prop_assert!(same_bits(&separate.1, &together.1), "weight gradient");
        prop_assert!(same_bits(&separate.2, &together.2), "bias gradient");
        let [separate, together] = both_ways::<f32>(&case, threads, with_dx, with_db, narrow);
        prop_assert!(same_bits(&separate.0, &together.0), "f32 input gradient");
        prop_assert!(same_bits(&separate.1, &together.1), "f32 weight gradient");
        prop_assert!(same_bits(&separate.2, &together.2), "f32 bias gradient");
    }
}

/// C9's shape scaled down (3×3, pad 1, 8 channels, rows of 56 cells: every step
/// width of the AVX2 build), at strides 1 and 2, on one and two threads.
#[test]
fn depthwise_one_walk_on_long_rows() {
    for stride in [1, 2] {
        let pad = [Padding { before: 1, after: 1 }; 2];
        let g =
            ConvGeometry::new(&[9, 56], &[3, 3], &[stride; 2], &pad, OutputRounding::Floor, KernelMode::Convolution)
                .unwrap();
        let case = super::tests::Case {
            problem: ConvProblem::grouped(g, 8, 8, 8).unwrap(),
            batch: 3,
            pad_value: 0.0,
            bias: true,
        };
        for threads in [1, 2] {
            let [separate, together] = both_ways::<f32>(&case, threads, true, true, narrow);
            assert!(same_bits(&separate.0, &together.0), "input gradient, stride {stride}, {threads} threads");
            assert!(same_bits(&separate.1, &together.1), "weight gradient, stride {stride}, {threads} threads");
            assert!(same_bits(&separate.2, &together.2), "bias gradient, stride {stride}, {threads} threads");
        }
    }
}

#[test]
fn one_call_refuses_buffers_that_do_not_fit() {
    let g = ConvGeometry::new(
        &[5, 5],
        &[3, 3],
        &[1, 1],
        &[Padding::default(); 2],
        OutputRounding::Strict,
        KernelMode::Convolution,
    )
    .unwrap();
    let p = ConvProblem::grouped(g, 4, 4, 4).unwrap();
    let (x, w, dy) = (vec![0.0f32; 2 * 100], vec![0.0f32; 36], vec![0.0f32; 2 * 36]);
    let (mut dw, mut db, mut dx) = (vec![0.0f32; 36], vec![0.0f32; 3], vec![0.0f32; 2 * 100]);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let error = pool.install(|| conv_backward(&p, 2, &x, &w, &dy, 0.0, Some(&mut dx), &mut dw, Some(&mut db)));
    assert!(error.unwrap_err().to_string().contains("conv backward: db"));
    let mut short = vec![0.0f32; 99];
    let error = pool.install(|| conv_backward(&p, 2, &x, &w, &dy, 0.0, Some(&mut short), &mut dw, None));
    assert!(error.unwrap_err().to_string().contains("conv backward: dx"));
}
