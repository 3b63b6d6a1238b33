//! The depthwise gradients: of the input (each input cell gathers its taps, or at
//! strides over 1 the taps are scattered), of the weights (each tap's sum over a plane
//! in registers), and all of them with the bias's in one walk over each channel's
//! planes.

use super::walk::{Gather, Walk};
#[cfg(target_arch = "x86_64")]
use super::{avx2, fast, fast_strided};
use super::{load, Sizes, Steps, VECTORS};
use crate::conv::ConvProblem;
use crate::simd::avx2_dispatch;
use crate::workspace::{fit, with_scratch};
use crate::Element;
use rayon::prelude::*;

/// `∂x = convᵀ(∂y, w)`, plane by plane: at stride 1 along rows each input cell
/// gathers its taps in registers; otherwise the taps are scattered into a padded
/// gradient plane whose interior is then kept (padded cells are constants).
pub(in crate::conv) fn backward_input<T: Element>(problem: &ConvProblem, w: &[T], dy: &[T], dx: &mut [T]) {
    let Sizes { c_in, c_out, multiplier, in_plane, out_plane, taps } = Sizes::of(problem);
    let walk = Walk::new(problem.geometry());
    let gather = (walk.stride == 1).then(|| Gather::new(&walk, problem.geometry()));
    dx.par_chunks_mut(in_plane).enumerate().for_each(|(plane, dx)| {
        let (n, c) = (plane / c_in, plane % c_in);
        // The output channels of input channel c, side by side in dy and w.
        let dy = &dy[(n * c_out + c * multiplier) * out_plane..][..multiplier * out_plane];
        let w = &w[c * multiplier * taps..][..multiplier * taps];
        with_scratch::<T, 1, _>(|[scratch]| input_plane(&walk, gather.as_ref(), w, dy, out_plane, scratch, dx));
    });
}

/// One input channel's gradient plane `dx` (overwritten) from the gradient planes `dy`
/// and filters `w` of its output channels, side by side; `scratch` is this thread's.
fn input_plane<T: Element>(
    walk: &Walk,
    gather: Option<&Gather>,
    w: &[T],
    dy: &[T],
    out_plane: usize,
    scratch: &mut Vec<T>,
    dx: &mut [T],
) {
    let taps = w.len() / (dy.len() / out_plane);
    match gather {
        Some(gather) => {
            let dyp = fit(scratch, dy.len() / out_plane * gather.plane_len());
            for (dy, dyp) in dy.chunks_exact(out_plane).zip(dyp.chunks_exact_mut(gather.plane_len())) {
                gather.pad(walk.out_row, dy, dyp);
            }
            #[cfg(target_arch = "x86_64")]
            if let (Some(isa), Some(w), Some(dyp), Some(dx)) =
                (fast(walk), T::as_f32(w), T::as_f32(dyp), T::as_f32_mut(dx))
            {
                return avx2::gather_plane(isa, walk, gather, w, dyp, dx);
            }
            gather_plane(walk, gather, w, dyp, dx);
        }
        None => {
            let dxp = fit(scratch, walk.padded_len());
            dxp.fill(T::zero());
            for (w, dy) in w.chunks_exact(taps).zip(dy.chunks_exact(out_plane)) {
                scatter_plane(walk, w, dy, dxp);
            }
            walk.unpad(dxp, dx);
        }
    }
}

avx2_dispatch!(fn gather_plane<T: Element>(walk: &Walk, gather: &Gather, w: &[T], dyp: &[T], dx: &mut [T]) => gather_plane_body);

#[inline(always)]
fn gather_plane_body<T: Element>(walk: &Walk, gather: &Gather, w: &[T], dyp: &[T], dx: &mut [T]) {
    for (row, dx) in dx.chunks_exact_mut(walk.in_row).enumerate() {
        for (c, vectors) in Steps::new(dx.len(), T::WIDTH) {
            match vectors {
                0 => gather_cells::<T, 0>(walk, gather, row, w, dyp, c, dx),
                1 => gather_cells::<T, 1>(walk, gather, row, w, dyp, c, dx),
                2 => gather_cells::<T, 2>(walk, gather, row, w, dyp, c, dx),
                3 => gather_cells::<T, 3>(walk, gather, row, w, dyp, c, dx),
                _ => gather_cells::<T, VECTORS>(walk, gather, row, w, dyp, c, dx),
            }
        }
    }
}

