//! Size classes of the thread caches, by block size (header included).
//!
//! Exact 16-byte steps from 32 to 512 bytes, then five classes per power of two up to
//! [`MAX_CLASS_SIZE`], at 9/8, 5/4, 3/2, 7/4 and 2 of it: internal waste stays within 20 %,
//! and a request just above a power of two (a 4 KiB page plus a header, 1024 + 8 bytes) wastes
//! at most 1/8 instead of the 1/4 of four even steps per doubling (jemalloc's, mimalloc's:
//! sqlite's 4104- and 4368-byte page buffers in 5120-byte blocks made its peak RSS 1.19×
//! glibc's; measured in benches/results/). Blocks above the limit go to the central heap
//! directly.
//!
//! Two lookups, both from const tables indexed by `block_size / 16`:
//! - [`class_for_alloc`]: the smallest class whose size fits the request (round up);
//! - [`class_for_free`]: the largest class whose size the block can serve (round down), so a
//!   block a little larger than its class (a remainder too small to split off) is still reused.

/// Alignment of every payload, and the granularity of block sizes (block geometry: `block.rs`
/// re-exports it; it lives here because the class tables are computed from it).
pub const ALIGN: usize = 16;
/// Bytes of the header word in front of every payload.
pub const HEADER: usize = 8;
/// Smallest block: a header, two links and a footer.
pub const MIN_BLOCK: usize = 32;

/// Largest block size served from the thread caches (32 KiB).
pub const MAX_CLASS_SIZE: usize = 32 << 10;
/// Largest block size with exact 16-byte classes.
const EXACT_MAX: usize = 512;
/// Number of classes: 31 exact (32..=512) plus 5 per doubling from 512 to 32 KiB.
pub const NCLASSES: usize = (EXACT_MAX - MIN_BLOCK) / ALIGN + 1 + STEPS_PER_DOUBLING.len() * 6;
/// The classes of each doubling above [`EXACT_MAX`], in eighths of its base: the first one
/// close above the base, where programs' power-of-two-plus-a-header requests fall.
const STEPS_PER_DOUBLING: [usize; 5] = [9, 10, 12, 14, 16];
/// Class codes a block header can carry (six bits, `block.rs`): the classes, then codes that no
/// thread cache list accepts (their lists have no room), so the free fast path needs no range
/// check on the code it reads.
pub const CLASS_CODES: usize = 64;
/// The class code of a block no thread cache takes: free, mapped, or larger than the classes.
pub const NO_CLASS: usize = CLASS_CODES - 1;
const _: () = assert!(NCLASSES < NO_CLASS);
const STEPS: usize = MAX_CLASS_SIZE / ALIGN + 1;

/// Block size of each class, ascending.
pub static CLASS_SIZE: [u32; NCLASSES] = {
    let mut t = [0u32; NCLASSES];
    let mut i = 0;
    let mut s = MIN_BLOCK;
    while s <= EXACT_MAX {
        t[i] = s as u32;
        i += 1;
        s += ALIGN;
    }
    let mut base = EXACT_MAX;
    while base < MAX_CLASS_SIZE {
        let mut k = 0;
        while k < STEPS_PER_DOUBLING.len() {
            t[i] = (base / 8 * STEPS_PER_DOUBLING[k]) as u32;
            i += 1;
            k += 1;
        }
        base *= 2;
    }
    t
};

/// `ALLOC_CLASS[s / 16]`: the smallest class with size >= s.
static ALLOC_CLASS: [u8; STEPS] = {
    let mut t = [0u8; STEPS];
    let mut s = 0;
    let mut c = 0;
    while s < STEPS {
        while (CLASS_SIZE[c] as usize) < s * ALIGN {
            c += 1;
        }
        t[s] = c as u8;
        s += 1;
    }
    t
};

