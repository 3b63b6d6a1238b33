use super::reference::gemm_reference;
use super::*;
use proptest::prelude::*;

fn filled(len: usize, seed: u64) -> Vec<f64> {
    // A small LCG: deterministic, non-repeating enough for test data.
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

fn check(ta: Transpose, tb: Transpose, m: usize, n: usize, k: usize, beta: f64) {
    let a = filled(m * k, 1);
    let b = filled(k * n, 2);
    let mut c = filled(m * n, 3);
    let mut expected = c.clone();
    gemm(ta, tb, m, n, k, 0.5, &a, &b, beta, &mut c).unwrap();
    gemm_reference(ta, tb, m, n, k, 0.5, &a, &b, beta, &mut expected);
    for (i, (x, y)) in c.iter().zip(&expected).enumerate() {
        assert!((x - y).abs() <= 1e-12 * (1.0 + y.abs()) * k as f64, "{ta:?}{tb:?} {m}x{n}x{k} at {i}: {x} vs {y}");
    }
}

const ALL: [(Transpose, Transpose); 4] = [
    (Transpose::No, Transpose::No),
    (Transpose::Yes, Transpose::No),
    (Transpose::No, Transpose::Yes),
    (Transpose::Yes, Transpose::Yes),
];

#[test]
fn matches_reference_small_and_parallel_sizes() {
    for (ta, tb) in ALL {
        check(ta, tb, 3, 5, 7, 0.0);
        check(ta, tb, 3, 5, 7, 1.0);
        // Large enough to take the parallel path: tall (row split), wide and square
        // (column split).
        check(ta, tb, 200, 70, 90, 0.25);
        check(ta, tb, 50, 230, 100, 1.0);
        check(ta, tb, 160, 160, 48, 0.5);
    }
}

#[test]
fn beta_zero_ignores_nan_in_c() {
    let mut c = vec![f32::NAN; 4];
    gemm(Transpose::No, Transpose::No, 2, 2, 1, 1.0, &[1.0, 2.0], &[3.0, 4.0], 0.0, &mut c).unwrap();
    assert_eq!(c, vec![3.0, 4.0, 6.0, 8.0]);
}

#[test]
fn wrong_lengths_are_errors() {
    let mut c = vec![0.0f32; 4];
    let err = gemm(Transpose::No, Transpose::No, 2, 2, 2, 1.0, &[1.0; 3], &[1.0; 4], 0.0, &mut c);
    assert_eq!(err, Err(KernelError::BufferLength { what: "gemm: A", expected: 4, got: 3 }));
}

#[test]
fn bit_identical_across_thread_counts() {
    // Row blocks, column blocks (wide and square), and one call of the `gemm` crate
    // on its own threads.
    for (m, n, k) in [(300, 260, 200), (64, 700, 300), (300, 300, 100), (520, 600, 130)] {
        bit_identical_for(m, n, k);
    }
}

/// C computed on 1, 2 and 3 threads is the same to the last bit.
fn bit_identical_for(m: usize, n: usize, k: usize) {
    let a: Vec<f32> = filled(m * k, 4).into_iter().map(|v| v as f32).collect();
    let b: Vec<f32> = filled(k * n, 5).into_iter().map(|v| v as f32).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut c = vec![0.0f32; m * n];
        pool.install(|| gemm(Transpose::No, Transpose::Yes, m, n, k, 1.0, &a, &b[..k * n], 0.0, &mut c)).unwrap();
        c
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

proptest! {
    #[test]
    fn prop_matches_reference(m in 1usize..40, n in 1usize..40, k in 1usize..40, t in 0usize..4, beta in prop::sample::select(vec![0.0, 1.0, -0.5])) {
        let (ta, tb) = ALL[t];
        check(ta, tb, m, n, k, beta);
    }
}

proptest! {
    #[test]
    fn balanced_blocks_cover_the_length_in_aligned_even_pieces(len in 1usize..5000) {
        let blocks: Vec<_> = balanced_blocks(len).collect();
        prop_assert!(!blocks.is_empty() && blocks.len() <= MAX_BLOCKS);
        prop_assert_eq!(blocks[0].start, 0);
        prop_assert_eq!(blocks[blocks.len() - 1].end, len);
        for pair in blocks.windows(2) {
            prop_assert_eq!(pair[0].end, pair[1].start);
            prop_assert!(pair[0].len().is_multiple_of(SPLIT_ALIGN));
        }
        let units: Vec<usize> = blocks.iter().map(|b| b.len().div_ceil(SPLIT_ALIGN)).collect();
        prop_assert!(units.iter().max().unwrap() - units.iter().min().unwrap() <= 1, "{:?}", blocks);
    }
}
