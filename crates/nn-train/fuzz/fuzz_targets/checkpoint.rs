//! Any bytes as a checkpoint: an error that leaves network and optimizer as they were,
//! or a load whose values are all finite; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nn_core::prelude::*;
use nn_train::checkpoint::load_checkpoint;
use nn_train::optim::{Optimizer, Sgd};

fn net() -> Sequential<f32> {
    Sequential::builder(&[1, 4, 4], 1)
        .conv(ConvSpec::new(2, &[3, 3]).padding(&[1, 1]))
        .relu()
        .flatten()
        .dense(3)
        .build()
        .expect("a valid network")
}

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("nn-train-fuzz-{}.safetensors", std::process::id()));
    std::fs::write(&path, data).expect("a writable temporary directory");
    let mut network = net();
    let mut sgd = Sgd::<f32>::new(0.1).momentum(0.9);
    let before: Vec<Vec<f32>> = network.params().iter().map(|p| p.value.data().to_vec()).collect();
    match load_checkpoint(&path, &mut network, &mut sgd) {
        Ok(_) => assert!(network.params().iter().all(|p| p.value.data().iter().all(|v| v.is_finite()))),
        Err(_) => {
            let after: Vec<Vec<f32>> = network.params().iter().map(|p| p.value.data().to_vec()).collect();
            assert_eq!(before, after, "a refused checkpoint changes nothing");
            assert_eq!(Optimizer::<f32>::learning_rate(&sgd), 0.1);
        }
    }
});
