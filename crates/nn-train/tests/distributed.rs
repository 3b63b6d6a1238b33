//! Data-parallel training on MPI (feature `mpi`). `cargo test -p nn-train --features
//! mpi --test distributed` runs this file's `main`, which starts itself under
//! `mpirun` with 2 and with 3 processes (needs OpenMPI's `mpirun` on the PATH):
//!
//! - equivalence: 100 updates of T1 and T2 on the shipped subset, in f32 and f64,
//!   batch 64 (64 over 3 processes: 22, 21, 21), mean reduction, against the same
//!   training in one process: every parameter tensor within 1e-5 (f32) or 1e-12 (f64)
//!   of the single-process one, relative to its largest entry. T2 in f32 may exceed
//!   that: its max-pooling turns the ulp that reassociated sums move into different
//!   choices (the difference jumps between updates 50 and 100); it must then stay
//!   within twice what one process's run gives from weights one ulp apart. Every
//!   process holds the same bits; the same run twice gives the same bits; T1 with
//!   dropout (f64) too: each process draws its share's part of one process's masks;
//!   and a network with batch normalisation whose statistics are shared across the
//!   processes (f64, within 1e-12, running estimates included); shared statistics
//!   refuse a minibatch with fewer patterns than processes;
//! - the error threshold, computed over all processes' patterns, stops every process
//!   at the update where one process stops;
//! - batch normalisation's running statistics, gathered per process, are the same on
//!   every process after an epoch;
//! - an evaluation split across the processes gives every process one process's
//!   counts and confusion matrix, and its loss sum to rounding (also with fewer
//!   samples than processes);
//! - a checkpoint written by 2 processes resumes on 3 and continues as one process
//!   resumed from it does (f64, within 1e-12);
//! - a fault: one process given a missing data directory ends the whole job, non-zero
//!   and within seconds, naming the process and the cause.

use nn_core::prelude::*;
use nn_train::data::{fashion_mnist, ClassificationSet, Dataset};
use nn_train::distributed::{network_checksum, Collective, MpiWorld, SingleProcess};
use nn_train::optim::Sgd;
use nn_train::{evaluate, evaluate_on, NoProgress, StopReason, TrainConfig, Trainer};
use std::env;
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: u64 = 100;

fn main() {
    let under_mpi = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"].iter().any(|v| env::var_os(v).is_some());
    if under_mpi {
        worker();
    } else {
        launch();
    }
}

/// This test binary under `mpirun` with `processes` processes, one worker thread each.
fn mpirun(processes: usize, mode: &str) -> Command {
    let mut command = Command::new("mpirun");
    command.args(["--allow-run-as-root", "--oversubscribe", "-np", &processes.to_string()]);
    command.arg(env::current_exe().expect("the test binary's path")).arg(mode);
    command.env("RAYON_NUM_THREADS", "1");
    command
}

