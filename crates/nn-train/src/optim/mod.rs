//! Optimizers: how Step 4's summed gradient becomes a weight update.
//!
//! Each optimizer reads [`Param::grad`] (the `Σ_p ∂⁽ᵖ⁾w` of a minibatch, or its mean
//! when the loss uses [`Reduction::Mean`](nn_core::Reduction)) and updates
//! [`Param::value`]. State (momentum, moment estimates) is kept per parameter, in the
//! order of `Sequential::params_mut`, and can be saved in a checkpoint.

mod adam;
mod schedule;
mod sgd;

pub use adam::Adam;
pub use schedule::LrSchedule;
pub use sgd::Sgd;

use crate::TrainError;
use nn_core::{Element, Param, Tensor};

/// The state of an optimizer, for checkpoints: scalar settings and counters, and one
/// buffer per (slot, parameter index).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OptimizerState<T: Element> {
    /// Named scalars, e.g. `("lr", 0.01)`, `("step", 120)`.
    pub scalars: Vec<(String, f64)>,
    /// Named buffers, `"{slot}.{parameter index}"`, e.g. `"velocity.0"`.
    pub buffers: Vec<(String, Tensor<T>)>,
}

impl<T: Element> OptimizerState<T> {
    /// The scalar called `name`.
    ///
    /// # Errors
    /// [`TrainError::OptimizerState`] when the state has no such scalar.
    pub fn scalar(&self, name: &str) -> Result<f64, TrainError> {
        self.scalars
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, v)| v)
            .ok_or_else(|| TrainError::OptimizerState { details: format!("missing scalar {name:?}") })
    }
}

impl<T: Element> OptimizerState<T> {
    /// The scalar called `name`, or `default` when the state (written by an older
    /// version) has none.
    pub fn scalar_or(&self, name: &str, default: f64) -> f64 {
        self.scalars.iter().find(|(n, _)| n == name).map_or(default, |&(_, v)| v)
    }
}

/// The weight decay a parameter gets: none for biases and normalisation parameters
/// when decay is for weights only.
pub(crate) fn decay_for<T>(param: &Param<T>, weight_decay: f64, weights_only: bool) -> f64 {
    if weights_only && param.role != nn_core::ParamRole::Weight {
        0.0
    } else {
        weight_decay
    }
}

/// Updates parameters from their gradients.
pub trait Optimizer<T: Element>: Send {
    /// A short name ("sgd", "adam", "adamw").
    fn name(&self) -> &'static str;

    /// The learning rate η used by the next step.
    fn learning_rate(&self) -> f64;

    /// Sets η (schedules call this at the start of each epoch).
    fn set_learning_rate(&mut self, lr: f64);

    /// One update of every parameter from its gradient.
    ///
    /// # Errors
    /// [`TrainError`] when the parameters are not those the optimizer's buffers were made
    /// for (count or length).
    fn step(&mut self, params: &mut [&mut Param<T>]) -> Result<(), TrainError>;

    /// Checks every hyper-parameter's domain (a learning rate that is finite and not
    /// negative, a momentum in `[0, 1)`, …). The trainer calls it before training, and
    /// [`load_state`](Self::load_state) before it accepts a saved state.
    ///
    /// # Errors
    /// [`TrainError::Config`] naming the hyper-parameter and its value.
    fn validate(&self) -> Result<(), TrainError> {
        Ok(())
    }

    /// The state to save.
    fn state(&self) -> OptimizerState<T>;

    /// Restores a saved state for these parameters, checking every buffer's shape.
    ///
    /// # Errors
    /// [`TrainError::OptimizerState`] when the state is of another optimizer or a buffer
    /// does not fit; the optimizer is then unchanged.
    fn load_state(&mut self, state: &OptimizerState<T>, params: &[&Param<T>]) -> Result<(), TrainError>;
}

/// `Ok` when `value` lies in the domain `ok` describes as `domain`, else
/// [`TrainError::Config`] naming `what`.
pub(crate) fn check_domain(
    what: &'static str,
    value: f64,
    domain: &str,
    ok: impl Fn(f64) -> bool,
) -> Result<(), TrainError> {
    if value.is_finite() && ok(value) {
        Ok(())
    } else {
        Err(TrainError::Config { what, details: format!("{value}: must be {domain}") })
    }
}

/// Allocates zero buffers shaped like the parameters on first use, and checks on later
/// steps that the parameter list did not change.
pub(crate) fn ensure_buffers<T: Element>(
    buffers: &mut Vec<Tensor<T>>,
    params: &[&mut Param<T>],
) -> Result<(), TrainError> {
    if buffers.is_empty() {
        for p in params {
            buffers.push(Tensor::zeros(p.value.shape())?);
        }
    }
    check_shapes(buffers, params.iter().map(|p| p.value.shape()))
}

fn check_shapes<'a, T: Element>(
    buffers: &[Tensor<T>],
    shapes: impl ExactSizeIterator<Item = &'a [usize]>,
) -> Result<(), TrainError> {
    if buffers.len() != shapes.len() {
        return Err(TrainError::OptimizerState {
            details: format!(
                "state holds {} buffers per slot but there are {} parameters",
                buffers.len(),
                shapes.len()
            ),
        });
    }
    for (i, (b, shape)) in buffers.iter().zip(shapes).enumerate() {
        if b.shape() != shape {
            return Err(TrainError::OptimizerState {
                details: format!("buffer for parameter {i} has shape {:?}, parameter has {shape:?}", b.shape()),
            });
        }
    }
    Ok(())
}

/// The buffers of one slot from a saved state, in parameter order, checked against
/// the parameters. An empty slot (saved before any step) gives no buffers.
pub(crate) fn load_slot<T: Element>(
    state: &OptimizerState<T>,
    slot: &str,
    params: &[&Param<T>],
) -> Result<Vec<Tensor<T>>, TrainError> {
    let prefix = format!("{slot}.");
    let found: Vec<&(String, Tensor<T>)> = state.buffers.iter().filter(|(n, _)| n.starts_with(&prefix)).collect();
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let buffers: Vec<Tensor<T>> = (0..params.len())
        .map(|i| {
            let name = format!("{slot}.{i}");
            found
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| TrainError::OptimizerState { details: format!("missing buffer {name:?}") })
        })
        .collect::<Result<_, _>>()?;
    if found.len() != params.len() {
        return Err(TrainError::OptimizerState {
            details: format!("slot {slot:?} has {} buffers for {} parameters", found.len(), params.len()),
        });
    }
    check_shapes(&buffers, params.iter().map(|p| p.value.shape()))?;
    Ok(buffers)
}

pub(crate) fn save_slot<'a, T: Element>(
    slot: &str,
    buffers: &'a [Tensor<T>],
) -> impl Iterator<Item = (String, Tensor<T>)> + 'a {
    let slot = slot.to_string();
    buffers.iter().enumerate().map(move |(i, b)| (format!("{slot}.{i}"), b.clone()))
}
