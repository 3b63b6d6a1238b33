//! Tiles in and out of the lanes for f32 on AVX2: eight channels' rows of a tile are
//! read as eight vectors and transposed, so that each channel sits in one lane (a
//! load and a share of 24 shuffles per row, where lane-by-lane gathering takes a load
//! and an insert per cell), and the transformed outputs are transposed back to rows.

use super::tiles::{gradient_tile, lane_channels, value_at};
use super::transform::{sandwich, Input, PackMath, Sizes, LANES, MAX_M, MIN_ALPHA};
use super::{packed, Correlation};
use crate::simd::Avx2Fma;
use std::arch::x86_64::*;
use std::ops::Range;

/// Cells past a tile row that its vector load reads (two past the rows of six): the
/// padded planes keep this slack after their end.
pub(super) const SLACK: usize = LANES - MIN_ALPHA;

/// [`super::tiles::inputs`] for f32, the same arithmetic as the portable version.
pub(super) fn inputs(isa: Avx2Fma, job: &Correlation, padded: &[f32], tiles: Range<usize>, v: &mut [f32]) {
    let _ = isa;
    // SAFETY: the token proves AVX2 and FMA; every load is of a checked slice.
    unsafe { by_size!(job.r, inputs_avx2(job, padded, tiles, v)) }
}

/// [`super::tiles::outputs`] for f32, the same arithmetic as the portable version.
pub(super) fn outputs(
    isa: Avx2Fma,
    job: &Correlation,
    products: &[f32],
    tiles: Range<usize>,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let _ = isa;
    // SAFETY: the token proves AVX2 and FMA; every store is to a checked slice.
    unsafe { by_size!(job.r, outputs_avx2(job, products, tiles, bias, y)) }
}

