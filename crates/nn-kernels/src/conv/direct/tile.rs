//! The forward micro-tile, compiled once per instruction set: `B` blocks of output
//! channels (one vector each) by `R` output cells of a row or column, every sum in a
//! register while the tile walks the input channels and filter taps.

use super::{Shape, Tile};
use crate::simd::{Avx2Fma, Avx512};
use std::arch::x86_64::*;

/// The vector operations a tile needs, on one instruction set. Each is
/// `#[inline(always)]`, so that it is compiled into the tile of the instruction set's
/// `#[target_feature]` function, and unsafe to call where the CPU lacks the
/// instructions or the pointers are not readable (writable) for `LANES` floats.
pub(super) trait Simd: Copy + Send + Sync {
    type V: Copy;
    /// Output channels per vector.
    const LANES: usize;
    /// Output cells per tile along a row: as many as keep `2 × CELLS` sums, two weight
    /// vectors and a broadcast in the registers.
    const CELLS: usize;
    /// The fewest cells of a tile along a row that still hide the FMA latency with
    /// two channel blocks.
    const MIN_CELLS: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn splat(p: *const f32) -> Self::V;
    /// `a · b + c`, fused.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Runs one tile compiled for these instructions: two channel blocks if `pair`,
    /// else one, over `cells` cells.
    ///
    /// # Safety
    /// Every read of `xp` and `packed` and every write of `y` the tile makes must lie
    /// in the buffers (as [`Shape::image`] checks).
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_tile(
        self,
        shape: &Shape,
        pair: bool,
        cells: usize,
        at: Tile,
        xp: &[f32],
        packed: &[f32],
        init: Option<&[f32]>,
        y: &mut [f32],
    );
}

/// `impl Simd` for one instruction set, and the `#[target_feature]` function its tiles
/// are compiled into, which picks the tile for this many channel blocks and cells.
macro_rules! simd {
    (
        $isa:ty, $v:ty, $feature:literal, $run:ident,
        lanes $lanes:literal, cells $cells:literal, min_cells $min_cells:literal, tiles [$($r:literal)*],
        $zero:ident, $load:ident, $splat:ident, $fmadd:ident, $store:ident $(,)?
    ) => {
        impl Simd for $isa {
            type V = $v;
            const LANES: usize = $lanes;
            const CELLS: usize = $cells;
            const MIN_CELLS: usize = $min_cells;
            #[inline(always)]
            unsafe fn zero() -> $v {
                unsafe { $zero() }
            }
            #[inline(always)]
            unsafe fn load(p: *const f32) -> $v {
                unsafe { $load(p) }
            }
            #[inline(always)]
            unsafe fn splat(p: *const f32) -> $v {
                unsafe { $splat(*p) }
            }
            #[inline(always)]
            unsafe fn fmadd(a: $v, b: $v, c: $v) -> $v {
                unsafe { $fmadd(a, b, c) }
            }
            #[inline(always)]
            unsafe fn store(p: *mut f32, v: $v) {
                unsafe { $store(p, v) }
            }
            unsafe fn run_tile(
                self,
                shape: &Shape,
                pair: bool,
                cells: usize,
                at: Tile,
                xp: &[f32],
                packed: &[f32],
                init: Option<&[f32]>,
                y: &mut [f32],
            ) {
                // SAFETY: the token proves the instructions; the bounds are the caller's.
                unsafe { $run(self, shape, pair, cells, at, xp, packed, init, y) }
            }
        }

        /// [`Simd::run_tile`] compiled for these instructions.
        ///
        /// # Safety
        /// As for [`Simd::run_tile`].
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $feature)]
        unsafe fn $run(
            _isa: $isa,
            shape: &Shape,
            pair: bool,
            cells: usize,
            at: Tile,
            xp: &[f32],
            packed: &[f32],
            init: Option<&[f32]>,
            y: &mut [f32],
        ) {
            // SAFETY: the instructions are present (`_isa`); the bounds are the caller's.
            unsafe {
                match (pair, cells, unit_step(shape, at)) {
                    $((true, $r, true) => tile::<$isa, $lanes, 2, $r, true>(shape, at, xp, packed, init, y),)*
                    $((true, $r, false) => tile::<$isa, $lanes, 2, $r, false>(shape, at, xp, packed, init, y),)*
                    $((false, $r, true) => tile::<$isa, $lanes, 1, $r, true>(shape, at, xp, packed, init, y),)*
                    $((false, $r, false) => tile::<$isa, $lanes, 1, $r, false>(shape, at, xp, packed, init, y),)*
                    _ => unreachable!("a tile has 1..=CELLS cells"),
                }
            }
        }
    };
}

simd!(
    Avx2Fma, __m256, "avx2,fma", run_avx2,
    lanes 8, cells 6, min_cells 6, tiles [1 2 3 4 5 6],
    _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps,
);
simd!(
    Avx512, __m512, "avx512f", run_avx512,
    lanes 16, cells 12, min_cells 6, tiles [1 2 3 4 5 6 7 8 9 10 11 12],
    _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps,
);

