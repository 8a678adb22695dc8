//! `weft`: the node (`weft up`) and the command-line client of its API.

#[cfg(feature = "etcd")]
mod bench;
mod client;
mod coordcli;
mod gatewaycli;
mod lease;
mod node;
mod sagacli;
mod txn;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use client::Client;

// mimalloc: the proxy and the store allocate many small, short-lived buffers; glibc malloc
// showed up as ~12 % of the gateway's CPU in perf.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Default address of `weft up`, and default endpoint of the client commands.
const DEFAULT_LISTEN: &str = "127.0.0.1:2480";

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "Distributed-systems patterns as one node: a durable coordination store with an HTTP API"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node: the embedded store and the HTTP API.
    Up(node::UpArgs),
    /// Key-value operations.
    Kv {
        #[command(subcommand)]
        cmd: KvCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Lease operations.
    Lease {
        #[command(subcommand)]
        cmd: LeaseCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Store status: revision, compaction point, size.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// Backups: save the node's store to a file while it runs, check a file, or make a new
    /// data directory from one.
    Snapshot {
        #[command(subcommand)]
        cmd: SnapshotCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Service discovery: register, list, watch.
    Svc {
        #[command(subcommand)]
        cmd: SvcCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Run a command while holding a distributed lock. The fencing token is passed in
    /// WEFT_FENCING_TOKEN; the lock is released when the command exits, and the command is
    /// killed if the lock is lost.
    Lock {
        /// Lock name.
        name: String,
        /// Lease TTL in seconds: how long the lock outlives this process if it is killed.
        #[arg(long, default_value_t = 10)]
        ttl: i64,
        /// Give up after this many seconds of waiting.
        #[arg(long)]
        timeout: Option<f64>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Benchmarks.
    #[cfg(feature = "etcd")]
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
    /// Run an API gateway: routes, auth, rate limits, load balancing over static or discovered
    /// upstreams, health checks, breakers; reloads its config on change and SIGHUP.
    Gateway(gatewaycli::GatewayArgs),
    /// Gateway routes kept in the store (picked up by every gateway on that store).
    Route {
        #[command(subcommand)]
        cmd: gatewaycli::RouteCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Sagas: submit, status, list, watch; resume, skip or abort a parked one.
    Saga {
        #[command(subcommand)]
        cmd: sagacli::SagaCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Sharding tools.
    Shard {
        #[command(subcommand)]
        cmd: ShardCmd,
    },
    /// Campaign for leadership and hold it until interrupted, or observe an election.
    Elect {
        /// Election name.
        name: String,
        /// Value to proclaim (required unless --observe).
        #[arg(required_unless_present = "observe")]
        value: Option<String>,
        /// Print leader changes instead of campaigning.
        #[arg(long)]
        observe: bool,
        /// Lease TTL in seconds.
        #[arg(long, default_value_t = 10)]
        ttl: i64,
        #[command(flatten)]
        conn: Conn,
    },
}

#[cfg(feature = "etcd")]
#[derive(Subcommand)]
enum BenchCmd {
    /// The same etcd client against etcd v3 endpoints (a real etcd and/or weft's --etcd-listen),
    /// side by side: throughput and p50/p99 latency per workload and concurrency.
    EtcdApi {
        /// NAME=URL pairs, e.g. etcd=http://127.0.0.1:2379,weft=http://127.0.0.1:2381.
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        /// Workloads: put, get, txn, lease, lock, watch (fan-out: CLIENTS watchers of one
        /// prefix, one writer; ops/s counts delivered events).
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
        transport: bench::Transport,
        /// Threads of this client's runtime (default: one per core). 1 runs every client on
        /// one single-threaded runtime: no work stealing or cross-thread wake-ups, and the
        /// client never takes more than one core from the server it shares the machine with.
        #[arg(long)]
        client_threads: Option<usize>,
        /// NAME=PID of local server processes: adds the server's and this client's CPU time
        /// per operation (from /proc) to each row.
        #[arg(long, value_delimiter = ',')]
        server_pids: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ShardCmd {
    /// Balance, movement, lookup time and memory of partitioning algorithms.
    Analyze {
        /// ring, rendezvous, jump, maglev, bounded, slots, or all (comma-separated list allowed).
        #[arg(long, default_value = "all")]
        algo: String,
        /// Number of nodes.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// Number of keys placed.
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// Measure movement when adding this many nodes.
        #[arg(long, conflicts_with = "remove")]
        add: Option<usize>,
        /// Measure movement when removing this many nodes.
        #[arg(long)]
        remove: Option<usize>,
        /// Node weights, comma-separated, one per node.
        #[arg(long, value_delimiter = ',')]
        weights: Vec<u32>,
        /// Virtual nodes per unit of weight (ring, bounded).
        #[arg(long, default_value_t = 160)]
        vnodes: u32,
        /// ε of bounded loads.
        #[arg(long, default_value_t = 0.25)]
        epsilon: f64,
        /// Write an SVG chart of the per-node load here.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SvcCmd {
    /// Register an instance and keep it registered until interrupted.
    Register {
        service: String,
        id: String,
        address: String,
        /// Lease TTL in seconds: the instance disappears this long after the process dies.
        #[arg(long, default_value_t = 10)]
        ttl: i64,
        /// Active health check: GET this URL (2xx/3xx is passing).
        #[arg(long, conflicts_with = "check_tcp")]
        check_http: Option<String>,
        /// Active health check: TCP connect to this host:port.
        #[arg(long)]
        check_tcp: Option<String>,
        /// Seconds between health checks.
        #[arg(long, default_value_t = 5.0)]
        check_interval: f64,
        /// Tags (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Metadata KEY=VALUE (repeatable).
        #[arg(long = "meta")]
        meta: Vec<String>,
        /// Load-balancing weight.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Software version.
        #[arg(long, default_value = "")]
        version: String,
    },
    /// List the instances of a service.
    List { service: String },
    /// Print changes to a service until interrupted.
    Watch { service: String },
}

#[derive(Args)]
pub(crate) struct Conn {
    /// Node API endpoint.
    #[arg(long, global = true, env = "WEFT_ENDPOINT", default_value = concat!("http://", "127.0.0.1:2480"))]
    endpoint: String,
    /// Bearer token.
    #[arg(long, global = true, env = "WEFT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the raw JSON responses.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args, Default)]
struct Sel {
    /// Treat KEY as a prefix.
    #[arg(long)]
    prefix: bool,
    /// Every key >= KEY.
    #[arg(long, conflicts_with = "prefix")]
    from_key: bool,
    /// End of the range [KEY, END).
    #[arg(long, conflicts_with_all = ["prefix", "from_key"])]
    range_end: Option<String>,
}

impl Sel {
    fn apply(&self, body: &mut Value) {
        body["prefix"] = json!(self.prefix);
        body["from_key"] = json!(self.from_key);
        if let Some(e) = &self.range_end {
            body["range_end"] = json!(e);
        }
    }
}

#[derive(Subcommand)]
enum KvCmd {
    /// Write a key.
    Put {
        key: String,
        value: String,
        /// Attach to a lease (hex or decimal id).
        #[arg(long)]
        lease: Option<String>,
        /// Print the previous value.
        #[arg(long)]
        prev_kv: bool,
    },
    /// Read keys.
    Get {
        key: String,
        #[command(flatten)]
        sel: Sel,
        /// Most keys to return.
        #[arg(long, default_value_t = 0)]
        limit: i64,
        /// Read at a past revision.
        #[arg(long, default_value_t = 0)]
        rev: i64,
        /// Only keys.
        #[arg(long)]
        keys_only: bool,
        /// Only the count.
        #[arg(long)]
        count_only: bool,
    },
    /// Delete keys.
    Del {
        key: String,
        #[command(flatten)]
        sel: Sel,
        /// Print the deleted pairs.
        #[arg(long)]
        prev_kv: bool,
    },
    /// Watch keys and print events until interrupted.
    Watch {
        key: String,
        #[command(flatten)]
        sel: Sel,
        /// Start at this revision (inclusive).
        #[arg(long, default_value_t = 0)]
        rev: i64,
        /// Print previous values.
        #[arg(long)]
        prev_kv: bool,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Run a transaction read from stdin in etcdctl's syntax (compares, blank line, success
    /// requests, blank line, failure requests).
    Txn {
        /// Read from this file instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Discard history before a revision.
    Compact { revision: i64 },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Save a backup of the node's store (a consistent copy at one revision, taken while it
    /// serves) to FILE: written to FILE.part, checked, synced, then renamed. Also works
    /// against an etcd backend's node (the file is then etcd's database format).
    Save {
        /// Where to write the backup (an existing file is replaced only once the new one is
        /// complete).
        file: PathBuf,
    },
    /// Check a backup file (magic, length, checksum, structure) and print what it holds.
    Status {
        /// The backup file.
        file: PathBuf,
    },
    /// Make a new data directory from a backup (offline); then run `weft up --data-dir DIR`.
    /// Accepts files from `weft snapshot save` and from `etcdctl snapshot save` against weft.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The data directory to create; it must not exist or be empty.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum LeaseCmd {
    /// Grant a lease of TTL seconds.
    Grant { ttl: i64 },
    /// Revoke a lease (its keys are deleted).
    Revoke { id: String },
    /// Keep a lease alive (every TTL/3) until interrupted.
    Keepalive {
        id: String,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Remaining time of a lease.
    Ttl {
        id: String,
        /// List attached keys.
        #[arg(long)]
        keys: bool,
    },
    /// List live leases.
    List,
}

fn parse_lease(s: &str) -> Result<i64> {
    let r = if let Some(h) = s.strip_prefix("0x") {
        i64::from_str_radix(h, 16)
    } else if s.chars().all(|c| c.is_ascii_digit()) {
        s.parse()
    } else {
        i64::from_str_radix(s, 16)
    };
    r.with_context(|| format!("lease id {s:?} is not a decimal or hex number"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Cmd::Gateway(g) = &cli.cmd {
        if g.threads == Some(0) {
            bail!("--threads must be at least 1");
        }
        // The gateway runs thread-per-core (weft_gateway::serve_threads): this runtime is
        // worker 0 and the others make their own.
        rt = tokio::runtime::Builder::new_current_thread();
        rt.event_interval(weft_gateway::WORKER_EVENT_INTERVAL);
    }
    #[cfg(feature = "etcd")]
    if let Cmd::Bench {
        cmd: BenchCmd::EtcdApi {
            client_threads: Some(n),
            ..
        },
    } = &cli.cmd
    {
        match n {
            0 => bail!("--client-threads must be at least 1"),
            1 => rt = tokio::runtime::Builder::new_current_thread(),
            n => {
                rt.worker_threads(*n);
            }
        }
    }
    let rt = rt.enable_all().build()?;
    let res = rt.block_on(async move {
        match cli.cmd {
            Cmd::Up(a) => node::up(a).await,
            Cmd::Gateway(a) => gatewaycli::gateway(a).await,
            Cmd::Route { cmd, conn } => gatewaycli::route(cmd, conn).await,
            Cmd::Saga { cmd, conn } => {
                let code = sagacli::saga(cmd, conn).await?;
                std::process::exit(code);
            }
            Cmd::Kv { cmd, conn } => kv(cmd, conn).await,
            Cmd::Lease { cmd, conn } => lease(cmd, conn).await,
            Cmd::Svc { cmd, conn } => {
                let c = Arc::new(Client::new(&conn.endpoint, conn.token.clone())?);
                match cmd {
                    SvcCmd::Register {
                        service,
                        id,
                        address,
                        ttl,
                        check_http,
                        check_tcp,
                        check_interval,
                        tags,
                        meta,
                        weight,
                        version,
                    } => {
                        let interval = secs(check_interval, "--check-interval")?;
                        let timeout = interval.min(Duration::from_secs(5));
                        let check = match (check_http, check_tcp) {
                            (Some(url), _) => Some(weft_coord::HealthCheck::Http {
                                url,
                                interval,
                                timeout,
                            }),
                            (None, Some(addr)) => Some(weft_coord::HealthCheck::Tcp {
                                addr,
                                interval,
                                timeout,
                            }),
                            (None, None) => None,
                        };
                        let o = coordcli::RegisterOpts {
                            service,
                            id,
                            address,
                            ttl,
                            tags,
                            meta,
                            weight,
                            version,
                            check,
                        };
                        coordcli::register(c, o).await
                    }
                    SvcCmd::List { service } => coordcli::list(&c, &service, conn.json).await,
                    SvcCmd::Watch { service } => coordcli::watch_svc(&c, &service, conn.json).await,
                }
            }
            Cmd::Lock {
                name,
                ttl,
                timeout,
                cmd,
                conn,
            } => {
                let c = Arc::new(Client::new(&conn.endpoint, conn.token.clone())?);
                let timeout = timeout.map(|t| secs(t, "--timeout")).transpose()?;
                let code = coordcli::lock(c, &name, ttl, timeout, &cmd).await?;
                std::process::exit(code);
            }
            Cmd::Elect {
                name,
                value,
                observe,
                ttl,
                conn,
            } => {
                let c = Arc::new(Client::new(&conn.endpoint, conn.token.clone())?);
                if observe {
                    coordcli::observe(&c, &name, conn.json).await
                } else {
                    let code = coordcli::elect(
                        c,
                        &name,
                        value.as_deref().unwrap_or_default(),
                        ttl,
                        conn.json,
                    )
                    .await?;
                    std::process::exit(code);
                }
            }
            #[cfg(feature = "etcd")]
            Cmd::Bench {
                cmd:
                    BenchCmd::EtcdApi {
                        endpoints,
                        workloads,
                        clients,
                        seconds,
                        conns,
                        transport,
                        server_pids,
                        client_threads: _,
                    },
            } => {
                let dur = secs(seconds, "--seconds")?;
                if conns == 0 {
                    bail!("--conns must be at least 1");
                }
                let pids = bench::parse_pids(&server_pids)?;
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
                            let before = bench::CpuSample::take(pid)?;
                            let cell = bench::run(url, w, *c, conns, transport, dur).await?;
                            let after = bench::CpuSample::take(pid)?;
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
                            std::io::stdout().flush()?;
                        }
                    }
                }
                Ok(())
            }
            Cmd::Shard {
                cmd:
                    ShardCmd::Analyze {
                        algo,
                        nodes,
                        keys,
                        add,
                        remove,
                        weights,
                        vnodes,
                        epsilon,
                        plot,
                        json,
                    },
            } => shard_analyze(
                &algo,
                nodes,
                keys,
                add,
                remove,
                &weights,
                vnodes,
                epsilon,
                plot.as_deref(),
                json,
            ),
            Cmd::Snapshot { cmd, conn } => snapshot_cmd(cmd, &conn).await,
            Cmd::Status { conn } => {
                let c = Client::new(&conn.endpoint, conn.token.clone())?;
                let s = c.get("/v1/status").await?;
                if conn.json {
                    println!("{s}");
                } else {
                    println!(
                        "revision {}  compact revision {}  size {} bytes  {}",
                        s["header"]["revision"],
                        s["compact_revision"],
                        s["db_size"],
                        s["version"].as_str().unwrap_or("")
                    );
                }
                Ok(())
            }
        }
    });
    if let Err(e) = &res {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn shard_analyze(
    algo: &str,
    nodes: usize,
    keys: usize,
    add: Option<usize>,
    remove: Option<usize>,
    weights: &[u32],
    vnodes: u32,
    epsilon: f64,
    plot: Option<&std::path::Path>,
    json_out: bool,
) -> Result<()> {
    use weft_shard::analyze::{analyze, svg, Change, Settings, ALGORITHMS};
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if !weights.is_empty() && weights.len() != nodes {
        bail!(
            "--weights has {} values but --nodes is {nodes}: give one weight per node",
            weights.len()
        );
    }
    let ns: Vec<weft_shard::Node> = (0..nodes)
        .map(|i| {
            weft_shard::Node::weighted(format!("node-{i}"), weights.get(i).copied().unwrap_or(1))
        })
        .collect();
    let algos: Vec<&str> = if algo == "all" {
        ALGORITHMS.to_vec()
    } else {
        algo.split(',').map(str::trim).collect()
    };
    let change = match (add, remove) {
        (Some(m), _) => Some(Change::Add(m)),
        (_, Some(m)) => Some(Change::Remove(m)),
        _ => None,
    };
    let settings = Settings {
        vnodes,
        epsilon,
        keys,
    };
    let mut results = Vec::new();
    for a in algos {
        results.push(analyze(a, &ns, change, &settings)?);
    }
    if json_out {
        let v: Vec<Value> = results
            .iter()
            .map(|r| {
                json!({
                    "algo": r.algo, "max_over_mean": r.max_over_mean, "stddev_over_mean": r.stddev_over_mean,
                    "moved": r.moved, "ideal": r.ideal, "lookup_ns": r.lookup_ns, "memory_bytes": r.memory_bytes,
                    "loads": r.loads.iter().map(|(n, l)| json!({"node": n, "keys": l})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", Value::Array(v));
    } else {
        println!(
            "{nodes} nodes, {keys} keys{}",
            match change {
                Some(Change::Add(m)) => format!(", adding {m}"),
                Some(Change::Remove(m)) => format!(", removing {m}"),
                None => String::new(),
            }
        );
        println!(
            "{:<11} {:>9} {:>12} {:>9} {:>9} {:>8} {:>10} {:>12}",
            "algorithm", "max/mean", "stddev/mean", "moved", "ideal", "ratio", "lookup", "memory"
        );
        for r in &results {
            let (moved, ideal, ratio) = match (r.moved, r.ideal) {
                (Some(m), Some(i)) => (
                    format!("{:.2}%", m * 100.0),
                    format!("{:.2}%", i * 100.0),
                    format!("{:.2}", if i > 0.0 { m / i } else { 1.0 }),
                ),
                _ => ("-".into(), "-".into(), "-".into()),
            };
            println!(
                "{:<11} {:>9.3} {:>12.3} {:>9} {:>9} {:>8} {:>8.1}ns {:>10}KiB",
                r.algo,
                r.max_over_mean,
                r.stddev_over_mean,
                moved,
                ideal,
                ratio,
                r.lookup_ns,
                r.memory_bytes / 1024
            );
        }
    }
    if let Some(p) = plot {
        std::fs::write(p, svg(&results))
            .with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn secs(v: f64, what: &str) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0 && v < 1e7) {
        bail!("{what} {v} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

/// Resolves on SIGINT or SIGTERM.
/// A future that resolves on SIGINT or SIGTERM. The handlers are installed when this is called
/// (not when the future is first polled), so a signal that arrives right after cannot kill the
/// process before it cleans up.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

pub(crate) fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn print_kvs(kvs: &Value) {
    for kv in kvs.as_array().into_iter().flatten() {
        println!("{}", kv["key"].as_str().unwrap_or(""));
        println!("{}", kv["value"].as_str().unwrap_or(""));
    }
}

async fn kv(cmd: KvCmd, conn: Conn) -> Result<()> {
    let c = Client::new(&conn.endpoint, conn.token.clone())?;
    match cmd {
        KvCmd::Put {
            key,
            value,
            lease,
            prev_kv,
        } => {
            let lease = lease.as_deref().map(parse_lease).transpose()?.unwrap_or(0);
            let r = c
                .post(
                    "/v1/kv/put",
                    &json!({"key": key, "value": value, "lease": lease, "prev_kv": prev_kv}),
                )
                .await?;
            if conn.json {
                println!("{r}");
            } else {
                println!("OK");
                if let Some(p) = r.get("prev_kv") {
                    print_kvs(&json!([p]));
                }
            }
        }
        KvCmd::Get {
            key,
            sel,
            limit,
            rev,
            keys_only,
            count_only,
        } => {
            let mut body = json!({"key": key, "limit": limit, "revision": rev, "keys_only": keys_only, "count_only": count_only});
            sel.apply(&mut body);
            let r = c.post("/v1/kv/range", &body).await?;
            if conn.json {
                println!("{r}");
            } else if count_only {
                println!("{}", r["count"]);
            } else if keys_only {
                for kv in r["kvs"].as_array().into_iter().flatten() {
                    println!("{}", kv["key"].as_str().unwrap_or(""));
                }
            } else {
                print_kvs(&r["kvs"]);
            }
        }
        KvCmd::Del { key, sel, prev_kv } => {
            let mut body = json!({"key": key, "prev_kv": prev_kv});
            sel.apply(&mut body);
            let r = c.post("/v1/kv/delete", &body).await?;
            if conn.json {
                println!("{r}");
            } else {
                println!("{}", r["deleted"]);
                print_kvs(&r["prev_kvs"]);
            }
        }
        KvCmd::Watch {
            key,
            sel,
            rev,
            prev_kv,
            count,
        } => {
            let mut q = format!(
                "/v1/watch?key={}&start_revision={rev}&prev_kv={prev_kv}&prefix={}&from_key={}",
                urlencode(&key),
                sel.prefix,
                sel.from_key
            );
            if let Some(e) = &sel.range_end {
                q.push_str(&format!("&range_end={}", urlencode(e)));
            }
            let mut seen = 0usize;
            let json_out = conn.json;
            c.sse(&q, |ev, data| {
                if ev != "watch" {
                    return true;
                }
                for e in data["events"].as_array().into_iter().flatten() {
                    if json_out {
                        println!("{e}");
                    } else {
                        println!("{}", e["type"].as_str().unwrap_or(""));
                        println!("{}", e["kv"]["key"].as_str().unwrap_or(""));
                        if e["type"] == "PUT" {
                            println!("{}", e["kv"]["value"].as_str().unwrap_or(""));
                        }
                    }
                    seen += 1;
                    if count.is_some_and(|n| seen >= n) {
                        let _ = std::io::stdout().flush();
                        return false;
                    }
                }
                let _ = std::io::stdout().flush();
                true
            })
            .await?;
        }
        KvCmd::Txn { file } => {
            let mut input = String::new();
            match file {
                Some(f) => {
                    input = std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?
                }
                None => {
                    std::io::stdin().read_to_string(&mut input)?;
                }
            }
            let body = txn::parse(&input)?;
            let r = c.post("/v1/kv/txn", &body).await?;
            if conn.json {
                println!("{r}");
            } else {
                println!(
                    "{}",
                    if r["succeeded"] == true {
                        "SUCCESS"
                    } else {
                        "FAILURE"
                    }
                );
                for resp in r["responses"].as_array().into_iter().flatten() {
                    println!();
                    if resp.get("put").is_some() {
                        println!("OK");
                    } else if let Some(g) = resp.get("range") {
                        print_kvs(&g["kvs"]);
                    } else if let Some(d) = resp.get("delete") {
                        println!("{}", d["deleted"]);
                    }
                }
            }
        }
        KvCmd::Compact { revision } => {
            let r = c
                .post("/v1/kv/compact", &json!({"revision": revision}))
                .await?;
            if conn.json {
                println!("{r}");
            } else {
                println!("compacted revision {revision}");
            }
        }
    }
    Ok(())
}

/// Percent-encodes a query value.
pub(crate) fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn lease(cmd: LeaseCmd, conn: Conn) -> Result<()> {
    let c = Client::new(&conn.endpoint, conn.token.clone())?;
    match cmd {
        LeaseCmd::Grant { ttl } => {
            let r = c.post("/v1/lease/grant", &json!({"ttl": ttl})).await?;
            if conn.json {
                println!("{r}");
            } else {
                println!(
                    "lease {:x} granted with TTL({}s)",
                    r["id"].as_i64().unwrap_or(0),
                    r["ttl"]
                );
            }
        }
        LeaseCmd::Revoke { id } => {
            let id = parse_lease(&id)?;
            let r = c.post("/v1/lease/revoke", &json!({"id": id})).await?;
            if conn.json {
                println!("{r}");
            } else {
                println!("lease {id:x} revoked");
            }
        }
        LeaseCmd::Keepalive { id, once } => {
            let id = parse_lease(&id)?;
            loop {
                let r = c.post("/v1/lease/keepalive", &json!({"id": id})).await?;
                let ttl = r["ttl"].as_i64().unwrap_or(1);
                if conn.json {
                    println!("{r}");
                } else {
                    println!("lease {id:x} keepalived with TTL({ttl})");
                }
                std::io::stdout().flush()?;
                if once {
                    break;
                }
                tokio::time::sleep(Duration::from_millis((ttl.max(1) as u64 * 1000) / 3)).await;
            }
        }
        LeaseCmd::Ttl { id, keys } => {
            let id = parse_lease(&id)?;
            let r = c
                .post("/v1/lease/ttl", &json!({"id": id, "keys": keys}))
                .await?;
            if conn.json {
                println!("{r}");
            } else {
                let mut line = format!(
                    "lease {id:x} granted with TTL({}s), remaining({}s)",
                    r["granted_ttl"], r["ttl"]
                );
                if keys {
                    let ks: Vec<&str> = r["keys"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|k| k.as_str())
                        .collect();
                    line.push_str(&format!(", attached keys({})", ks.join(", ")));
                }
                println!("{line}");
            }
        }
        LeaseCmd::List => {
            let r = c.get("/v1/lease/list").await?;
            if conn.json {
                println!("{r}");
            } else {
                let ids = r["leases"].as_array().cloned().unwrap_or_default();
                println!("found {} leases", ids.len());
                for id in ids {
                    println!("{:x}", id.as_i64().unwrap_or(0));
                }
            }
        }
    }
    Ok(())
}

/// Prints what a weft backup file holds.
fn print_backup(
    what: &str,
    path: &std::path::Path,
    i: &weft_store::embedded::BackupInfo,
    json: bool,
) {
    if json {
        println!(
            "{}",
            json!({"file": path.display().to_string(), "revision": i.revision,
                   "compact_revision": i.compact_revision, "keys": i.keys, "bytes": i.bytes})
        );
    } else {
        println!(
            "{what} {}: revision {}  compact revision {}  keys {}  {} bytes",
            path.display(),
            i.revision,
            i.compact_revision,
            i.keys,
            i.bytes
        );
    }
}

async fn snapshot_cmd(cmd: SnapshotCmd, conn: &Conn) -> Result<()> {
    use weft_store::embedded::{restore, verify_backup};
    match cmd {
        SnapshotCmd::Save { file } => {
            let c = Client::new(&conn.endpoint, conn.token.clone())?;
            let part = {
                let mut p = file.clone().into_os_string();
                p.push(".part");
                PathBuf::from(p)
            };
            let saved = async {
                let saved = c.download("/v1/snapshot", &part).await?;
                if saved.format == weft_store::BackupFormat::Weft.name() {
                    verify_backup(&part).context("the node sent a damaged backup, not saved")?;
                }
                anyhow::Ok(saved)
            }
            .await
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&part);
            })?;
            std::fs::rename(&part, &file).with_context(|| {
                format!("cannot rename {} to {}", part.display(), file.display())
            })?;
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .with_context(|| format!("cannot sync {}", dir.display()))?;
            }
            if conn.json {
                println!(
                    "{}",
                    json!({"file": file.display().to_string(), "revision": saved.revision,
                           "format": saved.format, "bytes": saved.bytes})
                );
            } else {
                println!(
                    "saved {}: revision {}  {} bytes  format {}",
                    file.display(),
                    saved.revision,
                    saved.bytes,
                    saved.format
                );
            }
        }
        SnapshotCmd::Status { file } => {
            let i = verify_backup(&file)?;
            print_backup("backup", &file, &i, conn.json);
        }
        SnapshotCmd::Restore { file, data_dir } => {
            let i = restore(&file, &data_dir)?;
            print_backup(
                &format!("restored into {} from", data_dir.display()),
                &file,
                &i,
                conn.json,
            );
        }
    }
    Ok(())
}
