//! Arbitrary bytes as the queue's commit log: opening must either recover (possibly after
//! cutting a torn tail) or fail with a clear error naming the file and offset; never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft_fuzz::open_queue_dir(data);
});
