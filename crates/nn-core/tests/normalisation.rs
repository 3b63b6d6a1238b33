//! Batch normalisation and global average pooling: finite differences in f64 (batch
//! normalisation in training mode, through its batch statistics, and in evaluation
//! mode), and the forward pass and running estimates against their definitions.

use nn_core::gradcheck::{check_layer, check_network, GradCheckOptions};
use nn_core::prelude::*;
use nn_core::shared_statistics::{with_shared_statistics, StatisticsSum};
use rand::Rng;

const TOLERANCE: f64 = 1e-6;

fn random_tensor(shape: &[usize], seed: u64) -> Tensor<f64> {
    let mut rng = seeded_rng(seed);
    let len = shape.iter().product();
    Tensor::from_vec(shape, (0..len).map(|_| rng.gen_range(-1.0..2.0)).collect()).unwrap()
}

fn batch_of(per_sample: &[usize], batch: usize) -> Vec<usize> {
    let mut shape = vec![batch];
    shape.extend_from_slice(per_sample);
    shape
}

/// γ and β away from 1 and 0, so that their gradients and the scale are exercised.
fn with_affine(mut bn: BatchNorm<f64>, seed: u64) -> BatchNorm<f64> {
    let mut rng = seeded_rng(seed);
    for p in bn.params_mut() {
        p.value.data_mut().iter_mut().for_each(|v| *v = rng.gen_range(0.5..1.5));
    }
    bn
}

#[test]
fn batch_norm_gradients_in_zero_to_three_spatial_dimensions() {
    for (shape, batch) in [(vec![3], 5), (vec![2, 7], 3), (vec![3, 4, 3], 2), (vec![2, 3, 2, 3], 2)] {
        for training in [true, false] {
            let mut bn = with_affine(BatchNorm::new(&shape).unwrap(), 1);
            if !training {
                // Running estimates of a few batches, then evaluation.
                for seed in 0..3 {
                    bn.forward(&random_tensor(&batch_of(&shape, batch), 10 + seed), &mut Tensor::default()).unwrap();
                }
                bn.set_training(false);
            }
            let x = random_tensor(&batch_of(&shape, batch), 2);
            let report = check_layer(&mut bn, &x, GradCheckOptions::default()).unwrap();
            assert!(report.passed(TOLERANCE), "{shape:?}, training {training}: {report:?}");
            assert_eq!(report.checked, x.len() + 2 * shape[0]);
        }
    }
}

#[test]
fn batch_norm_forward_and_running_estimates_follow_the_definition() {
    let (shape, batch) = ([2, 3, 2], 4);
    let x = random_tensor(&batch_of(&shape, batch), 3);
    let mut bn = with_affine(BatchNorm::with_options(&shape, 0.25, 1e-3).unwrap(), 4);
    let (gamma, beta) = (bn.params()[0].value.data().to_vec(), bn.params()[1].value.data().to_vec());
    let mut y = Tensor::default();
    bn.forward(&x, &mut y).unwrap();
    let plane = 6;
    for c in 0..2 {
        let cells: Vec<f64> =
            (0..batch).flat_map(|n| x.data()[(n * 2 + c) * plane..(n * 2 + c + 1) * plane].to_vec()).collect();
        let m = cells.len() as f64;
        let mean = cells.iter().sum::<f64>() / m;
        let var = cells.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
        for n in 0..batch {
            for s in 0..plane {
                let at = (n * 2 + c) * plane + s;
                let want = gamma[c] * (x.data()[at] - mean) / (var + 1e-3).sqrt() + beta[c];
                assert!((y.data()[at] - want).abs() < 1e-12, "channel {c}");
            }
        }
        // From 0 and 1, a quarter of the way to the batch mean and unbiased variance.
        let (rm, rv) = bn.running_stats();
        assert!((rm.data()[c] - 0.25 * mean).abs() < 1e-12);
        assert!((rv.data()[c] - (0.75 + 0.25 * var * m / (m - 1.0))).abs() < 1e-12);
    }
    // In evaluation the running estimates normalise, and stay as they are.
    bn.set_training(false);
    let before = bn.running_stats().0.clone();
    bn.forward(&x, &mut y).unwrap();
    assert_eq!(bn.running_stats().0, &before);
    let (rm, rv) = bn.running_stats();
    let want = gamma[1] * (x.data()[plane] - rm.data()[1]) / (rv.data()[1] + 1e-3).sqrt() + beta[1];
    assert!((y.data()[plane] - want).abs() < 1e-12);
}

#[test]
fn batch_norm_is_bit_identical_on_any_thread_count() {
    let x = random_tensor(&[8, 16, 6, 6], 5).cast::<f32>();
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut bn = BatchNorm::<f32>::new(&[16, 6, 6]).unwrap();
            let (mut y, mut dx) = (Tensor::default(), Tensor::default());
            bn.forward(&x, &mut y).unwrap();
            bn.backward(&x, &y, &x, Some(&mut dx)).unwrap();
            (y, dx, bn.params()[0].grad.clone(), bn.running_stats().1.clone())
        })
    };
    assert_eq!(run(1), run(3));
}

