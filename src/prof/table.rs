//! The profile table: the distinct stacks with their counters, and the live sampled blocks.
//! Both live in memory mapped for them on first use (never in the heap they describe), of a
//! fixed size: a sample that finds them full is dropped and counted.
//!
//! ```text
//!  stacks: [StackRec; MAX_STACKS]     append-only, found through `stack_index`
//!  stack_index: [u32; STACK_SLOTS]    open addressing by stack hash, 0 = empty, else id + 1
//!  live: [Live; live_slots]           open addressing by block address, linear probing,
//!                                     deletion by backward shift (no tombstones); starts at
//!                                     4096 slots and doubles (rehashed into a new mapping)
//!                                     when half full, up to 2 * MAX_LIVE
//! ```

use core::ptr;

use super::sampling::Weight;
use super::stack::MAX_DEPTH;

/// Most distinct stacks kept.
pub const MAX_STACKS: usize = 1 << 14;
const STACK_SLOTS: usize = 2 * MAX_STACKS;
/// Most live samples kept (at the default rate, 64 GiB of live heap).
pub const MAX_LIVE: usize = 1 << 17;
const MAX_LIVE_SLOTS: usize = 2 * MAX_LIVE;
/// The live table's first size: 160 KiB, so that a small program's samples touch few pages.
const FIRST_LIVE_SLOTS: usize = 1 << 12;

/// One distinct stack and what was sampled there.
///
/// # Invariants
/// - PT1: `live_*` are the sums of the weights of the live samples that point here; `alloc_*`
///   the sums over every sample ever taken here.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct StackRec {
    hash: u64,
    depth: u32,
    /// Live samples at this stack.
    pub live_samples: u32,
    /// Estimated live objects (thousandths).
    pub live_objs_milli: u64,
    /// Estimated live bytes.
    pub live_bytes: u64,
    /// Estimated objects allocated here so far (thousandths).
    pub alloc_objs_milli: u64,
    /// Estimated bytes allocated here so far.
    pub alloc_bytes: u64,
    frames: [usize; MAX_DEPTH],
}

impl StackRec {
    /// The return addresses, innermost first.
    pub fn frames(&self) -> &[usize] {
        &self.frames[..self.depth as usize]
    }
}

/// A live sampled block.
///
/// # Invariants
/// - L1: `addr != 0` for an occupied slot (0 marks an empty one); `weight` is what was added
///   to stack `stack`'s live counters when it was recorded.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Live {
    /// The block's address; 0 = empty slot.
    addr: usize,
    /// Index into the stacks.
    stack: u32,
    weight: Weight,
}

/// The table behind the profiler's lock (`PROF` in the lock order).
///
/// # Invariants
/// - P1: before the first successful [`Table::insert`] all pointers are null and all counts 0;
///   after it, they point at mappings of the sizes above, owned by the table forever.
/// - P2: `stacks[..nstacks]` are initialised; every non-zero `stack_index` slot holds the id
///   + 1 of one of them, reachable from its hash by linear probing without an empty slot.
/// - P3: `nlive < live_slots / 2` slots of `live` are occupied, each reachable from its
///   address's home slot (for `live_slots`) by linear probing without an empty slot; every
///   live stack id is `< nstacks`.
#[derive(Debug)]
pub struct Table {
    stacks: *mut StackRec,
    nstacks: usize,
    stack_index: *mut u32,
    live: *mut Live,
    /// Slots of `live`: a power of two, at least twice `nlive`.
    live_slots: usize,
    nlive: usize,
    /// Samples dropped because a table was full (or could not be mapped).
    pub dropped: u64,
    /// Samples taken.
    pub samples: u64,
    /// Estimated bytes allocated since the last interval dump (`prof_interval`).
    pub since_dump: u64,
    /// Sequence number of the next `<prefix>.<pid>.<seq>.heap`.
    pub seq: u64,
}

// SAFETY: the pointers are mappings owned by the table (P1); moving it moves that ownership.
unsafe impl Send for Table {}

/// Maps `bytes` of zeroed private memory, reserved lazily by the kernel.
fn map(bytes: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED { ptr::null_mut() } else { p.cast() }
}

