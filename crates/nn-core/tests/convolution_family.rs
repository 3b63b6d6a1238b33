//! Dilated, grouped and transposed convolution layers: shapes, the transposed layer as
//! the adjoint of the convolution over random geometry, and their errors.

use nn_core::prelude::*;
use proptest::prelude::*;
use rand::Rng;

fn random_tensor(shape: &[usize], seed: u64) -> Tensor<f64> {
    let mut rng = seeded_rng(seed);
    let len = shape.iter().product();
    Tensor::from_vec(shape, (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect()).unwrap()
}

fn dot(a: &Tensor<f64>, b: &Tensor<f64>) -> f64 {
    a.data().iter().zip(b.data()).map(|(a, b)| a * b).sum()
}

#[test]
fn transposed_convolution_output_lengths() {
    let mut rng = seeded_rng(0);
    // C10's layer: 16³ → 32³ with a 2×2×2 filter at stride 2.
    let spec = ConvSpec::new(16, &[2, 2, 2]).stride(&[2, 2, 2]);
    let up = ConvTranspose::<f32>::new(&[32, 16, 16, 16], &spec, &mut rng).unwrap();
    assert_eq!(Layer::<f32>::output_shape(&up), &[16, 32, 32, 32]);
    assert_eq!(up.params()[0].value.shape(), &[32, 16, 2, 2, 2]);
    // (μ − 1)·s − 2p + d·(f − 1) + 1 + o: (7 − 1)·2 − 2 + 2·2 + 1 + 1 = 16.
    let spec = ConvSpec::new(1, &[3]).stride(&[2]).padding(&[1]).dilation(&[2]).output_padding(&[1]);
    let layer = ConvTranspose::<f32>::new(&[1, 7], &spec, &mut rng).unwrap();
    assert_eq!(Layer::<f32>::output_shape(&layer), &[1, 16]);
}

#[test]
fn strict_geometry_is_checked_with_the_dilated_extent() {
    // (7 − 2) / 2 is not whole, (7 − 3) / 2 is: a dilation-2 filter of 2 taps fits exactly.
    let spec = ConvSpec::new(1, &[2]).stride(&[2]).dilation(&[2]);
    let conv = Conv::<f32>::new(&[1, 7], &spec, &mut seeded_rng(0)).unwrap();
    assert_eq!(Layer::<f32>::output_shape(&conv), &[1, 3]);
}

#[test]
fn convolution_family_errors_are_clear() {
    let mut rng = seeded_rng(0);
    let refused = |result: Result<ConvTranspose<f32>, NnError>, needle: &str| {
        let message = result.unwrap_err().to_string();
        assert!(message.contains(needle), "{message}");
    };
    refused(ConvTranspose::new(&[2, 5], &ConvSpec::new(2, &[3]).stride(&[2]).output_padding(&[2]), &mut rng), "stride");
    refused(ConvTranspose::new(&[2, 5], &ConvSpec::new(2, &[3]).pad_value(1.0), &mut rng), "padding");
    refused(ConvTranspose::new(&[2, 1], &ConvSpec::new(2, &[1]).padding(&[1]), &mut rng), "output length");
    refused(ConvTranspose::new(&[3, 5], &ConvSpec::new(2, &[3]).groups(2), &mut rng), "groups");
    let conv = Conv::<f32>::new(&[2, 5], &ConvSpec::new(2, &[3]).output_padding(&[1]), &mut rng);
    assert!(conv.unwrap_err().to_string().contains("transposed"));
    let conv = Conv::<f32>::new(&[4, 5], &ConvSpec::new(6, &[3]).groups(4), &mut rng);
    assert!(conv.unwrap_err().to_string().contains("4 groups"));
    let conv = Conv::<f32>::new(&[4, 5], &ConvSpec::new(4, &[3]).dilation(&[3]), &mut rng);
    assert!(conv.unwrap_err().to_string().contains("extent 7"));
}

#[test]
fn pooling_over_copied_padding_counts_the_copies() {
    let x = Tensor::from_vec(&[1, 1, 3], vec![1.0f64, 5.0, 2.0]).unwrap();
    let pool = |kind, mode| {
        let mut layer =
            Pool::new(&[1, 3], PoolSpec::new(kind, &[3]).stride(&[1]).padding(&[1]).padding_mode(mode)).unwrap();
        let mut y = Tensor::default();
        layer.forward(&x, &mut y).unwrap();
        y.data().to_vec()
    };
    // Replicate: [1, 1, 5, 2, 2]; the constant is left out of the window.
    assert_eq!(pool(PoolKind::Average, PaddingMode::Replicate), [7.0 / 3.0, 8.0 / 3.0, 3.0]);
    assert_eq!(pool(PoolKind::Average, PaddingMode::Constant), [3.0, 8.0 / 3.0, 3.5]);
    // Reflect: [5, 1, 5, 2, 5]; circular: [2, 1, 5, 2, 1].
    assert_eq!(pool(PoolKind::Max, PaddingMode::Reflect), [5.0, 5.0, 5.0]);
    assert_eq!(pool(PoolKind::Average, PaddingMode::Circular), [8.0 / 3.0, 8.0 / 3.0, 8.0 / 3.0]);
}

/// Random N-d geometry (1–3 dimensions) of a convolution and its transposed twin.
fn geometry() -> impl Strategy<Value = (Vec<usize>, ConvSpec, usize)> {
    let dims = (1usize..=3)
        .prop_flat_map(|rank| prop::collection::vec((2usize..6, 1usize..4, 1usize..3, 0usize..2, 1usize..3), rank));
    (dims, 1usize..3, 1usize..3, 1usize..3, any::<bool>()).prop_map(|(dims, per_in, per_out, groups, flip)| {
        let input: Vec<usize> = dims.iter().map(|d| d.0).collect();
        let mode = if flip { KernelMode::Convolution } else { KernelMode::CrossCorrelation };
        let spec = ConvSpec::new(per_out * groups, &dims.iter().map(|d| d.1).collect::<Vec<_>>())
            .stride(&dims.iter().map(|d| d.2).collect::<Vec<_>>())
            .padding(&dims.iter().map(|d| d.3).collect::<Vec<_>>())
            .dilation(&dims.iter().map(|d| d.4).collect::<Vec<_>>())
            .rounding(OutputRounding::Floor)
            .mode(mode)
            .bias(false);
        let mut shape = vec![per_in * groups];
        shape.extend(input);
        (shape, spec.groups(groups), per_in * groups)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// ⟨conv(x), y⟩ = ⟨x, conv_transposed(y)⟩, the transposed layer sharing the
    /// convolution's weight and built from the same spec; its output padding makes it
    /// map back to the convolution's input length where Floor dropped cells.
    #[test]
    fn the_transposed_layer_is_the_adjoint((shape, spec, c_in) in geometry()) {
        let mut rng = seeded_rng(1);
        let conv = Conv::<f64>::new(&shape, &spec, &mut rng);
        // Geometry whose dilated filter exceeds the padded input is rejected, not tested.
        prop_assume!(conv.is_ok());
        let mut conv = conv.unwrap();
        let conv_out = Layer::<f64>::output_shape(&conv).to_vec();
        let geometry = conv.geometry().clone();
        // The input cells past the last window, which the transposed layer's output padding restores.
        let extra: Vec<usize> = (0..geometry.rank()).map(|d| {
            let p = geometry.padding()[d];
            let extent = geometry.dilation()[d] * (geometry.filter()[d] - 1) + 1;
            (geometry.input()[d] + p.before + p.after - extent) % geometry.stride()[d]
        }).collect();
        let transposed_spec = ConvSpec { out_channels: c_in, ..spec.clone() }.output_padding(&extra);
        let mut up = ConvTranspose::<f64>::new(&conv_out, &transposed_spec, &mut rng).unwrap();
        prop_assert_eq!(Layer::<f64>::output_shape(&up), &shape[..]);
        up.params_mut()[0].value = conv.params()[0].value.clone();

        let mut batch_shape = vec![2];
        batch_shape.extend(&shape);
        let x = random_tensor(&batch_shape, 2);
        let mut y_shape = vec![2];
        y_shape.extend(&conv_out);
        let y = random_tensor(&y_shape, 3);
        let (mut conv_x, mut up_y) = (Tensor::default(), Tensor::default());
        conv.forward(&x, &mut conv_x).unwrap();
        up.forward(&y, &mut up_y).unwrap();
        let (a, b) = (dot(&conv_x, &y), dot(&x, &up_y));
        prop_assert!((a - b).abs() < 1e-10 * (1.0 + a.abs()), "{} vs {}", a, b);
    }
}
