//! The heap profiler's mark on in-use blocks ([`SAMPLED`]): set on a sampled block so that its
//! `free` leaves the fast path (its class code becomes `NO_CLASS`, B8), cleared when the
//! record is dropped. Header writes, so under the central lock (B7).

use core::ptr::NonNull;

use super::{CentralHeap, Misuse};
use crate::block::SAMPLED;
use crate::os::MemorySource;

impl<S: MemorySource> CentralHeap<S> {
    /// Marks the in-use block `p` as recorded by the heap profiler.
    ///
    /// # Errors
    /// As [`Self::free`] (`NotOurs` for a block outside the heap: a large block).
    pub fn mark_sampled(&mut self, p: NonNull<u8>) -> Result<(), Misuse> {
        let (b, _) = self.validate_used(p)?;
        // SAFETY: a validated in-use block; we hold the heap (B7).
        unsafe { b.set_flags(b.flags() | SAMPLED) };
        Ok(())
    }

    /// Whether the in-use block `p` carries [`SAMPLED`]; clears it (the caller drops the
    /// profiler's record, then frees or keeps the block as an ordinary one).
    ///
    /// # Errors
    /// As [`Self::free`].
    pub fn take_sampled(&mut self, p: NonNull<u8>) -> Result<bool, Misuse> {
        let (b, _) = self.validate_used(p)?;
        // SAFETY: as above.
        unsafe {
            let f = b.flags();
            if f & SAMPLED == 0 {
                return Ok(false);
            }
            b.set_flags(f & !SAMPLED);
        }
        Ok(true)
    }
}
