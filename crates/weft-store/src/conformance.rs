//! The conformance suite: one set of tests that every [`Store`] backend must pass.
//!
//! Each case takes a fresh, empty store. Backends instantiate the suite with
//! [`conformance_tests!`](crate::conformance_tests), giving an async factory. Revisions are
//! always checked relative to the store's current revision, so the cases hold on any backend.

use std::time::Duration;

use bytes::Bytes;

use crate::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn rev(s: &dyn Store) -> i64 {
    s.status().await.expect("status").header.revision
}

async fn next_msg(w: &mut WatchStream) -> Result<WatchResponse> {
    tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .expect("watch message within 10s")
        .expect("watch ended unexpectedly")
}

/// Requests a progress notice and waits for it (passing the messages before it to `check`);
/// it must carry at least revision `cur`.
async fn progress_at_least(w: &mut WatchStream, cur: i64, check: impl Fn(&WatchResponse)) {
    w.request_progress();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress notification"
        );
        let m = next_msg(w).await.unwrap();
        if m.is_progress() {
            assert!(
                m.revision >= cur,
                "progress revision {} < {cur}",
                m.revision
            );
            return;
        }
        check(&m);
    }
}

/// Collects watch events until `n` have arrived (progress notices are skipped).
async fn collect(w: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = next_msg(w).await.expect("watch error");
        out.extend(m.events);
    }
    out
}

/// Revisions, create/mod revisions and versions follow etcd exactly.
pub async fn revisions(s: &dyn Store) {
    let r0 = rev(s).await;
    assert_eq!(r0, 1, "an empty store is at revision 1 (etcd's numbering)");
    let r1 = s.put_kv("a", "1").await.unwrap().header.revision;
    assert_eq!(
        r1,
        r0 + 1,
        "each write transaction adds exactly one revision"
    );
    let kv = s.get("a").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r1, 1)
    );
    let r2 = s.put_kv("a", "2").await.unwrap().header.revision;
    assert_eq!(r2, r1 + 1);
    let kv = s.get("a").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r2, 2)
    );
    let d = s
        .delete(DeleteRequest::new(KeyRange::key("a")).prev_kv())
        .await
        .unwrap();
    assert_eq!(d.deleted, 1);
    assert_eq!(d.header.revision, r2 + 1);
    assert_eq!(d.prev_kvs[0].value, b("2"));
    assert!(s.get("a").await.unwrap().is_none());
    // A delete that deletes nothing writes nothing.
    let d = s
        .delete(DeleteRequest::new(KeyRange::key("a")))
        .await
        .unwrap();
    assert_eq!(d.deleted, 0);
    assert_eq!(
        d.header.revision,
        r2 + 1,
        "an empty delete does not add a revision"
    );
    let r4 = s.put_kv("a", "3").await.unwrap().header.revision;
    let kv = s.get("a").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r4, r4, 1),
        "version resets after delete"
    );
    // prev_kv on put.
    let p = s.put(PutRequest::new("a", "4").prev_kv()).await.unwrap();
    assert_eq!(p.prev_kv.unwrap().value, b("3"));
    let p = s
        .put(PutRequest::new("fresh", "x").prev_kv())
        .await
        .unwrap();
    assert!(p.prev_kv.is_none());
}

