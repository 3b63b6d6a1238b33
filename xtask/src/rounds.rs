//! Interleaved rounds beside PyTorch (`benches/against-pytorch.sh` writes one folder a
//! round): every workload's medians and speed ratio, round by round, in one table.
//!
//! A round folder holds our `nn-bench run` results (`ours.json`, `t3.json`), the
//! JSON files of `shared/pytorch-reference` (conv.py, gemm.py, resnet.py --bench,
//! train.py), our example's training runs (`cnn/`, `cnnw/`, `mlp/`, each with its
//! `history.csv`, and `/usr/bin/time -v` logs beside them) and the FMA peak before and
//! after (`peak-before.json`, `peak-after.json`). A round of training runs alone
//! (`against-pytorch.sh OUT ROUNDS training`) holds only the training runs and peaks.

use crate::pytorch::{pytorch_medians, their_median};
use crate::report::{Peak, Record};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One row of the table: a workload at a thread count, `(ours, theirs)` per round
/// (seconds), `None` where a round lacks either side.
struct Row {
    label: String,
    threads: usize,
    rounds: Vec<Option<(f64, f64)>>,
}

/// Our training runs against train.py's: folder, PyTorch id, label.
const RUNS: [(&str, &str, &str); 3] =
    [("mlp", "T1", "T1 whole run"), ("cnn", "T2", "T2 whole run"), ("cnnw", "T2", "T2 whole run, Winograd")];

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Our records of a round: every `nn-bench run` file in it.
fn our_records(dir: &Path) -> Vec<Record> {
    ["ours.json", "t3.json"]
        .iter()
        .filter_map(|name| serde_json::from_str::<Vec<Record>>(&std::fs::read_to_string(dir.join(name)).ok()?).ok())
        .flatten()
        .collect()
}

/// A column of a CSV file with a header row, as numbers.
fn csv_column(path: &Path, name: &str) -> Option<Vec<f64>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let column = lines.next()?.split(',').position(|h| h == name)?;
    lines.map(|line| line.split(',').nth(column)?.parse().ok()).collect()
}

/// Peak resident memory in MiB from a `/usr/bin/time -v` log.
fn peak_mib(log: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("Maximum resident set size"))?;
    Some(line.rsplit(':').next()?.trim().parse::<f64>().ok()? / 1024.0)
}

/// Our whole training run beside train.py's, in one round.
#[derive(Debug, PartialEq)]
struct TrainingRun {
    ours_s: f64,
    theirs_s: f64,
    ours_accuracy: f64,
    theirs_accuracy: f64,
    /// `None` where the `/usr/bin/time -v` log is missing.
    ours_peak_mib: Option<f64>,
    theirs_peak_mib: f64,
}

/// Our run in `dir/name` beside train.py's run `id`.
fn training_run(dir: &Path, name: &str, id: &str) -> Option<TrainingRun> {
    let history = dir.join(name).join("history.csv");
    let train = read_json(&dir.join("pytorch-train.json"))?;
    let theirs = train["results"].as_array()?.iter().find(|r| r["id"] == id)?;
    Some(TrainingRun {
        ours_s: csv_column(&history, "seconds")?.iter().sum(),
        theirs_s: theirs["train_s_total"].as_f64()?,
        ours_accuracy: *csv_column(&history, "val_accuracy")?.last()?,
        theirs_accuracy: theirs["test_accuracy"].as_f64()?,
        ours_peak_mib: peak_mib(&dir.join(format!("{name}.log"))),
        theirs_peak_mib: theirs["peak_rss_mib"].as_f64()?,
    })
}

fn join<T>(items: &[T], separator: &str, show: impl Fn(&T) -> String) -> String {
    items.iter().map(show).collect::<Vec<_>>().join(separator)
}

/// Milliseconds below a second, seconds above.
fn duration(s: f64) -> String {
    match s {
        s if s < 1.0 => format!("{:.1} ms", s * 1e3),
        s if s < 10.0 => format!("{s:.2} s"),
        s => format!("{s:.1} s"),
    }
}

