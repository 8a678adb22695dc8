//! Arbitrary bytes as a snapshot file: opening the data dir must either recover the state it
//! holds or fail with a clear error naming the damage; it must never panic, hang or allocate
//! what a length field claims without the bytes to back it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft_fuzz::open_snapshot(data);
});
