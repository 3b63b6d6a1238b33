//! How a product's tiles cover its output: slivers of output rows by groups of
//! segments, in bands written directly or staged and streamed out, and the weights
//! packed to match the slivers.

use super::product::Product;
use super::segments::{Segment, Store};
use super::{MAX_ROWS, MAX_ROWS_3};
use std::borrow::Cow;

/// Whether `rows` by `segments` runs as tiles of at most 8 rows by three segments
/// rather than 12 by two (24 accumulators either way). A three-segment tile costs a
/// few percent more, so it is taken where it needs at least 10% fewer tiles: rows
/// that fill 8-row slivers better (16, 32 or 64) and little waste in the plane's last
/// group of three (docs/performance.md, "Tile shapes").
fn prefers_three_segments(rows: usize, segments: usize) -> bool {
    let tiles = |max_rows: usize, width: usize| rows.div_ceil(max_rows) * segments.div_ceil(width);
    10 * tiles(MAX_ROWS_3, 3) <= 9 * tiles(MAX_ROWS, 2)
}

/// Output rows per micro-tile: balanced heights of at most [`MAX_ROWS`] (64 rows are
/// 11, 11, 11, 11, 10, 10, not five 12s and an inefficient 4).
fn slivers(rows: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    slivers_of(rows, MAX_ROWS)
}

/// `rows` cut into the fewest ranges of at most `max` rows, of balanced heights.
pub(super) fn slivers_of(rows: usize, max: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let count = rows.div_ceil(max);
    let (height, taller) = (rows / count.max(1), rows % count.max(1));
    (0..count).scan(0, move |start, i| {
        let range = *start..*start + height + usize::from(i < taller);
        *start = range.end;
        Some(range)
    })
}

/// `a(r, k)` packed sliver by sliver (a tiling's [`Tiling::slivers`]): within a
/// sliver of rows `r0..r1`, depth index k holds the sliver's rows side by side at
/// `r0·depth + k·(r1 − r0)`.
pub(super) fn pack_rows(
    slivers: &[std::ops::Range<usize>],
    depth: usize,
    a: impl Fn(usize, usize) -> f32,
    packed: &mut [f32],
) {
    for sliver in slivers.iter().cloned() {
        let out = &mut packed[sliver.start * depth..sliver.end * depth];
        for (k, group) in out.chunks_exact_mut(sliver.len()).enumerate() {
            for (i, slot) in group.iter_mut().enumerate() {
                *slot = a(sliver.start + i, k);
            }
        }
    }
}

/// How a product's outputs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::conv) enum Writes {
    /// Straight from the micro-kernels' masked stores.
    Direct,
    /// A band of about `band_bytes` at a time into a stage that stays in cache, then
    /// copied out with non-temporal stores. Written directly, the output of a batch
    /// larger than the caches is read from memory before each line is written (the
    /// stores' read for ownership) and pushes the padded image out of L2.
    Streamed { band_bytes: usize },
}

impl Writes {
    /// Streamed, in bands of [`BAND_BYTES`], for a batch of at least
    /// [`STREAM_MIN_BYTES`] of sources and outputs; direct otherwise.
    pub(in crate::conv) fn for_batch(sources: &[f32], outputs: &[f32]) -> Writes {
        if std::mem::size_of_val(sources) + std::mem::size_of_val(outputs) >= STREAM_MIN_BYTES {
            Writes::Streamed { band_bytes: BAND_BYTES }
        } else {
            Writes::Direct
        }
    }
}

/// Source and output bytes of a batch from which its outputs are streamed: C4 and C5
/// gain, C1 and C6 (which the caches keep between calls) lose (docs/performance.md,
/// "Streamed writes").
const STREAM_MIN_BYTES: usize = 32 << 20;

/// Bytes of one staged band: smaller bands leave more partial lines at row ends,
/// which take plain stores.
pub(super) const BAND_BYTES: usize = 128 << 10;

/// A product with the tilings of its output for direct and for streamed writes,
/// worked out once (checking the bands walks every output cell).
#[derive(Debug)]
pub(super) struct TiledProduct {
    pub(super) product: Product,
    direct: Tiling,
    streamed: Tiling,
}

/// How the tiles of a product run, the same for every image.
#[derive(Debug, Clone)]
pub(super) struct Tiling {
    /// Output rows per micro-tile.
    pub(super) slivers: Vec<std::ops::Range<usize>>,
    /// Segments per micro-tile (2 or 3).
    pub(super) width: usize,
    /// Consecutive groups of `width` segments, with the cells they store.
    pub(super) bands: Vec<Band>,
    pub(super) writes: Writes,
}

