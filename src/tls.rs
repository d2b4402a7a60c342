//! This thread's cache: one thread-local [`ThreadCache`] per thread, zero-filled at thread
//! start (T3: a zero-filled cache is a valid `Uninit` one), found in two instructions.
//!
//! Stable Rust gives a `thread_local!` in a preloaded cdylib the general-dynamic TLS model:
//! every access calls `__tls_get_addr`. On x86-64 Linux the cache is instead a `.tbss` symbol
//! declared here in assembly and reached through the initial-exec model: its offset from the
//! thread pointer is in the GOT (`@GOTTPOFF`, filled in by the loader once), so a lookup is a
//! load of that offset and an add of `%fs:0`. That needs the library in the static TLS block,
//! where every library loaded at start-up (an `LD_PRELOAD`, a linked executable) sits; a
//! library `dlopen`ed later gets a block from glibc's static TLS reserve, or the `dlopen`
//! fails ("cannot allocate memory in static TLS block"), which for a replacement `malloc`
//! loaded after start-up is the better outcome anyway (it would be handed pointers it never
//! allocated). Elsewhere (other targets, Miri) a `const`-initialised, `Drop`-free
//! `thread_local!` is used: a `Drop` type would register a TLS destructor through
//! `__cxa_thread_atexit_impl`, which callocs and re-enters malloc before the slot is live
//! (seen as a crash on this machine). Thread exit is handled by a pthread key (`process.rs`).

use crate::thread_cache::ThreadCache;

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
mod imp {
    use super::ThreadCache;

    // The cache's thread-local storage: zero-filled `.tbss`, 64-byte aligned, hidden (never
    // exported from the cdylib).
    core::arch::global_asm!(
        ".pushsection .tbss.brkmalloc_tcache,\"awT\",@nobits",
        ".p2align 6",
        ".globl __brkmalloc_tcache_v1",
        ".hidden __brkmalloc_tcache_v1",
        ".type __brkmalloc_tcache_v1, @object",
        ".size __brkmalloc_tcache_v1, {size}",
        "__brkmalloc_tcache_v1:",
        ".zero {size}",
        ".popsection",
        size = const size_of::<ThreadCache>(),
    );

    /// The cache's address: the symbol's offset from the thread pointer, from the GOT (set by
    /// the loader for the initial-exec model), plus `%fs:0`, the thread pointer itself (the
    /// TCB's self pointer, x86-64 TLS ABI), into `$reg` (written `$name` in the instructions).
    macro_rules! tcache_address {
        ($name:literal, $reg:tt) => {{
            let addr: usize;
            // SAFETY: both the GOT entry and `%fs:0` are readable in every thread.
            unsafe {
                core::arch::asm!(
                    concat!("mov ", $name, ", qword ptr [rip + __brkmalloc_tcache_v1@GOTTPOFF]"),
                    concat!("add ", $name, ", qword ptr fs:[0]"),
                    out($reg) addr,
                    options(pure, readonly, nostack),
                );
            }
            Some(core::ptr::with_exposed_provenance_mut(addr))
        }};
    }

    /// This thread's cache (initial-exec TLS: a GOT load and an add of the thread pointer),
    /// in `r8`: the allocation path's choice. Left to the register allocator, it picks `rdi`,
    /// malloc's argument, and adds a move to keep the argument elsewhere.
    #[inline(always)]
    pub fn cache() -> Option<*mut ThreadCache> {
        tcache_address!("r8", "r8")
    }

    /// [`cache`] in a register of the allocator's choice: the free path's (which must move its
    /// argument for its slow-path calls anyway, and is one instruction shorter this way).
    #[inline(always)]
    pub fn cache_any_reg() -> Option<*mut ThreadCache> {
        tcache_address!("{0}", reg)
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(miri))))]
mod imp {
    use super::ThreadCache;
    use core::cell::UnsafeCell;

    std::thread_local! {
        /// This thread's cache: `const`-initialised and without `Drop` (module docs).
        static TCACHE: UnsafeCell<ThreadCache> = const { UnsafeCell::new(ThreadCache::new()) };
    }

    /// This thread's cache, or `None` once the thread-local slot is gone (thread exit).
    #[inline(always)]
    pub fn cache() -> Option<*mut ThreadCache> {
        TCACHE.try_with(UnsafeCell::get).ok()
    }

    /// The same (one lookup on these targets).
    #[inline(always)]
    pub fn cache_any_reg() -> Option<*mut ThreadCache> {
        cache()
    }
}

pub use imp::{cache, cache_any_reg};
