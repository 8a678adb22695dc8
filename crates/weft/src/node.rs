//! `weft up`: the node's command-line options and its assembly (store, HTTP API, saga
//! orchestrator, optional etcd API and gateway), served until SIGINT/SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use weft_store::embedded::{AutoCompact, Durability, Embedded, Options};

use crate::{gatewaycli, init_tracing, shutdown_signal, DEFAULT_LISTEN};

#[derive(Args)]
pub struct UpArgs {
    /// Data directory (created if missing).
    #[arg(long, env = "WEFT_DATA_DIR", default_value = "weft-data")]
    data_dir: PathBuf,
    /// Address of the HTTP API. Non-loopback addresses require --token.
    #[arg(long, env = "WEFT_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Bearer token required by the API (mandatory on non-loopback addresses).
    #[arg(long, env = "WEFT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve the HTTP API (and the etcd API) over TLS with this certificate chain (PEM),
    /// reloaded when the file changes.
    #[arg(long, env = "WEFT_CERT_FILE", requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// The private key of --cert-file (PEM).
    #[arg(long, env = "WEFT_KEY_FILE", requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// Require client certificates signed by --trusted-ca-file (mTLS), as etcd's flag.
    #[arg(long, requires = "trusted_ca_file")]
    client_cert_auth: bool,
    /// The CA that client certificates must chain to (PEM).
    #[arg(long, requires = "cert_file")]
    trusted_ca_file: Option<PathBuf>,
    /// Trust this CA (PEM) when the dashboard reads a gateway's admin API over https
    /// (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    gateway_cacert: Option<PathBuf>,
    /// How long a user's token (from /v1/auth/authenticate or the etcd API's Authenticate)
    /// lives after its last use, seconds (etcd's --auth-token-ttl). Users and roles are kept
    /// in the store, under /weft/auth/state.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    auth_token_ttl: u64,
    /// Most HTTP API connections one client address may hold open; more are closed at accept
    /// and counted in weft_connections_refused_total (0: no limit).
    #[arg(long, default_value_t = 4096)]
    max_conns_per_client: usize,
    /// Most HTTP API requests a second one client address may send, after a burst of twice
    /// as many; more are answered 429 rate_limited and counted in weft_requests_limited_total
    /// (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    max_requests_per_client: f64,
    /// Serve the API off loopback without TLS (the token then crosses the network in the
    /// clear): for a private network between nodes only. Logged as a warning. Needs --token.
    #[arg(long, requires = "token")]
    insecure_plaintext: bool,
    /// fsync policy: always, group (default; concurrent writes share an fsync), none (unsafe).
    #[arg(long, default_value = "group")]
    fsync: Durability,
    /// Automatic compaction: keep N revisions ("100000"), a duration ("1h", "30m", "90s"), or "off".
    #[arg(long, default_value = "100000")]
    compact_retention: String,
    /// Start a new log with a snapshot once the log holds this many bytes, or as many as the
    /// last snapshot if that is larger.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    snapshot_bytes: u64,
    /// Group commit delay in microseconds: with concurrent writers, the log waits this long
    /// before an fsync so that it covers more writes (a lone writer is never delayed).
    #[arg(long, default_value_t = 0)]
    commit_delay_us: u64,
    /// Write the log with direct I/O (O_DIRECT|O_DSYNC: one syscall per group commit, no page
    /// cache) where the file system allows it; "false" uses write + fdatasync. Equally durable.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    direct_io: bool,
    /// Run the log thread under SCHED_BATCH (Linux): its wake-ups for each group commit do
    /// not preempt the threads that feed it. "false" keeps the default policy.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    log_thread_batch: bool,
    /// Serve the API over an etcd cluster instead of the embedded store (comma-separated
    /// client URLs).
    #[cfg(feature = "etcd")]
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// TLS to the etcd cluster of --etcd-endpoints and --failover-etcd.
    #[cfg(feature = "etcd")]
    #[command(flatten)]
    etcd_tls: gatewaycli::EtcdTlsArgs,
    /// Also serve the etcd v3 gRPC API (KV, Watch, Lease, Status, MemberList) on this address,
    /// so etcdctl and etcd client libraries work against this node.
    #[cfg(feature = "etcd")]
    #[arg(long)]
    etcd_listen: Option<SocketAddr>,
    /// Threads serving etcd API connections, each a single-threaded runtime; 0 serves them on
    /// the node's shared runtime. Default: half the cores, at least one (the log thread, the
    /// node's runtime and the kernel's network stack use the rest).
    #[cfg(feature = "etcd")]
    #[arg(long, requires = "etcd_listen")]
    etcd_threads: Option<usize>,
    /// An etcd API connection thread makes the durable write for its calls itself, once it
    /// has handled everything it had read, when at least this many records are queued; it
    /// then serves nothing else until the disk is done. Fewer go to the log thread while it
    /// goes on serving. 0: every write through the log thread. On 2 cores, 8 gave 16–31 %
    /// more puts a second than 0 at 16 and 64 clients, and lock hand-offs within noise of 0,
    /// where writing every group inline lost 19–37 % of them; on one core (`taskset`), the
    /// core idles while the thread waits for the disk, and txn lost 15 % (docs/runs/etcd-api.md,
    /// "the connection thread writes its own group"). Default: 8, or 0 when the node may run on one core only.
    #[cfg(feature = "etcd")]
    #[arg(long, requires = "etcd_listen")]
    etcd_inline_batch: Option<usize>,
    /// Most etcd API connections one client address may hold open; more are closed at accept
    /// and counted in weft_connections_refused_total (0: no limit).
    #[cfg(feature = "etcd")]
    #[arg(long, default_value_t = 4096)]
    etcd_max_conns_per_client: usize,
    /// Most etcd API requests (calls and stream opens) a second one client address may send,
    /// after a burst of twice as many; more are answered RESOURCE_EXHAUSTED and counted in
    /// weft_requests_limited_total (0: no limit).
    #[cfg(feature = "etcd")]
    #[arg(long, default_value_t = 0.0)]
    etcd_max_requests_per_client: f64,
    /// Streams one etcd API connection may have open at once (more are refused).
    #[cfg(feature = "etcd")]
    #[arg(long, default_value_t = weft_etcd_api::Limits::default().max_streams)]
    etcd_max_streams: usize,
    /// Request bytes one etcd API connection may hold for calls still being received (a call
    /// over it is answered RESOURCE_EXHAUSTED).
    #[cfg(feature = "etcd")]
    #[arg(long, default_value_t = weft_etcd_api::Limits::default().max_buffered)]
    etcd_max_buffered_bytes: usize,
    /// PING and SETTINGS frames a second one etcd API connection may send (past a burst of
    /// twice as many, ENHANCE_YOUR_CALM ends it).
    #[cfg(feature = "etcd")]
    #[arg(long, default_value_t = weft_etcd_api::Limits::default().control_per_second)]
    etcd_max_control_frames: f64,
    /// Also run the API gateway on this address (routes from --gateway-config and from the
    /// store; upstreams may be services registered on this node).
    #[arg(long)]
    gateway_listen: Option<SocketAddr>,
    /// Gateway configuration file (TOML), reloaded on change and on SIGHUP.
    #[arg(long, requires = "gateway_listen")]
    gateway_config: Option<PathBuf>,
    /// Gateway admin API address (status, stored routes, metrics); uses --token.
    #[arg(long, requires = "gateway_listen")]
    gateway_admin: Option<SocketAddr>,
    /// Run the saga orchestrator behind /v1/saga/* ("false": none; never on a replica).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    sagas: bool,
    /// This node's saga orchestrator name, unique among nodes sharing a store: a restart under
    /// the same name resumes its unfinished sagas at once.
    #[arg(long, default_value = "weft")]
    saga_name: String,
    /// Session TTL of the saga orchestrator, seconds: how soon other nodes on the same store
    /// take over its sagas if it dies.
    #[arg(long, default_value_t = 10)]
    saga_ttl: i64,
    /// How long finished sagas are kept ("24h", "30m", "90s").
    #[arg(long, default_value = "24h")]
    saga_retention: String,
    /// Run the message queue behind /v1/queue/* ("false": none). On etcd (--etcd-endpoints)
    /// and on a replica (--replica-of) the node keeps no local queue unless told: the queue
    /// runs there only with --queue-dir or --queue-nats (it is not replicated).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    queue: bool,
    /// Where the queue keeps its log (default: DATA_DIR/queue). Its acks follow --fsync
    /// (`always` and `group` both acknowledge after the covering fsync).
    #[arg(long)]
    queue_dir: Option<PathBuf>,
    /// Run the queue on this NATS JetStream server instead of embedded (nats://HOST:PORT).
    #[cfg(feature = "nats")]
    #[arg(long)]
    queue_nats: Option<String>,
    /// Follow this primary (http://HOST:PORT or https://HOST:PORT, its HTTP API) as a
    /// read-only replica: stream its log from this data dir's revision (a snapshot first if
    /// its log no longer reaches back), serve reads and watches, forward writes to it.
    #[arg(long)]
    replica_of: Option<String>,
    /// Trust this CA (PEM) for an https:// primary (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    repl_cacert: Option<PathBuf>,
    /// Present this client certificate (PEM) to an https:// primary that asks for one.
    #[arg(long, value_name = "FILE", requires = "repl_key")]
    repl_cert: Option<PathBuf>,
    /// The private key of --repl-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "repl_cert")]
    repl_key: Option<PathBuf>,
    /// This node's name in its primary's replica list (default: an id kept in
    /// DATA_DIR/node-id).
    #[arg(long)]
    repl_name: Option<String>,
    /// Default durability of writes while this node is primary: async | semi-sync=K | sync,
    /// optionally ;timeout=DURATION (default 2s) and ;on-timeout=block|fail|degrade (default
    /// fail). Per request: the weft-durability header.
    #[arg(long, default_value = "async")]
    durability: weft_repl::Policy,
    /// Replicas `sync` waits for (default: every replica that connected since start).
    #[arg(long)]
    sync_replicas: Option<usize>,
    /// Forward writes sent to this replica to its primary ("false": refuse them, naming it).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    forward_writes: bool,
    /// Compare hashes with every replica this often ("off": only `weft repl check`).
    #[arg(long, default_value = "60s")]
    repl_check_every: String,
    /// The primary's API token (default: --token).
    #[arg(long, env = "WEFT_REPL_TOKEN", hide_env_values = true)]
    repl_token: Option<String>,
    /// Automatic failover: the etcd cluster (comma-separated client URLs) that holds the
    /// group's leader lock. The node starts with no role; the leader is the primary, the others
    /// follow it; when its lock expires, the most advanced node takes over.
    #[cfg(feature = "etcd")]
    #[arg(long, value_delimiter = ',', conflicts_with = "replica_of")]
    failover_etcd: Vec<String>,
    /// The failover group (nodes replicating one data set).
    #[cfg(feature = "etcd")]
    #[arg(long, default_value = "weft")]
    failover_group: String,
    /// Lease TTL of the leader lock, seconds: a dead primary is replaced after about this long.
    #[cfg(feature = "etcd")]
    #[arg(long, default_value_t = 5)]
    failover_ttl: i64,
    /// This node's HTTP address as the other nodes reach it (default: http://LISTEN).
    #[cfg(feature = "etcd")]
    #[arg(long)]
    advertise: Option<String>,
}

