//! Arbitrary bytes as a snapshot file: opening the data dir must either recover the state it
//! holds or fail with a clear error naming the damage; it must never panic, hang or allocate
//! what a length field claims without the bytes to back it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("snap-00000000000000000001.snap"), data).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        match weft_store::embedded::Embedded::open(dir.path(), Default::default()).await {
            Ok(s) => {
                let _ = weft_store::Store::status(&s).await;
                let _ = weft_store::Store::hash_kv(&s, 0).await;
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    });
});
