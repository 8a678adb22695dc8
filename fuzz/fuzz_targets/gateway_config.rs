//! Any text as a gateway config: parsing and validation return a value or an error, never
//! panic; templates parse or are refused; a valid config builds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = weft_gateway::route::Template::parse(text);
    if let Ok(t) = weft_gateway::route::Template::parse("/a/{x}/{*rest}") {
        let _ = t.matches(text);
        let _ = t.check_rewrite(text);
    }
    if let Ok(cfg) = weft_gateway::Config::from_toml(text, "fuzz.toml") {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let _ = weft_gateway::Gateway::new(cfg, None);
        });
    }
});
