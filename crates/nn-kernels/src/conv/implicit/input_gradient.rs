//! The input gradient at a stride: the input cells split into residue classes, each
//! a stride-1 product of its own, and their results interleaved back into ∂x.

use super::kernel::stream_copy;
use super::product::Product;
use super::segments::segments;
use super::tiling::{pack_rows, TiledProduct, Writes};
use crate::conv::ConvProblem;
use crate::index::{row_major_strides, Odometer};
use crate::simd::Avx512;
use crate::workspace::{fit, with_scratch};
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::_mm_sfence;

/// The input gradient's classes and where each input row takes its cells from.
#[derive(Debug)]
pub(super) struct InputPlan {
    classes: Vec<InputClass>,
    /// Per input row and first cell mod s: see [`row_sources`].
    sources: Vec<Option<(usize, usize)>>,
}

impl InputPlan {
    /// None unless every class's reads lie inside its padded source, and none at a
    /// stride whose classes' rows fill at most half a vector: there the column
    /// path's GEMM, whose tiles do not follow the rows, is the faster one.
    pub(super) fn new(problem: &ConvProblem) -> Option<Self> {
        if narrow_classes(problem) {
            return None;
        }
        let classes = input_gradient_classes(problem);
        if classes.iter().any(|class| !class.taps.is_empty() && !class.tiled.product.reads_in_bounds()) {
            return None;
        }
        let g = problem.geometry();
        let sources = row_sources(&classes, g.input(), g.stride());
        Some(InputPlan { classes, sources })
    }
}

/// Whether the input gradient is at a stride and its classes' rows (the widest has
/// ⌈μ/s⌉ cells in the last dimension) fill at most half a vector.
pub(in crate::conv) fn narrow_classes(problem: &ConvProblem) -> bool {
    let g = problem.geometry();
    let last = g.rank() - 1;
    g.stride().iter().any(|&s| s > 1) && g.input()[last].div_ceil(g.stride()[last]) <= super::LANES / 2
}

/// The input cells `γ ≡ first (mod s)` in every dimension and the product that
/// computes their gradient.
///
/// Input cell γ = first + s·u receives `w[o, c, α] · ∂y[o, β]` from the taps with
/// `s·β − p + tap(α) = γ`, that is `β = u + q(α)` with `q = (first + p − tap)/s`, for
/// exactly the taps where that division leaves no remainder. So each class is a
/// stride-1 product over u with its own taps: source = ∂y′ (∂y with zero margins wide
/// enough for every class), rows = C_in, depth `(o, α)` over the class's taps. At
/// stride 1 there is one class, the whole plane.
#[derive(Debug)]
struct InputClass {
    /// The class's first input cell in each dimension (`< s`).
    first: Vec<usize>,
    /// Its cells per dimension.
    cells: Vec<usize>,
    /// The filter taps (flat α, row-major) that reach it, in order.
    taps: Vec<usize>,
    tiled: TiledProduct,
}

