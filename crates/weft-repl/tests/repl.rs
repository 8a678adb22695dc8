//! A primary and replicas in one process, over loopback TCP: streaming, policies, forwarded
//! writes, reads that wait, catch-up from the log files, hash checks and promotion.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use weft_repl::{Config, OnTimeout, Policy, Probe, ReadOpts, Replication};
use weft_store::embedded::{Embedded, Options};
use weft_store::{KeyRange, RangeRequest, Store, StoreError, StoreExt};

/// The part of weft-server the protocol needs: `GET /v1/repl/stream` upgraded, and
/// `GET /v1/repl/plan`.
async fn serve(repl: Arc<Replication>) -> (String, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let h = tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let repl = repl.clone();
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let mut first = String::new();
                s.read_line(&mut first).await.unwrap();
                loop {
                    let mut l = String::new();
                    s.read_line(&mut l).await.unwrap();
                    if l.trim().is_empty() {
                        break;
                    }
                }
                let target = first.split(' ').nth(1).unwrap().to_string();
                let q = |k: &str| {
                    target
                        .split(['?', '&'])
                        .find_map(|p| p.strip_prefix(&format!("{k}=")))
                        .unwrap_or_default()
                        .to_string()
                };
                let rev: i64 = q("rev").parse().unwrap();
                if target.starts_with("/v1/repl/plan") {
                    let body = match repl.plan(rev, 0).unwrap() {
                        Probe::Log => r#"{"from":"log","epoch":0,"fork":0}"#,
                        Probe::Snapshot => r#"{"from":"snapshot","epoch":0,"fork":0}"#,
                    };
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    s.get_mut().write_all(resp.as_bytes()).await.unwrap();
                    return;
                }
                let epoch = match repl.accept_replica(q("epoch").parse().unwrap_or(0)) {
                    Ok(e) => e,
                    Err(e) => {
                        let b = e.to_string();
                        let resp = format!(
                            "HTTP/1.1 409 Conflict\r\ncontent-length: {}\r\n\r\n{b}",
                            b.len()
                        );
                        s.get_mut().write_all(resp.as_bytes()).await.unwrap();
                        return;
                    }
                };
                let head = format!("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: weft-repl\r\nweft-epoch: {epoch}\r\nweft-fork: {}\r\n\r\n", repl.fork());
                s.get_mut().write_all(head.as_bytes()).await.unwrap();
                repl.serve_replica(s, q("name"), rev).await;
            });
        }
    });
    (url, h)
}

async fn open(dir: &std::path::Path) -> Arc<Embedded> {
    Arc::new(Embedded::open(dir, Options::default()).await.unwrap())
}

fn cfg(name: &str, policy: &str) -> Config {
    Config {
        policy: policy.parse().unwrap(),
        ..Config::new(name)
    }
}

async fn caught_up(p: &Replication, r: &Replication) {
    let want = p.embedded().durable_point().rev;
    tokio::time::timeout(Duration::from_secs(10), r.embedded().wait_visible(want))
        .await
        .expect("replica caught up")
        .unwrap();
}

async fn hash(s: &Embedded, rev: i64) -> u32 {
    Store::hash_kv(s, rev).await.unwrap().hash
}

#[tokio::test]
async fn semi_sync_writes_are_on_the_replica_when_acknowledged() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p = Replication::primary(open(d1.path()).await, cfg("p", "semi-sync=1;timeout=5s"));
    let (url, _srv) = serve(p.clone()).await;
    let r = Replication::replica(open(d2.path()).await, cfg("r1", "async"), url);
    let kv = p.store();
    let mut revs = Vec::new();
    for i in 0..50 {
        let rev = kv
            .put_kv(format!("k{i}"), format!("v{i}"))
            .await
            .unwrap()
            .header
            .revision;
        // Acknowledged under semi-sync 1: the replica has it durably already.
        assert!(
            r.embedded().durable_point().rev >= rev,
            "write {i} at {rev} not on the replica"
        );
        revs.push(rev);
    }
    let lease = kv.lease_grant(60, 0).await.unwrap();
    assert!(
        r.embedded().lease_list().await.unwrap().contains(&lease.id),
        "a lease grant is a write too"
    );
    let last = *revs.last().unwrap();
    assert_eq!(
        hash(p.embedded(), last).await,
        hash(r.embedded(), last).await
    );
    let checks = p.check(None).await.unwrap();
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].outcome, "match", "{checks:?}");
    let st = p.status();
    assert_eq!(st.replicas.len(), 1);
    assert_eq!(st.replicas[0].name, "r1");
    assert_eq!(st.loss_window, 0);
    assert!(st.acked_revision >= last);
    let rs = r.status();
    assert_eq!(rs.role, "replica");
    assert_eq!(rs.follower.unwrap().state, "streaming");
}

