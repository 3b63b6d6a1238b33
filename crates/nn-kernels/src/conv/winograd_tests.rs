//! Winograd minimal filtering against the exact path: in f64 the two agree to
//! rounding (so every index is right), in f32 within the bound stated below, and the
//! bits do not depend on the thread count.

use super::tests::{data, narrow};
use super::*;
use proptest::prelude::*;

/// A random Winograd-suited problem: 3×3 or 5×5 filter, stride 1, planes 1–19 cells a
/// side, padding 0–5 before and after (more than r − 1 included), both kernel modes,
/// 1–5 channels each side, 1–3 images, a padding value, a bias or none.
#[derive(Debug, Clone)]
struct Case {
    problem: ConvProblem,
    batch: usize,
    pad_value: f64,
    bias: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![3usize, 5]),
        [(1usize..20, 0usize..6, 0usize..6), (1usize..20, 0usize..6, 0usize..6)],
        any::<bool>(),
        (1usize..6, 1usize..6, 1usize..4),
        prop::sample::select(vec![0.0, 0.75, -2.0]),
        any::<bool>(),
    )
        .prop_filter_map("the padded input must hold the filter", |(r, dims, flip, sizes, pad_value, bias)| {
            let input = [dims[0].0, dims[1].0];
            let padding =
                [Padding { before: dims[0].1, after: dims[0].2 }, Padding { before: dims[1].1, after: dims[1].2 }];
            let mode = if flip { KernelMode::Convolution } else { KernelMode::CrossCorrelation };
            let geometry = ConvGeometry::new(&input, &[r, r], &[1, 1], &padding, OutputRounding::Strict, mode).ok()?;
            let (c_in, c_out, batch) = sizes;
            let problem = ConvProblem::new(geometry, c_in, c_out).unwrap().with_algorithm(ConvAlgorithm::Winograd);
            Some(Case { problem, batch, pad_value, bias })
        })
}

/// `(y, ∂x, ∂w)` of `problem` over the case's data, ∂w added to a non-zero start.
fn passes<T: Element>(case: &Case, problem: &ConvProblem, narrowed: fn(&[f64]) -> Vec<T>) -> [Vec<T>; 3] {
    let (p, batch) = (problem, case.batch);
    let x = narrowed(&data(batch * p.input_image_len(), 1));
    let w = narrowed(&data(p.weight_len(), 2));
    let b = narrowed(&data(p.out_channels(), 3));
    let dy = narrowed(&data(batch * p.output_image_len(), 4));
    let pad = T::from_f64(case.pad_value);
    let mut y = vec![T::from_f64(f64::NAN); dy.len()];
    conv_forward(p, batch, &x, &w, case.bias.then_some(&b[..]), pad, &mut y).unwrap();
    let mut dx = vec![T::from_f64(f64::NAN); x.len()];
    conv_backward_input(p, batch, &w, &dy, &mut dx).unwrap();
    let mut dw = narrowed(&data(p.weight_len(), 5));
    conv_backward_weight(p, batch, &x, &dy, pad, &mut dw).unwrap();
    [y, dx, dw]
}

fn exact(case: &Case) -> ConvProblem {
    case.problem.clone().with_algorithm(ConvAlgorithm::Exact)
}

fn f64s(values: &[f64]) -> Vec<f64> {
    values.to_vec()
}

