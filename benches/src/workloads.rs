//! The workloads themselves: shapes, buffers filled with deterministic data, and one
//! call that runs each.

use nn_core::prelude::*;
use nn_kernels::conv::{
    conv_backward, conv_backward_bias, conv_backward_input, conv_backward_weight, conv_forward,
    conv_transpose_backward, conv_transpose_backward_bias, conv_transpose_forward, ConvAlgorithm, ConvGeometry,
    ConvProblem,
};
use nn_kernels::gemm::{gemm, Transpose};
use nn_train::data::{Augmentation, ClassificationSet, Dataset, Normalization};
use nn_train::optim::Sgd;

/// Deterministic pseudo-random values in [−1, 1).
pub fn filled(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A matrix product C = A·B, A M×K and B K×N.
#[derive(Debug, Clone, Copy)]
pub struct GemmCase {
    /// Workload id.
    pub id: &'static str,
    /// Rows of A and C.
    pub m: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// Columns of B and C.
    pub n: usize,
}

/// G1–G6.
pub const GEMMS: [GemmCase; 6] = [
    GemmCase { id: "G1", m: 64, k: 64, n: 64 },
    GemmCase { id: "G2", m: 256, k: 256, n: 256 },
    GemmCase { id: "G3", m: 1024, k: 1024, n: 1024 },
    GemmCase { id: "G4", m: 2048, k: 2048, n: 2048 },
    GemmCase { id: "G5", m: 64, k: 784, n: 256 },
    GemmCase { id: "G6", m: 784, k: 64, n: 256 },
];

impl GemmCase {
    /// 2·M·N·K.
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64
    }
}

/// Buffers for one GEMM workload.
pub struct GemmRun {
    case: GemmCase,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl GemmRun {
    /// Fills A and B.
    pub fn new(case: GemmCase) -> Self {
        Self { case, a: filled(case.m * case.k, 1), b: filled(case.k * case.n, 2), c: vec![0.0; case.m * case.n] }
    }

    /// Our GEMM (threads from the current rayon pool).
    pub fn ours(&mut self) {
        let GemmCase { m, k, n, .. } = self.case;
        gemm(Transpose::No, Transpose::No, m, n, k, 1.0, &self.a, &self.b, 0.0, &mut self.c).expect("valid shapes");
    }

    /// Plain `matrixmultiply::sgemm`, one call (its own threading is off).
    pub fn matrixmultiply(&mut self) {
        let GemmCase { m, k, n, .. } = self.case;
        // SAFETY: the buffers have exactly m·k, k·n and m·n elements for these
        // row-major strides.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                self.a.as_ptr(),
                k as isize,
                1,
                self.b.as_ptr(),
                n as isize,
                1,
                0.0,
                self.c.as_mut_ptr(),
                n as isize,
                1,
            )
        }
    }

    /// The `gemm` crate with `threads` rayon threads (1: sequential).
    pub fn gemm_crate(&mut self, threads: usize) {
        let GemmCase { m, k, n, .. } = self.case;
        // SAFETY: as above: A is m×k, B k×n and C m×n, row-major and disjoint.
        unsafe {
            f32::gemm_strided(
                m,
                k,
                n,
                1.0,
                self.a.as_ptr(),
                k as isize,
                1,
                self.b.as_ptr(),
                n as isize,
                1,
                0.0,
                self.c.as_mut_ptr(),
                n as isize,
                1,
                threads,
            )
        }
    }

    /// C, for checking that the variants agree.
    pub fn result(&self) -> &[f32] {
        &self.c
    }
}

/// A convolution layer's workload, as the layer sees it.
#[derive(Debug, Clone, Copy)]
pub struct ConvCase {
    /// Workload id.
    pub id: &'static str,
    /// Batch N.
    pub batch: usize,
    /// C_in.
    pub c_in: usize,
    /// Spatial input lengths.
    pub input: &'static [usize],
    /// C_out.
    pub c_out: usize,
    /// Filter lengths.
    pub filter: &'static [usize],
    /// Stride in every dimension.
    pub stride: usize,
    /// Padding in every dimension.
    pub padding: usize,
    /// Channel groups (C_in: depthwise).
    pub groups: usize,
    /// A transposed convolution: the adjoint of the convolution from its output
    /// shape back to its input shape.
    pub transposed: bool,
    /// How the sums are computed.
    pub algorithm: ConvAlgorithm,
}

