//! What the data-dir fuzz targets share: one file of arbitrary bytes in an empty data dir,
//! then `Embedded::open`, which must recover or fail with a clear error, never panic or hang.

/// Writes `data` as `file` in a fresh data dir and opens it (and reads it, if it opens).
pub fn open_data_dir_with(file: &str, data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(file), data).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
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
}