/// Range options: prefix, `[key, end)`, from-key, limit, keys-only, count-only, past revisions.
pub async fn range_options(s: &dyn Store) {
    for k in ["p/a", "p/b", "p/c", "p/d", "p/e", "q/a"] {
        s.put_kv(k, format!("v-{k}")).await.unwrap();
    }
    let all = s.get_prefix("p/").await.unwrap();
    assert_eq!(all.count, 5);
    let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(
        keys,
        vec![b("p/a"), b("p/b"), b("p/c"), b("p/d"), b("p/e")],
        "key order"
    );
    assert!(!all.more);
    let lim = s
        .range(RangeRequest::new(KeyRange::prefix("p/")).limit(2))
        .await
        .unwrap();
    assert_eq!((lim.kvs.len(), lim.more, lim.count), (2, true, 5));
    let ko = s
        .range(RangeRequest::new(KeyRange::prefix("p/")).keys_only())
        .await
        .unwrap();
    assert!(ko
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.version == 1));
    let co = s
        .range(RangeRequest::new(KeyRange::prefix("p/")).count_only())
        .await
        .unwrap();
    assert_eq!((co.kvs.len(), co.count), (0, 5));
    let r = s
        .range(RangeRequest::new(KeyRange::range("p/b", "p/d")))
        .await
        .unwrap();
    assert_eq!(
        r.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        vec![b("p/b"), b("p/c")]
    );
    let from = s
        .range(RangeRequest::new(KeyRange::range("p/d", RANGE_END_ALL)))
        .await
        .unwrap();
    assert_eq!(from.count, 3, "p/d, p/e, q/a");
    let inverted = s
        .range(RangeRequest::new(KeyRange::range("z", "a")))
        .await
        .unwrap();
    assert_eq!(inverted.count, 0);
    // Past revisions.
    let before = s.put_kv("p/a", "new").await.unwrap().header.revision - 1;
    let old = s
        .range(RangeRequest::new(KeyRange::key("p/a")).revision(before))
        .await
        .unwrap();
    assert_eq!(old.kvs[0].value, b("v-p/a"));
    let now = s.get("p/a").await.unwrap().unwrap();
    assert_eq!(now.value, b("new"));
    let future = s
        .range(RangeRequest::new(KeyRange::key("p/a")).revision(before + 100))
        .await;
    assert!(
        matches!(future, Err(StoreError::FutureRevision { .. })),
        "{future:?}"
    );
}

/// Transactions: every compare target and operator, both branches, one revision.
pub async fn txn_semantics(s: &dyn Store) {
    let r1 = s.put_kv("t/a", "5").await.unwrap().header.revision;
    let cases: Vec<(CompareTarget, CompareOp, bool)> = vec![
        (CompareTarget::Value(b("5")), CompareOp::Equal, true),
        (CompareTarget::Value(b("4")), CompareOp::Greater, true),
        (CompareTarget::Value(b("6")), CompareOp::Less, true),
        (CompareTarget::Value(b("5")), CompareOp::NotEqual, false),
        (CompareTarget::Version(1), CompareOp::Equal, true),
        (CompareTarget::Version(1), CompareOp::Greater, false),
        (CompareTarget::CreateRevision(r1), CompareOp::Equal, true),
        (CompareTarget::ModRevision(r1 + 1), CompareOp::Less, true),
        (CompareTarget::Lease(0), CompareOp::Equal, true),
        (CompareTarget::Lease(0), CompareOp::NotEqual, false),
    ];
    for (target, op, want) in cases {
        let t = TxnRequest::new().when([Compare::new("t/a", op, target.clone())]);
        let got = s.txn(t).await.unwrap().succeeded;
        assert_eq!(got, want, "compare {target:?} {op:?}");
    }
    // Missing keys: value compares fail, others compare with zero (etcd semantics).
    let t = TxnRequest::new().when([Compare::new(
        "t/missing",
        CompareOp::NotEqual,
        CompareTarget::Value(b("x")),
    )]);
    assert!(!s.txn(t).await.unwrap().succeeded);
    let t = TxnRequest::new().when([Compare::new(
        "t/missing",
        CompareOp::Equal,
        CompareTarget::Version(0),
    )]);
    assert!(s.txn(t).await.unwrap().succeeded, "create-if-absent idiom");
    // A range compare: every key must satisfy it.
    s.put_kv("t/b", "5").await.unwrap();
    let c = Compare {
        range: KeyRange::prefix("t/"),
        target: CompareTarget::Value(b("5")),
        op: CompareOp::Equal,
    };
    assert!(
        s.txn(TxnRequest::new().when([c.clone()]))
            .await
            .unwrap()
            .succeeded
    );
    s.put_kv("t/c", "6").await.unwrap();
    assert!(!s.txn(TxnRequest::new().when([c])).await.unwrap().succeeded);
    // Branches apply atomically at one revision; reads see the txn's own writes.
    let before = rev(s).await;
    let t = TxnRequest::new()
        .when([Compare::new(
            "t/a",
            CompareOp::Equal,
            CompareTarget::Value(b("5")),
        )])
        .and_then([
            TxnOp::Put(PutRequest::new("t/x", "1")),
            TxnOp::Put(PutRequest::new("t/y", "2")),
            TxnOp::Range(RangeRequest::new(KeyRange::key("t/x"))),
        ])
        .or_else([TxnOp::Put(PutRequest::new("t/failed", "1"))]);
    let resp = s.txn(t).await.unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.header.revision, before + 1);
    let x = s.get("t/x").await.unwrap().unwrap();
    let y = s.get("t/y").await.unwrap().unwrap();
    assert_eq!((x.mod_revision, y.mod_revision), (before + 1, before + 1));
    match &resp.responses[2] {
        TxnOpResponse::Range(r) => assert_eq!(r.kvs[0].value, b("1"), "txn reads its own writes"),
        other => panic!("expected a range response, got {other:?}"),
    }
    assert!(s.get("t/failed").await.unwrap().is_none());
    // Failure branch.
    let t = TxnRequest::new()
        .when([Compare::new(
            "t/a",
            CompareOp::Equal,
            CompareTarget::Value(b("nope")),
        )])
        .and_then([TxnOp::Put(PutRequest::new("t/ok", "1"))])
        .or_else([TxnOp::Delete(
            DeleteRequest::new(KeyRange::key("t/x")).prev_kv(),
        )]);
    let resp = s.txn(t).await.unwrap();
    assert!(!resp.succeeded);
    match &resp.responses[0] {
        TxnOpResponse::Delete(d) => assert_eq!((d.deleted, d.prev_kvs.len()), (1, 1)),
        other => panic!("expected a delete response, got {other:?}"),
    }
    // A read-only txn writes nothing.
    let r = rev(s).await;
    let resp = s
        .txn(TxnRequest::new().and_then([TxnOp::Range(RangeRequest::new(KeyRange::key("t/a")))]))
        .await
        .unwrap();
    assert_eq!(resp.header.revision, r);
    // The same key twice in one branch is rejected, and nothing is applied.
    let t = TxnRequest::new().and_then([
        TxnOp::Put(PutRequest::new("t/dup", "1")),
        TxnOp::Put(PutRequest::new("t/dup", "2")),
    ]);
    assert_eq!(s.txn(t).await.unwrap_err(), StoreError::DuplicateKey);
    let t = TxnRequest::new().and_then([
        TxnOp::Delete(DeleteRequest::new(KeyRange::prefix("t/"))),
        TxnOp::Put(PutRequest::new("t/dup", "2")),
    ]);
    assert_eq!(s.txn(t).await.unwrap_err(), StoreError::DuplicateKey);
    assert!(s.get("t/dup").await.unwrap().is_none());
    assert_eq!(rev(s).await, r);
}

