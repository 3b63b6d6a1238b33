//! Per-thread scratch buffers that survive between kernel calls, so a training step
//! in steady state neither allocates nor zero-fills its column matrices.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    static POOL: RefCell<HashMap<TypeId, Box<dyn Any>>> = RefCell::new(HashMap::new());
}

/// Runs `f` with `N` scratch vectors of this thread. Their lengths and contents are
/// whatever the last user left: callers size them with [`fit`] and overwrite every
/// element they read.
pub(crate) fn with_scratch<T: Copy + 'static, const N: usize, R>(f: impl FnOnce(&mut [Vec<T>; N]) -> R) -> R {
    let mut buffers: [Vec<T>; N] = POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let stack = pool.entry(TypeId::of::<T>()).or_insert_with(|| Box::new(Vec::<Vec<T>>::new()));
        let stack = stack.downcast_mut::<Vec<Vec<T>>>().expect("keyed by type");
        std::array::from_fn(|_| stack.pop().unwrap_or_default())
    });
    let result = f(&mut buffers);
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let stack =
            pool.get_mut(&TypeId::of::<T>()).and_then(|s| s.downcast_mut::<Vec<Vec<T>>>()).expect("created above");
        stack.extend(buffers);
    });
    result
}

/// Makes `buffer` exactly `len` long, growing (zero-filled) only past its old length;
/// existing contents are kept, not cleared.
pub(crate) fn fit<T: Copy + Default>(buffer: &mut Vec<T>, len: usize) -> &mut [T] {
    if buffer.len() < len {
        buffer.resize(len, T::default());
    }
    &mut buffer[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_per_thread_and_type() {
        let first = with_scratch::<f32, 2, _>(|[a, b]| {
            fit(a, 100).fill(1.0);
            fit(b, 10);
            a.as_ptr() as usize
        });
        let again = with_scratch::<f32, 1, _>(|[a]| {
            // The most recently returned buffer comes back first, contents kept.
            assert!(a.len() == 10 || a.len() == 100);
            a.as_ptr() as usize
        });
        assert!(again != 0 && first != 0);
        with_scratch::<f64, 1, _>(|[a]| assert!(a.is_empty()));
    }
}
