use crate::init::SeededRng;
use crate::layer::{backward_batch, batch_of};
use crate::{BackwardReads, Layer, NnError, Tensor};
use nn_kernels::Element;
use rand::{Rng, SeedableRng};

/// Dropout with inverted scaling: in training each element is kept with probability
/// `1 − p` and scaled by `1/(1 − p)`, or zeroed; in evaluation it passes unchanged.
///
/// The masks come from the layer's own seeded generator (ChaCha8), whose seed and
/// position are a buffer of the layer: the same seed gives the same masks, and a run
/// resumed from a checkpoint draws the masks the uninterrupted run would have.
#[derive(Debug, Clone)]
pub struct Dropout<T: Element> {
    shape: Vec<usize>,
    p: f64,
    training: bool,
    rng: SeededRng,
    /// The generator's seed and position as 16-bit pieces (exact in f32), for
    /// checkpoints; written before every forward pass, read back after a load.
    state: Tensor<T>,
    /// Per element of the last forward batch: the factor it was multiplied by.
    mask: Vec<T>,
}

/// u16 pieces of the seed (4) and of the word position (8).
const STATE_LEN: usize = 12;

/// The generator's 32-bit words one mask draw (`gen::<f64>`, from a u64) consumes;
/// the tests of `skip_patterns` check it against the forward pass.
const WORDS_PER_DRAW: u128 = 2;

impl<T: Element> Dropout<T> {
    /// Dropout of probability `p` on samples shaped `input_shape`, its generator
    /// seeded from `rng`.
    ///
    /// # Errors
    /// [`NnError::InvalidArgument`] for `p` outside `[0, 1)`.
    pub fn new<R: Rng>(input_shape: &[usize], p: f64, rng: &mut R) -> Result<Self, NnError> {
        if !(0.0..1.0).contains(&p) {
            return Err(NnError::InvalidArgument {
                what: "dropout probability",
                details: format!("{p} is not in [0, 1)"),
            });
        }
        let rng = SeededRng::from_seed(seed_bytes(rng.gen()));
        let mut layer = Self {
            shape: input_shape.to_vec(),
            p,
            training: true,
            rng,
            state: Tensor::zeros(&[STATE_LEN])?,
            mask: Vec::new(),
        };
        layer.save_rng();
        Ok(layer)
    }

    /// The generator's seed and position into the state buffer.
    fn save_rng(&mut self) {
        let seed = u64::from_le_bytes(self.rng.get_seed()[..8].try_into().expect("8 bytes"));
        let pieces = (0..4)
            .map(|i| (seed >> (16 * i)) as u16)
            .chain((0..8).map(|i| (self.rng.get_word_pos() >> (16 * i)) as u16));
        for (slot, piece) in self.state.data_mut().iter_mut().zip(pieces) {
            *slot = T::from_f64(piece as f64);
        }
    }

    /// The generator as the state buffer describes it (after a checkpoint was loaded).
    fn load_rng(&mut self) -> Result<(), NnError> {
        let mut pieces = [0u16; STATE_LEN];
        for (piece, &v) in pieces.iter_mut().zip(self.state.data()) {
            let v = v.as_f64();
            if !(0.0..=u16::MAX as f64).contains(&v) || v.fract() != 0.0 {
                return Err(NnError::InvalidArgument { what: "dropout generator state", details: format!("{v}") });
            }
            *piece = v as u16;
        }
        let seed = (0..4).fold(0u64, |s, i| s | (pieces[i] as u64) << (16 * i));
        let word_pos = (0..8).fold(0u128, |w, i| w | (pieces[4 + i] as u128) << (16 * i));
        if self.rng.get_word_pos() != word_pos || self.rng.get_seed() != seed_bytes(seed) {
            self.rng = SeededRng::from_seed(seed_bytes(seed));
            self.rng.set_word_pos(word_pos);
        }
        Ok(())
    }
}

/// A 32-byte ChaCha seed made of `seed` and zeros, so that the 8 bytes saved in the
/// state buffer re-create the generator exactly.
fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes
}

impl<T: Element> Layer<T> for Dropout<T> {
    fn kind(&self) -> &'static str {
        "dropout"
    }

    fn input_shape(&self) -> &[usize] {
        &self.shape
    }

    fn output_shape(&self) -> &[usize] {
        &self.shape
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn skip_patterns(&mut self, patterns: usize) {
        if !self.training || self.p == 0.0 || patterns == 0 {
            return;
        }
        // A state that fails to load is reported by the next forward pass.
        if self.load_rng().is_ok() {
            let draws = patterns as u128 * self.shape.iter().product::<usize>() as u128;
            self.rng.set_word_pos(self.rng.get_word_pos() + draws * WORDS_PER_DRAW);
            self.save_rng();
        }
    }

    fn backward_reads(&self) -> BackwardReads {
        // It keeps its mask.
        BackwardReads::NEITHER
    }

    fn forward(&mut self, input: &Tensor<T>, output: &mut Tensor<T>) -> Result<(), NnError> {
        let batch = batch_of("dropout forward", input, &self.shape)?;
        output.set_batch_shape(batch, &self.shape)?;
        if !self.training || self.p == 0.0 {
            output.data_mut().copy_from_slice(input.data());
            self.mask.clear();
            return Ok(());
        }
        self.load_rng()?;
        let keep = T::from_f64(1.0 / (1.0 - self.p));
        self.mask.clear();
        self.mask.extend((0..input.len()).map(|_| if self.rng.gen::<f64>() < self.p { T::zero() } else { keep }));
        self.save_rng();
        for ((y, &x), &m) in output.data_mut().iter_mut().zip(input.data()).zip(&self.mask) {
            *y = x * m;
        }
        Ok(())
    }

    fn backward(
        &mut self,
        input: &Tensor<T>,
        output: &Tensor<T>,
        grad_output: &Tensor<T>,
        grad_input: Option<&mut Tensor<T>>,
    ) -> Result<(), NnError> {
        let batch = backward_batch(self, input, output, grad_output)?;
        let Some(dx) = grad_input else { return Ok(()) };
        dx.set_batch_shape(batch, &self.shape)?;
        if self.mask.is_empty() {
            dx.data_mut().copy_from_slice(grad_output.data());
        } else {
            for ((dx, &g), &m) in dx.data_mut().iter_mut().zip(grad_output.data()).zip(&self.mask) {
                *dx = g * m;
            }
        }
        Ok(())
    }

    fn buffers(&self) -> Vec<(&'static str, &Tensor<T>)> {
        vec![("rng", &self.state)]
    }

    fn buffers_mut(&mut self) -> Vec<(&'static str, &mut Tensor<T>)> {
        vec![("rng", &mut self.state)]
    }
}
