//! The replica's side: the follow loop (connect, apply, acknowledge, reconnect), forwarded
//! writes and the staleness of what it serves.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use weft_store::{Store, StoreError};

use crate::forward::{Answer, Forwarded, Op, Outcome};
use crate::wire::{read_frame, Frame};
use crate::{FollowerStatus, Policy, Replication};

/// How long a forwarded write waits for the primary's answer.
const FORWARD_WAIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    state: String,
    primary_rev: i64,
    acked_rev: i64,
    /// (primary's revision, when heard), oldest first; at most one per 10 ms.
    heard: VecDeque<(i64, Instant)>,
    caught_up_at: Option<Instant>,
    last_error: Option<String>,
}

/// The replica's connection to its primary.
#[derive(Default)]
pub(crate) struct Follower {
    st: Mutex<State>,
    out: Mutex<Option<mpsc::Sender<Frame>>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    next_id: AtomicU64,
}

impl Follower {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().expect("follower poisoned")
    }

    /// Whether the last stream ended because this node needs a snapshot.
    pub fn needs_snapshot(&self) -> bool {
        self.lock().state == "needs-snapshot"
    }

    /// The newest revision the primary said it acknowledged after waiting for replicas.
    pub fn acked_rev(&self) -> i64 {
        self.lock().acked_rev
    }

    fn set_state(&self, state: &str, error: Option<String>) {
        let mut s = self.lock();
        s.state = state.to_string();
        if error.is_some() {
            s.last_error = error;
        }
    }

    fn heard(&self, primary_rev: i64, mine: i64) {
        let mut s = self.lock();
        s.primary_rev = s.primary_rev.max(primary_rev);
        let now = Instant::now();
        if s.heard
            .back()
            .is_none_or(|h| now.duration_since(h.1) >= Duration::from_millis(10))
        {
            s.heard.push_back((primary_rev, now));
        } else if let Some(b) = s.heard.back_mut() {
            b.0 = b.0.max(primary_rev);
        }
        Self::settle(&mut s, mine);
    }

    fn settle(s: &mut State, mine: i64) {
        while let Some(h) = s.heard.front().copied() {
            if h.0 > mine {
                break;
            }
            s.caught_up_at = Some(h.1);
            s.heard.pop_front();
        }
    }

    /// How stale reads at revision `mine` are: the time since this replica last held
    /// everything the primary had (unbounded before it first caught up).
    pub fn staleness(&self, mine: i64) -> Duration {
        let mut s = self.lock();
        Self::settle(&mut s, mine);
        s.caught_up_at.map_or(Duration::MAX, |t| t.elapsed())
    }

    /// " (the primary at X was at revision R)" for error messages.
    pub fn behind(&self, primary: Option<&str>) -> String {
        match primary {
            Some(p) => format!(
                "; the primary {p} was at revision {} when last heard",
                self.lock().primary_rev
            ),
            None => String::new(),
        }
    }

    pub fn status(&self, primary: String, mine: i64) -> FollowerStatus {
        let stale = self.staleness(mine);
        let s = self.lock();
        FollowerStatus {
            primary,
            state: if s.state.is_empty() {
                "connecting".into()
            } else {
                s.state.clone()
            },
            primary_revision: s.primary_rev,
            staleness_ms: stale.as_millis().min(u64::MAX as u128) as u64,
            last_error: s.last_error.clone(),
        }
    }

    /// Sends a write to the primary and waits for its answer.
    pub async fn forward(&self, op: Op, policy: Option<Policy>) -> Result<Answer, StoreError> {
        let tx = self.out.lock().expect("follower").clone();
        let tx = tx.ok_or_else(|| {
            StoreError::Unavailable(
                "this replica is not connected to its primary; the write was not sent".into(),
            )
        })?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (otx, orx) = oneshot::channel();
        self.pending.lock().expect("follower").insert(id, otx);
        let body = serde_json::to_vec(&Forwarded { op, policy }).expect("requests serialize");
        if tx
            .send(Frame::Forward {
                id,
                body: body.into(),
            })
            .await
            .is_err()
        {
            self.pending.lock().expect("follower").remove(&id);
            return Err(StoreError::Unavailable(
                "the connection to the primary closed; the write was not sent".into(),
            ));
        }
        match tokio::time::timeout(FORWARD_WAIT, orx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(StoreError::Unavailable("the connection to the primary closed before it answered; the write may or may not have applied".into())),
            Err(_) => {
                self.pending.lock().expect("follower").remove(&id);
                Err(StoreError::Unavailable(format!("no answer from the primary within {FORWARD_WAIT:?}; the write may or may not have applied")))
            }
        }
    }

    fn answer(&self, id: u64, body: &[u8]) {
        let outcome = serde_json::from_slice::<Outcome>(body).unwrap_or_else(|e| {
            Err(StoreError::Unavailable(format!(
                "malformed answer from the primary: {e}"
            )))
        });
        if let Some(w) = self.pending.lock().expect("follower").remove(&id) {
            let _ = w.send(outcome);
        }
    }
}

