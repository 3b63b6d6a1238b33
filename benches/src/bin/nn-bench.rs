//! Runs the benchmark workloads and prints JSON; `cargo xtask bench` drives it.
//!
//! - `nn-bench peak`: the FMA peak.
//! - `nn-bench run [--quick] [--filter ID]…`: every workload with 1 and all threads.
//! - `nn-bench instructions NAME`: one instruction-count workload (under callgrind).
//! - `nn-bench list-instructions`: their names.
//! - `nn-bench layers T1|T2|T3|T2W|T3W [THREADS]`: forward and backward time of each layer.
//! - `nn-bench passes C1…C10 [THREADS]`: time of each pass of a convolution workload.
//! - `nn-bench profile ID [THREADS]`: loops one workload for 3 s, for `perf record`.

use nn_benches::harness::{measure, measure_alternating, with_threads, Budget, Timing};
use nn_benches::workloads::{conv_cases, ConvRun, GemmRun, TrainCase, TrainRun, GEMMS, T3_CONVS};
use nn_benches::{instructions, peak};
use serde::Serialize;

const USAGE: &str = "nn-bench peak | run [--quick] [--filter ID]... | layers T1|T2|T3|T2W|T3W [THREADS] \
                     | passes C1..C10|T3-mid|T3-s2a|T3-s2b|T3-1x1a|T3-1x1b [THREADS] | profile ID [THREADS] | instructions NAME | list-instructions";

#[derive(Serialize)]
struct Reference {
    name: &'static str,
    median_s: f64,
    gflops: f64,
}

#[derive(Serialize)]
struct Record {
    id: String,
    threads: usize,
    median_s: f64,
    min_s: f64,
    max_s: f64,
    reps: usize,
    gflops: Option<f64>,
    images_per_s: Option<f64>,
    references: Vec<Reference>,
}

fn record(
    id: String,
    threads: usize,
    t: Timing,
    flops: Option<f64>,
    images: Option<f64>,
    references: Vec<Reference>,
) -> Record {
    Record {
        id,
        threads,
        median_s: t.median,
        min_s: t.min,
        max_s: t.max,
        reps: t.reps,
        gflops: flops.map(|f| f / t.median / 1e9),
        images_per_s: images.map(|n| n / t.median),
        references,
    }
}

fn reference(name: &'static str, t: Timing, flops: f64) -> Reference {
    Reference { name, median_s: t.median, gflops: flops / t.median / 1e9 }
}

fn layer_times(case: TrainCase) {
    use nn_core::Tensor;
    let Some(mut net) = case.sequential() else { return graph_node_times(case) };
    let mut shape = vec![64];
    shape.extend_from_slice(net.input_shape());
    let len = shape.iter().product();
    let mut activations = vec![Tensor::from_vec(&shape, nn_benches::workloads::filled(len, 1)).expect("shape")];
    // As the network runs them: each ReLU that a neighbour takes over (the batch norm
    // before it, the max pool after it) is skipped, and that layer rectifies.
    let taken_by = net.relus_taken_over().to_vec();
    let layers = net.layers_mut();
    for layer in layers.iter_mut() {
        let mut out = Tensor::default();
        layer.forward(activations.last().expect("input"), &mut out).expect("forward");
        activations.push(out);
    }
    let budget = Budget::FULL;
    let (mut total_f, mut total_b) = (0.0, 0.0);
    println!("| layer | kind | forward | backward |\n| --- | --- | --- | --- |");
    for (i, layer) in net.layers_mut().iter_mut().enumerate() {
        if let Some(by) = taken_by[i] {
            println!("| {i} | {} | taken over by layer {by} | |", layer.kind());
            continue;
        }
        let (x, y) = (&activations[i], &activations[i + 1]);
        let mut out = Tensor::default();
        let f = measure(budget, || layer.forward(x, &mut out).expect("forward"));
        let dy = y.clone();
        let mut dx = Tensor::default();
        let b = measure(budget, || layer.backward(x, y, &dy, (i > 0).then_some(&mut dx)).expect("backward"));
        total_f += f.median;
        total_b += b.median;
        println!("| {i} | {} | {:.3} ms | {:.3} ms |", layer.kind(), f.median * 1e3, b.median * 1e3);
    }
    println!("| all | | {:.3} ms | {:.3} ms |", total_f * 1e3, total_b * 1e3);
    // The rest of a training step: zeroing the gradients and the SGD update.
    use nn_train::optim::Optimizer;
    let zero = measure(budget, || net.zero_grad());
    let mut sgd = nn_train::optim::Sgd::new(0.01).momentum(0.9);
    let update = measure(budget, || sgd.step(&mut net.params_mut()).expect("update"));
    println!("zero_grad {:.3} ms, SGD momentum update {:.3} ms", zero.median * 1e3, update.median * 1e3);
}

