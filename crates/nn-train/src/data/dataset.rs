use super::augment::{crop_and_flip, draw, Augmentation, Normalization};
use super::idx::{element_offset, read_idx};
use super::DataError;
use nn_core::{Element, NnError, Tensor};
use std::path::Path;

/// The targets of one batch, reusable across batches.
pub trait TargetBatch: Default + Send {
    /// Class labels, when the targets are classes (for accuracy and confusion).
    fn labels(&self) -> Option<&[usize]>;
}

impl TargetBatch for Vec<usize> {
    fn labels(&self) -> Option<&[usize]> {
        Some(self)
    }
}

impl<T: Element> TargetBatch for Tensor<T> {
    fn labels(&self) -> Option<&[usize]> {
        None
    }
}

/// A set of training patterns (x′⁽ᵖ⁾, t⁽ᵖ⁾) that fills batches on demand, so an epoch
/// never copies the whole set.
pub trait Dataset<T: Element>: Sync {
    /// The targets of a batch.
    type Targets: TargetBatch;

    /// Number of patterns P.
    fn len(&self) -> usize;

    /// True when there is no pattern.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The per-sample input shape.
    fn sample_shape(&self) -> &[usize];

    /// Writes the patterns at `indices` into `inputs` (`[indices.len(), shape…]`) and
    /// their targets into `targets`, reusing both buffers.
    ///
    /// # Errors
    /// [`NnError`] when an index is out of range or a buffer cannot take the batch.
    fn fill_batch(&self, indices: &[usize], inputs: &mut Tensor<T>, targets: &mut Self::Targets)
        -> Result<(), NnError>;

    /// [`fill_batch`](Self::fill_batch) for training in `epoch`: a set with random
    /// augmentation draws it from the epoch and the sample indices (by default the
    /// epoch plays no part). The trainer fills its batches with this.
    ///
    /// # Errors
    /// As for [`fill_batch`](Self::fill_batch).
    fn fill_training_batch(
        &self,
        _epoch: usize,
        indices: &[usize],
        inputs: &mut Tensor<T>,
        targets: &mut Self::Targets,
    ) -> Result<(), NnError> {
        self.fill_batch(indices, inputs, targets)
    }
}

/// Images stored as bytes with class labels: the pixels are converted (scaled to
/// `[0, 1]`, then normalised per channel if asked) only when a batch is filled, which
/// keeps a 60,000-image set at 47 MB. Training batches may be augmented
/// ([`with_augmentation`](Self::with_augmentation)); evaluation batches never are.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationSet {
    pixels: Vec<u8>,
    labels: Vec<u8>,
    sample_shape: Vec<usize>,
    sample_len: usize,
    classes: usize,
    augmentation: Option<Augmentation>,
    normalization: Option<Normalization>,
}

impl ClassificationSet {
    /// A set from raw pixels (`labels.len()` samples of `∏sample_shape` bytes each)
    /// and labels below `classes`.
    ///
    /// # Errors
    /// [`DataError::Mismatch`] when the pixel count does not fit, or a label is not below
    /// `classes`.
    pub fn new(pixels: Vec<u8>, labels: Vec<u8>, sample_shape: &[usize], classes: usize) -> Result<Self, DataError> {
        let sample_len: usize = sample_shape.iter().product();
        if sample_len == 0 || pixels.len() != labels.len() * sample_len {
            return Err(DataError::Mismatch {
                details: format!("{} pixels are not {} samples of shape {sample_shape:?}", pixels.len(), labels.len()),
            });
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
            return Err(DataError::Mismatch {
                details: format!("label {l} of sample {i} is not below {classes} classes"),
            });
        }
        Ok(Self {
            pixels,
            labels,
            sample_shape: sample_shape.to_vec(),
            sample_len,
            classes,
            augmentation: None,
            normalization: None,
        })
    }

    /// Training batches cropped and flipped at random as `augmentation` says; samples
    /// must be images `[C, H, W]`.
    ///
    /// # Errors
    /// [`DataError::Mismatch`] when samples are not of rank 3.
    pub fn with_augmentation(mut self, augmentation: Augmentation) -> Result<Self, DataError> {
        self.image_shape()?;
        self.augmentation = Some(augmentation);
        Ok(self)
    }

    /// Every batch normalised per channel (after scaling pixels to `[0, 1]`); the
    /// channel is the first sample dimension.
    ///
    /// # Errors
    /// [`DataError::Mismatch`] unless there are as many finite means and positive,
    /// finite stds as channels.
    pub fn with_normalization(mut self, normalization: Normalization) -> Result<Self, DataError> {
        normalization.check(self.sample_shape[0])?;
        self.normalization = Some(normalization);
        Ok(self)
    }