/// `host:port` of an `http://host:port[/]` or `https://host:port[/]` address, and whether
/// it is https.
pub(crate) fn host_port(url: &str) -> Result<(String, bool), String> {
    let bad =
        || format!("primary address {url:?} must look like http://host:port or https://host:port");
    let (rest, https) = match url.strip_prefix("https://") {
        Some(r) => (r, true),
        None => (url.strip_prefix("http://").ok_or_else(bad)?, false),
    };
    let hp = rest.trim_end_matches('/');
    if hp.is_empty() || hp.contains('/') || !hp.contains(':') {
        return Err(bad());
    }
    Ok((hp.to_string(), https))
}

/// A connection to the primary: TCP, or TLS over it.
pub(crate) trait Conn: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Conn for T {}

/// Connects to the primary at `url` (`https://`: TLS with `tls`, or the system's roots),
/// with `TCP_NODELAY`; the address and the stream.
async fn dial(
    url: &str,
    tls: Option<&Arc<weft_tls::rustls::ClientConfig>>,
) -> Result<(String, Box<dyn Conn>), String> {
    let (addr, https) = host_port(url)?;
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("cannot connect to the primary {url}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if !https {
        return Ok((addr, Box::new(tcp)));
    }
    let cfg = match tls {
        Some(c) => c.clone(),
        None => Arc::new(
            weft_tls::client_config(&Default::default(), &[b"http/1.1"])
                .map_err(|e| e.to_string())?,
        ),
    };
    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = weft_tls::server_name(host).map_err(|e| e.to_string())?;
    let s = weft_tls::tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with the primary {url} failed: {e}"))?;
    Ok((addr, Box::new(s)))
}

/// Sends an HTTP/1.1 request head and reads the response head: status and headers.
async fn request<R, W>(
    rd: &mut BufReader<R>,
    wr: &mut W,
    head: &str,
) -> Result<(u16, Vec<(String, String)>), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wr.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    let mut status = 0u16;
    let mut headers = Vec::new();
    let mut total = 0;
    loop {
        line.clear();
        let n = rd.read_line(&mut line).await.map_err(|e| e.to_string())?;
        total += n;
        if n == 0 || total > 16 << 10 {
            return Err("the primary closed the connection or sent a bad response head".into());
        }
        let l = line.trim_end();
        if status == 0 {
            status = l
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad status line from the primary: {l:?}"))?;
        } else if l.is_empty() {
            return Ok((status, headers));
        } else if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
}

/// Adopts the primary's epoch, or refuses it: a primary of an older epoch was deposed; one
/// of a newer epoch that started (forked) below this node's revision lacks this node's tail.
fn check_epoch(
    repl: &Replication,
    primary: &str,
    headers: &[(String, String)],
    rev: i64,
) -> Result<(), String> {
    let mine = repl.epoch();
    let theirs: u64 = header(headers, "weft-epoch").unwrap_or(0);
    if theirs < mine {
        return Err(format!("the primary {primary} is at epoch {theirs}, behind this replica's {mine}: a deposed primary; not following it"));
    }
    let fork: i64 = header(headers, "weft-fork").unwrap_or(0);
    if theirs > mine && rev > fork {
        return Err(format!(
            "this node holds revisions {}..={rev} that the primary {primary} (epoch {theirs}, from revision {fork}) does not have: it needs a snapshot (restart it to resync; those revisions are discarded)",
            fork + 1
        ));
    }
    repl.raise_epoch(theirs, fork).map_err(|e| e.to_string())
}

fn header<T: std::str::FromStr>(headers: &[(String, String)], name: &str) -> Option<T> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
}

