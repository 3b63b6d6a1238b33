//! What the examples share: their output directory, the process's peak memory, and
//! how a failed run reports its error.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `runs/YYYYMMDDTHHMMSSZ`: a directory named for the UTC time now, in the basic form
/// of ISO 8601.
pub fn timestamped_run_dir() -> PathBuf {
    let rfc3339 = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    PathBuf::from("runs").join(rfc3339.replace(['-', ':'], ""))
}

/// Peak resident memory of this process, from /proc (Linux only).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A directory for the run's files, created and checked writable before training.
pub fn prepare_output(out: &Path) -> Result<(), Box<dyn Error>> {
    let failed = |e: std::io::Error| format!("output directory {}: {e}", out.display());
    std::fs::create_dir_all(out).map_err(failed)?;
    tempfile::tempfile_in(out).map_err(failed)?;
    Ok(())
}

/// The exit code of a run, its error and every cause printed first: the library's
/// messages name the file, the setting or the step at fault.
pub fn exit_code(result: Result<(), Box<dyn Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_chain(&*error, "\n  caused by: "));
            ExitCode::FAILURE
        }
    }
}

/// The error's message followed by its causes, each after `separator`.
pub fn error_chain(error: &dyn Error, separator: &str) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message += &format!("{separator}{cause}");
        source = cause.source();
    }
    message
}
