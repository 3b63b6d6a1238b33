//! How tensor storage is allocated.
//!
//! A large buffer asks Linux for transparent huge pages over its 2 MiB-aligned
//! interior before any of its pages is touched. A batch of activations is swept by
//! every layer on every step; on 4 KiB pages each sweep walks a new page (and misses
//! the TLB) every 4 KiB, and the hardware prefetchers, which stop at page boundaries,
//! start over (docs/performance.md, "Huge pages"). The advice is only that: where the kernel offers no huge pages (`never`, another OS) nothing
//! changes but speed.

use nn_kernels::Element;

/// Buffers of at least this many bytes are advised: one holds at least one whole
/// aligned 2 MiB page whatever its start.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const ADVISE_MIN_BYTES: usize = 4 << 20;

/// A vector of `len` zeros, large ones advised as in the module comment.
pub(crate) fn zeroed<T: Element>(len: usize) -> Vec<T> {
    // Zeros of a float type come from the allocator's zeroed allocation: a large
    // block is fresh pages from the OS, untouched until written, so the advice below
    // reaches them before their first fault.
    let data = vec![T::zero(); len];
    advise_huge_pages(&data);
    data
}

/// Makes `data` `len` long. Growing past its capacity takes a fresh [`zeroed`]
/// buffer (old contents are not kept); otherwise the allocation is reused.
pub(crate) fn resize_unspecified<T: Element>(data: &mut Vec<T>, len: usize) {
    if len > data.capacity() {
        *data = zeroed(len);
    } else {
        data.resize(len, T::zero());
    }
}

/// Asks for transparent huge pages over the whole 2 MiB pages inside `data`; true when
/// the kernel took the advice (false for small buffers, off Linux, or when the kernel
/// has no transparent huge pages).
fn advise_huge_pages<T>(data: &[T]) -> bool {
    #[cfg(target_os = "linux")]
    {
        const HUGE_PAGE: usize = 2 << 20;
        let (start, bytes) = (data.as_ptr() as usize, std::mem::size_of_val(data));
        if bytes < ADVISE_MIN_BYTES {
            return false;
        }
        let first = start.next_multiple_of(HUGE_PAGE);
        let end = (start + bytes) / HUGE_PAGE * HUGE_PAGE;
        // SAFETY: `first..end` lies inside `data`'s allocation, which this function
        // borrows; MADV_HUGEPAGE only changes how the kernel backs those pages, never
        // their contents, so no Rust-visible memory changes.
        let status = unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
        status == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = data;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this machine's kernel was built with transparent huge pages (it then
    /// accepts the advice, whichever mode it is set to).
    fn kernel_has_huge_pages() -> bool {
        std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists()
    }

    #[test]
    fn large_buffers_are_advised_and_hold_zeros() {
        let len = (ADVISE_MIN_BYTES / 4) * 3;
        let data = zeroed::<f32>(len);
        assert_eq!(data.len(), len);
        assert!(data.iter().all(|&v| v == 0.0));
        assert_eq!(advise_huge_pages(&data), cfg!(target_os = "linux") && kernel_has_huge_pages());
    }

    #[test]
    fn small_buffers_are_not_advised() {
        let data = zeroed::<f64>(1000);
        assert!(data.iter().all(|&v| v == 0.0));
        assert!(!advise_huge_pages(&data));
    }

    #[test]
    fn resizing_keeps_a_large_enough_allocation() {
        let mut data = zeroed::<f32>(100);
        let pointer = data.as_ptr();
        resize_unspecified(&mut data, 50);
        assert_eq!((data.len(), data.as_ptr()), (50, pointer));
        resize_unspecified(&mut data, ADVISE_MIN_BYTES);
        assert_eq!(data.len(), ADVISE_MIN_BYTES);
        assert!(data.iter().all(|&v| v == 0.0));
    }
}
