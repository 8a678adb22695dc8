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

/// Writes `data` as the first segment of a queue's log and opens the queue: it must recover
/// (cutting a torn tail) or fail with a clear error, never panic or hang; if it opens, every
/// topic can be described and read.
pub fn open_queue_dir(data: &[u8]) {
    use weft_queue::Queue;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("log")).unwrap();
    std::fs::write(dir.path().join("log").join(format!("{:020}.seg", 0)), data).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = weft_queue::embedded::Options {
            direct_io: false,
            ..Default::default()
        };
        match weft_queue::embedded::EmbeddedQueue::open(dir.path(), opts).await {
            Ok(q) => {
                for t in q.topics().await.unwrap_or_default() {
                    for p in &t.partitions {
                        let _ = q
                            .read(&t.name, p.partition, weft_queue::StartAt::Earliest, 100)
                            .await;
                    }
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    });
}
