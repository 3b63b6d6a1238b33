use crate::data::{Dataset, TargetBatch};
use crate::distributed::{share, Collective, SingleProcess};
use crate::TrainError;
use nn_core::{Element, Loss, Network, Reduction, Tensor};
use std::ops::Range;

/// A confusion matrix: `counts[actual][predicted]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    /// Counts by actual class (rows) and predicted class (columns).
    pub counts: Vec<Vec<u64>>,
}

impl ConfusionMatrix {
    /// An all-zero matrix for `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self { counts: vec![vec![0; classes]; classes] }
    }

    /// Fraction of samples on the diagonal.
    pub fn accuracy(&self) -> f64 {
        let total: u64 = self.counts.iter().flatten().sum();
        let right: u64 = (0..self.counts.len()).map(|i| self.counts[i][i]).sum();
        right as f64 / total.max(1) as f64
    }

    /// Renders the matrix as aligned text, rows labelled with `names` when given.
    pub fn to_table(&self, names: Option<&[&str]>) -> String {
        let label = |i: usize| names.and_then(|n| n.get(i).map(|s| s.to_string())).unwrap_or_else(|| i.to_string());
        let width = (0..self.counts.len()).map(|i| label(i).len()).max().unwrap_or(1).max(6);
        let mut out = format!("{:>width$} |", "actual");
        for j in 0..self.counts.len() {
            out += &format!(" {j:>5}");
        }
        out.push('\n');
        for (i, row) in self.counts.iter().enumerate() {
            out += &format!("{:>width$} |", label(i));
            for c in row {
                out += &format!(" {c:>5}");
            }
            out.push('\n');
        }
        out
    }
}

/// The result of running a network over a dataset without touching gradients.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Samples seen.
    pub samples: usize,
    /// `E = Σ_p L(t⁽ᵖ⁾, x⁽ᴺ⁾)`.
    pub error_sum: f64,
    /// `E / P`, the mean loss per sample.
    pub mean_loss: f64,
    /// Fraction of correct argmax predictions, for class targets.
    pub accuracy: Option<f64>,
    /// The confusion matrix, for class targets.
    pub confusion: Option<ConfusionMatrix>,
}

/// Index of the largest value in each row (the first on ties).
pub(crate) fn argmax_rows<T: Element>(outputs: &Tensor<T>) -> impl Iterator<Item = usize> + '_ {
    let width = outputs.shape().get(1).copied().unwrap_or(1).max(1);
    outputs
        .data()
        .chunks(width)
        .map(|row| row.iter().enumerate().fold(0, |best, (j, &v)| if v > row[best] { j } else { best }))
}

/// Runs `net` over every sample of `data` in batches of `batch_size`, in order, and
/// reports the summed and mean loss, and accuracy and confusion for class targets.
/// The network runs in evaluation mode (batch normalisation on its running estimates)
/// and is left in the mode it came in. Like [`train_step`](crate::train_step), it runs
/// on a worker of the current rayon pool.
///
/// # Errors
/// [`TrainError`] when `batch_size` is zero, `data` is empty, or a batch does not fit
/// the network or the loss.
pub fn evaluate<T, N, D, L>(net: &mut N, loss: &L, data: &D, batch_size: usize) -> Result<Evaluation, TrainError>
where
    T: Element,
    N: Network<T> + ?Sized,
    D: Dataset<T>,
    L: Loss<T>,
    D::Targets: AsRef<L::Target>,
{
    evaluate_on(net, loss, data, batch_size, &SingleProcess)
}

/// [`evaluate`] on every process of `collective` at once: each process runs its
/// [`share`] of the samples (consecutive runs, in order), and the summed loss, the
/// sample count and the confusion matrix are added across processes, so that every
/// process returns the same evaluation. The counts equal one process's; the loss sum
/// is the same sum associated per process (equal to rounding).
///
/// Every process must call this with the same data. A process whose batch fails still
/// joins the sums, then every process returns an error, so that none waits forever.
///
/// # Errors
/// As for [`evaluate`], and [`TrainError::Distributed`] when another process failed.
pub fn evaluate_on<T, N, D, L>(
    net: &mut N,
    loss: &L,
    data: &D,
    batch_size: usize,
    collective: &dyn Collective,
) -> Result<Evaluation, TrainError>
where
    T: Element,
    N: Network<T> + ?Sized,
    D: Dataset<T>,
    L: Loss<T>,
    D::Targets: AsRef<L::Target>,
{
    if batch_size == 0 {
        return Err(TrainError::Config { what: "batch size", details: "must be positive".into() });
    }
    if data.is_empty() {
        return Err(TrainError::Config { what: "evaluation data", details: "has no samples".into() });
    }
    // Evaluation mode (running statistics), and the caller's mode back afterwards.
    let was_training = net.is_training();
    net.set_training(false);
    let local = evaluate_batches(net, loss, data, share(data.len(), collective.rank(), collective.size()), batch_size);
    net.set_training(was_training);
    if collective.size() == 1 {
        return local;
    }
    reduce_evaluation(local, collective)
}

