use crate::NnError;
use nn_kernels::Element;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, Uniform};

/// The random number generator behind every seeded operation: ChaCha8, whose stream
/// is fixed for a given seed on every platform.
pub type SeededRng = rand_chacha::ChaCha8Rng;

/// A generator from a seed: the same seed always gives the same numbers.
pub fn seeded_rng(seed: u64) -> SeededRng {
    SeededRng::seed_from_u64(seed)
}

/// How to draw initial weights, from the layer's fan-in (inputs per output) and
/// fan-out (outputs per input).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Init {
    /// He (Kaiming) uniform: U(−√(6/fan_in), √(6/fan_in)). Suits ReLU.
    #[default]
    HeUniform,
    /// He (Kaiming) normal: N(0, 2/fan_in).
    HeNormal,
    /// He (Kaiming) normal over the fan-out: N(0, 2/fan_out), PyTorch's
    /// `kaiming_normal_(mode="fan_out")` (ResNets' convolutions).
    HeNormalFanOut,
    /// Glorot (Xavier) uniform: U(−√(6/(fan_in+fan_out)), +…). Suits tanh and sigmoid.
    GlorotUniform,
    /// Glorot (Xavier) normal: N(0, 2/(fan_in+fan_out)).
    GlorotNormal,
    /// Uniform on (−bound, bound).
    Uniform {
        /// Half-width of the interval.
        bound: f64,
    },
    /// Every weight equal to a constant.
    Constant(f64),
}

impl Init {
    /// Fills `out` with draws from `rng`.
    ///
    /// # Errors
    /// [`NnError::InvalidArgument`] for a bound or constant that is not finite.
    pub fn fill<T: Element, R: Rng>(
        &self,
        fan_in: usize,
        fan_out: usize,
        rng: &mut R,
        out: &mut [T],
    ) -> Result<(), NnError> {
        let finite = |what: &'static str, value: f64| {
            if value.is_finite() {
                Ok(value)
            } else {
                Err(NnError::InvalidArgument { what, details: format!("{value} is not finite") })
            }
        };
        let (fan_in, fan_sum) = (fan_in.max(1) as f64, (fan_in + fan_out).max(1) as f64);
        let uniform = |bound: f64, rng: &mut R, out: &mut [T]| {
            let dist = Uniform::new_inclusive(-bound, bound);
            out.iter_mut().for_each(|w| *w = T::from_f64(dist.sample(rng)));
        };
        let normal = |std: f64, rng: &mut R, out: &mut [T]| {
            let dist = Normal::new(0.0, std).expect("standard deviation is finite and positive");
            out.iter_mut().for_each(|w| *w = T::from_f64(dist.sample(rng)));
        };
        match *self {
            Init::HeUniform => uniform((6.0 / fan_in).sqrt(), rng, out),
            Init::HeNormal => normal((2.0 / fan_in).sqrt(), rng, out),
            Init::HeNormalFanOut => normal((2.0 / fan_out.max(1) as f64).sqrt(), rng, out),
            Init::GlorotUniform => uniform((6.0 / fan_sum).sqrt(), rng, out),
            Init::GlorotNormal => normal((2.0 / fan_sum).sqrt(), rng, out),
            Init::Uniform { bound } => uniform(finite("Init::Uniform bound", bound)?.abs(), rng, out),
            Init::Constant(c) => out.fill(T::from_f64(finite("Init::Constant", c)?)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_and_right_scale() {
        let mut a = vec![0.0f64; 10_000];
        let mut b = vec![0.0f64; 10_000];
        Init::HeUniform.fill(50, 10, &mut seeded_rng(7), &mut a).unwrap();
        Init::HeUniform.fill(50, 10, &mut seeded_rng(7), &mut b).unwrap();
        assert_eq!(a, b);
        let bound = (6.0f64 / 50.0).sqrt();
        assert!(a.iter().all(|w| w.abs() <= bound));
        let var = a.iter().map(|w| w * w).sum::<f64>() / a.len() as f64;
        assert!((var - 2.0 / 50.0).abs() < 0.004, "He variance 2/fan_in, got {var}");

        Init::GlorotNormal.fill(30, 70, &mut seeded_rng(1), &mut a).unwrap();
        let var = a.iter().map(|w| w * w).sum::<f64>() / a.len() as f64;
        assert!((var - 0.02).abs() < 0.002, "Glorot variance 2/(in+out), got {var}");
        Init::HeNormal.fill(8, 1, &mut seeded_rng(2), &mut b).unwrap();
        let var = b.iter().map(|w| w * w).sum::<f64>() / b.len() as f64;
        assert!((var - 0.25).abs() < 0.02, "He normal variance 2/fan_in, got {var}");
        Init::HeNormalFanOut.fill(1, 16, &mut seeded_rng(3), &mut b).unwrap();
        let var = b.iter().map(|w| w * w).sum::<f64>() / b.len() as f64;
        assert!((var - 0.125).abs() < 0.01, "He normal variance 2/fan_out, got {var}");
    }
}