fn hash_frames(frames: &[usize]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &f in frames {
        h = (h ^ f as u64).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    h ^ (frames.len() as u64)
}

/// The home slot of `addr` in a live table of `slots` slots (a power of two).
fn home(addr: usize, slots: usize) -> usize {
    ((addr as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - slots.trailing_zeros()))
        as usize
}

/// Unmaps an array made by [`map`].
///
/// # Safety
/// `p` came from `map(bytes)` and nothing refers to it any more.
unsafe fn unmap(p: *mut u8, bytes: usize) {
    // SAFETY: forwarded contract.
    unsafe { libc::munmap(p.cast(), bytes) };
}

impl Table {
    /// An empty table with nothing mapped (P1).
    pub const fn new() -> Self {
        Self {
            stacks: ptr::null_mut(),
            nstacks: 0,
            stack_index: ptr::null_mut(),
            live: ptr::null_mut(),
            live_slots: 0,
            nlive: 0,
            dropped: 0,
            samples: 0,
            since_dump: 0,
            seq: 0,
        }
    }

    /// Maps the arrays on first use; `false` if the memory is not available.
    fn ensure_mapped(&mut self) -> bool {
        if !self.live.is_null() {
            return true;
        }
        let stacks = map(MAX_STACKS * size_of::<StackRec>());
        let index = map(STACK_SLOTS * size_of::<u32>());
        let live = map(FIRST_LIVE_SLOTS * size_of::<Live>());
        if stacks.is_null() || index.is_null() || live.is_null() {
            // Leaked on this (out of memory) path: the next sample tries again.
            return false;
        }
        self.stacks = stacks.cast();
        self.stack_index = index.cast();
        self.live = live.cast();
        self.live_slots = FIRST_LIVE_SLOTS;
        true
    }

    /// Doubles the live table (a new mapping, every record rehashed); `false` if it is at its
    /// largest or the memory is not available.
    fn grow_live(&mut self) -> bool {
        let slots = 2 * self.live_slots;
        if slots > MAX_LIVE_SLOTS {
            return false;
        }
        let new: *mut Live = map(slots * size_of::<Live>()).cast();
        if new.is_null() {
            return false;
        }
        // SAFETY: P1, P3: the old table has `live_slots` slots; the new one `slots`, zeroed
        // (all empty) and more than twice `nlive`, so each probe finds an empty slot.
        unsafe {
            for k in 0..self.live_slots {
                let e = *self.live.add(k);
                if e.addr == 0 {
                    continue;
                }
                let mut i = home(e.addr, slots);
                while (*new.add(i)).addr != 0 {
                    i = (i + 1) & (slots - 1);
                }
                new.add(i).write(e);
            }
            unmap(self.live.cast(), self.live_slots * size_of::<Live>());
        }
        self.live = new;
        self.live_slots = slots;
        true
    }

    /// The stacks recorded so far.
    pub fn stacks(&self) -> &[StackRec] {
        if self.stacks.is_null() {
            return &[];
        }
        // SAFETY: P1, P2: `nstacks` initialised records.
        unsafe { core::slice::from_raw_parts(self.stacks, self.nstacks) }
    }

    /// Live samples recorded.
    pub fn live_count(&self) -> usize {
        self.nlive
    }

    /// The id of the stack `frames`, added if new; `None` when the stack table is full.
    fn stack_id(&mut self, frames: &[usize]) -> Option<usize> {
        let h = hash_frames(frames);
        let mut i = (h as usize) & (STACK_SLOTS - 1);
        loop {
            // SAFETY: P1: the index has STACK_SLOTS slots; `i` is masked.
            let slot = unsafe { &mut *self.stack_index.add(i) };
            if *slot == 0 {
                break;
            }
            let id = *slot as usize - 1;
            // SAFETY: P2: index entries name initialised records.
            let rec = unsafe { &*self.stacks.add(id) };
            if rec.hash == h && rec.frames() == frames {
                return Some(id);
            }
            i = (i + 1) & (STACK_SLOTS - 1);
        }
        if self.nstacks == MAX_STACKS {
            return None;
        }
        let id = self.nstacks;
        let mut rec = StackRec {
            hash: h,
            depth: frames.len() as u32,
            live_samples: 0,
            live_objs_milli: 0,
            live_bytes: 0,
            alloc_objs_milli: 0,
            alloc_bytes: 0,
            frames: [0; MAX_DEPTH],
        };
        rec.frames[..frames.len()].copy_from_slice(frames);
        // SAFETY: P1: `id < MAX_STACKS`; slot `i` is empty (P2 kept: reachable by probing).
        unsafe {
            self.stacks.add(id).write(rec);
            *self.stack_index.add(i) = id as u32 + 1;
        }
        self.nstacks += 1;
        Some(id)
    }

    /// Records the live sampled block `addr` with stack `frames` and weight `w`; `false` (and
    /// the sample counted as dropped) when a table is full.
    pub fn insert(&mut self, addr: usize, frames: &[usize], w: Weight) -> bool {
        debug_assert!(addr != 0 && frames.len() <= MAX_DEPTH);
        if !self.ensure_mapped() || (2 * (self.nlive + 1) >= self.live_slots && !self.grow_live()) {
            self.dropped += 1;
            return false;
        }
        let Some(id) = self.stack_id(frames) else {
            self.dropped += 1;
            return false;
        };
        // A stale record at the same address (a block resized in place, then freed through
        // a path that did not see the flag) is replaced.
        self.remove(addr);
        let slots = self.live_slots;
        let mut i = home(addr, slots);
        // SAFETY: P1, P3: `slots > 2 * nlive`, so probing finds an empty slot.
        unsafe {
            while (*self.live.add(i)).addr != 0 {
                i = (i + 1) & (slots - 1);
            }
            self.live.add(i).write(Live { addr, stack: id as u32, weight: w });
            let rec = &mut *self.stacks.add(id);
            rec.live_samples += 1;
            rec.live_objs_milli += w.objs_milli;
            rec.live_bytes += w.bytes;
            rec.alloc_objs_milli += w.objs_milli;
            rec.alloc_bytes += w.bytes;
        }
        self.nlive += 1;
        self.samples += 1;
        self.since_dump += w.bytes;
        true
    }

    /// Drops the record of `addr` if there is one; returns whether there was.
    pub fn remove(&mut self, addr: usize) -> bool {
        if self.live.is_null() || self.nlive == 0 {
            return false;
        }
        let slots = self.live_slots;
        let mask = slots - 1;
        let mut i = home(addr, slots);
        // SAFETY: P1, P3: indexes are masked; an empty slot ends every probe sequence.
        unsafe {
            loop {
                let e = *self.live.add(i);
                if e.addr == 0 {
                    return false;
                }
                if e.addr == addr {
                    let rec = &mut *self.stacks.add(e.stack as usize);
                    rec.live_samples -= 1;
                    rec.live_objs_milli -= e.weight.objs_milli;
                    rec.live_bytes -= e.weight.bytes;
                    break;
                }
                i = (i + 1) & mask;
            }
            // Backward-shift deletion: move later entries of the run into the hole when their
            // home slot does not lie (cyclically) between the hole and them (P3).
            let mut hole = i;
            let mut j = i;
            loop {
                j = (j + 1) & mask;
                let e = *self.live.add(j);
                if e.addr == 0 {
                    break;
                }
                let h = home(e.addr, slots);
                let between = if hole <= j { hole < h && h <= j } else { hole < h || h <= j };
                if !between {
                    self.live.add(hole).write(e);
                    hole = j;
                }
            }
            (*self.live.add(hole)).addr = 0;
        }
        self.nlive -= 1;
        true
    }
}

impl Default for Table {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(b: u64) -> Weight {
        Weight { bytes: b, objs_milli: 1000 }
    }

    #[test]
    fn live_records_come_and_go_and_counters_follow() {
        let mut t = Table::new();
        let s1 = [0x1000, 0x2000];
        let s2 = [0x1000, 0x3000, 0x4000];
        let mut model = std::collections::HashMap::new();
        let mut x: u64 = 7;
        for round in 0..60_000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Addresses cluster, so probe runs form and wrap.
            let addr = 16 * (1 + (x as usize % 5000));
            if model.remove(&addr).is_some() {
                assert!(t.remove(addr), "round {round}: {addr:#x} not found");
            } else {
                let s: &[usize] = if x & 1 == 0 { &s1 } else { &s2 };
                assert!(t.insert(addr, s, w(addr as u64)));
                model.insert(addr, s.len());
            }
            assert_eq!(t.live_count(), model.len());
        }
        assert_eq!(t.stacks().len(), 2);
        let live: u64 = t.stacks().iter().map(|r| r.live_bytes).sum();
        let want: u64 = model.keys().map(|&a| a as u64).sum();
        assert_eq!(live, want);
        let n: u32 = t.stacks().iter().map(|r| r.live_samples).sum();
        assert_eq!(n as usize, model.len());
        for &a in model.keys() {
            assert!(t.remove(a));
        }
        assert!(!t.remove(16));
        assert!(t.stacks().iter().all(|r| r.live_bytes == 0 && r.live_objs_milli == 0));
        assert!(t.stacks().iter().all(|r| r.alloc_bytes > 0));
        assert_eq!(t.dropped, 0);
    }

    #[test]
    fn the_live_table_grows_to_its_limit_then_drops() {
        let mut t = Table::new();
        for i in 0..MAX_LIVE - 1 {
            assert!(t.insert(16 * (i + 1), &[7], w(1)), "insert {i}");
        }
        assert_eq!(t.live_slots, MAX_LIVE_SLOTS);
        assert!(!t.insert(16 * MAX_LIVE, &[7], w(1)));
        assert_eq!(t.dropped, 1);
        // Every record is still found after the rehashes.
        for i in (0..MAX_LIVE - 1).step_by(97) {
            assert!(t.remove(16 * (i + 1)), "lost {i}");
        }
        assert!(t.insert(16 * MAX_LIVE, &[7], w(1)), "room again after removals");
    }

    #[test]
    fn a_full_stack_table_drops_and_counts() {
        let mut t = Table::new();
        for i in 0..MAX_STACKS {
            assert!(t.insert(16 * (i + 1), &[i + 1], w(1)));
        }
        assert!(!t.insert(16, &[usize::MAX], w(1)), "a new stack when full");
        assert_eq!(t.dropped, 1);
        // A known stack still records.
        assert!(t.insert(16 * (MAX_STACKS + 5), &[3], w(1)));
        assert_eq!(t.stacks()[2].live_samples, 2);
    }
}
