//! Does starting the gradient sums bucket by bucket while the backward pass goes on
//! (non-blocking all-reduce, as PyTorch's DistributedDataParallel does) beat one sum
//! after the backward pass on this machine? `Trainer::fit_on` does the latter; this
//! program measures both on the same network, step by step in alternation.
//!
//! ```sh
//! cargo build --release -p nn-train --features mpi --examples
//! mpirun -np 2 target/release/examples/sum_overlap [--model cnn|mlp] [--steps 60] [--bucket-kib 256]
//! ```
//!
//! Each process runs its share of a batch of 64 random images through T2 (`cnn`) or
//! T1 (`mlp`). "after": forward, backward, then all gradients in one all-reduce (the
//! trainer's way). "buckets": after each layer's backward, its gradients join the open
//! bucket; a bucket of at least `--bucket-kib` starts a non-blocking all-reduce at
//! once, and every later layer's end tests the open requests (OpenMPI moves data only
//! inside MPI calls); the step waits for the last at the end. Last, the time of one
//! sum of 128 floats: what a synchronised batch norm adds per layer and pass.

use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::topology::Communicator;
use nn_core::prelude::*;
use nn_train::distributed::share;
use rand::Rng;
use std::time::Instant;

const BATCH: usize = 64;

/// The layers of a network, with the tensors between them, so that each layer's
/// backward can be followed by what the caller wants.
struct LayerByLayer {
    net: Sequential<f32>,
    activations: Vec<Tensor<f32>>,
    grads: Vec<Tensor<f32>>,
}

impl LayerByLayer {
    /// The network, to run on the batch `x`.
    fn new(net: Sequential<f32>, x: Tensor<f32>) -> Self {
        let count = net.layers().len() + 1;
        let mut activations = vec![Tensor::default(); count];
        activations[0] = x;
        Self { net, activations, grads: vec![Tensor::default(); count] }
    }

    fn forward_loss(&mut self, labels: &[usize]) -> f64 {
        for (k, layer) in self.net.layers_mut().iter_mut().enumerate() {
            let (done, rest) = self.activations.split_at_mut(k + 1);
            layer.forward(&done[k], &mut rest[0]).expect("forward");
        }
        let last = self.net.layers().len();
        SoftmaxCrossEntropy
            .loss_and_grad(&self.activations[last], labels, Reduction::MeanOf(BATCH), &mut self.grads[last])
            .expect("loss")
    }

    /// The backward pass, calling `after_layer(k, layers)` once layer k's gradients
    /// are complete.
    fn backward(&mut self, mut after_layer: impl FnMut(usize, &[Box<dyn Layer<f32>>])) {
        for layer in self.net.layers_mut() {
            for param in layer.params_mut() {
                param.grad.data_mut().fill(0.0);
            }
        }
        for k in (0..self.net.layers().len()).rev() {
            let (head, tail) = self.grads.split_at_mut(k + 1);
            let write = (k > 0).then_some(&mut head[k]);
            let (input, output) = (&self.activations[k], &self.activations[k + 1]);
            self.net.layers_mut()[k].backward(input, output, &tail[0], write).expect("backward");
            after_layer(k, self.net.layers());
        }
    }

    /// Copies `values` back into the gradients of `layers`, in order.
    fn scatter(&mut self, layers: std::ops::Range<usize>, values: &[f32]) {
        let mut at = 0;
        for k in layers.rev() {
            for param in self.net.layers_mut()[k].params_mut() {
                let grad = param.grad.data_mut();
                grad.copy_from_slice(&values[at..at + grad.len()]);
                at += grad.len();
            }
        }
    }
}

/// Layer k's gradients appended to `into`.
fn gather(layer: &dyn Layer<f32>, into: &mut Vec<f32>) {
    for param in layer.params() {
        into.extend_from_slice(param.grad.data());
    }
}