#[tokio::test]
async fn writes_to_a_replica_are_forwarded_and_then_visible_there() {
    let (d1, d2, d3) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let p = Replication::primary(open(d1.path()).await, cfg("p", "async"));
    let (url, _srv) = serve(p.clone()).await;
    let r = Replication::replica(open(d2.path()).await, cfg("r1", "async"), url.clone());
    let rkv = r.store();
    // Wait for the connection, then write through the replica.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let put = loop {
        match rkv.put_kv("via-replica", "1").await {
            Ok(p) => break p,
            Err(StoreError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    // Read your writes on the replica, and the primary has it.
    assert_eq!(
        rkv.get("via-replica").await.unwrap().unwrap().mod_revision,
        put.header.revision
    );
    assert!(p.store().get("via-replica").await.unwrap().is_some());
    // A txn and a lease through the replica.
    let g = rkv.lease_grant(30, 0).await.unwrap();
    rkv.lease_keep_alive(g.id).await.unwrap();
    rkv.lease_revoke(g.id).await.unwrap();
    // Errors come back as they are.
    let e = rkv.lease_revoke(g.id).await.unwrap_err();
    assert_eq!(e, StoreError::LeaseNotFound(g.id));
    // With forwarding off, writes are refused with the primary's address.
    let c = Config {
        forward_writes: false,
        ..cfg("r2", "async")
    };
    let r2 = Replication::replica(open(d3.path()).await, c, url.clone());
    let e = r2.store().put_kv("x", "y").await.unwrap_err();
    assert_eq!(e, StoreError::NotPrimary(url));
}

#[tokio::test]
async fn without_replicas_each_timeout_behaviour_does_what_it_says() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p = Replication::primary(open(d1.path()).await, cfg("p", "semi-sync=1;timeout=200ms"));
    let (url, _srv) = serve(p.clone()).await;
    let kv = p.store();
    // No replica has ever connected: fail, with the write durable and visible on the primary.
    let e = kv.put_kv("a", "1").await.unwrap_err();
    let StoreError::Unconfirmed {
        revision,
        confirmed: 0,
        required: 1,
        ..
    } = e
    else {
        panic!("{e}")
    };
    assert_eq!(kv.get("a").await.unwrap().unwrap().mod_revision, revision);
    // Per write: degrade acknowledges and runs async until a replica catches up.
    let degrade = "semi-sync=1;timeout=200ms;on-timeout=degrade"
        .parse::<Policy>()
        .unwrap();
    weft_repl::with_policy(degrade, kv.put_kv("b", "1"))
        .await
        .unwrap();
    assert_eq!(p.status().degraded, Some(1));
    let t = tokio::time::Instant::now();
    weft_repl::with_policy(degrade, kv.put_kv("c", "1"))
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(150),
        "degraded writes do not wait"
    );
    // Async writes never wait.
    weft_repl::with_policy(Policy::asynchronous(), kv.put_kv("d", "1"))
        .await
        .unwrap();
    // A replica connects and catches up: the node recovers by itself.
    let r = Replication::replica(open(d2.path()).await, cfg("r1", "async"), url);
    caught_up(&p, &r).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.status().degraded.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kv.put_kv("e", "1").await.unwrap();
    // Block waits past its timeout; a cancelled wait is not a success.
    r.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let block = Policy::semi_sync(1, Duration::from_millis(50)).on_timeout(OnTimeout::Block);
    let w = tokio::time::timeout(
        Duration::from_millis(500),
        weft_repl::with_policy(block, kv.put_kv("f", "1")),
    )
    .await;
    assert!(w.is_err(), "blocked past the timeout");
}