/// Tiles along a row at stride 1 read neighbouring cells: a step known at compile
/// time leaves the broadcasts plain offsets, not address arithmetic.
#[inline(always)]
fn unit_step(shape: &Shape, at: Tile) -> bool {
    !at.down && shape.stride[2] == 1
}

/// `B` blocks of output channels by `R` output cells of one row (or column);
/// `UNIT_STEP`: the cells are neighbours in the source (a row at stride 1). `L` is
/// `S::LANES`, passed again because only a const parameter can size the store buffer
/// (a run-time length cost measurably more instructions).
///
/// # Safety
/// As for [`Simd::run_tile`], on a CPU with `S`'s instructions.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // Indices over two register arrays read clearer.
unsafe fn tile<S: Simd, const L: usize, const B: usize, const R: usize, const UNIT_STEP: bool>(
    shape: &Shape,
    at: Tile,
    xp: &[f32],
    packed: &[f32],
    init: Option<&[f32]>,
    y: &mut [f32],
) {
    let [fd, fh, fw] = shape.filter;
    let [sd, s0, s1] = shape.stride;
    let [pd, ph, pw] = shape.padded;
    let plane = ph * pw;
    let block_len = shape.in_channels * shape.taps() * S::LANES;
    let [_, oh, ow] = shape.output;
    // From one cell of the tile to the next, in the padded source and in the output.
    let (source_step, output_step) = match (UNIT_STEP, at.down) {
        (true, _) => (1, 1),
        (false, true) => (s0 * pw, ow),
        (false, false) => (s1, 1),
    };
    // SAFETY (whole body): the caller guarantees the instructions and that every
    // offset below stays inside `xp`, `packed` and `y`.
    unsafe {
        let mut acc = [[S::zero(); R]; B];
        // The tile's first cell at its first tap, in the source and in the filter (past
        // the buffers, and never read, where a tile's taps all fall in the padding).
        let [(first_depth, end_depth), (first_row, end_row), (first_col, end_col)] = at.taps;
        let (depths, rows, cols) = (end_depth - first_depth, end_row - first_row, end_col - first_col);
        let x0 = xp.as_ptr().wrapping_add(
            (at.depth * sd + first_depth) * plane + (at.row * s0 + first_row) * pw + at.col * s1 + first_col,
        );
        let w0 = packed
            .as_ptr()
            .wrapping_add(at.block * block_len + ((first_depth * fh + first_row) * fw + first_col) * S::LANES);
        // Input channel and filter depth in one loop (a fourth loop level kept the
        // accumulators in memory): pointers stepped one depth at a time, and on to the
        // next channel's first tap after the last depth, so no index is multiplied out.
        let (x_depth, w_depth) = (plane, fh * fw * S::LANES);
        let (x_channel, w_channel) = ((pd - depths) * plane, (fd - depths) * w_depth);
        let (mut x_plane, mut w_plane, mut t) = (x0, w0, 0);
        for _ in 0..shape.in_channels * depths {
            for a in 0..rows {
                let x_row = x_plane.add(a * pw);
                let w_row = w_plane.add(a * fw * S::LANES);
                for b in 0..cols {
                    let w_tap = w_row.add(b * S::LANES);
                    let mut wv = [S::zero(); B];
                    for (k, v) in wv.iter_mut().enumerate() {
                        *v = S::load(w_tap.add(k * block_len));
                    }
                    for r in 0..R {
                        let xv = S::splat(x_row.add(r * source_step + b));
                        for k in 0..B {
                            acc[k][r] = S::fmadd(xv, wv[k], acc[k][r]);
                        }
                    }
                }
            }
            // Past the last channel these point beyond the buffers, never read.
            (x_plane, w_plane, t) = (x_plane.wrapping_add(x_depth), w_plane.wrapping_add(w_depth), t + 1);
            if t == depths {
                (x_plane, w_plane, t) = (x_plane.wrapping_add(x_channel), w_plane.wrapping_add(w_channel), 0);
            }
        }
        let mut lanes = [0.0f32; L];
        let first_cell = (at.depth * oh + at.row) * ow + at.col;
        let cells = shape.output_cells();
        for (k, acc) in acc.iter().enumerate() {
            let first = (at.block + k) * S::LANES;
            let channels = (shape.out_channels - first).min(S::LANES);
            for (r, v) in acc.iter().enumerate() {
                S::store(lanes.as_mut_ptr(), *v);
                for (l, &value) in lanes.iter().enumerate().take(channels) {
                    let o = first + l;
                    let bias = init.map_or(0.0, |b| b[o]);
                    *y.get_unchecked_mut(o * cells + first_cell + r * output_step) = bias + value;
                }
            }
        }
    }
}
