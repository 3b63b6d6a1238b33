//! Shared helpers for the benchmark workloads of `shared/BENCHMARKS.md`.
