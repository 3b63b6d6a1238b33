//! Criterion benchmarks of G1–G6 and C1–C10 (`cargo bench -p nn-benches --bench kernels`).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nn_benches::workloads::{ConvRun, GemmRun, CONVS, GEMMS};
use std::time::Duration;

fn gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm");
    group.sample_size(10).measurement_time(Duration::from_secs(3));
    for case in GEMMS {
        let mut run = GemmRun::new(case);
        group.throughput(Throughput::Elements(case.flops() as u64));
        group.bench_function(case.id, |b| b.iter(|| run.ours()));
    }
    group.finish();
}

fn conv(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv");
    group.sample_size(10).measurement_time(Duration::from_secs(3));
    for case in CONVS {
        let mut run = ConvRun::new(&case);
        group.throughput(Throughput::Elements(case.forward_flops() as u64));
        group.bench_function(format!("{}-fwd", case.id), |b| b.iter(|| run.forward()));
        group.throughput(Throughput::Elements(3 * case.forward_flops() as u64));
        group.bench_function(format!("{}-fwdbwd", case.id), |b| b.iter(|| run.forward_backward()));
    }
    group.finish();
}

criterion_group!(benches, gemm, conv);
criterion_main!(benches);
