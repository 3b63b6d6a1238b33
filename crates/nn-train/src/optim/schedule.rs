/// The learning rate as a function of the epoch (applied at the start of each epoch)
/// or of the update (applied before each update: [`LrSchedule::per_iteration`]).
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
    /// Per update: a linear warm-up from η/`warmup` to η over the first `warmup`
    /// updates, then cosine annealing towards `min_lr`, which it reaches after the
    /// run's last update (its iteration cap, or its epoch cap times the batches of an
    /// epoch): update t of the T after the warm-up runs at
    /// `min_lr + (η − min_lr)·½(1 + cos(π·t/T))`, PyTorch's `CosineAnnealingLR`
    /// stepped once per update.
    CosineUpdates {
        /// Updates of warm-up (0: none).
        warmup: u64,
        /// The rate at the last update.
        min_lr: f64,
    },
    /// Per update: the linear warm-up alone, then η.
    Warmup {
        /// Updates of warm-up.
        updates: u64,
    },
}

impl LrSchedule {
    /// Whether the rate changes per update ([`rate_at_update`](Self::rate_at_update))
    /// rather than per epoch ([`rate`](Self::rate)).
    pub fn per_iteration(&self) -> bool {
        matches!(self, LrSchedule::CosineUpdates { .. } | LrSchedule::Warmup { .. })
    }

    /// The rate for 0-based `epoch`, from the base rate η (η itself for the
    /// per-update schedules).
    pub fn rate(&self, base: f64, epoch: usize) -> f64 {
        match *self {
            LrSchedule::Constant | LrSchedule::CosineUpdates { .. } | LrSchedule::Warmup { .. } => base,
            LrSchedule::Step { every, gamma } => base * gamma.powi((epoch / every.max(1)) as i32),
            LrSchedule::Cosine { epochs, min_lr } => {
                let progress = epoch.min(epochs) as f64 / epochs.max(1) as f64;
                min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

impl LrSchedule {
    /// The rate of update `update` (0-based) of a run of `total` updates, from the
    /// base rate η (η for the per-epoch schedules).
    pub fn rate_at_update(&self, base: f64, update: u64, total: u64) -> f64 {
        let warmed = |warmup: u64| (warmup > 0 && update < warmup).then(|| base * (update + 1) as f64 / warmup as f64);
        match *self {
            LrSchedule::Warmup { updates } => warmed(updates).unwrap_or(base),
            LrSchedule::CosineUpdates { warmup, min_lr } => warmed(warmup).unwrap_or_else(|| {
                let span = total.saturating_sub(warmup).max(1) as f64;
                let progress = (update.saturating_sub(warmup) as f64 / span).min(1.0);
                min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }),
            _ => base,
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

    #[test]
    fn schedules_per_update() {
        let warm = LrSchedule::Warmup { updates: 4 };
        assert!(warm.per_iteration() && !LrSchedule::Constant.per_iteration());
        assert_eq!([0, 1, 2, 3, 4, 100].map(|u| warm.rate_at_update(1.0, u, 1000)), [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        let cos = LrSchedule::CosineUpdates { warmup: 2, min_lr: 0.0 };
        // 2 warm-up updates, then 10 from 1.0 towards 0.0, which the 13th would reach.
        assert_eq!(cos.rate_at_update(1.0, 0, 12), 0.5);
        assert_eq!(cos.rate_at_update(1.0, 2, 12), 1.0);
        assert!((cos.rate_at_update(1.0, 7, 12) - 0.5).abs() < 1e-12);
        let last = cos.rate_at_update(1.0, 11, 12);
        assert!((last - 0.5 * (1.0 + (std::f64::consts::PI * 0.9).cos())).abs() < 1e-12);
        let rates: Vec<f64> = (2..12).map(|u| cos.rate_at_update(1.0, u, 12)).collect();
        assert!(rates.windows(2).all(|w| w[1] < w[0]), "{rates:?}");
        assert_eq!(cos.rate(0.3, 5), 0.3);
    }
}
