//! The direct path against the formula (forward) and the column path in f64 (input
//! gradient), over random geometry in one to three dimensions: odd channel counts that
//! leave lanes empty, rows that end in short tiles, strides, asymmetric padding, both
//! kernel modes; the forward pass and the input gradient in the tiles of every
//! instruction set this CPU has.

use super::super::columns::{backward_input_by_columns, backward_weight_by_columns};
use super::super::reference::conv_forward_reference;
use super::super::tests::{assert_close, data, narrow, Case};
use super::super::*;
use super::{on_tiles, TileSet};
use crate::simd::Avx2Fma;
use proptest::prelude::*;

/// The forward pass into NaNs, in the tiles of each instruction set this CPU has:
/// (instruction set, whether the path took it, the result).
fn forward_in_each(
    p: &ConvProblem,
    batch: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    pad: f32,
) -> Vec<(&'static str, bool, Vec<f32>)> {
    in_each(
        batch * p.output_image_len(),
        |tiles, y| on_tiles!(tiles, isa => super::forward_on(isa, p, x, w, bias, pad, y)),
    )
}

/// The input gradient, as [`forward_in_each`].
fn backward_input_in_each(p: &ConvProblem, batch: usize, w: &[f32], dy: &[f32]) -> Vec<(&'static str, bool, Vec<f32>)> {
    in_each(
        batch * p.input_image_len(),
        |tiles, dx| on_tiles!(tiles, isa => super::backward_input_on(isa, p, w, dy, dx)),
    )
}

fn in_each(len: usize, product: impl Fn(TileSet, &mut [f32]) -> bool) -> Vec<(&'static str, bool, Vec<f32>)> {
    let name = |tiles| match tiles {
        TileSet::Avx512(_) => "AVX-512",
        TileSet::Avx2(_) => "AVX2",
    };
    TileSet::all()
        .into_iter()
        .map(|tiles| {
            let mut out = vec![f32::NAN; len];
            let taken = product(tiles, &mut out);
            (name(tiles), taken, out)
        })
        .collect()
}

