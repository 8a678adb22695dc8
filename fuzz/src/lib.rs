//! The fuzz targets' bodies, one function each, shared by the libFuzzer targets
//! (`fuzz_targets/`, `cargo fuzz run NAME` on nightly) and by the stable smoke runner
//! (`src/bin/smoke.rs`, run for a bounded time by `cargo xtask test`): [`TARGETS`].

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
            assert!(
                !target.exists(),
                "a failed restore created {}",
                target.display()
            );
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

/// Any text as a gateway config: parsing and validation return a value or an error, never
/// panic; templates parse or are refused; a valid config builds.
pub fn gateway_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = weft_gateway::route::Template::parse(text);
    if let Ok(t) = weft_gateway::route::Template::parse("/a/{x}/{*rest}") {
        let _ = t.matches(text);
        let _ = t.check_rewrite(text);
    }
    if let Ok(cfg) = weft_gateway::Config::from_toml(text, "fuzz.toml") {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let _ = weft_gateway::Gateway::new(cfg, None);
        });
    }
}

/// Any bytes as a client's request on the gateway's own HTTP/1.1 server loop: it is parsed
/// into a request, left to hyper's server, or found incomplete; never a panic.
pub fn h1_request(data: &[u8]) {
    let _ = weft_h1::decode_request(data);
}

/// Any bytes as an upstream's HTTP/1.1 response (head, then length / chunked / close-delimited
/// body): the gateway's client decodes it or reports why not, never panics.
pub fn h1_response(data: &[u8]) {
    let _ = weft_h1::decode_response(data, &http::Method::GET);
    let _ = weft_h1::decode_response(data, &http::Method::HEAD);
}

/// Any bytes as a client's header blocks (split at 0xff 0x00) on one HPACK decoder: fields
/// or an error, the dynamic table's size accounting intact, never a panic.
pub fn hpack(data: &[u8]) {
    let mut blocks = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(2).position(|w| w == [0xff, 0x00]) {
        blocks.push(&rest[..i]);
        rest = &rest[i + 2..];
    }
    blocks.push(rest);
    let _ = weft_h2::decode_header_blocks(&blocks);
}

/// Any bytes as a body of delivery frames (`weft_queue::wire`): decoded or refused with the
/// byte, never a panic; what decodes encodes back to the same frames' contents.
pub fn queue_wire(data: &[u8]) {
    if let Ok(ds) = weft_queue::wire::decode_deliveries(data) {
        let mut buf = Vec::new();
        for d in &ds {
            weft_queue::wire::delivery_frame(d, &mut buf);
        }
        assert_eq!(weft_queue::wire::decode_deliveries(&buf).unwrap(), ds);
    }
}

/// Opens a data dir whose write-ahead log is `data`.
pub fn open_data_dir(data: &[u8]) {
    open_data_dir_with("wal-00000000000000000000.log", data);
}

/// Opens a data dir whose snapshot is `data`.
pub fn open_snapshot(data: &[u8]) {
    open_data_dir_with("snap-00000000000000000001.snap", data);
}

/// Any bytes as the users-and-roles file (`auth.json`): it opens or is refused with its path
/// and reason, never a panic; if it opens, what it holds can be read and enabled auth still
/// refuses a call without a token.
pub fn open_auth_file(data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.json");
    std::fs::write(&path, data).unwrap();
    match weft_auth::Auth::open(&path, Default::default()) {
        Ok(a) => {
            for u in a.user_list() {
                let _ = a.user_get(&u);
            }
            for r in a.role_list() {
                let _ = a.role_get(&r);
            }
            if a.enabled() {
                assert!(a.identify(None).is_err(), "enabled auth let a caller without a token in");
            }
        }
        Err(e) => assert!(e.to_string().contains("auth.json"), "{e}"),
    }
}

/// Every target by name: the libFuzzer targets call these, the smoke runner runs them all.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("gateway_config", gateway_config),
    ("h1_request", h1_request),
    ("h1_response", h1_response),
    ("hpack", hpack),
    ("open_auth_file", open_auth_file),
    ("open_data_dir", open_data_dir),
    ("open_queue_dir", open_queue_dir),
    ("open_snapshot", open_snapshot),
    ("queue_wire", queue_wire),
    ("restore_backup", restore_backup),
];