/// Processes played by threads: each passes its sums and receives the totals, added
/// in rank order.
struct Exchange {
    barrier: std::sync::Barrier,
    slots: std::sync::Mutex<Vec<Vec<f64>>>,
}

struct Process<'a>(&'a Exchange, usize);

/// What one batch normalisation pass gives: output, ∂x, ∂γ and ∂β, running estimates.
struct Pass {
    output: Vec<f64>,
    input_grad: Vec<f64>,
    param_grads: Vec<f64>,
    running: Vec<f64>,
}

impl StatisticsSum for Process<'_> {
    fn sum(&self, values: &mut [f64]) {
        let Process(exchange, rank) = self;
        exchange.slots.lock().unwrap()[*rank] = values.to_vec();
        exchange.barrier.wait();
        let slots = exchange.slots.lock().unwrap();
        for (i, v) in values.iter_mut().enumerate() {
            *v = slots.iter().map(|slot| slot[i]).sum();
        }
        drop(slots);
        exchange.barrier.wait();
    }
}

// A batch split over processes whose statistics are shared: each share's output and
// input gradient are the whole batch's rows, the shares' parameter gradients add up
// to the whole batch's, and every share's running estimates are the whole batch's.
#[test]
fn batch_norm_with_shared_statistics_matches_the_whole_batch() {
    let shape = [3, 4, 5];
    let (x, g) = (random_tensor(&batch_of(&shape, 7), 21), random_tensor(&batch_of(&shape, 7), 22));
    let layer = with_affine(BatchNorm::new(&shape).unwrap(), 23);
    let run = |mut bn: BatchNorm<f64>, x: &Tensor<f64>, g: &Tensor<f64>| {
        let (mut y, mut dx) = (Tensor::default(), Tensor::default());
        bn.forward(x, &mut y).unwrap();
        bn.backward(x, &y, g, Some(&mut dx)).unwrap();
        let (mean, var) = bn.running_stats();
        Pass {
            output: y.data().to_vec(),
            input_grad: dx.data().to_vec(),
            param_grads: bn.params().iter().flat_map(|p| p.grad.data().to_vec()).collect(),
            running: [mean.data(), var.data()].concat(),
        }
    };
    let whole = run(layer.clone(), &x, &g);
    let sample = 60;
    let rows = |t: &Tensor<f64>, r: std::ops::Range<usize>| {
        Tensor::from_vec(&batch_of(&shape, r.len()), t.data()[r.start * sample..r.end * sample].to_vec()).unwrap()
    };
    let parts = [0..3, 3..5, 5..7];
    let exchange = Exchange { barrier: std::sync::Barrier::new(3), slots: std::sync::Mutex::new(vec![Vec::new(); 3]) };
    let shares: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(rank, part)| {
                let (x, g, layer, exchange) =
                    (rows(&x, part.clone()), rows(&g, part.clone()), layer.clone(), &exchange);
                scope.spawn(move || with_shared_statistics(&Process(exchange, rank), || run(layer, &x, &g)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let close = |a: &[f64], b: &[f64], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (a, b)) in a.iter().zip(b).enumerate() {
            assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{what}[{i}]: {a} against {b}");
        }
    };
    let joined = |pick: fn(&Pass) -> &Vec<f64>| -> Vec<f64> { shares.iter().flat_map(|s| pick(s).clone()).collect() };
    close(&joined(|s| &s.output), &whole.output, "output");
    close(&joined(|s| &s.input_grad), &whole.input_grad, "input gradient");
    let grads: Vec<f64> = (0..whole.param_grads.len()).map(|i| shares.iter().map(|s| s.param_grads[i]).sum()).collect();
    close(&grads, &whole.param_grads, "parameter gradients");
    for share in &shares {
        close(&share.running, &whole.running, "running estimates");
    }
    // Without the shared sums, a share normalises with its own statistics.
    let alone = run(layer, &rows(&x, 0..3), &rows(&g, 0..3));
    assert!(alone.output.iter().zip(&whole.output).any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn global_average_pooling_in_one_to_three_dimensions() {
    for shape in [vec![3, 5], vec![2, 4, 3], vec![2, 2, 3, 2]] {
        let mut pool = GlobalAvgPool::new(&shape).unwrap();
        let x = random_tensor(&batch_of(&shape, 3), 6);
        let report = check_layer(&mut pool, &x, GradCheckOptions::default()).unwrap();
        assert!(report.passed(TOLERANCE), "{shape:?}: {report:?}");
        let mut y = Tensor::default();
        Layer::<f64>::forward(&mut pool, &x, &mut y).unwrap();
        let plane: usize = shape[1..].iter().product();
        assert_eq!(y.shape(), &[3, shape[0]]);
        let want = x.data()[plane..2 * plane].iter().sum::<f64>() / plane as f64;
        assert!((y.data()[1] - want).abs() < 1e-12);
    }
    assert!(GlobalAvgPool::new(&[4]).is_err());
}

#[test]
fn a_network_with_batch_norm_checks_end_to_end() {
    let mut net = Sequential::<f64>::builder(&[2, 5, 5], 7)
        .conv(ConvSpec::new(3, &[3, 3]).padding(&[1, 1]).bias(false))
        .batch_norm()
        .relu()
        .conv(ConvSpec::new(4, &[3, 3]).stride(&[2, 2]).bias(false))
        .batch_norm()
        .relu()
        .global_avg_pool()
        .dense(2)
        .build()
        .unwrap();
    let x = random_tensor(&[4, 2, 5, 5], 8);
    let report = check_network(&mut net, &x, GradCheckOptions::default()).unwrap();
    assert!(report.passed(TOLERANCE), "{report:?}");
    let names: Vec<String> = net.named_buffers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "1.batch_norm.running_mean",
            "1.batch_norm.running_var",
            "4.batch_norm.running_mean",
            "4.batch_norm.running_var"
        ]
    );
}

#[test]
fn dropout_scales_the_kept_elements_and_is_seeded() {
    let x = Tensor::from_vec(&[40, 50], vec![2.0f64; 2000]).unwrap();
    let build = |seed| Sequential::<f64>::builder(&[50], seed).dropout(0.25).build().unwrap();
    let (mut a, mut b) = (build(3), build(3));
    let ya = a.forward(&x).unwrap().clone();
    assert_eq!(&ya, b.forward(&x).unwrap(), "the same seed, the same masks");
    assert_ne!(&ya, build(4).forward(&x).unwrap());
    assert!(ya.data().iter().all(|&v| v == 0.0 || v == 2.0 / 0.75));
    let dropped = ya.data().iter().filter(|&&v| v == 0.0).count() as f64 / 2000.0;
    assert!((dropped - 0.25).abs() < 0.03, "{dropped}");
    // The next batch gets new masks; the gradient goes through the same mask.
    assert_ne!(&ya, a.forward(&x).unwrap());
    let y = a.output().unwrap().clone();
    let dx = a.backward_to_input(&Tensor::from_vec(&[40, 50], vec![1.0; 2000]).unwrap()).unwrap();
    assert!(dx.data().iter().zip(y.data()).all(|(&d, &v)| d == v / 2.0));
    // Evaluation passes the input unchanged.
    a.set_training(false);
    assert_eq!(a.forward(&x).unwrap(), &x);
    assert!(Sequential::<f64>::builder(&[3], 1).dropout(1.0).build().is_err());
}

// A minibatch split into shares: each part, run after skipping the patterns before it
// and followed by a skip of those after it, gets the whole run's masks, and every part
// ends on the whole run's generator state (also a part of no patterns).
#[test]
fn dropout_shares_draw_the_whole_batchs_masks() {
    let x = Tensor::from_vec(&[7, 5], (0..35).map(|i| 1.0 + i as f32).collect()).unwrap();
    let build = || Sequential::<f32>::builder(&[5], 11).dropout(0.5).build().unwrap();
    let state = |net: &Sequential<f32>| net.named_buffers()[0].1.data().to_vec();
    let mut whole = build();
    whole.forward(&x).unwrap();
    let expected = whole.forward(&x).unwrap().clone();
    let splits: [&[usize]; 4] = [&[0, 7], &[0, 3, 7], &[0, 2, 2, 5, 7], &[0, 0, 1, 7]];
    for bounds in splits {
        let parts: Vec<_> = bounds.windows(2).map(|w| w[0]..w[1]).collect();
        let mut joined = Vec::new();
        for part in &parts {
            let mut net = build();
            net.forward(&x).unwrap();
            net.skip_patterns(part.start);
            if !part.is_empty() {
                let rows = x.data()[5 * part.start..5 * part.end].to_vec();
                let y = net.forward(&Tensor::from_vec(&[part.len(), 5], rows).unwrap()).unwrap();
                joined.extend_from_slice(y.data());
            }
            net.skip_patterns(7 - part.end);
            assert_eq!(state(&net), state(&whole), "generator after part {part:?} of {parts:?}");
        }
        assert_eq!(joined, expected.data(), "masks of parts {parts:?}");
    }
    // Evaluation draws nothing, and skips nothing.
    let mut evaluating = build();
    evaluating.set_training(false);
    let before = state(&evaluating);
    evaluating.skip_patterns(3);
    assert_eq!(state(&evaluating), before);
}