/// The replication settings of `weft up`.
fn repl_config(a: &UpArgs) -> Result<weft_repl::Config> {
    let check_every = match a.repl_check_every.as_str() {
        "off" | "0" => None,
        s => Some(parse_duration(s, "--repl-check-every")?),
    };
    Ok(weft_repl::Config {
        policy: a.durability,
        sync_replicas: a.sync_replicas,
        forward_writes: a.forward_writes,
        check_every,
        token: a.repl_token.clone().or_else(|| a.token.clone()),
        tls: repl_tls(a)?,
        ..weft_repl::Config::new(match &a.repl_name {
            Some(n) => n.clone(),
            None => node_id(&a.data_dir)?,
        })
    })
}

/// The files of TLS to the primary (--repl-cacert, --repl-cert, --repl-key).
fn repl_files(a: &UpArgs) -> weft_tls::ClientFiles {
    weft_tls::ClientFiles {
        ca: a.repl_cacert.clone(),
        cert: a.repl_cert.clone(),
        key: a.repl_key.clone(),
    }
}

/// TLS to an https:// primary, checked at start (a bad file stops it with the reason).
fn repl_tls(a: &UpArgs) -> Result<Option<Arc<weft_tls::rustls::ClientConfig>>> {
    let files = repl_files(a);
    if !files.is_set() {
        return Ok(None);
    }
    Ok(Some(Arc::new(weft_tls::client_config(
        &files,
        &[b"http/1.1"],
    )?)))
}

