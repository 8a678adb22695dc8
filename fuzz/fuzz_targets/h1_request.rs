//! Any bytes as a client's request on the gateway's own HTTP/1.1 server loop: it is parsed
//! into a request, left to hyper's server, or found incomplete; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft_fuzz::h1_request(data);
});
