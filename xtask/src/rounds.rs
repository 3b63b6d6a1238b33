//! Interleaved rounds beside PyTorch (`benches/against-pytorch.sh` writes one folder a
//! round): every workload's medians and speed ratio, round by round, in one table.
//!
//! A round folder holds our `nn-bench run` results (`ours.json`, `t3.json`), the
//! JSON files of `shared/pytorch-reference` (conv.py, gemm.py, resnet.py --bench,
//! train.py), our example's training runs (`cnn/`, `cnnw/`, `mlp/`, each with its
//! `history.csv`, and `/usr/bin/time -v` logs beside them) and the FMA peak before and
//! after (`peak-before.json`, `peak-after.json`).

use crate::pytorch::{pytorch_id, pytorch_medians};
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

/// Our run in `dir/name` beside train.py's run `id`: (seconds, seconds, our test
/// accuracy, theirs, our peak MiB, theirs).
fn training_run(dir: &Path, name: &str, id: &str) -> Option<(f64, f64, f64, f64, Option<f64>, f64)> {
    let history = dir.join(name).join("history.csv");
    let ours_s: f64 = csv_column(&history, "seconds")?.iter().sum();
    let ours_accuracy = *csv_column(&history, "val_accuracy")?.last()?;
    let train = read_json(&dir.join("pytorch-train.json"))?;
    let theirs = train["results"].as_array()?.iter().find(|r| r["id"] == id)?;
    Some((
        ours_s,
        theirs["train_s_total"].as_f64()?,
        ours_accuracy,
        theirs["test_accuracy"].as_f64()?,
        peak_mib(&dir.join(format!("{name}.log"))),
        theirs["peak_rss_mib"].as_f64()?,
    ))
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
            let wanted = pytorch_id(&record.id);
            let Some((_, _, s)) = theirs.iter().rev().find(|(id, t, _)| *id == wanted && *t == record.threads) else {
                continue;
            };
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
            rows[at].rounds[round] = Some((record.median_s, *s));
        }
    }
    if rows.is_empty() {
        return Err("no workload of ours matches a PyTorch result in the rounds".into());
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
    println!("\n| workload | threads | ours | PyTorch | speed ours / PyTorch |\n| --- | --- | --- | --- | --- |");
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
    for (name, id, label) in RUNS {
        let runs: Vec<_> = dirs.iter().filter_map(|dir| training_run(dir, name, id)).collect();
        if runs.is_empty() {
            continue;
        }
        println!(
            "| {label} | {} | {} | {} | {} | {} |",
            join(&runs, ", ", |r| duration(r.0)),
            join(&runs, ", ", |r| duration(r.1)),
            join(&runs, " – ", |r| format!("{:.2}", r.1 / r.0)),
            join(&runs, ", ", |r| format!("{:.2}% ({:.2}%)", 100.0 * r.2, 100.0 * r.3)),
            join(&runs, ", ", |r| format!("{} ({:.0})", r.4.map_or("?".into(), |m| format!("{m:.0}")), r.5)),
        );
    }
    println!("\n(ratio > 1: ours is faster; medians of each side; PyTorch's figures in parentheses)");
    Ok(())
}
