//! `weft bench etcd-api`: the same etcd client (the `etcd-client` crate) against any etcd v3
//! endpoint — a real etcd or `weft up --etcd-listen` — so the two can be compared side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

/// How the benchmark's etcd clients reach the server. Both use the same `etcd-client` API
/// (request building, protobuf, tonic's gRPC codec); they differ only below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// `Client::connect`: etcd-client's default, a tonic balanced channel (a load balancer and a
    /// request buffer, each with its own task, in front of the HTTP/2 connection).
    Balanced,
    /// `Client::from_channel` over one bare hyper HTTP/2 connection per client connection: no
    /// balancer, no buffer task. Less client CPU per request, so more of the shared cores go
    /// to the server being measured.
    Direct,
}

/// A tonic-compatible channel over one hyper HTTP/2 connection.
#[derive(Clone)]
struct H2Channel {
    send: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    authority: http::uri::Authority,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for H2Channel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tower::BoxError;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        // tonic's clients send only the path; the origin is the channel's to add.
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        match http::Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => return Box::pin(async move { Err(e.into()) }),
        }
        let fut = self.send.send_request(req);
        Box::pin(async move { Ok(fut.await?.map(tonic::body::Body::new)) })
    }
}

/// The CA (PEM) that `https://` endpoints are checked against (`--cacert`), set once at the
/// start of the command.
static CA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// The user clients log in as (`--user NAME:PASSWORD`), set once at the start.
static USER: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

/// Connect options with the user, if any.
fn with_user(opts: Option<etcd_client::ConnectOptions>) -> Option<etcd_client::ConnectOptions> {
    match USER.get() {
        Some((n, p)) => Some(opts.unwrap_or_default().with_user(n, p)),
        None => opts,
    }
}

/// Connects one etcd client to `endpoint` (`http://host:port`, or `https://` with `--cacert`)
/// over `transport`.
pub async fn connect(endpoint: &str, transport: Transport) -> Result<Client> {
    if endpoint.starts_with("https://") {
        anyhow::ensure!(
            transport == Transport::Balanced,
            "--transport direct needs an http:// endpoint, got {endpoint:?}"
        );
        let ca = CA
            .get()
            .with_context(|| format!("{endpoint}: give the server's CA with --cacert"))?;
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(ca.clone()));
        let opts = etcd_client::ConnectOptions::new().with_tls(tls);
        return Ok(Client::connect([endpoint], with_user(Some(opts))).await?);
    }
    match transport {
        Transport::Balanced => Ok(Client::connect([endpoint], with_user(None)).await?),
        Transport::Direct => {
            let uri: http::Uri = endpoint
                .parse()
                .with_context(|| format!("{endpoint:?} is not a URL"))?;
            anyhow::ensure!(
                uri.scheme_str() == Some("http"),
                "--transport direct needs an http:// endpoint, got {endpoint:?}"
            );
            let authority = uri
                .authority()
                .cloned()
                .with_context(|| format!("{endpoint:?} has no host:port"))?;
            let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
            tcp.set_nodelay(true)?;
            let (send, conn) =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .timer(hyper_util::rt::TokioTimer::new())
                    .handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("bench connection ended: {e}");
                }
            });
            let channel = H2Channel { send, authority };
            Ok(Client::from_channel(
                etcd_client::Channel::Custom(tower::util::BoxCloneSyncService::new(channel)),
                with_user(None),
            )
            .await?)
        }
    }
}

