//! Any bytes, raw or gzip, through the IDX reader: an error or an array whose length
//! matches its header, never a panic, and never more memory than the bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nn_train::data::idx::read_idx_from;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(array) = read_idx_from(data, Path::new("fuzz.idx"), 1 << 20) {
        assert_eq!(array.data.len(), array.dims.iter().product::<usize>());
    }
});