impl ConvCase {
    /// A plain (ungrouped, untransposed) convolution workload.
    #[allow(clippy::too_many_arguments)]
    pub const fn plain(
        id: &'static str,
        batch: usize,
        c_in: usize,
        input: &'static [usize],
        c_out: usize,
        filter: &'static [usize],
        stride: usize,
        padding: usize,
    ) -> Self {
        Self {
            id,
            batch,
            c_in,
            input,
            c_out,
            filter,
            stride,
            padding,
            groups: 1,
            transposed: false,
            algorithm: ConvAlgorithm::Exact,
        }
    }
}

/// C1–C10.
pub const CONVS: [ConvCase; 10] = [
    ConvCase::plain("C1", 32, 64, &[1024], 64, &[9], 1, 4),
    ConvCase::plain("C2", 64, 1, &[28, 28], 32, &[5, 5], 1, 2),
    ConvCase::plain("C3", 64, 32, &[14, 14], 64, &[5, 5], 1, 2),
    ConvCase::plain("C4", 32, 64, &[56, 56], 64, &[3, 3], 1, 1),
    ConvCase::plain("C5", 32, 64, &[56, 56], 128, &[3, 3], 2, 1),
    ConvCase::plain("C6", 8, 16, &[16, 32, 32], 32, &[3, 3, 3], 1, 1),
    ConvCase::plain("C7", 128, 64, &[7, 7], 64, &[3, 3], 1, 1),
    ConvCase::plain("C8", 128, 16, &[28, 28], 16, &[3, 3], 1, 1),
    ConvCase { groups: 128, ..ConvCase::plain("C9", 32, 128, &[56, 56], 128, &[3, 3], 1, 1) },
    ConvCase { transposed: true, ..ConvCase::plain("C10", 4, 32, &[16, 16, 16], 16, &[2, 2, 2], 2, 0) },
];

/// The 3×3 and 5×5 rows at stride 1 with Winograd minimal filtering (`C3W` is C3's
/// workload), for setting against the exact rows.
pub const WINOGRAD_CONVS: [ConvCase; 4] = [
    ConvCase { id: "C3W", algorithm: ConvAlgorithm::Winograd, ..CONVS[2] },
    ConvCase { id: "C4W", algorithm: ConvAlgorithm::Winograd, ..CONVS[3] },
    ConvCase { id: "C7W", algorithm: ConvAlgorithm::Winograd, ..CONVS[6] },
    ConvCase { id: "C8W", algorithm: ConvAlgorithm::Winograd, ..CONVS[7] },
];

/// T3's convolutions that no C row has (stage 2's at stride 1; the strided first of
/// stages 2 and 3, and their 1×1 shortcuts), for `nn-bench passes` and `profile`:
/// not benchmark rows, but where a T3 step spends time the rows do not show.
pub const T3_CONVS: [ConvCase; 5] = [
    ConvCase::plain("T3-mid", 128, 32, &[14, 14], 32, &[3, 3], 1, 1),
    ConvCase::plain("T3-s2a", 128, 16, &[28, 28], 32, &[3, 3], 2, 1),
    ConvCase::plain("T3-s2b", 128, 32, &[14, 14], 64, &[3, 3], 2, 1),
    ConvCase::plain("T3-1x1a", 128, 16, &[28, 28], 32, &[1, 1], 2, 0),
    ConvCase::plain("T3-1x1b", 128, 32, &[14, 14], 64, &[1, 1], 2, 0),
];

/// Every convolution row: C1–C10, then the Winograd rows.
pub fn conv_cases() -> impl Iterator<Item = &'static ConvCase> {
    CONVS.iter().chain(WINOGRAD_CONVS.iter())
}

