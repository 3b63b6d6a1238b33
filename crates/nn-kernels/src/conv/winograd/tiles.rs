//! The tile transforms over a block of tiles, eight channels of one tile in the
//! lanes. Transformed values are stored `[tile, α², channels]`, channels rounded up
//! to whole packs and tiles a cache line apart, so that one tile's values lie
//! together.

use super::transform::{sandwich, Input, Pack, Sizes, LANES, MAX_M};
use super::{packed, tile_stride, Correlation};
use crate::simd::avx2_dispatch;
#[cfg(target_arch = "x86_64")]
use crate::simd::Avx2Fma;
use crate::Element;
use std::ops::Range;

/// Cells after the padded images that a tile row's vector load may read.
#[cfg(target_arch = "x86_64")]
pub(super) const PAD_SLACK: usize = super::avx2::SLACK;
#[cfg(not(target_arch = "x86_64"))]
pub(super) const PAD_SLACK: usize = 0;

/// `Cᵀ·d·C` of every tile in `tiles` and source channel, into `v`. `padded` holds the
/// task's padded images and [`PAD_SLACK`] cells more. Lanes past the last channel
/// repeat an earlier one; the products never read them.
pub(super) fn inputs<T: Element>(job: &Correlation, padded: &[T], tiles: Range<usize>, v: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(isa), Some(padded), Some(v)) = (Avx2Fma::detect(), T::as_f32(padded), T::as_f32_mut(v)) {
        return super::avx2::inputs(isa, job, padded, tiles, v);
    }
    inputs_portable(job, padded, tiles, v);
}

/// `E_mᵀ·M·E_m` of every tile in `tiles` and output channel, plus the bias, into the
/// task's images `y`; cells past the output's edge are dropped.
pub(super) fn outputs<T: Element>(
    job: &Correlation,
    products: &[T],
    tiles: Range<usize>,
    bias: Option<&[T]>,
    y: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(isa), Some(products), Some(y)) = (Avx2Fma::detect(), T::as_f32(products), T::as_f32_mut(y)) {
        return super::avx2::outputs(isa, job, products, tiles, bias.and_then(T::as_f32), y);
    }
    outputs_portable(job, products, tiles, bias, y);
}

avx2_dispatch!(fn inputs_portable<T: Element>(job: &Correlation, padded: &[T], tiles: Range<usize>, v: &mut [T]) => inputs_body);
avx2_dispatch!(fn outputs_portable<T: Element>(job: &Correlation, products: &[T], tiles: Range<usize>, bias: Option<&[T]>, y: &mut [T]) => outputs_body);
avx2_dispatch!(fn gradients_portable<T: Element>(job: &Correlation, dy: &[T], tiles: Range<usize>, g: &mut [T]) => gradients_body);

/// `E_m·∂y·E_mᵀ` of every tile in `tiles` of the task's output gradients `dy` and
/// output channel, into `g`; cells past the edge, and lanes past the last channel,
/// count zero.
pub(super) fn gradients<T: Element>(job: &Correlation, dy: &[T], tiles: Range<usize>, g: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(isa), Some(dy), Some(g)) = (Avx2Fma::detect(), T::as_f32(dy), T::as_f32_mut(g)) {
        return super::avx2::gradients(isa, job, dy, tiles, g);
    }
    gradients_portable(job, dy, tiles, g);
}

/// Where tile `tile`'s value at point (i, j) of channel pack `pack` starts in
/// `[tile, α², channels]` storage.
#[inline(always)]
pub(super) fn value_at<const A: usize>(channels: usize, tile: usize, pack: usize, i: usize, j: usize) -> usize {
    tile * tile_stride(A * A, channels) + (i * A + j) * channels + pack * LANES
}

/// Writes `values` as tile `tile`'s value at point (i, j) of channel pack `pack`.
#[inline(always)]
pub(super) fn put<T: Element, const A: usize>(
    out: &mut [T],
    channels: usize,
    tile: usize,
    pack: usize,
    i: usize,
    j: usize,
    values: Pack<T>,
) {
    let at = value_at::<A>(channels, tile, pack, i, j);
    out[at..at + LANES].copy_from_slice(&values);
}

