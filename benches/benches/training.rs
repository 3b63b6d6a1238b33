//! Criterion benchmarks of one T1, T2 (batch 64) and T3 (batch 128) training step
//! (`cargo bench -p nn-benches --bench training`); throughput is in images.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nn_benches::workloads::{TrainCase, TrainRun};
use std::time::Duration;

fn training(c: &mut Criterion) {
    let mut group = c.benchmark_group("train-step");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    for case in TrainCase::ALL {
        let mut run = TrainRun::new(case);
        group.throughput(Throughput::Elements(run.batch as u64));
        group.bench_function(case.id(), |b| b.iter(|| run.step()));
    }
    group.finish();
}

criterion_group!(benches, training);
criterion_main!(benches);
