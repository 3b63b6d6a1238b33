use super::{check_domain, decay_for, ensure_buffers, load_slot, save_slot, Optimizer, OptimizerState};
use crate::TrainError;
use nn_core::{Element, Param, Tensor};
use nn_kernels::elementwise::{sgd_update, SgdStep};

/// Stochastic gradient descent: `Δw = −η·g`, the source's update when the loss sums
/// over the minibatch. Optional momentum μ (`v ← μ·v + g`, `Δw = −η·v`), Nesterov
/// momentum (`Δw = −η·(g + μ·v)`), and L2 weight decay λ (`g ← g + λ·w`).
#[derive(Debug, Clone)]
pub struct Sgd<T: Element> {
    lr: f64,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    decay_weights_only: bool,
    velocity: Vec<Tensor<T>>,
}

impl<T: Element> Sgd<T> {
    /// Plain SGD with learning rate η.
    pub fn new(lr: f64) -> Self {
        Self { lr, momentum: 0.0, nesterov: false, weight_decay: 0.0, decay_weights_only: false, velocity: Vec::new() }
    }
    /// Heavy-ball momentum μ.
    pub fn momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }
    /// Nesterov momentum (needs a momentum above zero).
    pub fn nesterov(mut self, nesterov: bool) -> Self {
        self.nesterov = nesterov;
        self
    }
    /// L2 weight decay λ, added to the gradient.
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

impl<T: Element> Optimizer<T> for Sgd<T> {
    fn name(&self) -> &'static str {
        "sgd"
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn step(&mut self, params: &mut [&mut Param<T>]) -> Result<(), TrainError> {
        if self.momentum != 0.0 {
            ensure_buffers(&mut self.velocity, params)?;
        }
        for (i, p) in params.iter_mut().enumerate() {
            let weight_decay = decay_for(p, self.weight_decay, self.decay_weights_only);
            let step = SgdStep { lr: self.lr, momentum: self.momentum, nesterov: self.nesterov, weight_decay };
            let Param { value, grad, .. } = &mut **p;
            let velocity = self.velocity.get_mut(i).map_or(&mut [][..], |v| v.data_mut());
            sgd_update(step, value.data_mut(), grad.data(), velocity).map_err(nn_core::NnError::from)?;
        }
        Ok(())
    }

    fn state(&self) -> OptimizerState<T> {
        OptimizerState {
            scalars: vec![
                ("lr".into(), self.lr),
                ("momentum".into(), self.momentum),
                ("nesterov".into(), self.nesterov as u8 as f64),
                ("weight_decay".into(), self.weight_decay),
                ("decay_weights_only".into(), self.decay_weights_only as u8 as f64),
            ],
            buffers: save_slot("velocity", &self.velocity).collect(),
        }
    }

    fn load_state(&mut self, state: &OptimizerState<T>, params: &[&Param<T>]) -> Result<(), TrainError> {
        // Everything is read and checked before `self` changes: a bad state leaves
        // the optimizer as it was.
        let loaded = Self {
            lr: state.scalar("lr")?,
            momentum: state.scalar("momentum")?,
            nesterov: state.scalar("nesterov")? != 0.0,
            weight_decay: state.scalar("weight_decay")?,
            decay_weights_only: state.scalar_or("decay_weights_only", 0.0) != 0.0,
            velocity: load_slot(state, "velocity", params)?,
        };
        loaded.validate()?;
        *self = loaded;
        Ok(())
    }

    fn validate(&self) -> Result<(), TrainError> {
        check_domain("SGD learning rate", self.lr, "finite and at least 0", |v| v >= 0.0)?;
        check_domain("SGD momentum", self.momentum, "in [0, 1)", |v| (0.0..1.0).contains(&v))?;
        check_domain("SGD weight decay", self.weight_decay, "finite and at least 0", |v| v >= 0.0)?;
        if self.nesterov && self.momentum == 0.0 {
            return Err(TrainError::Config { what: "SGD Nesterov", details: "needs a momentum above 0".into() });
        }
        Ok(())
    }
}
