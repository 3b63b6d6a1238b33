use super::columns::{backward_input_by_columns, backward_weight_by_columns, forward_by_columns};
use super::reference::conv_forward_reference;
use super::*;
use crate::GeometryError;
use proptest::prelude::*;

/// The geometries the implicit kernels take (given enough channels): more than one
/// tap (a single tap's column matrix is the image, or a gather of it), not dilated
/// (they read neighbouring taps).
fn implicit_suits(p: &ConvProblem) -> bool {
    p.geometry().filter_len() > 1 && p.geometry().is_undilated()
}

/// Whether this CPU runs the implicit-GEMM kernels.
fn implicit_available() -> bool {
    Avx512::detect().is_some()
}

/// The implicit forward pass alone; false where it does not apply (or without AVX-512).
fn implicit_forward(
    p: &ConvProblem,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    pad: f32,
    y: &mut [f32],
    writes: implicit::Writes,
) -> bool {
    Avx512::detect().is_some_and(|isa| implicit::forward(isa, p.implicit_plan(), x, w, b, pad, y, writes))
}

/// The implicit input gradient alone; false where it does not apply.
fn implicit_input(p: &ConvProblem, w: &[f32], dy: &[f32], dx: &mut [f32], writes: implicit::Writes) -> bool {
    Avx512::detect().is_some_and(|isa| implicit::backward_input(isa, p.implicit_plan(), p, w, dy, dx, writes))
}

