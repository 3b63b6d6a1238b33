use crate::trainer::{BatchProgress, EpochStats, Observer};
use indicatif::{ProgressBar, ProgressStyle};

/// A terminal progress bar per epoch, showing loss, accuracy and images/s; one plain
/// line per epoch on standard error when that is not a terminal.
#[derive(Debug, Default)]
pub struct ProgressBars {
    bar: Option<ProgressBar>,
}

impl ProgressBars {
    /// Progress bars on standard error.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Observer for ProgressBars {
    fn epoch_start(&mut self, epoch: usize, batches: usize) {
        let bar = ProgressBar::new(batches as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix:>3} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix((epoch + 1).to_string());
        self.bar = Some(bar);
    }

    fn batch_end(&mut self, p: &BatchProgress) {
        if let Some(bar) = &self.bar {
            bar.set_position(p.batch as u64);
            // Formatting every batch costs more than the bar is worth on tiny batches.
            if p.batch.is_multiple_of(10) || p.batch == p.batches {
                let acc = p.accuracy.map_or(String::new(), |a| format!(" acc {:.2}%", 100.0 * a));
                bar.set_message(format!("loss {:.4}{acc} {:.0} img/s", p.mean_loss, p.images_per_sec));
            }
        }
    }

    fn epoch_end(&mut self, stats: &EpochStats) {
        if let Some(bar) = self.bar.take() {
            let val = stats
                .validation
                .as_ref()
                .and_then(|v| v.accuracy)
                .map_or(String::new(), |a| format!(" val acc {:.2}%", 100.0 * a));
            let acc = stats.accuracy.map_or(String::new(), |a| format!(" acc {:.2}%", 100.0 * a));
            let message = format!("loss {:.4}{acc}{val} {:.0} img/s", stats.mean_loss, stats.images_per_sec);
            // Without a terminal the bar draws nothing: logs still get one line per epoch.
            if bar.is_hidden() {
                eprintln!("epoch {:>3} {message} ({:.1} s)", bar.prefix(), bar.elapsed().as_secs_f64());
            }
            bar.finish_with_message(message);
        }
    }
}