/// Cells `c..` of input row `row` (V vectors of them, or one cell when V is 0):
/// `Σ_o Σ_links Σ_k w·∂y`, the output gradient read from its padded copies `dyp` (one
/// per output channel of this input channel).
#[inline(always)]
fn gather_cells<T: Element, const V: usize>(
    walk: &Walk,
    gather: &Gather,
    row: usize,
    w: &[T],
    dyp: &[T],
    c: usize,
    dx: &mut [T],
) {
    let width = T::WIDTH;
    let taps = w.len() / (dyp.len() / gather.plane_len());
    let mut acc = [T::splat(T::zero()); V];
    let mut sum = T::zero();
    for (w, dyp) in w.chunks_exact(taps).zip(dyp.chunks_exact(gather.plane_len())) {
        for &(out_row, first_weight) in gather.links(row) {
            let g = &dyp[out_row + gather.shift + c - gather.margin()..];
            for (&offset, &weight) in walk.offsets.iter().zip(&w[first_weight..]) {
                // The margin is the largest offset, so this read starts in bounds.
                let at = gather.margin() - offset;
                if V == 0 {
                    sum += weight * g[at];
                }
                let weight = T::splat(weight);
                for (v, acc) in acc.iter_mut().enumerate() {
                    *acc = *acc + weight * T::load(&g[at + v * width..]);
                }
            }
        }
    }
    if V == 0 {
        dx[c] = sum;
    }
    for (v, &acc) in acc.iter().enumerate() {
        T::store(acc, &mut dx[c + v * width..]);
    }
}

avx2_dispatch!(fn scatter_plane<T: Element>(walk: &Walk, w: &[T], dy: &[T], dxp: &mut [T]) => scatter_plane_body);

#[inline(always)]
fn scatter_plane_body<T: Element>(walk: &Walk, w: &[T], dy: &[T], dxp: &mut [T]) {
    let stride = walk.stride;
    for (&start, dy) in walk.out_rows.iter().zip(dy.chunks_exact(walk.out_row)) {
        for &(row, first_weight) in &walk.tap_rows {
            for (&offset, &weight) in walk.offsets.iter().zip(&w[first_weight..]) {
                let dxp = &mut dxp[start + row + offset..];
                for (j, &g) in dy.iter().enumerate() {
                    dxp[j * stride] += weight * g;
                }
            }
        }
    }
}

/// `∂w += Σ_n Σ_β ∂y[n, o, β]·x′[n, c, γ(β, α)]`, one output channel per task, its
/// images summed in order.
pub(in crate::conv) fn backward_weight<T: Element>(
    problem: &ConvProblem,
    batch: usize,
    x: &[T],
    dy: &[T],
    pad: T,
    dw: &mut [T],
) {
    let Sizes { c_in, c_out, multiplier, in_plane, out_plane, taps } = Sizes::of(problem);
    let walk = Walk::new(problem.geometry());
    dw.par_chunks_mut(taps).enumerate().for_each(|(o, dw)| {
        let c = o / multiplier;
        with_scratch::<T, 1, _>(|[xp]| {
            // One cell of slack, which the AVX2 weight gradient at stride 2 reads and discards.
            let xp = fit(xp, walk.padded_len() + 1);
            for n in 0..batch {
                walk.pad(&x[(n * c_in + c) * in_plane..][..in_plane], pad, xp);
                add_weight_plane(&walk, xp, &dy[(n * c_out + o) * out_plane..][..out_plane], dw);
            }
        });
    });
}

/// Adds one image's part of one output channel's weight gradient to `dw`, from its
/// padded input plane `xp` (with one cell of slack) and its gradient plane `dy`.
fn add_weight_plane<T: Element>(walk: &Walk, xp: &[T], dy: &[T], dw: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(isa), Some(xp), Some(dy), Some(dw)) =
        (fast_strided(walk), T::as_f32(xp), T::as_f32(dy), T::as_f32_mut(dw))
    {
        return avx2::weight_plane(isa, walk, xp, dy, dw);
    }
    weight_plane(walk, xp, dy, dw);
}

