//! Trains on Fashion-MNIST with the recipes T1 (`--model mlp`), T2 (`--model cnn`)
//! and T3 (`--model resnet`) of shared/BENCHMARKS.md: softmax cross-entropy averaged
//! over the batch, SGD with momentum 0.9, shuffled every epoch; T3 adds batch
//! normalisation, Nesterov momentum, weight decay on weights, a cosine schedule per
//! update, normalised inputs and crop-and-flip augmentation.
//!
//! Run: `cargo run --release --example fashion_mnist -- --help`
//!
//! On several processes (data-parallel, MPI): `cargo build --release -p nn-train
//! --features mpi --examples`, then `mpirun -np 2 target/release/examples/fashion_mnist
//! --distributed`.

#[path = "../common/mod.rs"]
mod common;

use clap::{Parser, ValueEnum};
use nn_core::prelude::*;
use nn_train::checkpoint::save_weights;
use nn_train::data::fashion_mnist::{self, CLASS_NAMES};
use nn_train::data::{Augmentation, ClassificationSet, Normalization};
use nn_train::distributed::{Collective, SingleProcess};
use nn_train::optim::Sgd;
use nn_train::optim::{LrSchedule, Optimizer};
use nn_train::report::{plot_history, write_history_csv};
use nn_train::{evaluate_on, ProgressBars, TrainConfig, Trainer};
use std::cell::Cell;
use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Model {
    /// T1: dense 784→256, ReLU, dense 256→128, ReLU, dense 128→10.
    Mlp,
    /// T2: conv 1→32 5×5 pad 2, ReLU, max-pool 2×2, conv 32→64 5×5 pad 2, ReLU,
    /// max-pool 2×2, flatten, dense 3136→128, ReLU, dense 128→10.
    Cnn,
    /// T3: a ResNet-20-style network (three stages of three residual blocks, batch
    /// normalisation), augmented inputs, 10 epochs.
    Resnet,
}

/// What BENCHMARKS.md fixes for a model besides the network.
struct Recipe {
    epochs: usize,
    lr: f64,
    batch: usize,
}

impl Model {
    fn recipe(self) -> Recipe {
        match self {
            Model::Mlp => Recipe { epochs: 5, lr: 0.05, batch: 64 },
            Model::Cnn => Recipe { epochs: 3, lr: 0.01, batch: 64 },
            Model::Resnet => Recipe { epochs: 10, lr: 0.1, batch: 128 },
        }
    }
}

/// Train a network on Fashion-MNIST and report test accuracy.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Trains a network on Fashion-MNIST (T1: --model mlp, T2: --model cnn, T3: --model \
             resnet) and reports test accuracy; writes weights, history and a chart."
)]
struct Args {
    /// Directory of the IDX files (default: $FASHION_MNIST_DIR, then
    /// /usr/share/datasets/fashion-mnist, then the subset shipped with nn-train).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The network.
    #[arg(long, value_enum, default_value = "cnn")]
    model: Model,
    /// Epochs (default: 5 for mlp, 3 for cnn, 10 for resnet).
    #[arg(long, allow_negative_numbers = true)]
    epochs: Option<usize>,
    /// Minibatch size (default: 64, 128 for resnet).
    #[arg(long, allow_negative_numbers = true)]
    batch: Option<usize>,
    /// Learning rate η (default: 0.05 for mlp, 0.01 for cnn, 0.1 for resnet).
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Worker threads (default, or 0: one per core).
    #[arg(long, allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Seed of the initial weights and of the shuffles.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where to write weights, history and plot (default: runs/<UTC timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Train data-parallel on every process of the MPI job this runs in (start it with
    /// mpirun; needs a build with the `mpi` feature). Each process takes its share of
    /// every minibatch; process 0 prints and writes the files.
    #[arg(long)]
    distributed: bool,
    /// Compute T2's second convolution, or T3's 3×3 stride-1 convolutions (all but the
    /// stem), by Winograd minimal filtering: fewer multiplications, results that
    /// differ from the exact sums by the transforms' rounding.
    #[arg(long)]
    winograd: bool,
    /// With --distributed: batch normalisation's training statistics over the whole
    /// minibatch, every process's share (synchronised), instead of each share's.
    #[arg(long)]
    sync_bn: bool,
}