/// Where a step of a graph network (T3) goes: each node's mean forward and backward
/// time over a run of training steps, summed by layer kind and by stage, against the
/// whole step.
fn graph_node_times(case: TrainCase) {
    use std::collections::BTreeMap;
    use std::time::Instant;
    let mut graph = nn_train::models::resnet20_with::<f32>(1, case.algorithm()).expect("T3 is valid");
    let (mut optimizer, data, batch) = (case.optimizer(), case.data(), case.batch());
    let (mut inputs, mut targets, mut grad) = (nn_core::Tensor::default(), Vec::new(), nn_core::Tensor::default());
    let indices: Vec<usize> = (0..batch).collect();
    let mut step = |graph: &mut nn_core::Graph<f32>| {
        use nn_train::data::Dataset;
        data.fill_training_batch(0, &indices, &mut inputs, &mut targets).expect("in range");
        let loss = &nn_core::SoftmaxCrossEntropy;
        let reduction = nn_core::Reduction::Mean;
        nn_train::train_step(graph, &mut optimizer, loss, &inputs, &targets, reduction, &mut grad).expect("step");
    };
    for _ in 0..3 {
        step(&mut graph); // Warm-up: buffers reach their steady-state sizes.
    }
    graph.set_profiling(true);
    let steps = 10;
    let mut sums: BTreeMap<String, (&'static str, f64, f64)> = BTreeMap::new();
    let mut order = Vec::new();
    let started = Instant::now();
    for _ in 0..steps {
        step(&mut graph);
        for t in graph.node_timings() {
            let entry = sums.entry(t.name.clone()).or_insert_with(|| {
                order.push(t.name.clone());
                (t.kind, 0.0, 0.0)
            });
            entry.1 += t.forward.as_secs_f64() / steps as f64;
            entry.2 += t.backward.as_secs_f64() / steps as f64;
        }
    }
    let wall = started.elapsed().as_secs_f64() / steps as f64;
    let mut by_kind: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let mut by_stage: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for name in &order {
        let (kind, f, b) = sums[name];
        let k = by_kind.entry(kind).or_default();
        (k.0, k.1) = (k.0 + f, k.1 + b);
        let stage = name.split('.').next().unwrap_or(name).to_string();
        let s = by_stage.entry(stage).or_default();
        (s.0, s.1) = (s.0 + f, s.1 + b);
    }
    let (total_f, total_b): (f64, f64) = by_kind.values().fold((0.0, 0.0), |(f, b), v| (f + v.0, b + v.1));
    println!("{} step (batch {batch}), {} threads: {:.1} ms", case.id(), rayon::current_num_threads(), wall * 1e3);
    for (title, table) in
        [("kind", by_kind.into_iter().map(|(k, v)| (k.to_string(), v)).collect()), ("stage", by_stage)]
            as [(&str, BTreeMap<String, (f64, f64)>); 2]
    {
        println!("\n| {title} | forward | backward | share of step |\n| --- | --- | --- | --- |");
        for (name, (f, b)) in table {
            println!("| {name} | {:.2} ms | {:.2} ms | {:.1}% |", f * 1e3, b * 1e3, 100.0 * (f + b) / wall);
        }
    }
    let rest = wall - total_f - total_b;
    println!("| (loss, update, batch assembly) | | | {:.1}% ({:.2} ms) |", 100.0 * rest / wall, rest * 1e3);
    println!("\n| node | kind | forward | backward |\n| --- | --- | --- | --- |");
    for name in &order {
        let (kind, f, b) = sums[name];
        println!("| {name} | {kind} | {:.3} ms | {:.3} ms |", f * 1e3, b * 1e3);
    }
}

/// Median time of each pass of one convolution workload: forward, and the bias,
/// weight and input gradients, each with its GFLOP/s (the bias gradient does none
/// of the counted multiply-adds).
fn pass_times(case: &nn_benches::workloads::ConvCase) {
    let mut run = ConvRun::new(case);
    let flops = case.forward_flops();
    let budget = Budget::FULL;
    println!("| pass | median | GFLOP/s |\n| --- | --- | --- |");
    // Each pass with whether it does the counted multiply-adds.
    let passes = [
        ("forward", ConvRun::forward as fn(&mut ConvRun), true),
        ("bias gradient", ConvRun::bias_gradient, false),
        ("weight gradient", ConvRun::weight_gradient, true),
        ("input gradient", ConvRun::input_gradient, true),
        ("all three gradients, one call", ConvRun::backward, false),
    ];
    for (name, pass, counted) in passes {
        let t = measure(budget, || pass(&mut run));
        let gflops = if counted { format!("{:.0}", flops / t.median / 1e9) } else { String::new() };
        println!("| {name} | {:.3} ms | {gflops} |", t.median * 1e3);
    }
}

/// Whether `id` is workload `prefix` or one of its variants (`C1`, `C1-fwd`), or
/// within a family (`C`): `C10` is not `C1`.
fn names(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match args.first().map(String::as_str) {
        Some("peak") => println!("{}", serde_json::to_string(&peak::measure(5, cores)).expect("serialisable")),
        Some("profile") => {
            // Loops one workload (ours only) for a few seconds, for `perf record`.
            let id = args.get(1).map(String::as_str).unwrap_or("");
            let threads: usize = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(1);
            let mut step: Box<dyn FnMut() + Send> = if let Some(c) = GEMMS.iter().find(|c| c.id == id) {
                let mut run = GemmRun::new(*c);
                Box::new(move || run.ours())
            } else if let Some(c) =
                conv_cases().chain(&T3_CONVS).find(|c| c.id == id.strip_suffix("-fwd").unwrap_or(id))
            {
                let mut run = ConvRun::new(c);
                if id.ends_with("-fwd") {
                    Box::new(move || run.forward())
                } else {
                    Box::new(move || run.forward_backward())
                }
            } else if let Some(c) = TrainCase::ALL.into_iter().find(|c| c.id() == id) {
                let mut run = TrainRun::new(c);
                Box::new(move || run.step())
            } else {
                eprintln!("unknown workload {id:?}");
                std::process::exit(2);
            };
            with_threads(threads, || {
                let started = std::time::Instant::now();
                while started.elapsed().as_secs_f64() < 3.0 {
                    step();
                }
            });
        }
        Some("passes") => {
            let case = conv_cases().chain(&T3_CONVS).find(|c| Some(c.id) == args.get(1).map(String::as_str));
            let Some(case) = case else {
                eprintln!("usage: nn-bench passes C1..C10|T3-mid|T3-s2a|T3-s2b|T3-1x1a|T3-1x1b [THREADS]");
                std::process::exit(2);
            };
            let threads: usize = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(1);
            with_threads(threads, || pass_times(case));
        }
        Some("layers") => {
            // Forward and backward time of each layer of T1 or T2 (batch 64), or each
            // node of T3 (batch 128).
            let case = TrainCase::ALL.into_iter().find(|c| Some(c.id()) == args.get(1).map(String::as_str));
            let Some(case) = case else {
                eprintln!("usage: nn-bench layers T1|T2|T3|T2W|T3W [THREADS]");
                std::process::exit(2);
            };
            let threads: usize = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(1);
            with_threads(threads, || layer_times(case));
        }
        Some("list-instructions") => instructions::WORKLOADS.iter().for_each(|w| println!("{}", w.name)),
        Some("instructions") => {
            let name = args.get(1).map(String::as_str).unwrap_or("");
            if instructions::run(name).is_none() {
                eprintln!("unknown instruction workload {name:?}");
                std::process::exit(2);
            }
        }
        Some("run") => {
            // An unknown flag is an error, not a silent full run of every workload.
            let mut rest = args[1..].iter();
            while let Some(arg) = rest.next() {
                let known = arg == "--quick" || (arg == "--filter" && rest.next().is_some());
                if !known {
                    eprintln!("nn-bench run: unexpected {arg:?}; usage: {USAGE}");
                    std::process::exit(2);
                }
            }
            let quick = args.iter().any(|a| a == "--quick");
            let filters: Vec<&str> = args.windows(2).filter(|w| w[0] == "--filter").map(|w| w[1].as_str()).collect();
            let selected = |id: &str| filters.is_empty() || filters.iter().any(|f| names(id, f));
            let budget = if quick { Budget::QUICK } else { Budget::FULL };
            let thread_counts: Vec<usize> = if cores > 1 { vec![1, cores] } else { vec![1] };
            let mut records = Vec::new();
            for case in GEMMS.iter().filter(|c| selected(c.id)) {
                for &threads in &thread_counts {
                    // Ours and the references take turns (matrixmultiply runs on one
                    // thread only, so it joins the one-thread rows).
                    let mut run = GemmRun::new(*case);
                    let contestants = if threads == 1 { 3 } else { 2 };
                    let timings = with_threads(threads, || {
                        measure_alternating(budget, contestants, |i| match i {
                            0 => run.ours(),
                            1 => run.gemm_crate(threads),
                            _ => run.matrixmultiply(),
                        })
                    });
                    let mm = timings.get(2).map(|&t| reference("matrixmultiply", t, case.flops()));
                    let refs = mm.into_iter().chain([reference("gemm crate", timings[1], case.flops())]).collect();
                    records.push(record(case.id.into(), threads, timings[0], Some(case.flops()), None, refs));
                    eprintln!("{} threads={threads} done", case.id);
                }
            }
            for case in conv_cases().filter(|c| selected(c.id)) {
                for &threads in &thread_counts {
                    let mut run = ConvRun::new(case);
                    let mut equivalent = GemmRun::new(run.equivalent_gemm());
                    let eq_flops = run.equivalent_gemm().flops();
                    // On one thread the forward pass takes turns with its reference.
                    let contestants = if threads == 1 { 2 } else { 1 };
                    let timings = with_threads(threads, || {
                        measure_alternating(budget, contestants, |i| match i {
                            0 => run.forward(),
                            _ => equivalent.matrixmultiply(),
                        })
                    });
                    let forward = timings[0];
                    let both = with_threads(threads, || measure(budget, || run.forward_backward()));
                    let refs: Vec<Reference> = timings
                        .get(1)
                        .map(|&t| reference("matrixmultiply, same-size GEMM", t, eq_flops))
                        .into_iter()
                        .collect();
                    let flops = case.forward_flops();
                    records.push(record(format!("{}-fwd", case.id), threads, forward, Some(flops), None, refs));
                    records.push(record(format!("{}-fwdbwd", case.id), threads, both, Some(3.0 * flops), None, vec![]));
                    eprintln!("{} threads={threads} done", case.id);
                }
            }
            for case in TrainCase::ALL.into_iter().filter(|c| selected(c.id())) {
                for &threads in &thread_counts {
                    let mut run = TrainRun::new(case);
                    let batch = run.batch as f64;
                    let step = with_threads(threads, || measure(budget, || run.step()));
                    records.push(record(format!("{}-step", case.id()), threads, step, None, Some(batch), vec![]));
                    // The data pipeline alone (T3: with augmentation), to set against the step.
                    let fill = with_threads(threads, || measure(budget, || run.fill()));
                    records.push(record(format!("{}-fill", case.id()), threads, fill, None, Some(batch), vec![]));
                    eprintln!("{} threads={threads} done", case.id());
                }
            }
            println!("{}", serde_json::to_string_pretty(&records).expect("serialisable"));
        }
        _ => {
            eprintln!("usage: {USAGE}");
            std::process::exit(2);
        }
    }
}