impl ConvCase {
    /// The validated problem (floor geometry: C5's stride 2 over 56 + 2 − 3 is not
    /// exact); for a transposed workload, the convolution it is the adjoint of.
    pub fn problem(&self) -> ConvProblem {
        let rank = self.input.len();
        let (c_in, c_out, input) = if self.transposed {
            let output = (0..rank).map(|d| (self.input[d] - 1) * self.stride + self.filter[d] - 2 * self.padding);
            (self.c_out, self.c_in, output.collect())
        } else {
            (self.c_in, self.c_out, self.input.to_vec())
        };
        let geometry = ConvGeometry::new(
            &input,
            self.filter,
            &vec![self.stride; rank],
            &vec![Padding::symmetric(self.padding); rank],
            OutputRounding::Floor,
            KernelMode::Convolution,
        )
        .expect("benchmark geometry is valid");
        ConvProblem::grouped(geometry, c_in, c_out, self.groups)
            .expect("benchmark sizes are valid")
            .with_algorithm(self.algorithm)
    }

    /// 2·N·C_out·(C_in/g)·∏f·∏v of the convolution (the adjoint's, when transposed).
    pub fn forward_flops(&self) -> f64 {
        let p = self.problem();
        2.0 * (self.batch * p.weight_len() * p.geometry().output_len()) as f64
    }
}

/// Buffers for one convolution workload. The batch buffers are nn-core tensors, so
/// that they are allocated as a network's activations and gradients are (large ones
/// advised onto huge pages).
pub struct ConvRun {
    problem: ConvProblem,
    batch: usize,
    x: Tensor<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    y: Tensor<f32>,
    dy: Tensor<f32>,
    dx: Tensor<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
    transposed: bool,
}

/// A flat tensor holding `values`.
fn batch_tensor(values: &[f32]) -> Tensor<f32> {
    let mut tensor = Tensor::zeros(&[values.len()]).expect("a length that fits memory");
    tensor.data_mut().copy_from_slice(values);
    tensor
}

impl ConvRun {
    /// Fills input, weights and output gradient, sized as the layer sees them (a
    /// transposed layer's input is its adjoint convolution's output).
    pub fn new(case: &ConvCase) -> Self {
        let problem = case.problem();
        let batch = case.batch;
        let (x_len, y_len) = if case.transposed {
            (problem.output_image_len(), problem.input_image_len())
        } else {
            (problem.input_image_len(), problem.output_image_len())
        };
        let zeros = |len: usize| Tensor::zeros(&[batch * len]).expect("a length that fits memory");
        Self {
            x: batch_tensor(&filled(batch * x_len, 3)),
            w: filled(problem.weight_len(), 4),
            b: filled(case.c_out, 5),
            y: zeros(y_len),
            dy: batch_tensor(&filled(batch * y_len, 6)),
            dx: zeros(x_len),
            dw: vec![0.0; problem.weight_len()],
            db: vec![0.0; case.c_out],
            transposed: case.transposed,
            problem,
            batch,
        }
    }

    /// y = conv(x, w) + b, or its transposed form.
    pub fn forward(&mut self) {
        let (p, n, x, y) = (&self.problem, self.batch, self.x.data(), self.y.data_mut());
        if self.transposed {
            conv_transpose_forward(p, n, x, &self.w, Some(&self.b), y).expect("valid");
        } else {
            conv_forward(p, n, x, &self.w, Some(&self.b), 0.0, y).expect("valid");
        }
    }

    /// Forward, then [`backward`](Self::backward).
    pub fn forward_backward(&mut self) {
        self.forward();
        self.backward();
    }

    /// The gradients of bias, weight and input as the layer takes them: one call for
    /// all three (a transposed layer's bias, then its weight and input gradients in one
    /// call).
    pub fn backward(&mut self) {
        let (p, n, x, dy, dx) = (&self.problem, self.batch, self.x.data(), self.dy.data(), self.dx.data_mut());
        if self.transposed {
            conv_transpose_backward_bias(p, n, dy, &mut self.db).expect("valid");
            conv_transpose_backward(p, n, dy, x, &self.w, Some(dx), &mut self.dw).expect("valid");
        } else {
            conv_backward(p, n, x, &self.w, dy, 0.0, Some(dx), &mut self.dw, Some(&mut self.db)).expect("valid");
        }
    }

    /// ∂b += Σ ∂y.
    pub fn bias_gradient(&mut self) {
        let (p, n, dy) = (&self.problem, self.batch, self.dy.data());
        if self.transposed {
            conv_transpose_backward_bias(p, n, dy, &mut self.db).expect("valid");
        } else {
            conv_backward_bias(p, n, dy, &mut self.db).expect("valid");
        }
    }