pub(super) fn data(len: usize, seed: u64) -> Vec<f64> {
    (0..len).map(|i| (((i as u64 + 1) * 2654435761 + seed * 40503) % 2000) as f64 / 1000.0 - 1.0).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[derive(Debug, Clone)]
pub(super) struct Case {
    pub(super) problem: ConvProblem,
    pub(super) batch: usize,
    pub(super) pad_value: f64,
    pub(super) bias: bool,
}

/// Random geometry over 1–4 spatial dimensions, each dimension with its own length,
/// filter, stride, (asymmetric) padding and dilation (1 half the time); both rounding
/// modes and kernel modes; channel groups (one half the time).
pub(super) fn case() -> impl Strategy<Value = Case> {
    let dilation = prop_oneof![Just(1usize), 1usize..4];
    let dims = (1usize..=4).prop_flat_map(move |rank| {
        prop::collection::vec((1usize..7, 1usize..4, 1usize..4, 0usize..3, 0usize..3, dilation.clone()), rank)
    });
    (
        dims,
        any::<bool>(),
        any::<bool>(),
        (1usize..4, 1usize..4, prop_oneof![Just(1usize), 1usize..4]),
        1usize..4,
        prop::sample::select(vec![0.0, 0.75, -2.0]),
        any::<bool>(),
    )
        .prop_filter_map("geometry must be valid", |(dims, floor, flip, channels, batch, pad_value, bias)| {
            // Channel counts per group, and groups (1 half the time).
            let (per_in, per_out, groups) = channels;
            let (c_in, c_out) = (per_in * groups, per_out * groups);
            let input: Vec<usize> = dims.iter().map(|d| d.0).collect();
            let filter: Vec<usize> = dims.iter().map(|d| d.1).collect();
            let stride: Vec<usize> = dims.iter().map(|d| d.2).collect();
            let padding: Vec<Padding> = dims.iter().map(|d| Padding { before: d.3, after: d.4 }).collect();
            let rounding = if floor { OutputRounding::Floor } else { OutputRounding::Strict };
            let mode = if flip { KernelMode::Convolution } else { KernelMode::CrossCorrelation };
            let dilation: Vec<usize> = dims.iter().map(|d| d.5).collect();
            let geometry = ConvGeometry::new(&input, &filter, &stride, &padding, rounding, mode).ok()?;
            let geometry = geometry.with_dilation(&dilation).ok()?;
            // Keep each case small: the reference is a direct sum.
            (geometry.input_len() * geometry.filter_len() <= 4000).then_some(())?;
            Some(Case { problem: ConvProblem::grouped(geometry, c_in, c_out, groups).ok()?, batch, pad_value, bias })
        })
}

fn run_forward(case: &Case, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    let mut y = vec![f64::NAN; case.batch * case.problem.output_image_len()];
    conv_forward(&case.problem, case.batch, x, w, b, case.pad_value, &mut y).unwrap();
    y
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn forward_matches_the_formula(case in case()) {
        let p = &case.problem;
        let x = data(case.batch * p.input_image_len(), 1);
        let w = data(p.weight_len(), 2);
        let b = data(p.out_channels(), 3);
        let bias = case.bias.then_some(&b[..]);
        let fast = run_forward(&case, &x, &w, bias);
        let slow = conv_forward_reference(p, case.batch, &x, &w, bias, case.pad_value);
        for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
            prop_assert!((f - s).abs() < 1e-12, "cell {}: {} vs {}", i, f, s);
        }
    }

    // The backward kernels are the adjoints of the forward map:
    //   <conv_x(x), dy> = <x, ∂x>        (padding value 0 and no bias: linear in x)
    //   <conv_w(w), dy> = <w, ∂w>        (linear in w, with x′ holding the padding value)
    //   <b broadcast, dy> = <b, ∂b>
    #[test]
    fn backward_is_the_adjoint(case in case()) {
        let p = &case.problem;
        let x = data(case.batch * p.input_image_len(), 4);
        let w = data(p.weight_len(), 5);
        let b = data(p.out_channels(), 7);
        let dy = data(case.batch * p.output_image_len(), 6);

        let linear = Case { pad_value: 0.0, ..case.clone() };
        let y = run_forward(&linear, &x, &w, None);
        let mut dx = vec![f64::NAN; x.len()];
        conv_backward_input(p, case.batch, &w, &dy, &mut dx).unwrap();
        prop_assert!((dot(&y, &dy) - dot(&x, &dx)).abs() < 1e-9 * (1.0 + dot(&y, &dy).abs()));

        let y = run_forward(&case, &x, &w, None);
        let mut dw = vec![0.0; w.len()];
        conv_backward_weight(p, case.batch, &x, &dy, case.pad_value, &mut dw).unwrap();
        prop_assert!((dot(&y, &dy) - dot(&w, &dw)).abs() < 1e-9 * (1.0 + dot(&y, &dy).abs()));

        let zero_w = vec![0.0; w.len()];
        let y_b = run_forward(&Case { pad_value: 0.0, ..case.clone() }, &x, &zero_w, Some(&b));
        let mut db = vec![0.0; b.len()];
        conv_backward_bias(p, case.batch, &dy, &mut db).unwrap();
        prop_assert!((dot(&y_b, &dy) - dot(&b, &db)).abs() < 1e-9 * (1.0 + dot(&y_b, &dy).abs()));
    }

    // The transposed convolution is the adjoint of the convolution in its input,
    // <conv(x), y> = <x, convᵀ(y)>, and its bias gradient that of its bias.
    #[test]
    fn transposed_convolution_is_the_adjoint(case in case()) {
        let p = &case.problem;
        let x = data(case.batch * p.input_image_len(), 8);
        let w = data(p.weight_len(), 9);
        let y = data(case.batch * p.output_image_len(), 10);
        let conv_x = run_forward(&Case { pad_value: 0.0, ..case.clone() }, &x, &w, None);
        let mut transposed = vec![f64::NAN; x.len()];
        conv_transpose_forward(p, case.batch, &y, &w, None, &mut transposed).unwrap();
        prop_assert!((dot(&conv_x, &y) - dot(&x, &transposed)).abs() < 1e-9 * (1.0 + dot(&conv_x, &y).abs()));

        let b = data(p.in_channels(), 11);
        let zero_w = vec![0.0; w.len()];
        conv_transpose_forward(p, case.batch, &y, &zero_w, Some(&b), &mut transposed).unwrap();
        let mut db = vec![0.0; b.len()];
        conv_transpose_backward_bias(p, case.batch, &x, &mut db).unwrap();
        prop_assert!((dot(&transposed, &x) - dot(&b, &db)).abs() < 1e-9 * (1.0 + dot(&b, &db).abs()));
    }
}

fn problem_1d(input: usize, filter: usize, stride: usize, pad: usize, mode: KernelMode) -> ConvProblem {
    let g = ConvGeometry::new(&[input], &[filter], &[stride], &[Padding::symmetric(pad)], OutputRounding::Strict, mode)
        .unwrap();
    ConvProblem::new(g, 1, 1).unwrap()
}

