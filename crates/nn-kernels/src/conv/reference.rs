//! The convolution written straight from the source's formula (SPEC §3), one output
//! cell at a time. Slow on purpose: it is the definition the fast kernels are tested
//! against, and the naive baseline in benchmarks.

use super::{ConvProblem, KernelMode};
use crate::index::Odometer;
use crate::Element;

/// `y[n, o, β] = Σ_c Σ_α x′[n, c, γ] · w[o, c, α] + b[o]`, c running over the input
/// channels of o's group (all of them with one group; w's second index counts from
/// the group's first), with
/// `γ_i = s_i·β_i + d_i·(f_i − 1 − α_i) − p_i` for [`KernelMode::Convolution`] and
/// `γ_i = s_i·β_i − p_i + d_i·α_i` for cross-correlation, where `p_i` is the padding
/// before the input and `d_i` the dilation (1 in the source), and `x′ = pad_value`
/// outside `0 ≤ γ_i < μ_i`.
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
    let (mu, f, s, d) = (g.input(), g.filter(), g.stride(), g.dilation());
    let flat = |idx: &[isize], shape: &[usize]| -> usize {
        idx.iter().zip(shape).fold(0usize, |acc, (&i, &len)| acc * len + i as usize)
    };
    let mut y = Vec::with_capacity(batch * problem.output_image_len());
    let group_in = problem.in_channels() / problem.groups();
    let group_out = problem.out_channels() / problem.groups();
    for n in 0..batch {
        for o in 0..problem.out_channels() {
            let first_in = o / group_out * group_in;
            let mut betas = Odometer::new(g.output());
            while let Some(beta) = betas.current() {
                let mut acc = bias.map_or(T::zero(), |b| b[o]);
                for c in first_in..first_in + group_in {
                    let mut alphas = Odometer::new(f);
                    while let Some(alpha) = alphas.current() {
                        let gamma: Vec<isize> = (0..g.rank())
                            .map(|i| {
                                let (s, b, a, f, p, d) = (
                                    s[i] as isize,
                                    beta[i] as isize,
                                    alpha[i] as isize,
                                    f[i] as isize,
                                    g.padding()[i].before as isize,
                                    d[i] as isize,
                                );
                                match g.mode() {
                                    KernelMode::Convolution => s * b + d * (f - 1 - a) - p,
                                    KernelMode::CrossCorrelation => s * b - p + d * a,
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
                        let w_index = (o * group_in + c - first_in) * g.filter_len() + flat(&alpha_i, f);
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
