//! Training-time augmentation and per-channel normalisation of `[C, H, W]` images,
//! applied while a batch is filled: the stored set is never copied or changed.
//!
//! Each sample's draw depends on the augmentation's seed, the epoch and the sample's
//! index alone, so a batch is the same whatever the batch size, the thread count or a
//! resume from a checkpoint.

use crate::data::DataError;
use nn_core::seeded_rng;
use rand::Rng;

/// Random crop from a zero-padded image, then a random horizontal flip (torchvision's
/// `RandomCrop(padding)` and `RandomHorizontalFlip()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Augmentation {
    /// Zero cells added on each side before an H × W window is cropped at random
    /// (0: no crop).
    pub crop_padding: usize,
    /// Mirror left to right with probability ½.
    pub horizontal_flip: bool,
    /// Seed of the draws.
    pub seed: u64,
}

/// Per-channel `(x − mean) / std`, after pixels are scaled to `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    /// Mean per channel.
    pub mean: Vec<f64>,
    /// Standard deviation per channel (positive).
    pub std: Vec<f64>,
}

impl Normalization {
    /// Checks one finite mean and one positive, finite std per channel.
    pub(crate) fn check(&self, channels: usize) -> Result<(), DataError> {
        let fits = self.mean.len() == channels && self.std.len() == channels;
        let finite = self.mean.iter().all(|m| m.is_finite()) && self.std.iter().all(|s| s.is_finite() && *s > 0.0);
        if fits && finite {
            return Ok(());
        }
        Err(DataError::Mismatch {
            details: format!(
                "normalisation for {channels} channels needs that many finite means and positive stds, got {:?} and {:?}",
                self.mean, self.std
            ),
        })
    }
}

/// Where sample `index` of `epoch` reads its pixels: the crop's offsets in the padded
/// image (each in `0..=2·padding`) and whether it is mirrored.
pub(crate) fn draw(augmentation: &Augmentation, epoch: usize, index: usize) -> (usize, usize, bool) {
    let mix = (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (index as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    let mut rng = seeded_rng(augmentation.seed ^ mix);
    let span = 2 * augmentation.crop_padding;
    let (dy, dx) = (rng.gen_range(0..=span), rng.gen_range(0..=span));
    (dy, dx, augmentation.horizontal_flip && rng.gen_bool(0.5))
}

/// Writes one augmented image (`[C, H, W]` bytes) as pixel values (0 to 255, zero
/// outside the image) into `out`: `out[c, y, x] = src[c, y + dy − p, x′ + dx − p]`,
/// with `x′ = W − 1 − x` when mirrored.
pub(crate) fn crop_and_flip(
    src: &[u8],
    shape: [usize; 3],
    padding: usize,
    (dy, dx, flip): (usize, usize, bool),
    out: &mut [f64],
) {
    let [channels, height, width] = shape;
    for c in 0..channels {
        let plane = &src[c * height * width..(c + 1) * height * width];
        for y in 0..height {
            let row = &mut out[(c * height + y) * width..][..width];
            let source_y = (y + dy).checked_sub(padding).filter(|&sy| sy < height);
            for (x, slot) in row.iter_mut().enumerate() {
                let x = if flip { width - 1 - x } else { x };
                let source_x = (x + dx).checked_sub(padding).filter(|&sx| sx < width);
                *slot = match (source_y, source_x) {
                    (Some(sy), Some(sx)) => plane[sy * width + sx] as f64,
                    _ => 0.0,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_and_flips_a_known_image() {
        // One channel of 2 × 3: [[1, 2, 3], [4, 5, 6]], padding 1.
        let src = [1, 2, 3, 4, 5, 6];
        let mut out = [0.0; 6];
        crop_and_flip(&src, [1, 2, 3], 1, (1, 1, false), &mut out);
        assert_eq!(out, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "the centre window");
        crop_and_flip(&src, [1, 2, 3], 1, (0, 0, false), &mut out);
        assert_eq!(out, [0.0, 0.0, 0.0, 0.0, 1.0, 2.0], "shifted down and right");
        crop_and_flip(&src, [1, 2, 3], 1, (2, 2, false), &mut out);
        assert_eq!(out, [5.0, 6.0, 0.0, 0.0, 0.0, 0.0], "shifted up and left");
        crop_and_flip(&src, [1, 2, 3], 1, (1, 1, true), &mut out);
        assert_eq!(out, [3.0, 2.0, 1.0, 6.0, 5.0, 4.0], "mirrored");
        crop_and_flip(&src, [1, 2, 3], 1, (1, 2, true), &mut out);
        assert_eq!(out, [0.0, 3.0, 2.0, 0.0, 6.0, 5.0], "cropped, then mirrored");
    }

    #[test]
    fn draws_depend_on_seed_epoch_and_index_alone() {
        let a = Augmentation { crop_padding: 2, horizontal_flip: true, seed: 7 };
        assert_eq!(draw(&a, 3, 11), draw(&a, 3, 11));
        let all: Vec<_> = (0..400).map(|i| draw(&a, 0, i)).collect();
        assert!(all.iter().all(|&(dy, dx, _)| dy <= 4 && dx <= 4));
        assert!((0..=4).all(|v| all.iter().any(|d| d.0 == v)) && all.iter().any(|d| d.2) && all.iter().any(|d| !d.2));
        assert_ne!(all, (0..400).map(|i| draw(&a, 1, i)).collect::<Vec<_>>());
        let no_flip = Augmentation { horizontal_flip: false, ..a };
        assert!((0..100).all(|i| !draw(&no_flip, 0, i).2));
    }
}
