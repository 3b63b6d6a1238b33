//! Data-parallel training over several processes (SPEC §1, Step 4: the update uses
//! `Σ_p ∂w` over the patterns of a minibatch, and a sum split across processes is one
//! all-reduce).
//!
//! Every process holds the whole network and the whole dataset, shuffles with the
//! same seed and takes its [`share`] of each global minibatch; after the backward
//! pass the gradient sums are added across processes, so every process applies the
//! same update to the same weights. With [`Reduction::Mean`](nn_core::Reduction) the
//! divisor is the global batch size. The trainer checks at every epoch's end that all
//! processes hold the same weights (a checksum), and decides every stopping rule on
//! figures that are the same on all of them.
//!
//! [`Trainer::fit_on`](crate::Trainer::fit_on) takes the processes as a [`Collective`]:
//! [`SingleProcess`] alone, or an MPI communicator (`MpiWorld`, feature `mpi`).

#[cfg(feature = "mpi")]
mod mpi;
mod step;

#[cfg(feature = "mpi")]
pub use self::mpi::MpiWorld;
pub(crate) use step::{
    agree_at_epoch_end, check_shares, distributed_step, LocalBatch, StepBuffers, StepOptions, StepOutcome,
};

use nn_core::{Element, Network};
use std::ops::Range;

/// The processes a run is spread over, and the collective operations the trainer
/// needs of them. Every process must call the same operations in the same order.
pub trait Collective {
    /// This process's index, `0..size()`.
    fn rank(&self) -> usize;

    /// How many processes train together (at least 1).
    fn size(&self) -> usize;

    /// Replaces `values` by their element-wise sum over all processes; every process
    /// receives the same bits.
    fn sum_f32(&self, values: &mut [f32]);

    /// [`sum_f32`](Self::sum_f32) for f64.
    fn sum_f64(&self, values: &mut [f64]);

    /// The smallest and the largest of `value` over all processes.
    fn min_max(&self, value: u64) -> (u64, u64);
}

/// One process alone: every collective operation is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn sum_f32(&self, _values: &mut [f32]) {}

    fn sum_f64(&self, _values: &mut [f64]) {}

    fn min_max(&self, value: u64) -> (u64, u64) {
        (value, value)
    }
}

/// The positions of a global minibatch of `len` patterns that process `rank` of
/// `size` trains on: consecutive runs, the first `len % size` processes taking one
/// pattern more (64 over 3: 22, 21, 21). A process may get none when `len < size`,
/// and gets none when `rank ≥ size` (a size of 0 counts as 1).
pub fn share(len: usize, rank: usize, size: usize) -> Range<usize> {
    let size = size.max(1);
    if rank >= size {
        return len..len;
    }
    let (base, extra) = (len / size, len % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// A checksum of the bits of every parameter and buffer (batch normalisation's running
/// statistics), in the network's order: equal on two processes exactly when (barring a
/// collision) their networks are bit-identical.
pub fn network_checksum<T: Element, N: Network<T> + ?Sized>(net: &N) -> u64 {
    // FNV-1a over the f64 bit patterns: cheap, order-sensitive, no dependency.
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let buffers = net.named_buffers();
    let tensors = net.params().into_iter().map(|p| &p.value).chain(buffers.iter().map(|(_, b)| *b));
    for tensor in tensors {
        for &v in tensor.data() {
            for byte in v.as_f64().to_bits().to_le_bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    hash
}

/// Adds `values` over all processes, as f32 when `T` is f32, else widened to f64
/// (exact for both types) in `wide`, a reusable buffer.
pub(crate) fn sum_elements<T: Element>(collective: &dyn Collective, values: &mut [T], wide: &mut Vec<f64>) {
    if let Some(values) = T::as_f32_mut(values) {
        return collective.sum_f32(values);
    }
    wide.clear();
    wide.extend(values.iter().map(|v| v.as_f64()));
    collective.sum_f64(wide);
    for (v, &w) in values.iter_mut().zip(wide.iter()) {
        *v = T::from_f64(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shares_of_64_over_3() {
        let shares: Vec<_> = (0..3).map(|r| share(64, r, 3)).collect();
        assert_eq!(shares, vec![0..22, 22..43, 43..64]);
    }

    proptest! {
        // The shares tile the batch in rank order and differ in length by at most one.
        #[test]
        fn shares_tile_the_batch(len in 0usize..500, size in 1usize..17) {
            let shares: Vec<_> = (0..size).map(|r| share(len, r, size)).collect();
            prop_assert_eq!(shares[0].start, 0);
            prop_assert_eq!(shares[size - 1].end, len);
            for pair in shares.windows(2) {
                prop_assert_eq!(pair[0].end, pair[1].start);
            }
            let lens: Vec<usize> = shares.iter().map(|r| r.len()).collect();
            prop_assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            prop_assert!(share(len, size, size).is_empty());
        }
    }
}
