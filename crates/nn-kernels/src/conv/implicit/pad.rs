//! The padded copy of a source image that the micro-kernels read.

use super::product::Product;
use crate::index::Odometer;

impl Product {
    /// Copies one source image (`[channels, unpadded…]`) into `dst` with its margins
    /// filled with `value`, each row split into its phases.
    ///
    /// The copy walks the padded rows in order, each filled where it is written (in
    /// L1), against a list of the rows that hold image data made once per call
    /// (docs/performance.md, "The padded copy").
    pub(super) fn pad_image(&self, image: &[f32], value: f32, dst: &mut [f32]) {
        let last = self.unpadded.len() - 1;
        let (plane, width) = (self.padded.iter().product::<usize>(), self.padded[last]);
        let (row_len, margin) = (self.unpadded[last], self.margin[last]);
        let phase_len = width / self.phases;
        // Whether each row of a padded plane, in order, holds a row of the image.
        let mut data_rows = Vec::with_capacity(plane / width);
        let mut outer = Odometer::new(&self.padded[..last]);
        while let Some(index) = outer.current() {
            data_rows.push((0..last).all(|d| (self.margin[d]..self.margin[d] + self.unpadded[d]).contains(&index[d])));
            outer.advance();
        }
        let mut rows = image.chunks_exact(row_len);
        dst[self.padded_len()..].fill(value);
        for planes in dst.chunks_exact_mut(plane).take(self.channels) {
            for (dst, &holds_data) in planes.chunks_exact_mut(width).zip(&data_rows) {
                if !holds_data {
                    dst.fill(value);
                    continue;
                }
                let row = rows.next().expect("image holds channels·∏μ cells");
                if self.phases == 1 {
                    dst[..margin].fill(value);
                    dst[margin..margin + row_len].copy_from_slice(row);
                    dst[margin + row_len..].fill(value);
                } else if self.phases == 2 {
                    // Stride 2, the common case: one pass over the row writes both
                    // phases. Cell i sits at padded position t = m + i, stored in
                    // phase t mod 2 at t div 2: even cells from m div 2 in phase
                    // m mod 2, odd ones from ⌈m/2⌉ in the other.
                    dst.fill(value);
                    let (lo, hi) = dst.split_at_mut(phase_len);
                    let (even, odd) = if margin.is_multiple_of(2) { (lo, hi) } else { (hi, lo) };
                    let (even, odd) = (&mut even[margin / 2..], &mut odd[margin.div_ceil(2)..]);
                    for (j, pair) in row.chunks_exact(2).enumerate() {
                        even[j] = pair[0];
                        odd[j] = pair[1];
                    }
                    if row_len % 2 == 1 {
                        even[row_len / 2] = row[row_len - 1];
                    }
                } else {
                    // Phase q holds the padded positions t ≡ q (mod s): every s-th cell
                    // of the row from the first such one, stored side by side.
                    dst.fill(value);
                    for q in 0..self.phases {
                        let first = (q + self.phases - margin % self.phases) % self.phases;
                        let at = q * phase_len + (margin + first) / self.phases;
                        let cells = &row[first.min(row_len)..];
                        let out = &mut dst[at..][..cells.len().div_ceil(self.phases)];
                        for (j, slot) in out.iter_mut().enumerate() {
                            *slot = cells[j * self.phases];
                        }
                    }
                }
            }
        }
    }
}
