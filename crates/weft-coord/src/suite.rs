//! The recipe suite: every case runs against every backend (feature `suite`), through
//! [`recipe_tests!`](crate::recipe_tests). Sessions use the store's minimum TTL so that expiry
//! cases finish in seconds.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use futures::StreamExt;
use weft_store::{KeyRange, RangeRequest, Store, StoreExt};

use crate::*;

async fn session(store: &Arc<dyn Store>) -> Session {
    let ttl = store.limits().min_lease_ttl;
    Session::new(
        store.clone(),
        SessionOptions {
            ttl,
            ..Default::default()
        },
    )
    .await
    .expect("session")
}

async fn keys_under(store: &Arc<dyn Store>, prefix: &str) -> i64 {
    store
        .range(RangeRequest::new(KeyRange::prefix(prefix.to_string())).count_only())
        .await
        .unwrap()
        .count
}

async fn eventually(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Several sessions contend: no two critical sections overlap and fencing tokens strictly
/// increase in the order the lock was granted.
pub async fn lock_mutual_exclusion(store: Arc<dyn Store>) {
    let busy = Arc::new(AtomicBool::new(false));
    let tokens = Arc::new(StdMutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (store, busy, tokens) = (store.clone(), busy.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            let s = session(&store).await;
            let m = Mutex::new(&s, "excl").unwrap();
            for _ in 0..5 {
                let g = m.lock().await.unwrap();
                assert!(!busy.swap(true, Ordering::SeqCst), "two holders at once");
                tokens.lock().unwrap().push(g.fencing_token());
                tokio::time::sleep(Duration::from_millis(3)).await;
                busy.store(false, Ordering::SeqCst);
                g.unlock().await.unwrap();
            }
            s.close().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 20);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens not strictly increasing: {tokens:?}"
    );
}

/// Waiters are served in arrival order.
pub async fn lock_fifo(store: Arc<dyn Store>) {
    let a = session(&store).await;
    let held = Mutex::new(&a, "fifo").unwrap().lock().await.unwrap();
    let order = Arc::new(StdMutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, name) in ["b", "c", "d"].into_iter().enumerate() {
        let s = session(&store).await;
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let g = Mutex::new(&s, "fifo").unwrap().lock().await.unwrap();
            order.lock().unwrap().push(name);
            g.unlock().await.unwrap();
            s.close().await.unwrap();
        }));
        let st = store.clone();
        eventually("waiter queued", Duration::from_secs(5), async || {
            keys_under(&st, "/weft/lock/fifo/").await == i as i64 + 2
        })
        .await;
    }
    held.unlock().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec!["b", "c", "d"]);
}

/// `try_lock` and timeouts fail cleanly and leave no key behind; so does dropping a waiting
/// future.
pub async fn lock_try_timeout_cancel(store: Arc<dyn Store>) {
    let a = session(&store).await;
    let b = session(&store).await;
    let held = Mutex::new(&a, "try").unwrap().lock().await.unwrap();
    let mb = Mutex::new(&b, "try").unwrap();
    assert!(matches!(
        mb.try_lock().await,
        Err(CoordError::WouldBlock(_))
    ));
    assert!(matches!(
        mb.lock_timeout(Duration::from_millis(200)).await,
        Err(CoordError::Timeout(_))
    ));
    let st = store.clone();
    eventually(
        "timed-out waiter removed",
        Duration::from_secs(5),
        async || keys_under(&st, "/weft/lock/try/").await == 1,
    )
    .await;
    tokio::select! {
        _ = mb.lock() => panic!("acquired a held lock"),
        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
    }
    let st = store.clone();
    eventually(
        "dropped waiter removed",
        Duration::from_secs(5),
        async || keys_under(&st, "/weft/lock/try/").await == 1,
    )
    .await;
    // The same session cannot queue twice for one lock.
    assert!(matches!(
        Mutex::new(&a, "try").unwrap().try_lock().await,
        Err(CoordError::AlreadyHeld(_))
    ));
    held.unlock().await.unwrap();
    let g = mb.try_lock().await.unwrap();
    assert!(g.is_held().await.unwrap());
    g.unlock().await.unwrap();
    assert!(matches!(
        Mutex::new(&a, "bad/name"),
        Err(CoordError::InvalidArgument(_))
    ));
}