/// Prints the table of every workload both sides ran in the rounds `dirs`.
pub fn report(dirs: &[PathBuf]) -> Result<(), String> {
    if dirs.is_empty() {
        return Err("name at least one round folder".into());
    }
    let mut rows: Vec<Row> = Vec::new();
    for (round, dir) in dirs.iter().enumerate() {
        let theirs = pytorch_medians(dir)?;
        for record in our_records(dir) {
            let Some(theirs_s) = their_median(&theirs, &record.id, record.threads) else { continue };
            let at = match rows.iter().position(|r| r.label == record.id && r.threads == record.threads) {
                Some(at) => at,
                None => {
                    rows.push(Row {
                        label: record.id.clone(),
                        threads: record.threads,
                        rounds: vec![None; dirs.len()],
                    });
                    rows.len() - 1
                }
            };
            rows[at].rounds[round] = Some((record.median_s, theirs_s));
        }
    }
    let runs: Vec<(&str, Vec<TrainingRun>)> = RUNS
        .iter()
        .map(|&(name, id, label)| (label, dirs.iter().filter_map(|dir| training_run(dir, name, id)).collect()))
        .collect();
    if rows.is_empty() && runs.iter().all(|(_, r)| r.is_empty()) {
        return Err("no workload or training run of ours matches a PyTorch result in the rounds".into());
    }
    for (round, dir) in dirs.iter().enumerate() {
        let peaks: Vec<Peak> = ["peak-before.json", "peak-after.json"]
            .iter()
            .filter_map(|name| serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok())
            .collect();
        let shown = join(&peaks, ", then ", |p| {
            format!("{:.0} (1 thread) and {:.0} ({})", p.one_thread, p.all_threads, p.threads)
        });
        println!("round {}: {} — FMA peak GFLOP/s {shown}", round + 1, dir.display());
    }
    if !rows.is_empty() {
        println!("\n| workload | threads | ours | PyTorch | speed ours / PyTorch |\n| --- | --- | --- | --- | --- |");
    }
    for row in &rows {
        let present: Vec<(f64, f64)> = row.rounds.iter().flatten().copied().collect();
        println!(
            "| {} | {} | {} | {} | {} |",
            row.label,
            row.threads,
            join(&present, ", ", |(o, _)| duration(*o)),
            join(&present, ", ", |(_, t)| duration(*t)),
            join(&present, " – ", |(o, t)| format!("{:.2}", t / o)),
        );
    }
    println!("\n| training run (2 threads) | ours | PyTorch | speed ours / PyTorch | test accuracy | peak memory, MiB |\n| --- | --- | --- | --- | --- | --- |");
    for (label, runs) in runs.iter().filter(|(_, r)| !r.is_empty()) {
        println!(
            "| {label} | {} | {} | {} | {} | {} |",
            join(runs, ", ", |r| duration(r.ours_s)),
            join(runs, ", ", |r| duration(r.theirs_s)),
            join(runs, " – ", |r| format!("{:.2}", r.theirs_s / r.ours_s)),
            join(runs, ", ", |r| format!("{:.2}% ({:.2}%)", 100.0 * r.ours_accuracy, 100.0 * r.theirs_accuracy)),
            join(runs, ", ", |r| {
                let ours = r.ours_peak_mib.map_or("?".into(), |m| format!("{m:.0}"));
                format!("{ours} ({:.0})", r.theirs_peak_mib)
            }),
        );
    }
    println!("\n(ratio > 1: ours is faster; medians of each side; PyTorch's figures in parentheses)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round folder in the system's temporary directory, removed when dropped.
    struct Round(PathBuf);

    impl Round {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("xtask-rounds-{name}-{}", std::process::id()));
            std::fs::create_dir_all(dir.join("cnnw")).unwrap();
            Self(dir)
        }
        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.0.join(name), text).unwrap();
        }
    }

    impl Drop for Round {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_training_run_is_read_from_both_sides_files() {
        let round = Round::new("run");
        round.write("cnnw/history.csv", "epoch,val_accuracy,seconds\n0,0.871,12.5\n1,0.8857,12.75\n2,0.9013,13.0\n");
        round.write("cnnw.log", "\tMaximum resident set size (kbytes): 122880\n\tExit status: 0\n");
        round.write(
            "pytorch-train.json",
            r#"{"results": [{"id": "T1", "train_s_total": 1.0, "test_accuracy": 0.5, "peak_rss_mib": 1.0},
                            {"id": "T2", "train_s_total": 88.5, "test_accuracy": 0.9022, "peak_rss_mib": 968.0}]}"#,
        );
        let run = training_run(&round.0, "cnnw", "T2").unwrap();
        let expected = TrainingRun {
            ours_s: 38.25,
            theirs_s: 88.5,
            ours_accuracy: 0.9013,
            theirs_accuracy: 0.9022,
            ours_peak_mib: Some(120.0),
            theirs_peak_mib: 968.0,
        };
        assert_eq!(run, expected);
        // No time log: the peak is unknown, the rest still read.
        std::fs::remove_file(round.0.join("cnnw.log")).unwrap();
        assert_eq!(training_run(&round.0, "cnnw", "T2").unwrap().ours_peak_mib, None);
        // No PyTorch run of that id: no row.
        assert!(training_run(&round.0, "cnnw", "T3").is_none());
    }

    #[test]
    fn a_round_without_any_result_is_an_error() {
        let round = Round::new("empty");
        assert!(report(std::slice::from_ref(&round.0)).is_err());
        assert!(report(&[]).is_err());
    }
}
