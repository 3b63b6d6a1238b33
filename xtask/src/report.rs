//! Benchmark result files: the table, the JSON, and the comparison of two runs.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// The FMA peak as `nn-bench peak` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peak {
    pub isa: String,
    pub one_thread: f64,
    pub all_threads: f64,
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reference {
    pub name: String,
    pub median_s: f64,
    pub gflops: f64,
}

/// One workload at one thread count, as `nn-bench run` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub threads: usize,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub reps: usize,
    pub gflops: Option<f64>,
    pub images_per_s: Option<f64>,
    pub references: Vec<Reference>,
    /// Filled in here: GFLOP/s as a percentage of the peak at this thread count.
    #[serde(default)]
    pub percent_of_peak: Option<f64>,
}

/// A whole run: the peak and every record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub peak: Peak,
    pub records: Vec<Record>,
}

impl Results {
    pub fn new(peak: Peak, mut records: Vec<Record>) -> Self {
        for r in &mut records {
            let roof = if r.threads == 1 {
                peak.one_thread
            } else {
                peak.all_threads * r.threads as f64 / peak.threads as f64
            };
            r.percent_of_peak = r.gflops.map(|g| 100.0 * g / roof);
        }
        Self { peak, records }
    }

    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn write(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A Markdown table: workload, threads, median, GFLOP/s or images/s, % of peak,
    /// in-run references.
    pub fn table(&self) -> String {
        let p = &self.peak;
        let mut out = format!(
            "f32 FMA peak ({}): {:.0} GFLOP/s on 1 thread, {:.0} on {}\n\n| workload | threads | median | throughput | % of peak | in-run reference |\n| --- | --- | --- | --- | --- | --- |\n",
            p.isa, p.one_thread, p.all_threads, p.threads
        );
        for r in &self.records {
            let throughput = match (r.gflops, r.images_per_s) {
                (Some(g), _) => format!("{g:.1} GFLOP/s"),
                (_, Some(i)) => format!("{i:.0} images/s"),
                _ => String::new(),
            };
            let refs: Vec<String> =
                r.references.iter().map(|x| format!("{} {:.1} GFLOP/s", x.name, x.gflops)).collect();
            out += &format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.id,
                r.threads,
                format_seconds(r.median_s),
                throughput,
                r.percent_of_peak.map_or(String::new(), |v| format!("{v:.0}%")),
                refs.join("; ")
            );
        }
        out
    }
}

fn format_seconds(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

/// Prints each workload's change and returns false if any slowed by more than
/// `threshold_pct` percent.
pub fn compare(old: &Results, new: &Results, threshold_pct: f64) -> bool {
    let mut ok = true;
    println!("| workload | threads | old median | new median | change |\n| --- | --- | --- | --- | --- |");
    for n in &new.records {
        let Some(o) = old.records.iter().find(|o| o.id == n.id && o.threads == n.threads) else {
            continue;
        };
        let change = 100.0 * (n.median_s / o.median_s - 1.0);
        let verdict = if change > threshold_pct {
            ok = false;
            " **REGRESSION**"
        } else {
            ""
        };
        println!(
            "| {} | {} | {} | {} | {change:+.1}%{verdict} |",
            n.id,
            n.threads,
            format_seconds(o.median_s),
            format_seconds(n.median_s)
        );
    }
    if !ok {
        println!("\nslower than the {threshold_pct}% threshold: see the rows marked REGRESSION");
    }
    ok
}
