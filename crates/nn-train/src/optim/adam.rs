use super::{check_domain, decay_for, ensure_buffers, load_slot, save_slot, Optimizer, OptimizerState};
use crate::TrainError;
use nn_core::{Element, Param, Tensor};
use nn_kernels::elementwise::{adam_update, AdamStep};

/// Adam (Kingma & Ba): `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
/// `Δw = −η·m̂/(√v̂ + ε)` with bias-corrected `m̂, v̂`. Weight decay λ is either L2
/// (`g ← g + λw`, [`Adam::new`]) or decoupled (`w ← w − ηλw`, AdamW, [`Adam::adamw`]).
#[derive(Debug, Clone)]
pub struct Adam<T: Element> {
    lr: f64,
    beta1: f64,
    beta2: f64,
    epsilon: f64,
    weight_decay: f64,
    decoupled: bool,
    decay_weights_only: bool,
    step: u64,
    m: Vec<Tensor<T>>,
    v: Vec<Tensor<T>>,
}

impl<T: Element> Adam<T> {
    /// Adam with η and the usual defaults β₁ = 0.9, β₂ = 0.999, ε = 1e-8, no decay.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            decay_weights_only: false,
            step: 0,
            m: Vec::new(),
            v: Vec::new(),
        }
    }
    /// AdamW: Adam with decoupled weight decay λ.
    pub fn adamw(lr: f64, weight_decay: f64) -> Self {
        Self { weight_decay, decoupled: true, ..Self::new(lr) }
    }
    /// The moment decay rates β₁, β₂.
    pub fn betas(mut self, beta1: f64, beta2: f64) -> Self {
        (self.beta1, self.beta2) = (beta1, beta2);
        self
    }
    /// ε in the denominator.
    pub fn epsilon(mut self, epsilon: f64) -> Self {
        self.epsilon = epsilon;
        self
    }
    /// L2 weight decay (or decoupled decay for AdamW).
    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }
    /// Weight decay on weights only, not on biases and normalisation parameters (the
    /// usual recipe); by default every parameter decays.
    pub fn decay_weights_only(mut self, weights_only: bool) -> Self {
        self.decay_weights_only = weights_only;
        self
    }
}

impl<T: Element> Optimizer<T> for Adam<T> {
    fn name(&self) -> &'static str {
        if self.decoupled {
            "adamw"
        } else {
            "adam"
        }
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn step(&mut self, params: &mut [&mut Param<T>]) -> Result<(), TrainError> {
        ensure_buffers(&mut self.m, params)?;
        ensure_buffers(&mut self.v, params)?;
        self.step += 1;
        let t = self.step as i32;
        let correction = (1.0 - self.beta2.powi(t)).sqrt();
        for ((p, m), v) in params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
            let weight_decay = decay_for(p, self.weight_decay, self.decay_weights_only);
            let (l2, decay) = if self.decoupled { (0.0, self.lr * weight_decay) } else { (weight_decay, 0.0) };
            // Bias correction folded into the step size: η·√(1−β₂ᵗ)/(1−β₁ᵗ).
            let step = AdamStep {
                step_size: self.lr * correction / (1.0 - self.beta1.powi(t)),
                beta1: self.beta1,
                beta2: self.beta2,
                epsilon: self.epsilon * correction,
                l2,
                decay,
            };
            let Param { value, grad, .. } = &mut **p;
            adam_update(step, value.data_mut(), grad.data(), m.data_mut(), v.data_mut())
                .map_err(nn_core::NnError::from)?;
        }
        Ok(())
    }

    fn state(&self) -> OptimizerState<T> {
        OptimizerState {
            scalars: vec![
                ("lr".into(), self.lr),
                ("beta1".into(), self.beta1),
                ("beta2".into(), self.beta2),
                ("epsilon".into(), self.epsilon),
                ("weight_decay".into(), self.weight_decay),
                ("decoupled".into(), self.decoupled as u8 as f64),
                ("decay_weights_only".into(), self.decay_weights_only as u8 as f64),
                ("step".into(), self.step as f64),
            ],
            buffers: save_slot("m", &self.m).chain(save_slot("v", &self.v)).collect(),
        }
    }

    fn load_state(&mut self, state: &OptimizerState<T>, params: &[&Param<T>]) -> Result<(), TrainError> {
        // Everything is read and checked before `self` changes: a bad state leaves
        // the optimizer as it was.
        let step = state.scalar("step")?;
        check_domain("Adam step count", step, "a whole number from 0", |v| v >= 0.0 && v.fract() == 0.0)?;
        let loaded = Self {
            lr: state.scalar("lr")?,
            beta1: state.scalar("beta1")?,
            beta2: state.scalar("beta2")?,
            epsilon: state.scalar("epsilon")?,
            weight_decay: state.scalar("weight_decay")?,
            decoupled: state.scalar("decoupled")? != 0.0,
            decay_weights_only: state.scalar_or("decay_weights_only", 0.0) != 0.0,
            step: step as u64,
            m: load_slot(state, "m", params)?,
            v: load_slot(state, "v", params)?,
        };
        // Both moments exist once a step has been taken, and neither before.
        if loaded.m.is_empty() != loaded.v.is_empty() || (loaded.step > 0) == loaded.m.is_empty() {
            return Err(TrainError::OptimizerState {
                details: format!(
                    "{} first-moment and {} second-moment buffers after {} steps",
                    loaded.m.len(),
                    loaded.v.len(),
                    loaded.step
                ),
            });
        }
        loaded.validate()?;
        *self = loaded;
        Ok(())
    }

    fn validate(&self) -> Result<(), TrainError> {
        let unit = |v: f64| (0.0..1.0).contains(&v);
        check_domain("Adam learning rate", self.lr, "finite and at least 0", |v| v >= 0.0)?;
        check_domain("Adam beta1", self.beta1, "in [0, 1)", unit)?;
        check_domain("Adam beta2", self.beta2, "in [0, 1)", unit)?;
        check_domain("Adam epsilon", self.epsilon, "finite and above 0", |v| v > 0.0)?;
        check_domain("Adam weight decay", self.weight_decay, "finite and at least 0", |v| v >= 0.0)
    }
}