/// A [`Collective`] that adds up the time its sums take (waiting for the slowest
/// process included), for the report.
struct TimedSums<'a> {
    inner: &'a dyn Collective,
    spent: Cell<Duration>,
}

impl<'a> TimedSums<'a> {
    fn new(inner: &'a dyn Collective) -> Self {
        Self { inner, spent: Cell::new(Duration::ZERO) }
    }

    fn timed<R>(&self, f: impl FnOnce() -> R) -> R {
        let started = Instant::now();
        let result = f();
        self.spent.set(self.spent.get() + started.elapsed());
        result
    }
}

impl Collective for TimedSums<'_> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn sum_f32(&self, values: &mut [f32]) {
        self.timed(|| self.inner.sum_f32(values));
    }
    fn sum_f64(&self, values: &mut [f64]) {
        self.timed(|| self.inner.sum_f64(values));
    }
    fn min_max(&self, value: u64) -> (u64, u64) {
        self.timed(|| self.inner.min_max(value))
    }
}

fn build(model: Model, seed: u64, winograd: bool) -> Result<Box<dyn Network<f32>>, NnError> {
    let algorithm = if winograd { ConvAlgorithm::Winograd } else { ConvAlgorithm::Exact };
    Ok(match model {
        Model::Mlp => Box::new(nn_train::models::mlp::<f32>(seed)?),
        Model::Cnn => Box::new(nn_train::models::cnn_with::<f32>(seed, algorithm)?),
        Model::Resnet => Box::new(nn_train::models::resnet20_with::<f32>(seed, algorithm)?),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.distributed {
        return common::exit_code(run(args, &SingleProcess));
    }
    #[cfg(feature = "mpi")]
    {
        let Some(world) = nn_train::distributed::MpiWorld::init() else {
            return common::exit_code(Err("MPI was initialised before".into()));
        };
        // An error on one process ends the whole job, naming the process; the others
        // would otherwise wait for it forever.
        if let Err(error) = run(args, &world) {
            world.abort(&common::error_chain(&*error, ": "));
        }
        ExitCode::SUCCESS
    }
    #[cfg(not(feature = "mpi"))]
    common::exit_code(Err("--distributed: this build has no MPI; build it with \
                           `cargo build --release -p nn-train --features mpi --examples`"
        .into()))
}

fn run(args: Args, processes: &dyn Collective) -> Result<(), Box<dyn Error>> {
    let (rank, size) = (processes.rank(), processes.size());
    let lead = rank == 0;
    // The main thread is one of the pool's workers: the trainer's steps then start
    // their parallel loops in place instead of handing each step to the pool. Several
    // processes on one machine share its cores.
    let local = std::env::var("OMPI_COMM_WORLD_LOCAL_SIZE").ok().and_then(|v| v.parse::<usize>().ok());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.filter(|&t| t > 0).unwrap_or_else(|| match local {
        Some(local) if args.distributed => (cores / local.max(1)).max(1),
        _ => 0,
    });
    rayon::ThreadPoolBuilder::new().num_threads(threads).use_current_thread().build_global()?;
    let recipe = args.model.recipe();
    let (epochs, lr, batch) =
        (args.epochs.unwrap_or(recipe.epochs), args.lr.unwrap_or(recipe.lr), args.batch.unwrap_or(recipe.batch));
    let resnet = args.model == Model::Resnet;
    let config = TrainConfig {
        batch_size: batch,
        seed: args.seed,
        reduction: Reduction::Mean,
        max_epochs: Some(epochs),
        // Evaluating in training-sized batches keeps the activation buffers at their
        // training size (peak memory).
        eval_batch_size: batch,
        sync_batch_statistics: args.sync_bn,
        schedule: if resnet { LrSchedule::CosineUpdates { warmup: 0, min_lr: 0.0 } } else { LrSchedule::Constant },
        ..TrainConfig::default()
    };
    let mut optimizer = Sgd::new(lr).momentum(0.9);
    if resnet {
        optimizer = optimizer.nesterov(true).weight_decay(5e-4).decay_weights_only(true);
    }
    // Bad settings and an unwritable output are refused before the data loads and
    // the training runs, not after.
    config.validate()?;
    Optimizer::<f32>::validate(&optimizer)?;
    if !(lr.is_finite() && lr > 0.0) {
        return Err(format!("--lr {lr}: the learning rate must be finite and above 0").into());
    }
    if epochs == 0 {
        return Err("--epochs 0: nothing to train".into());
    }
    let out = args.out.unwrap_or_else(common::timestamped_run_dir);
    if lead {
        common::prepare_output(&out)?;
    }

    let source = fashion_mnist::locate(args.data.as_deref());
    let (mut train, mut test): (ClassificationSet, ClassificationSet) = fashion_mnist::load(&source.dir)?;
    match args.model {
        Model::Mlp => {
            train = train.with_sample_shape(&[784])?;
            test = test.with_sample_shape(&[784])?;
        }
        Model::Resnet => {
            let normalization = Normalization { mean: vec![0.2860], std: vec![0.3530] };
            let augmentation = Augmentation { crop_padding: 2, horizontal_flip: true, seed: args.seed + 1 };
            train = train.with_normalization(normalization.clone())?.with_augmentation(augmentation)?;
            test = test.with_normalization(normalization)?;
        }
        Model::Cnn => {}
    }
    if lead {
        println!(
            "data: {} ({}): {} training, {} test images",
            source.dir.display(),
            source.origin,
            nn_train::data::Dataset::<f32>::len(&train),
            nn_train::data::Dataset::<f32>::len(&test)
        );
    }
    let mut net = build(args.model, args.seed, args.winograd)?;
    if lead {
        let sgd = if resnet { "SGD (Nesterov, weight decay 5e-4, cosine per update)" } else { "SGD" };
        println!(
            "model: {:?}, {} parameters; {epochs} epochs, batch {batch}, {sgd} lr {lr} momentum 0.9, {} threads",
            args.model,
            net.num_params(),
            rayon::current_num_threads()
        );
    }
    if lead && args.distributed {
        let statistics = if args.sync_bn { "synchronised" } else { "per process" };
        println!(
            "distributed: {size} processes, up to {} images of every batch of {batch} each; batch statistics {statistics}",
            batch.div_ceil(size)
        );
    }
    let started = Instant::now();
    let timed = TimedSums::new(processes);
    // The trainer reports to the bars on process 0 only.
    let report = Trainer::new(config).fit_on(
        &mut *net,
        &mut optimizer,
        &SoftmaxCrossEntropy,
        &train,
        Some(&test),
        &mut ProgressBars::new(),
        &timed,
    )?;
    let wall = started.elapsed().as_secs_f64();
    let sums_spent = timed.spent.get();
    // Every process evaluates its share of the test set; all receive the same counts.
    let eval = evaluate_on(&mut *net, &SoftmaxCrossEntropy, &test, batch, processes)?;
    if !lead {
        return Ok(());
    }
    if args.distributed {
        let per_step = sums_spent.as_secs_f64() / report.iteration.max(1) as f64;
        println!("all-reduce (waiting for the slowest process included): {:.2} ms per update", 1e3 * per_step);
    }

    println!("\nstopped: {:?} after {} iterations, {wall:.1} s", report.reason, report.iteration);
    println!(
        "{:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "epoch", "loss", "train acc", "test loss", "test acc", "img/s", "seconds"
    );
    for s in &report.history {
        let v = s.validation.as_ref();
        println!(
            "{:>5} {:>10.4} {:>9.2}% {:>10.4} {:>9.2}% {:>10.0} {:>8.1}",
            s.epoch + 1,
            s.mean_loss,
            100.0 * s.accuracy.unwrap_or(0.0),
            v.map_or(f64::NAN, |v| v.mean_loss),
            100.0 * v.and_then(|v| v.accuracy).unwrap_or(0.0),
            s.images_per_sec,
            s.seconds
        );
    }
    println!("\ntest accuracy: {:.2}% ({} images)", 100.0 * eval.accuracy.unwrap_or(0.0), eval.samples);
    if let Some(confusion) = &eval.confusion {
        println!(
            "confusion matrix (rows: actual, columns: predicted label):\n{}",
            confusion.to_table(Some(&CLASS_NAMES))
        );
    }
    if let Some(peak) = common::peak_rss_mib() {
        println!("peak resident memory: {peak:.0} MiB");
    }

    save_weights(&out.join("weights.safetensors"), &*net)?;
    write_history_csv(&out.join("history.csv"), &report.history)?;
    plot_history(&out.join("training.svg"), &report.history)?;
    println!("wrote {}/{{weights.safetensors, history.csv, training.svg}}", out.display());
    Ok(())
}
