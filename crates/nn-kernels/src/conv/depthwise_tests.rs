//! The depthwise kernels in f32 (their AVX2 build where the CPU has it) against f64 on
//! the column path, over rows long enough for every step width and filter rows of 1
//! to 9 taps (the AVX2 build unrolls 1–7; 8 and 9 take the generic build).

use super::columns::{backward_input_by_columns, backward_weight_by_columns, forward_by_columns};
use super::tests::{assert_close, data, narrow};
use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct DepthwiseCase {
    problem: ConvProblem,
    batch: usize,
    pad_value: f64,
}

/// 1–3 dimensions; the last 8–70 cells long at stride 1 (mostly) with a filter 1–9
/// wide; the others short, with their own filter, stride, padding and dilation.
fn depthwise_case() -> impl Strategy<Value = DepthwiseCase> {
    let outer = prop::collection::vec((1usize..5, 1usize..4, 1usize..3, 0usize..2, 1usize..3), 0..3);
    let last = (8usize..70, 1usize..10, prop_oneof![4 => Just(1usize), 1 => 2usize..4], 0usize..4, 0usize..4);
    (outer, last, any::<bool>(), 2usize..5, 1usize..4, 1usize..3, prop::sample::select(vec![0.0, -0.5]))
        .prop_filter_map("geometry must be valid", |(outer, last, flip, channels, multiplier, batch, pad_value)| {
            let (len, filter, stride, before, after) = last;
            // Per outer dimension: length, filter, stride, padding on both sides, dilation.
            let dims = outer;
            let mut input: Vec<usize> = dims.iter().map(|d| d.0).collect();
            let mut filters: Vec<usize> = dims.iter().map(|d| d.1).collect();
            let mut strides: Vec<usize> = dims.iter().map(|d| d.2).collect();
            let mut padding: Vec<Padding> = dims.iter().map(|d| Padding { before: d.3, after: d.3 }).collect();
            let mut dilation: Vec<usize> = dims.iter().map(|d| d.4).collect();
            input.push(len);
            filters.push(filter);
            strides.push(stride);
            padding.push(Padding { before, after });
            dilation.push(1);
            let mode = if flip { KernelMode::Convolution } else { KernelMode::CrossCorrelation };
            let g = ConvGeometry::new(&input, &filters, &strides, &padding, OutputRounding::Floor, mode).ok()?;
            let g = g.with_dilation(&dilation).ok()?;
            let problem = ConvProblem::grouped(g, channels, channels * multiplier, channels).ok()?;
            Some(DepthwiseCase { problem, batch, pad_value })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn f32_depthwise_matches_f64_columns(case in depthwise_case()) {
        let (p, batch) = (&case.problem, case.batch);
        let (x, w) = (data(batch * p.input_image_len(), 51), data(p.weight_len(), 52));
        let (b, dy) = (data(p.out_channels(), 53), data(batch * p.output_image_len(), 54));
        let taps = p.geometry().filter_len();

        let mut want = vec![0.0; dy.len()];
        forward_by_columns(p, &x, &w, Some(&b), case.pad_value, &mut want);
        let mut got = vec![f32::NAN; dy.len()];
        conv_forward(p, batch, &narrow(&x), &narrow(&w), Some(&narrow(&b)), case.pad_value as f32, &mut got).unwrap();
        assert_close("forward", &got, &want, taps)?;

        let mut want = vec![0.0; x.len()];
        backward_input_by_columns(p, &w, &dy, &mut want);
        let mut got = vec![f32::NAN; x.len()];
        conv_backward_input(p, batch, &narrow(&w), &narrow(&dy), &mut got).unwrap();
        assert_close("input gradient", &got, &want, taps * (p.out_channels() / p.in_channels()))?;

        let mut want = vec![0.0; w.len()];
        backward_weight_by_columns(p, batch, 1, &x, &dy, case.pad_value, &mut want).unwrap();
        let mut got = vec![0.0f32; w.len()];
        conv_backward_weight(p, batch, &narrow(&x), &narrow(&dy), case.pad_value as f32, &mut got).unwrap();
        assert_close("weight gradient", &got, &want, batch * p.geometry().output_len())?;
    }
}
