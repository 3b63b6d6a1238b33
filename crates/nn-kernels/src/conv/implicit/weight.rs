//! The weight gradient as an implicit GEMM:
//! `∂wᵀ[k, o] = Σ_n Σ_β x′[n, base(β) + offset(k)] · ∂y[n, o, β]`.
//!
//! The depth of this product is the output cells, so the sum runs in registers over a
//! whole block of cells. Rows are taps k, each a scalar read straight from the padded
//! image (the forward pass's layout) at `base(β) + offset(k)` and broadcast; columns
//! are output channels, 16 to a vector, read from a block of ∂y transposed just before
//! its tiles run, so that one cell's channels (in groups of 64) are contiguous. A tile
//! of V vectors of channels (up to 64 channels) by min(24/V, 10) taps keeps up to 24
//! accumulators; nothing is materialised but that block. More than ten taps would
//! spill the general registers (offsets, a cell's base, the loop's pointers), except
//! where taps come in strips of three consecutive offsets (3-wide filter rows at
//! stride 1): a two-vector tile then holds 12 taps as four strips ([`strip_kernel`]).

use super::product::Product;
use super::tiling::slivers_of;
use super::transpose::transpose;
use super::LANES;
use crate::conv::ConvProblem;
use crate::simd::Avx512;
use crate::workspace::{fit, with_scratch};
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Most vectors of channels per tile.
const MAX_VECTORS: usize = 4;

/// Channels per slab of transposed ∂y (`[cells, GROUP]`). Rows of all `ld` channels
/// would put a cell block's lines `4·ld` bytes apart: at 128 channels (512 bytes) a
/// block's 128 cells map to half of L1's 64 sets, 16 lines to each of 12 ways, and
/// miss.
const GROUP: usize = MAX_VECTORS * LANES;

/// Accumulators per tile: taps × vectors.
const ACCUMULATORS: usize = 24;

/// Most taps per tile (a one- or two-vector tile keeps 10 or 20 accumulators).
const MAX_TAPS: usize = 10;

/// Consecutive tap offsets in a strip, and taps in a tile of strips (two vectors × 12
/// taps: 24 accumulators).
const STRIP: usize = 3;
const STRIP_TAPS: usize = 12;

/// Fewer output channels than this would leave most of each vector's lanes empty.
pub(in crate::conv) const MIN_CHANNELS: usize = 8;

/// Output cells per pass over the taps: the block's slab of transposed ∂y (cells × one
/// group of [`GROUP`] channels, 32 KiB) stays in L1 while every tile of taps sweeps
/// it. Each slab is transposed right before its tiles, not the whole image first
/// (docs/performance.md, "Weight gradient").
const CELL_BLOCK: usize = 128;

/// The furthest element of the padded image any tap of any cell reads (`None` when
/// there are no cells or taps, or on overflow).
fn last_read(bases: &[usize], offsets: &[usize]) -> Option<usize> {
    bases.iter().max().zip(offsets.iter().max()).and_then(|(b, o)| b.checked_add(*o))
}

/// The cells' bases in x′'s padded layout, for a problem whose weight gradient the
/// implicit path computes.
#[derive(Debug)]
pub(super) struct WeightPlan {
    /// x′'s layout: the forward product's.
    product: Product,
    /// `base(β)` of every output cell.
    bases: Vec<usize>,
}

impl WeightPlan {
    /// None with fewer than [`MIN_CHANNELS`] output channels, or where a read would
    /// leave the padded image.
    pub(super) fn new(problem: &ConvProblem, forward: &Product) -> Option<Self> {
        if problem.out_channels() < MIN_CHANNELS {
            return None;
        }
        let product = forward.clone();
        let bases: Vec<usize> = product.cell_bases().collect();
        let end = last_read(&bases, &product.offsets)?;
        (end < product.padded_len()).then_some(WeightPlan { product, bases })
    }
}