async fn body<R: AsyncRead + Unpin>(rd: &mut BufReader<R>, headers: &[(String, String)]) -> String {
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(64 << 10);
    let mut b = vec![0u8; len];
    let _ = rd.read_exact(&mut b).await;
    String::from_utf8_lossy(&b).into_owned()
}

/// Where a replica at a revision would be served from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Probe {
    /// The primary's feed or log files hold what it lacks.
    Log,
    /// It needs a snapshot first.
    Snapshot,
}

/// Asks the primary at `primary` how a replica at `rev` would catch up
/// (`GET /v1/repl/plan`); `token` is the primary's API token, if it has one.
pub async fn probe(
    primary: &str,
    rev: i64,
    epoch: u64,
    token: Option<&str>,
    tls: Option<&Arc<weft_tls::rustls::ClientConfig>>,
) -> Result<Plan, String> {
    let (addr, s) = dial(primary, tls).await?;
    let (rd, mut wr) = tokio::io::split(s);
    let mut rd = BufReader::new(rd);
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "GET /v1/repl/plan?rev={rev}&epoch={epoch} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    );
    let (status, headers) = request(&mut rd, &mut wr, &head).await?;
    let b = body(&mut rd, &headers).await;
    if status != 200 {
        return Err(format!("the primary {primary} answered {status}: {b}"));
    }
    serde_json::from_str::<Plan>(&b).map_err(|e| format!("bad plan from the primary: {e}"))
}

/// The primary's answer to [`probe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// Where the replica would catch up from.
    pub from: Probe,
    /// The primary's epoch: a snapshot of it belongs to this epoch.
    pub epoch: u64,
    /// The revision the primary of that epoch started from.
    pub fork: i64,
}