/// The classes of [`InputClass`] with at least one cell, in row-major order of `first`.
fn input_gradient_classes(problem: &ConvProblem) -> Vec<InputClass> {
    let g = problem.geometry();
    let rank = g.rank();
    let (s, f, mu, v) = (g.stride(), g.filter(), g.input(), g.output());
    // q(d, first, α) when the tap reaches the class, else None.
    let q = |d: usize, first: usize, a: usize| {
        let t = (first + g.padding()[d].before) as isize - g.tap_offset(d, a);
        (t.rem_euclid(s[d] as isize) == 0).then(|| t.div_euclid(s[d] as isize))
    };
    let count = |d: usize, first: usize| mu[d].saturating_sub(first).div_ceil(s[d]);
    // β + margin ≥ 0 since q ≥ −(f − 1)/s; the margin after covers the largest
    // u + q of any class and tap (those β past the output read zeros).
    let margin: Vec<usize> = (0..rank).map(|d| (f[d] - 1).div_ceil(s[d])).collect();
    let after: Vec<usize> = (0..rank)
        .map(|d| {
            let reach = (0..s[d]).flat_map(|e| (0..f[d]).filter_map(move |a| Some(count(d, e) as isize + q(d, e, a)?)));
            reach.map(|end| end - v[d] as isize).max().unwrap_or(0).max(0) as usize
        })
        .collect();
    let padded: Vec<usize> = (0..rank).map(|d| v[d] + margin[d] + after[d]).collect();
    let strides = row_major_strides(&padded);
    let plane: usize = padded.iter().product();
    let mut classes = Vec::new();
    let mut residues = Odometer::new(s);
    while let Some(first) = residues.current() {
        let cells: Vec<usize> = (0..rank).map(|d| count(d, first[d])).collect();
        if cells.iter().all(|&n| n > 0) {
            let (mut taps, mut reach) = (Vec::new(), Vec::new());
            let mut alphas = Odometer::new(f);
            let mut flat = 0;
            while let Some(alpha) = alphas.current() {
                if let Some(shifts) = (0..rank).map(|d| q(d, first[d], alpha[d])).collect::<Option<Vec<_>>>() {
                    taps.push(flat);
                    reach
                        .push((0..rank).map(|d| (shifts[d] + margin[d] as isize) as usize * strides[d]).sum::<usize>());
                }
                flat += 1;
                alphas.advance();
            }
            let offsets = (0..problem.out_channels()).flat_map(|o| reach.iter().map(move |r| o * plane + r)).collect();
            let product = Product {
                padded: padded.clone(),
                phases: 1,
                margin: margin.clone(),
                unpadded: v.to_vec(),
                channels: problem.out_channels(),
                offsets,
                segments: segments(&cells, &vec![1; rank], &strides),
                rows: problem.in_channels(),
                plane: cells.iter().product(),
            };
            classes.push(InputClass { first: first.to_vec(), cells, taps, tiled: TiledProduct::new(product) });
        }
        residues.advance();
    }
    classes
}

/// Where each row of an input plane takes its cells from: for row r (row-major over
/// all dimensions but the last) and each first cell e < s of the last dimension, entry
/// `r·s + e` holds the class whose cells those are and where that row starts in
/// channel 0 of the class's result (None for first cells past the input, which have
/// no class). Worked out once per plan rather than from each row's n-dimensional
/// index for every channel (docs/performance.md, "Strided input gradient").
fn row_sources(classes: &[InputClass], input: &[usize], stride: &[usize]) -> Vec<Option<(usize, usize)>> {
    let last = input.len() - 1;
    let mut by_first = vec![None; stride.iter().product()];
    for (i, class) in classes.iter().enumerate() {
        by_first[class.first.iter().zip(stride).fold(0, |at, (&e, &s)| at * s + e)] = Some(i);
    }
    let mut sources = Vec::new();
    let mut outer = Odometer::new(&input[..last]);
    while let Some(gamma) = outer.current() {
        let outer_residue = gamma.iter().zip(stride).fold(0, |at, (&g, &s)| at * s + g % s) * stride[last];
        for e in 0..stride[last] {
            sources.push(by_first[outer_residue + e].map(|i: usize| {
                let cells = &classes[i].cells;
                let row = (0..last).fold(0, |at, d| at * cells[d] + gamma[d] / stride[d]);
                (i, row * cells[last])
            }));
        }
        outer.advance();
    }
    sources
}

/// Writes channel `c` of the classes' results (`results[i]`: `[rows, class i's
/// cells]`) into `dx_plane` (one input plane of ∂x, rows of `width` at last stride
/// `s`), one pass over each input row: cell j of a row comes from the class row that
/// [`row_sources`] gives for j mod s.
fn interleave_channel(
    classes: &[InputClass],
    sources: &[Option<(usize, usize)>],
    results: &[&[f32]],
    c: usize,
    (width, s): (usize, usize),
    dx_plane: &mut [f32],
) {
    for (dx_row, row_sources) in dx_plane.chunks_exact_mut(width).zip(sources.chunks_exact(s)) {
        let class_row = |e: usize| -> &[f32] {
            let Some((i, at)) = row_sources[e] else { return &[] };
            let len = classes[i].cells.last().copied().unwrap_or(0);
            &results[i][c * classes[i].tiled.product.plane + at..][..len]
        };
        if s == 2 {
            let (even, odd) = (class_row(0), class_row(1));
            for (pair, (&a, &b)) in dx_row.chunks_exact_mut(2).zip(even.iter().zip(odd)) {
                pair[0] = a;
                pair[1] = b;
            }
            if width % 2 == 1 {
                dx_row[width - 1] = even[width / 2];
            }
        } else {
            for e in 0..s {
                for (j, &value) in class_row(e).iter().enumerate() {
                    dx_row[e + s * j] = value;
                }
            }
        }
    }
}