/// One measured cell.
pub struct Cell {
    pub ops: u64,
    pub secs: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Cell {
    pub fn per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

async fn op(
    workload: &str,
    c: &mut Client,
    task: usize,
    i: u64,
    last: &mut i64,
    store: &Option<Arc<dyn weft_store::Store>>,
) -> Result<()> {
    let value = vec![b'v'; 128];
    match workload {
        "put" => {
            c.put(format!("bench/{task}/{}", i % 1000), value, None)
                .await?;
        }
        "get" => {
            c.get(format!("bench/get/{}", i % 100), None).await?;
        }
        "txn" => {
            let key = format!("bench/cas/{task}");
            let t = Txn::new()
                .when(vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    *last,
                )])
                .and_then(vec![TxnOp::put(key.clone(), value, None)])
                .or_else(vec![TxnOp::get(key, None)]);
            let r = c.txn(t).await?;
            *last = if r.succeeded() {
                r.header().map(|h| h.revision()).unwrap_or(0)
            } else {
                match r.op_responses().into_iter().next() {
                    Some(etcd_client::TxnOpResponse::Get(g)) => {
                        g.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0)
                    }
                    _ => 0,
                }
            };
        }
        "lease" => {
            let g = c.lease_grant(10, None).await?;
            let (mut k, mut s) = c.lease_keep_alive(g.id()).await?;
            k.keep_alive().await?;
            s.message().await?;
            c.lease_revoke(g.id()).await?;
        }
        "lock" => {
            let store = store.as_ref().context("lock needs a store")?;
            let session = weft_coord::Session::new(
                store.clone(),
                weft_coord::SessionOptions {
                    ttl: 30,
                    ..Default::default()
                },
            )
            .await?;
            let g = weft_coord::Mutex::new(&session, "bench")?.lock().await?;
            g.unlock().await?;
            session.close().await?;
        }
        "srvlock" => {
            // etcd's server-side Lock service: one lease per client, lock + unlock per op.
            if *last == 0 {
                *last = c.lease_grant(30, None).await?.id();
            }
            let opts = etcd_client::LockOptions::new().with_lease(*last);
            let r = c.lock("bench-srv", Some(opts)).await?;
            c.unlock(r.key()).await?;
        }
        other => {
            anyhow::bail!(
                "unknown workload {other:?}; allowed: put, get, txn, lease, lock, srvlock, watch"
            )
        }
    }
    Ok(())
}

fn percentiles(mut all: Vec<u64>, secs: f64) -> Cell {
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Cell {
        ops: all.len() as u64,
        secs,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        max_us: all.last().copied().unwrap_or(0),
    }
}

/// Watch fan-out: `watchers` watch one prefix (spread over the connections), one writer puts
/// to it as fast as it can; ops = events delivered to all watchers per second, latency = put
/// sent → event received (same process, same clock).
async fn run_watch(conns: &[Client], watchers: usize, duration: Duration) -> Result<Cell> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let prefix = format!(
        "bench/watch/{}/",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let start = Instant::now();
    let written = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..watchers {
        let mut c = conns[t % conns.len()].clone();
        let mut stream = c
            .watch(
                prefix.clone(),
                Some(etcd_client::WatchOptions::new().with_prefix()),
            )
            .await?;
        let (written, done) = (written.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let hard_stop = duration + Duration::from_secs(5);
            loop {
                if done.load(Ordering::Acquire)
                    && lat.len() as u64 >= written.load(Ordering::Acquire)
                {
                    break;
                }
                if start.elapsed() > hard_stop {
                    break;
                }
                let msg = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
                let resp = match msg {
                    Err(_) => continue,
                    Ok(r) => match r? {
                        Some(r) => r,
                        None => break,
                    },
                };
                let now = start.elapsed().as_micros() as u64;
                for ev in resp.events() {
                    if let Some(kv) = ev.kv() {
                        let sent = kv
                            .value()
                            .get(..8)
                            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                            .unwrap_or(now);
                        lat.push(now.saturating_sub(sent));
                    }
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut w = conns[0].clone();
    let mut i = 0u64;
    while start.elapsed() < duration {
        let mut value = (start.elapsed().as_micros() as u64).to_le_bytes().to_vec();
        value.resize(128, b'v');
        w.put(format!("{prefix}{}", i % 100), value, None).await?;
        i += 1;
        written.store(i, Ordering::Release);
    }
    done.store(true, Ordering::Release);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    let expected = i * watchers as u64;
    if (all.len() as u64) < expected {
        anyhow::bail!(
            "watch fan-out: {} of {expected} events delivered within 5 s after the last put",
            all.len()
        );
    }
    Ok(percentiles(all, secs))
}

/// `NAME=PID` pairs of `--server-pids`.
pub fn parse_pids(pairs: &[String]) -> Result<std::collections::HashMap<String, u32>> {
    pairs
        .iter()
        .map(|p| {
            let (name, pid) = p
                .split_once('=')
                .with_context(|| format!("--server-pids {p:?} must be NAME=PID"))?;
            let pid = pid
                .parse()
                .with_context(|| format!("--server-pids {p:?}: {pid:?} is not a process id"))?;
            Ok((name.to_string(), pid))
        })
        .collect()
}

/// CPU time (user + system, in clock ticks of 10 ms) of this process and of a server, and
/// each core's idle and total ticks (from `/proc/stat`; empty where it cannot be read).
pub struct CpuSample {
    me: u64,
    server: Option<u64>,
    cores: Vec<(u64, u64)>,
}

/// Each core's `(idle + iowait, total)` ticks from the `cpuN` lines of `/proc/stat`.
fn parse_cores(stat: &str) -> Vec<(u64, u64)> {
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .filter_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            let idle = f.get(3)? + f.get(4)?;
            Some((idle, f.iter().take(8).sum()))
        })
        .collect()
}

fn cpu_ticks(pid: &str) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat (is the process running?)"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .context("malformed /proc stat")
    };
    Ok(tick(11)? + tick(12)?)
}

