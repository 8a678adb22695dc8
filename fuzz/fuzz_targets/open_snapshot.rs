//! Arbitrary bytes as a snapshot file: opening the data dir must either recover the state it
//! holds or fail with a clear error naming the damage; it must never panic, hang or allocate
//! what a length field claims without the bytes to back it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft_fuzz::open_data_dir_with("snap-00000000000000000001.snap", data);
});