/// The input gradient by implicit GEMM, ∂x written as `writes` says
/// ([`Writes::for_batch`] is the measured choice; at a stride, ∂x is streamed a plane
/// at a time whatever the band size). Returns false, having done nothing, where the
/// plan has no input-gradient product. `dx` is overwritten. Lengths are the caller's
/// to check.
pub(in crate::conv) fn backward_input(
    isa: Avx512,
    plan: &super::Plan,
    problem: &ConvProblem,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    writes: Writes,
) -> bool {
    let Some(InputPlan { classes, sources }) = &plan.input else { return false };
    let g = problem.geometry();
    let (taps, c_in, c_out) = (g.filter_len(), problem.in_channels(), problem.out_channels());
    let depths: Vec<usize> = classes.iter().map(|class| class.tiled.product.offsets.len()).collect();
    // At a stride the classes' results stay in cache, and only ∂x may be streamed.
    let stride_1 = g.stride().iter().all(|&s| s == 1);
    let class_writes = if stride_1 { writes } else { Writes::Direct };
    with_scratch::<f32, 1, _>(|[packed]| {
        let packed = fit(packed, c_in * depths.iter().sum::<usize>());
        // Per class, row c, depth (o, j) is w[o, c, α_j] for the class's taps α_j.
        let mut rest = &mut packed[..];
        let mut weights = Vec::with_capacity(classes.len());
        for (class, &depth) in classes.iter().zip(&depths) {
            let (mine, others) = rest.split_at_mut(c_in * depth);
            let m = class.taps.len();
            pack_rows(class.tiled.slivers(), depth, |c, k| w[((k / m) * c_in + c) * taps + class.taps[k % m]], mine);
            weights.push(&*mine);
            rest = others;
        }
        if stride_1 {
            // One class, the whole plane with every tap: written in place.
            return classes[0].tiled.multiply_batch(isa, class_writes, weights[0], None, 0.0, dy, dx);
        }
        let source = &classes[0].tiled.product;
        let row_shape = (g.input()[g.rank() - 1], g.stride()[g.rank() - 1]);
        let streamed = writes != Writes::Direct;
        let source_len = c_out * g.output_len();
        dx.par_chunks_mut(c_in * g.input_len()).zip(dy.par_chunks(source_len)).for_each(|(dx_image, dy_image)| {
            with_scratch::<f32, 3, _>(|[padded, all_results, stage]| {
                let padded = fit(padded, source.buffer_len());
                source.pad_image(dy_image, 0.0, padded);
                // The classes partition the input cells: their results fill one image.
                let mut rest = fit(all_results, dx_image.len());
                let mut results = Vec::with_capacity(classes.len());
                for (class, packed) in classes.iter().zip(&weights) {
                    let (result, others) = rest.split_at_mut(c_in * class.tiled.product.plane);
                    if class.taps.is_empty() {
                        // No tap reaches these cells (a stride longer than the filter).
                        result.fill(0.0);
                    } else {
                        class.tiled.multiply_image(isa, class_writes, packed, None, padded, result, stage);
                    }
                    results.push(&*result);
                    rest = others;
                }
                let input_plane = g.input_len();
                for (c, dx_plane) in dx_image.chunks_exact_mut(input_plane).enumerate() {
                    if streamed {
                        // Interleaved into a stage in cache (12.5 KB for C5), then
                        // streamed out without the read for ownership of each line.
                        let staged = fit(stage, input_plane);
                        interleave_channel(classes, sources, &results, c, row_shape, staged);
                        // SAFETY: AVX-512F is present (the caller holds the token).
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            stream_copy(staged, dx_plane)
                        };
                    } else {
                        interleave_channel(classes, sources, &results, c, row_shape, dx_plane);
                    }
                }
                if streamed {
                    // SAFETY: SSE is part of x86-64; as in `multiply_image`, the fence orders
                    // the non-temporal stores before the worker reports its task done.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        _mm_sfence()
                    };
                }
            })
        });
    });
    true
}
