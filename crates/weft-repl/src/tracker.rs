//! The primary's view of its replicas: what each holds, and the waits of writes for them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::policy::{OnTimeout, Policy};
use weft_store::StoreError;

/// How a replica is doing, as the primary sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaState {
    /// Connected, fed from the primary's feed of new records.
    Streaming,
    /// Connected, fed from the primary's log files (it was further behind).
    CatchingUp,
    /// The primary no longer has the log it needs: it must resync from a snapshot.
    NeedsSnapshot,
    /// Not connected.
    Disconnected,
}

#[derive(Clone, Debug)]
pub(crate) struct Rep {
    pub conn: u64,
    pub state: ReplicaState,
    pub acked_seq: u64,
    pub acked_rev: i64,
    pub sent_bytes: u64,
    pub acked_bytes: u64,
    pub since: Instant,
}

/// The k-th best acknowledgement, for every k, of the replicas known.
#[derive(Clone, Debug, Default)]
pub(crate) struct Confirmed {
    /// Acknowledged sequence numbers, highest first.
    pub seqs: Vec<u64>,
}

impl Confirmed {
    fn kth(&self, k: usize) -> u64 {
        match k {
            0 => u64::MAX,
            k => self.seqs.get(k - 1).copied().unwrap_or(0),
        }
    }
}

struct Inner {
    reps: BTreeMap<String, Rep>,
    next_conn: u64,
    /// Durable points sampled every 100 ms: (seq, rev, when), for lag in seconds.
    samples: VecDeque<(u64, i64, Instant)>,
    /// Degraded to async for writes that need this many replicas, since the durable
    /// sequence number `mark`: recovered once that many replicas hold `mark`.
    degraded: Option<(usize, u64)>,
    /// The newest revision acknowledged after waiting for replicas.
    acked_rev: i64,
}

/// A write waiting for `required` replicas to hold sequence number `seq`.
struct Waiter {
    seq: u64,
    required: usize,
    tx: oneshot::Sender<()>,
}

/// Acknowledgements of the replicas and the writes waiting for them.
pub(crate) struct Tracker {
    inner: Mutex<Inner>,
    confirmed: Mutex<Confirmed>,
    /// Each woken alone once confirmed (a shared watch woke all 64 writers of a 64-client
    /// load on every acknowledgement, and most went back to sleep).
    waiters: Mutex<Vec<Waiter>>,
    /// How many replicas `sync` waits for (`None`: every replica known).
    sync_replicas: Option<usize>,
}

/// Counters for the metrics.
#[derive(Default)]
pub(crate) struct Events {
    pub degraded: u64,
    pub recovered: u64,
    pub unconfirmed: u64,
}

pub(crate) static EVENTS: Mutex<Events> = Mutex::new(Events {
    degraded: 0,
    recovered: 0,
    unconfirmed: 0,
});