#[test]
fn source_convolution_flips_the_filter() {
    // y_β = Σ_α x_{β + f − 1 − α} w_α: with w = [1, 2, 3] and x = [1, 0, 0, 0], the
    // true convolution gives y_0 = x_0·w_2 = 3; cross-correlation gives y_0 = x_0·w_0 = 1.
    let x = [1.0, 0.0, 0.0, 0.0];
    let w = [1.0, 2.0, 3.0];
    let mut y = [0.0; 2];
    conv_forward(&problem_1d(4, 3, 1, 0, KernelMode::Convolution), 1, &x, &w, None, 0.0, &mut y).unwrap();
    assert_eq!(y, [3.0, 0.0]);
    conv_forward(&problem_1d(4, 3, 1, 0, KernelMode::CrossCorrelation), 1, &x, &w, None, 0.0, &mut y).unwrap();
    assert_eq!(y, [1.0, 0.0]);
}

#[test]
fn padding_value_reaches_weight_gradient_not_input_gradient() {
    // Input [1, 1], filter 3, padding 1 with value v = 5: x′ = [5, 1, 1, 5], v = 2 outputs.
    let p = problem_1d(2, 3, 1, 1, KernelMode::CrossCorrelation);
    let (x, w, dy) = ([1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0]);
    let mut dw = [0.0; 3];
    conv_backward_weight(&p, 1, &x, &dy, 5.0, &mut dw).unwrap();
    // ∂w_α = Σ_β dy_β x′_{β+α}: α=0: 5+1, α=1: 1+1, α=2: 1+5.
    assert_eq!(dw, [6.0, 2.0, 6.0]);
    let w_ones = [1.0, 1.0, 1.0];
    let mut dx = [0.0; 2];
    conv_backward_input(&p, 1, &w_ones, &dy, &mut dx).unwrap();
    // Each input cell is in both windows; padding cells are dropped whatever v is.
    assert_eq!(dx, [2.0, 2.0]);
    let mut y = [0.0; 2];
    conv_forward(&p, 1, &x, &w_ones, None, 5.0, &mut y).unwrap();
    assert_eq!(y, [7.0, 7.0]);
    let _ = w;
}

#[test]
fn dilation_spaces_the_taps() {
    // Cross-correlation, f = 3, d = 2: y[β] = x[β]·w[0] + x[β + 2]·w[1] + x[β + 4]·w[2].
    let x: Vec<f64> = (1..=7).map(f64::from).collect();
    let w = [1.0, 10.0, 100.0];
    for (mode, expected) in
        [(KernelMode::CrossCorrelation, [531.0, 642.0, 753.0]), (KernelMode::Convolution, [135.0, 246.0, 357.0])]
    {
        let g = ConvGeometry::new(&[7], &[3], &[1], &[Padding::default()], OutputRounding::Strict, mode).unwrap();
        let g = g.with_dilation(&[2]).unwrap();
        assert_eq!(g.output(), &[3]);
        let mut y = vec![0.0; 3];
        conv_forward(&ConvProblem::new(g, 1, 1).unwrap(), 1, &x, &w, None, 0.0, &mut y).unwrap();
        assert_eq!(y, expected, "{mode:?}");
    }
    let g = ConvGeometry::new(
        &[5, 5],
        &[3, 2],
        &[1, 1],
        &[Padding::default(); 2],
        OutputRounding::Strict,
        KernelMode::Convolution,
    )
    .unwrap();
    assert_eq!(g.with_dilation(&[1, 0]).unwrap_err(), GeometryError::Zero { what: "dilation", dim: 1 });
    assert_eq!(g.with_dilation(&[3, 1]).unwrap_err(), GeometryError::FilterTooLarge { dim: 0, filter: 7, padded: 5 });
    assert_eq!(
        g.with_dilation(&[2]).unwrap_err(),
        GeometryError::RankMismatch { what: "dilation", expected: 2, got: 1 }
    );
    assert_eq!(g.with_dilation(&[2, 4]).unwrap().output(), &[1, 1]);
}

