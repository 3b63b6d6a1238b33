//! Batch statistics over a minibatch split across processes (synchronised batch
//! normalisation): while [`with_shared_statistics`] runs, batch normalisation in
//! training mode adds its per-channel sums across the processes before it divides,
//! so every process normalises with the whole minibatch's mean and variance, as one
//! process running the whole minibatch would.

use std::cell::Cell;
use std::ptr::NonNull;

/// Adds per-channel sums across the processes a minibatch is split over: every
/// process passes its own sums, in the same order, and receives the totals (the same
/// bits on every process).
pub trait StatisticsSum {
    /// Replaces `values` by their element-wise sum over all processes.
    fn sum(&self, values: &mut [f64]);
}

thread_local! {
    /// The sum installed on this thread by `with_shared_statistics`, if any.
    static INSTALLED: Cell<Option<NonNull<dyn StatisticsSum + 'static>>> = const { Cell::new(None) };
}

/// Puts back the previously installed sum when `with_shared_statistics` ends, also
/// by unwinding.
struct Restore(Option<NonNull<dyn StatisticsSum + 'static>>);

impl Drop for Restore {
    fn drop(&mut self) {
        INSTALLED.with(|installed| installed.set(self.0));
    }
}

/// Runs `f` with `sum` installed on this thread: every batch normalisation that runs
/// a training forward or backward pass on this thread inside `f` shares its batch
/// statistics through it. Every process must run the same layers (the same number
/// and sizes of sums), and batch normalisation must run on the calling thread (it
/// does: networks run their layers on the thread that called them).
pub fn with_shared_statistics<R>(sum: &dyn StatisticsSum, f: impl FnOnce() -> R) -> R {
    // SAFETY: the lifetime is erased only to store the pointer in the thread-local;
    // it is dereferenced only by `add_across_processes` on this thread while `f`
    // runs, within the borrow of `sum`, and `Restore` takes it out again before this
    // function returns or unwinds.
    let erased: &'static (dyn StatisticsSum + 'static) = unsafe { std::mem::transmute(sum) };
    let previous = INSTALLED.with(|installed| installed.replace(Some(NonNull::from(erased))));
    let _restore = Restore(previous);
    f()
}

/// Whether a sum is installed on this thread.
pub fn statistics_are_shared() -> bool {
    INSTALLED.with(|installed| installed.get().is_some())
}

/// Adds `values` across processes through the installed sum; leaves them alone when
/// none is installed (one process).
pub(crate) fn add_across_processes(values: &mut [f64]) {
    if let Some(sum) = INSTALLED.with(Cell::get) {
        // SAFETY: installed by `with_shared_statistics`, whose `sum` borrow is alive
        // while the pointer is installed (see there).
        unsafe { sum.as_ref() }.sum(values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    /// Adds `self.0` to every value: a stand-in for the other processes.
    struct AddOthers(f64);

    impl StatisticsSum for AddOthers {
        fn sum(&self, values: &mut [f64]) {
            values.iter_mut().for_each(|v| *v += self.0);
        }
    }

    // The installed sum is the innermost one, is gone after its scope (also after a
    // panic inside it), and other threads never see it.
    #[test]
    fn installed_sums_nest_and_are_taken_out() {
        let mut values = [1.0, 2.0];
        add_across_processes(&mut values);
        assert_eq!(values, [1.0, 2.0], "nothing installed");
        let (outer, inner) = (AddOthers(10.0), AddOthers(100.0));
        with_shared_statistics(&outer, || {
            add_across_processes(&mut values);
            assert_eq!(values, [11.0, 12.0]);
            with_shared_statistics(&inner, || add_across_processes(&mut values));
            assert_eq!(values, [111.0, 112.0]);
            add_across_processes(&mut values);
            assert_eq!(values, [121.0, 122.0], "the outer sum is back");
            assert!(!std::thread::spawn(statistics_are_shared).join().unwrap(), "another thread");
        });
        assert!(!statistics_are_shared());
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            let short_lived = AddOthers(1.0);
            with_shared_statistics(&short_lived, || panic!("inside"));
        }));
        assert!(panicked.is_err());
        assert!(!statistics_are_shared(), "taken out while unwinding");
        add_across_processes(&mut values);
        assert_eq!(values, [121.0, 122.0]);
    }
}