impl Tracker {
    pub fn new(sync_replicas: Option<usize>) -> Self {
        Tracker {
            inner: Mutex::new(Inner {
                reps: BTreeMap::new(),
                next_conn: 1,
                samples: VecDeque::new(),
                degraded: None,
                acked_rev: 0,
            }),
            confirmed: Mutex::new(Confirmed::default()),
            waiters: Mutex::new(Vec::new()),
            sync_replicas,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("tracker poisoned")
    }

    /// A replica connected (replacing an older connection of the same name); returns the
    /// connection's number.
    pub fn connect(&self, name: &str, rev: i64) -> u64 {
        let mut i = self.lock();
        let conn = i.next_conn;
        i.next_conn += 1;
        let now = Instant::now();
        let r = i.reps.entry(name.to_string()).or_insert(Rep {
            conn,
            state: ReplicaState::Streaming,
            acked_seq: 0,
            acked_rev: rev,
            sent_bytes: 0,
            acked_bytes: 0,
            since: now,
        });
        r.conn = conn;
        r.state = ReplicaState::Streaming;
        r.acked_rev = r.acked_rev.max(rev);
        r.since = now;
        r.sent_bytes = r.acked_bytes;
        drop(i);
        self.publish();
        conn
    }

    /// Sets the state of connection `conn` of `name` (ignored once replaced).
    pub fn set_state(&self, name: &str, conn: u64, state: ReplicaState) {
        if let Some(r) = self.lock().reps.get_mut(name).filter(|r| r.conn == conn) {
            r.state = state;
        }
    }

    pub fn sent(&self, name: &str, conn: u64, bytes: usize) {
        if let Some(r) = self.lock().reps.get_mut(name).filter(|r| r.conn == conn) {
            r.sent_bytes += bytes as u64;
        }
    }

    pub fn disconnect(&self, name: &str, conn: u64) {
        self.set_state(name, conn, ReplicaState::Disconnected);
    }

    /// The replica holds everything up to `seq` durably.
    pub fn ack(&self, name: &str, conn: u64, seq: u64, rev: i64) {
        let mut i = self.lock();
        let Some(r) = i.reps.get_mut(name).filter(|r| r.conn == conn) else {
            return;
        };
        r.acked_seq = r.acked_seq.max(seq);
        r.acked_rev = r.acked_rev.max(rev);
        r.acked_bytes = r.sent_bytes;
        drop(i);
        self.publish();
    }

    fn publish(&self) {
        let mut i = self.lock();
        let mut seqs: Vec<u64> = i.reps.values().map(|r| r.acked_seq).collect();
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        if let Some((k, mark)) = i.degraded {
            if seqs.get(k.saturating_sub(1)).is_some_and(|s| *s >= mark) {
                i.degraded = None;
                EVENTS.lock().expect("events").recovered += 1;
                tracing::warn!(
                    replicas = k,
                    "replication recovered: writes wait for their replicas again"
                );
            }
        }
        drop(i);
        let c = Confirmed { seqs };
        *self.confirmed.lock().expect("confirmed") = c.clone();
        // After `confirmed`: a waiter registered under the waiters lock saw it or is seen here.
        let mut w = self.waiters.lock().expect("waiters");
        let mut k = 0;
        while k < w.len() {
            if w[k].tx.is_closed() || c.kth(w[k].required) >= w[k].seq {
                let x = w.swap_remove(k);
                let _ = x.tx.send(());
            } else {
                k += 1;
            }
        }
    }

    /// Registers a wait for `required` replicas to hold `seq`; `None` when they already do.
    fn register(&self, seq: u64, required: usize) -> Option<oneshot::Receiver<()>> {
        let mut w = self.waiters.lock().expect("waiters");
        if self.confirmed.lock().expect("confirmed").kth(required) >= seq {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        w.push(Waiter { seq, required, tx });
        Some(rx)
    }

    /// Replicas `sync` waits for.
    pub fn known(&self) -> usize {
        self.sync_replicas.unwrap_or_else(|| self.lock().reps.len())
    }

    /// Waits until the write with sequence number `seq` (revision `rev`) is held by the
    /// replicas `policy` asks for, or its timeout behaviour says otherwise.
    pub async fn confirm(
        &self,
        seq: u64,
        rev: i64,
        policy: Policy,
        durable_seq: u64,
    ) -> Result<(), StoreError> {
        let required = policy.required(self.known());
        if required == 0 {
            return Ok(());
        }
        if policy.on_timeout == OnTimeout::Degrade {
            if let Some((k, _)) = self.lock().degraded {
                if required >= k {
                    return Ok(());
                }
            }
        }
        let Some(mut rx) = self.register(seq, required) else {
            return self.acked(rev);
        };
        let waited = tokio::time::timeout(policy.timeout, &mut rx)
            .await
            .map(|r| r.is_ok());
        let why = match waited {
            Ok(true) => return self.acked(rev),
            Ok(false) => "the node is shutting down".to_string(),
            Err(_) => format!("timed out after {:?}", policy.timeout),
        };
        match policy.on_timeout {
            OnTimeout::Block if waited.is_err() => match rx.await {
                Ok(_) => self.acked(rev),
                Err(_) => {
                    Err(self.unconfirmed(seq, rev, required, "the node is shutting down".into()))
                }
            },
            OnTimeout::Degrade if waited.is_err() => {
                self.degrade(required, durable_seq);
                Ok(())
            }
            _ => Err(self.unconfirmed(seq, rev, required, why)),
        }
    }

    fn acked(&self, rev: i64) -> Result<(), StoreError> {
        let mut i = self.lock();
        i.acked_rev = i.acked_rev.max(rev);
        Ok(())
    }

    fn unconfirmed(&self, seq: u64, rev: i64, required: usize, why: String) -> StoreError {
        EVENTS.lock().expect("events").unconfirmed += 1;
        let confirmed = {
            let c = self.confirmed.lock().expect("confirmed");
            c.seqs
                .iter()
                .filter(|s| **s >= seq)
                .count()
                .min(required.saturating_sub(1))
        };
        StoreError::Unconfirmed {
            revision: rev,
            confirmed,
            required,
            why,
        }
    }

    fn degrade(&self, k: usize, mark: u64) {
        let mut i = self.lock();
        if i.degraded.is_none() {
            i.degraded = Some((k, mark));
            EVENTS.lock().expect("events").degraded += 1;
            tracing::warn!(
                replicas = k,
                "replication degraded to async: replicas did not confirm in time; writes are acknowledged after the primary's fsync until they catch up"
            );
        }
    }

    /// Whether writes run async because of a timeout (`Some(k)`: the replica count).
    pub fn degraded(&self) -> Option<usize> {
        self.lock().degraded.map(|(k, _)| k)
    }

    /// The newest revision acknowledged after waiting for replicas.
    pub fn acked_rev(&self) -> i64 {
        self.lock().acked_rev
    }

    /// Records the durable point (every 100 ms), for lag in seconds.
    pub fn sample(&self, seq: u64, rev: i64) {
        let mut i = self.lock();
        let now = Instant::now();
        if i.samples.back().is_none_or(|s| s.0 != seq) {
            i.samples.push_back((seq, rev, now));
        }
        while i.samples.len() > 1 && now.duration_since(i.samples[0].2) > Duration::from_secs(600) {
            i.samples.pop_front();
        }
    }

    /// Every replica, with its lag in seconds against the durable point `seq`.
    pub fn replicas(&self, seq: u64) -> Vec<(String, Rep, Duration)> {
        let i = self.lock();
        let now = Instant::now();
        i.reps
            .iter()
            .map(|(n, r)| {
                let lag = if r.acked_seq >= seq {
                    Duration::ZERO
                } else {
                    i.samples
                        .iter()
                        .find(|s| s.0 > r.acked_seq)
                        .map_or(Duration::ZERO, |s| now.duration_since(s.2))
                };
                (n.clone(), r.clone(), lag)
            })
            .collect()
    }

    /// The acknowledged sequence number of `name` (0 if unknown).
    pub fn acked_of(&self, name: &str) -> (u64, i64) {
        self.lock()
            .reps
            .get(name)
            .map_or((0, 0), |r| (r.acked_seq, r.acked_rev))
    }

    /// Forgets every replica (a node that stops being primary).
    pub fn reset(&self) {
        let mut i = self.lock();
        i.reps.clear();
        i.degraded = None;
        drop(i);
        // Writes still waiting end unconfirmed (their senders dropped).
        self.waiters.lock().expect("waiters").clear();
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn semi_sync_waits_for_k_acks_and_each_timeout_behaviour_holds() {
        let t = std::sync::Arc::new(Tracker::new(None));
        let (a, b) = (t.connect("a", 1), t.connect("b", 1));
        let p = Policy::semi_sync(2, Duration::from_millis(100));
        // Async never waits.
        t.confirm(5, 5, Policy::asynchronous(), 5).await.unwrap();
        // One ack of two: fail after the timeout, with the counts.
        t.ack("a", a, 5, 5);
        let e = t.confirm(5, 5, p, 5).await.unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::Unconfirmed {
                    required: 2,
                    confirmed: 1,
                    ..
                }
            ),
            "{e}"
        );
        // The second ack arriving during the wait confirms it.
        let t2 = t.clone();
        let w = tokio::spawn(async move { t2.confirm(5, 5, p, 5).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        t.ack("b", b, 5, 5);
        w.await.unwrap().unwrap();
        assert_eq!(t.acked_rev(), 5);
        // Block outlasts the timeout and ends with the ack.
        let t2 = t.clone();
        let w =
            tokio::spawn(async move { t2.confirm(6, 6, p.on_timeout(OnTimeout::Block), 6).await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!w.is_finished());
        t.ack("a", a, 6, 6);
        t.ack("b", b, 6, 6);
        w.await.unwrap().unwrap();
        // Degrade: acknowledged after the timeout, then async until both replicas hold 7.
        let d = p.on_timeout(OnTimeout::Degrade);
        t.confirm(7, 7, d, 7).await.unwrap();
        assert_eq!(t.degraded(), Some(2));
        let start = Instant::now();
        t.confirm(8, 8, d, 8).await.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "degraded writes do not wait"
        );
        // Writes with `fail` still wait and fail while degraded.
        assert!(t.confirm(8, 8, p, 8).await.is_err());
        t.ack("a", a, 7, 7);
        assert_eq!(t.degraded(), Some(2));
        t.ack("b", b, 7, 7);
        assert_eq!(t.degraded(), None, "recovered by itself");
        // Sync: every replica known.
        let s = "sync;timeout=50ms".parse::<Policy>().unwrap();
        t.ack("a", a, 9, 9);
        assert!(t.confirm(9, 9, s, 9).await.is_err());
        t.ack("b", b, 9, 9);
        t.confirm(9, 9, s, 9).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_connection_cannot_ack_and_lag_is_measured_from_samples() {
        let t = Tracker::new(None);
        let old = t.connect("a", 1);
        let new = t.connect("a", 1);
        t.ack("a", old, 10, 10);
        assert_eq!(t.acked_of("a"), (0, 1));
        t.sample(1, 2);
        tokio::time::sleep(Duration::from_secs(3)).await;
        t.sample(2, 3);
        let reps = t.replicas(2);
        assert_eq!(reps[0].2, Duration::from_secs(3));
        t.ack("a", new, 2, 3);
        assert_eq!(t.replicas(2)[0].2, Duration::ZERO);
    }
}