#[test]
fn geometry_errors_name_the_dimension() {
    let pad = [Padding::default(); 2];
    let e = ConvGeometry::new(&[5, 5], &[2, 2], &[1, 2], &pad, OutputRounding::Strict, KernelMode::Convolution)
        .unwrap_err();
    assert_eq!(
        e,
        GeometryError::NotDivisible {
            dim: 1,
            input: 5,
            pad_before: 0,
            pad_after: 0,
            filter: 2,
            stride: 2,
            remainder: 1
        }
    );
    let g = ConvGeometry::new(&[5, 5], &[2, 2], &[1, 2], &pad, OutputRounding::Floor, KernelMode::Convolution).unwrap();
    assert_eq!(g.output(), &[4, 2]);
    let e =
        ConvGeometry::new(&[5, 2], &[2, 4], &[1, 1], &pad, OutputRounding::Floor, KernelMode::Convolution).unwrap_err();
    assert_eq!(e, GeometryError::FilterTooLarge { dim: 1, filter: 4, padded: 2 });
    let e =
        ConvGeometry::new(&[5, 2], &[2, 1], &[1, 0], &pad, OutputRounding::Floor, KernelMode::Convolution).unwrap_err();
    assert_eq!(e, GeometryError::Zero { what: "stride", dim: 1 });
    let e =
        ConvGeometry::new(&[5], &[2, 1], &[1, 1], &pad, OutputRounding::Floor, KernelMode::Convolution).unwrap_err();
    assert_eq!(e, GeometryError::RankMismatch { what: "filter", expected: 1, got: 2 });
    let e = ConvGeometry::new(
        &[usize::MAX, 2],
        &[1, 1],
        &[1, 1],
        &[Padding::symmetric(1); 2],
        OutputRounding::Floor,
        KernelMode::Convolution,
    )
    .unwrap_err();
    assert_eq!(e, GeometryError::Overflow { what: "padded input length" });
}

#[test]
fn weight_gradient_is_bit_identical_across_thread_counts() {
    let g = ConvGeometry::new(
        &[9, 9],
        &[3, 3],
        &[1, 1],
        &[Padding::symmetric(1); 2],
        OutputRounding::Strict,
        KernelMode::Convolution,
    )
    .unwrap();
    let p = ConvProblem::new(g, 3, 4).unwrap();
    let batch = 13;
    let x: Vec<f32> = data(batch * p.input_image_len(), 8).into_iter().map(|v| v as f32).collect();
    let dy: Vec<f32> = data(batch * p.output_image_len(), 9).into_iter().map(|v| v as f32).collect();
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut dw = vec![0.0f32; p.weight_len()];
        pool.install(|| conv_backward_weight(&p, batch, &x, &dy, 0.5, &mut dw)).unwrap();
        dw
    };
    assert_eq!(run(1), run(2));
    assert_eq!(run(1), run(4));
}

// A single tap at a stride (T3's shortcuts) runs faster as a gather and a GEMM than in
// vectors holding every other cell of a row; three taps at the same stride stay, but
// for an input gradient whose classes' rows fill at most half a vector (7 of 16 cells
// at stride 2 over 14, T3's stage-3 entry), which also runs faster as a GEMM.
#[test]
fn single_tap_filters_and_narrow_strided_classes_leave_the_implicit_kernels() {
    for (width, filter, pad, stride) in [(14, 1, 0, 2), (14, 1, 0, 1), (14, 1, 1, 3), (14, 3, 1, 2), (40, 3, 1, 2)] {
        let pads = [Padding::symmetric(pad); 2];
        let g = ConvGeometry::new(
            &[14, width],
            &[filter; 2],
            &[stride; 2],
            &pads,
            OutputRounding::Floor,
            KernelMode::Convolution,
        )
        .unwrap();
        let p = ConvProblem::new(g, 32, 64).unwrap();
        let (x, w) = (narrow(&data(2 * p.input_image_len(), 31)), narrow(&data(p.weight_len(), 32)));
        let (mut y, dy, mut dx) =
            (vec![0.0; 2 * p.output_image_len()], vec![0.25; 2 * p.output_image_len()], vec![0.0; x.len()]);
        let writes = implicit::Writes::Direct;
        let taken =
            (implicit_forward(&p, &x, &w, None, 0.0, &mut y, writes), implicit_input(&p, &w, &dy, &mut dx, writes));
        let expected = implicit_available() && filter > 1;
        let narrow_classes = stride > 1 && width == 14;
        assert_eq!(implicit::narrow_classes(&p), narrow_classes, "{width} wide, stride {stride}");
        let what = format!("{filter}×{filter}, stride {stride}, pad {pad}, {width} wide");
        assert_eq!(taken, (expected, expected && !narrow_classes), "{what}");
        assert_eq!(p.implicit_plan().has_forward_or_weight(), filter > 1, "{what}");
    }
}

