//! A convolution problem: geometry and channel counts, validated once, with the plan
//! its kernels share, and the column path's cutting of a batch into blocks.

use super::columns::gather_channels;
use super::im2col::{self, LineTable, Placement};
use super::implicit;
use crate::error::check_len;
use crate::gemm::{MatRef, Transpose};
use crate::geometry::ConvGeometry;
use crate::workspace::fit;
use crate::{Element, GeometryError, KernelError};
use std::ops::Range;
use std::sync::{Arc, OnceLock};

/// Column matrices of several images are built side by side, up to this many bytes,
/// so that one GEMM serves a group (fewer, larger products) while the matrix stays
/// in the L2 cache between im2col and the GEMM.
const COL_BUDGET_BYTES: usize = 1 << 20;

/// Images are put side by side until the block has this many columns (output cells):
/// narrower products waste the GEMM's packing, wider ones its cache.
const MIN_BLOCK_WIDTH: usize = 768;

/// How a convolution's sums are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvAlgorithm {
    /// Every product of the source's sums, in an order fixed by the problem: the
    /// results a direct evaluation gives, up to the summation order's rounding.
    #[default]
    Exact,
    /// Winograd minimal filtering where the geometry suits it (two dimensions, stride
    /// 1, undilated, ungrouped, 3×3 or 5×5 filters; elsewhere the exact path runs):
    /// up to 4 (3×3) or 6.25 (5×5) times fewer multiplications, at the price of the
    /// transforms' rounding.
    /// f32 results stay within `4e-6·(n + 1)·(1 + |exact|)` of the exact sum of n
    /// terms (tested over random geometry); deterministic, and independent of the
    /// thread count.
    Winograd,
}

/// A convolution over `in_channels` planes of one geometry, producing `out_channels`,
/// with its plan: what the kernels work out from the problem alone, once (a layer
/// builds its problem once, and clones share the plan).
#[derive(Debug, Clone)]
pub struct ConvProblem {
    geometry: ConvGeometry,
    in_channels: usize,
    out_channels: usize,
    /// Channel groups g: output channel o sees only the inputs of its group.
    groups: usize,
    /// Bytes of column matrix one block of work may fill (see [`ConvProblem::with_col_budget`]).
    col_budget: usize,
    algorithm: ConvAlgorithm,
    plan: Arc<ConvPlan>,
}

/// What both paths work out once per problem.
#[derive(Debug)]
pub(super) struct ConvPlan {
    /// The column path's line starts.
    pub(super) lines: LineTable,
    /// The implicit-GEMM path's products, made on its first use (never, for f64 or on
    /// a CPU without AVX-512).
    implicit: OnceLock<implicit::Plan>,
}

impl PartialEq for ConvProblem {
    fn eq(&self, other: &Self) -> bool {
        (&self.geometry, self.in_channels, self.out_channels, self.groups, self.col_budget, self.algorithm)
            == (&other.geometry, other.in_channels, other.out_channels, other.groups, other.col_budget, other.algorithm)
    }
}

impl Eq for ConvProblem {}

impl ConvProblem {
    /// A problem with validated sizes: channel counts positive and every buffer length
    /// representable.
    ///
    /// # Errors
    /// [`GeometryError::Zero`] for a channel count of zero, [`GeometryError::Overflow`]
    /// when a buffer (of f64, the wider element) or the plan's line table would exceed
    /// what one allocation can hold.
    pub fn new(geometry: ConvGeometry, in_channels: usize, out_channels: usize) -> Result<Self, GeometryError> {
        Self::grouped(geometry, in_channels, out_channels, 1)
    }