/// Transactions inside transactions (etcd ≥ 3.3): every compare, nested ones included, is
/// evaluated on the state before any operation applies; the chosen operations run in order
/// at one revision; a key written twice anywhere on the chosen path is refused.
pub async fn nested_txn(s: &dyn Store) {
    s.put_kv("n/a", "1").await.unwrap();
    let a_is_1 = || Compare::new("n/a", CompareOp::Equal, CompareTarget::Value(b("1")));
    // `n/b` is put by the outer branch before the nested txn runs, yet the nested compare
    // sees the state before: `n/b` does not exist there.
    let b_exists = Compare::new("n/b", CompareOp::Greater, CompareTarget::Version(0));
    let inner_ok = TxnRequest::new()
        .when([a_is_1()])
        .and_then([
            TxnOp::Range(RangeRequest::new(KeyRange::key("n/b"))),
            TxnOp::Put(PutRequest::new("n/c", "ok")),
        ])
        .or_else([TxnOp::Put(PutRequest::new("n/c", "wrong"))]);
    let inner_no = TxnRequest::new()
        .when([b_exists])
        .and_then([TxnOp::Put(PutRequest::new("n/d", "saw b"))])
        .or_else([TxnOp::Put(PutRequest::new("n/d", "before b"))]);
    let t = TxnRequest::new().when([a_is_1()]).and_then([
        TxnOp::Put(PutRequest::new("n/b", "1")),
        TxnOp::Txn(inner_ok),
        TxnOp::Txn(inner_no),
    ]);
    let r = s.txn(t).await.unwrap();
    assert!(r.succeeded);
    assert_eq!(r.responses.len(), 3);
    let TxnOpResponse::Txn(first) = &r.responses[1] else {
        panic!("{:?}", r.responses[1])
    };
    assert!(first.succeeded);
    let TxnOpResponse::Range(seen) = &first.responses[0] else {
        panic!("{:?}", first.responses[0])
    };
    assert_eq!(seen.kvs.len(), 1, "a range after the outer put sees it");
    let TxnOpResponse::Txn(second) = &r.responses[2] else {
        panic!("{:?}", r.responses[2])
    };
    assert!(
        !second.succeeded,
        "nested compares see the state before the txn"
    );
    assert_eq!(s.get("n/c").await.unwrap().unwrap().value, b("ok"));
    let d = s.get("n/d").await.unwrap().unwrap();
    assert_eq!(d.value, b("before b"));
    assert_eq!(
        d.mod_revision, r.header.revision,
        "one revision for everything"
    );
    assert_eq!(
        s.get("n/b").await.unwrap().unwrap().mod_revision,
        r.header.revision
    );
    // The same key put by the outer branch and by the nested one: refused, nothing applied.
    let before = rev(s).await;
    let dup = TxnRequest::new().and_then([
        TxnOp::Put(PutRequest::new("n/e", "1")),
        TxnOp::Txn(TxnRequest::new().and_then([TxnOp::Put(PutRequest::new("n/e", "2"))])),
    ]);
    assert_eq!(s.txn(dup).await.unwrap_err(), StoreError::DuplicateKey);
    assert_eq!(rev(s).await, before);
    assert!(s.get("n/e").await.unwrap().is_none());
}