/// This node's name among replicas when --repl-name is not given: kept in DATA_DIR/node-id,
/// made on first start, so a restarted replica is the same one to its primary.
fn node_id(dir: &std::path::Path) -> Result<String> {
    let path = dir.join("node-id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s.trim().to_string());
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let id = format!(
        "weft-{:08x}",
        (t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)) as u32
    );
    std::fs::write(&path, &id).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// The node's replication: a replica of `--replica-of`, else a primary replicas may follow
/// (on the embedded store only).
fn replication(
    a: &UpArgs,
    embedded: Option<&Arc<Embedded>>,
) -> Result<Option<Arc<weft_repl::Replication>>> {
    let Some(e) = embedded else {
        if a.replica_of.is_some() {
            bail!("--replica-of needs the embedded store (not --etcd-endpoints)");
        }
        return Ok(None);
    };
    let cfg = repl_config(a)?;
    #[cfg(feature = "etcd")]
    if !a.failover_etcd.is_empty() {
        return Ok(Some(weft_repl::Replication::standby(e.clone(), cfg)));
    }
    Ok(Some(match &a.replica_of {
        Some(p) => weft_repl::Replication::replica(e.clone(), cfg, p.clone()),
        None => weft_repl::Replication::primary(e.clone(), cfg),
    }))
}

/// The failover group's leader at start, when it is another node: its address and the
/// revision it started from (this node follows it, after a snapshot if it must).
#[cfg(feature = "etcd")]
async fn failover_leader(a: &UpArgs) -> Result<Option<(String, i64)>> {
    if a.failover_etcd.is_empty() {
        return Ok(None);
    }
    let coord = failover_store(a).await?;
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("cannot create {}", a.data_dir.display()))?;
    let me = repl_config(a)?.name;
    let l = weft_repl::failover::leader(&coord, &a.failover_group)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the failover leader: {e}"))?;
    Ok(l.filter(|l| l.name != me).map(|l| (l.url, l.fork)))
}

