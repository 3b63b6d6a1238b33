/// The learning rate as a function of the epoch, applied at the start of each epoch.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LrSchedule {
    /// η stays as given.
    #[default]
    Constant,
    /// η·γ^⌊epoch / every⌋.
    Step {
        /// Epochs between decays.
        every: usize,
        /// The factor applied at each decay.
        gamma: f64,
    },
    /// Cosine annealing from η down to `min_lr` over `epochs` epochs, then `min_lr`.
    Cosine {
        /// Length of the annealing.
        epochs: usize,
        /// The final rate.
        min_lr: f64,
    },
}

impl LrSchedule {
    /// The rate for 0-based `epoch`, from the base rate η.
    pub fn rate(&self, base: f64, epoch: usize) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Step { every, gamma } => base * gamma.powi((epoch / every.max(1)) as i32),
            LrSchedule::Cosine { epochs, min_lr } => {
                let progress = epoch.min(epochs) as f64 / epochs.max(1) as f64;
                min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(LrSchedule::Constant.rate(0.1, 7), 0.1);
        let step = LrSchedule::Step { every: 2, gamma: 0.5 };
        assert_eq!([0, 1, 2, 3, 4].map(|e| step.rate(1.0, e)), [1.0, 1.0, 0.5, 0.5, 0.25]);
        let cos = LrSchedule::Cosine { epochs: 4, min_lr: 0.0 };
        assert_eq!(cos.rate(1.0, 0), 1.0);
        assert!((cos.rate(1.0, 2) - 0.5).abs() < 1e-12);
        assert!(cos.rate(1.0, 4).abs() < 1e-12);
        assert!(cos.rate(1.0, 9).abs() < 1e-12);
    }
}