#[test]
fn implicit_weight_gradient_is_bit_identical_across_thread_counts() {
    // 9×20 output cells: more than one block of cells; 40 channels: a partial vector.
    let g = ConvGeometry::new(
        &[9, 40],
        &[3, 3],
        &[1, 2],
        &[Padding::symmetric(1); 2],
        OutputRounding::Floor,
        KernelMode::Convolution,
    )
    .unwrap();
    let p = ConvProblem::new(g, 3, 40).unwrap();
    let batch = 13;
    let (x, dy) = (data(batch * p.input_image_len(), 22), data(batch * p.output_image_len(), 23));
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut dw = vec![0.0f32; p.weight_len()];
        pool.install(|| conv_backward_weight(&p, batch, &narrow(&x), &narrow(&dy), 0.5, &mut dw)).unwrap();
        dw
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
    let mut want = vec![0.0; p.weight_len()];
    backward_weight_by_columns(&p, batch, 2, &x, &dy, 0.5, &mut want).unwrap();
    assert_close("weight gradient", &one, &want, batch * p.geometry().output_len()).unwrap();
}

#[test]
fn weight_gradient_in_strips_of_three_taps_matches_the_column_path() {
    // 3×3 filters at stride 1 over 4 channels: 36 taps in rising (cross-correlation)
    // or falling (convolution) strips of three; 32 channels: tiles of two vectors × 12.
    for (mode, direction) in [
        (KernelMode::CrossCorrelation, implicit::Direction::Rising),
        (KernelMode::Convolution, implicit::Direction::Falling),
    ] {
        let g =
            ConvGeometry::new(&[7, 19], &[3, 3], &[1, 1], &[Padding::symmetric(1); 2], OutputRounding::Strict, mode)
                .unwrap();
        let p = ConvProblem::new(g, 4, 32).unwrap();
        assert_eq!(implicit::strip_direction(&implicit::forward_offsets(&p)), Some(direction));
        let batch = 3;
        let (x, dy) = (data(batch * p.input_image_len(), 24), data(batch * p.output_image_len(), 25));
        let mut dw = vec![0.0f32; p.weight_len()];
        conv_backward_weight(&p, batch, &narrow(&x), &narrow(&dy), 0.25, &mut dw).unwrap();
        let mut want = vec![0.0; p.weight_len()];
        backward_weight_by_columns(&p, batch, 1, &x, &dy, 0.25, &mut want).unwrap();
        assert_close("weight gradient", &dw, &want, batch * p.geometry().output_len()).unwrap();
    }
}

#[test]
fn buffer_length_errors() {
    let p = problem_1d(4, 3, 1, 0, KernelMode::Convolution);
    let mut y = [0.0f32; 3];
    let e = conv_forward(&p, 1, &[0.0; 4], &[0.0; 3], None, 0.0, &mut y).unwrap_err();
    assert_eq!(e, KernelError::BufferLength { what: "conv forward: y", expected: 2, got: 3 });
}

/// Geometries for the implicit-GEMM kernels (strides 1 to 3, so that some residue
/// classes of the input gradient have no tap), with channel counts across several
/// micro-tile heights and rows across several segments.
fn implicit_case() -> impl Strategy<Value = Case> {
    let outer = (1usize..7, 1usize..4, 1usize..3, 0usize..4, 0usize..4);
    let dims = (0usize..=2).prop_flat_map(move |outer_rank| {
        (prop::collection::vec(outer.clone(), outer_rank), (1usize..40, 1usize..6, 0usize..5, 0usize..3, 1usize..4))
    });
    (
        dims,
        any::<bool>(),
        any::<bool>(),
        1usize..9,
        1usize..30,
        1usize..3,
        prop::sample::select(vec![0.0, 0.75]),
        any::<bool>(),
    )
        .prop_filter_map(
            "geometry must be valid",
            move |((outer, last), floor, flip, c_in, c_out, batch, pad_value, bias)| {
                let input: Vec<usize> = outer.iter().map(|d| d.0).chain([last.0]).collect();
                let filter: Vec<usize> = outer.iter().map(|d| d.1).chain([last.1]).collect();
                let strides: Vec<usize> = outer.iter().map(|d| d.2).chain([last.4]).collect();
                let padding: Vec<Padding> = outer
                    .iter()
                    .map(|d| Padding { before: d.3, after: d.4 })
                    .chain([Padding { before: last.2, after: last.3 }])
                    .collect();
                let rounding = if floor { OutputRounding::Floor } else { OutputRounding::Strict };
                let mode = if flip { KernelMode::Convolution } else { KernelMode::CrossCorrelation };
                let geometry = ConvGeometry::new(&input, &filter, &strides, &padding, rounding, mode).ok()?;
                (geometry.input_len() * geometry.filter_len() <= 6000).then_some(())?;
                Some(Case { problem: ConvProblem::new(geometry, c_in, c_out).ok()?, batch, pad_value, bias })
            },
        )
}

