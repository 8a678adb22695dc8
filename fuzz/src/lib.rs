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

/// Writes `data` as a backup file and restores it into a new data dir: `restore` must either
/// make a data dir that opens, at the revision it reported, or fail with a clear error and
/// create nothing.
pub fn restore_backup(data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup");
    std::fs::write(&file, data).unwrap();
    let target = dir.path().join("data");
    match weft_store::embedded::restore(&file, &target) {
        Ok(info) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let s = weft_store::embedded::Embedded::open(&target, Default::default())
                    .await
                    .expect("a restored data dir opens");
                let st = weft_store::Store::status(&s).await.unwrap();
                assert_eq!(st.header.revision, info.revision);
            });
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(!target.exists(), "a failed restore created {}", target.display());
        }
    }
}
