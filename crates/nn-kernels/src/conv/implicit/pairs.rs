//! A row split into its even and odd cells, and merged back: the two phases of the
//! padded input at stride 2, and the input gradient's two residue classes at stride 2.
//! In registers, 32 cells move with two loads, two permutes and two stores; what is
//! left of their time is mostly the wait for the source image from memory.

use super::{available, lane_mask, LANES};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `even[j] = row[2j]` and `odd[j] = row[2j + 1]` for every cell of `row`; nothing else
/// is written.
///
/// # Panics
/// When `even` is shorter than ⌈len/2⌉ or `odd` than ⌊len/2⌋.
pub(super) fn deal_pairs(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let (even, odd) = (&mut even[..row.len().div_ceil(2)], &mut odd[..row.len() / 2]);
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX-512F is present, and the slices have exactly the lengths the
        // kernel relies on (re-sliced above).
        unsafe { deal_pairs_avx512(row, even, odd) };
        return;
    }
    deal_pairs_portable(row, even, odd);
}

/// `row[2j] = even[j]` and `row[2j + 1] = odd[j]` for every cell of `row`.
///
/// # Panics
/// When `even` is shorter than ⌈len/2⌉ or `odd` than ⌊len/2⌋.
pub(super) fn merge_pairs(even: &[f32], odd: &[f32], row: &mut [f32]) {
    let (even, odd) = (&even[..row.len().div_ceil(2)], &odd[..row.len() / 2]);
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: as in `deal_pairs`.
        unsafe { merge_pairs_avx512(even, odd, row) };
        return;
    }
    merge_pairs_portable(even, odd, row);
}

/// The portable fallback of [`deal_pairs`], on slices of exactly ⌈len/2⌉ and ⌊len/2⌋.
fn deal_pairs_portable(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    for (j, slot) in even.iter_mut().enumerate() {
        *slot = row[2 * j];
    }
    for (j, slot) in odd.iter_mut().enumerate() {
        *slot = row[2 * j + 1];
    }
}

/// The portable fallback of [`merge_pairs`], on slices of exactly ⌈len/2⌉ and ⌊len/2⌋.
fn merge_pairs_portable(even: &[f32], odd: &[f32], row: &mut [f32]) {
    for (j, &value) in even.iter().enumerate() {
        row[2 * j] = value;
    }
    for (j, &value) in odd.iter().enumerate() {
        row[2 * j + 1] = value;
    }
}

/// The lane indices `index(l)`, l < 16, as a vector for `_mm512_permutex2var_ps`,
/// which reads 0–15 from its first operand and 16–31 from its second.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn lane_indices(index: impl Fn(i32) -> i32) -> __m512i {
    let lanes: [i32; LANES] = std::array::from_fn(|l| index(l as i32));
    // SAFETY: `lanes` holds exactly one vector of i32.
    unsafe { _mm512_loadu_epi32(lanes.as_ptr()) }
}

/// # Safety
/// AVX-512F must be present; `even` holds exactly ⌈len/2⌉ floats and `odd` ⌊len/2⌋,
/// `len = row.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn deal_pairs_avx512(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    // Over 32 cells (low vector, then high): the even ones, and the odd ones.
    let (even_lanes, odd_lanes) = (lane_indices(|l| 2 * l), lane_indices(|l| 2 * l + 1));
    for start in (0..row.len()).step_by(2 * LANES) {
        let cells = (row.len() - start).min(2 * LANES);
        let (low, high) = (cells.min(LANES), cells.saturating_sub(LANES));
        let j = start / 2;
        // SAFETY: the loads read cells start..start + cells of `row`, the masks
        // cutting off the rest (the high pointer is only formed when it holds one);
        // the stores write ⌈cells/2⌉ floats of `even` and ⌊cells/2⌋ of `odd` from
        // j = start/2, which the lengths in the contract hold.
        unsafe {
            let src = row.as_ptr().add(start);
            let low = _mm512_maskz_loadu_ps(lane_mask(low), src);
            let high =
                if high > 0 { _mm512_maskz_loadu_ps(lane_mask(high), src.add(LANES)) } else { _mm512_setzero_ps() };
            let evens = _mm512_permutex2var_ps(low, even_lanes, high);
            let odds = _mm512_permutex2var_ps(low, odd_lanes, high);
            _mm512_mask_storeu_ps(even.as_mut_ptr().add(j), lane_mask(cells.div_ceil(2)), evens);
            _mm512_mask_storeu_ps(odd.as_mut_ptr().add(j), lane_mask(cells / 2), odds);
        }
    }
}