/// Follows the primary until promotion or shutdown, reconnecting with backoff.
pub(crate) async fn follow(repl: Arc<Replication>, primary: String) {
    let mut stop = repl.stop.subscribe();
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let r = run_once(&repl, &primary).await;
        *repl.follower.out.lock().expect("follower") = None;
        for (_, w) in repl.follower.pending.lock().expect("follower").drain() {
            let _ = w.send(Err(StoreError::Unavailable("the connection to the primary closed before it answered; the write may or may not have applied".into())));
        }
        if *stop.borrow() {
            return;
        }
        let err = r
            .err()
            .unwrap_or_else(|| "the primary closed the stream".into());
        let state = if err.contains("snapshot") {
            "needs-snapshot"
        } else {
            "disconnected"
        };
        tracing::warn!(primary = %primary, error = %err, "replication stream ended; reconnecting");
        repl.follower.set_state(state, Some(err));
        if started.elapsed() > Duration::from_secs(5) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn run_once(repl: &Arc<Replication>, primary: &str) -> Result<(), String> {
    let (addr, s) = dial(primary, repl.cfg.tls.as_ref()).await?;
    let (rd, mut wr) = tokio::io::split(s);
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let rev = repl.store.durable_point().rev;
    let auth = repl
        .cfg_token()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mine = repl.epoch();
    let head = format!(
        "GET /v1/repl/stream?name={}&rev={rev}&epoch={mine} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: Upgrade\r\nUpgrade: weft-repl\r\n\r\n",
        repl.cfg.name
    );
    let (status, headers) = request(&mut rd, &mut wr, &head).await?;
    if status != 101 {
        let b = body(&mut rd, &headers).await;
        return Err(format!(
            "the primary {primary} refused the stream ({status}): {b}"
        ));
    }
    check_epoch(repl, primary, &headers, rev)?;
    tracing::info!(%primary, revision = rev, "following the primary");
    repl.follower.set_state("streaming", None);
    let (tx, rx) = mpsc::channel::<Frame>(1024);
    *repl.follower.out.lock().expect("follower") = Some(tx.clone());
    let writer = tokio::spawn(write_loop(wr, rx));
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(ack_loop(repl.clone(), ack_rx, tx.clone()));
    let r = read_loop(repl, &mut rd, ack_tx, tx).await;
    writer.abort();
    acker.abort();
    r
}

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Frame>) {
    let mut out = BytesMut::new();
    while let Some(f) = rx.recv().await {
        f.encode(&mut out);
        while let Ok(f) = rx.try_recv() {
            f.encode(&mut out);
        }
        if wr.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
}

/// Acknowledges, once durable here, the primary's sequence numbers applied: the newest of
/// those queued while the previous wait ran.
async fn ack_loop(
    repl: Arc<Replication>,
    mut rx: mpsc::UnboundedReceiver<(u64, u64, i64)>,
    tx: mpsc::Sender<Frame>,
) {
    while let Some(mut last) = rx.recv().await {
        while let Ok(x) = rx.try_recv() {
            last = (last.0.max(x.0), last.1.max(x.1), last.2.max(x.2));
        }
        if repl.store.wait_local(last.0).await.is_err() {
            return;
        }
        if tx
            .send(Frame::Ack {
                seq: last.1,
                rev: last.2,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    repl: &Arc<Replication>,
    rd: &mut R,
    acks: mpsc::UnboundedSender<(u64, u64, i64)>,
    tx: mpsc::Sender<Frame>,
) -> Result<(), String> {
    loop {
        let f = read_frame(rd)
            .await
            .map_err(|e| format!("reading from the primary: {e}"))?;
        let Some(f) = f else { return Ok(()) };
        match f {
            Frame::Records { epoch, .. } | Frame::Heartbeat { epoch, .. }
                if epoch < repl.epoch() =>
            {
                return Err(format!(
                    "records of epoch {epoch} from a primary deposed by epoch {}",
                    repl.epoch()
                ));
            }
            Frame::Records {
                upto_seq,
                primary_rev,
                bytes,
                ..
            } => {
                let a = match bytes.is_empty() {
                    true => Default::default(),
                    false => repl.store.apply_records(&bytes).map_err(|e| {
                        tracing::error!(error = %e, "cannot apply the primary's records");
                        format!("cannot apply the primary's records: {e}")
                    })?,
                };
                let mine = repl.store.durable_point().rev;
                repl.follower.heard(primary_rev, mine);
                if upto_seq > 0 {
                    let rev = if a.rev > 0 { a.rev } else { mine };
                    let _ = acks.send((a.seq, upto_seq, rev));
                }
            }
            Frame::Heartbeat { rev, acked, .. } => {
                let mine = repl.store.durable_point().rev;
                repl.follower.heard(rev, mine);
                let mut s = repl.follower.lock();
                s.acked_rev = s.acked_rev.max(acked);
            }
            Frame::NeedSnapshot { rev } => {
                return Err(format!(
                    "the primary no longer holds the log after revision {rev}: this replica needs a snapshot (weft up restarts itself to take one)"
                ));
            }
            Frame::Reply { id, body } => repl.follower.answer(id, &body),
            Frame::HashAsk { rev } => {
                let (repl, tx) = (repl.clone(), tx.clone());
                tokio::spawn(async move {
                    let waited =
                        tokio::time::timeout(Duration::from_secs(5), repl.store.wait_visible(rev))
                            .await;
                    let (hash, error) = match waited {
                        Err(_) => (0, format!("revision {rev} not reached within 5 s")),
                        Ok(Err(e)) => (0, e.to_string()),
                        Ok(Ok(())) => match Store::hash_kv(&*repl.store, rev).await {
                            Ok(h) => (h.hash, String::new()),
                            Err(e) => (0, e.to_string()),
                        },
                    };
                    let _ = tx.send(Frame::Hash { rev, hash, error }).await;
                });
            }
            other => return Err(format!("unexpected frame from the primary: {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_addresses_are_checked() {
        assert_eq!(
            host_port("http://127.0.0.1:2379").unwrap(),
            ("127.0.0.1:2379".into(), false)
        );
        assert_eq!(host_port("http://h:1/").unwrap(), ("h:1".into(), false));
        assert_eq!(host_port("https://h:1").unwrap(), ("h:1".into(), true));
        for bad in [
            "127.0.0.1:1",
            "ftp://h:1",
            "http://h",
            "http://h:1/x",
            "http://",
        ] {
            assert!(
                host_port(bad).unwrap_err().contains("http://host:port"),
                "{bad}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn staleness_is_the_time_since_the_replica_held_what_the_primary_had() {
        let f = Follower::default();
        assert_eq!(f.staleness(1), Duration::MAX);
        f.heard(10, 10);
        assert_eq!(f.staleness(10), Duration::ZERO);
        tokio::time::sleep(Duration::from_secs(1)).await;
        f.heard(20, 12);
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Still behind 20: caught up last 3 s ago.
        assert_eq!(f.staleness(12), Duration::from_secs(3));
        assert_eq!(f.staleness(20), Duration::from_secs(2));
    }
}
