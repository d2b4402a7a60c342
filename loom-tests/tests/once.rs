//! One-time global initialisation raced by two threads' first `malloc`, and the one-shot flags.
//!
//! `process.rs` itself cannot run under loom (its statics, TLS and `pthread_*` calls), so the
//! models run its protocol over the same building blocks from `brkmalloc::sync` that it uses:
//! - the thread-exit key, created on the first `malloc` of any thread (`exit_key`): a [`Once`];
//! - the fork handlers' registration (`fork::INSTALLED`): a [`Claim`].
//!
//! Twins (ci/loom.sh): `once-ordering` (the key is published with `Relaxed`: the second thread
//! may read the key before it is written), `claim` (claiming is a load and a store: two
//! winners).
#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::thread;
use loom_tests::{Heap, Ledger, cache_free, cache_malloc, check, class0_limit, event};

use brkmalloc::sync::{Claim, Once};
use brkmalloc::thread_cache::{State, ThreadCache};

/// What the models' `pthread_key_create` hands out first.
const FIRST_KEY: u32 = 7;
/// The process-wide state that `process.rs` keeps in statics, one per model iteration.
struct Process {
    heap: Heap,
    ledger: Ledger,
    /// `process::EXIT_KEY`.
    exit_key: Once<u32>,
    /// Calls of the stand-in `pthread_key_create`.
    keys_created: AtomicU32,
    /// Whether the stand-in `pthread_key_create` fails.
    key_fails: bool,
}

impl Process {
    fn new(key_fails: bool) -> Self {
        Self {
            heap: Heap::new(2),
            ledger: Ledger::default(),
            exit_key: Once::new(),
            keys_created: AtomicU32::new(0),
            key_fails,
        }
    }

    /// `process::exit_key`: the key, created by whichever thread comes first.
    fn exit_key(&self) -> Option<u32> {
        self.exit_key.get_or_init(|| {
            // pthread_key_create(&key, cache_destructor)
            let n = self.keys_created.fetch_add(1, Ordering::Relaxed);
            if self.key_fails { None } else { Some(FIRST_KEY + n) }
        })
    }

    /// A thread's first `malloc(24)`, as the front end's slow path → `process::activate` run
    /// it; then it frees the block and exits.
    fn first_malloc(&self, seed: u8) {
        let mut tc = ThreadCache::new();
        assert_eq!(tc.state(), State::Uninit);
        // process::activate
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
    assert_eq!(p.ledger.live(), 0);
    p.heap.assert_all_free(1);
}

/// Two threads' first mallocs race to create the thread-exit key: the key is created once and
/// both threads use it.
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