/// `∂w += Σ_n ∂y_n · col(x′_n)ᵀ` by implicit GEMM, summed over the batch in chunks of
/// `per_chunk` images whose sums are added in order (the partition of the column
/// path, so results do not depend on the thread count). Returns false, having done
/// nothing, where the plan has no weight-gradient product. Lengths are the caller's
/// to check.
#[allow(clippy::too_many_arguments)]
pub(in crate::conv) fn backward_weight(
    isa: Avx512,
    plan: &super::Plan,
    problem: &ConvProblem,
    batch: usize,
    per_chunk: usize,
    x: &[f32],
    dy: &[f32],
    pad_value: f32,
    dw: &mut [f32],
) -> bool {
    let Some(WeightPlan { product, bases }) = &plan.weight else { return false };
    if per_chunk == 0 {
        return false;
    }
    let (taps, c_out) = (product.offsets.len(), problem.out_channels());
    let ld = c_out.next_multiple_of(LANES);
    let (in_len, out_len) = (problem.input_image_len(), problem.output_image_len());
    let partials: Vec<Vec<f32>> = (0..batch.div_ceil(per_chunk))
        .into_par_iter()
        .map(|chunk| {
            let mut partial = vec![0.0f32; taps * ld];
            with_scratch::<f32, 2, _>(|[padded, slab]| {
                let padded = fit(padded, product.padded_len());
                let slab = fit(slab, CELL_BLOCK * GROUP);
                for n in chunk * per_chunk..((chunk + 1) * per_chunk).min(batch) {
                    product.pad_image(&x[n * in_len..(n + 1) * in_len], pad_value, padded);
                    let dy = &dy[n * out_len..(n + 1) * out_len];
                    image_into(isa, &product.offsets, bases, padded, dy, ld, slab, &mut partial);
                }
            });
            partial
        })
        .collect();
    add_in_order(&partials, c_out, taps, ld, dw);
    true
}

/// Taps per task of [`add_in_order`]: 64 KiB of each partial.
const SUM_TAPS: usize = 256;

/// `∂w[o, k] += partial[k, o]` for each partial in order, so that every element is
/// summed in the same order on any thread count. The sums run in the partials'
/// `[taps, ld]` layout between two transposes of ∂w, so that the adds are contiguous
/// and the rows are shared among the workers.
fn add_in_order(partials: &[Vec<f32>], c_out: usize, taps: usize, ld: usize, dw: &mut [f32]) {
    with_scratch::<f32, 1, _>(|[sum]| {
        let sum = fit(sum, taps * ld);
        // Columns c_out..ld keep what the scratch held: summed, never read back.
        transpose(dw, c_out, taps, taps, sum, ld);
        sum.par_chunks_mut(SUM_TAPS * ld).enumerate().for_each(|(block, sums)| {
            for partial in partials {
                let terms = &partial[block * SUM_TAPS * ld..][..sums.len()];
                for (slot, term) in sums.iter_mut().zip(terms) {
                    *slot += term;
                }
            }
        });
        transpose(sum, taps, c_out, ld, dw, taps);
    });
}

/// Channels `first..first + width` of cells `cell_range` of ∂y (`[channels, cells]`)
/// as a `[cells, width]` slab, the channels past ∂y's zero.
fn slab_of(dy: &[f32], cells: usize, first: usize, width: usize, cell_range: std::ops::Range<usize>, slab: &mut [f32]) {
    let channels = dy.len() / cells;
    let slab = &mut slab[..cell_range.len() * width];
    let filled = channels.saturating_sub(first).min(width);
    if filled < width {
        for row in slab.chunks_exact_mut(width) {
            row[filled..].fill(0.0);
        }
    }
    transpose(&dy[first * cells + cell_range.start..], filled, cell_range.len(), cells, slab, width);
}

/// Which way the offsets of a strip of taps step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::conv) enum Direction {
    /// +1 per tap (cross-correlation).
    Rising,
    /// −1 per tap (the flipped convolution).
    Falling,
}