#[cfg(not(feature = "etcd"))]
async fn failover_leader(_: &UpArgs) -> Result<Option<(String, i64)>> {
    Ok(None)
}

#[cfg(feature = "etcd")]
async fn failover_store(a: &UpArgs) -> Result<Arc<dyn weft_store::Store>> {
    let s = a
        .etcd_tls
        .connect(&a.failover_etcd, "the failover etcd")
        .await?;
    Ok(Arc::new(s))
}

/// Starts automatic failover when `--failover-etcd` asks for it.
#[cfg(feature = "etcd")]
async fn start_failover(
    a: &UpArgs,
    repl: Option<&Arc<weft_repl::Replication>>,
    addr: SocketAddr,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let (Some(repl), false) = (repl, a.failover_etcd.is_empty()) else {
        return Ok(None);
    };
    let f = weft_repl::failover::Failover {
        coord: failover_store(a).await?,
        group: a.failover_group.clone(),
        ttl: a.failover_ttl,
        url: a
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{addr}")),
        settle: Duration::from_millis(200),
        on_restart: Arc::new(|leader| reexec(&leader)),
    };
    Ok(Some(tokio::spawn(weft_repl::failover::run(
        repl.clone(),
        f,
    ))))
}

/// The catch-up ladder's last rung while running: a replica whose primary no longer holds
/// the log it needs (or that holds revisions the primary lacks) restarts itself, and the
/// start takes the primary's snapshot. Not within its first 10 s, so that a start that cannot
/// fix it does not turn into a restart loop.
async fn resync_when_needed(repl: Arc<weft_repl::Replication>) {
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if repl.needs_snapshot() && started.elapsed() >= Duration::from_secs(10) {
            reexec(&repl.primary_of().unwrap_or_default());
        }
    }
}

/// Restarts this process with the same arguments (to follow `leader` from a fresh start:
/// a resync if this node holds revisions the leader lacks). The data dir's lock and the
/// listening sockets close with the old image (close-on-exec).
fn reexec(leader: &str) -> ! {
    use std::os::unix::process::CommandExt;
    tracing::warn!(primary = %leader, "restarting this node to resync from / follow the primary");
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let exe = std::env::current_exe().unwrap_or_else(|_| "weft".into());
    let err = std::process::Command::new(exe).args(args).exec();
    eprintln!("weft: cannot restart to follow {leader}: {err}");
    std::process::exit(75)
}

/// Opens the embedded store; a replica whose data its primary's log no longer reaches is
/// first replaced by a snapshot of the primary (the catch-up ladder's last rung).
async fn open_embedded(
    a: &UpArgs,
    opts: Options,
    follow: Option<(String, i64)>,
) -> Result<Arc<Embedded>> {
    let open = || async {
        Embedded::open(&a.data_dir, opts.clone())
            .await
            .with_context(|| format!("cannot open the data dir {}", a.data_dir.display()))
    };
    let e = open().await?;
    let Some((primary, fork)) = &follow else {
        return Ok(Arc::new(e));
    };
    let rev = e.durable_point().rev;
    let token = a.repl_token.clone().or_else(|| a.token.clone());
    let tls = repl_tls(a)?;
    let plan = match weft_repl::probe(
        primary,
        rev,
        weft_repl::saved_epoch(&a.data_dir).0,
        token.as_deref(),
        tls.as_ref(),
    )
    .await
    {
        Ok(p) if p.from == weft_repl::Probe::Log => return Ok(Arc::new(e)),
        Err(err) => {
            tracing::warn!(%primary, error = %err, "cannot ask the primary how to catch up; following it from revision {rev}");
            return Ok(Arc::new(e));
        }
        Ok(p) => p,
    };
    if weft_repl::saved_epoch(&a.data_dir).0 < plan.epoch && rev > plan.fork.max(*fork) {
        tracing::warn!(%primary, discarded = %format!("{}..={rev}", plan.fork.max(*fork) + 1), "this node holds revisions the primary does not have (it was primary in an older epoch): they are discarded");
    }
    e.close();
    drop(e);
    resync(a, primary, token, plan).await?;
    Ok(Arc::new(open().await?))
}

