//! Any bytes as a client's header blocks (split at 0xff 0x00) on one HPACK decoder: fields
//! or an error, the dynamic table's size accounting intact, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut blocks = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(2).position(|w| w == [0xff, 0x00]) {
        blocks.push(&rest[..i]);
        rest = &rest[i + 2..];
    }
    blocks.push(rest);
    let _ = weft_h2::decode_header_blocks(&blocks);
});