/// Adds every process's evaluation of its share: the class count first (a process
/// with no samples knows none), then loss, samples, failures and the confusion counts
/// (exact in f64 below 2⁵³).
fn reduce_evaluation(
    local: Result<Evaluation, TrainError>,
    collective: &dyn Collective,
) -> Result<Evaluation, TrainError> {
    let classes = local.as_ref().ok().and_then(|e| e.confusion.as_ref()).map_or(0, |c| c.counts.len());
    let (_, classes) = collective.min_max(classes as u64);
    let classes = classes as usize;
    let mut sums = vec![0.0; 3 + classes * classes];
    match &local {
        Ok(evaluation) => {
            (sums[0], sums[1]) = (evaluation.error_sum, evaluation.samples as f64);
            let cells = evaluation.confusion.iter().flat_map(|c| c.counts.iter().flatten());
            sums[3..].iter_mut().zip(cells).for_each(|(sum, &count)| *sum = count as f64);
        }
        Err(_) => sums[2] = 1.0,
    }
    collective.sum_f64(&mut sums);
    local?;
    if sums[2] > 0.0 {
        let details = format!("{} other process(es) failed in the evaluation", sums[2]);
        return Err(TrainError::Distributed { details });
    }
    let (error_sum, samples) = (sums[0], sums[1] as usize);
    let confusion = (classes > 0).then(|| {
        let counts = sums[3..].chunks(classes).map(|row| row.iter().map(|&c| c as u64).collect()).collect();
        ConfusionMatrix { counts }
    });
    Ok(Evaluation {
        samples,
        error_sum,
        mean_loss: error_sum / samples.max(1) as f64,
        accuracy: confusion.as_ref().map(ConfusionMatrix::accuracy),
        confusion,
    })
}

/// Runs the samples at `positions` of `data` in batches; an empty range gives an
/// empty evaluation.
fn evaluate_batches<T, N, D, L>(
    net: &mut N,
    loss: &L,
    data: &D,
    positions: Range<usize>,
    batch_size: usize,
) -> Result<Evaluation, TrainError>
where
    T: Element,
    N: Network<T> + ?Sized,
    D: Dataset<T>,
    L: Loss<T>,
    D::Targets: AsRef<L::Target>,
{
    let samples = positions.len();
    let (error_sum, confusion) = rayon::scope(|_| {
        let (mut inputs, mut targets, mut grad) = (Tensor::default(), D::Targets::default(), Tensor::default());
        let mut error_sum = 0.0;
        let mut confusion: Option<ConfusionMatrix> = None;
        let indices: Vec<usize> = positions.collect();
        for chunk in indices.chunks(batch_size) {
            data.fill_batch(chunk, &mut inputs, &mut targets)?;
            let outputs = net.forward(&inputs)?;
            error_sum += loss.loss_and_grad(outputs, targets.as_ref(), Reduction::Sum, &mut grad)?;
            if let Some(labels) = targets.labels() {
                let classes = outputs.shape().get(1).copied().unwrap_or(1);
                let matrix = confusion.get_or_insert_with(|| ConfusionMatrix::new(classes));
                for (&actual, predicted) in labels.iter().zip(argmax_rows(outputs)) {
                    matrix.counts[actual][predicted] += 1;
                }
            }
        }
        Ok::<_, TrainError>((error_sum, confusion))
    })?;
    Ok(Evaluation {
        samples,
        error_sum,
        mean_loss: error_sum / samples.max(1) as f64,
        accuracy: confusion.as_ref().map(ConfusionMatrix::accuracy),
        confusion,
    })
}

/// Counts for the Dice score of binary segmentation, `2·|P ∩ T| / (|P| + |T|)`, with P
/// the cells whose logit is positive (probability above ½) and T those whose mask
/// value is above ½; accumulated over batches with [`DiceCounts::add`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiceCounts {
    /// |P ∩ T|.
    pub overlap: u64,
    /// |P|.
    pub predicted: u64,
    /// |T|.
    pub actual: u64,
}

impl DiceCounts {
    /// Adds a batch of logits and the masks of the same shape.
    ///
    /// # Errors
    /// [`TrainError::Config`] when the shapes differ.
    pub fn add<T: Element>(&mut self, logits: &Tensor<T>, mask: &Tensor<T>) -> Result<(), TrainError> {
        if logits.shape() != mask.shape() {
            let details = format!("logits {:?} and mask {:?} differ in shape", logits.shape(), mask.shape());
            return Err(TrainError::Config { what: "Dice score", details });
        }
        let half = T::from_f64(0.5);
        for (&x, &t) in logits.data().iter().zip(mask.data()) {
            let (p, t) = (x > T::zero(), t > half);
            self.overlap += u64::from(p && t);
            self.predicted += u64::from(p);
            self.actual += u64::from(t);
        }
        Ok(())
    }

    /// The score in [0, 1]; 1 when both sets are empty.
    pub fn score(&self) -> f64 {
        let total = self.predicted + self.actual;
        if total == 0 {
            1.0
        } else {
            2.0 * self.overlap as f64 / total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_counts_cells_on_both_sides_of_one_half() {
        let logits = Tensor::from_vec(&[1, 5], vec![2.0f32, -1.0, 0.5, -3.0, 0.0]).unwrap();
        let mask = Tensor::from_vec(&[1, 5], vec![1.0f32, 1.0, 0.0, 0.0, 1.0]).unwrap();
        let mut dice = DiceCounts::default();
        dice.add(&logits, &mask).unwrap();
        assert_eq!(dice, DiceCounts { overlap: 1, predicted: 2, actual: 3 });
        assert_eq!(dice.score(), 0.4);
        assert_eq!(DiceCounts::default().score(), 1.0);
        assert!(dice.add(&logits, &Tensor::from_vec(&[5, 1], vec![0.0f32; 5]).unwrap()).is_err());
    }
}