/// Tile `tile`'s values at points (k, 0..α) of channel pack `pack`.
#[inline(always)]
pub(super) fn load_row<T: Element, const A: usize>(
    values: &[T],
    channels: usize,
    tile: usize,
    pack: usize,
    k: usize,
) -> [Pack<T>; A] {
    std::array::from_fn(|l| {
        let at = value_at::<A>(channels, tile, pack, k, l);
        let mut lanes = [T::zero(); LANES];
        lanes.copy_from_slice(&values[at..at + LANES]);
        lanes
    })
}

/// Tile `tile`'s m×m outputs of channel pack `pack`, `E_mᵀ·M·E_m` of its products in
/// `[tile, α², channels]` storage.
#[inline(always)]
pub(super) fn tile_outputs<T: Element, const A: usize, const R: usize>(
    products: &[T],
    channels: usize,
    tile: usize,
    pack: usize,
) -> [[Pack<T>; MAX_M]; MAX_M] {
    let mut out = [[[T::zero(); LANES]; MAX_M]; MAX_M];
    let rows = |k| load_row(products, channels, tile, pack, k);
    sandwich(&Sizes::<A, R>::TILE_BACK, Sizes::<A, R>::M, A, rows, |a, b, x| out[a][b] = x);
    out
}

/// The m×m output gradients of channel pack `pack` of the tile at `origin` (image,
/// row, column), gathered lane by lane; cells past the edge, and lanes past the last
/// channel, zero.
#[inline(always)]
pub(super) fn gradient_tile<T: Element, const A: usize, const R: usize>(
    job: &Correlation,
    dy: &[T],
    origin: (usize, usize, usize),
    pack: usize,
) -> [[Pack<T>; A]; MAX_M] {
    let m = Sizes::<A, R>::M;
    let [oh, ow] = job.output;
    let plane = oh * ow;
    let (image, row, col) = origin;
    let mut d = [[[T::zero(); LANES]; A]; MAX_M];
    for lane in 0..LANES.min(job.dst_channels - pack * LANES) {
        let dy = &dy[image * job.dst_image_len() + (pack * LANES + lane) * plane..][..plane];
        for (a, d) in d.iter_mut().enumerate().take(m.min(oh - row)) {
            let src = &dy[(row + a) * ow + col..];
            for (b, d) in d.iter_mut().enumerate().take(m.min(ow - col)) {
                d[lane] = src[b];
            }
        }
    }
    d
}

/// The channel of each lane of pack `pack`: past the last, the pack's first.
#[inline(always)]
pub(super) fn lane_channels(pack: usize, channels: usize) -> [usize; LANES] {
    std::array::from_fn(|lane| if pack * LANES + lane < channels { pack * LANES + lane } else { pack * LANES })
}

#[inline(always)]
fn inputs_body<T: Element>(job: &Correlation, padded: &[T], tiles: Range<usize>, v: &mut [T]) {
    by_size!(job.r, inputs_for::<T>(job, padded, tiles, v))
}

#[inline(always)]
fn inputs_for<T: Element, const A: usize, const R: usize>(
    job: &Correlation,
    padded: &[T],
    tiles: Range<usize>,
    v: &mut [T],
) {
    let [ph, pw] = job.padded();
    let (plane, ci) = (ph * pw, job.src_channels);
    for (i, (image, row, col)) in job.tile_origins(tiles).enumerate() {
        let origin = image * job.padded_image_len() + row * pw + col;
        for pack in 0..packed(ci) / LANES {
            let mut d = [[[T::zero(); LANES]; A]; A];
            for (lane, c) in lane_channels(pack, ci).into_iter().enumerate() {
                let tile = &padded[origin + c * plane..];
                for (k, d) in d.iter_mut().enumerate() {
                    for (d, &x) in d.iter_mut().zip(&tile[k * pw..][..A]) {
                        d[lane] = x;
                    }
                }
            }
            let emit = |a, b, x| put::<T, A>(v, packed(ci), i, pack, a, b, x);
            sandwich(&Input::<A>::TRANSFORM, A, A, |k| d[k], emit);
        }
    }
}

#[inline(always)]
fn outputs_body<T: Element>(job: &Correlation, products: &[T], tiles: Range<usize>, bias: Option<&[T]>, y: &mut [T]) {
    by_size!(job.r, outputs_for::<T>(job, products, tiles, bias, y))
}

