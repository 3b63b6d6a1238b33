//! Trains a U-Net to segment generated volumes: a few random ellipsoids of varied
//! brightness in noise, the label being "inside an ellipsoid". Three dimensions by
//! default; `--dims 2` and `--dims 4` train the same network on images and on
//! space-time volumes. Loss: sigmoid binary cross-entropy plus soft Dice; optimizer:
//! Adam. Prints the held-out Dice score and writes weights, history and a chart.
//!
//! Run: `cargo run --release --example unet3d -- --help`

#[path = "../common/mod.rs"]
mod common;
mod volumes;

use clap::Parser;
use nn_core::prelude::*;
use nn_train::checkpoint::save_weights;
use nn_train::data::Dataset;
use nn_train::optim::{Adam, LrSchedule, Optimizer};
use nn_train::report::{plot_history, write_history_csv};
use nn_train::{DiceCounts, ProgressBars, TrainConfig, Trainer};
use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use volumes::VolumeSpec;

/// Train a U-Net on generated volumes and report the held-out Dice score.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Trains a U-Net on generated 2-D, 3-D or 4-D segmentation data and reports the held-out Dice score; writes weights, history and a chart."
)]
struct Args {
    /// Spatial dimensions of the data: 2, 3 or 4.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=4))]
    dims: u8,
    /// Cells per side (default: 64 in 2-D, 32 in 3-D, 12 in 4-D); divisible by 4.
    #[arg(long)]
    side: Option<usize>,
    /// Training volumes.
    #[arg(long, default_value_t = 192)]
    train: usize,
    /// Held-out volumes.
    #[arg(long, default_value_t = 32)]
    held_out: usize,
    /// Epochs.
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    /// Minibatch size.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Channels of the first level (doubled at each level below).
    #[arg(long, default_value_t = 8)]
    width: usize,
    /// Stop training after this many seconds, whatever the epoch.
    #[arg(long, default_value_t = 270)]
    max_seconds: u64,
    /// Worker threads (default, or 0: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of the data, the initial weights and the shuffles.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Where to write weights, history and plot (default: runs/<UTC timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    common::exit_code(run(Args::parse()))
}

/// The hard Dice score of `net` over `data`, in evaluation mode.
fn held_out_dice(
    net: &mut Graph<f32>,
    data: &nn_train::data::TensorSet<f32>,
    batch: usize,
) -> Result<f64, Box<dyn Error>> {
    net.set_training(false);
    let (mut inputs, mut masks) = (Tensor::default(), Tensor::default());
    let mut dice = DiceCounts::default();
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(batch) {
        data.fill_batch(chunk, &mut inputs, &mut masks)?;
        dice.add(net.forward(&inputs)?, &masks)?;
    }
    net.set_training(true);
    Ok(dice.score())
}

fn run(args: Args) -> Result<(), Box<dyn Error>> {
    rayon::ThreadPoolBuilder::new().num_threads(args.threads.unwrap_or(0)).use_current_thread().build_global()?;
    let dims = usize::from(args.dims);
    let side = args.side.unwrap_or(match dims {
        2 => 64,
        3 => 32,
        _ => 12,
    });
    if side == 0 || !side.is_multiple_of(4) {
        return Err(format!("--side {side}: the U-Net's two stride-2 levels need a positive multiple of 4").into());
    }
    let config = TrainConfig {
        batch_size: args.batch,
        seed: args.seed,
        reduction: Reduction::Mean,
        max_epochs: Some(args.epochs),
        max_time: Some(Duration::from_secs(args.max_seconds)),
        eval_batch_size: args.batch,
        schedule: LrSchedule::CosineUpdates { warmup: 0, min_lr: 0.0 },
        ..TrainConfig::default()
    };
    let mut optimizer = Adam::new(args.lr);
    config.validate()?;
    Optimizer::<f32>::validate(&optimizer)?;
    let out = args.out.unwrap_or_else(common::timestamped_run_dir);
    common::prepare_output(&out)?;

    let started = Instant::now();
    let spec = VolumeSpec { dims, side, max_ellipsoids: 3, noise: 0.5 };
    let train = volumes::generate(spec, args.train, args.seed)?;
    let held_out = volumes::generate(spec, args.held_out, args.seed.wrapping_add(1_000_003))?;
    println!(
        "data: {} training and {} held-out {dims}-D volumes of side {side}, generated in {:.1} s",
        args.train,
        args.held_out,
        started.elapsed().as_secs_f64()
    );

    let mut net = nn_train::models::unet::<f32>(
        &[1].iter().copied().chain(vec![side; dims]).collect::<Vec<_>>(),
        1,
        3,
        args.width,
        args.seed,
    )?;
    println!(
        "model: U-Net, 3 levels from {} channels, {} parameters; {} epochs, batch {}, Adam lr {} (cosine), {} threads",
        args.width,
        net.num_params(),
        args.epochs,
        args.batch,
        args.lr,
        rayon::current_num_threads()
    );
    let loss = WeightedSum {
        first: (SigmoidBinaryCrossEntropy, 1.0 / (side.pow(dims as u32) as f64)),
        second: (SoftDice::default(), 1.0),
    };
    let report =
        Trainer::new(config).fit(&mut net, &mut optimizer, &loss, &train, Some(&held_out), &mut ProgressBars::new())?;
    println!(
        "\nstopped: {:?} after {} iterations, {:.1} s",
        report.reason,
        report.iteration,
        started.elapsed().as_secs_f64()
    );
    println!("{:>5} {:>10} {:>14} {:>10} {:>8}", "epoch", "loss", "held-out loss", "vol/s", "seconds");
    for s in &report.history {
        let v = s.validation.as_ref().map_or(f64::NAN, |v| v.mean_loss);
        println!("{:>5} {:>10.4} {:>14.4} {:>10.1} {:>8.1}", s.epoch + 1, s.mean_loss, v, s.images_per_sec, s.seconds);
    }
    let dice = held_out_dice(&mut net, &held_out, args.batch)?;
    println!("\nheld-out Dice {dice:.3} ({} volumes), {:.1} s in all", args.held_out, started.elapsed().as_secs_f64());
    if let Some(peak) = common::peak_rss_mib() {
        println!("peak resident memory: {peak:.0} MiB");
    }
    save_weights(&out.join("weights.safetensors"), &net)?;
    write_history_csv(&out.join("history.csv"), &report.history)?;
    plot_history(&out.join("training.svg"), &report.history)?;
    println!("wrote {}/{{weights.safetensors, history.csv, training.svg}}", out.display());
    Ok(())
}
