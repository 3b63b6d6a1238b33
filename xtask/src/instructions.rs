//! Instruction counts under valgrind's callgrind: deterministic for a given binary,
//! so small regressions are visible on noisy machines.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// A count that grows by more than this fails the check.
const THRESHOLD_PCT: f64 = 2.0;
const BASELINE: &str = "benches/instructions-baseline.json";

/// Counts the instructions of one workload inside `measured_region`.
fn count(binary: &Path, name: &str, scratch: &Path) -> Result<u64, String> {
    let out_file = scratch.join(format!("callgrind.{name}.out"));
    let status = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=*measured_region*",
            &format!("--callgrind-out-file={}", out_file.display()),
        ])
        .arg(binary)
        .args(["instructions", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("running valgrind (apt-get install valgrind): {e}"))?;
    if !status.success() {
        return Err(format!("valgrind failed on {name}"));
    }
    let text = std::fs::read_to_string(&out_file).map_err(|e| format!("{}: {e}", out_file.display()))?;
    // callgrind writes the total as "summary: N" (and "totals: N").
    text.lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no instruction total in {}", out_file.display()))
}

/// Counts every workload, compares with the baseline (or writes it), prints a table.
pub fn check(binary: &Path, root: &Path, save: bool) -> Result<bool, String> {
    let names =
        String::from_utf8(Command::new(binary).arg("list-instructions").output().map_err(|e| e.to_string())?.stdout)
            .map_err(|e| e.to_string())?;
    let scratch = root.join("target/bench");
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let mut counts = BTreeMap::new();
    for name in names.lines() {
        counts.insert(name.to_string(), count(binary, name, &scratch)?);
    }
    let baseline_path = root.join(BASELINE);
    if save {
        let text = serde_json::to_string_pretty(&counts).map_err(|e| e.to_string())?;
        std::fs::write(&baseline_path, text + "\n").map_err(|e| e.to_string())?;
        println!("baseline written to {}", baseline_path.display());
        counts.iter().for_each(|(n, c)| println!("{n}: {c}"));
        return Ok(true);
    }
    let text = std::fs::read_to_string(&baseline_path).map_err(|e| format!("{}: {e}", baseline_path.display()))?;
    let baseline: BTreeMap<String, u64> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let mut ok = true;
    println!("| workload | baseline | now | change |\n| --- | --- | --- | --- |");
    for (name, &now) in &counts {
        match baseline.get(name) {
            Some(&base) => {
                let change = 100.0 * (now as f64 / base as f64 - 1.0);
                let verdict = if change > THRESHOLD_PCT {
                    ok = false;
                    " **REGRESSION**"
                } else {
                    ""
                };
                println!("| {name} | {base} | {now} | {change:+.2}%{verdict} |");
            }
            None => println!("| {name} | (none) | {now} | new |"),
        }
    }
    if !ok {
        println!("\nmore than {THRESHOLD_PCT}% more instructions; if intended, run `cargo xtask bench --instructions --save-baseline` and commit {BASELINE}");
    }
    Ok(ok)
}
