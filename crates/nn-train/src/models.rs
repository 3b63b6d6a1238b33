//! Networks of the benchmark recipes (shared/BENCHMARKS.md), built ready to train,
//! so that the example, the benchmarks and the tests run the same graph.

use nn_core::prelude::*;
use nn_core::NodeId;

/// T1 of shared/BENCHMARKS.md: dense 784→256, ReLU, dense 256→128, ReLU, dense
/// 128→10, for flat 784-pixel inputs.
///
/// # Errors
/// None in practice (the shapes are fixed); [`NnError`] as the builder reports it.
pub fn mlp<T: Element>(seed: u64) -> Result<Sequential<T>, NnError> {
    Sequential::builder(&[784], seed).dense(256).relu().dense(128).relu().dense(10).build()
}

/// T2 of shared/BENCHMARKS.md: conv 1→32 5×5 pad 2, ReLU, max-pool 2×2, conv 32→64 5×5
/// pad 2, ReLU, max-pool 2×2, flatten, dense 3136→128, ReLU, dense 128→10, for
/// `[1, 28, 28]` images.
///
/// # Errors
/// As for [`mlp`].
pub fn cnn<T: Element>(seed: u64) -> Result<Sequential<T>, NnError> {
    cnn_with(seed, ConvAlgorithm::Exact)
}

/// [`cnn`] with its second convolution (32→64 channels) computed by `algorithm`
/// ([`ConvAlgorithm::Winograd`]: F(4×4, 5×5)). The first, with one input channel,
/// stays exact: its tile transforms would cost more than the products they save.
///
/// # Errors
/// As for [`mlp`].
pub fn cnn_with<T: Element>(seed: u64, algorithm: ConvAlgorithm) -> Result<Sequential<T>, NnError> {
    Sequential::builder(&[1, 28, 28], seed)
        .conv(ConvSpec::new(32, &[5, 5]).padding(&[2, 2]))
        .relu()
        .max_pool(&[2, 2])
        .conv(ConvSpec::new(64, &[5, 5]).padding(&[2, 2]).algorithm(algorithm))
        .relu()
        .max_pool(&[2, 2])
        .flatten()
        .dense(128)
        .relu()
        .dense(10)
        .build()
}

/// A convolution without bias, He-normal over the fan-out, rounding strided outputs
/// down and orienting the filter as PyTorch does (cross-correlation): the ResNet
/// papers' convention.
fn resnet_conv(channels: usize, filter: usize, stride: usize, algorithm: ConvAlgorithm) -> ConvSpec {
    let pad = filter / 2;
    ConvSpec::new(channels, &[filter, filter])
        .algorithm(algorithm)
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
    basic_block_with(g, x, channels, stride, ConvAlgorithm::Exact)
}