/// # Safety
/// As for [`deal_pairs_avx512`], with `row` written and the halves read.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn merge_pairs_avx512(even: &[f32], odd: &[f32], row: &mut [f32]) {
    // Evens and odds zipped, e0 o0 e1 o1 …: from their first eight lanes, then the last.
    let zipped = |half: i32| lane_indices(move |l| 8 * half + l / 2 + LANES as i32 * (l % 2));
    let (first_half, second_half) = (zipped(0), zipped(1));
    for start in (0..row.len()).step_by(2 * LANES) {
        let cells = (row.len() - start).min(2 * LANES);
        let (low, high) = (cells.min(LANES), cells.saturating_sub(LANES));
        let j = start / 2;
        // SAFETY: the loads read ⌈cells/2⌉ floats of `even` and ⌊cells/2⌋ of `odd`
        // from j = start/2, the stores cells start..start + cells of `row` (the high
        // pointer only formed when it holds one), all inside the contract's lengths.
        unsafe {
            let evens = _mm512_maskz_loadu_ps(lane_mask(cells.div_ceil(2)), even.as_ptr().add(j));
            let odds = _mm512_maskz_loadu_ps(lane_mask(cells / 2), odd.as_ptr().add(j));
            let dst = row.as_mut_ptr().add(start);
            _mm512_mask_storeu_ps(dst, lane_mask(low), _mm512_permutex2var_ps(evens, first_half, odds));
            if high > 0 {
                _mm512_mask_storeu_ps(
                    dst.add(LANES),
                    lane_mask(high),
                    _mm512_permutex2var_ps(evens, second_half, odds),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // On a CPU with AVX-512 the public functions run the register kernels; the
        // portable ones run everywhere. Both against the definition, with the
        // halves longer than needed so that a write past ⌈len/2⌉ would show.
        #[test]
        fn deal_and_merge_follow_the_definition(row in prop::collection::vec(-1e3f32..1e3, 0..80)) {
            let len = row.len();
            for portable in [false, true] {
                let (mut even, mut odd) = (vec![f32::NAN; len / 2 + 3], vec![f32::NAN; len / 2 + 3]);
                if portable {
                    let (e, o) = (len.div_ceil(2), len / 2);
                    deal_pairs_portable(&row, &mut even[..e], &mut odd[..o]);
                } else {
                    deal_pairs(&row, &mut even, &mut odd);
                }
                for (i, &cell) in row.iter().enumerate() {
                    let half = if i % 2 == 0 { &even } else { &odd };
                    prop_assert_eq!(half[i / 2].to_bits(), cell.to_bits());
                }
                prop_assert!(even[len.div_ceil(2)..].iter().all(|v| v.is_nan()));
                prop_assert!(odd[len / 2..].iter().all(|v| v.is_nan()));

                let mut merged = vec![f32::NAN; len + 3];
                if portable {
                    merge_pairs_portable(&even[..len.div_ceil(2)], &odd[..len / 2], &mut merged[..len]);
                } else {
                    merge_pairs(&even, &odd, &mut merged[..len]);
                }
                prop_assert_eq!(&merged[..len], &row[..]);
                prop_assert!(merged[len..].iter().all(|v| v.is_nan()));
            }
        }
    }
}