#[tokio::test]
async fn a_late_replica_catches_up_from_the_log_files_and_reads_wait_for_revisions() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p = Replication::primary(open(d1.path()).await, cfg("p", "async"));
    let kv = p.store();
    for i in 0..200 {
        kv.put_kv(format!("k{}", i % 20), format!("{i}"))
            .await
            .unwrap();
    }
    let (url, _srv) = serve(p.clone()).await;
    assert_eq!(
        weft_repl::probe(&url, 1, 0, None, None).await.unwrap().from,
        Probe::Log
    );
    let r = Replication::replica(open(d2.path()).await, cfg("r1", "async"), url.clone());
    caught_up(&p, &r).await;
    let rev = p.embedded().durable_point().rev;
    assert_eq!(hash(p.embedded(), rev).await, hash(r.embedded(), rev).await);
    // A read at a future revision waits for it on a replica...
    let rkv = r.store();
    let future = rev + 1;
    let rkv2 = rkv.clone();
    let read = tokio::spawn(async move {
        rkv2.range(RangeRequest::new(KeyRange::all()).revision(future))
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    kv.put_kv("new", "1").await.unwrap();
    let got = read.await.unwrap().unwrap();
    assert!(got.header.revision >= future);
    // ... and fails clearly when it does not come.
    let opts = ReadOpts {
        min_revision: future + 100,
        timeout: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let e = weft_repl::with_read(opts, rkv.get("new"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Unavailable(m) if m.contains("not reached")),
        "{e}"
    );
    // A staleness bound holds while streaming, and fails once the primary is gone.
    let fresh = ReadOpts {
        max_staleness: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    weft_repl::with_read(fresh, rkv.get("new")).await.unwrap();
    p.shutdown();
    drop(_srv);
    let strict = ReadOpts {
        max_staleness: Some(Duration::from_millis(1)),
        timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = weft_repl::with_read(strict, rkv.get("new"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Unavailable(m) if m.contains("stale")),
        "{e}"
    );
}

#[tokio::test]
async fn a_hash_check_finds_a_corrupted_replica() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p = Replication::primary(open(d1.path()).await, cfg("p", "semi-sync=1;timeout=5s"));
    let (url, _srv) = serve(p.clone()).await;
    // The replica's data dir holds another value at revision 2 than the primary will: it
    // takes the primary's revision 2 for one it has.
    let e = open(d2.path()).await;
    e.put_kv("a", "tampered").await.unwrap();
    let r = Replication::replica(e, cfg("r1", "async"), url.clone());
    p.store().put_kv("a", "1").await.unwrap();
    p.store().put_kv("b", "1").await.unwrap();
    caught_up(&p, &r).await;
    let rev = p.embedded().durable_point().rev;
    let c = p.check(Some(rev)).await.unwrap();
    assert_eq!(c[0].outcome, "mismatch", "{c:?}");
    assert_ne!(c[0].replica_hash, Some(c[0].primary_hash));
    assert_eq!(
        p.status().replicas[0].last_check.as_ref().unwrap().outcome,
        "mismatch"
    );
    // A check at a revision the replica does not reach is an error, not a match.
    let c = p.check(Some(rev + 1)).await;
    assert!(c.is_err() || c.unwrap()[0].outcome != "match");
}

#[tokio::test]
async fn a_promoted_replica_takes_writes_under_its_own_policy() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p = Replication::primary(open(d1.path()).await, cfg("p", "semi-sync=1;timeout=5s"));
    let (url, srv) = serve(p.clone()).await;
    let r1 = Replication::replica(
        open(d2.path()).await,
        cfg("r1", "semi-sync=1;timeout=200ms"),
        url.clone(),
    );
    let kv = p.store();
    for i in 0..20 {
        kv.put_kv(format!("k{i}"), "v").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = r1.status().acked_revision;
    assert!(acked >= 21, "heard the acknowledged revision: {acked}");
    // The primary dies; the replica holds every acknowledged write and is promoted.
    srv.abort();
    p.shutdown();
    drop(p);
    r1.promote(false).unwrap();
    assert_eq!(r1.status().role, "primary");
    assert!(r1.promote(false).is_err(), "a primary cannot be promoted");
    for i in 0..20 {
        assert!(r1.store().get(format!("k{i}")).await.unwrap().is_some());
    }
    // Its own policy: semi-sync 1 and no replica yet.
    let e = r1.store().put_kv("after", "failover").await.unwrap_err();
    assert!(matches!(e, StoreError::Unconfirmed { .. }), "{e}");
    assert!(
        r1.store().get("after").await.unwrap().is_some(),
        "durable and visible on the new primary"
    );
    // A new replica follows the new primary.
    let d3 = tempfile::tempdir().unwrap();
    let (url1, _s1) = serve(r1.clone()).await;
    let r3 = Replication::replica(open(d3.path()).await, cfg("r3", "async"), url1);
    r1.store().put_kv("after2", "ok").await.unwrap();
    caught_up(&r1, &r3).await;
    assert!(r3.store().get("after2").await.unwrap().is_some());
}

/// A primary that only says, in a heartbeat, that it acknowledged revision 1000.
async fn fake_primary() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut s = BufReader::new(s);
        loop {
            let mut l = String::new();
            s.read_line(&mut l).await.unwrap();
            if l.trim().is_empty() {
                break;
            }
        }
        let mut out = bytes::BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..]);
        weft_repl::wire::Frame::Heartbeat {
            epoch: 0,
            seq: 5,
            rev: 1000,
            acked: 1000,
        }
        .encode(&mut out);
        s.get_mut().write_all(&out).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    url
}

