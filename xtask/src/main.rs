//! `cargo xtask …`: benchmarks and their regression checks.
//!
//! - `cargo xtask peak`: this machine's f32 FMA peak, 1 thread and all threads.
//! - `cargo xtask bench [--quick] [--filter ID]…`: the workloads of
//!   shared/BENCHMARKS.md as a table, written to `target/bench/latest.json`.
//! - `cargo xtask bench --compare OLD.json [--against NEW.json] [--threshold PCT]`:
//!   fails when a workload's median got slower than the threshold allows (runs the
//!   benchmarks first unless `--against` names a result file).
//! - `cargo xtask bench --against-pytorch DIR [--against NEW.json]`: our figures
//!   beside PyTorch's (the JSON files `shared/pytorch-reference` writes into DIR),
//!   with the ratio per workload and thread count.
//! - `cargo xtask against-pytorch ROUND…`: interleaved rounds written by
//!   `benches/against-pytorch.sh`, one table of both sides' medians and the ratio
//!   per round, training runs included.
//! - `cargo xtask bench --instructions [--save-baseline]`: counts executed
//!   instructions of a fixed kernel set under callgrind and fails on a change above
//!   2% from `benches/instructions-baseline.json`.

mod instructions;
mod pytorch;
mod report;
mod rounds;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Slowdown that fails `--compare`, in percent: above the run-to-run noise of full
/// runs on a shared 2-core machine, bimodal sub-millisecond products included
/// (docs/performance.md, "Measuring"). Instruction counts make the fine check.
const DEFAULT_THRESHOLD_PCT: f64 = 50.0;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Builds the benchmark binary with the cargo profile `profile` and returns its path.
fn build_bench_binary(profile: &str) -> Result<PathBuf, String> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--profile", profile, "--quiet", "-p", "nn-benches", "--bin", "nn-bench"])
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err("building nn-bench failed".into());
    }
    let dir = if profile == "dev" { "debug" } else { profile };
    // Where cargo put it: CARGO_TARGET_DIR (relative to the workspace, where cargo
    // ran) when set.
    let target = workspace_root().join(std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()));
    Ok(target.join(dir).join("nn-bench"))
}

/// Runs `nn-bench` with `args` and returns its standard output.
fn run_bench(binary: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(binary)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", binary.display()))?;
    if !out.status.success() {
        return Err(format!("nn-bench {args:?} failed"));
    }
    String::from_utf8(out.stdout).map_err(|e| e.to_string())
}

fn value_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.windows(2).find(|w| w[0] == flag).map(|w| w[1].as_str())
}

fn bench(args: &[String]) -> Result<bool, String> {
    if args.iter().any(|a| a == "--instructions") {
        let binary = build_bench_binary("instructions")?;
        return instructions::check(&binary, &workspace_root(), args.iter().any(|a| a == "--save-baseline"));
    }
    let threshold = match value_after(args, "--threshold") {
        Some(v) => v.parse::<f64>().map_err(|e| format!("--threshold {v}: {e}"))?,
        None => DEFAULT_THRESHOLD_PCT,
    };
    let new = match value_after(args, "--against") {
        Some(against) => report::Results::read(Path::new(against))?,
        None => {
            let binary = build_bench_binary("release")?;
            let peak = serde_json::from_str(&run_bench(&binary, &["peak"])?).map_err(|e| e.to_string())?;
            let mut run_args = vec!["run"];
            if args.iter().any(|a| a == "--quick") {
                run_args.push("--quick");
            }
            for w in args.windows(2).filter(|w| w[0] == "--filter") {
                run_args.extend(["--filter", w[1].as_str()]);
            }
            let records = serde_json::from_str(&run_bench(&binary, &run_args)?).map_err(|e| e.to_string())?;
            let results = report::Results::new(peak, records);
            let path = workspace_root().join("target/bench/latest.json");
            results.write(&path)?;
            println!("{}", results.table());
            println!("written to {}", path.display());
            results
        }
    };
    if let Some(dir) = value_after(args, "--against-pytorch") {
        pytorch::compare(&new, Path::new(dir))?;
    }
    match value_after(args, "--compare") {
        Some(old) => Ok(report::compare(&report::Results::read(Path::new(old))?, &new, threshold)),
        None => Ok(true),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("peak") => build_bench_binary("release").and_then(|b| run_bench(&b, &["peak"])).map(|json| {
            let peak: report::Peak = serde_json::from_str(&json).expect("nn-bench prints a peak");
            println!(
                "f32 FMA peak ({}): {:.1} GFLOP/s on 1 thread, {:.1} GFLOP/s on {} threads",
                peak.isa, peak.one_thread, peak.all_threads, peak.threads
            );
            true
        }),
        Some("bench") => bench(&args[1..]),
        Some("against-pytorch") => {
            rounds::report(&args[1..].iter().map(PathBuf::from).collect::<Vec<_>>()).map(|()| true)
        }
        _ => {
            eprintln!(
                "usage: cargo xtask peak\n       cargo xtask bench [--quick] [--filter ID]... [--compare OLD.json [--against NEW.json] [--threshold PCT]]\n       cargo xtask bench --instructions [--save-baseline]\n       cargo xtask against-pytorch ROUND_DIR..."
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