/// The bias gradient (when `db` is given), the weight gradient and the input gradient
/// (when `dx` is given) in one walk: one task per input channel takes its images in
/// order, and each image's planes of x and ∂y come from memory once for all three
/// (three passes read ∂y three times and x once per output channel). Each sum runs
/// in the separate passes' order: the same bits.
#[allow(clippy::too_many_arguments)]
pub(in crate::conv) fn backward<T: Element>(
    problem: &ConvProblem,
    batch: usize,
    x: &[T],
    w: &[T],
    dy: &[T],
    pad: T,
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
) {
    let Sizes { c_in, c_out, multiplier, in_plane, out_plane, taps } = Sizes::of(problem);
    let walk = Walk::new(problem.geometry());
    let gather = (walk.stride == 1).then(|| Gather::new(&walk, problem.geometry()));
    // Each input channel's planes of ∂x, its images in order, and its output channels' ∂b.
    let mut dx_planes: Vec<Vec<&mut [T]>> = (0..c_in).map(|_| Vec::new()).collect();
    for (plane, dx) in dx.into_iter().flat_map(|dx| dx.chunks_exact_mut(in_plane)).enumerate() {
        dx_planes[plane % c_in].push(dx);
    }
    let db_chunks: Vec<Option<&mut [T]>> = match db {
        Some(db) => db.chunks_exact_mut(multiplier).map(Some).collect(),
        None => (0..c_in).map(|_| None).collect(),
    };
    let tasks = dx_planes.into_par_iter().zip(dw.par_chunks_mut(multiplier * taps)).zip(db_chunks);
    tasks.enumerate().for_each(|(c, ((dx_planes, dw), mut db))| {
        let w = &w[c * multiplier * taps..][..multiplier * taps];
        let mut dx_planes = dx_planes.into_iter();
        with_scratch::<T, 2, _>(|[xp, scratch]| {
            // One cell of slack, which the AVX2 weight gradient at stride 2 reads and discards.
            let xp = fit(xp, walk.padded_len() + 1);
            for n in 0..batch {
                let dy = &dy[(n * c_out + c * multiplier) * out_plane..][..multiplier * out_plane];
                walk.pad(&x[(n * c_in + c) * in_plane..][..in_plane], pad, xp);
                for (o, (dy, dw)) in dy.chunks_exact(out_plane).zip(dw.chunks_exact_mut(taps)).enumerate() {
                    add_weight_plane(&walk, xp, dy, dw);
                    if let Some(db) = db.as_deref_mut() {
                        db[o] += crate::elementwise::sum(dy);
                    }
                }
                if let Some(dx) = dx_planes.next() {
                    input_plane(&walk, gather.as_ref(), w, dy, out_plane, scratch, dx);
                }
            }
        });
    });
}

avx2_dispatch!(fn weight_plane<T: Element>(walk: &Walk, xp: &[T], dy: &[T], dw: &mut [T]) => weight_plane_body);

#[inline(always)]
fn weight_plane_body<T: Element>(walk: &Walk, xp: &[T], dy: &[T], dw: &mut [T]) {
    for &(row, first_weight) in &walk.tap_rows {
        let dw = &mut dw[first_weight..][..walk.offsets.len()];
        let mut k = 0;
        while k < dw.len() {
            k += match dw.len() - k {
                1 => weight_taps::<T, 1>(walk, &xp[row..], dy, k, dw),
                2 => weight_taps::<T, 2>(walk, &xp[row..], dy, k, dw),
                3 => weight_taps::<T, 3>(walk, &xp[row..], dy, k, dw),
                _ => weight_taps::<T, 4>(walk, &xp[row..], dy, k, dw),
            };
        }
    }
}

/// Adds to `dw[k..k + K]` (taps along the row) `Σ_rows Σ_j ∂y·x′`, with one load of
/// ∂y serving K taps and the sums kept in registers over the whole plane; returns K.
#[inline(always)]
fn weight_taps<T: Element, const K: usize>(walk: &Walk, xp: &[T], dy: &[T], k: usize, dw: &mut [T]) -> usize {
    let (stride, width) = (walk.stride, T::WIDTH);
    let offsets: [usize; K] = std::array::from_fn(|i| walk.offsets[k + i]);
    let mut acc = [T::splat(T::zero()); K];
    let mut rest = [T::zero(); K];
    for (&start, dy) in walk.out_rows.iter().zip(dy.chunks_exact(walk.out_row)) {
        let x = &xp[start..];
        let whole = dy.len() / width * width;
        for j in (0..whole).step_by(width) {
            let g = T::load(&dy[j..]);
            for i in 0..K {
                acc[i] = acc[i] + g * load::<T>(x, offsets[i] + j * stride, stride);
            }
        }
        for (j, &g) in dy.iter().enumerate().skip(whole) {
            for i in 0..K {
                rest[i] += g * x[offsets[i] + j * stride];
            }
        }
    }
    for i in 0..K {
        dw[k + i] += T::reduce_add(acc[i]) + rest[i];
    }
    K
}
