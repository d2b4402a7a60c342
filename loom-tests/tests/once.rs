//! One-time global initialisation raced by two threads' first `malloc`, and the one-shot flags.
//!
//! `global.rs` itself cannot run under loom (its statics, TLS and `pthread_*` calls), so the
//! models run its protocol over the same building blocks from `brkmalloc::sync` that it uses
//! (or, until it is switched over, that replace its hand-written copies; see the comments):
//! - the thread-exit key, created on the first `malloc` of any thread (`exit_key`): a [`Once`];
//! - the thread-pointer offset of the TLS cache, computed once (`TLS_OFFSET_TRIED`): a [`Claim`],
//!   published with a relaxed store and checked by each thread's canary;
//! - the fork handlers' registration (`fork::INSTALLED`): a [`Claim`].
//!
//! Twins (ci/loom.sh): `once-ordering` (the key is published with `Relaxed`: the second thread
//! may read the key before it is written), `claim` (claiming is a load and a store: two
//! winners).
#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use loom::thread;
use loom_tests::{Heap, Ledger, cache_free, cache_malloc, check, class0_limit, event};

use brkmalloc::sync::{Claim, Once};
use brkmalloc::thread_cache::{State, ThreadCache};

/// What the models' `pthread_key_create` hands out first.
const FIRST_KEY: u32 = 7;
/// A stand-in thread-pointer offset (any non-zero value).
const OFFSET: usize = 0x40;

/// The process-wide state that `global.rs` keeps in statics, one per model iteration.
struct Process {
    heap: Heap,
    ledger: Ledger,
    /// `global::exit_key`'s `KEY_STATE`/`KEY` pair.
    exit_key: Once<u32>,
    /// Calls of the stand-in `pthread_key_create`.
    keys_created: AtomicU32,
    /// Whether the stand-in `pthread_key_create` fails.
    key_fails: bool,
    /// `global::TLS_OFFSET_TRIED`.
    tls_offset_tried: Claim,
    /// `global::TLS_OFFSET`.
    tls_offset: AtomicUsize,
    /// Times the offset was computed.
    offsets_computed: AtomicU32,
}

impl Process {
    fn new(key_fails: bool) -> Self {
        Self {
            heap: Heap::new(2),
            ledger: Ledger::default(),
            exit_key: Once::new(),
            keys_created: AtomicU32::new(0),
            key_fails,
            tls_offset_tried: Claim::new(),
            tls_offset: AtomicUsize::new(0),
            offsets_computed: AtomicU32::new(0),
        }
    }

    /// `global::exit_key`: the key, created by whichever thread comes first.
    fn exit_key(&self) -> Option<u32> {
        self.exit_key.get_or_init(|| {
            // pthread_key_create(&key, cache_destructor)
            let n = self.keys_created.fetch_add(1, Ordering::Relaxed);
            if self.key_fails { None } else { Some(FIRST_KEY + n) }
        })
    }

    /// A thread's first `malloc(24)`, as `api::alloc` → `global::cache_alloc` →
    /// `cache_alloc_slow` → `activate` run it; then it frees the block and exits.
    fn first_malloc(&self, seed: u8) {
        // global::tcache_tls: the first thread to get here computes the offset; the others use
        // `thread_local!` until they see it. Relaxed: a stale 0 only means the slow lookup, and
        // a non-zero offset is checked against the cache's canary (T6) before use.
        if self.tls_offset_tried.claim() {
            self.offsets_computed.fetch_add(1, Ordering::Relaxed);
            self.tls_offset.store(OFFSET, Ordering::Relaxed);
        }
        let off = self.tls_offset.load(Ordering::Relaxed);
        assert!(off == 0 || off == OFFSET, "a torn or foreign offset: {off:#x}");
        event(if off == 0 { "offset not yet visible (thread_local! path)" } else { "offset used" });

        let mut tc = ThreadCache::new();
        assert_eq!(tc.state(), State::Uninit);
        // global::activate
        match self.exit_key() {
            Some(key) => {
                assert_eq!(key, FIRST_KEY, "threads got different exit keys");
                tc.activate(class0_limit(4));
                // pthread_setspecific(key, 1): succeeds.
            }
            None => {
                event("key creation failed: cache torn down");
                tc.tear_down(&self.heap.heap).unwrap();
            }
        }
        let b = self.ledger.take(cache_malloc(&mut tc, &self.heap, 24), 24, seed);
        self.ledger.give_back(&b);
        // SAFETY: a live block of the heap, given up here.
        unsafe { cache_free(&mut tc, &self.heap, b.ptr()) };
        // Thread exit (`cache_destructor`).
        tc.tear_down(&self.heap.heap).unwrap();
    }
}

fn race_first_mallocs(key_fails: bool) {
    let p = Arc::new(Process::new(key_fails));
    let t = {
        let p = p.clone();
        thread::spawn(move || p.first_malloc(1))
    };
    p.first_malloc(2);
    t.join().unwrap();
    assert_eq!(p.keys_created.load(Ordering::Relaxed), 1, "the key was created more than once");
    assert_eq!(p.offsets_computed.load(Ordering::Relaxed), 1, "the TLS offset was computed twice");
    assert_eq!(p.tls_offset.load(Ordering::Relaxed), OFFSET);
    assert_eq!(p.ledger.live(), 0);
    p.heap.assert_all_free(2);
}

/// Two threads' first mallocs race to create the thread-exit key and compute the TLS offset:
/// the key is created once and both threads use it; the offset is computed once.
#[test]
fn first_mallocs_race_for_the_key() {
    check("once::first_mallocs_race_for_the_key", || race_first_mallocs(false));
}

/// As above, but `pthread_key_create` fails: it is tried once, both threads see the failure
/// and allocate with torn-down caches (straight from the central heap).
#[test]
fn first_mallocs_when_the_key_cannot_be_created() {
    check("once::first_mallocs_when_the_key_cannot_be_created", || race_first_mallocs(true));
}

/// Three threads' first allocations race to register the fork handlers
/// (`fork::ensure_installed`/`install`): exactly one registers.
#[test]
fn claim_has_one_winner() {
    check("once::claim_has_one_winner", || {
        let installed = Arc::new(Claim::new());
        let registrations = Arc::new(AtomicU32::new(0));
        let install = {
            let (installed, registrations) = (installed.clone(), registrations.clone());
            move || {
                // fork::ensure_installed, then install
                if !installed.is_claimed() && installed.claim() {
                    // pthread_atfork(prepare, parent, child)
                    registrations.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        let ts: Vec<_> = (0..2)
            .map(|_| {
                let install = install.clone();
                thread::spawn(install)
            })
            .collect();
        install();
        for t in ts {
            t.join().unwrap();
        }
        assert!(installed.is_claimed());
        assert_eq!(registrations.load(Ordering::Relaxed), 1, "handlers registered twice");
    });
}