/// Leases: grant, keepalive, time-to-live with keys, list, revoke deleting keys at one revision.
pub async fn leases(s: &dyn Store) {
    let min = s.limits().min_lease_ttl;
    let g = s.lease_grant(1, 0).await.unwrap();
    assert_eq!(g.ttl, min.max(1), "TTL below the minimum is raised to it");
    let g = s.lease_grant(30, 0).await.unwrap();
    assert!(g.id > 0);
    assert_eq!(g.ttl, 30);
    s.put(PutRequest::new("l/a", "1").lease(g.id))
        .await
        .unwrap();
    s.put(PutRequest::new("l/b", "2").lease(g.id))
        .await
        .unwrap();
    s.put_kv("l/c", "3").await.unwrap();
    let kv = s.get("l/a").await.unwrap().unwrap();
    assert_eq!(kv.lease, g.id);
    let ttl = s.lease_time_to_live(g.id, true).await.unwrap();
    assert_eq!(ttl.granted_ttl, 30);
    assert!(ttl.ttl > 25 && ttl.ttl <= 30, "remaining {}", ttl.ttl);
    let mut keys = ttl.keys.clone();
    keys.sort();
    assert_eq!(keys, vec![b("l/a"), b("l/b")]);
    let ka = s.lease_keep_alive(g.id).await.unwrap();
    assert_eq!(ka.ttl, 30);
    assert!(s.lease_list().await.unwrap().contains(&g.id));
    // Re-putting a key without the lease detaches it.
    s.put_kv("l/b", "2b").await.unwrap();
    let ttl = s.lease_time_to_live(g.id, true).await.unwrap();
    assert_eq!(ttl.keys, vec![b("l/a")]);
    s.put(PutRequest::new("l/b", "2c").lease(g.id))
        .await
        .unwrap();
    // Revoke deletes the attached keys in one revision, with delete events.
    let mut w = s
        .watch(WatchRequest::new(KeyRange::prefix("l/")))
        .await
        .unwrap();
    let before = rev(s).await;
    let h = s.lease_revoke(g.id).await.unwrap();
    assert_eq!(
        h.revision,
        before + 1,
        "revoke deletes all keys at one revision"
    );
    assert!(s.get("l/a").await.unwrap().is_none());
    assert!(s.get("l/b").await.unwrap().is_none());
    assert!(s.get("l/c").await.unwrap().is_some());
    let evs = collect(&mut w, 2).await;
    assert!(evs
        .iter()
        .all(|e| e.kind == EventType::Delete && e.kv.mod_revision == before + 1));
    // Unknown lease ids give a distinct error everywhere.
    assert_eq!(
        s.lease_revoke(g.id).await.unwrap_err(),
        StoreError::LeaseNotFound(g.id)
    );
    assert_eq!(
        s.lease_keep_alive(g.id).await.unwrap_err(),
        StoreError::LeaseNotFound(g.id)
    );
    assert_eq!(
        s.lease_time_to_live(g.id, false).await.unwrap_err(),
        StoreError::LeaseNotFound(g.id)
    );
    assert!(!s.lease_list().await.unwrap().contains(&g.id));
    let e = s
        .put(PutRequest::new("l/z", "1").lease(g.id))
        .await
        .unwrap_err();
    assert_eq!(e, StoreError::LeaseNotFound(g.id));
    // Chosen ids.
    let id = 0x7eed_0000 + (before % 1000);
    let g2 = s.lease_grant(10, id).await.unwrap();
    assert_eq!(g2.id, id);
    assert!(matches!(s.lease_grant(10, id).await, Err(StoreError::LeaseExists(x)) if x == id));
    let too_long = s.limits().max_lease_ttl + 1;
    assert!(matches!(
        s.lease_grant(too_long, 0).await,
        Err(StoreError::LeaseTtlTooLarge { .. })
    ));
}

