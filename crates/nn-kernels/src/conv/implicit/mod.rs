//! Convolution as an implicit GEMM: f32 on CPUs with AVX-512F.
//!
//! The column matrix of im2col is never built. Copy the image once into a buffer that
//! already holds its padding (`x′`); then for filter tap k = (c, α) and output cell β,
//! `col[k, β] = x′[base(β) + offset(k)]`, where `offset(k)` depends on the tap alone
//! and `base(β)` on the cell alone. Each row of x′ is stored split by the last stride s
//! into s phases (positions ≡ 0 mod s, then ≡ 1, …), so `base` steps by one along an
//! output row at any stride, and sixteen cells of one output row are sixteen
//! consecutive floats of x′: the micro-kernel loads them as one vector per tap,
//! straight from the image, and multiplies them by the broadcast weights of up to
//! [`MAX_ROWS`] output channels. At stride 1 between rows, the end of one row and the
//! start of the next may share a vector (`segments`), so that a 56-cell row does not
//! cost four vectors. Nothing is written but the output, and the weights are
//! packed once per call instead of once per image. A batch too large for the caches
//! writes its output through a small staged band and non-temporal stores
//! ([`Writes`]).
//!
//! The input gradient is the same product read the other way round. At stride 1,
//! `∂x[c, γ] = Σ_(o, α) w[o, c, α] · ∂y′[o, γ + p + f − 1 − tap(α)]`, with ∂y′ the
//! output gradient padded by `f − 1` zeros on each side. At stride s, the input cells
//! split into residue classes `γ ≡ e (mod s)`; each class is reached by its own
//! subset of the taps and is a stride-1 product of its own (`input_gradient`), and the
//! classes' results are interleaved into ∂x in one pass. Either way it replaces the
//! GEMM into a column matrix and the scatter-add of col2im: each ∂x cell is written
//! once.
//!
//! Each output element is its initial value plus the sum over the taps in order, one
//! fused multiply-add per term, whatever tile it falls in: results do not depend on the
//! thread count.
//!
//! Everything that depends on the problem alone (the products, their tilings, the
//! input gradient's classes) is worked out once, in a [`Plan`].
//!
//! | file | concern |
//! | --- | --- |
//! | `segments.rs` | the output plane cut into 16-lane vectors |
//! | `product.rs`, `pad.rs` | a product's source layout, and the padded copy of an image |
//! | `tiling.rs` | slivers of rows × groups of segments, bands, streamed writes |
//! | `multiply.rs`, `kernel.rs` | running a tiled product; the AVX-512 micro-kernels |
//! | `input_gradient.rs` | the input gradient's residue classes at a stride |
//! | `weight.rs`, `transpose.rs` | the weight gradient |

mod input_gradient;
mod kernel;
mod multiply;
mod pad;
mod product;
mod segments;
mod tiling;
mod transpose;
mod weight;

pub(super) use input_gradient::backward_input;
#[cfg(test)]
pub(super) use input_gradient::narrow_classes;
pub(super) use tiling::Writes;
pub(super) use weight::backward_weight;
#[cfg(test)]
pub(super) use weight::{strip_direction, Direction, MIN_CHANNELS};

use super::ConvProblem;
use crate::simd::Avx512;
use crate::workspace::{fit, with_scratch};
use input_gradient::InputPlan;
use product::forward_product;
use tiling::{pack_rows, TiledProduct};
use weight::WeightPlan;

/// Output channels per micro-tile: each is broadcast from the packed weights and kept
/// in two accumulators, so 12 rows use 24 of the 32 vector registers.
pub(super) const MAX_ROWS: usize = 12;

/// Output channels per micro-tile of three segments (8 × 3 accumulators), taken
/// where the tiling prefers three segments.
pub(super) const MAX_ROWS_3: usize = 8;

/// Fewer output rows than this leave too few independent accumulators to hide the
/// multiply-add latency (2·rows chains against 4 cycles × 2 ports); such products
/// (an input gradient with one to three input channels) take the column path.
pub(in crate::conv) const MIN_ROWS: usize = 4;

/// Cells per segment: one 16-lane vector. A micro-tile holds two segments.
pub(super) const LANES: usize = 16;

/// The implicit path's products for one convolution problem, each `None` where the
/// path does not apply to it (then the column path runs).
#[derive(Debug)]
pub(in crate::conv) struct Plan {
    /// The forward product (x′ as source, C_out rows), which also gives the weight
    /// gradient its layout of x′.
    forward: Option<TiledProduct>,
    input: Option<InputPlan>,
    weight: Option<WeightPlan>,
}

impl Plan {
    /// Works out every product that applies to `problem`: none for a filter of one tap
    /// (its column matrix is the image itself, or a gather of its strided cells, and
    /// the GEMM fills its tiles where these kernels' vectors would hold every s-th
    /// cell), a dilated or grouped one (its kernels assume adjacent taps and every
    /// input channel), the forward pass with at least [`MIN_ROWS`] output channels,
    /// the input gradient with as many input channels, the weight gradient with
    /// [`weight::MIN_CHANNELS`] output channels.
    pub(in crate::conv) fn new(problem: &ConvProblem) -> Self {
        if problem.geometry().filter_len() == 1 || !problem.geometry().is_undilated() || problem.groups() > 1 {
            return Plan { forward: None, input: None, weight: None };
        }
        let product = forward_product(problem);
        let weight = WeightPlan::new(problem, &product);
        let forward =
            (problem.out_channels() >= MIN_ROWS && product.reads_in_bounds()).then(|| TiledProduct::new(product));
        let input = (problem.in_channels() >= MIN_ROWS).then(|| InputPlan::new(problem)).flatten();
        Plan { forward, input, weight }
    }
}

impl Plan {
    /// Whether the forward pass or the weight gradient has a product here.
    pub(in crate::conv) fn has_forward_or_weight(&self) -> bool {
        self.forward.is_some() || self.weight.is_some()
    }
}

/// The forward product's tap offsets, for tests of the weight kernel's strips.
#[cfg(test)]
pub(super) fn forward_offsets(problem: &ConvProblem) -> Vec<usize> {
    forward_product(problem).offsets
}

/// The forward pass by implicit GEMM, its outputs written as `writes` says
/// ([`Writes::for_batch`] is the measured choice). Returns false, having done
/// nothing, where the plan has no forward product. Lengths are the caller's to check.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    isa: Avx512,
    plan: &Plan,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    pad_value: f32,
    y: &mut [f32],
    writes: Writes,
) -> bool {
    let Some(tiled) = &plan.forward else { return false };
    let depth = tiled.product.offsets.len();
    with_scratch::<f32, 1, _>(|[packed]| {
        let packed = fit(packed, tiled.product.rows * depth);
        pack_rows(tiled.slivers(), depth, |o, k| w[o * depth + k], packed);
        tiled.multiply_batch(isa, writes, packed, bias, pad_value, x, y);
    });
    true
}
