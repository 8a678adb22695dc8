//! Any bytes as a body of delivery frames (`weft_queue::wire`): decoded or refused with the
//! byte, never a panic; what decodes encodes back to the same frames' contents.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft_fuzz::queue_wire(data);
});