#[inline(always)]
fn outputs_for<T: Element, const A: usize, const R: usize>(
    job: &Correlation,
    products: &[T],
    tiles: Range<usize>,
    bias: Option<&[T]>,
    y: &mut [T],
) {
    let m = Sizes::<A, R>::M;
    let [oh, ow] = job.output;
    let (plane, co) = (oh * ow, job.dst_channels);
    for (i, (image, row, col)) in job.tile_origins(tiles).enumerate() {
        for pack in 0..packed(co) / LANES {
            let out = tile_outputs::<T, A, R>(products, packed(co), i, pack);
            for lane in 0..LANES.min(co - pack * LANES) {
                let o = pack * LANES + lane;
                let shift = bias.map_or(T::zero(), |b| b[o]);
                let dst = &mut y[image * job.dst_image_len() + o * plane..][..plane];
                for (a, out) in out.iter().enumerate().take(m.min(oh - row)) {
                    let dst = &mut dst[(row + a) * ow + col..];
                    for (b, out) in out.iter().enumerate().take(m.min(ow - col)) {
                        dst[b] = out[lane] + shift;
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn gradients_body<T: Element>(job: &Correlation, dy: &[T], tiles: Range<usize>, g: &mut [T]) {
    by_size!(job.r, gradients_for::<T>(job, dy, tiles, g))
}

#[inline(always)]
fn gradients_for<T: Element, const A: usize, const R: usize>(
    job: &Correlation,
    dy: &[T],
    tiles: Range<usize>,
    g: &mut [T],
) {
    let (m, co) = (Sizes::<A, R>::M, job.dst_channels);
    for (i, origin) in job.tile_origins(tiles).enumerate() {
        for pack in 0..packed(co) / LANES {
            let d = gradient_tile::<T, A, R>(job, dy, origin, pack);
            let emit = |a, b, x| put::<T, A>(g, packed(co), i, pack, a, b, x);
            sandwich(&Sizes::<A, R>::TILE, A, m, |a| d[a], emit);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::conv::{ConvGeometry, ConvProblem, KernelMode, OutputRounding, Padding};

    /// The AVX2 gathers and scatters compute the portable transforms' bits, edge tiles
    /// and partial channel packs included.
    #[test]
    fn avx2_transforms_match_the_portable_ones_bit_for_bit() {
        let Some(isa) = Avx2Fma::detect() else { return };
        for (r, size, channels) in [(3, [9, 11], 11), (5, [7, 6], 5), (3, [7, 7], 16)] {
            let padding = [Padding::symmetric(r / 2); 2];
            let geometry =
                ConvGeometry::new(&size, &[r, r], &[1, 1], &padding, OutputRounding::Strict, KernelMode::Convolution)
                    .unwrap();
            let job = Correlation::forward(&ConvProblem::new(geometry, channels, channels + 3).unwrap(), r);
            let value = |i: usize| ((i * 7919 % 1013) as f32 - 506.0) / 97.0;
            let images = 2;
            let tiles = 0..images * job.tiles_per_image();
            let padded: Vec<f32> = (0..images * job.padded_image_len() + PAD_SLACK).map(value).collect();
            let (ci, co, points) = (packed(job.src_channels), packed(job.dst_channels), job.points());
            let (mut a, mut b) =
                (vec![0.0; tiles.len() * tile_stride(points, ci)], vec![0.0; tiles.len() * tile_stride(points, ci)]);
            inputs_portable(&job, &padded, tiles.clone(), &mut a);
            super::super::avx2::inputs(isa, &job, &padded, tiles.clone(), &mut b);
            assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()), "inputs, r = {r}");

            let products: Vec<f32> = (0..tiles.len() * tile_stride(points, co)).map(value).collect();
            let bias: Vec<f32> = (0..job.dst_channels).map(|o| value(o + 5)).collect();
            let (mut a, mut b) = (vec![0.0; images * job.dst_image_len()], vec![0.0; images * job.dst_image_len()]);
            outputs_portable(&job, &products, tiles.clone(), Some(&bias), &mut a);
            super::super::avx2::outputs(isa, &job, &products, tiles.clone(), Some(&bias), &mut b);
            assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()), "outputs, r = {r}");

            let dy: Vec<f32> = (0..images * job.dst_image_len()).map(value).collect();
            let (mut a, mut b) =
                (vec![0.0; tiles.len() * tile_stride(points, co)], vec![0.0; tiles.len() * tile_stride(points, co)]);
            gradients_portable(&job, &dy, tiles.clone(), &mut a);
            super::super::avx2::gradients(isa, &job, &dy, tiles, &mut b);
            assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()), "gradients, r = {r}");
        }
    }
}