impl CpuSample {
    /// Reads the counters now.
    pub fn take(server: Option<u32>) -> Result<Self> {
        Ok(CpuSample {
            me: cpu_ticks("self")?,
            server: server.map(|p| cpu_ticks(&p.to_string())).transpose()?,
            cores: std::fs::read_to_string("/proc/stat")
                .map(|s| parse_cores(&s))
                .unwrap_or_default(),
        })
    }

    /// Each core's idle share (idle and I/O wait) since `before`, in percent, as
    /// `"9 / 24"`; `"-"` where `/proc/stat` cannot be read. One core idling while the other
    /// is saturated shows here, where the machine's total would hide it.
    pub fn idle_since(&self, before: &CpuSample) -> String {
        if self.cores.is_empty() || self.cores.len() != before.cores.len() {
            return "-".into();
        }
        self.cores
            .iter()
            .zip(&before.cores)
            .map(|((i1, t1), (i0, t0))| {
                let total = t1.saturating_sub(*t0).max(1);
                format!(
                    "{:.0}",
                    i1.saturating_sub(*i0) as f64 * 100.0 / total as f64
                )
            })
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// CPU µs per operation of the server (if sampled) and of this client since `before`.
    pub fn since(&self, before: &CpuSample, ops: u64) -> (Option<f64>, f64) {
        let per_op = |ticks: u64| ticks as f64 * 10_000.0 / ops.max(1) as f64;
        (
            self.server
                .zip(before.server)
                .map(|(a, b)| per_op(a.saturating_sub(b))),
            per_op(self.me.saturating_sub(before.me)),
        )
    }
}

/// Runs `workload` with `clients` concurrent tasks for `duration`.
pub async fn run(
    endpoint: &str,
    workload: &str,
    clients: usize,
    max_conns: usize,
    transport: Transport,
    duration: Duration,
) -> Result<Cell> {
    let mut conns = Vec::new();
    for _ in 0..clients.min(max_conns).max(1) {
        conns.push(
            connect(endpoint, transport)
                .await
                .with_context(|| format!("cannot connect to {endpoint}"))?,
        );
    }
    if workload == "watch" {
        return run_watch(&conns, clients, duration).await;
    }
    if workload == "get" {
        for i in 0..100 {
            conns[0]
                .put(format!("bench/get/{i}"), vec![b'v'; 128], None)
                .await?;
        }
    }
    let store: Option<Arc<dyn weft_store::Store>> = if workload == "lock" {
        Some(Arc::new(
            weft_store_etcd::EtcdStore::connect(&[endpoint]).await?,
        ))
    } else {
        None
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..clients {
        let mut c = conns[t % conns.len()].clone();
        let (w, store) = (workload.to_string(), store.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut last = 0i64;
            let mut i = 0u64;
            while start.elapsed() < duration {
                let t0 = Instant::now();
                op(&w, &mut c, t, i, &mut last, &store).await?;
                lat.push(t0.elapsed().as_micros() as u64);
                i += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(percentiles(all, start.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lines_of_proc_stat_are_parsed() {
        let stat = "cpu  100 0 50 800 50 0 10 0 0 0\n\
                    cpu0 60 0 20 300 20 0 5 0 0 0\n\
                    cpu1 40 0 30 500 30 0 5 0 0 0\n\
                    intr 12345 0 0\n\
                    cpuX 1 2 3\n";
        assert_eq!(parse_cores(stat), vec![(320, 405), (530, 605)]);
        assert!(parse_cores("intr 1 2\n").is_empty());
    }

    #[test]
    fn idle_is_given_per_core() {
        let at = |cores: Vec<(u64, u64)>| CpuSample {
            me: 0,
            server: None,
            cores,
        };
        let before = at(vec![(100, 1000), (100, 1000)]);
        let after = at(vec![(110, 1100), (150, 1200)]);
        assert_eq!(after.idle_since(&before), "10 / 25");
        assert_eq!(after.idle_since(&at(Vec::new())), "-");
    }
}

#[derive(clap::Subcommand)]
pub(crate) enum BenchCmd {
    /// The same etcd client against etcd v3 endpoints (a real etcd and/or weft's --etcd-listen),
    /// side by side: throughput and p50/p99 latency per workload and concurrency.
    EtcdApi {
        /// NAME=URL pairs, e.g. etcd=http://127.0.0.1:2379,weft=http://127.0.0.1:2381.
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        /// Workloads: put, get, txn, lease, lock (etcd's client-side mutex recipe), srvlock
        /// (etcd's server-side Lock service: lock + unlock under one lease per client), watch
        /// (fan-out: CLIENTS watchers of one prefix, one writer; ops/s counts delivered events).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "put,get,txn,lease,lock,watch"
        )]
        workloads: Vec<String>,
        /// Concurrent clients.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        /// Seconds per cell.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// gRPC connections per cell, shared round robin by the clients (at most one per
        /// client). etcd's own benchmark tool calls this --conns.
        #[arg(long, default_value_t = 16)]
        conns: usize,
        /// How clients reach the server: balanced (etcd-client's `Client::connect`, a tonic
        /// balanced channel) or direct (`Client::from_channel` over a bare hyper HTTP/2
        /// connection: same client API, less client CPU per request).
        #[arg(long, value_enum, default_value = "balanced")]
        transport: Transport,
        /// Threads of this client's runtime (default: one per core). 1 runs every client on
        /// one single-threaded runtime: no work stealing or cross-thread wake-ups, and the
        /// client never takes more than one core from the server it shares the machine with.
        #[arg(long)]
        client_threads: Option<usize>,
        /// NAME=PID of local server processes: adds the server's and this client's CPU time
        /// per operation (from /proc) to each row.
        #[arg(long, value_delimiter = ',')]
        server_pids: Vec<String>,
        /// The CA (PEM) of `https://` endpoints.
        #[arg(long)]
        cacert: Option<std::path::PathBuf>,
        /// Log every client in as this user (NAME:PASSWORD), for servers with auth enabled.
        #[arg(long)]
        user: Option<String>,
    },
}

/// Runs a `weft bench` command.
pub(crate) async fn bench(cmd: BenchCmd) -> anyhow::Result<()> {
    let BenchCmd::EtcdApi {
        endpoints,
        workloads,
        clients,
        seconds,
        conns,
        transport,
        server_pids,
        client_threads: _,
        cacert,
        user,
    } = cmd;
    if let Some(u) = user {
        let (n, p) = u
            .split_once(':')
            .with_context(|| format!("--user {u:?} must be NAME:PASSWORD"))?;
        let _ = USER.set((n.to_owned(), p.to_owned()));
    }
    if let Some(f) = cacert {
        let pem = std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?;
        let _ = CA.set(pem);
    }
    let dur = crate::secs(seconds, "--seconds")?;
    if conns == 0 {
        anyhow::bail!("--conns must be at least 1");
    }
    let pids = parse_pids(&server_pids)?;
    if pids.is_empty() {
        println!("| workload | clients | endpoint | ops/s | p50 µs | p99 µs | max µs |");
        println!("|---|---|---|---|---|---|---|");
    } else {
        println!("| workload | clients | endpoint | ops/s | p50 µs | p99 µs | max µs | server CPU µs/op | client CPU µs/op | idle % per core |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
    }
    for w in &workloads {
        for c in &clients {
            for e in &endpoints {
                let (name, url) = e
                    .split_once('=')
                    .with_context(|| format!("--endpoints {e:?} must be NAME=URL"))?;
                let pid = pids.get(name).copied();
                let before = CpuSample::take(pid)?;
                let cell = run(url, w, *c, conns, transport, dur).await?;
                let after = CpuSample::take(pid)?;
                let cpu = if pids.is_empty() {
                    String::new()
                } else {
                    let (server, client) = after.since(&before, cell.ops);
                    let server = server.map(|s| format!("{s:.1}")).unwrap_or_default();
                    let idle = after.idle_since(&before);
                    format!(" {server} | {client:.1} | {idle} |")
                };
                println!(
                    "| {w} | {c} | {name} | {:.0} | {} | {} | {} |{cpu}",
                    cell.per_sec(),
                    cell.p50_us,
                    cell.p99_us,
                    cell.max_us
                );
                std::io::Write::flush(&mut std::io::stdout())?;
            }
        }
    }
    Ok(())
}
