//! The benchmark workloads of `shared/BENCHMARKS.md` (G1–G6, C1–C10, T1–T3), set up
//! once here and driven by the criterion benches (`cargo bench -p nn-benches`) and by
//! the `nn-bench` binary behind `cargo xtask bench`.

pub mod harness;
pub mod instructions;
pub mod peak;
pub mod workloads;