/// A lease that is not kept alive expires: its keys are deleted in one revision.
pub async fn lease_expiry(s: &dyn Store) {
    let min = s.limits().min_lease_ttl;
    let g = s.lease_grant(min, 0).await.unwrap();
    s.put(PutRequest::new("e/a", "1").lease(g.id))
        .await
        .unwrap();
    s.put(PutRequest::new("e/b", "1").lease(g.id))
        .await
        .unwrap();
    let mut w = s
        .watch(WatchRequest::new(KeyRange::prefix("e/")))
        .await
        .unwrap();
    let evs = tokio::time::timeout(Duration::from_secs(min as u64 + 10), collect(&mut w, 2))
        .await
        .expect("lease expired within TTL + 10s");
    assert!(evs.iter().all(|e| e.kind == EventType::Delete));
    assert_eq!(
        evs[0].kv.mod_revision, evs[1].kv.mod_revision,
        "one revision for all keys of a lease"
    );
    assert!(s.get_prefix("e/").await.unwrap().kvs.is_empty());
    assert_eq!(
        s.lease_keep_alive(g.id).await.unwrap_err(),
        StoreError::LeaseNotFound(g.id)
    );
}

/// Watch: order, prev_kv, filters, history from a start revision, one txn in one response,
/// progress notifications, cancel.
pub async fn watch_semantics(s: &dyn Store) {
    let start = rev(s).await + 1;
    let mut w = s
        .watch(WatchRequest::new(KeyRange::prefix("w/")).prev_kv())
        .await
        .unwrap();
    s.put_kv("w/a", "1").await.unwrap();
    s.put_kv("other", "x").await.unwrap();
    s.put_kv("w/a", "2").await.unwrap();
    s.delete_key("w/a").await.unwrap();
    let txn = TxnRequest::new().and_then([
        TxnOp::Put(PutRequest::new("w/b", "1")),
        TxnOp::Put(PutRequest::new("w/c", "1")),
    ]);
    let trev = s.txn(txn).await.unwrap().header.revision;
    let evs = collect(&mut w, 5).await;
    let kinds: Vec<_> = evs.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            EventType::Put,
            EventType::Put,
            EventType::Delete,
            EventType::Put,
            EventType::Put
        ]
    );
    assert_eq!(evs[1].prev_kv.as_ref().unwrap().value, b("1"));
    assert_eq!(evs[2].prev_kv.as_ref().unwrap().value, b("2"));
    assert_eq!(evs[2].kv.key, b("w/a"));
    assert!(
        evs.windows(2)
            .all(|p| p[0].kv.mod_revision <= p[1].kv.mod_revision),
        "revision order"
    );
    assert_eq!(
        (evs[3].kv.mod_revision, evs[4].kv.mod_revision),
        (trev, trev)
    );

    // A watch from a past revision replays history, inclusive of the start revision.
    let mut h = s
        .watch(WatchRequest::new(KeyRange::prefix("w/")).start_revision(start))
        .await
        .unwrap();
    let evs = collect(&mut h, 5).await;
    assert_eq!(evs[0].kv.mod_revision, start);
    assert!(evs[0].prev_kv.is_none(), "prev_kv only when asked for");
    // Events of one revision arrive in one response.
    let mut t = s
        .watch(WatchRequest::new(KeyRange::prefix("w/")).start_revision(trev))
        .await
        .unwrap();
    let m = next_msg(&mut t).await.unwrap();
    assert_eq!(
        m.events.len(),
        2,
        "both events of the txn revision in one response"
    );

    // Filters.
    let mut f = s
        .watch(WatchRequest {
            no_put: true,
            ..WatchRequest::new(KeyRange::prefix("w/")).start_revision(start)
        })
        .await
        .unwrap();
    let evs = collect(&mut f, 1).await;
    assert!(evs.iter().all(|e| e.kind == EventType::Delete));

    // Progress: once caught up, a requested progress notice carries the current revision.
    let cur = rev(s).await;
    progress_at_least(&mut w, cur, |_| {}).await;
    // Cancel ends the stream.
    w.cancel();
    let end = tokio::time::timeout(Duration::from_secs(5), w.message())
        .await
        .expect("ends");
    assert!(end.is_none() || matches!(end, Some(Ok(_))));
}