/// `FREE_CLASS[s / 16]`: the largest class with size <= s (s >= MIN_BLOCK).
static FREE_CLASS: [u8; STEPS] = {
    let mut t = [0u8; STEPS];
    let mut s = MIN_BLOCK / ALIGN;
    let mut c = 0;
    while s < STEPS {
        while c + 1 < NCLASSES && CLASS_SIZE[c + 1] as usize <= s * ALIGN {
            c += 1;
        }
        t[s] = c as u8;
        s += 1;
    }
    t
};

/// The class for a request whose block size is `block_size` (a multiple of 16, >= 32), or
/// `None` above [`MAX_CLASS_SIZE`].
#[inline(always)]
pub fn class_for_alloc(block_size: usize) -> Option<usize> {
    ALLOC_CLASS.get(block_size / ALIGN).map(|&c| c as usize)
}

/// The class a freed block of `block_size` bytes can serve, or `None` above the limit.
#[inline(always)]
pub fn class_for_free(block_size: usize) -> Option<usize> {
    FREE_CLASS.get(block_size / ALIGN).map(|&c| c as usize)
}

/// The class code stored in the header of an in-use heap block of `block_size` bytes: its
/// [`class_for_free`] class, or [`NO_CLASS`] above the limit.
#[inline]
pub fn class_code(block_size: usize) -> usize {
    if block_size < MIN_BLOCK {
        return NO_CLASS;
    }
    class_for_free(block_size).unwrap_or(NO_CLASS)
}

/// Most bytes of headroom a moving realloc adds (see [`realloc_move_size`]).
pub const REALLOC_HEADROOM_MAX: usize = 128 << 10;

/// How many bytes a realloc that must move a block of `old_usable` bytes asks for, to hold
/// `n`: growth by less than a quarter gets a quarter (at most [`REALLOC_HEADROOM_MAX`]), so a
/// buffer grown a few bytes at a time moves (and copies) once per 25 % of growth, not once
/// per class (16 bytes apart up to 512 B) or on every call (above the classes, where the
/// neighbour is rarely free). Shrinking, and growth by more, get `n`.
#[inline]
pub fn realloc_move_size(old_usable: usize, n: usize) -> usize {
    let headroom = (old_usable / 4).min(REALLOC_HEADROOM_MAX);
    if n > old_usable && n < old_usable + headroom { old_usable + headroom } else { n }
}

/// Whether a realloc to a block size of `need` bytes keeps a block of `block_size` bytes as it
/// is: it fits, and shrinking would give back less than a quarter (the headroom of
/// [`realloc_move_size`], which would otherwise go on the next call).
#[inline]
pub fn realloc_keeps(need: usize, block_size: usize) -> bool {
    need <= block_size && need >= block_size - block_size / 4
}

/// The block size of class `c`.
#[inline(always)]
pub fn class_size(c: usize) -> usize {
    CLASS_SIZE[c] as usize
}

/// `REQUEST_CLASS[(n + 23) / 16]`: the class of a request of `n` bytes (`n + 23` over 16 is the
/// block size over 16, before the 32-byte minimum, which the table folds in).
static REQUEST_CLASS: [u8; STEPS] = {
    let mut t = [0u8; STEPS];
    let mut i = 0;
    while i < STEPS {
        t[i] = ALLOC_CLASS[if i < MIN_BLOCK / ALIGN { MIN_BLOCK / ALIGN } else { i }];
        i += 1;
    }
    t
};

/// Largest request served by the thread caches.
pub const MAX_CLASS_REQUEST: usize = MAX_CLASS_SIZE - HEADER;

/// The class of a request of `n` bytes (three instructions: add, shift, load).
///
/// # Safety
/// `n <= MAX_CLASS_REQUEST`.
#[inline(always)]
pub unsafe fn class_for_request(n: usize) -> usize {
    // SAFETY: forwarded contract: (n + 23) / 16 <= MAX_CLASS_SIZE / 16 < STEPS.
    unsafe { *REQUEST_CLASS.get_unchecked((n + 23) / ALIGN) as usize }
}