/// Whether the taps, in tiles of [`STRIP_TAPS`], come in strips of [`STRIP`]
/// consecutive offsets (a filter row of 3 at stride 1), and which way: then a tile of
/// two vectors of channels can hold 12 taps, as four strip starts fit the general
/// registers where twelve offsets would not.
pub(in crate::conv) fn strip_direction(offsets: &[usize]) -> Option<Direction> {
    let strips_step = |step: isize| {
        offsets.len().is_multiple_of(STRIP_TAPS)
            && offsets.chunks_exact(STRIP).all(|strip| strip.windows(2).all(|p| p[1] as isize == p[0] as isize + step))
    };
    if strips_step(1) {
        Some(Direction::Rising)
    } else if strips_step(-1) {
        Some(Direction::Falling)
    } else {
        None
    }
}

/// Adds one image's products to `partial` (`[taps, ld]`): every tile of taps and
/// channels over every block of cells.
/// `dy` is the image's `[channels, cells]` output gradient; `slab` is scratch.
#[allow(clippy::too_many_arguments)]
fn image_into(
    _isa: Avx512,
    offsets: &[usize],
    bases: &[usize],
    source: &[f32],
    dy: &[f32],
    ld: usize,
    slab: &mut [f32],
    partial: &mut [f32],
) {
    let taps = offsets.len();
    // The bounds every unsafe access below relies on.
    assert!(ld.is_multiple_of(LANES) && slab.len() >= CELL_BLOCK * GROUP.min(ld) && partial.len() == taps * ld);
    assert!(dy.len().is_multiple_of(bases.len()) && dy.len() / bases.len() <= ld);
    assert!(last_read(bases, offsets).is_some_and(|end| end < source.len()));
    let direction = strip_direction(offsets);
    for first_cell in (0..bases.len()).step_by(CELL_BLOCK) {
        let cells = CELL_BLOCK.min(bases.len() - first_cell);
        for first_channel in (0..ld).step_by(GROUP) {
            let width = GROUP.min(ld - first_channel);
            slab_of(dy, bases.len(), first_channel, width, first_cell..first_cell + cells, slab);
            let vectors = width / LANES;
            let strips = direction.filter(|_| vectors == 2);
            let height = if strips.is_some() { STRIP_TAPS } else { (ACCUMULATORS / vectors).min(MAX_TAPS) };
            for rows in slivers_of(taps, height) {
                let tile = WeightTile {
                    cells,
                    bases: bases[first_cell..].as_ptr(),
                    taps: offsets[rows.start..].as_ptr(),
                    source: source.as_ptr(),
                    transposed: slab.as_ptr(),
                    width,
                    ld,
                    partial: partial[rows.start * ld + first_channel..].as_mut_ptr(),
                };
                // SAFETY: AVX-512F is present (the caller holds the token). The asserts above
                // bound every access: taps `rows` of `offsets`; cells
                // `first_cell..first_cell + cells` of `bases`; scalar reads at
                // `base + offset ≤ last_read(…)` inside `source`; the `cells` rows of
                // the `[cells, width]` slab, whole (16·vectors = width; the slab holds
                // CELL_BLOCK · min(GROUP, ld) ≥ cells · width floats); whole vectors of
                // `partial` rows `rows`, at channels
                // `first_channel..first_channel + width ≤ ld`.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    match strips {
                        Some(Direction::Rising) => strip_kernel::<{ STRIP_TAPS / STRIP }, STRIP, 2, false>(&tile),
                        Some(Direction::Falling) => strip_kernel::<{ STRIP_TAPS / STRIP }, STRIP, 2, true>(&tile),
                        None => weight_micro_kernel(rows.len(), vectors, &tile),
                    }
                };
            }
        }
    }
}

/// The operands of one tile: up to min(24/V, 10) taps by V ≤ [`MAX_VECTORS`] vectors of channels.
struct WeightTile {
    cells: usize,
    /// `cells` cell bases.
    bases: *const usize,
    /// The tile's tap offsets.
    taps: *const usize,
    /// The padded image.
    source: *const f32,
    /// The block's slab of transposed ∂y: the tile's channels of its first cell, cells
    /// `width` apart.
    transposed: *const f32,
    width: usize,
    ld: usize,
    /// The partial sum at (first tap, first channel); taps `ld` apart.
    partial: *mut f32,
}

