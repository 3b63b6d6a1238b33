//! Timing: warm up, repeat, report the median (BENCHMARKS.md: at least 5 repetitions).

use std::time::{Duration, Instant};

/// Repetition settings.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Minimum repetitions.
    pub min_reps: usize,
    /// Keep repeating until this much time has passed (bounded by `max_reps`).
    pub min_time: Duration,
    /// Maximum repetitions.
    pub max_reps: usize,
}

impl Budget {
    /// The default: ≥ 11 repetitions and ≥ 1 s.
    pub const FULL: Budget = Budget { min_reps: 11, min_time: Duration::from_secs(1), max_reps: 200 };
    /// `--quick`: 5 repetitions, ≥ 0.2 s.
    pub const QUICK: Budget = Budget { min_reps: 5, min_time: Duration::from_millis(200), max_reps: 50 };
}

/// The median and spread of repeated runs.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Median seconds per run.
    pub median: f64,
    /// Fastest run.
    pub min: f64,
    /// Slowest run.
    pub max: f64,
    /// Runs timed.
    pub reps: usize,
}

/// Runs `f` once to warm up (caches, allocations, thread pool), then times it.
pub fn measure(budget: Budget, mut f: impl FnMut()) -> Timing {
    f();
    let started = Instant::now();
    let mut times = Vec::new();
    while times.len() < budget.min_reps || (started.elapsed() < budget.min_time && times.len() < budget.max_reps) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    timing(times)
}

/// Times `contestants` workloads against each other: `f(i)` runs workload i. Each is
/// warmed up once, then they take turns, a block of at least `TURN` (20 ms) each per
/// round (one call, for a call longer than that), so that a drift of the machine
/// (clock, a neighbour's load) falls on all of them alike; a sample is the mean call
/// of a block. Run one after another, an identical call measured faster when it came
/// second; turns of single calls let one library's packing evict the other's data
/// (docs/performance.md, "Measuring").
pub fn measure_alternating(budget: Budget, contestants: usize, mut f: impl FnMut(usize)) -> Vec<Timing> {
    (0..contestants).for_each(&mut f);
    let started = Instant::now();
    let mut times = vec![Vec::new(); contestants];
    let enough_time = budget.min_time * contestants as u32;
    while times[0].len() < budget.min_reps || (started.elapsed() < enough_time && times[0].len() < budget.max_reps) {
        for (i, samples) in times.iter_mut().enumerate() {
            let (turn, mut calls) = (Instant::now(), 0u32);
            while calls == 0 || turn.elapsed() < TURN {
                f(i);
                calls += 1;
            }
            samples.push(turn.elapsed().as_secs_f64() / f64::from(calls));
        }
    }
    times.into_iter().map(timing).collect()
}

/// The shortest turn of one workload in [`measure_alternating`].
const TURN: Duration = Duration::from_millis(20);

/// The median and spread of `times`.
fn timing(mut times: Vec<f64>) -> Timing {
    times.sort_by(f64::total_cmp);
    Timing { median: times[times.len() / 2], min: times[0], max: times[times.len() - 1], reps: times.len() }
}

/// Runs `f` inside a rayon pool of `threads` threads.
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool").install(f)
}