/// etcd's server recipes resume: a second `Lock` or `Campaign` call with the same lease takes
/// over the first one's key and place instead of failing.
pub async fn lock_and_campaign_resume(store: Arc<dyn Store>) {
    let a = session(&store).await;
    let b = session(&store).await;
    let prefix = bytes::Bytes::from_static(b"resume/");
    let ga = Mutex::with_prefix(&a, prefix.clone(), "resume")
        .lock_or_resume()
        .await
        .unwrap();
    // The same session again: it already holds, so it gets the same key and token at once.
    let again = Mutex::with_prefix(&a, prefix.clone(), "resume")
        .lock_or_resume()
        .await
        .unwrap();
    assert_eq!(again.fencing_token(), ga.fencing_token());
    assert_eq!(again.key(), ga.key());
    again.detach();
    // Another session waits behind it.
    let mb = Mutex::with_prefix(&b, prefix.clone(), "resume");
    tokio::select! {
        _ = mb.lock_or_resume() => panic!("acquired a held lock"),
        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
    }
    ga.unlock().await.unwrap();
    let gb = mb.lock_or_resume().await.unwrap();
    gb.unlock().await.unwrap();
    // Campaign: the second call takes over the candidacy and sets its value.
    let e = Election::with_prefix(
        store.clone(),
        bytes::Bytes::from_static(b"leaders/"),
        "leaders",
    );
    let l = e.campaign_or_resume(&a, "v1").await.unwrap();
    let l2 = e.campaign_or_resume(&a, "v2").await.unwrap();
    assert_eq!(l2.term(), l.term());
    assert_eq!(
        e.leader().await.unwrap().unwrap().value,
        bytes::Bytes::from("v2")
    );
    l.detach();
    l2.resign().await.unwrap();
    assert!(e.leader().await.unwrap().is_none());
}

/// A holder that crashes loses the lock within its TTL; the next waiter gets it with a larger
/// token, and the old holder's fenced writes are refused.
pub async fn lock_handover_after_crash(store: Arc<dyn Store>) {
    let a = session(&store).await;
    let b = session(&store).await;
    let ga = Mutex::new(&a, "crash").unwrap().lock().await.unwrap();
    let ok = ga
        .txn_if_held(vec![weft_store::TxnOp::Put(weft_store::PutRequest::new(
            "fenced", "a",
        ))])
        .await;
    assert!(ok.is_ok());
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { Mutex::new(&b, "crash").unwrap().lock().await })
    };
    let start = tokio::time::Instant::now();
    a.simulate_crash();
    let lost = tokio::time::timeout(Duration::from_secs(a.ttl() as u64 + 5), ga.lost())
        .await
        .expect("lost fires");
    assert!(
        matches!(
            lost,
            CoordError::SessionLost(_) | CoordError::OwnershipLost(_)
        ),
        "{lost:?}"
    );
    let gb = tokio::time::timeout(Duration::from_secs(a.ttl() as u64 + 5), waiter)
        .await
        .expect("handover")
        .unwrap()
        .unwrap();
    eprintln!(
        "lock handover after a holder crash: {:?} (TTL {}s)",
        start.elapsed(),
        a.ttl()
    );
    assert!(gb.fencing_token() > ga.fencing_token());
    assert!(!ga.is_held().await.unwrap());
    let stale = ga
        .txn_if_held(vec![weft_store::TxnOp::Put(weft_store::PutRequest::new(
            "fenced", "stale",
        ))])
        .await;
    assert!(stale.is_err(), "stale holder wrote");
    assert_eq!(&store.get("fenced").await.unwrap().unwrap().value[..], b"a");
    gb.unlock().await.unwrap();
}

