//! The queue conformance suite on the embedded backend.

weft_queue::queue_tests!(async |_name: &str| {
    let dir = tempfile::tempdir().unwrap();
    let q = weft_queue::embedded::EmbeddedQueue::open(dir.path(), Default::default())
        .await
        .unwrap();
    Some((
        std::sync::Arc::new(q) as std::sync::Arc<dyn weft_queue::Queue>,
        dir,
    ))
});
