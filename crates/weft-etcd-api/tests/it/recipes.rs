//! etcd's server-side Lock and Election services through the `etcd-client` crate, the same
//! cases against weft's etcd API and against a real etcd: mutual exclusion across 8
//! contenders, unlock by key, a campaign that waits, observe seeing every change, resign, the
//! errors, and what the caller's lease expiring does.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, LeaderKey, LockOptions, ProclaimOptions, ResignOptions};

async fn lease(c: &mut Client, ttl: i64) -> i64 {
    c.lease_grant(ttl, None).await.unwrap().id()
}

async fn within<T>(d: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(d, f)
        .await
        .unwrap_or_else(|_| panic!("no answer within {d:?}"))
}

/// 8 contenders, each with its own lease, take the lock 3 times each: never two inside.
async fn mutual_exclusion(url: &str) {
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (url, inside, most) = (url.to_string(), inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect([url], None).await.unwrap();
            let id = lease(&mut c, 30).await;
            for _ in 0..3 {
                let r = c
                    .lock("mx", Some(LockOptions::new().with_lease(id)))
                    .await
                    .unwrap();
                assert_eq!(
                    r.key(),
                    format!("mx/{id:x}").as_bytes(),
                    "etcd's key layout"
                );
                let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                c.unlock(r.key()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        within(Duration::from_secs(60), t).await.unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "two holders at once");
}

/// Unlock by key hands the lock on; locking again with the same lease is the same lock.
async fn unlock_and_relock(url: &str) {
    let mut a = Client::connect([url], None).await.unwrap();
    let mut b = Client::connect([url], None).await.unwrap();
    let (la, lb) = (lease(&mut a, 30).await, lease(&mut b, 30).await);
    let ka = a
        .lock("u", Some(LockOptions::new().with_lease(la)))
        .await
        .unwrap();
    let again = within(
        Duration::from_secs(5),
        a.lock("u", Some(LockOptions::new().with_lease(la))),
    )
    .await
    .unwrap();
    assert_eq!(again.key(), ka.key(), "the same lease holds the same lock");
    let waiting = tokio::spawn(async move {
        b.lock("u", Some(LockOptions::new().with_lease(lb)))
            .await
            .unwrap()
            .key()
            .to_vec()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "b waits while a holds");
    a.unlock(ka.key()).await.unwrap();
    let kb = within(Duration::from_secs(10), waiting).await.unwrap();
    assert_eq!(kb, format!("u/{lb:x}").as_bytes());
    // An unknown lease is refused, with etcd's message.
    let err = a
        .lock("u2", Some(LockOptions::new().with_lease(0x5eed)))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("requested lease not found"),
        "{err}"
    );
}

/// A second candidate waits; observe sees every change of leader and value; resign hands
/// over; the errors say "no leader" and "not leader".
async fn campaign_observe_resign(url: &str) {
    let mut a = Client::connect([url], None).await.unwrap();
    let mut b = Client::connect([url], None).await.unwrap();
    let mut o = Client::connect([url], None).await.unwrap();
    let err = a.leader("el").await.unwrap_err();
    assert!(err.to_string().contains("election: no leader"), "{err}");
    // etcd answers an Observe call only once there is a leader: observe from a task.
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let observer = tokio::spawn(async move {
        let mut s = o.observe("el").await.unwrap();
        while let Ok(Some(r)) = s.message().await {
            let v = String::from_utf8(r.kv().unwrap().value().to_vec()).unwrap();
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (la, lb) = (lease(&mut a, 30).await, lease(&mut b, 30).await);
    let ra = a.campaign("el", "a1", la).await.unwrap();
    let lka = ra.leader().unwrap().clone();
    assert_eq!(lka.name(), b"el");
    assert_eq!(lka.key(), format!("el/{la:x}").as_bytes());
    assert_eq!(lka.lease(), la);
    assert_eq!(
        within(Duration::from_secs(5), seen.recv()).await.as_deref(),
        Some("a1")
    );
    let leader = a.leader("el").await.unwrap();
    let kv = leader.kv().unwrap();
    assert_eq!((kv.value(), kv.create_revision()), (&b"a1"[..], lka.rev()));
    a.proclaim("a2", Some(ProclaimOptions::new().with_leader(lka.clone())))
        .await
        .unwrap();
    assert_eq!(
        within(Duration::from_secs(5), seen.recv()).await.as_deref(),
        Some("a2")
    );
    let waiting = tokio::spawn(async move {
        let r = b.campaign("el", "b1", lb).await.unwrap();
        (b, r.leader().unwrap().clone())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "b waits while a leads");
    // A stale leader key cannot proclaim.
    let stale = LeaderKey::new()
        .with_name("el")
        .with_key(lka.key().to_vec())
        .with_rev(lka.rev() - 1)
        .with_lease(la);
    let err = a
        .proclaim("x", Some(ProclaimOptions::new().with_leader(stale)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("election: not leader"), "{err}");
    a.resign(Some(ResignOptions::new().with_leader(lka)))
        .await
        .unwrap();
    let (mut b, lkb) = within(Duration::from_secs(10), waiting).await.unwrap();
    assert_eq!(lkb.key(), format!("el/{lb:x}").as_bytes());
    assert_eq!(
        within(Duration::from_secs(5), seen.recv()).await.as_deref(),
        Some("b1")
    );
    b.resign(Some(ResignOptions::new().with_leader(lkb)))
        .await
        .unwrap();
    observer.abort();
}

/// The holder's lease expires (no keepalives): the lock passes to the next contender, and
/// leadership to the next candidate, within the TTL.
async fn lease_expiry(url: &str) {
    let mut a = Client::connect([url], None).await.unwrap();
    let mut b = Client::connect([url], None).await.unwrap();
    let la = lease(&mut a, 2).await;
    let lb = lease(&mut b, 30).await;
    a.lock("ex", Some(LockOptions::new().with_lease(la)))
        .await
        .unwrap();
    a.campaign("ee", "a", la).await.unwrap();
    let t0 = Instant::now();
    let mut b2 = b.clone();
    let lock = tokio::spawn(async move {
        b2.lock("ex", Some(LockOptions::new().with_lease(lb)))
            .await
            .unwrap()
    });
    let elected = tokio::spawn(async move { b.campaign("ee", "b", lb).await.unwrap() });
    within(Duration::from_secs(10), lock).await.unwrap();
    within(Duration::from_secs(10), elected).await.unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "not before the lease expired: {took:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "within the TTL (2 s) and a second: {took:?}"
    );
}

async fn all(url: &str) {
    eprintln!("mutual exclusion");
    mutual_exclusion(url).await;
    eprintln!("unlock");
    unlock_and_relock(url).await;
    eprintln!("campaign");
    campaign_observe_resign(url).await;
    eprintln!("expiry");
    lease_expiry(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_services_on_weft() {
    let s = common::start().await;
    all(&s.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_services_on_etcd() {
    let Some(etcd) = weft_store_etcd::testing::EtcdServer::start_or_skip().await else {
        return;
    };
    all(&etcd.endpoint).await;
}
