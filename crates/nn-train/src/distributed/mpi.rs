//! [`Collective`] over MPI (the `mpi` crate over the system's MPI library): every
//! process of the job (`MPI_COMM_WORLD`) trains together.

use super::Collective;
use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use std::cell::RefCell;

/// The processes of an MPI job. Create it once, first thing in `main`, and keep it to
/// the end: dropping it finalises MPI. Every collective call happens on the thread that
/// created it.
pub struct MpiWorld {
    world: SimpleCommunicator,
    /// The send side of the sums (MPI's reductions read and write separate buffers).
    send_f32: RefCell<Vec<f32>>,
    send_f64: RefCell<Vec<f64>>,
    // Declared last: dropped after the communicator, it finalises MPI.
    _universe: Universe,
}

impl std::fmt::Debug for MpiWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiWorld").field("rank", &self.rank()).field("size", &self.size()).finish()
    }
}

impl MpiWorld {
    /// Initialises MPI; `None` when this process initialised it before.
    pub fn init() -> Option<Self> {
        let universe = mpi::initialize()?;
        let world = universe.world();
        Some(Self { world, send_f32: RefCell::default(), send_f64: RefCell::default(), _universe: universe })
    }

    /// Ends every process of the job, exit code 1, after printing `message` with this
    /// process's rank to standard error: the way out for an error on one process,
    /// which the others would otherwise wait for forever.
    pub fn abort(&self, message: &str) -> ! {
        eprintln!("error on process {} of {}: {message}", self.rank(), self.size());
        self.world.abort(1)
    }

    /// Waits until every process has called this.
    pub fn barrier(&self) {
        mpi::collective::CommunicatorCollectives::barrier(&self.world);
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn sum_f32(&self, values: &mut [f32]) {
        let mut send = self.send_f32.borrow_mut();
        send.clear();
        send.extend_from_slice(values);
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
    }

    fn sum_f64(&self, values: &mut [f64]) {
        let mut send = self.send_f64.borrow_mut();
        send.clear();
        send.extend_from_slice(values);
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
    }

    fn min_max(&self, value: u64) -> (u64, u64) {
        let (mut low, mut high) = (0u64, 0u64);
        self.world.all_reduce_into(&value, &mut low, SystemOperation::min());
        self.world.all_reduce_into(&value, &mut high, SystemOperation::max());
        (low, high)
    }
}
