//! Helpers shared by the integration tests (included with `mod common;`).
#![allow(dead_code)]

use nn_core::prelude::*;
use nn_train::data::{fashion_mnist, ClassificationSet, TensorSet};

pub fn xor() -> TensorSet<f64> {
    let inputs = Tensor::from_vec(&[4, 2], vec![0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]).unwrap();
    let targets = Tensor::from_vec(&[4, 1], vec![0.0, 1.0, 1.0, 0.0]).unwrap();
    TensorSet::new(inputs, targets).unwrap()
}

pub fn xor_net(seed: u64) -> Sequential<f64> {
    Sequential::builder(&[2], seed)
        .dense_with(4, true, Init::GlorotUniform)
        .tanh()
        .dense_with(1, true, Init::GlorotUniform)
        .sigmoid()
        .build()
        .unwrap()
}

/// The shipped Fashion-MNIST subset (6,000 training, 1,000 test images).
pub fn subset() -> (ClassificationSet, ClassificationSet) {
    fashion_mnist::load(&fashion_mnist::embedded_subset_dir()).unwrap()
}

pub fn small_cnn(seed: u64) -> Sequential<f32> {
    Sequential::builder(&[1, 28, 28], seed)
        .conv(ConvSpec::new(4, &[5, 5]).padding(&[2, 2]))
        .relu()
        .max_pool(&[2, 2])
        .conv(ConvSpec::new(6, &[3, 3]).stride(&[2, 2]).rounding(OutputRounding::Floor))
        .relu()
        .flatten()
        .dense(10)
        .build()
        .unwrap()
}

pub fn weights<T: Element>(net: &Sequential<T>) -> Vec<Vec<T>> {
    net.params().iter().map(|p| p.value.data().to_vec()).collect()
}
