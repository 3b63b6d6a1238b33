//! T3's network (shared/BENCHMARKS.md, pytorch-reference/resnet.py): a ResNet-20-style
//! graph with batch normalisation, written once per block.

use nn_core::prelude::*;
use nn_core::NodeId;

/// A 3×3 (or 1×1) convolution without bias, He-normal over the fan-out, as PyTorch
/// rounds strided outputs (floor) and orients the filter (cross-correlation).
fn conv(channels: usize, filter: usize, stride: usize) -> ConvSpec {
    let pad = filter / 2;
    ConvSpec::new(channels, &[filter, filter])
        .stride(&[stride, stride])
        .padding(&[pad, pad])
        .bias(false)
        .init(Init::HeNormalFanOut)
        .mode(KernelMode::CrossCorrelation)
        .rounding(OutputRounding::Floor)
}

/// conv 3×3 → BN → ReLU → conv 3×3 → BN, plus the shortcut (the input, or a strided
/// 1×1 convolution and BN where the shape changes), then ReLU.
fn basic_block(g: &mut GraphBuilder<f32>, x: NodeId, channels: usize, stride: usize) -> NodeId {
    let h = g.conv("conv1", x, conv(channels, 3, stride));
    let h = g.batch_norm("bn1", h);
    let h = g.relu("relu1", h);
    let h = g.conv("conv2", h, conv(channels, 3, 1));
    let h = g.batch_norm("bn2", h);
    let shortcut = if stride != 1 || g.shape(x)[0] != channels {
        let s = g.conv("shortcut", x, conv(channels, 1, stride));
        g.batch_norm("shortcut_bn", s)
    } else {
        x
    };
    let sum = g.add("add", h, shortcut);
    g.relu("relu2", sum)
}

/// Stem, three stages of three blocks (16, 32, 64 channels), global average pooling,
/// dense 64→10: 272,186 parameters.
pub fn resnet20(seed: u64) -> Result<Graph<f32>, NnError> {
    let mut g = GraphBuilder::new(&[1, 28, 28], seed);
    let x = g.input();
    let stem = g.conv("stem.conv", x, conv(16, 3, 1));
    let stem = g.batch_norm("stem.bn", stem);
    let mut h = g.relu("stem.relu", stem);
    for (stage, channels) in [16, 32, 64].into_iter().enumerate() {
        for block in 0..3 {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            h = g.scope(&format!("stage{}.block{block}", stage + 1), |g| basic_block(g, h, channels, stride));
        }
    }
    let pooled = g.global_avg_pool("pool", h);
    let out = g.dense("fc", pooled, 10);
    g.build(out)
}