    /// The sample shape as `[C, H, W]`.
    fn image_shape(&self) -> Result<[usize; 3], DataError> {
        <[usize; 3]>::try_from(self.sample_shape.as_slice()).map_err(|_| DataError::Mismatch {
            details: format!("augmentation needs images [C, H, W], samples are {:?}", self.sample_shape),
        })
    }

    /// Fills a batch, augmented for `epoch` when given and configured.
    fn fill<T: Element>(
        &self,
        epoch: Option<usize>,
        indices: &[usize],
        inputs: &mut Tensor<T>,
        targets: &mut Vec<usize>,
    ) -> Result<(), NnError> {
        inputs.set_batch_shape(indices.len(), &self.sample_shape)?;
        targets.clear();
        let augment = self.augmentation.filter(|_| epoch.is_some());
        let plain = augment.is_none() && self.normalization.is_none();
        let shape = match augment {
            Some(_) => Some(
                self.image_shape()
                    .map_err(|e| NnError::InvalidArgument { what: "augmentation", details: e.to_string() })?,
            ),
            None => None,
        };
        let plane = self.sample_len / self.sample_shape[0];
        // Pixels are scaled in T, as every earlier version did (the same bits).
        let scale = T::from_f64(1.0 / 255.0);
        let mut pixels = vec![0.0f64; if plain { 0 } else { self.sample_len }];
        for (dst, &i) in inputs.data_mut().chunks_mut(self.sample_len).zip(indices) {
            let src = self.pixels.get(i * self.sample_len..(i + 1) * self.sample_len).ok_or_else(|| {
                NnError::InvalidArgument {
                    what: "batch index",
                    details: format!("{i} is not below {}", self.labels.len()),
                }
            })?;
            if plain {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = T::from_f64(s as f64) * scale;
                }
            } else {
                match (augment, shape) {
                    (Some(a), Some(shape)) => {
                        crop_and_flip(src, shape, a.crop_padding, draw(&a, epoch.unwrap_or(0), i), &mut pixels)
                    }
                    _ => pixels.iter_mut().zip(src).for_each(|(p, &s)| *p = s as f64),
                }
                for (k, (d, &v)) in dst.iter_mut().zip(&pixels).enumerate() {
                    let x = T::from_f64(v) * scale;
                    *d = match &self.normalization {
                        Some(n) => (x - T::from_f64(n.mean[k / plane])) / T::from_f64(n.std[k / plane]),
                        None => x,
                    };
                }
            }
            targets.push(self.labels[i] as usize);
        }
        Ok(())
    }

    /// Reads an image file and a label file in IDX format (gzip or raw), checking
    /// that they have the same count and that every label is below `classes`.
    ///
    /// # Errors
    /// [`DataError`] naming the file (and the byte offset, where the format is at fault).
    pub fn from_idx(images: &Path, labels: &Path, classes: usize) -> Result<Self, DataError> {
        let img = read_idx(images)?;
        let lab = read_idx(labels)?;
        if lab.dims.len() != 1 {
            return Err(DataError::Invalid {
                path: labels.to_path_buf(),
                offset: 3,
                details: format!("labels need 1 dimension, found {}", lab.dims.len()),
            });
        }
        if img.dims.len() < 2 || img.dims[0] != lab.dims[0] {
            return Err(DataError::Mismatch {
                details: format!(
                    "{} has dimensions {:?} but {} holds {} labels",
                    images.display(),
                    img.dims,
                    labels.display(),
                    lab.dims[0]
                ),
            });
        }
        if let Some((i, &l)) = lab.data.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
            return Err(DataError::Invalid {
                path: labels.to_path_buf(),
                offset: element_offset(1, i),
                details: format!("label {l} of sample {i} is not below {classes} classes"),
            });
        }
        Self::new(img.data, lab.data, &img.dims[1..], classes)
    }

    /// The same samples seen with another per-sample shape of the same size (e.g.
    /// `[784]` for a dense network, `[1, 28, 28]` for a convolutional one).
    ///
    /// # Errors
    /// [`DataError::Mismatch`] when `∏shape` differs from the sample size.
    pub fn with_sample_shape(mut self, shape: &[usize]) -> Result<Self, DataError> {
        if shape.iter().product::<usize>() != self.sample_len {
            return Err(DataError::Mismatch {
                details: format!("shape {shape:?} does not hold samples of {} values", self.sample_len),
            });
        }
        self.sample_shape = shape.to_vec();
        Ok(self)
    }

    /// Splits off the last `count` samples (e.g. a validation set).
    pub fn split_off(&mut self, count: usize) -> Self {
        let keep = self.labels.len().saturating_sub(count);
        Self {
            pixels: self.pixels.split_off(keep * self.sample_len),
            labels: self.labels.split_off(keep),
            sample_shape: self.sample_shape.clone(),
            sample_len: self.sample_len,
            classes: self.classes,
            augmentation: self.augmentation,
            normalization: self.normalization.clone(),
        }
    }

    /// Keeps the first `count` samples.
    pub fn truncate(&mut self, count: usize) {
        self.labels.truncate(count);
        self.pixels.truncate(count * self.sample_len);
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The label of each sample.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
}