/// Buckets in backward order: each a range of layers whose gradients reach at least
/// `cap` floats (the last may hold fewer), and its length.
fn plan_buckets(layers: &[Box<dyn Layer<f32>>], cap: usize) -> Vec<(std::ops::Range<usize>, usize)> {
    let mut buckets = Vec::new();
    let (mut end, mut len) = (layers.len(), 0);
    for k in (0..layers.len()).rev() {
        len += layers[k].params().iter().map(|p| p.grad.len()).sum::<usize>();
        if len >= cap || k == 0 {
            buckets.push((k..end, len));
            (end, len) = (k, 0);
        }
    }
    buckets.retain(|(_, len)| *len > 0);
    buckets
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let universe = mpi::initialize().expect("MPI initialises once");
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let arg = |name: &str| {
        let args: Vec<String> = std::env::args().collect();
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
    };
    let model = arg("--model").unwrap_or_else(|| "cnn".into());
    let steps: usize = arg("--steps").map_or(60, |s| s.parse().expect("--steps N"));
    let cap = arg("--bucket-kib").map_or(256, |s| s.parse::<usize>().expect("--bucket-kib N")) * 1024 / 4;
    rayon::ThreadPoolBuilder::new().num_threads(1).build_global().expect("one thread per process");

    let (net, sample): (Sequential<f32>, Vec<usize>) = match model.as_str() {
        "mlp" => (nn_train::models::mlp(7).expect("T1"), vec![784]),
        _ => (nn_train::models::cnn(7).expect("T2"), vec![1, 28, 28]),
    };
    let local = share(BATCH, rank, size).len();
    let mut rng = nn_core::seeded_rng(rank as u64);
    let mut shape = vec![local];
    shape.extend(&sample);
    let x = Tensor::from_vec(&shape, (0..local * sample.iter().product::<usize>()).map(|_| rng.gen()).collect())
        .expect("inputs");
    let labels: Vec<usize> = (0..local).map(|_| rng.gen_range(0..10)).collect();
    let mut stepper = LayerByLayer::new(net, x);

    let all = 0..stepper.net.layers().len();
    let buckets = plan_buckets(stepper.net.layers(), cap);
    let mut sends: Vec<Vec<f32>> = buckets.iter().map(|(_, len)| Vec::with_capacity(*len)).collect();
    let mut receives: Vec<Vec<f32>> = buckets.iter().map(|(_, len)| vec![0.0; *len]).collect();
    let (mut flat, mut summed) = (Vec::new(), Vec::new());
    let (mut after, mut after_sum, mut bucketed) = (Vec::new(), Vec::new(), Vec::new());

    for step in 0..2 * steps + 2 {
        world.barrier();
        let started = Instant::now();
        stepper.forward_loss(&labels);
        // Alternate the two ways, and their order, step by step.
        let with_buckets = (step / 2 + step) % 2 == 1;
        if with_buckets {
            mpi::request::scope(|scope| {
                let mut pending = Vec::new();
                let (mut send_slots, mut receive_slots) = (sends.iter_mut(), receives.iter_mut());
                let mut next = 0;
                stepper.backward(|k, layers| {
                    let Some((range, _)) = buckets.get(next) else { return };
                    if k == range.start {
                        let (send, receive) =
                            (send_slots.next().expect("a slot"), receive_slots.next().expect("a slot"));
                        send.clear();
                        range.clone().rev().for_each(|j| gather(&*layers[j], send));
                        let send: &Vec<f32> = send;
                        let op = SystemOperation::sum();
                        pending.push(world.immediate_all_reduce_into(scope, &send[..], &mut receive[..], op));
                        next += 1;
                    }
                    pending = pending.drain(..).filter_map(|request| request.test().err()).collect();
                });
                pending.into_iter().for_each(|request| {
                    request.wait();
                });
            });
            for ((range, _), receive) in buckets.iter().zip(&receives) {
                stepper.scatter(range.clone(), receive);
            }
        } else {
            stepper.backward(|_, _| {});
            let sum_started = Instant::now();
            flat.clear();
            all.clone().rev().for_each(|k| gather(&*stepper.net.layers()[k], &mut flat));
            summed.resize(flat.len(), 0.0);
            world.all_reduce_into(&flat[..], &mut summed[..], SystemOperation::sum());
            stepper.scatter(all.clone(), &summed);
            if step >= 2 {
                after_sum.push(sum_started.elapsed().as_secs_f64() * 1e3);
            }
        }
        // The first pair warms up.
        if step >= 2 {
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if with_buckets { &mut bucketed } else { &mut after }.push(ms);
        }
    }
    // What a synchronised batch norm would add per layer and pass: one sum of a
    // 64-channel layer's two statistics, the processes starting together.
    let (statistics, mut statistics_summed) = (vec![1.0f32; 128], vec![0.0f32; 128]);
    let mut small = Vec::new();
    for _ in 0..200 {
        world.barrier();
        let started = Instant::now();
        world.all_reduce_into(&statistics[..], &mut statistics_summed[..], SystemOperation::sum());
        small.push(started.elapsed().as_secs_f64() * 1e6);
    }
    if rank == 0 {
        let lens: Vec<usize> = buckets.iter().map(|(_, len)| *len).collect();
        println!("{model} on {size} processes, {local} of {BATCH} images each, {steps} steps per way");
        println!("buckets of at least {} KiB, in backward order (floats): {lens:?}", cap * 4 / 1024);
        let spread = |v: &mut Vec<f64>| {
            let m = median(v);
            format!("median {m:.2} ms (min {:.2}, max {:.2})", v[0], v[v.len() - 1])
        };
        println!("after:   step {}; its sum {}", spread(&mut after), spread(&mut after_sum));
        println!("buckets: step {}", spread(&mut bucketed));
        let (m, low, high) = (median(&mut small), small[0], small[small.len() - 1]);
        println!("a sum of 128 floats (after a barrier): median {m:.1} µs (min {low:.1}, max {high:.1})");
    }
}
