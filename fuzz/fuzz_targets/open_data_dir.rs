//! Arbitrary bytes as a log file: opening the data dir must either recover (possibly after
//! truncating a torn tail) or fail with a clear error; it must never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wal-00000000000000000000.log"), data).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        match weft_store::embedded::Embedded::open(dir.path(), Default::default()).await {
            Ok(s) => {
                let _ = weft_store::Store::status(&s).await;
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    });
});