/// [`basic_block`] with its 3×3 convolutions computed by `algorithm` (where it
/// suits their geometry: Winograd takes the stride-1 ones).
pub fn basic_block_with<T: Element>(
    g: &mut GraphBuilder<T>,
    x: NodeId,
    channels: usize,
    stride: usize,
    algorithm: ConvAlgorithm,
) -> NodeId {
    let h = g.conv("conv1", x, resnet_conv(channels, 3, stride, algorithm));
    let h = g.batch_norm("bn1", h);
    let h = g.relu("relu1", h);
    let h = g.conv("conv2", h, resnet_conv(channels, 3, 1, algorithm));
    let h = g.batch_norm("bn2", h);
    let shortcut = if stride != 1 || g.shape(x)[0] != channels {
        let s = g.conv("shortcut", x, resnet_conv(channels, 1, stride, ConvAlgorithm::Exact));
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
    resnet_with(input, classes, blocks, width, seed, ConvAlgorithm::Exact)
}

/// [`resnet`] with the 3×3 convolutions of its stages computed by `algorithm`
/// (Winograd takes the stride-1 ones). The stem, with the image's few channels,
/// stays exact: its tile transforms would cost more than the products they save.
///
/// # Errors
/// As for [`resnet`].
pub fn resnet_with<T: Element>(
    input: &[usize],
    classes: usize,
    blocks: usize,
    width: usize,
    seed: u64,
    algorithm: ConvAlgorithm,
) -> Result<Graph<T>, NnError> {
    let mut g = GraphBuilder::new(input, seed);
    let x = g.input();
    let stem = g.conv("stem.conv", x, resnet_conv(width, 3, 1, ConvAlgorithm::Exact));
    let stem = g.batch_norm("stem.bn", stem);
    let mut h = g.relu("stem.relu", stem);
    for (stage, channels) in [width, 2 * width, 4 * width].into_iter().enumerate() {
        for block in 0..blocks {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            h = g.scope(&format!("stage{}.block{block}", stage + 1), |g| {
                basic_block_with(g, h, channels, stride, algorithm)
            });
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

/// [`resnet20`] with its stages' convolutions computed by `algorithm` ([`resnet_with`]).
///
/// # Errors
/// As for [`resnet`].
pub fn resnet20_with<T: Element>(seed: u64, algorithm: ConvAlgorithm) -> Result<Graph<T>, NnError> {
    resnet_with(&[1, 28, 28], 10, 3, 16, seed, algorithm)
}

/// A 3×…×3 convolution (padding 1, any number of dimensions) → group norm → ReLU.
fn conv_norm_relu<T: Element>(g: &mut GraphBuilder<T>, name: &str, x: NodeId, channels: usize) -> NodeId {
    let rank = g.shape(x).len() - 1;
    g.scope(name, |g| {
        let h = g.conv("conv", x, ConvSpec::new(channels, &vec![3; rank]).padding(&vec![1; rank]).bias(false));
        let h = g.group_norm("norm", h, (channels / 4).max(1));
        g.relu("relu", h)
    })
}

/// A U-Net over `[channels, spatial…]` inputs of any number of spatial dimensions:
/// `levels` levels of two (conv 3×…×3 → group norm → ReLU) blocks, `width`·2^level
/// channels, a 2×…×2 stride-2 convolution down between levels and a 2×…×2 stride-2
/// transposed convolution up, each upsampled tensor concatenated with the encoder's
/// tensor of its level (the skip), and a 1×…×1 convolution to `classes` logits per
/// cell. Parameters are named by level (`down1.block2.conv.weight`, `up0.up.weight`).
///
/// # Errors
/// [`NnError`] naming the node whose shape cannot work (a spatial length not divisible
/// by 2^(levels − 1)).
pub fn unet<T: Element>(
    input: &[usize],
    classes: usize,
    levels: usize,
    width: usize,
    seed: u64,
) -> Result<Graph<T>, NnError> {
    let rank = input.len().saturating_sub(1);
    let (twos, ones) = (vec![2; rank], vec![1; rank]);
    let mut g = GraphBuilder::new(input, seed);
    let mut h = g.input();
    let mut skips = Vec::new();
    for level in 0..levels {
        let channels = width << level;
        h = g.scope(&format!("down{level}"), |g| {
            if level > 0 {
                h = g.conv("pool", h, ConvSpec::new(channels, &twos).stride(&twos));
            }
            let h = conv_norm_relu(g, "block1", h, channels);
            conv_norm_relu(g, "block2", h, channels)
        });
        skips.push(h);
    }
    skips.pop();
    for level in (0..levels - 1).rev() {
        let channels = width << level;
        let skip = skips.pop().expect("one skip per level above the bottom");
        h = g.scope(&format!("up{level}"), |g| {
            let up = g.conv_transpose("up", h, ConvSpec::new(channels, &twos).stride(&twos));
            let joined = g.concat("skip", up, skip);
            let h = conv_norm_relu(g, "block1", joined, channels);
            conv_norm_relu(g, "block2", h, channels)
        });
    }
    let out = g.conv("head", h, ConvSpec::new(classes, &ones));
    g.build(out)
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
    fn the_unet_checks_by_finite_differences_in_one_to_three_dimensions() {
        use nn_core::gradcheck::{check_graph, GradCheckOptions};
        for input in [vec![1, 8], vec![2, 4, 4], vec![1, 4, 4, 2]] {
            let mut net = unet::<f64>(&input, 1, 2, 4, 3).unwrap();
            assert_eq!(net.output_shape()[1..], input[1..]);
            let len: usize = 2 * input.iter().product::<usize>();
            let data: Vec<f64> = (0..len).map(|i| ((i * 37 % 23) as f64 / 11.0) - 1.0).collect();
            let mut shape = vec![2];
            shape.extend(&input);
            let x = Tensor::from_vec(&shape, data).unwrap();
            let report = check_graph(&mut net, &x, GradCheckOptions::default()).unwrap();
            assert!(report.passed(1e-6), "{input:?}: {report:?}");
        }
        let names: Vec<String> =
            unet::<f32>(&[1, 8, 8], 1, 3, 8, 0).unwrap().named_params().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"down2.block2.conv.weight".to_string()), "{names:?}");
        assert!(names.contains(&"up0.up.weight".to_string()), "{names:?}");
        let error = unet::<f32>(&[1, 6, 5], 1, 2, 4, 0).unwrap_err().to_string();
        assert!(error.contains("down1.pool"), "{error}");
    }

    #[test]
    fn an_input_that_is_not_an_image_is_an_error_naming_the_node() {
        let error = resnet::<f32>(&[1, 28], 10, 1, 16, 0).unwrap_err().to_string();
        assert!(error.contains("stem.conv"), "{error}");
    }
}