/// Replaces the data dir by a snapshot of `primary` (`GET /v1/snapshot`).
async fn resync(
    a: &UpArgs,
    primary: &str,
    token: Option<String>,
    plan: weft_repl::Plan,
) -> Result<()> {
    let dir = &a.data_dir;
    let part = dir.with_extension("resync.part");
    let fresh = dir.with_extension("resync");
    let _ = std::fs::remove_dir_all(&fresh);
    tracing::warn!(%primary, "resyncing from the primary's snapshot (its log does not reach this node's revision, or this node holds revisions it lacks)");
    let c = crate::client::Client::with_tls(primary, token, &repl_files(a))?;
    c.download("/v1/snapshot", &part)
        .await
        .with_context(|| format!("cannot download a snapshot from {primary}"))?;
    let info = weft_store::embedded::restore(&part, &fresh)
        .with_context(|| format!("the snapshot from {primary} does not restore"))?;
    let _ = std::fs::remove_file(&part);
    // The snapshot is the primary's data in its epoch.
    weft_repl::save_epoch(&fresh, plan.epoch, plan.fork)
        .with_context(|| format!("cannot save the epoch in {}", fresh.display()))?;
    let old = dir.with_extension("old");
    let _ = std::fs::remove_dir_all(&old);
    std::fs::rename(dir, &old).with_context(|| format!("cannot move {} aside", dir.display()))?;
    std::fs::rename(&fresh, dir)
        .with_context(|| format!("cannot put the snapshot in {}", dir.display()))?;
    // The same node to its primary after the resync.
    let _ = std::fs::copy(old.join("node-id"), dir.join("node-id"));
    let _ = std::fs::remove_dir_all(&old);
    tracing::warn!(
        revision = info.revision,
        "replica data replaced by the primary's snapshot"
    );
    Ok(())
}

/// The node's queue: on NATS JetStream when asked, else embedded in the data dir.
async fn queue_backend(
    a: &UpArgs,
    embedded: Option<&Arc<weft_queue::embedded::EmbeddedQueue>>,
) -> Result<Option<Arc<dyn weft_queue::Queue>>> {
    #[cfg(feature = "nats")]
    if let Some(url) = &a.queue_nats {
        let q = weft_queue::nats::NatsQueue::connect(url)
            .await
            .with_context(|| format!("--queue-nats {url}"))?;
        return Ok(Some(Arc::new(q)));
    }
    let _ = a;
    Ok(embedded.map(|q| q.clone() as Arc<dyn weft_queue::Queue>))
}

/// The node's message queue, embedded in the data dir.
async fn queue(a: &UpArgs) -> Result<Option<Arc<weft_queue::embedded::EmbeddedQueue>>> {
    #[cfg(feature = "nats")]
    let nats = a.queue_nats.is_some();
    #[cfg(not(feature = "nats"))]
    let nats = false;
    #[cfg(feature = "etcd")]
    let on_etcd = !a.etcd_endpoints.is_empty();
    #[cfg(not(feature = "etcd"))]
    let on_etcd = false;
    // The queue is not replicated: a replica keeps none unless told where.
    let shared = on_etcd || a.replica_of.is_some();
    if !a.queue || nats || (shared && a.queue_dir.is_none()) {
        return Ok(None);
    }
    let dir = a
        .queue_dir
        .clone()
        .unwrap_or_else(|| a.data_dir.join("queue"));
    let opts = weft_queue::embedded::Options {
        fsync: if a.fsync == Durability::None {
            weft_queue::embedded::Fsync::None
        } else {
            weft_queue::embedded::Fsync::Group
        },
        direct_io: a.direct_io,
        ..Default::default()
    };
    let q = weft_queue::embedded::EmbeddedQueue::open(&dir, opts)
        .await
        .with_context(|| format!("cannot open the queue dir {}", dir.display()))?;
    Ok(Some(Arc::new(q)))
}

/// A duration like "90s", "30m", "24h", "7d".
fn parse_duration(s: &str, what: &str) -> Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("bad {what} {s:?}: use a duration like 90s, 30m, 24h, 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("bad {what} {s:?}: units are s, m, h, d"),
    };
    Ok(Duration::from_secs(secs))
}

/// The saga orchestrator of this node, started on first use or when the store holds work for
/// it; `service` steps resolve through discovery on `store`.
fn sagas(a: &UpArgs, store: &Arc<dyn weft_store::Store>) -> Result<Option<Arc<weft_saga::Lazy>>> {
    // A replica runs no orchestrator: the primary's owns the sagas in the shared data.
    if !a.sagas || a.replica_of.is_some() {
        return Ok(None);
    }
    let retention = parse_duration(&a.saga_retention, "--saga-retention")?;
    weft_saga::check_id(&a.saga_name).map_err(|_| {
        anyhow::anyhow!(
            "--saga-name {:?}: 1 to 64 characters of A-Z a-z 0-9 - _ .",
            a.saga_name
        )
    })?;
    let registry = weft_coord::Registry::new(store.clone());
    let turn = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let resolver: weft_saga::Resolver = Arc::new(move |service: String| {
        let (registry, turn) = (registry.clone(), turn.clone());
        Box::pin(async move {
            let snap = registry.discover(&service).await.ok()?;
            let passing: Vec<&weft_coord::Instance> = snap
                .instances
                .iter()
                .filter(|i| i.health == weft_coord::Health::Passing)
                .collect();
            if passing.is_empty() {
                return None;
            }
            let i = turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % passing.len();
            Some(passing[i].address.clone())
        })
    });
    let opts = weft_saga::Options {
        name: a.saga_name.clone(),
        ttl: a.saga_ttl,
        retention,
        ..Default::default()
    };
    let s = store.clone();
    let lazy = weft_saga::Lazy::new(
        store.clone(),
        &a.saga_name,
        Box::new(move || {
            weft_saga::Orchestrator::builder(s.clone())
                .options(opts.clone())
                .resolver(resolver.clone())
        }),
    );
    lazy.watch_for_work(Duration::from_secs(5));
    Ok(Some(lazy))
}

