//! Networks of the benchmark recipes (shared/BENCHMARKS.md), built ready to train,
//! so that the example, the benchmarks and the tests run the same graph.

use nn_core::prelude::*;
use nn_core::NodeId;

/// A convolution without bias, He-normal over the fan-out, rounding strided outputs
/// down and orienting the filter as PyTorch does (cross-correlation): the ResNet
/// papers' convention.
fn resnet_conv(channels: usize, filter: usize, stride: usize) -> ConvSpec {
    let pad = filter / 2;
    ConvSpec::new(channels, &[filter, filter])
        .stride(&[stride, stride])
        .padding(&[pad, pad])
        .bias(false)
        .init(Init::HeNormalFanOut)
        .mode(KernelMode::CrossCorrelation)
        .rounding(OutputRounding::Floor)
}

/// A basic residual block: conv 3×3 → BN → ReLU → conv 3×3 → BN, plus the shortcut
/// (the input itself, or a strided 1×1 convolution and BN where the shape changes),
/// then ReLU.
pub fn basic_block<T: Element>(g: &mut GraphBuilder<T>, x: NodeId, channels: usize, stride: usize) -> NodeId {
    let h = g.conv("conv1", x, resnet_conv(channels, 3, stride));
    let h = g.batch_norm("bn1", h);
    let h = g.relu("relu1", h);
    let h = g.conv("conv2", h, resnet_conv(channels, 3, 1));
    let h = g.batch_norm("bn2", h);
    let shortcut = if stride != 1 || g.shape(x)[0] != channels {
        let s = g.conv("shortcut", x, resnet_conv(channels, 1, stride));
        g.batch_norm("shortcut_bn", s)
    } else {
        x
    };
    let sum = g.add("add", h, shortcut);
    g.relu("relu2", sum)
}

/// A CIFAR-style ResNet for 2-D images of shape `[channels, height, width]`: a 3×3 stem
/// of `width` channels with BN and ReLU, three stages of `blocks` basic blocks (`width`,
/// 2·`width` and 4·`width` channels; stages 2 and 3 start with stride 2), global
/// average pooling and a dense layer to `classes` outputs. Parameters are named by where they live
/// (`stage2.block0.conv1.weight`).
///
/// # Errors
/// [`NnError`] naming the node whose shape cannot work (an image too small for two
/// stride-2 stages, an input that is not 2-D).
pub fn resnet<T: Element>(
    input: &[usize],
    classes: usize,
    blocks: usize,
    width: usize,
    seed: u64,
) -> Result<Graph<T>, NnError> {
    let mut g = GraphBuilder::new(input, seed);
    let x = g.input();
    let stem = g.conv("stem.conv", x, resnet_conv(width, 3, 1));
    let stem = g.batch_norm("stem.bn", stem);
    let mut h = g.relu("stem.relu", stem);
    for (stage, channels) in [width, 2 * width, 4 * width].into_iter().enumerate() {
        for block in 0..blocks {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            h = g.scope(&format!("stage{}.block{block}", stage + 1), |g| basic_block(g, h, channels, stride));
        }
    }
    let pooled = g.global_avg_pool("pool", h);
    let out = g.dense("fc", pooled, classes);
    g.build(out)
}

/// T3's network: [`resnet`] with three blocks per stage and width 16, for 1×28×28
/// images and 10 classes (272,186 parameters).
///
/// # Errors
/// None in practice; the signature is [`resnet`]'s.
pub fn resnet20<T: Element>(seed: u64) -> Result<Graph<T>, NnError> {
    resnet(&[1, 28, 28], 10, 3, 16, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet20_has_the_reference_parameter_count_and_names() {
        let net = resnet20::<f32>(0).unwrap();
        assert_eq!(net.num_params(), 272_186);
        let names: Vec<String> = net.named_params().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"stage2.block0.shortcut.weight".to_string()), "{names:?}");
        assert!(names.contains(&"stage3.block2.bn2.weight".to_string()), "{names:?}");
        assert_eq!(net.output_shape(), &[10]);
    }

    #[test]
    fn the_resnet_builder_checks_by_finite_differences() {
        use nn_core::gradcheck::{check_graph, GradCheckOptions};
        // One block per stage: every kind of block (identity and projection
        // shortcuts) on a 6×6 image, in training mode (batch statistics).
        let mut net = resnet::<f64>(&[1, 6, 6], 3, 1, 2, 5).unwrap();
        let data: Vec<f64> = (0..2 * 36).map(|i| ((i * 37 % 23) as f64 / 11.0) - 1.0).collect();
        let x = Tensor::from_vec(&[2, 1, 6, 6], data).unwrap();
        let report = check_graph(&mut net, &x, GradCheckOptions::default()).unwrap();
        assert!(report.passed(1e-6), "{report:?}");
    }

    #[test]
    fn an_input_that_is_not_an_image_is_an_error_naming_the_node() {
        let error = resnet::<f32>(&[1, 28], 10, 1, 16, 0).unwrap_err().to_string();
        assert!(error.contains("stem.conv"), "{error}");
    }
}
