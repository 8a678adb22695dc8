//! `weft`: the node (`weft up`) and the command-line client of its API.

mod authcli;
#[cfg(feature = "etcd")]
mod bench;
mod client;
mod coordcli;
mod gatewaycli;
mod kvcli;
mod lease;
mod leasecli;
mod node;
mod queuecli;
mod replcli;
mod sagacli;
mod shardcli;
mod snapshotcli;
mod txn;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

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
    Up(Box<node::UpArgs>),
    /// Key-value operations.
    Kv {
        #[command(subcommand)]
        cmd: kvcli::KvCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Lease operations.
    Lease {
        #[command(subcommand)]
        cmd: leasecli::LeaseCmd,
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
        cmd: snapshotcli::SnapshotCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Service discovery: register, list, watch.
    Svc {
        #[command(subcommand)]
        cmd: coordcli::SvcCmd,
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
        cmd: bench::BenchCmd,
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
    /// Message queue: topics, groups, publish, consume (--exec), ack, dead letters, stats.
    Queue {
        #[command(subcommand)]
        cmd: queuecli::QueueCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Replication: status (roles, lag, loss window), hash checks with the replicas.
    Repl {
        #[command(subcommand)]
        cmd: replcli::ReplCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Make the replica at --endpoint the primary (refused if it is behind a revision the
    /// primary acknowledged under semi-sync or sync, unless --force).
    Promote {
        /// Promote even if acknowledged writes would be lost.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Users and roles: status, enable, disable, login (shared by the HTTP and etcd APIs).
    Auth {
        #[command(subcommand)]
        cmd: authcli::AuthCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Users: add, delete, passwd, grant and revoke roles, list.
    User {
        #[command(subcommand)]
        cmd: authcli::UserCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Roles: add, delete, grant and revoke key permissions, list.
    Role {
        #[command(subcommand)]
        cmd: authcli::RoleCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Sharding tools.
    Shard {
        #[command(subcommand)]
        cmd: shardcli::ShardCmd,
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

#[derive(Args)]
pub(crate) struct Conn {
    /// Node API endpoint.
    #[arg(long, global = true, env = "WEFT_ENDPOINT", default_value = concat!("http://", "127.0.0.1:2480"))]
    endpoint: String,
    /// Bearer token.
    #[arg(long, global = true, env = "WEFT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Log in as this user (NAME or NAME:PASSWORD; the password otherwise from WEFT_PASSWORD
    /// or the first line of stdin), instead of --token.
    #[arg(long, global = true, env = "WEFT_USER", conflicts_with = "token")]
    user: Option<String>,
    /// Trust this CA (PEM) for an https:// endpoint instead of the system's roots.
    #[arg(
        long,
        id = "tls_cacert",
        value_name = "FILE",
        global = true,
        env = "WEFT_CACERT"
    )]
    cacert: Option<std::path::PathBuf>,
    /// Present this client certificate (PEM) to an https:// endpoint; with --key.
    #[arg(
        long = "cert",
        id = "tls_cert",
        value_name = "FILE",
        global = true,
        env = "WEFT_CERT",
        requires = "tls_key"
    )]
    cert: Option<std::path::PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(
        long = "key",
        id = "tls_key",
        value_name = "FILE",
        global = true,
        env = "WEFT_KEY",
        requires = "tls_cert"
    )]
    key: Option<std::path::PathBuf>,
    /// Print the raw JSON responses.
    #[arg(long, global = true)]
    json: bool,
}

impl Conn {
    /// A client of the node these options name.
    pub(crate) fn client(&self) -> Result<Client> {
        let tls = weft_tls::ClientFiles {
            ca: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        };
        let c = Client::with_tls(&self.endpoint, self.token.clone(), &tls)?;
        Ok(match self.user()? {
            Some((name, pw)) => c.with_user(name, pw),
            None => c,
        })
    }

    /// `--user` as a name and password.
    pub(crate) fn user(&self) -> Result<Option<(String, String)>> {
        let Some(u) = &self.user else {
            return Ok(None);
        };
        if let Some((name, pw)) = u.split_once(':') {
            return Ok(Some((name.to_owned(), pw.to_owned())));
        }
        if let Ok(pw) = std::env::var("WEFT_PASSWORD") {
            return Ok(Some((u.clone(), pw)));
        }
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading --user's password from stdin")?;
        Ok(Some((
            u.clone(),
            line.trim_end_matches(['\r', '\n']).to_owned(),
        )))
    }
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
        cmd:
            bench::BenchCmd::EtcdApi {
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
            Cmd::Up(a) => node::up(*a).await,
            Cmd::Gateway(a) => gatewaycli::gateway(a).await,
            Cmd::Route { cmd, conn } => gatewaycli::route(cmd, conn).await,
            Cmd::Saga { cmd, conn } => {
                let code = sagacli::saga(cmd, conn).await?;
                std::process::exit(code);
            }
            Cmd::Queue { cmd, conn } => queuecli::queue(cmd, conn).await,
            Cmd::Repl { cmd, conn } => {
                let code = replcli::repl(cmd, conn).await?;
                std::process::exit(code);
            }
            Cmd::Promote { force, conn } => replcli::promote(force, conn).await,
            Cmd::Kv { cmd, conn } => kvcli::kv(cmd, conn).await,
            Cmd::Lease { cmd, conn } => leasecli::lease(cmd, conn).await,
            Cmd::Svc { cmd, conn } => coordcli::svc(cmd, conn).await,
            Cmd::Lock {
                name,
                ttl,
                timeout,
                cmd,
                conn,
            } => {
                let c = Arc::new(conn.client()?);
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
                let c = Arc::new(conn.client()?);
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
            Cmd::Bench { cmd } => bench::bench(cmd).await,
            Cmd::Shard { cmd } => shardcli::shard(cmd),
            Cmd::Auth { cmd, conn } => authcli::auth(cmd, conn).await,
            Cmd::User { cmd, conn } => authcli::user(cmd, conn).await,
            Cmd::Role { cmd, conn } => authcli::role(cmd, conn).await,
            Cmd::Snapshot { cmd, conn } => snapshotcli::snapshot(cmd, &conn).await,
            Cmd::Status { conn } => kvcli::status(conn).await,
        }
    });
    if let Err(e) = &res {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

pub(crate) fn secs(v: f64, what: &str) -> Result<Duration> {
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
