//! Ours beside PyTorch: reads the JSON files of `shared/pytorch-reference` (gemm.py,
//! conv.py, resnet.py --bench) and our `nn-bench run` results, and prints one table of
//! both sides' medians and their ratio, so every speed claim is a ratio from one run.

use crate::report::Results;
use serde_json::Value;
use std::path::Path;

/// One row: a workload both sides ran at one thread count.
struct Row {
    id: String,
    threads: usize,
    ours_s: f64,
    theirs_s: f64,
}

fn read_json(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// PyTorch's median seconds per workload id (ours' spelling: `G3`, `C3-fwd`,
/// `C3-fwdbwd`, `T3-step`) and thread count, from every file of `dir` it knows.
pub(crate) fn pytorch_medians(dir: &Path) -> Result<Vec<(String, usize, f64)>, String> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let Some(json) = read_json(&path) else { continue };
        let threads = |v: &Value| v["threads"].as_u64().map(|t| t as usize);
        if name.starts_with("pytorch-gemm") || name.starts_with("pytorch-conv") {
            for row in json["results"].as_array().into_iter().flatten() {
                let (Some(id), Some(t)) = (row["id"].as_str(), threads(row)) else { continue };
                if let Some(s) = row["median_s"].as_f64() {
                    out.push((id.to_string(), t, s));
                }
                for pass in ["fwd", "fwdbwd"] {
                    if let Some(s) = row[format!("{pass}_median_s")].as_f64() {
                        out.push((format!("{id}-{pass}"), t, s));
                    }
                }
            }
        } else if name.starts_with("pytorch-t3") {
            // resnet.py --bench: images/s over blocks of whole training steps.
            if let (Some(t), Some(ips)) = (threads(&json), json["images_per_s_median"].as_f64()) {
                out.push(("T3-step".to_string(), t, 128.0 / ips));
            }
        }
    }
    Ok(out)
}

/// The PyTorch row one of ours is set against: a Winograd variant (`C3W-fwd`,
/// `T3W-step`) against its workload's (`C3-fwd`), PyTorch choosing its own algorithm.
pub(crate) fn pytorch_id(id: &str) -> String {
    let (workload, pass) = id.split_once('-').map_or((id, None), |(w, p)| (w, Some(p)));
    let workload = workload.strip_suffix('W').unwrap_or(workload);
    match pass {
        Some(pass) => format!("{workload}-{pass}"),
        None => workload.to_string(),
    }
}

/// PyTorch's median seconds for our record `id` at `threads` (the last file's, where
/// several hold it), from [`pytorch_medians`].
pub(crate) fn their_median(theirs: &[(String, usize, f64)], id: &str, threads: usize) -> Option<f64> {
    let wanted = pytorch_id(id);
    theirs.iter().rev().find(|(id, t, _)| *id == wanted && *t == threads).map(|(_, _, s)| *s)
}

/// Prints the side-by-side table; rows are the workloads both sides ran.
pub fn compare(ours: &Results, pytorch_dir: &Path) -> Result<(), String> {
    let theirs = pytorch_medians(pytorch_dir)?;
    let rows: Vec<Row> = ours
        .records
        .iter()
        .filter_map(|r| {
            let theirs_s = their_median(&theirs, &r.id, r.threads)?;
            Some(Row { id: r.id.clone(), threads: r.threads, ours_s: r.median_s, theirs_s })
        })
        .collect();
    if rows.is_empty() {
        return Err(format!("no workload of ours matches a PyTorch result in {}", pytorch_dir.display()));
    }
    println!("| workload | threads | ours | PyTorch | speed ratio ours/PyTorch |");
    println!("| --- | --- | --- | --- | --- |");
    for row in rows {
        println!(
            "| {} | {} | {:.3} ms | {:.3} ms | {:.2} |",
            row.id,
            row.threads,
            row.ours_s * 1e3,
            row.theirs_s * 1e3,
            row.theirs_s / row.ours_s
        );
    }
    println!("(ratio > 1: ours is faster; both sides' medians, from files of one sitting)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pytorch_id;

    #[test]
    fn winograd_rows_meet_their_workloads() {
        assert_eq!(pytorch_id("C3W-fwd"), "C3-fwd");
        assert_eq!(pytorch_id("T3W-step"), "T3-step");
        assert_eq!(pytorch_id("C10-fwdbwd"), "C10-fwdbwd");
        assert_eq!(pytorch_id("G3"), "G3");
    }
}