    /// A problem whose channels fall into `groups` groups of consecutive channels,
    /// output channel o reading only the `C_in/g` inputs of its group (g = C_in:
    /// depthwise, with `C_out/C_in` outputs per input channel). The weight is
    /// `[C_out, C_in/g, f…]`.
    ///
    /// # Errors
    /// As for [`ConvProblem::new`], and [`GeometryError::Groups`] when `groups` is zero
    /// or does not divide both channel counts.
    pub fn grouped(
        geometry: ConvGeometry,
        in_channels: usize,
        out_channels: usize,
        groups: usize,
    ) -> Result<Self, GeometryError> {
        if groups == 0 || !in_channels.is_multiple_of(groups) || !out_channels.is_multiple_of(groups) {
            return Err(GeometryError::Groups { groups, in_channels, out_channels });
        }
        if in_channels == 0 {
            return Err(GeometryError::Zero { what: "input channel count", dim: 0 });
        }
        if out_channels == 0 {
            return Err(GeometryError::Zero { what: "output channel count", dim: 0 });
        }
        // Lengths in elements of 8 bytes, each within one allocation (isize::MAX bytes).
        let checked = |a: usize, b: usize| {
            a.checked_mul(b)
                .filter(|&n| n <= isize::MAX as usize / size_of::<f64>())
                .ok_or(GeometryError::Overflow { what: "convolution buffer size" })
        };
        let col_rows = checked(in_channels, geometry.filter_len())?;
        checked(col_rows, geometry.output_len())?;
        checked(col_rows, out_channels)?;
        checked(in_channels, geometry.input_len())?;
        checked(out_channels, geometry.output_len())?;
        LineTable::check_size(&geometry)?;
        let plan = Arc::new(ConvPlan { lines: LineTable::new(&geometry), implicit: OnceLock::new() });
        Ok(Self {
            geometry,
            in_channels,
            out_channels,
            groups,
            col_budget: COL_BUDGET_BYTES,
            algorithm: ConvAlgorithm::Exact,
            plan,
        })
    }

    /// The per-plane geometry.
    pub fn geometry(&self) -> &ConvGeometry {
        &self.geometry
    }
    /// C_in.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }
    /// C_out.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }
    /// The channel groups g (1: every output reads every input).
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The column path's line starts.
    pub(super) fn lines(&self) -> &LineTable {
        &self.plan.lines
    }

    /// The implicit path's products, made on first use.
    pub(super) fn implicit_plan(&self) -> &implicit::Plan {
        self.plan.implicit.get_or_init(|| implicit::Plan::new(self))
    }

    /// Sets how many bytes of column matrix one block of work may fill (default 1 MiB,
    /// tuned on a 2 MiB L2). Smaller budgets cut images into tiles; larger ones put
    /// more images side by side. Results are the same up to rounding.
    pub fn with_col_budget(mut self, bytes: usize) -> Self {
        self.col_budget = bytes.max(1);
        self
    }

    /// Chooses how the sums are computed (default [`ConvAlgorithm::Exact`]).
    pub fn with_algorithm(mut self, algorithm: ConvAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The algorithm asked for.
    pub fn algorithm(&self) -> ConvAlgorithm {
        self.algorithm
    }

    /// Whether Winograd minimal filtering runs: asked for, and the geometry suits it.
    pub fn uses_winograd(&self) -> bool {
        super::winograd::filter_size(self).is_some()
    }

    pub(super) fn winograd_requested(&self) -> bool {
        self.algorithm == ConvAlgorithm::Winograd
    }

    /// Elements of one input image: `C_in·∏μ`.
    pub fn input_image_len(&self) -> usize {
        self.in_channels * self.geometry.input_len()
    }
    /// Elements of one output image: `C_out·∏v`.
    pub fn output_image_len(&self) -> usize {
        self.out_channels * self.geometry.output_len()
    }
    /// Elements of the weight: `C_out·(C_in/g)·∏f`.
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.group_rows()
    }
    /// Rows of the column matrix: `C_in·∏f`.
    pub(super) fn col_rows(&self) -> usize {
        self.in_channels * self.geometry.filter_len()
    }
    /// Rows of one group's block of the column matrix, and columns of the weight:
    /// `(C_in/g)·∏f`.
    pub(super) fn group_rows(&self) -> usize {
        self.col_rows() / self.groups
    }
    fn col_len(&self) -> usize {
        self.col_rows() * self.geometry.output_len()
    }

    pub(super) fn check_batch(
        &self,
        what: &'static str,
        len: usize,
        per_image: usize,
        batch: usize,
    ) -> Result<(), KernelError> {
        let expected = batch.checked_mul(per_image).ok_or(GeometryError::Overflow { what: "batch buffer size" })?;
        check_len(what, expected, len)
    }