/// A watcher that does not read is never silently dropped: it gets every event, in order.
pub async fn watch_slow_consumer(s: &dyn Store) {
    let mut w = s
        .watch(WatchRequest::new(KeyRange::prefix("slow/")))
        .await
        .unwrap();
    let n = 600usize;
    for i in 0..n {
        s.put_kv(format!("slow/{}", i % 7), format!("{i}"))
            .await
            .unwrap();
    }
    let evs = collect(&mut w, n).await;
    assert_eq!(evs.len(), n);
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(
            e.kv.value,
            b(&i.to_string()),
            "event {i} out of order or lost"
        );
    }
}

/// Compaction: reads and watches before the compaction point fail with distinct errors.
pub async fn compaction(s: &dyn Store) {
    let r1 = s.put_kv("c/a", "1").await.unwrap().header.revision;
    let r2 = s.put_kv("c/a", "2").await.unwrap().header.revision;
    s.put_kv("c/a", "3").await.unwrap();
    s.compact(r2).await.unwrap();
    // Reading at the compaction point works; before it fails.
    let at = s
        .range(RangeRequest::new(KeyRange::key("c/a")).revision(r2))
        .await
        .unwrap();
    assert_eq!(at.kvs[0].value, b("2"));
    let old = s
        .range(RangeRequest::new(KeyRange::key("c/a")).revision(r1))
        .await;
    assert!(matches!(old, Err(StoreError::Compacted { .. })), "{old:?}");
    let again = s.compact(r2).await;
    assert!(
        matches!(again, Err(StoreError::Compacted { .. })),
        "{again:?}"
    );
    let fut = s.compact(r2 + 1000).await;
    assert!(
        matches!(fut, Err(StoreError::FutureRevision { .. })),
        "{fut:?}"
    );
    let mut w = s
        .watch(WatchRequest::new(KeyRange::prefix("c/")).start_revision(r1))
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .expect("answer");
    match m {
        Some(Err(StoreError::Compacted {
            compact_revision, ..
        })) => assert_eq!(compact_revision, r2),
        other => panic!("expected a compacted error, got {other:?}"),
    }
    // A watch from the compaction point onwards works.
    let mut w = s
        .watch(WatchRequest::new(KeyRange::prefix("c/")).start_revision(r2 + 1))
        .await
        .unwrap();
    let evs = collect(&mut w, 1).await;
    assert_eq!(evs[0].kv.value, b("3"));
}

/// A watcher of a key nobody writes stays in sync while other keys change and history is
/// compacted past its start: its next event arrives (no compaction error), and a progress
/// notice carries the current revision, not the one it last had an event at.
pub async fn watch_quiet_key(s: &dyn Store) {
    let mut w = s
        .watch(WatchRequest::new(KeyRange::key("q/watched")))
        .await
        .unwrap();
    let mut wp = s
        .watch(WatchRequest::new(KeyRange::prefix("q/pre/")))
        .await
        .unwrap();
    for i in 0..20 {
        s.put_kv(format!("q/other/{}", i % 3), i.to_string())
            .await
            .unwrap();
    }
    let cur = rev(s).await;
    s.compact(cur).await.unwrap();
    // Progress first: everything up to the current revision has been sent (nothing, here).
    progress_at_least(&mut w, cur, |m| {
        assert!(m.events.is_empty(), "nothing changed the key: {m:?}")
    })
    .await;
    // Each watcher's next event is the put that follows.
    for (w, key) in [(&mut w, "q/watched"), (&mut wp, "q/pre/x")] {
        let r = s.put_kv(key, "1").await.unwrap().header.revision;
        let evs = collect(w, 1).await;
        assert_eq!(
            (evs[0].kv.mod_revision, &evs[0].kv.value[..]),
            (r, &b"1"[..]),
            "{key}"
        );
    }
}

