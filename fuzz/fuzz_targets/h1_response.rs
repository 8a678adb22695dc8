//! Any bytes as an upstream's HTTP/1.1 response (head, then length / chunked / close-delimited
//! body): the gateway's client decodes it or reports why not, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft_fuzz::h1_response(data);
});