pub(super) fn narrow(values: &[f64]) -> Vec<f32> {
    values.iter().map(|&v| v as f32).collect()
}

/// f32 results against f64 ones: each is a sum of `terms` products of values in [−1, 1].
pub(super) fn assert_close(what: &str, got: &[f32], want: &[f64], terms: usize) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tolerance = 4e-7 * (terms as f64 + 1.0) * (1.0 + w.abs());
        prop_assert!((g as f64 - w).abs() <= tolerance, "{} cell {}: {} vs {}", what, i, g, w);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    // On a CPU with AVX-512 these run the implicit-GEMM kernels, elsewhere the column
    // path; either way f32 must agree with the f64 definition.
    #[test]
    fn f32_forward_matches_the_formula(case in implicit_case()) {
        let p = &case.problem;
        let x = data(case.batch * p.input_image_len(), 11);
        let w = data(p.weight_len(), 12);
        let b = data(p.out_channels(), 13);
        let bias = case.bias.then_some(&b[..]);
        let slow = conv_forward_reference(p, case.batch, &x, &w, bias, case.pad_value);
        let mut y = vec![f32::NAN; slow.len()];
        let (x32, w32, b32) = (narrow(&x), narrow(&w), narrow(&b));
        conv_forward(p, case.batch, &x32, &w32, case.bias.then_some(&b32[..]), case.pad_value as f32, &mut y).unwrap();
        assert_close("forward", &y, &slow, p.col_rows())?;
        prop_assert_eq!(
            implicit_forward(p, &x32, &w32, None, 0.0, &mut y.clone(), implicit::Writes::Direct),
            implicit_available() && implicit_suits(p) && p.out_channels() >= implicit::MIN_ROWS
        );
    }

    // Streaming changes where the stores land first, not the arithmetic: the output
    // must be the direct one to the bit, for bands from one cell to the whole image.
    #[test]
    fn streamed_outputs_are_the_direct_ones(case in implicit_case(), band_bytes in 1usize..2000) {
        let p = &case.problem;
        let x = narrow(&data(case.batch * p.input_image_len(), 16));
        let w = narrow(&data(p.weight_len(), 17));
        let b = narrow(&data(p.out_channels(), 18));
        let bias = case.bias.then_some(&b[..]);
        let pad = case.pad_value as f32;
        let len = case.batch * p.output_image_len();
        let (mut direct, mut streamed) = (vec![f32::NAN; len], vec![f32::NAN; len]);
        let ran = implicit_forward(p, &x, &w, bias, pad, &mut direct, implicit::Writes::Direct);
        let writes = implicit::Writes::Streamed { band_bytes };
        prop_assert_eq!(ran, implicit_forward(p, &x, &w, bias, pad, &mut streamed, writes));
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&direct), bits(&streamed));
    }

    // As for the forward pass: streamed input gradients (by bands at stride 1, by
    // planes at a stride) are the direct ones to the bit.
    #[test]
    fn streamed_input_gradients_are_the_direct_ones(case in implicit_case(), band_bytes in 1usize..2000) {
        let p = &case.problem;
        let w = narrow(&data(p.weight_len(), 25));
        let dy = narrow(&data(case.batch * p.output_image_len(), 26));
        let len = case.batch * p.input_image_len();
        let (mut direct, mut streamed) = (vec![f32::NAN; len], vec![f32::NAN; len]);
        let ran = implicit_input(p, &w, &dy, &mut direct, implicit::Writes::Direct);
        let writes = implicit::Writes::Streamed { band_bytes };
        prop_assert_eq!(ran, implicit_input(p, &w, &dy, &mut streamed, writes));
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&direct), bits(&streamed));
    }

    #[test]
    fn f32_input_gradient_matches_the_column_path(case in implicit_case()) {
        let p = &case.problem;
        let w = data(p.weight_len(), 14);
        let dy = data(case.batch * p.output_image_len(), 15);
        let mut want = vec![f64::NAN; case.batch * p.input_image_len()];
        backward_input_by_columns(p, &w, &dy, &mut want);
        let mut dx = vec![f32::NAN; want.len()];
        conv_backward_input(p, case.batch, &narrow(&w), &narrow(&dy), &mut dx).unwrap();
        assert_close("input gradient", &dx, &want, p.out_channels() * p.geometry().filter_len())?;
        prop_assert_eq!(
            implicit_input(p, &narrow(&w), &narrow(&dy), &mut dx, implicit::Writes::Direct),
            implicit_available()
                && implicit_suits(p)
                && p.in_channels() >= implicit::MIN_ROWS
                && !implicit::narrow_classes(p)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    // Any strides: the weight-gradient kernel reads taps one by one.
    #[test]
    fn f32_weight_gradient_matches_the_column_path(case in case().prop_flat_map(|case| (Just(case), 1usize..80))) {
        let (case, c_out) = case;
        let p = &ConvProblem::new(case.problem.geometry().clone(), case.problem.in_channels(), c_out).unwrap();
        let x = data(case.batch * p.input_image_len(), 19);
        let dy = data(case.batch * p.output_image_len(), 20);
        let start = data(p.weight_len(), 21);
        let per_chunk = case.batch.div_ceil(WEIGHT_GRADIENT_CHUNKS.min(case.batch));
        let mut want = start.clone();
        backward_weight_by_columns(p, case.batch, per_chunk, &x, &dy, case.pad_value, &mut want).unwrap();
        let mut dw = narrow(&start);
        conv_backward_weight(p, case.batch, &narrow(&x), &narrow(&dy), case.pad_value as f32, &mut dw).unwrap();
        assert_close("weight gradient", &dw, &want, case.batch * p.geometry().output_len())?;
        prop_assert_eq!(
            Avx512::detect().is_some_and(|isa| implicit::backward_weight(
                isa, p.implicit_plan(), p, case.batch, per_chunk, &narrow(&x), &narrow(&dy), 0.0, &mut dw
            )),
            implicit_available() && implicit_suits(p) && c_out >= implicit::MIN_CHANNELS
        );
    }
}

#[test]
fn f32_weight_gradient_of_many_taps_matches_the_column_path() {
    // More taps than one task of the chunk sums adds (5 × 5 × 12 = 300) and two
    // groups of output channels (70): shapes the random cases above do not reach.
    let g = ConvGeometry::new(
        &[9, 11],
        &[5, 5],
        &[1, 2],
        &[Padding::symmetric(2); 2],
        OutputRounding::Floor,
        KernelMode::Convolution,
    )
    .unwrap();
    let (batch, p) = (3, ConvProblem::new(g, 12, 70).unwrap());
    let (x, dy, start) =
        (data(batch * p.input_image_len(), 22), data(batch * p.output_image_len(), 23), data(p.weight_len(), 24));
    let per_chunk = batch.div_ceil(WEIGHT_GRADIENT_CHUNKS.min(batch));
    let mut want = start.clone();
    backward_weight_by_columns(&p, batch, per_chunk, &x, &dy, 0.5, &mut want).unwrap();
    let mut dw = narrow(&start);
    conv_backward_weight(&p, batch, &narrow(&x), &narrow(&dy), 0.5, &mut dw).unwrap();
    assert_close("weight gradient", &dw, &want, batch * p.geometry().output_len()).unwrap();
}

#[test]
fn f32_column_path_matches_the_formula_too() {
    // The path every CPU without AVX-512 takes, run here on purpose.
    let g = ConvGeometry::new(
        &[9, 13],
        &[3, 5],
        &[1, 1],
        &[Padding::symmetric(2); 2],
        OutputRounding::Floor,
        KernelMode::Convolution,
    )
    .unwrap();
    let p = ConvProblem::new(g, 3, 14).unwrap();
    let batch = 2;
    let (x, w, b) = (data(batch * p.input_image_len(), 16), data(p.weight_len(), 17), data(14, 18));
    let slow = conv_forward_reference(&p, batch, &x, &w, Some(&b), 0.5);
    let mut y = vec![f32::NAN; slow.len()];
    forward_by_columns(&p, &narrow(&x), &narrow(&w), Some(&narrow(&b)), 0.5, &mut y);
    assert_close("forward", &y, &slow, p.col_rows()).unwrap();
}

/// CI sets `NN_REQUIRE_AVX512` on machines with AVX-512: there, the implicit kernels
/// must take every pass of a typical layer, not silently fall back to the columns.
#[test]
fn required_fast_paths_are_taken() {
    if std::env::var_os("NN_REQUIRE_AVX512").is_none_or(|v| v == "0") {
        return;
    }
    let g = ConvGeometry::new(
        &[14, 14],
        &[5, 5],
        &[1, 1],
        &[Padding::symmetric(2); 2],
        OutputRounding::Strict,
        KernelMode::Convolution,
    )
    .unwrap();
    let (batch, p) = (2, ConvProblem::new(g, 32, 64).unwrap());
    let x = narrow(&data(batch * p.input_image_len(), 30));
    let w = narrow(&data(p.weight_len(), 31));
    let dy = narrow(&data(batch * p.output_image_len(), 32));
    let isa = Avx512::detect().expect("NN_REQUIRE_AVX512 is set but AVX-512F was not detected");
    let plan = p.implicit_plan();
    let mut y = vec![0.0; dy.len()];
    assert!(implicit::forward(isa, plan, &x, &w, None, 0.0, &mut y, implicit::Writes::Direct), "forward");
    let mut dx = vec![0.0; x.len()];
    assert!(implicit::backward_input(isa, plan, &p, &w, &dy, &mut dx, implicit::Writes::Direct), "input gradient");
    let mut dw = vec![0.0; w.len()];
    assert!(implicit::backward_weight(isa, plan, &p, batch, 1, &x, &dy, 0.0, &mut dw), "weight gradient");
}

/// The depthwise path in f32 (its AVX2 build where the CPU has it) against the column
/// path, in two and three dimensions, at strides 1 and 2, with a channel multiplier;
/// rows long enough for every step width of the AVX2 build, and for its single cells.
#[test]
fn f32_depthwise_matches_the_column_path() {
    let cases = [(vec![9usize, 11], 1usize), (vec![10, 7], 2), (vec![5, 6, 7], 1), (vec![6, 5, 8], 2)];
    for (input, stride) in cases.into_iter().chain([(vec![3, 70], 1), (vec![2, 50], 1), (vec![2, 43], 1)]) {
        let rank = input.len();
        let pad = vec![Padding { before: 1, after: 2 }; rank];
        let g = ConvGeometry::new(
            &input,
            &vec![3; rank],
            &vec![stride; rank],
            &pad,
            OutputRounding::Floor,
            KernelMode::Convolution,
        )
        .unwrap();
        let p = ConvProblem::grouped(g, 6, 12, 6).unwrap();
        let batch = 3;
        let x = narrow(&data(batch * p.input_image_len(), 1));
        let w = narrow(&data(p.weight_len(), 2));
        let b = narrow(&data(12, 3));
        let dy = narrow(&data(batch * p.output_image_len(), 4));
        let pad_value = 0.5f32;

        let (mut fast, mut slow) = (vec![0.0f32; dy.len()], vec![0.0f32; dy.len()]);
        conv_forward(&p, batch, &x, &w, Some(&b), pad_value, &mut fast).unwrap();
        forward_by_columns(&p, &x, &w, Some(&b), pad_value, &mut slow);
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs()));
        assert!(close(&fast, &slow), "forward {input:?} stride {stride}");

        let (mut fast, mut slow) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
        conv_backward_input(&p, batch, &w, &dy, &mut fast).unwrap();
        backward_input_by_columns(&p, &w, &dy, &mut slow);
        assert!(close(&fast, &slow), "input gradient {input:?} stride {stride}");

        let (mut fast, mut slow) = (vec![0.0f32; w.len()], vec![0.0f32; w.len()]);
        conv_backward_weight(&p, batch, &x, &dy, pad_value, &mut fast).unwrap();
        backward_weight_by_columns(&p, batch, 2, &x, &dy, pad_value, &mut slow).unwrap();
        assert!(close(&fast, &slow), "weight gradient {input:?} stride {stride}");
    }
}

#[test]
fn the_direct_path_goes_first_on_rows_shorter_than_a_vector() {
    // T3's stage-3 and stage-2 planes, against stage 1's and a long sequence.
    assert!(direct_goes_first(&[7, 7]) && direct_goes_first(&[14, 14]));
    assert!(!direct_goes_first(&[28, 28]) && !direct_goes_first(&[1024]) && !direct_goes_first(&[]));
}
