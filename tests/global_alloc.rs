//! This whole test binary, harness included, runs on brkmalloc as its `#[global_allocator]`.

use std::collections::{BTreeMap, HashMap};
use std::thread;

#[global_allocator]
static A: brkmalloc::BrkMalloc = brkmalloc::BrkMalloc;

#[test]
fn collections_and_threads_on_brkmalloc() {
    let handles: Vec<_> = (0..8)
        .map(|t| {
            thread::spawn(move || {
                let mut m: HashMap<String, Vec<u64>> = HashMap::new();
                let mut b = BTreeMap::new();
                for i in 0..20_000u64 {
                    let k = format!("{t}-{}", i % 3000);
                    m.entry(k.clone()).or_default().push(i);
                    b.insert(i % 5000, k);
                    if i % 7 == 0 {
                        m.remove(&format!("{t}-{}", (i * 31) % 3000));
                    }
                }
                let total: u64 = m.values().flatten().sum();
                (total, b.len())
            })
        })
        .collect();
    for h in handles {
        let (total, n) = h.join().unwrap();
        assert!(total > 0);
        assert_eq!(n, 5000);
    }
    let big: Vec<u8> = vec![7; 10 << 20];
    assert!(big.iter().all(|&x| x == 7));
    drop(big);
    if let Err(e) = brkmalloc::check_heap() {
        panic!("heap invariant broken: {} at {:#x}", e.what, e.addr);
    }
}

#[test]
fn over_aligned_types() {
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let v: Vec<Box<Page>> = (0..100).map(|i| Box::new(Page([i as u8; 4096]))).collect();
    for (i, p) in v.iter().enumerate() {
        assert_eq!((&**p as *const Page).addr() % 4096, 0);
        assert!(p.0.iter().all(|&x| x == i as u8));
    }
}