/// `hash_kv` is stable for a revision and changes with the data.
pub async fn hash_kv(s: &dyn Store) {
    s.put_kv("h/a", "1").await.unwrap();
    let h1 = s.hash_kv(0).await.unwrap();
    let again = s.hash_kv(h1.hash_revision).await.unwrap();
    assert_eq!(h1.hash, again.hash);
    s.put_kv("h/a", "2").await.unwrap();
    let h2 = s.hash_kv(0).await.unwrap();
    assert_ne!(h1.hash, h2.hash);
    assert_eq!(
        s.hash_kv(h1.hash_revision).await.unwrap().hash,
        h1.hash,
        "past revisions hash the same"
    );
}

/// A backup is the whole store at a revision that covers every acknowledged write, in as
/// many bytes as announced; defragmenting keeps the data and the revision.
pub async fn backup_and_defragment(s: &dyn Store) {
    use futures::StreamExt;
    for i in 0..20 {
        s.put_kv(format!("b/{i}"), vec![b'x'; 1000]).await.unwrap();
    }
    let last = s.put_kv("b/last", "1").await.unwrap().header.revision;
    let mut b = s.backup().await.unwrap();
    // 0: the backend does not say (etcd's `Snapshot` responses carry no header).
    assert!(
        b.revision == 0 || b.revision >= last,
        "{} < {last}",
        b.revision
    );
    let mut bytes = 0u64;
    while let Some(chunk) = b.chunks.next().await {
        bytes += chunk.unwrap().len() as u64;
    }
    // 21 values of up to 1000 bytes are in it.
    assert!(bytes > 20_000, "{bytes} bytes");
    if let Some(n) = b.size {
        assert_eq!(n, bytes, "announced size");
    }
    let before = s.hash_kv(0).await.unwrap();
    let h = s.defragment().await.unwrap();
    assert!(h.revision >= last);
    let after = s.hash_kv(before.hash_revision).await.unwrap();
    assert_eq!(after.hash, before.hash, "defragment changed the data");
    assert_eq!(s.get("b/last").await.unwrap().unwrap().mod_revision, last);
    // A backup dropped part-way costs nothing.
    let b = s.backup().await.unwrap();
    drop(b);
    s.put_kv("b/after", "1").await.unwrap();
}

/// Documented limits give clear errors and apply nothing.
pub async fn limits(s: &dyn Store) {
    let l = s.limits();
    let r = rev(s).await;
    let big = vec![b'x'; l.max_request_bytes + 1];
    let e = s.put_kv("big", big).await.unwrap_err();
    assert!(matches!(e, StoreError::TooLarge { .. }), "{e:?}");
    let e = s.put_kv("", "v").await.unwrap_err();
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e:?}");
    let ops: Vec<TxnOp> = (0..=l.max_txn_ops)
        .map(|i| TxnOp::Put(PutRequest::new(format!("k{i}"), "v")))
        .collect();
    let e = s.txn(TxnRequest::new().and_then(ops)).await.unwrap_err();
    assert!(matches!(e, StoreError::TooManyOps { .. }), "{e:?}");
    assert_eq!(rev(s).await, r, "rejected requests write nothing");
    // The largest allowed txn works.
    let ops: Vec<TxnOp> = (0..l.max_txn_ops)
        .map(|i| TxnOp::Put(PutRequest::new(format!("k{i}"), "v")))
        .collect();
    assert!(
        s.txn(TxnRequest::new().and_then(ops))
            .await
            .unwrap()
            .succeeded
    );
}

/// Instantiates the whole suite as `#[tokio::test]`s for a backend.
///
/// `$factory` is an async expression evaluating to `Option<(store, guard)>`, where the store
/// implements [`Store`] and the guard is kept alive for the test (e.g. a temp dir or a server
/// process). `None` means the backend is not available here (the factory decides whether that
/// is allowed, e.g. never under `CI=true`) and the case returns after saying so.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@case $factory;
            revisions range_options txn_semantics nested_txn leases lease_expiry watch_semantics
            watch_slow_consumer watch_quiet_key compaction hash_kv backup_and_defragment limits);
    };
    (@case $factory:expr; $($name:ident)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((store, _guard)) = $factory.await else {
                    eprintln!("backend not available: case skipped");
                    return;
                };
                $crate::conformance::$name(&store).await;
            }
        )*
    };
}
