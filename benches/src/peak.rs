//! The machine's f32 fused-multiply-add peak: independent FMA chains on every vector
//! register the loop can keep busy, on one thread and on all of them at once.

use std::time::Instant;

/// The instruction set the probe used and what it measured.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Peak {
    /// "avx512f", "avx2+fma" or "scalar".
    pub isa: &'static str,
    /// GFLOP/s on one thread.
    pub one_thread: f64,
    /// GFLOP/s with every core running the probe.
    pub all_threads: f64,
    /// The thread count used for `all_threads`.
    pub threads: usize,
}

/// Independent accumulators: more than FMA latency (4 cycles) × ports (2), so the
/// loop is bound by throughput, not latency.
const CHAINS: usize = 12;
const ITERS: u64 = 20_000_000;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let mut out = [0.0f32; 8];
    acc.iter()
        .map(|&v| {
            _mm256_storeu_ps(out.as_mut_ptr(), v);
            out.iter().sum::<f32>()
        })
        .sum()
}

/// The best FMA loop this CPU runs, with its FLOPs per iteration.
fn kernel() -> (&'static str, fn(u64) -> f32, f64) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was just detected on this CPU.
            return ("avx512f", |n| unsafe { fma_avx512(n) }, (CHAINS * 16 * 2) as f64);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA were just detected on this CPU.
            return ("avx2+fma", |n| unsafe { fma_avx2(n) }, (CHAINS * 8 * 2) as f64);
        }
    }
    ("scalar", fma_scalar, (CHAINS * 2) as f64)
}

/// The portable fallback (and what the tests compare the SIMD loops with).
fn fma_scalar(iters: u64) -> f32 {
    let mut acc = [1.0f32; CHAINS];
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = r.mul_add(0.999_999, 1e-7);
        }
    }
    acc.iter().sum()
}

fn run_once(f: fn(u64) -> f32, flops_per_iter: f64, iters: u64) -> f64 {
    let t = Instant::now();
    std::hint::black_box(f(std::hint::black_box(iters)));
    flops_per_iter * iters as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Measures the peak: the best of `reps` runs on one thread, and the best of `reps`
/// runs where every thread runs the loop at once (summed).
pub fn measure(reps: usize, threads: usize) -> Peak {
    let (isa, f, flops) = kernel();
    let one_thread = (0..reps).map(|_| run_once(f, flops, ITERS)).fold(0.0, f64::max);
    let all_threads = (0..reps)
        .map(|_| {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads).map(|_| s.spawn(move || run_once(f, flops, ITERS))).collect();
                handles.into_iter().map(|h| h.join().expect("probe thread")).sum::<f64>()
            })
        })
        .fold(0.0, f64::max);
    Peak { isa, one_thread, all_threads, threads }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_available_kernel_computes_the_same_recurrence() {
        // Exercise the SIMD kernels (and the scalar fallback) on a few iterations: each
        // lane computes r ← r·a + b from 1, so all agree with the scalar value.
        let expected = {
            let mut r = 1.0f32;
            for _ in 0..10 {
                r = r.mul_add(0.999_999, 1e-7);
            }
            r
        };
        let (_, f, flops) = super::kernel();
        for (f, lanes) in [(f, flops / 2.0), (super::fma_scalar as fn(u64) -> f32, super::CHAINS as f64)] {
            let sum = f(10);
            assert!((sum as f64 - expected as f64 * lanes).abs() < 1e-3 * lanes, "{sum} vs {expected}×{lanes}");
        }
    }
}