/// A waiter whose lease disappears stops waiting with an error: no phantom acquisition.
pub async fn waiter_with_lost_lease_fails(store: Arc<dyn Store>) {
    let a = session(&store).await;
    let b = session(&store).await;
    let _held = Mutex::new(&a, "phantom").unwrap().lock().await.unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { Mutex::new(&b, "phantom").unwrap().lock().await })
    };
    let st = store.clone();
    eventually("waiter queued", Duration::from_secs(5), async || {
        keys_under(&st, "/weft/lock/phantom/").await == 2
    })
    .await;
    store.lease_revoke(b.lease()).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("waiter ends")
        .unwrap();
    assert!(
        matches!(
            r,
            Err(CoordError::OwnershipLost(_)) | Err(CoordError::SessionLost(_))
        ),
        "{r:?}"
    );
}

/// A semaphore admits at most N holders, and does admit N.
pub async fn semaphore_bounds(store: Arc<dyn Store>) {
    let inside = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (store, inside, peak) = (store.clone(), inside.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            let s = session(&store).await;
            let sem = Semaphore::new(&s, "pool", 2).unwrap();
            for _ in 0..3 {
                let g = sem.acquire().await.unwrap();
                let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                assert!(n <= 2, "{n} holders of a 2-permit semaphore");
                tokio::time::sleep(Duration::from_millis(20)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                g.unlock().await.unwrap();
            }
            s.close().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
}

async fn next_leader<S: futures::Stream<Item = Result<Option<Leader>>> + Unpin>(
    obs: &mut S,
) -> Option<Leader> {
    let v = tokio::time::timeout(Duration::from_secs(10), obs.next())
        .await
        .expect("observer update");
    v.expect("observer ended").expect("observer error")
}

/// Terms increase, observers see every leader and value, resign and crash hand over.
pub async fn election_terms_and_failover(store: Arc<dyn Store>) {
    let e = Election::new(store.clone(), "main").unwrap();
    let mut obs = Box::pin(e.observe());
    let first = tokio::time::timeout(Duration::from_secs(5), obs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.is_none(), "no leader yet");
    let a = session(&store).await;
    let la = e.campaign(&a, "a").await.unwrap();
    let seen = next_leader(&mut obs).await.unwrap();
    assert_eq!((&seen.value[..], seen.term), (&b"a"[..], la.term()));
    la.proclaim("a2").await.unwrap();
    assert_eq!(&next_leader(&mut obs).await.unwrap().value[..], b"a2");
    // B waits behind A; A resigns.
    let b = session(&store).await;
    let cb = {
        let (e, b) = (e.clone(), b.clone());
        tokio::spawn(async move { e.campaign(&b, "b").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        &e.leader().await.unwrap().unwrap().value[..],
        b"a2",
        "B must wait"
    );
    let ta = la.term();
    la.resign().await.unwrap();
    let lb = tokio::time::timeout(Duration::from_secs(5), cb)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(lb.term() > ta);
    let seen = next_leader(&mut obs).await.unwrap();
    assert_eq!((&seen.value[..], seen.term), (&b"b"[..], lb.term()));
    // C waits behind B; B crashes; C is elected within the TTL plus a second.
    let c = session(&store).await;
    let cc = {
        let (e, c) = (e.clone(), c.clone());
        tokio::spawn(async move { e.campaign(&c, "c").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let crashed = tokio::time::Instant::now();
    b.simulate_crash();
    let seen = loop {
        let l = next_leader(&mut obs).await;
        if let Some(l) = l {
            if &l.value[..] == b"c" {
                break l;
            }
        }
    };
    let failover = crashed.elapsed();
    eprintln!(
        "election failover after a leader crash: {failover:?} (TTL {}s)",
        b.ttl()
    );
    assert!(
        failover <= Duration::from_secs(b.ttl() as u64 + 1),
        "failover took {failover:?}"
    );
    let lc = tokio::time::timeout(Duration::from_secs(5), cc)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.term, lc.term());
    assert!(lc.term() > lb.term());
    assert!(
        !lb.is_leader().await.unwrap(),
        "no phantom leadership after the session is lost"
    );
    assert!(lb.proclaim("zombie").await.is_err());
}

/// Register, discover, watch added/updated/removed; a crashed instance vanishes within the TTL.
pub async fn discovery_lifecycle(store: Arc<dyn Store>) {
    let reg = Registry::new(store.clone());
    let s1 = session(&store).await;
    let s2 = session(&store).await;
    let mut i1 = Instance::new("a1", "10.0.0.1:80");
    i1.tags = vec!["blue".into()];
    let r1 = reg.register(&s1, "api", i1.clone(), None).await.unwrap();
    let _r2 = reg
        .register(&s2, "api", Instance::new("a2", "10.0.0.2:80"), None)
        .await
        .unwrap();
    let snap = reg.discover("api").await.unwrap();
    assert_eq!(snap.instances.len(), 2);
    assert_eq!(snap.instances[0], i1);
    let mut w = Box::pin(reg.watch("api", &snap));
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("event")
            .unwrap()
            .unwrap()
    };
    r1.set_health(Health::Critical).await.unwrap();
    match next().await {
        DiscoveryEvent::Updated(i) => {
            assert_eq!((i.id.as_str(), i.health), ("a1", Health::Critical))
        }
        other => panic!("{other:?}"),
    }
    let crashed = tokio::time::Instant::now();
    s2.simulate_crash();
    assert_eq!(next().await, DiscoveryEvent::Removed("a2".into()));
    assert!(crashed.elapsed() <= Duration::from_secs(s2.ttl() as u64 + 1));
    let _r3 = reg
        .register(&s1, "api", Instance::new("a3", "10.0.0.3:80"), None)
        .await
        .unwrap();
    assert!(matches!(next().await, DiscoveryEvent::Added(i) if i.id == "a3"));
    r1.deregister().await.unwrap();
    assert_eq!(next().await, DiscoveryEvent::Removed("a1".into()));
    s1.close().await.unwrap();
    assert_eq!(next().await, DiscoveryEvent::Removed("a3".into()));
    assert!(reg.discover("api").await.unwrap().instances.is_empty());
    assert!(matches!(
        reg.discover("a/b").await,
        Err(CoordError::InvalidArgument(_))
    ));
}

/// A watch from a compacted revision resynchronizes with a reset event instead of failing.
pub async fn discovery_resync_after_compaction(store: Arc<dyn Store>) {
    let reg = Registry::new(store.clone());
    let s = session(&store).await;
    let old = reg.discover("web").await.unwrap();
    let _r = reg
        .register(&s, "web", Instance::new("w1", "h:1"), None)
        .await
        .unwrap();
    let rev = store
        .put_kv("unrelated", "x")
        .await
        .unwrap()
        .header
        .revision;
    store.compact(rev).await.unwrap();
    let mut w = Box::pin(reg.watch("web", &old));
    match tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        DiscoveryEvent::Reset(snap) => assert_eq!(
            snap.instances
                .iter()
                .map(|i| i.id.as_str())
                .collect::<Vec<_>>(),
            vec!["w1"]
        ),
        other => panic!("expected a reset, got {other:?}"),
    }
    let _r2 = reg
        .register(&s, "web", Instance::new("w2", "h:2"), None)
        .await
        .unwrap();
    assert!(matches!(w.next().await.unwrap().unwrap(), DiscoveryEvent::Added(i) if i.id == "w2"));
}

/// The cache follows changes and keeps the old set when most instances vanish at once.
pub async fn cache_protection(store: Arc<dyn Store>) {
    let reg = Registry::new(store.clone());
    let many = session(&store).await;
    let one = session(&store).await;
    let mut regs = Vec::new();
    for i in 0..4 {
        regs.push(
            reg.register(&many, "db", Instance::new(format!("m{i}"), "h"), None)
                .await
                .unwrap(),
        );
    }
    let _keep = reg
        .register(&one, "db", Instance::new("solo", "h"), None)
        .await
        .unwrap();
    let mut cache = ServiceCache::new(&reg, "db", CacheOptions::default())
        .await
        .unwrap();
    assert_eq!(cache.view().instances.len(), 5);
    std::mem::forget(regs); // their session's end removes them all in one revision
    many.close().await.unwrap();
    let v = tokio::time::timeout(Duration::from_secs(10), cache.changed())
        .await
        .unwrap();
    assert!(
        v.protected,
        "4 of 5 vanished at once: keep serving the old set"
    );
    assert_eq!(v.instances.len(), 5);
    assert!(!v.stale);
    assert!(ServiceCache::new(
        &reg,
        "db",
        CacheOptions {
            protection_threshold: 1.5,
            ..Default::default()
        }
    )
    .await
    .is_err());
}

/// An active TCP health check marks the instance critical when its port stops answering.
pub async fn health_check(store: Arc<dyn Store>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let reg = Registry::new(store.clone());
    let s = session(&store).await;
    let check = HealthCheck::Tcp {
        addr: addr.clone(),
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
    };
    assert!(probe(&check).await);
    let _r = reg
        .register(&s, "tcp", Instance::new("t1", addr.clone()), Some(check))
        .await
        .unwrap();
    let snap = reg.discover("tcp").await.unwrap();
    assert_eq!(snap.instances[0].health, Health::Passing);
    let mut w = Box::pin(reg.watch("tcp", &snap));
    drop(listener);
    match tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        DiscoveryEvent::Updated(i) => assert_eq!(i.health, Health::Critical),
        other => panic!("{other:?}"),
    }
    let http = HealthCheck::Http {
        url: format!("http://{addr}/health"),
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(300),
    };
    assert!(!probe(&http).await, "nothing listens there any more");
}

/// The cache keeps serving its last view, flagged stale, once the store is gone; `kill`
/// makes the store unreachable (closes it, or stops the server).
pub async fn cache_goes_stale(store: Arc<dyn Store>, kill: impl FnOnce()) {
    let s = Session::new(
        store.clone(),
        SessionOptions {
            ttl: 30,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let reg = Registry::new(store.clone());
    let _r = reg
        .register(&s, "svc", Instance::new("i1", "h:1"), None)
        .await
        .unwrap();
    let mut cache = ServiceCache::new(&reg, "svc", CacheOptions::default())
        .await
        .unwrap();
    kill();
    let v = tokio::time::timeout(Duration::from_secs(30), cache.changed())
        .await
        .unwrap();
    assert!(v.stale);
    assert_eq!(v.instances.len(), 1, "keeps serving the last snapshot");
}

/// Instantiates the suite for a backend: `$factory` is an async expression giving
/// `Option<(Arc<dyn Store>, guard)>` (`None`: backend unavailable and skipping allowed).
#[macro_export]
macro_rules! recipe_tests {
    ($factory:expr) => {
        $crate::recipe_tests!(@case $factory;
            lock_mutual_exclusion lock_fifo lock_try_timeout_cancel lock_handover_after_crash
            waiter_with_lost_lease_fails semaphore_bounds election_terms_and_failover
            discovery_lifecycle discovery_resync_after_compaction cache_protection health_check
            lock_and_campaign_resume);
    };
    (@case $factory:expr; $($name:ident)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((store, _guard)) = $factory.await else {
                    eprintln!("backend not available: case skipped");
                    return;
                };
                $crate::suite::$name(store).await;
            }
        )*
    };
}
