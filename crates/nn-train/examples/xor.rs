//! XOR by the source's algorithm, word for word: dense layers with sigmoid, the squared
//! error L = ½Σ(x−t)², plain SGD with the gradients summed over the four patterns
//! (Δw = −η Σ_p ∂w), stopping when E = Σ_p L falls to a threshold or at an iteration cap.
//!
//! Run: `cargo run --release --example xor`

use nn_core::prelude::*;
use nn_train::data::TensorSet;
use nn_train::optim::Sgd;
use nn_train::{BatchProgress, Observer, TrainConfig, Trainer};

/// Prints E every so often as it falls.
struct PrintError {
    every: u64,
}

impl Observer for PrintError {
    fn batch_end(&mut self, p: &BatchProgress) {
        if p.iteration == 1 || p.iteration.is_multiple_of(self.every) {
            // One batch is the whole set, so the epoch's loss sum is E.
            println!("iteration {:>6}  E = {:.6}", p.iteration, p.mean_loss * 4.0);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Step 1: the P = 4 training pairs and the learning rate η.
    let inputs = Tensor::from_vec(&[4, 2], vec![0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])?;
    let targets = Tensor::from_vec(&[4, 1], vec![0.0, 1.0, 1.0, 0.0])?;
    let data = TensorSet::new(inputs.clone(), targets)?;
    let eta = 0.5;

    let mut net = Sequential::<f64>::builder(&[2], 7)
        .dense_with(4, true, Init::GlorotUniform)
        .sigmoid()
        .dense_with(1, true, Init::GlorotUniform)
        .sigmoid()
        .build()?;

    let config = TrainConfig {
        batch_size: 4,
        shuffle: false,
        reduction: Reduction::Sum,
        error_threshold: Some(0.005),
        max_iterations: Some(100_000),
        ..TrainConfig::default()
    };
    let report = Trainer::new(config).fit(
        &mut net,
        &mut Sgd::new(eta),
        &MeanSquaredError,
        &data,
        None,
        &mut PrintError { every: 250 },
    )?;

    println!("stopped: {:?} after {} iterations", report.reason, report.iteration);
    let outputs = net.forward(&inputs)?;
    for (x, y) in inputs.data().chunks(2).zip(outputs.data()) {
        println!("  {:?} -> {y:.4}", x);
    }
    Ok(())
}