/// The kernel compiled for `rows` taps (strips of one) and `vectors` vectors of
/// channels.
///
/// # Safety
/// As for [`strip_kernel`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weight_micro_kernel(rows: usize, vectors: usize, tile: &WeightTile) {
    macro_rules! by_rows {
        ($vectors:literal, $($rows:literal)*) => {
            match rows {
                $($rows => strip_kernel::<$rows, 1, $vectors, false>(tile),)*
                _ => unreachable!("slivers have 1..=min(ACCUMULATORS/vectors, MAX_TAPS) rows"),
            }
        };
    }
    const _: () = assert!(ACCUMULATORS == 24 && MAX_VECTORS == 4 && MAX_TAPS == 10);
    // SAFETY: forwarded to the caller.
    unsafe {
        match vectors {
            4 => by_rows!(4, 1 2 3 4 5 6),
            3 => by_rows!(3, 1 2 3 4 5 6 7 8),
            2 => by_rows!(2, 1 2 3 4 5 6 7 8 9 10),
            1 => by_rows!(1, 1 2 3 4 5 6 7 8 9 10),
            _ => unreachable!("1..=MAX_VECTORS vectors"),
        }
    }
}

/// `partial[i, channels] += Σ_j source[bases[j] + taps[i]] · transposed[j, channels]`
/// for the `STRIPS·LEN` taps and `V` vectors of channels of a tile, its taps in
/// `STRIPS` strips of `LEN` consecutive offsets: tap `r·LEN + t` reads
/// `bases[j] + taps[r·LEN] + t`, or `− t` when `FALLING`. Strips of one tap are any
/// taps; longer strips keep fewer offsets in the general registers.
///
/// # Safety
/// AVX-512F must be present. `taps` must hold `STRIPS·LEN` offsets forming such strips and
/// `bases` `cells` bases, with every `bases[j] + taps[i]` inside the image at `source`;
/// `transposed + j·width` must hold 16·V floats for j < cells, and `partial + i·ld`
/// likewise for every tap i.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn strip_kernel<const STRIPS: usize, const LEN: usize, const V: usize, const FALLING: bool>(tile: &WeightTile) {
    // SAFETY (whole body): every pointer stays within the bounds the caller states.
    unsafe {
        // Each strip from its lowest offset: tap t of the strip is `LEN − 1 − t` above it
        // when falling.
        let lowest = |r: usize| *tile.taps.add(r * LEN + if FALLING { LEN - 1 } else { 0 });
        let starts: [usize; STRIPS] = std::array::from_fn(lowest);
        let mut acc = [[[_mm512_setzero_ps(); V]; LEN]; STRIPS];
        for (r, strip) in acc.iter_mut().enumerate() {
            for (t, row) in strip.iter_mut().enumerate() {
                for (v, lanes) in row.iter_mut().enumerate() {
                    *lanes = _mm512_loadu_ps(tile.partial.add((r * LEN + t) * tile.ld + LANES * v));
                }
            }
        }
        for j in 0..tile.cells {
            let source = tile.source.add(*tile.bases.add(j));
            let channels = tile.transposed.add(j * tile.width);
            let b: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(channels.add(LANES * v)));
            for (strip, &start) in acc.iter_mut().zip(&starts) {
                let first = source.add(start);
                for (t, row) in strip.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(*first.add(if FALLING { LEN - 1 - t } else { t }));
                    for (lanes, b) in row.iter_mut().zip(&b) {
                        *lanes = _mm512_fmadd_ps(a, *b, *lanes);
                    }
                }
            }
        }
        for (r, strip) in acc.iter().enumerate() {
            for (t, row) in strip.iter().enumerate() {
                for (v, lanes) in row.iter().enumerate() {
                    _mm512_storeu_ps(tile.partial.add((r * LEN + t) * tile.ld + LANES * v), *lanes);
                }
            }
        }
    }
}
