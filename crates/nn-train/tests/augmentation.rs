//! Augmentation on the batch being filled: reproducible from (seed, epoch, index),
//! independent of how samples are batched, never applied to evaluation batches; and
//! per-channel normalisation.

use nn_core::Tensor;
use nn_train::data::{Augmentation, ClassificationSet, Dataset, Normalization};

/// Eight 2-channel 3 × 4 images whose pixels are all different.
fn images() -> ClassificationSet {
    let pixels: Vec<u8> = (0..8 * 24).map(|i| (i % 251) as u8).collect();
    ClassificationSet::new(pixels, vec![0, 1, 2, 0, 1, 2, 0, 1], &[2, 3, 4], 3).unwrap()
}

fn batch(set: &ClassificationSet, epoch: Option<usize>, indices: &[usize]) -> Vec<f32> {
    let (mut x, mut t) = (Tensor::<f32>::default(), Vec::new());
    match epoch {
        Some(e) => set.fill_training_batch(e, indices, &mut x, &mut t).unwrap(),
        None => Dataset::<f32>::fill_batch(set, indices, &mut x, &mut t).unwrap(),
    }
    x.into_vec()
}

#[test]
fn augmented_batches_are_reproducible_and_independent_of_batching() {
    let augmentation = Augmentation { crop_padding: 1, horizontal_flip: true, seed: 5 };
    let set = images().with_augmentation(augmentation).unwrap();
    let whole = batch(&set, Some(2), &[0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(whole, batch(&set, Some(2), &[0, 1, 2, 3, 4, 5, 6, 7]));
    // Sample 5 alone is the same as inside the full batch.
    assert_eq!(batch(&set, Some(2), &[5]), whole[5 * 24..6 * 24]);
    assert_ne!(whole, batch(&set, Some(3), &[0, 1, 2, 3, 4, 5, 6, 7]), "another epoch, other draws");
    assert_ne!(whole, batch(&images(), Some(2), &[0, 1, 2, 3, 4, 5, 6, 7]), "augmented at all");
    // Evaluation batches are the plain images.
    assert_eq!(batch(&set, None, &[0, 1]), batch(&images(), None, &[0, 1]));
    // Every augmented value is a pixel of its own image (scaled) or a padding zero.
    for (n, sample) in whole.chunks(24).enumerate() {
        let plain = &batch(&images(), None, &[n]);
        assert!(sample.iter().all(|v| *v == 0.0 || plain.contains(v)), "sample {n}");
    }
    assert!(ClassificationSet::new(vec![0; 8], vec![0, 1], &[4], 2).unwrap().with_augmentation(augmentation).is_err());
}

#[test]
fn normalisation_per_channel() {
    let normalization = Normalization { mean: vec![0.5, 0.25], std: vec![0.5, 2.0] };
    let set = images().with_normalization(normalization).unwrap();
    let (plain, normalised) = (batch(&images(), None, &[3]), batch(&set, None, &[3]));
    for (k, (p, v)) in plain.iter().zip(&normalised).enumerate() {
        let (mean, std) = if k < 12 { (0.5, 0.5) } else { (0.25, 2.0) };
        assert!((v - (p - mean) / std).abs() < 1e-6, "element {k}");
    }
    let bad = Normalization { mean: vec![0.5], std: vec![0.0] };
    assert!(images().with_normalization(bad).is_err());
}
