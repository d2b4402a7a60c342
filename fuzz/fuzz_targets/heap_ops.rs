//! Fuzz target: an operation sequence against the central heap and several thread caches,
//! checked against a shadow model after every step (`fuzz/driver.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../driver.rs"]
mod driver;

fuzz_target!(|data: &[u8]| {
    driver::run(data);
});