fn parse_retention(s: &str) -> Result<AutoCompact> {
    if s == "off" || s == "0" {
        return Ok(AutoCompact::Off);
    }
    if let Ok(n) = s.parse::<i64>() {
        if n > 0 {
            return Ok(AutoCompact::Revisions(n));
        }
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("bad --compact-retention {s:?}: use a revision count, a duration like 1h/30m/90s, or off"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("bad --compact-retention {s:?}: units are s, m, h, d"),
    };
    if secs == 0 {
        bail!("--compact-retention must be positive");
    }
    Ok(AutoCompact::Period(Duration::from_secs(secs)))
}

/// The embedded log's counters, exported on each `/metrics` scrape.
fn log_metrics(e: Arc<Embedded>) -> Arc<dyn Fn() + Send + Sync> {
    Arc::new(move || {
        let st = e.stats();
        metrics::counter!("weft_log_records_total").absolute(st.records);
        metrics::counter!("weft_log_durable_writes_total").absolute(st.fsyncs);
        metrics::counter!("weft_log_inline_writes_total").absolute(st.inline_writes);
        metrics::counter!("weft_store_reads_total").absolute(st.reads);
        metrics::counter!("weft_watch_events_total").absolute(st.watch_events);
    })
}

/// The embedded store's counters for the node's history (`/v1/history`).
fn store_counters(e: Arc<Embedded>) -> weft_server::history::CounterSource {
    Arc::new(move || {
        let st = e.stats();
        weft_server::history::Counters {
            reads: st.reads,
            watch_events: st.watch_events,
            fsyncs: st.fsyncs,
        }
    })
}

/// A running gateway inside the node: its view for the HTTP API, the sender that stops it,
/// and its task.
type EmbeddedGateway = (
    weft_server::LocalGateway,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Result<()>>,
);

/// Starts the gateway inside the node when `--gateway-listen` asks for it (here, so that a
/// bad config or a busy port stops the node at once). It registers as `<node id>-gateway`.
async fn embedded_gateway(
    a: &UpArgs,
    store: &Arc<dyn weft_store::Store>,
) -> Result<Option<EmbeddedGateway>> {
    let Some(addr) = a.gateway_listen else {
        return Ok(None);
    };
    let name = a
        .repl_name
        .clone()
        .or_else(|| node_id(&a.data_dir).ok())
        .map(|n| format!("{n}-gateway"));
    let identity = gatewaycli::Identity {
        name,
        embedded: true,
    };
    let started = gatewaycli::start_gateway(
        a.gateway_config.clone(),
        addr,
        1,
        a.gateway_admin,
        gatewaycli::Guard {
            token: a.token.clone(),
            tls: tls_acceptor(a, &[b"h2", b"http/1.1"])?,
        },
        Some(store.clone()),
        identity,
    )
    .await
    .context("gateway")?;
    let local = started.local();
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(started.serve(async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    Ok(Some((local, tx, task)))
}

/// What the dashboard's overview shows beside the store's status: when the node started and
/// how it keeps writes (`weft_node_info` is 1, its labels say it).
fn node_info_metrics(a: &UpArgs, store: &str) {
    weft_server::install_metrics();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    metrics::gauge!("process_start_time_seconds").set(started);
    let fsync = format!("{:?}", a.fsync).to_lowercase();
    metrics::gauge!("weft_node_info", "fsync" => fsync, "store" => store.to_string(), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// The TLS side of the node's listeners, if --cert-file asks for one (checked now: a bad file
/// stops the start with the file and the reason).
fn tls_acceptor(a: &UpArgs, alpn: &[&[u8]]) -> Result<Option<Arc<weft_tls::Acceptor>>> {
    let flags = gatewaycli::TlsFlags {
        cert: a.cert_file.as_ref(),
        key: a.key_file.as_ref(),
        client_cert_auth: a.client_cert_auth,
        trusted_ca: a.trusted_ca_file.as_ref(),
    };
    gatewaycli::server_tls(flags, Vec::new(), alpn)
}

/// Users, roles and permissions of both APIs, kept in the store the node serves (key
/// `weft_auth::AUTH_KEY`: a primary's replicas and nodes sharing an etcd cluster see the
/// same); damaged contents stop the start with the key and what is wrong.
async fn open_auth(a: &UpArgs, store: &Arc<dyn weft_store::Store>) -> Result<Arc<weft_auth::Auth>> {
    let opts = weft_auth::Options {
        token_ttl: std::time::Duration::from_secs(a.auth_token_ttl),
    };
    weft_auth::Auth::open_store(store.clone(), opts)
        .await
        .context("cannot read the users and roles")
}

/// A listener off loopback needs TLS and a way to tell clients apart (a token, users with
/// auth enabled, or client certificates); says what to add otherwise.
fn check_exposure(a: &UpArgs, tls: Option<&Arc<weft_tls::Acceptor>>, auth: bool) -> Result<()> {
    if a.listen.ip().is_loopback() {
        return Ok(());
    }
    let token = a.token.as_deref().is_some_and(|t| !t.is_empty()) || auth;
    match tls {
        None if a.insecure_plaintext && token => {
            tracing::warn!(
                listen = %a.listen,
                "--insecure-plaintext: the API and its token travel unencrypted; use on a private network only"
            );
            Ok(())
        }
        None => bail!(
            "refusing to listen on {} without TLS: pass --cert-file and --key-file, and --token \
             (or WEFT_TOKEN) or --client-cert-auth with --trusted-ca-file; or listen on loopback \
             (--insecure-plaintext with --token serves plain HTTP on a private network)",
            a.listen
        ),
        Some(t) if !token && !t.client_auth() => bail!(
            "refusing to listen on {} without authentication: pass --token (or WEFT_TOKEN), \
             enable users and roles (weft auth enable, on loopback first), or \
             --client-cert-auth with --trusted-ca-file; or listen on loopback",
            a.listen
        ),
        Some(_) => Ok(()),
    }
}

pub async fn up(a: UpArgs) -> Result<()> {
    init_tracing();
    // No transparent huge pages for the node: the store's state grows with every write, and
    // each fresh 2 MiB huge page is zeroed in one page fault on whichever thread touches it
    // first (8 % of the connection thread's time under put load here). Put p99 under etcd's
    // clients went from 5.4–6.1 to 2.7–4.0 ms at equal throughput (docs/runs/etcd-api.md,
    // "no stalls after snapshots"; Redis and MongoDB also advise running without them); watch fan-out
    // pays about 10 % more CPU per event (probably TLB misses). The flag covers this process
    // only.
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!("cannot turn transparent huge pages off: {e}");
    }
    let tls = tls_acceptor(&a, &[b"http/1.1"])?;
    let opts = Options {
        durability: a.fsync,
        snapshot_bytes: a.snapshot_bytes,
        commit_delay: std::time::Duration::from_micros(a.commit_delay_us),
        direct_io: a.direct_io,
        log_thread_batch: a.log_thread_batch,
        auto_compact: parse_retention(&a.compact_retention)?,
        ..Default::default()
    };
    if a.fsync == Durability::None {
        tracing::warn!(
            "--fsync none: acknowledged writes can be lost on power failure; for development only"
        );
    }
    #[cfg(feature = "etcd")]
    let etcd = !a.etcd_endpoints.is_empty();
    #[cfg(not(feature = "etcd"))]
    let etcd = false;
    let (store, embedded): (Arc<dyn weft_store::Store>, Option<Arc<Embedded>>) = if etcd {
        #[cfg(feature = "etcd")]
        {
            let s = a.etcd_tls.connect(&a.etcd_endpoints, "etcd").await?;
            (Arc::new(s), None)
        }
        #[cfg(not(feature = "etcd"))]
        unreachable!()
    } else {
        let follow = match &a.replica_of {
            Some(p) => Some((p.clone(), 0)),
            None => failover_leader(&a).await?,
        };
        let e = open_embedded(&a, opts, follow).await?;
        (e.clone(), Some(e))
    };
    let repl = replication(&a, embedded.as_ref())?;
    let store = repl.as_ref().map_or(store, |r| r.store());
    let auth = open_auth(&a, &store).await?;
    check_exposure(&a, tls.as_ref(), auth.enabled())?;
    let saga = sagas(&a, &store)?;
    let queue = queue(&a).await?;
    let queue_api = queue_backend(&a, queue.as_ref()).await?;
    let listener =
        weft_server::bind(a.listen).with_context(|| format!("cannot listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    #[cfg(feature = "etcd")]
    let failover = start_failover(&a, repl.as_ref(), addr).await?;
    // Announced on stdout for scripts; a closed stdout (the reader gone, e.g. after this
    // process restarted itself to follow a new primary) is not an error.
    let mut out = std::io::stdout();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let _ = writeln!(
        out,
        "weft listening on {scheme}://{addr} (data dir {})",
        a.data_dir.display()
    );
    let _ = out.flush();
    #[cfg(feature = "etcd")]
    let (stop_tx, grpc) = match etcd_api(&a, &store, &auth)? {
        Some((tx, task)) => (Some(tx), Some(task)),
        None => (None, None),
    };
    let (local_gateway, gw_stop, gw_task) = match embedded_gateway(&a, &store).await? {
        Some((local, tx, task)) => (Some(local), Some(tx), Some(task)),
        None => (None, None, None),
    };
    node_info_metrics(
        &a,
        if embedded.is_some() {
            "embedded"
        } else {
            "etcd"
        },
    );
    let cfg = weft_server::ServerConfig {
        token: a.token.clone(),
        auth: Some(auth.clone()),
        on_scrape: embedded.clone().map(log_metrics),
        saga: saga.clone(),
        queue: queue_api,
        repl: repl.clone(),
        local_gateway,
        counters: embedded.clone().map(store_counters),
        tls,
        max_conns_per_client: a.max_conns_per_client,
        max_requests_per_client: a.max_requests_per_client,
        gateway_tls: match &a.gateway_cacert {
            Some(ca) => {
                let files = weft_tls::ClientFiles {
                    ca: Some(ca.clone()),
                    ..Default::default()
                };
                Some(Arc::new(weft_tls::client_config(&files, &[b"http/1.1"])?))
            }
            None => None,
        },
        ..Default::default()
    };
    let resync = repl.clone().map(|r| tokio::spawn(resync_when_needed(r)));
    weft_server::run(listener, store, cfg, shutdown_signal()).await?;
    if let Some(t) = resync {
        t.abort();
    }
    if let (Some(tx), Some(task)) = (gw_stop, gw_task) {
        let _ = tx.send(true);
        let _ = task.await;
    }
    #[cfg(feature = "etcd")]
    if let (Some(tx), Some(task)) = (stop_tx, grpc) {
        let _ = tx.send(true);
        let _ = task.await;
    }
    if let Some(o) = saga.as_ref().and_then(|l| l.started()) {
        o.shutdown().await;
    }
    tracing::info!("shutting down");
    #[cfg(feature = "etcd")]
    if let Some(f) = failover {
        f.abort();
    }
    if let Some(r) = repl {
        r.shutdown();
    }
    if let Some(q) = queue {
        q.close().await;
    }
    if let Some(e) = embedded {
        e.close();
    }
    Ok(())
}

/// A background server of `weft up` and the sender that stops it.
#[cfg(feature = "etcd")]
type Background = (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

/// Starts the etcd v3 API when `--etcd-listen` asks for it.
#[cfg(feature = "etcd")]
fn etcd_api(
    a: &UpArgs,
    store: &Arc<dyn weft_store::Store>,
    auth: &Arc<weft_auth::Auth>,
) -> Result<Option<Background>> {
    let Some(addr) = a.etcd_listen else {
        return Ok(None);
    };
    let tls = tls_acceptor(a, &[b"h2", b"http/1.1"])?;
    let authenticated = auth.enabled() || tls.as_ref().is_some_and(|t| t.client_auth());
    let exposed_ok = tls.is_some() && authenticated;
    if !addr.ip().is_loopback() && !exposed_ok {
        bail!(
            "--etcd-listen {addr}: off loopback the etcd API needs TLS (--cert-file, --key-file) \
             and authentication: users and roles with auth enabled (etcdctl auth enable, or \
             weft auth enable, on loopback first), or client certificates (--client-cert-auth, \
             --trusted-ca-file)"
        );
    }
    let l = weft_server::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", l.local_addr()?);
    let mut out = std::io::stdout();
    let _ = writeln!(out, "etcd API listening on {url}");
    let _ = out.flush();
    // The cores this process may run on (its CPU affinity, e.g. under `taskset`).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = a.etcd_threads.unwrap_or((cores / 2).max(1));
    let ecfg = weft_etcd_api::Config {
        client_url: url,
        member_id: 0x7765_6674,
        threads,
        inline_batch: a.etcd_inline_batch.unwrap_or(if cores > 1 { 8 } else { 0 }),
        tls,
        max_conns_per_client: a.etcd_max_conns_per_client,
        limits: weft_etcd_api::Limits {
            max_streams: a.etcd_max_streams,
            max_buffered: a.etcd_max_buffered_bytes,
            control_per_second: a.etcd_max_control_frames,
            control_burst: 2.0 * a.etcd_max_control_frames,
        },
        auth: Some(auth.clone()),
        max_requests_per_client: a.etcd_max_requests_per_client,
    };
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(weft_etcd_api::serve(l, store.clone(), ecfg, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    Ok(Some((tx, task)))
}
