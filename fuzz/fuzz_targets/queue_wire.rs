//! Any bytes as a body of delivery frames (`weft_queue::wire`): decoded or refused with the
//! byte, never a panic; what decodes encodes back to the same frames' contents.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ds) = weft_queue::wire::decode_deliveries(data) {
        let mut buf = Vec::new();
        for d in &ds {
            weft_queue::wire::delivery_frame(d, &mut buf);
        }
        assert_eq!(weft_queue::wire::decode_deliveries(&buf).unwrap(), ds);
    }
});