#[tokio::test]
async fn promotion_behind_an_acknowledged_revision_is_refused_unless_forced() {
    let d = tempfile::tempdir().unwrap();
    let url = fake_primary().await;
    let r = Replication::replica(open(d.path()).await, cfg("r", "async"), url.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while r.status().acked_revision < 1000 {
        assert!(tokio::time::Instant::now() < deadline, "no heartbeat");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = r.status().follower.unwrap();
    assert_eq!(st.primary_revision, 1000);
    let e = r.promote(false).unwrap_err();
    assert!(
        e.to_string().contains("would lose acknowledged writes"),
        "{e}"
    );
    assert_eq!(r.status().role, "replica");
    let done = r.promote(true).unwrap();
    assert!(done.forced);
    assert_eq!(done.acked_revision, 1000);
    assert_eq!(done.previous_primary, url);
    r.store().put_kv("x", "y").await.unwrap();
}

#[tokio::test]
async fn epochs_fence_a_deposed_primary_and_its_unreplicated_tail() {
    let (d1, d2, d3) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let p = Replication::primary(open(d1.path()).await, cfg("p", "semi-sync=1;timeout=5s"));
    let (purl, _ps) = serve(p.clone()).await;
    let r1 = Replication::replica(open(d2.path()).await, cfg("r1", "async"), purl.clone());
    p.store().put_kv("a", "1").await.unwrap();
    caught_up(&p, &r1).await;
    // r1 is promoted while p still runs (a split brain an operator made).
    let done = r1.promote(false).unwrap();
    assert_eq!(done.epoch, 1);
    assert_eq!(r1.fork(), done.revision);
    let (r1url, _rs) = serve(r1.clone()).await;
    // p takes one more write, async: a tail r1 does not have.
    let tail = weft_repl::with_policy(Policy::asynchronous(), p.store().put_kv("only-on-p", "1"))
        .await
        .unwrap()
        .header
        .revision;
    assert_eq!(tail, done.revision + 1);
    assert_eq!(
        r1.plan(tail, 0).unwrap(),
        Probe::Snapshot,
        "p's tail needs a snapshot"
    );
    assert_eq!(
        r1.plan(done.revision, 0).unwrap(),
        Probe::Log,
        "a node at the fork follows"
    );
    // A replica of epoch 1 reaching p deposes it: p takes no more writes.
    let r2 = Replication::replica(open(d3.path()).await, cfg("r2", "async"), r1url.clone());
    caught_up(&r1, &r2).await;
    assert_eq!(r2.epoch(), 1);
    r2.follow(purl.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.primary_of().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "p never stepped down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = p.store().put_kv("x", "y").await.unwrap_err();
    assert!(matches!(e, StoreError::NotPrimary(_)), "{e}");
    // p, told to follow r1, refuses its own tail silently diverging: it needs a snapshot.
    p.follow(r1url.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let f = p.status().follower.unwrap();
        if f.state == "needs-snapshot" {
            let err = f.last_error.unwrap();
            assert!(err.contains(&format!("revisions {tail}..={tail}")), "{err}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{f:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        p.embedded().durable_point().rev,
        tail,
        "nothing applied over the tail"
    );
    // r2 goes back to r1 and follows it.
    r2.follow(r1url);
    r1.store().put_kv("b", "2").await.unwrap();
    caught_up(&r1, &r2).await;
    assert!(r2.store().get("b").await.unwrap().is_some());
}

#[tokio::test]
async fn watches_on_a_replica_see_the_primarys_writes_in_order() {
    use futures::StreamExt;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p = Replication::primary(open(d1.path()).await, cfg("p", "semi-sync=1;timeout=5s"));
    let (url, _srv) = serve(p.clone()).await;
    let r = Replication::replica(open(d2.path()).await, cfg("r1", "async"), url);
    let mut w = r
        .store()
        .watch(weft_store::WatchRequest::new(KeyRange::prefix("w/")))
        .await
        .unwrap();
    let mut revs = Vec::new();
    for i in 0..20 {
        revs.push(
            p.store()
                .put_kv(format!("w/{i}"), "v")
                .await
                .unwrap()
                .header
                .revision,
        );
    }
    p.store().delete_key("w/3").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 21 {
        let resp = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("events in time")
            .unwrap()
            .unwrap();
        for e in resp.events {
            seen.push((e.kind, e.kv.mod_revision));
        }
    }
    let puts: Vec<i64> = seen[..20].iter().map(|(_, r)| *r).collect();
    assert_eq!(
        puts, revs,
        "every put, in order, at the primary's revisions"
    );
    assert_eq!(seen[20].0, weft_store::EventType::Delete);
}
