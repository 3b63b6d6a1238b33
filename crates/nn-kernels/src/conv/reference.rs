//! The convolution written straight from the source's formula (SPEC §3), one output
//! cell at a time. Slow on purpose: it is the definition the fast kernels are tested
//! against, and the naive baseline in benchmarks.

use super::{ConvProblem, KernelMode};
use crate::index::Odometer;
use crate::Element;

/// `y[n, o, β] = Σ_c Σ_α x′[n, c, γ] · w[o, c, α] + b[o]`, with
/// `γ_i = s_i·β_i + f_i − p_i − α_i − 1` for [`KernelMode::Convolution`] and
/// `γ_i = s_i·β_i − p_i + α_i` for cross-correlation, where `p_i` is the padding
/// before the input, and `x′ = pad_value` outside `0 ≤ γ_i < μ_i`.
///
/// Returns y as `[batch, C_out, v…]`. Panics on inconsistent lengths (test helper).
pub fn conv_forward_reference<T: Element>(
    problem: &ConvProblem,
    batch: usize,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    pad_value: T,
) -> Vec<T> {
    let g = problem.geometry();
    let (mu, f, s) = (g.input(), g.filter(), g.stride());
    let flat = |idx: &[isize], shape: &[usize]| -> usize {
        idx.iter().zip(shape).fold(0usize, |acc, (&i, &len)| acc * len + i as usize)
    };
    let mut y = Vec::with_capacity(batch * problem.output_image_len());
    for n in 0..batch {
        for o in 0..problem.out_channels() {
            let mut betas = Odometer::new(g.output());
            while let Some(beta) = betas.current() {
                let mut acc = bias.map_or(T::zero(), |b| b[o]);
                for c in 0..problem.in_channels() {
                    let mut alphas = Odometer::new(f);
                    while let Some(alpha) = alphas.current() {
                        let gamma: Vec<isize> = (0..g.rank())
                            .map(|i| {
                                let (s, b, a, f, p) = (
                                    s[i] as isize,
                                    beta[i] as isize,
                                    alpha[i] as isize,
                                    f[i] as isize,
                                    g.padding()[i].before as isize,
                                );
                                match g.mode() {
                                    KernelMode::Convolution => s * b + f - p - a - 1,
                                    KernelMode::CrossCorrelation => s * b - p + a,
                                }
                            })
                            .collect();
                        let inside = gamma.iter().zip(mu).all(|(&gm, &m)| 0 <= gm && gm < m as isize);
                        let x_prime = if inside {
                            x[(n * problem.in_channels() + c) * g.input_len() + flat(&gamma, mu)]
                        } else {
                            pad_value
                        };
                        let alpha_i: Vec<isize> = alpha.iter().map(|&a| a as isize).collect();
                        let w_index = (o * problem.in_channels() + c) * g.filter_len() + flat(&alpha_i, f);
                        acc += x_prime * w[w_index];
                        alphas.advance();
                    }
                }
                y.push(acc);
                betas.advance();
            }
        }
    }
    y
}
