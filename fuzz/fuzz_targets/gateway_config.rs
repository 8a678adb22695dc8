//! Any text as a gateway config: parsing and validation return a value or an error, never
//! panic; templates parse or are refused; a valid config builds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft_fuzz::gateway_config(data);
});
