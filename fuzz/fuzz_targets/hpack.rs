//! Any bytes as a client's header blocks (split at 0xff 0x00) on one HPACK decoder: fields
//! or an error, the dynamic table's size accounting intact, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft_fuzz::hpack(data);
});