/// Terms of the longest sum in each pass: the forward's and the input gradient's
/// `C·r²`, the weight gradient's `N·∏v` (plus the start value).
fn terms(case: &Case) -> [usize; 3] {
    let p = &case.problem;
    let g = p.geometry();
    let r2 = g.filter_len();
    [p.in_channels() * r2, p.out_channels() * r2, case.batch * g.output_len() + 1]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]

    /// In f64 the transforms' rounding is far below the comparison's 1e-11: a wrong
    /// tile origin, offset, flip or transform entry shows as an error of order 1.
    #[test]
    fn agrees_with_the_exact_path_in_f64(case in case()) {
        prop_assert!(case.problem.uses_winograd());
        let got = passes(&case, &case.problem, f64s);
        let want = passes(&case, &exact(&case), f64s);
        for ((what, got), want) in ["y", "dx", "dw"].iter().zip(&got).zip(&want) {
            prop_assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                prop_assert!((g - w).abs() <= 1e-11 * (1.0 + w.abs()), "{} cell {}: {} vs {}", what, i, g, w);
            }
        }
    }

    /// The stated bound in f32: within `4e-6·(terms + 1)·(1 + |exact|)` of the exact
    /// f64 result, ten times the exact f32 path's bound in `tests::assert_close`.
    #[test]
    fn stays_within_its_bound_in_f32(case in case()) {
        let got = passes(&case, &case.problem, narrow);
        let want = passes(&case, &exact(&case), f64s);
        for (((what, got), want), terms) in ["y", "dx", "dw"].iter().zip(&got).zip(&want).zip(terms(&case)) {
            for (i, (&g, w)) in got.iter().zip(want).enumerate() {
                let bound = 4e-6 * (terms as f64 + 1.0) * (1.0 + w.abs());
                prop_assert!((g as f64 - w).abs() <= bound, "{} cell {}: {} vs {}", what, i, g, w);
            }
        }
    }
}

/// Planes large enough that one image's tiles take several blocks, many channels, and
/// results bit-identical on one and two threads.
#[test]
fn blocks_within_an_image_and_threads_keep_the_bits() {
    for r in [3, 5] {
        let geometry = ConvGeometry::new(
            &[70, 75],
            &[r, r],
            &[1, 1],
            &[Padding::symmetric(r / 2); 2],
            OutputRounding::Strict,
            KernelMode::Convolution,
        )
        .unwrap();
        let problem = ConvProblem::new(geometry, 24, 40).unwrap().with_algorithm(ConvAlgorithm::Winograd);
        let case = Case { problem: problem.clone(), batch: 3, pad_value: 0.5, bias: true };
        let tiles = 70usize.div_ceil(4) * 75usize.div_ceil(4);
        assert!(tiles > 256, "one image must span several blocks of at most 256 tiles");
        let got = passes(&case, &problem, f64s);
        let want = passes(&case, &exact(&case), f64s);
        for (got, want) in got.iter().zip(&want) {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 1e-11 * (1.0 + w.abs()), "r = {r}: {g} vs {w}");
            }
        }
        let on = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| passes(&case, &problem, narrow))
        };
        let (one, two) = (on(1), on(2));
        for (a, b) in one.iter().zip(&two) {
            assert!(a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits()), "r = {r}: bits differ across threads");
        }
    }
}

#[test]
fn runs_only_where_asked_and_suited() {
    let plain = |filter: &[usize], stride: &[usize]| {
        let rank = filter.len();
        ConvGeometry::new(
            &vec![9; rank],
            filter,
            stride,
            &vec![Padding::symmetric(1); rank],
            OutputRounding::Floor,
            KernelMode::Convolution,
        )
        .unwrap()
    };
    let asked = |g: ConvGeometry, groups: usize| {
        ConvProblem::grouped(g, 4, 4, groups).unwrap().with_algorithm(ConvAlgorithm::Winograd).uses_winograd()
    };
    assert!(asked(plain(&[3, 3], &[1, 1]), 1));
    assert!(asked(plain(&[5, 5], &[1, 1]), 1));
    assert!(!ConvProblem::new(plain(&[3, 3], &[1, 1]), 4, 4).unwrap().uses_winograd(), "exact by default");
    assert!(!asked(plain(&[3, 3], &[2, 2]), 1), "stride 2");
    assert!(!asked(plain(&[3, 5], &[1, 1]), 1), "a 3×5 filter");
    assert!(!asked(plain(&[4, 4], &[1, 1]), 1), "a 4×4 filter");
    assert!(!asked(plain(&[3, 3], &[1, 1]), 2), "grouped");
    assert!(!asked(plain(&[3, 3, 3], &[1, 1, 1]), 1), "three dimensions");
    assert!(!asked(plain(&[3, 3], &[1, 1]).with_dilation(&[2, 2]).unwrap(), 1), "dilated");
}
