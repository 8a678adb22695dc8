//! Any bytes as the users-and-roles file: opened or refused with its path, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft_fuzz::open_auth_file(data);
});
