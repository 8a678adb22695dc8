//! The conformance suite against the embedded engine.

async fn fresh() -> Option<(weft_store::embedded::Embedded, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = weft_store::embedded::Embedded::open(dir.path(), Default::default())
        .await
        .expect("open");
    Some((store, dir))
}

weft_store::conformance_tests!(fresh());
