//! Real learning on the shipped Fashion-MNIST subset, and bit-for-bit reproducibility.

mod common;

use common::{small_cnn, subset, weights};
use nn_core::prelude::*;
use nn_train::data::{ClassificationSet, Dataset};
use nn_train::optim::Sgd;
use nn_train::{evaluate, NoProgress, TrainConfig, Trainer};

#[test]
fn mlp_learns_fashion_mnist_subset_in_one_epoch() {
    let (train, test) = subset();
    let (train, test) = (train.with_sample_shape(&[784]).unwrap(), test.with_sample_shape(&[784]).unwrap());
    assert_eq!((Dataset::<f32>::len(&train), Dataset::<f32>::len(&test)), (6000, 1000));
    let mut net = Sequential::<f32>::builder(&[784], 42).dense(256).relu().dense(128).relu().dense(10).build().unwrap();
    let config = TrainConfig {
        batch_size: 64,
        seed: 42,
        reduction: Reduction::Mean,
        max_epochs: Some(1),
        ..TrainConfig::default()
    };
    Trainer::new(config)
        .fit(&mut net, &mut Sgd::new(0.05).momentum(0.9), &SoftmaxCrossEntropy, &train, None, &mut NoProgress)
        .unwrap();
    let eval = evaluate(&mut net, &SoftmaxCrossEntropy, &test, 250).unwrap();
    let accuracy = eval.accuracy.unwrap();
    assert!(accuracy > 0.70, "test accuracy {accuracy}");
    let confusion = eval.confusion.unwrap();
    assert_eq!(confusion.counts.iter().flatten().sum::<u64>(), 1000);
    assert_eq!(confusion.accuracy(), accuracy);
}

fn train_cnn(train: &ClassificationSet, threads: usize) -> Vec<Vec<f32>> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let mut net = small_cnn(3);
        let config = TrainConfig {
            batch_size: 32,
            seed: 9,
            reduction: Reduction::Mean,
            max_iterations: Some(12),
            ..TrainConfig::default()
        };
        Trainer::new(config)
            .fit(&mut net, &mut Sgd::new(0.02).momentum(0.9), &SoftmaxCrossEntropy, train, None, &mut NoProgress)
            .unwrap();
        weights(&net)
    })
}

#[test]
fn same_seed_same_weights_bit_for_bit_on_any_thread_count() {
    let (mut train, _) = subset();
    train.truncate(512);
    let one = train_cnn(&train, 1);
    assert_eq!(one, train_cnn(&train, 1));
    assert_eq!(one, train_cnn(&train, 2));
    assert_eq!(one, train_cnn(&train, 3));
    // And the weights did move.
    assert_ne!(one, weights(&small_cnn(3)));
}