fn launch() {
    for processes in [2, 3] {
        let started = Instant::now();
        let status = mpirun(processes, "equivalence").status().expect("mpirun runs (apt-get install openmpi-bin)");
        assert!(status.success(), "equivalence on {processes} processes: {status}");
        println!("equivalence on {processes} processes: ok ({:.1} s)", started.elapsed().as_secs_f64());
    }

    let dir = env::temp_dir().join(format!("nn-distributed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    for (processes, mode) in [(2, "checkpoint-write"), (3, "checkpoint-resume")] {
        let status = mpirun(processes, mode).arg(&dir).status().expect("mpirun runs");
        assert!(status.success(), "{mode} on {processes} processes: {status}");
    }
    std::fs::remove_dir_all(&dir).ok();
    println!("a checkpoint of 2 processes resumed on 3: ok");

    let started = Instant::now();
    let mut child = mpirun(2, "fault").stderr(Stdio::piped()).spawn().expect("mpirun runs");
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for mpirun") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().ok();
            panic!("a failing process did not end the job within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child.stderr.take().expect("piped").read_to_string(&mut stderr).ok();
    assert!(!status.success(), "the job with a failing process exited with {status}");
    assert!(
        stderr.contains("error on process 1 of 2") && stderr.contains("no-such-dir"),
        "the job's message names neither the process nor the cause:\n{stderr}"
    );
    println!("fault: the job ended in {:.1} s, {status}", started.elapsed().as_secs_f64());
}

fn worker() {
    let world = MpiWorld::init().expect("MPI initialises once");
    let mode = env::args().nth(1).unwrap_or_default();
    // A failed check on one process would leave the others waiting: end the job.
    let outcome = catch_unwind(AssertUnwindSafe(|| match mode.as_str() {
        "equivalence" => equivalence(&world),
        "checkpoint-write" => checkpoint_write(&world, &checkpoint_dir()),
        "checkpoint-resume" => checkpoint_resume(&world, &checkpoint_dir()),
        "fault" => fault(&world),
        other => panic!("unknown mode {other:?}"),
    }));
    if let Err(panic) = outcome {
        let message = panic.downcast_ref::<String>().cloned().or(panic.downcast_ref::<&str>().map(|s| s.to_string()));
        world.abort(&message.unwrap_or_default());
    }
}

/// T1 (`models::mlp`).
fn t1<T: Element>(seed: u64) -> Sequential<T> {
    nn_train::models::mlp(seed).unwrap()
}

/// T1 with dropout (p = 0.3) after each hidden layer.
fn t1_dropout<T: Element>(seed: u64) -> Sequential<T> {
    let builder = Sequential::builder(&[784], seed).dense(256).relu().dropout(0.3);
    builder.dense(128).relu().dropout(0.3).dense(10).build().unwrap()
}

/// A small network with batch normalisation, for `[1, 28, 28]` images. Its convolution
/// has no bias: batch normalisation cancels it, so its gradient would be rounding
/// noise, and two runs' noise are not comparable.
fn small_bn<T: Element>(seed: u64) -> Sequential<T> {
    Sequential::builder(&[1, 28, 28], seed)
        .conv(ConvSpec::new(4, &[3, 3]).stride(&[2, 2]).rounding(OutputRounding::Floor).bias(false))
        .batch_norm()
        .relu()
        .global_avg_pool()
        .flatten()
        .dense(10)
        .build()
        .unwrap()
}

/// T2 (`models::cnn`).
fn t2<T: Element>(seed: u64) -> Sequential<T> {
    nn_train::models::cnn(seed).unwrap()
}

fn recipe() -> TrainConfig {
    TrainConfig { batch_size: 64, seed: 5, reduction: Reduction::Mean, ..TrainConfig::default() }
}

/// Trains `net` with SGD (momentum 0.9; η: T1's 0.05 for a flat input, T2's 0.01 for
/// images), on all processes of `collective`.
fn train<T: Element>(
    net: &mut Sequential<T>,
    data: &ClassificationSet,
    config: TrainConfig,
    collective: &dyn Collective,
) -> nn_train::TrainReport {
    let lr = if net.input_shape().len() == 1 { 0.05 } else { 0.01 };
    let mut sgd = Sgd::new(lr).momentum(0.9);
    let mut trainer = Trainer::new(config);
    trainer.fit_on(net, &mut sgd, &SoftmaxCrossEntropy, data, None, &mut NoProgress, collective).unwrap()
}

/// The largest, over parameter and buffer tensors, of max |a − b| / max |b|.
fn relative_difference<T: Element>(a: &Sequential<T>, b: &Sequential<T>) -> f64 {
    let tensors = |net: &Sequential<T>| -> Vec<Vec<f64>> {
        let params = net.params().into_iter().map(|p| &p.value);
        let buffers = net.named_buffers().into_iter().map(|(_, b)| b);
        params.chain(buffers).map(|t| t.data().iter().map(|v| v.as_f64()).collect()).collect()
    };
    let mut worst = 0.0f64;
    for (a, b) in tensors(a).iter().zip(tensors(b)) {
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
        let diff = a.iter().zip(&b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        worst = worst.max(diff / scale);
    }
    worst
}

/// The next representable value above (`next_up`), in the element's own precision.
trait NextUp {
    fn next_up_ulp(self) -> Self;
}

impl<T: Element> NextUp for T {
    fn next_up_ulp(self) -> Self {
        match T::as_f32(std::slice::from_ref(&self)) {
            Some(&[v]) => T::from_f64(f64::from(v.next_up())),
            _ => T::from_f64(self.as_f64().next_up()),
        }
    }
}

fn same_on_all(world: &MpiWorld, value: u64, what: &str) {
    let (low, high) = world.min_max(value);
    assert_eq!(low, high, "{what} differs across processes");
}

/// `config` (which must stop after `STEPS` updates) on these processes against one.
fn matches_one_process<T: Element>(
    world: &MpiWorld,
    name: &str,
    data: &ClassificationSet,
    build: fn(u64) -> Sequential<T>,
    bound: f64,
    config: TrainConfig,
) {
    let mut net = build(7);
    let report = train(&mut net, data, config.clone(), world);
    assert_eq!(report.iteration, STEPS, "{name}");
    same_on_all(world, network_checksum(&net), &format!("{name}: the weights"));
    if world.rank() == 0 {
        let mut alone = build(7);
        train(&mut alone, data, config.clone(), &SingleProcess);
        let difference = relative_difference(&net, &alone);
        println!("{name} on {} processes, {} updates: {difference:.2e} from one process", world.size(), STEPS);
        if difference > bound {
            // Reassociating the gradient sums perturbs the weights by an ulp or so; a
            // network whose max-pooling picks among near-equal cells can turn that into
            // a different choice, and a larger difference. Compare with the same
            // training in one process from weights one ulp apart.
            let mut nudged = build(7);
            for param in nudged.params_mut() {
                param.value.data_mut().iter_mut().for_each(|v| *v = v.next_up_ulp());
            }
            train(&mut nudged, data, config, &SingleProcess);
            let sensitivity = relative_difference(&nudged, &alone);
            println!("  one process from weights one ulp apart: {sensitivity:.2e}");
            assert!(
                difference <= 2.0 * sensitivity,
                "{name}: {difference:e} from one process's weights (bound {bound:e}; one ulp of start gives {sensitivity:e})"
            );
        }
    }
    world.barrier();
}

fn equivalence(world: &MpiWorld) {
    let (images, _) = fashion_mnist::load(&fashion_mnist::embedded_subset_dir()).unwrap();
    let flat = images.clone().with_sample_shape(&[784]).unwrap();
    assert!(Dataset::<f32>::len(&images) >= STEPS as usize, "the subset holds a few epochs of batches");

    let steps = TrainConfig { max_iterations: Some(STEPS), ..recipe() };
    matches_one_process::<f32>(world, "T1 f32", &flat, t1, 1e-5, steps.clone());
    matches_one_process::<f64>(world, "T1 f64", &flat, t1, 1e-12, steps.clone());
    matches_one_process::<f64>(world, "T2 f64", &images, t2, 1e-12, steps.clone());
    matches_one_process::<f32>(world, "T2 f32", &images, t2, 1e-5, steps.clone());
    // Each process draws its share's part of the masks one process draws for the
    // whole batch; the epoch ends between (the generators' states must agree).
    matches_one_process::<f64>(world, "T1 + dropout f64", &flat, t1_dropout, 1e-12, steps.clone());
    // Synchronised batch statistics: the whole minibatch's, as on one process.
    let shared = TrainConfig { sync_batch_statistics: true, ..steps.clone() };
    matches_one_process::<f64>(world, "BN, shared statistics, f64", &images, small_bn, 1e-12, shared);
    let tiny = images.clone().split_off(65);
    let refused = Trainer::new(TrainConfig { max_epochs: Some(1), sync_batch_statistics: true, ..recipe() })
        .fit_on(&mut small_bn::<f64>(1), &mut Sgd::new(0.01), &SoftmaxCrossEntropy, &tiny, None, &mut NoProgress, world)
        .unwrap_err();
    assert!(refused.to_string().contains("leave one of 1"), "{refused}");

    // The same processes and seed: the same bits, twice.
    let (mut first, mut second) = (t1::<f32>(3), t1::<f32>(3));
    train(&mut first, &flat, steps.clone(), world);
    train(&mut second, &flat, steps, world);
    assert_eq!(network_checksum(&first), network_checksum(&second), "two runs differ");

    // The error threshold is decided on E over every process's patterns: set it
    // between the first and second epochs' E of one process, and every process stops
    // after the second epoch, as one process does.
    let epochs = TrainConfig { max_epochs: Some(3), ..recipe() };
    let mut threshold = [0.0];
    if world.rank() == 0 {
        let report = train(&mut t1::<f64>(9), &flat, epochs.clone(), &SingleProcess);
        let errors: Vec<f64> = report.history.iter().map(|e| e.error_sum).collect();
        threshold[0] = 0.5 * (errors[0] + errors[1]);
    }
    world.sum_f64(&mut threshold);
    let stopping = TrainConfig { error_threshold: Some(threshold[0]), ..epochs };
    let report = train(&mut t1::<f64>(9), &flat, stopping, world);
    assert!(matches!(report.reason, StopReason::ErrorThreshold { .. }), "{:?}", report.reason);
    let per_epoch = Dataset::<f64>::len(&flat).div_ceil(64) as u64;
    assert_eq!(report.iteration, 2 * per_epoch, "stopped at update {}", report.iteration);
    same_on_all(world, report.iteration, "the stopping update");

    // Batch normalisation: each process's running statistics come from its own shares;
    // after an epoch they are the processes' mean, the same bits everywhere.
    let mut bn = small_bn::<f32>(4);
    let before: Vec<Vec<f32>> = bn.named_buffers().iter().map(|(_, b)| b.data().to_vec()).collect();
    train(&mut bn, &images, TrainConfig { max_epochs: Some(1), ..recipe() }, world);
    let after: Vec<Vec<f32>> = bn.named_buffers().iter().map(|(_, b)| b.data().to_vec()).collect();
    assert!(!after.is_empty() && before != after, "the running statistics moved");
    same_on_all(world, network_checksum(&bn), "the weights and running statistics");

    evaluation(world, &images, t2::<f64>(13));
}

/// An evaluation split across processes against one process's, on a briefly trained
/// T2 (f64): 250 samples in batches of 32, and 2 samples (fewer than 3 processes).
fn evaluation(world: &MpiWorld, images: &ClassificationSet, mut net: Sequential<f64>) {
    train(&mut net, images, TrainConfig { max_iterations: Some(20), ..recipe() }, world);
    let (few, some) = (images.clone().split_off(2), images.clone().split_off(250));
    for (data, what) in [(&some, "250 samples"), (&few, "2 samples")] {
        let split = evaluate_on(&mut net, &SoftmaxCrossEntropy, data, 32, world).unwrap();
        let alone = evaluate(&mut net, &SoftmaxCrossEntropy, data, 32).unwrap();
        assert_eq!(split.samples, alone.samples, "{what}");
        assert_eq!(split.confusion, alone.confusion, "{what}");
        let difference = (split.error_sum - alone.error_sum).abs() / alone.error_sum;
        assert!(difference <= 1e-12, "{what}: loss sums {} and {} differ", split.error_sum, alone.error_sum);
        same_on_all(world, split.error_sum.to_bits(), &format!("{what}: the loss sum"));
    }
    assert!(net.is_training(), "the network's mode is restored");
    if world.rank() == 0 {
        println!("an evaluation split over {} processes: the counts of one process", world.size());
    }
}

fn checkpoint_dir() -> std::path::PathBuf {
    env::args().nth(2).expect("the checkpoint directory").into()
}

/// T1 in f64 on the flat subset.
fn flat_subset() -> ClassificationSet {
    let (images, _) = fashion_mnist::load(&fashion_mnist::embedded_subset_dir()).unwrap();
    images.with_sample_shape(&[784]).unwrap()
}

/// 70 updates, a checkpoint every 30: the file holds update 60, mid-epoch.
fn checkpoint_write(world: &MpiWorld, dir: &std::path::Path) {
    let config = TrainConfig {
        max_iterations: Some(70),
        checkpoint: Some(dir.join("run.safetensors")),
        checkpoint_every: Some(30),
        ..recipe()
    };
    train(&mut t1::<f64>(11), &flat_subset(), config, world);
}

/// From update 60 to 100 on these processes, and on one process alone.
fn checkpoint_resume(world: &MpiWorld, dir: &std::path::Path) {
    let (data, path) = (flat_subset(), dir.join("run.safetensors"));
    let config = TrainConfig { max_iterations: Some(STEPS), ..recipe() };
    let resume = |net: &mut Sequential<f64>, collective: &dyn Collective| {
        let mut sgd = Sgd::new(0.05).momentum(0.9);
        let mut trainer = Trainer::resume(config.clone(), &path, net, &mut sgd).unwrap();
        assert_eq!(trainer.state().iteration, 60, "the checkpoint's update");
        trainer.fit_on(net, &mut sgd, &SoftmaxCrossEntropy, &data, None, &mut NoProgress, collective).unwrap()
    };
    let mut net = t1::<f64>(0);
    let report = resume(&mut net, world);
    assert_eq!(report.iteration, STEPS);
    same_on_all(world, network_checksum(&net), "the resumed weights");
    if world.rank() == 0 {
        let mut alone = t1::<f64>(0);
        resume(&mut alone, &SingleProcess);
        let difference = relative_difference(&net, &alone);
        println!("resumed on {} processes, updates 60 to {STEPS}: {difference:.2e} from one process", world.size());
        assert!(difference <= 1e-12, "{difference:e} from one process resumed from the same checkpoint");
    }
    world.barrier();
}

fn fault(world: &MpiWorld) {
    let dir = if world.rank() == 1 {
        std::path::PathBuf::from("/no-such-dir/fashion-mnist")
    } else {
        fashion_mnist::embedded_subset_dir()
    };
    let (images, _) = match fashion_mnist::load(&dir) {
        Ok(sets) => sets,
        Err(error) => world.abort(&format!("loading {}: {error}", dir.display())),
    };
    // The other process waits here, in the training's first sum, until the abort.
    train(&mut t1::<f32>(1), &images.with_sample_shape(&[784]).unwrap(), recipe(), world);
}