impl<T: Element> Dataset<T> for ClassificationSet {
    type Targets = Vec<usize>;

    fn len(&self) -> usize {
        self.labels.len()
    }

    fn sample_shape(&self) -> &[usize] {
        &self.sample_shape
    }

    fn fill_batch(&self, indices: &[usize], inputs: &mut Tensor<T>, targets: &mut Vec<usize>) -> Result<(), NnError> {
        self.fill(None, indices, inputs, targets)
    }

    fn fill_training_batch(
        &self,
        epoch: usize,
        indices: &[usize],
        inputs: &mut Tensor<T>,
        targets: &mut Vec<usize>,
    ) -> Result<(), NnError> {
        self.fill(Some(epoch), indices, inputs, targets)
    }
}

/// Inputs and targets held as tensors (`[P, …]` each): for regression and small
/// problems such as XOR.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSet<T: Element> {
    inputs: Tensor<T>,
    targets: Tensor<T>,
}

impl<T: Element> TensorSet<T> {
    /// A set of `inputs.shape()[0]` patterns; `targets` must have the same count.
    ///
    /// # Errors
    /// [`NnError`] when the counts differ or a tensor has no batch dimension.
    pub fn new(inputs: Tensor<T>, targets: Tensor<T>) -> Result<Self, NnError> {
        let (a, b) = (inputs.shape().first().copied(), targets.shape().first().copied());
        if a.is_none() || a != b || inputs.shape().len() < 2 || targets.shape().len() < 2 {
            return Err(NnError::Shape {
                op: "tensor set targets",
                expected: inputs.shape().to_vec(),
                got: targets.shape().to_vec(),
            });
        }
        Ok(Self { inputs, targets })
    }

    /// [`new`](Self::new), refusing inputs or targets that hold a NaN or an infinity
    /// (one bad value poisons every weight it reaches).
    ///
    /// # Errors
    /// As for [`new`](Self::new), and [`NnError::InvalidArgument`] naming the tensor,
    /// the pattern and the element index of the first non-finite value.
    pub fn new_finite(inputs: Tensor<T>, targets: Tensor<T>) -> Result<Self, NnError> {
        let set = Self::new(inputs, targets)?;
        for (what, tensor) in [("inputs", &set.inputs), ("targets", &set.targets)] {
            if nn_kernels::elementwise::all_finite(tensor.data()) {
                continue;
            }
            let per_pattern = tensor.len() / tensor.shape()[0];
            let at = tensor.data().iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Err(NnError::InvalidArgument {
                what,
                details: format!(
                    "pattern {} holds {} at element {} (flat index {at})",
                    at / per_pattern,
                    tensor.data()[at],
                    at % per_pattern
                ),
            });
        }
        Ok(set)
    }
}

fn gather<T: Element>(source: &Tensor<T>, indices: &[usize], out: &mut Tensor<T>) -> Result<(), NnError> {
    let per_sample = &source.shape()[1..];
    let len: usize = per_sample.iter().product();
    out.set_batch_shape(indices.len(), per_sample)?;
    for (dst, &i) in out.data_mut().chunks_mut(len.max(1)).zip(indices) {
        let src = source.data().get(i * len..(i + 1) * len).ok_or_else(|| NnError::InvalidArgument {
            what: "batch index",
            details: format!("{i} is not below {}", source.shape()[0]),
        })?;
        dst.copy_from_slice(src);
    }
    Ok(())
}

impl<T: Element> Dataset<T> for TensorSet<T> {
    type Targets = Tensor<T>;

    fn len(&self) -> usize {
        self.inputs.shape()[0]
    }

    fn sample_shape(&self) -> &[usize] {
        &self.inputs.shape()[1..]
    }

    fn fill_batch(&self, indices: &[usize], inputs: &mut Tensor<T>, targets: &mut Tensor<T>) -> Result<(), NnError> {
        gather(&self.inputs, indices, inputs)?;
        gather(&self.targets, indices, targets)
    }
}