/// [`super::tiles::gradients`] for f32, the same arithmetic as the portable version.
pub(super) fn gradients(isa: Avx2Fma, job: &Correlation, dy: &[f32], tiles: Range<usize>, g: &mut [f32]) {
    let _ = isa;
    // SAFETY: the token proves AVX2 and FMA; every load is of a checked slice.
    unsafe { by_size!(job.r, gradients_avx2(job, dy, tiles, g)) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn inputs_avx2<const A: usize, const R: usize>(
    job: &Correlation,
    padded: &[f32],
    tiles: Range<usize>,
    v: &mut [f32],
) {
    let [ph, pw] = job.padded();
    let (plane, ci) = (ph * pw, job.src_channels);
    for (i, (image, row, col)) in job.tile_origins(tiles).enumerate() {
        let origin = image * job.padded_image_len() + row * pw + col;
        for pack in 0..packed(ci) / LANES {
            let channels = lane_channels(pack, ci);
            // Row k of the eight channels' tiles, a channel per lane.
            let tile_row = |k: usize| {
                let mut rows = [_mm256_setzero_ps(); LANES];
                for (row, c) in rows.iter_mut().zip(channels) {
                    let cells = &padded[origin + c * plane + k * pw..][..LANES];
                    *row = _mm256_loadu_ps(cells.as_ptr());
                }
                first(transpose(rows))
            };
            let emit = |a, b, x| store(v, value_at::<A>(packed(ci), i, pack, a, b), x);
            sandwich(&Input::<A>::TRANSFORM, A, A, tile_row, emit);
        }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn outputs_avx2<const A: usize, const R: usize>(
    job: &Correlation,
    products: &[f32],
    tiles: Range<usize>,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    // Each tile row is one 128-bit store a channel: four outputs a tile.
    const { assert!(Sizes::<A, R>::M == MAX_M) };
    let [oh, ow] = job.output;
    let (plane, co) = (oh * ow, job.dst_channels);
    for (i, (image, row, col)) in job.tile_origins(tiles).enumerate() {
        let (rows, cols) = (MAX_M.min(oh - row), MAX_M.min(ow - col));
        for pack in 0..packed(co) / LANES {
            let values = |k: usize| std::array::from_fn(|l| load(products, value_at::<A>(packed(co), i, pack, k, l)));
            let mut out = [[Packed(_mm256_setzero_ps()); MAX_M]; MAX_M];
            sandwich(&Sizes::<A, R>::TILE_BACK, MAX_M, A, values, |a, b, x| out[a][b] = x);
            let lanes = LANES.min(co - pack * LANES);
            let mut shifts = [0.0; LANES];
            if let Some(bias) = bias {
                shifts[..lanes].copy_from_slice(&bias[pack * LANES..][..lanes]);
            }
            for (a, out) in out.iter().enumerate().take(rows) {
                let per_channel = channel_rows(out.map(|value| value.0));
                for (lane, cells) in per_channel.into_iter().enumerate().take(lanes) {
                    let cells = _mm_add_ps(cells, _mm_set1_ps(shifts[lane]));
                    let at = image * job.dst_image_len() + (pack * LANES + lane) * plane + (row + a) * ow + col;
                    let dst = &mut y[at..at + cols];
                    if cols == MAX_M {
                        _mm_storeu_ps(dst.as_mut_ptr(), cells);
                    } else {
                        let mut values = [0.0; MAX_M];
                        _mm_storeu_ps(values.as_mut_ptr(), cells);
                        dst.copy_from_slice(&values[..cols]);
                    }
                }
            }
        }
    }
}

/// Cells 0..4 of a tile row, each a pack of eight channels, as each channel's four
/// cells: a 4×8 transpose in eight shuffles.
#[target_feature(enable = "avx2,fma")]
fn channel_rows(p: [__m256; MAX_M]) -> [__m128; LANES] {
    // Channels c and c + 4 share a 128-bit half throughout.
    let t0 = _mm256_unpacklo_ps(p[0], p[1]);
    let t1 = _mm256_unpackhi_ps(p[0], p[1]);
    let t2 = _mm256_unpacklo_ps(p[2], p[3]);
    let t3 = _mm256_unpackhi_ps(p[2], p[3]);
    let pairs = [
        _mm256_shuffle_ps::<0x44>(t0, t2),
        _mm256_shuffle_ps::<0xEE>(t0, t2),
        _mm256_shuffle_ps::<0x44>(t1, t3),
        _mm256_shuffle_ps::<0xEE>(t1, t3),
    ];
    std::array::from_fn(|lane| {
        let pair = pairs[lane % 4];
        if lane < 4 {
            _mm256_castps256_ps128(pair)
        } else {
            _mm256_extractf128_ps::<1>(pair)
        }
    })
}

#[target_feature(enable = "avx2,fma")]
unsafe fn gradients_avx2<const A: usize, const R: usize>(
    job: &Correlation,
    dy: &[f32],
    tiles: Range<usize>,
    g: &mut [f32],
) {
    let m = Sizes::<A, R>::M;
    let [oh, ow] = job.output;
    let (plane, co) = (oh * ow, job.dst_channels);
    for (i, (image, row, col)) in job.tile_origins(tiles).enumerate() {
        let origin = image * job.dst_image_len() + row * ow + col;
        // A tile inside the plane whose last row's vector load stays inside `dy` takes
        // the transpose; edge tiles, whose cells past the edge count zero, the portable
        // gather.
        let inside = row + m <= oh && col + m <= ow;
        for pack in 0..packed(co) / LANES {
            let lanes = LANES.min(co - pack * LANES);
            let last = origin + (pack * LANES + lanes - 1) * plane + (m - 1) * ow + LANES;
            let emit = |a, b, x| store(g, value_at::<A>(packed(co), i, pack, a, b), x);
            if inside && last <= dy.len() {
                let tile_row = |a: usize| {
                    let mut rows = [_mm256_setzero_ps(); LANES];
                    for (lane, row) in rows.iter_mut().enumerate().take(lanes) {
                        let cells = &dy[origin + (pack * LANES + lane) * plane + a * ow..][..LANES];
                        *row = _mm256_loadu_ps(cells.as_ptr());
                    }
                    first(transpose(rows))
                };
                sandwich(&Sizes::<A, R>::TILE, A, m, tile_row, emit);
            } else {
                let d = gradient_tile::<f32, A, R>(job, dy, (image, row, col), pack);
                let tile_row = |a: usize| d[a].map(|cells: [f32; LANES]| load(&cells, 0));
                sandwich(&Sizes::<A, R>::TILE, A, m, tile_row, emit);
            }
        }
    }
}

/// The first α vectors.
#[target_feature(enable = "avx2,fma")]
fn first<const A: usize>(vectors: [__m256; LANES]) -> [Packed; A] {
    std::array::from_fn(|k| Packed(vectors[k]))
}

/// The eight floats of `values` from `at`.
#[inline(always)]
fn load(values: &[f32], at: usize) -> Packed {
    let lanes = &values[at..at + LANES];
    // SAFETY: a `Packed` is only made where the CPU has AVX2 (see its docs); `lanes`
    // holds the eight floats read.
    Packed(unsafe { _mm256_loadu_ps(lanes.as_ptr()) })
}

/// Writes `x` to the eight floats of `values` from `at`.
#[inline(always)]
fn store(values: &mut [f32], at: usize, x: Packed) {
    let lanes = &mut values[at..at + LANES];
    // SAFETY: as for `load`; `lanes` holds the eight floats written.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), x.0) }
}

/// One pack of eight lanes in an AVX2 register. Only the AVX2 functions of this file
/// make one (each `#[target_feature]`, reached with an [`Avx2Fma`] token), which is
/// what makes the intrinsics below sound to call.
#[derive(Clone, Copy)]
pub(super) struct Packed(__m256);

impl PackMath for Packed {
    #[inline(always)]
    fn zero() -> Self {
        // SAFETY (every method): a `Packed` exists, so the CPU has AVX2 and FMA.
        Packed(unsafe { _mm256_setzero_ps() })
    }
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        Packed(unsafe { _mm256_add_ps(self.0, other.0) })
    }
    #[inline(always)]
    fn sub(self, other: Self) -> Self {
        Packed(unsafe { _mm256_sub_ps(self.0, other.0) })
    }
    #[inline(always)]
    fn neg(self) -> Self {
        Packed(unsafe { _mm256_xor_ps(self.0, _mm256_set1_ps(-0.0)) })
    }
    #[inline(always)]
    fn scale(self, c: f64) -> Self {
        Packed(unsafe { _mm256_mul_ps(_mm256_set1_ps(c as f32), self.0) })
    }
    #[inline(always)]
    fn scale_add(self, c: f64, sum: Self) -> Self {
        Packed(unsafe { _mm256_fmadd_ps(_mm256_set1_ps(c as f32), self.0, sum.0) })
    }
}

/// The 8×8 transpose: lane j of result i is lane i of row j.
#[target_feature(enable = "avx2,fma")]
fn transpose(r: [__m256; LANES]) -> [__m256; LANES] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    // Columns 0 and 4, 1 and 5, 2 and 6, 3 and 7 of rows 0–3, then of rows 4–7.
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}