fn case() -> impl Strategy<Value = Case> {
    // Stride 1 most often: the input gradient takes the direct path only there.
    // Sizes shrink with the rank so that a volume stays a few hundred cells.
    let dims = (1usize..=3).prop_flat_map(|rank| {
        let size: usize = [40, 13, 7][rank - 1];
        let dim = (1usize..size, 1usize..5, prop::sample::select(vec![1usize, 1, 2, 3]), 0usize..4, 0usize..4);
        prop::collection::vec(dim, rank)
    });
    (
        dims,
        any::<bool>(),
        any::<bool>(),
        1usize..16,
        1usize..20,
        1usize..3,
        prop::sample::select(vec![0.0, 0.75]),
        any::<bool>(),
    )
        .prop_filter_map("geometry must be valid", |(dims, floor, flip, c_in, c_out, batch, pad_value, bias)| {
            let input: Vec<usize> = dims.iter().map(|d| d.0).collect();
            let filter: Vec<usize> = dims.iter().map(|d| d.1).collect();
            let stride: Vec<usize> = dims.iter().map(|d| d.2).collect();
            let padding: Vec<Padding> = dims.iter().map(|d| Padding { before: d.3, after: d.4 }).collect();
            let rounding = if floor { OutputRounding::Floor } else { OutputRounding::Strict };
            let mode = if flip { KernelMode::Convolution } else { KernelMode::CrossCorrelation };
            let geometry = ConvGeometry::new(&input, &filter, &stride, &padding, rounding, mode).ok()?;
            Some(Case { problem: ConvProblem::new(geometry, c_in, c_out).ok()?, batch, pad_value, bias })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn direct_forward_matches_the_formula(case in case()) {
        let p = &case.problem;
        let (x, w, b) = (data(case.batch * p.input_image_len(), 1), data(p.weight_len(), 2), data(p.out_channels(), 3));
        let bias = case.bias.then_some(&b[..]);
        let bias32 = bias.map(narrow);
        let suits = p.out_channels() >= 8 && p.in_channels() * p.geometry().filter_len() >= 64;
        let want = conv_forward_reference(p, case.batch, &x, &w, bias, case.pad_value);
        for (isa, taken, y) in forward_in_each(p, case.batch, &narrow(&x), &narrow(&w), bias32.as_deref(), case.pad_value as f32) {
            prop_assert_eq!(taken, suits, "{}", isa);
            if taken {
                assert_close(isa, &y, &want, p.in_channels() * p.geometry().filter_len())?;
            }
        }
    }

    #[test]
    fn direct_input_gradient_matches_the_column_path(case in case()) {
        let p = &case.problem;
        let (w, dy) = (data(p.weight_len(), 4), data(case.batch * p.output_image_len(), 5));
        let suits = p.in_channels() >= 8 && p.out_channels() * p.geometry().filter_len() >= 64;
        let g = p.geometry();
        let unit_stride = g.stride().iter().all(|&s| s == 1);
        let fits = (0..g.rank()).all(|d| g.padding()[d].before < g.filter()[d] && g.output()[d] <= g.input()[d] + g.padding()[d].before);
        let mut want = vec![f64::NAN; case.batch * p.input_image_len()];
        backward_input_by_columns(p, &w, &dy, &mut want);
        for (isa, taken, dx) in backward_input_in_each(p, case.batch, &narrow(&w), &narrow(&dy)) {
            prop_assert_eq!(taken, suits && unit_stride && fits, "{}", isa);
            if taken {
                assert_close(isa, &dx, &want, p.out_channels() * p.geometry().filter_len())?;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn direct_weight_gradient_matches_the_column_path(case in case(), chunk in 1usize..3) {
        let p = &case.problem;
        let (x, dy) = (data(case.batch * p.input_image_len(), 6), data(case.batch * p.output_image_len(), 7));
        let start = data(p.weight_len(), 8);
        let mut dw = narrow(&start);
        let taken = super::weight::backward_weight(p, case.batch, chunk, &narrow(&x), &narrow(&dy), case.pad_value as f32, &mut dw);
        let suits = p.out_channels() >= 8 && p.in_channels() * p.geometry().filter_len() >= 64;
        prop_assert_eq!(taken, Avx2Fma::detect().is_some() && suits);
        if taken {
            // Accumulated into what was there, as the column path does.
            let mut want = start.clone();
            backward_weight_by_columns(p, case.batch, chunk, &x, &dy, case.pad_value, &mut want).unwrap();
            let cells = case.batch * p.geometry().output_len();
            assert_close("weight gradient", &dw, &want, cells)?;
        }
    }
}

#[test]
fn the_direct_path_takes_t3_and_its_stride_one_input_gradients() {
    let Some(_) = Avx2Fma::detect() else { return };
    for (channels, size, stride) in [(16, 28, 1), (64, 7, 1), (32, 14, 2)] {
        let pad = [Padding::symmetric(1), Padding::symmetric(1)];
        let g = ConvGeometry::new(
            &[size, size],
            &[3, 3],
            &[stride, stride],
            &pad,
            OutputRounding::Floor,
            KernelMode::CrossCorrelation,
        )
        .unwrap();
        let p = ConvProblem::new(g, channels, channels).unwrap();
        let (x, w) = (vec![0.5; 2 * p.input_image_len()], vec![0.25; p.weight_len()]);
        let mut y = vec![0.0; 2 * p.output_image_len()];
        assert!(super::forward(&p, &x, &w, None, 0.0, &mut y));
        let mut dx = vec![0.0; x.len()];
        assert_eq!(super::backward_input(&p, &w, &y, &mut dx), stride == 1);
        let mut dw = vec![0.0; w.len()];
        assert!(super::backward_weight(&p, 2, 1, &x, &y, 0.0, &mut dw));
    }
}

#[test]
fn the_direct_path_takes_sequences_and_volumes_up_to_three_dimensions() {
    let Some(_) = Avx2Fma::detect() else { return };
    // C1's and C6's geometry at a smaller extent, and one rank past the path's.
    for (input, filter, taken) in
        [(vec![64], vec![9], true), (vec![4, 8, 8], vec![3, 3, 3], true), (vec![3, 3, 4, 4], vec![3, 3, 3, 3], false)]
    {
        let pad: Vec<Padding> = filter.iter().map(|&f| Padding::symmetric(f / 2)).collect();
        let stride = vec![1; input.len()];
        let g =
            ConvGeometry::new(&input, &filter, &stride, &pad, OutputRounding::Floor, KernelMode::Convolution).unwrap();
        let p = ConvProblem::new(g, 16, 32).unwrap();
        let (x, w) = (vec![0.5; 2 * p.input_image_len()], vec![0.25; p.weight_len()]);
        let mut y = vec![0.0; 2 * p.output_image_len()];
        assert_eq!(super::forward(&p, &x, &w, None, 0.0, &mut y), taken);
        let mut dx = vec![0.0; x.len()];
        assert_eq!(super::backward_input(&p, &w, &y, &mut dx), taken);
        let mut dw = vec![0.0; w.len()];
        assert_eq!(super::backward_weight(&p, 2, 1, &x, &y, 0.0, &mut dw), taken);
    }
}

#[test]
fn weight_gradients_of_large_planes_sum_strip_by_strip() {
    if Avx2Fma::detect().is_none() {
        return;
    }
    // 40 rows of 40 cells × 64 channels: the transposed gradient spans several strips.
    let pad = [Padding { before: 1, after: 2 }, Padding::symmetric(1)];
    let g =
        ConvGeometry::new(&[40, 40], &[3, 3], &[1, 2], &pad, OutputRounding::Floor, KernelMode::Convolution).unwrap();
    let p = ConvProblem::new(g, 8, 64).unwrap();
    let (x, dy) = (data(2 * p.input_image_len(), 9), data(2 * p.output_image_len(), 10));
    let mut dw = vec![0.0f32; p.weight_len()];
    assert!(super::weight::backward_weight(&p, 2, 1, &narrow(&x), &narrow(&dy), 0.5, &mut dw));
    let mut want = vec![0.0; p.weight_len()];
    backward_weight_by_columns(&p, 2, 1, &x, &dy, 0.5, &mut want).unwrap();
    let cells = 2 * p.geometry().output_len();
    for (i, (&got, &want)) in dw.iter().zip(&want).enumerate() {
        assert!((got as f64 - want).abs() <= 4e-7 * (cells as f64 + 1.0) * (1.0 + want.abs()), "{i}: {got} vs {want}");
    }
}