    /// ∂w += the weight gradient (a transposed layer's: its output gradient is the
    /// adjoint convolution's input).
    pub fn weight_gradient(&mut self) {
        let (x, dy) = (self.x.data(), self.dy.data());
        let (input, output) = if self.transposed { (dy, x) } else { (x, dy) };
        conv_backward_weight(&self.problem, self.batch, input, output, 0.0, &mut self.dw).expect("valid");
    }

    /// ∂x = the input gradient (a transposed layer's is the adjoint's forward).
    pub fn input_gradient(&mut self) {
        let (p, n, dy, dx) = (&self.problem, self.batch, self.dy.data(), self.dx.data_mut());
        if self.transposed {
            conv_forward(p, n, dy, &self.w, None, 0.0, dx).expect("valid");
        } else {
            conv_backward_input(p, n, &self.w, dy, dx).expect("valid");
        }
    }

    /// The GEMM a convolution amounts to (C_out × (C_in/g)·∏f × N·∏v), for the in-run
    /// reference: what one plain `matrixmultiply` call of the same FLOPs achieves.
    pub fn equivalent_gemm(&self) -> GemmCase {
        let m = self.problem.out_channels();
        GemmCase {
            id: "conv-equivalent",
            m,
            k: self.problem.weight_len() / m,
            n: self.batch * self.problem.geometry().output_len(),
        }
    }
}

/// The training workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainCase {
    /// Dense 784→256→128→10 with ReLU.
    T1,
    /// The two-convolution network of BENCHMARKS.md.
    T2,
    /// The ResNet-20-style graph with batch normalisation and augmentation.
    T3,
    /// T2 with its second convolution by Winograd minimal filtering.
    T2W,
    /// T3 with its stages' stride-1 convolutions by Winograd minimal filtering.
    T3W,
}

impl TrainCase {
    /// All of them: T1–T3, then the Winograd variants.
    pub const ALL: [TrainCase; 5] = [TrainCase::T1, TrainCase::T2, TrainCase::T3, TrainCase::T2W, TrainCase::T3W];

    /// "T1", "T2", "T3", "T2W" or "T3W".
    pub fn id(self) -> &'static str {
        match self {
            TrainCase::T1 => "T1",
            TrainCase::T2 => "T2",
            TrainCase::T3 => "T3",
            TrainCase::T2W => "T2W",
            TrainCase::T3W => "T3W",
        }
    }

    /// The workload of BENCHMARKS.md a variant computes: T2 for T2W, T3 for T3W.
    fn recipe(self) -> TrainCase {
        match self {
            TrainCase::T2W => TrainCase::T2,
            TrainCase::T3W => TrainCase::T3,
            other => other,
        }
    }

    /// How the variant computes its convolutions: Winograd for T2W and T3W.
    pub fn algorithm(self) -> ConvAlgorithm {
        match self {
            TrainCase::T2W | TrainCase::T3W => ConvAlgorithm::Winograd,
            _ => ConvAlgorithm::Exact,
        }
    }

    /// The chain of T1 or T2 (He-uniform weights, zero biases); `None` for T3, a graph.
    pub fn sequential(self) -> Option<Sequential<f32>> {
        let built = match self.recipe() {
            TrainCase::T1 => nn_train::models::mlp(1),
            TrainCase::T2 => nn_train::models::cnn_with(1, self.algorithm()),
            _ => return None,
        };
        Some(built.expect("benchmark networks are valid"))
    }

    /// The network.
    pub fn network(self) -> Box<dyn Network<f32>> {
        match self.sequential() {
            Some(chain) => Box::new(chain),
            None => Box::new(nn_train::models::resnet20_with::<f32>(1, self.algorithm()).expect("T3 is valid")),
        }
    }

    /// The optimizer of BENCHMARKS.md (its first learning rate, for T3's schedule).
    pub fn optimizer(self) -> Sgd<f32> {
        match self {
            TrainCase::T1 => Sgd::new(0.05).momentum(0.9),
            TrainCase::T2 | TrainCase::T2W => Sgd::new(0.01).momentum(0.9),
            TrainCase::T3 | TrainCase::T3W => {
                Sgd::new(0.1).momentum(0.9).nesterov(true).weight_decay(5e-4).decay_weights_only(true)
            }
        }
    }

    /// Patterns per step.
    pub fn batch(self) -> usize {
        if self.recipe() == TrainCase::T3 {
            128
        } else {
            64
        }
    }

    /// Synthetic 28×28 byte images, prepared as the example prepares real ones (T3:
    /// normalised, cropped and flipped at random).
    pub fn data(self) -> ClassificationSet {
        let count = 1024;
        let pixels: Vec<u8> = filled(count * 784, 7).iter().map(|v| ((v + 1.0) * 127.5) as u8).collect();
        let labels: Vec<u8> = (0..count).map(|i| (i * 7 % 10) as u8).collect();
        let data = ClassificationSet::new(pixels, labels, &[1, 28, 28], 10).expect("consistent synthetic data");
        let prepared = match self {
            TrainCase::T1 => data.with_sample_shape(&[784]),
            TrainCase::T2 | TrainCase::T2W => Ok(data),
            TrainCase::T3 | TrainCase::T3W => data
                .with_normalization(Normalization { mean: vec![0.2860], std: vec![0.3530] })
                .and_then(|d| d.with_augmentation(Augmentation { crop_padding: 2, horizontal_flip: true, seed: 2 })),
        };
        prepared.expect("valid preparation")
    }
}