    /// How to cut the batch into blocks whose column matrix fits the column budget:
    /// several whole images side by side, or tiles of lines of one image when one
    /// image's matrix is too large. A pointwise convolution uses the image itself as
    /// its column matrix: whole images, one at a time.
    pub(super) fn blocking<T>(&self) -> Blocking {
        let lines = self.lines().lines_per_row();
        if self.geometry.is_pointwise() {
            return Blocking { images: 1, lines_per_tile: lines };
        }
        let per_image = self.col_len() * std::mem::size_of::<T>();
        if per_image <= self.col_budget {
            // Enough images side by side for a wide product, within the budget.
            let wanted = MIN_BLOCK_WIDTH.div_ceil(self.geometry.output_len());
            return Blocking { images: wanted.min(self.col_budget / per_image).max(1), lines_per_tile: lines };
        }
        let per_line = per_image / lines;
        Blocking { images: 1, lines_per_tile: (self.col_budget / per_line).clamp(1, lines) }
    }

    /// The column matrix of a block (`[C_in·∏f, width]`), built in `col`, or the image
    /// itself when the convolution is pointwise.
    pub(super) fn block_columns<'a, T: Element>(
        &self,
        x: &'a [T],
        block: &Block,
        pad_value: T,
        col: &'a mut Vec<T>,
    ) -> &'a [T] {
        let in_len = self.input_image_len();
        let images = &x[block.first_image * in_len..(block.first_image + block.images) * in_len];
        if self.geometry.is_pointwise() {
            return images;
        }
        let width = block.width(&self.geometry);
        let tile_width = width / block.images;
        let col = fit(col, self.col_rows() * width);
        for (i, image) in images.chunks(in_len).enumerate() {
            let at = Placement { ld: width, offset: i * tile_width };
            im2col::im2col(
                &self.geometry,
                self.lines(),
                self.in_channels,
                pad_value,
                image,
                block.lines.clone(),
                col,
                at,
            );
        }
        col
    }

    /// ∂y of a block as a `C_out × width` matrix: a strided view of the image for a
    /// single image, else gathered channel-major into `buffer`.
    pub(super) fn block_gradient<'a, T: Element>(
        &self,
        dy: &'a [T],
        block: &Block,
        buffer: &'a mut Vec<T>,
    ) -> MatRef<'a, T> {
        let (out_len, plane) = (self.output_image_len(), self.geometry.output_len());
        let images = &dy[block.first_image * out_len..(block.first_image + block.images) * out_len];
        if block.images == 1 {
            let first = block.lines.start * self.geometry.output()[self.geometry.rank() - 1];
            return MatRef { data: &images[first..], ld: plane, trans: Transpose::No };
        }
        gather_channels(images, self.out_channels, plane, buffer);
        MatRef { data: &buffer[..images.len()], ld: block.images * plane, trans: Transpose::No }
    }

    /// The blocks of images `images`, in order.
    pub(super) fn blocks(&self, blocking: Blocking, images: Range<usize>) -> impl Iterator<Item = Block> + '_ {
        let lines = self.lines().lines_per_row();
        let starts = images.clone().step_by(blocking.images);
        starts.flat_map(move |first_image| {
            let count = blocking.images.min(images.end - first_image);
            (0..lines).step_by(blocking.lines_per_tile).map(move |l| Block {
                first_image,
                images: count,
                lines: l..(l + blocking.lines_per_tile).min(lines),
            })
        })
    }
}

/// Images per block, or lines per tile of a single image.
#[derive(Debug, Clone, Copy)]
pub(super) struct Blocking {
    pub(super) images: usize,
    pub(super) lines_per_tile: usize,
}

/// A unit of work: `images` whole images from `first_image`, or (with one image) the
/// output lines `lines` of it.
#[derive(Debug, Clone)]
pub(super) struct Block {
    pub(super) first_image: usize,
    pub(super) images: usize,
    pub(super) lines: Range<usize>,
}

impl Block {
    /// Columns of the block's matrix.
    pub(super) fn width(&self, geometry: &ConvGeometry) -> usize {
        self.images * self.lines.len() * geometry.output()[geometry.rank() - 1]
    }
}
