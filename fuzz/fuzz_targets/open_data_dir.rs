//! Arbitrary bytes as a log file: opening the data dir must either recover (possibly after
//! truncating a torn tail) or fail with a clear error; it must never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft_fuzz::open_data_dir(data);
});
