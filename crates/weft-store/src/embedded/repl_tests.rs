//! The replication hooks: a replica fed from the primary's feed or its log files ends with
//! the primary's state, refuses client writes, and detects records that do not follow.

use super::*;
use crate::{KeyRange, StoreExt};

async fn open(dir: &Path) -> Embedded {
    Embedded::open(dir, Options::default()).await.unwrap()
}

/// Copies every chunk from `cursor` on into `to`; returns the next cursor.
async fn pump(from: &Embedded, to: &Embedded, mut cursor: u64) -> u64 {
    loop {
        match from.feed_next(cursor) {
            FeedNext::Chunk(c) => {
                let a = to.apply_records(&c.bytes).unwrap();
                to.wait_local(a.seq).await.unwrap();
                cursor = c.id + 1;
            }
            FeedNext::Pending => return cursor,
            FeedNext::Lost => panic!("chunk {cursor} lost"),
        }
    }
}

async fn writes(s: &Embedded, n: usize) -> i64 {
    let g = s.lease_grant(600, 0).await.unwrap();
    s.put(PutRequest::new("leased", "x").lease(g.id))
        .await
        .unwrap();
    for i in 0..n {
        s.put_kv(format!("k/{}", i % 7), format!("v{i}"))
            .await
            .unwrap();
    }
    // No-change records at the newest revision: a grant and a compaction.
    s.lease_grant(600, 0).await.unwrap();
    let r = s.status().await.unwrap().header.revision;
    s.compact(r - 2).await.unwrap();
    g.id
}

async fn same(a: &Embedded, b: &Embedded) {
    let (sa, sb) = (a.status().await.unwrap(), b.status().await.unwrap());
    assert_eq!(sa.header.revision, sb.header.revision);
    assert_eq!(sa.compact_revision, sb.compact_revision);
    assert_eq!(a.lease_list().await.unwrap(), b.lease_list().await.unwrap());
    assert_eq!(
        a.hash_kv(0).await.unwrap().hash,
        b.hash_kv(0).await.unwrap().hash
    );
}

#[tokio::test]
async fn a_replica_fed_from_the_feed_matches_the_primary() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p = open(d1.path()).await;
    let r = open(d2.path()).await;
    r.set_primary(Some("http://primary".into()));
    p.enable_feed(1 << 20);
    // At revision 1 there may have been records before the feed began (lease grants): it
    // cannot say; this store has none, so its head is where the replica starts.
    assert!(p.feed_from(1).is_none());
    let cursor = p.feed_head().unwrap();
    writes(&p, 40).await;
    let cursor = pump(&p, &r, cursor).await;
    same(&p, &r).await;
    // Client writes are refused on the replica, with the primary's address.
    let e = r.put_kv("x", "y").await.unwrap_err();
    assert_eq!(e, StoreError::NotPrimary("http://primary".into()));
    assert!(r.lease_keep_alive(1).await.is_err());
    // Chunks sent twice (a reconnect) change nothing.
    let again = p.feed_from(r.durable_point().rev).unwrap();
    assert!(again < cursor);
    pump(&p, &r, again).await;
    same(&p, &r).await;
    // A replica restarted from its data dir keeps everything.
    drop(r);
    let r = open(d2.path()).await;
    same(&p, &r).await;
}

#[tokio::test]
async fn a_replica_catches_up_from_the_log_files_then_the_feed() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p = open(d1.path()).await;
    writes(&p, 30).await;
    // Writes before the feed started are not in it.
    p.enable_feed(1 << 20);
    assert!(p.feed_from(1).is_none());
    let head = p.feed_head().unwrap();
    let r = open(d2.path()).await;
    r.set_primary(Some("p".into()));
    let since = p
        .log_since(1)
        .unwrap()
        .expect("no snapshot yet: the logs hold everything");
    assert_eq!(since.upto_seq, p.durable_point().seq);
    let a = r.apply_records(&since.bytes).unwrap();
    r.wait_local(a.seq).await.unwrap();
    same(&p, &r).await;
    p.put_kv("later", "1").await.unwrap();
    pump(&p, &r, head).await;
    same(&p, &r).await;
    // Once a snapshot replaced the logs, an old revision needs a snapshot transfer.
    p.snapshot().await.unwrap();
    let cur = p.status().await.unwrap().header.revision;
    assert!(p.log_since(5).unwrap().is_none());
    p.put_kv("after-snap", "1").await.unwrap();
    let since = p.log_since(cur + 1).unwrap().expect("after the snapshot");
    let a = r.apply_records(&since.bytes).unwrap();
    r.wait_local(a.seq).await.unwrap();
    same(&p, &r).await;
}

#[tokio::test]
async fn records_that_do_not_follow_are_refused_and_a_small_feed_loses_chunks() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p = open(d1.path()).await;
    p.enable_feed(64);
    let first = p.feed_head().unwrap();
    p.put_kv("a", "1").await.unwrap();
    p.put_kv("b", "2").await.unwrap();
    p.put_kv("c", "3").await.unwrap();
    let second = p.feed_head().unwrap() - 1;
    let r = open(d2.path()).await;
    // The third write without the others: a gap.
    let FeedNext::Chunk(c) = p.feed_next(second) else {
        panic!("the newest chunk stays")
    };
    let e = r.apply_records(&c.bytes).unwrap_err();
    assert!(e.to_string().contains("does not follow"), "{e}");
    // 64 bytes keep about one chunk: the first is gone, and a replica at revision 1 can no
    // longer be served from the feed.
    assert!(matches!(p.feed_next(first), FeedNext::Lost));
    assert!(p.feed_from(1).is_none());
    // Damage inside a chunk is refused with what was wrong.
    let mut bad = c.bytes.to_vec();
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    let e = r.apply_records(&bad).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert_eq!(
        r.range(RangeRequest::new(KeyRange::all()))
            .await
            .unwrap()
            .count,
        0
    );
}

#[tokio::test]
async fn a_promoted_replica_takes_writes_and_expires_leases_again() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p = open(d1.path()).await;
    p.enable_feed(1 << 20);
    let c = p.feed_head().unwrap();
    let g = p.lease_grant(1, 0).await.unwrap();
    p.put(PutRequest::new("eph", "1").lease(g.id))
        .await
        .unwrap();
    let r = open(d2.path()).await;
    r.set_primary(Some("p".into()));
    pump(&p, &r, c).await;
    drop(p);
    // On the replica the lease outlives its TTL: only the primary's records end it.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        r.get("eph").await.unwrap().map(|kv| kv.value),
        Some("1".into())
    );
    r.set_primary(None);
    r.put_kv("new", "primary").await.unwrap();
    // Its deadline started over at promotion; it then expires here.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while r.get("eph").await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "lease never expired");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