impl TiledProduct {
    /// Panics unless every segment stores only cells of the output plane.
    pub(super) fn new(product: Product) -> Self {
        let plane = product.plane as isize;
        let stores = product.segments.iter().flat_map(|s| s.stores);
        assert!(stores.flat_map(Store::cells).all(|cell| (0..plane).contains(&cell)));
        let direct = Tiling::new(&product, Writes::Direct);
        let streamed = Tiling::new(&product, Writes::Streamed { band_bytes: BAND_BYTES });
        TiledProduct { product, direct, streamed }
    }

    /// The tiling for `writes`: one of the two made with the product, or (for another
    /// band size, as tests ask) a new one.
    pub(super) fn tiling(&self, writes: Writes) -> Cow<'_, Tiling> {
        match writes {
            Writes::Direct => Cow::Borrowed(&self.direct),
            _ if writes == self.streamed.writes => Cow::Borrowed(&self.streamed),
            _ => Cow::Owned(Tiling::new(&self.product, writes)),
        }
    }

    /// The slivers of rows, the same for every tiling of the product.
    pub(super) fn slivers(&self) -> &[std::ops::Range<usize>] {
        &self.direct.slivers
    }
}

impl Tiling {
    fn new(product: &Product, writes: Writes) -> Self {
        let (slivers, width) = if prefers_three_segments(product.rows, product.segments.len()) {
            (slivers_of(product.rows, MAX_ROWS_3).collect(), 3)
        } else {
            (slivers(product.rows).collect(), 2)
        };
        let band_cells = match writes {
            Writes::Direct => usize::MAX,
            Writes::Streamed { band_bytes } => (band_bytes / size_of::<f32>() / product.rows).max(1),
        };
        let groups: Vec<&[Segment]> = product.segments.chunks(width).collect();
        Tiling { bands: bands(&groups, band_cells), slivers, width, writes }
    }
}

/// A stretch of consecutive segment groups and the output cells their stores cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Band {
    /// Group g is segments `g·width..(g + 1)·width`.
    pub(super) groups: std::ops::Range<usize>,
    /// Output cells (of every row) the groups store, each exactly once.
    pub(super) cells: std::ops::Range<usize>,
}

/// The groups cut into bands of at least one group and about `cells` output cells
/// (one band for `usize::MAX`). Panics unless the bands' cell ranges increase and
/// each is stored whole, every cell once, by its groups' masked lanes: so a staged
/// band is overwritten entirely before it is copied out.
fn bands(groups: &[&[Segment]], cells: usize) -> Vec<Band> {
    let mut bands: Vec<Band> = Vec::new();
    let mut stored = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let lanes = group.iter().flat_map(|s| s.stores).flat_map(Store::cells).map(|cell| cell as usize);
        let (lo, hi, count) = lanes.fold((usize::MAX, 0, 0), |(lo, hi, n), c| (lo.min(c), hi.max(c + 1), n + 1));
        if count == 0 {
            continue;
        }
        match (bands.last_mut(), stored.last_mut()) {
            (Some(band), Some(n)) if band.cells.len() < cells => {
                band.groups.end = g + 1;
                band.cells = band.cells.start.min(lo)..band.cells.end.max(hi);
                *n += count;
            }
            _ => {
                bands.push(Band { groups: g..g + 1, cells: lo..hi });
                stored.push(count);
            }
        }
    }
    assert!(bands.iter().zip(&stored).all(|(band, &n)| band.cells.len() == n), "bands are stored whole");
    assert!(bands.windows(2).all(|pair| pair[0].cells.end <= pair[1].cells.start), "bands follow each other");
    bands
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::implicit::segments::segments;

    #[test]
    fn bands_cover_the_plane_in_order() {
        let (output, step, strides) = ([56, 56], [1, 1], [58, 1]);
        let segments = segments(&output, &step, &strides);
        let groups: Vec<&[Segment]> = segments.chunks(2).collect();
        for cells in [1, 100, 512, usize::MAX] {
            let bands = bands(&groups, cells);
            assert_eq!(bands.first().map(|b| b.cells.start), Some(0));
            assert_eq!(bands.last().map(|b| (b.groups.end, b.cells.end)), Some((groups.len(), 56 * 56)));
            for pair in bands.windows(2) {
                assert_eq!((pair[0].groups.end, pair[0].cells.end), (pair[1].groups.start, pair[1].cells.start));
            }
            // Bands close once they reach `cells`, so none but the last is short.
            assert!(bands.iter().rev().skip(1).all(|b| b.cells.len() >= cells.min(56 * 56)));
        }
    }
}
