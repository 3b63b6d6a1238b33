//! Where a graph's time goes: wall time per node of the last forward and backward
//! pass, recorded only when asked for.

use std::time::{Duration, Instant};

/// One node's share of the last pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTiming {
    /// The node's name (`"stage2.block0.conv1"`).
    pub name: String,
    /// What it computes: a layer's kind, `"add"`, `"concat"` or `"input"`.
    pub kind: &'static str,
    /// Time of its forward in the last forward pass.
    pub forward: Duration,
    /// Time of its backward in the last backward pass, gradient accumulation included.
    pub backward: Duration,
}

/// A stopwatch that costs nothing when profiling is off.
pub(super) struct Stopwatch(Option<Instant>);

impl Stopwatch {
    pub(super) fn start(on: bool) -> Self {
        Self(on.then(Instant::now))
    }

    /// Stores the time since `start` into `slot`, when profiling.
    pub(super) fn stop(self, slot: Option<&mut Duration>) {
        if let (Some(started), Some(slot)) = (self.0, slot) {
            *slot = started.elapsed();
        }
    }
}