/// [`class_for_alloc`] without the range check.
///
/// # Safety
/// `block_size <= MAX_CLASS_SIZE`.
#[inline(always)]
pub unsafe fn class_for_alloc_unchecked(block_size: usize) -> usize {
    // SAFETY: forwarded contract: the index is within the table.
    unsafe { *ALLOC_CLASS.get_unchecked(block_size / ALIGN) as usize }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::block_size_for;

    #[test]
    fn table_is_ascending_and_ends_at_the_limit() {
        assert_eq!(CLASS_SIZE[0] as usize, MIN_BLOCK);
        assert_eq!(CLASS_SIZE[NCLASSES - 1] as usize, MAX_CLASS_SIZE);
        for w in CLASS_SIZE.windows(2) {
            assert!(w[0] < w[1]);
            assert_eq!(w[1] % ALIGN as u32, 0);
        }
    }

    #[test]
    fn a_moving_realloc_grows_by_a_quarter() {
        assert_eq!(realloc_move_size(400, 401), 500);
        assert_eq!(realloc_move_size(400, 499), 500);
        assert_eq!(realloc_move_size(400, 500), 500);
        assert_eq!(realloc_move_size(400, 900), 900, "growth by more: as asked");
        assert_eq!(realloc_move_size(400, 100), 100, "shrink: as asked");
        assert_eq!(realloc_move_size(400, 400), 400);
        let big = 4 * REALLOC_HEADROOM_MAX;
        assert_eq!(realloc_move_size(big * 2, big * 2 + 1), big * 2 + REALLOC_HEADROOM_MAX);
        assert!(realloc_keeps(400, 400) && realloc_keeps(300, 400));
        assert!(!realloc_keeps(299, 400) && !realloc_keeps(401, 400));
    }

    /// Every request size up to the limit maps to the smallest class that fits, with at most
    /// 20 % internal waste (over the block size actually needed).
    #[test]
    fn every_size_maps_to_the_smallest_fitting_class() {
        for n in 0..=MAX_CLASS_SIZE - HEADER {
            let bs = block_size_for(n).unwrap();
            let c = class_for_alloc(bs).unwrap();
            let cs = class_size(c);
            assert!(cs >= bs, "n={n}: class {c} ({cs}) < block {bs}");
            assert!(c == 0 || class_size(c - 1) < bs, "n={n}: class {c} is not the smallest");
            assert!((cs - bs) * 5 <= bs, "n={n}: waste {} over {bs}", cs - bs);
        }
        assert_eq!(class_for_alloc(MAX_CLASS_SIZE + ALIGN), None);
        for n in 0..=MAX_CLASS_REQUEST {
            let bs = block_size_for(n).unwrap();
            // SAFETY: n is within the limit.
            assert_eq!(Some(unsafe { class_for_request(n) }), class_for_alloc(bs), "n={n}");
        }
    }

    /// A power of two plus a small header (above the exact classes) wastes at most 1/8.
    #[test]
    fn a_power_of_two_plus_a_header_wastes_an_eighth_at_most() {
        let mut p = EXACT_MAX;
        while p < MAX_CLASS_SIZE {
            for extra in [8, 16, 64, p / 16] {
                let bs = block_size_for(p + extra).unwrap();
                let cs = class_size(class_for_alloc(bs).unwrap());
                assert!((cs - bs) * 8 <= bs, "{p} + {extra}: block {bs} in class {cs}");
            }
            p *= 2;
        }
    }

    #[test]
    fn free_class_rounds_down() {
        let mut bs = MIN_BLOCK;
        while bs <= MAX_CLASS_SIZE {
            let c = class_for_free(bs).unwrap();
            assert!(class_size(c) <= bs);
            assert!(c + 1 == NCLASSES || class_size(c + 1) > bs);
            // A block freed into its own class is found again by a request of that class.
            if let Some(a) = class_for_alloc(bs) {
                if class_size(a) == bs {
                    assert_eq!(a, c);
                }
            }
            bs += ALIGN;
        }
        assert_eq!(class_for_free(MAX_CLASS_SIZE + ALIGN), None);
    }
}