/// A training loop on synthetic images through the same pipeline as real data (bytes
/// converted, and for T3 augmented, per batch), mean cross-entropy.
pub struct TrainRun {
    net: Box<dyn Network<f32>>,
    optimizer: Sgd<f32>,
    data: ClassificationSet,
    inputs: Tensor<f32>,
    targets: Vec<usize>,
    grad: Tensor<f32>,
    indices: Vec<usize>,
    next: usize,
    /// Patterns per step.
    pub batch: usize,
}

impl TrainRun {
    /// The network, optimizer and 1,024 synthetic images of `case`.
    pub fn new(case: TrainCase) -> Self {
        Self {
            net: case.network(),
            optimizer: case.optimizer(),
            data: case.data(),
            inputs: Tensor::default(),
            targets: Vec::new(),
            grad: Tensor::default(),
            indices: Vec::new(),
            next: 0,
            batch: case.batch(),
        }
    }

    /// One minibatch: fill, forward, loss, backward, update.
    pub fn step(&mut self) {
        let n = Dataset::<f32>::len(&self.data);
        self.indices.clear();
        self.indices.extend((self.next..self.next + self.batch).map(|i| i % n));
        self.next = (self.next + self.batch) % n;
        self.data.fill_training_batch(0, &self.indices, &mut self.inputs, &mut self.targets).expect("in range");
        nn_train::train_step(
            &mut *self.net,
            &mut self.optimizer,
            &SoftmaxCrossEntropy,
            &self.inputs,
            &self.targets,
            Reduction::Mean,
            &mut self.grad,
        )
        .expect("valid step");
    }

    /// Only the batch assembly of [`step`](Self::step) (for T3: conversion,
    /// normalisation and augmentation), to weigh the data pipeline against the step.
    pub fn fill(&mut self) {
        let n = Dataset::<f32>::len(&self.data);
        self.indices.clear();
        self.indices.extend((self.next..self.next + self.batch).map(|i| i % n));
        self.next = (self.next + self.batch) % n;
        self.data.fill_training_batch(0, &self.indices, &mut self.inputs, &mut self.targets).expect("in range");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-run references compute the same product as ours: otherwise the
    /// benchmark table would compare unlike work (the `gemm` crate takes its strides
    /// column first and its α, β the other way round).
    #[test]
    fn gemm_variants_agree() {
        let case = GemmCase { id: "test", m: 37, k: 53, n: 29 };
        let mut run = GemmRun::new(case);
        run.ours();
        let ours = run.result().to_vec();
        run.matrixmultiply();
        let mm = run.result().to_vec();
        run.gemm_crate(1);
        let gc = run.result().to_vec();
        for ((a, b), c) in ours.iter().zip(&mm).zip(&gc) {
            assert!((a - b).abs() < 1e-4 && (a - c).abs() < 1e-4, "{a} {b} {c}");
        }
    }

    #[test]
    fn conv_equivalent_gemm_has_the_same_flops() {
        for case in CONVS {
            let run = ConvRun::new(&case);
            assert_eq!(run.equivalent_gemm().flops(), case.forward_flops(), "{}", case.id);
        }
    }
}
