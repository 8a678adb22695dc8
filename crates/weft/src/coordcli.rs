//! `weft svc`, `weft lock` and `weft elect`: clients of the node's coordination API. Each owns a
//! lease that it keeps alive itself (`crate::lease`); the node never renews it, so when this
//! process dies, what it held ends within the TTL.
//!
//! A node restart is not a lost lock: waiting commands keep waiting (with backoff, saying so on
//! stderr), holders keep renewing until their local deadline and re-check their key after a
//! broken watch; loss is declared only when the key is gone, the node says the lease is gone,
//! or the local deadline passes.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use weft_coord::{probe, Health, HealthCheck, Instance, LostReason};
use weft_server::api::RangeResp;

use crate::client::{api_code, is_transient, Client};
use crate::lease::{retrying, ClientLease, Halt, Retry, Stop};

/// Exit status of `weft lock` when `--timeout` passed before the lock was held.
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status of `weft lock` and `weft elect` when the lock or leadership was lost.
pub const EXIT_LOST: i32 = 125;
/// Exit status of `weft lock` when interrupted (SIGINT or SIGTERM; the command was killed).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Longest long-poll asked of the node.
const POLL: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct Acquired {
    key: String,
    fencing_token: i64,
}

#[derive(Deserialize)]
struct Elected {
    key: String,
    term: i64,
}

/// Errors while waiting that a fresh lease cures: the old one expired while the node was
/// away, or its waiter key survived a node crash.
fn start_over(e: &anyhow::Error) -> bool {
    e.is::<LeaseLost>()
        || matches!(
            api_code(e),
            Some("lease_not_found" | "already_held" | "session_lost" | "ownership_lost")
        )
}

#[derive(Debug)]
struct LeaseLost(LostReason);

impl std::fmt::Display for LeaseLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the lease was lost while waiting ({})", self.0)
    }
}

impl std::error::Error for LeaseLost {}

/// Long-polls `path` until it answers, retrying server timeouts and node outages, until the
/// deadline, a signal, or the lease is lost.
async fn long_poll<T: serde::de::DeserializeOwned>(
    c: &Client,
    what: &str,
    path: &str,
    mut body: Value,
    deadline: Option<Instant>,
    stop: &Stop,
    lease: &ClientLease,
) -> Result<T, Halt> {
    let mut retry = Retry::new(what);
    loop {
        let left = match deadline {
            Some(d) => d
                .checked_duration_since(Instant::now())
                .ok_or(Halt::TimedOut)?,
            None => POLL,
        };
        body["timeout_ms"] = json!(left.min(POLL).as_millis().max(1) as u64);
        let r = tokio::select! {
            r = c.call::<_, T>(path, &body) => r,
            reason = lease.lost() => return Err(Halt::Failed(LeaseLost(reason).into())),
            _ = stop.wait() => return Err(Halt::Interrupted),
        };
        match r {
            Ok(v) => return Ok(v),
            Err(e) if api_code(&e) == Some("timeout") => retry.ok(),
            Err(e) if is_transient(&e) => retry.failed(&e, deadline, stop).await?,
            Err(e) => return Err(Halt::Failed(e)),
        }
    }
}

/// Grants a lease and long-polls `path` with it until held; a lease lost while waiting is
/// replaced by a new one (the wait starts over at the end of the queue).
async fn wait_for<T: serde::de::DeserializeOwned>(
    c: &Arc<Client>,
    what: &str,
    path: &str,
    body: &Value,
    ttl: i64,
    deadline: Option<Instant>,
    stop: &Stop,
) -> Result<(ClientLease, T), Halt> {
    loop {
        let lease = retrying("granting a lease", deadline, stop, || {
            ClientLease::grant(c.clone(), ttl)
        })
        .await?;
        let mut body = body.clone();
        body["lease"] = json!(lease.id);
        match long_poll(c, what, path, body, deadline, stop, &lease).await {
            Ok(v) => return Ok((lease, v)),
            Err(Halt::Failed(e)) if start_over(&e) => {
                eprintln!("weft: {what}: {e:#}; waiting again with a new lease");
                lease.revoke(c, stop).await;
            }
            Err(h) => {
                lease.revoke(c, stop).await;
                return Err(h);
            }
        }
    }
}

/// Whether `key` exists with create revision `created`, and the revision read at.
async fn key_state(c: &Client, key: &str, created: i64) -> Result<(bool, i64)> {
    let r: RangeResp = c
        .call("/v1/kv/range", &json!({ "key": key, "keys_only": true }))
        .await?;
    let held = r
        .kvs
        .first()
        .is_some_and(|kv| kv.create_revision == created);
    Ok((held, r.header.revision))
}

/// Resolves (with the cause) when `key`, created at revision `created`, is gone. A broken
/// watch is not a loss: it reconnects with backoff, re-reads the key, and watches on from the
/// revision it read. The caller's lease deadline bounds how long this may take.
async fn key_gone(c: &Client, key: &str, created: i64, stop: &Stop) -> String {
    let mut retry = Retry::new(format!("watching {key}"));
    loop {
        let from = match key_state(c, key, created).await {
            Ok((true, rev)) => {
                retry.ok();
                rev + 1
            }
            Ok((false, _)) => return format!("the key {key} was deleted"),
            Err(e) if is_transient(&e) => {
                if retry.failed(&e, None, stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
                continue;
            }
            Err(e) => return format!("cannot read the key {key}: {e:#}"),
        };
        let q = format!(
            "/v1/watch?key={}&start_revision={from}",
            crate::urlencode(key)
        );
        let r = c
            .sse(&q, |ev, data| {
                !(ev == "watch"
                    && serde_json::from_value::<weft_server::api::WatchJson>(data.clone())
                        .is_ok_and(|w| w.events.iter().any(|e| e.kind == "DELETE")))
            })
            .await;
        match r {
            Ok(()) => return format!("the key {key} was deleted"),
            Err(e) if is_transient(&e) || api_code(&e) == Some("compacted") => {
                if retry.failed(&e, None, stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            Err(e) => return format!("cannot watch the key {key}: {e:#}"),
        }
    }
}

/// What ended a holder's time.
enum Held {
    /// The command finished with this status.
    Done(i32),
    /// The lock or leadership was lost, with the cause.
    Lost(String),
    /// SIGINT or SIGTERM.
    Interrupted,
}

/// Waits until the key or the lease is lost, or a signal arrives.
async fn hold(c: &Client, lease: &ClientLease, key: &str, created: i64, stop: &Stop) -> Held {
    tokio::select! {
        reason = lease.lost() => Held::Lost(reason.to_string()),
        reason = key_gone(c, key, created, stop) => Held::Lost(reason),
        _ = stop.wait() => Held::Interrupted,
    }
}

/// Releases what a holder held (retrying through a node restart) and revokes its lease.
async fn let_go(c: &Client, lease: ClientLease, path: &str, body: Value, stop: &Stop) {
    if !lease.is_lost() {
        let deadline = Some(Instant::now() + Duration::from_secs(lease.ttl.max(1) as u64));
        let r = retrying("releasing", deadline, stop, || c.post(path, &body)).await;
        if let Err(Halt::Failed(e)) = r {
            eprintln!("weft: releasing: {e:#}");
        }
    }
    lease.revoke(c, stop).await;
}

/// `weft lock NAME -- CMD...`: the command's exit status, or [`EXIT_TIMEOUT`], [`EXIT_LOST`],
/// [`EXIT_INTERRUPTED`]; an error for anything else.
pub async fn lock(
    c: Arc<Client>,
    name: &str,
    ttl: i64,
    timeout: Option<Duration>,
    cmd: &[String],
) -> Result<i32> {
    let (prog, args) = cmd
        .split_first()
        .context("give the command to run after --")?;
    let stop = Stop::on_signals();
    let deadline = timeout.map(|t| Instant::now() + t);
    let body = json!({ "name": name });
    let what = format!("lock {name}");
    let (lease, g) = match wait_for::<Acquired>(
        &c,
        &what,
        "/v1/lock/acquire",
        &body,
        ttl,
        deadline,
        &stop,
    )
    .await
    {
        Ok(v) => v,
        Err(Halt::TimedOut) => {
            eprintln!(
                "weft lock: {name} not acquired within {:?}",
                timeout.unwrap_or_default()
            );
            return Ok(EXIT_TIMEOUT);
        }
        Err(Halt::Interrupted) => return Ok(EXIT_INTERRUPTED),
        Err(Halt::Failed(e)) => return Err(e),
    };
    let mut child = match tokio::process::Command::new(prog)
        .args(args)
        .env("WEFT_FENCING_TOKEN", g.fencing_token.to_string())
        .env("WEFT_LOCK_KEY", &g.key)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            let release = json!({ "key": g.key, "fencing_token": g.fencing_token });
            let_go(&c, lease, "/v1/lock/release", release, &stop).await;
            return Err(anyhow!("cannot run {prog}: {e}"));
        }
    };
    let outcome = tokio::select! {
        st = child.wait() => Held::Done(st.map(|s| s.code().unwrap_or(1)).unwrap_or(1)),
        h = hold(&c, &lease, &g.key, g.fencing_token, &stop) => h,
    };
    if !matches!(outcome, Held::Done(_)) {
        let _ = child.kill().await;
    }
    let release = json!({ "key": g.key, "fencing_token": g.fencing_token });
    let_go(&c, lease, "/v1/lock/release", release, &stop).await;
    Ok(match outcome {
        Held::Done(code) => code,
        Held::Lost(cause) => {
            eprintln!("weft lock: lock {name} lost; the command was killed ({cause})");
            EXIT_LOST
        }
        Held::Interrupted => {
            eprintln!("weft lock: interrupted; the command was killed");
            EXIT_INTERRUPTED
        }
    })
}

/// `weft elect NAME VALUE`: campaign, then hold leadership until interrupted (then resign and
/// exit 0); [`EXIT_LOST`] if leadership is lost.
pub async fn elect(
    c: Arc<Client>,
    name: &str,
    value: &str,
    ttl: i64,
    json_out: bool,
) -> Result<i32> {
    let stop = Stop::on_signals();
    let body = json!({ "name": name, "value": value });
    let what = format!("campaign for {name}");
    let (lease, e) = match wait_for::<Elected>(
        &c,
        &what,
        "/v1/election/campaign",
        &body,
        ttl,
        None,
        &stop,
    )
    .await
    {
        Ok(v) => v,
        Err(Halt::Interrupted | Halt::TimedOut) => return Ok(0),
        Err(Halt::Failed(e)) => return Err(e),
    };
    if json_out {
        println!(
            "{}",
            json!({ "name": name, "value": value, "key": e.key, "term": e.term, "lease": lease.id })
        );
    } else {
        println!("elected {name}: {value} (term {})", e.term);
    }
    std::io::stdout().flush()?;
    let outcome = hold(&c, &lease, &e.key, e.term, &stop).await;
    let resign = json!({ "key": e.key, "term": e.term, "lease": lease.id });
    let_go(&c, lease, "/v1/election/resign", resign, &stop).await;
    Ok(match outcome {
        Held::Lost(cause) => {
            eprintln!("weft elect: leadership of {name} lost ({cause})");
            EXIT_LOST
        }
        Held::Done(_) | Held::Interrupted => 0,
    })
}

/// One line of `weft elect --observe`: the leader, or none.
fn print_leader(name: &str, leader: &Value, json_out: bool) {
    if json_out {
        println!("{}", json!({ "name": name, "leader": leader }));
    } else if leader.is_null() {
        println!("no leader");
    } else {
        #[derive(serde::Deserialize)]
        struct Leader {
            value: String,
            term: i64,
        }
        match serde_json::from_value::<Leader>(leader.clone()) {
            Ok(l) => println!("{} (term {})", l.value, l.term),
            Err(_) => println!("{leader}"),
        }
    }
    let _ = std::io::stdout().flush();
}

/// `weft elect --observe NAME`: a line per leader change; follows the node through restarts
/// (a reconnect prints only what changed meanwhile).
pub async fn observe(c: &Client, name: &str, json_out: bool) -> Result<()> {
    let stop = Stop::on_signals();
    let path = format!("/v1/election/observe?name={}", crate::urlencode(name));
    let mut last: Option<Value> = None;
    let mut retry = Retry::new(format!("observing {name}"));
    loop {
        let r = tokio::select! {
            r = c.sse(&path, |ev, data| {
                if ev == "leader" && last.as_ref() != Some(data) {
                    print_leader(name, data, json_out);
                    last = Some(data.clone());
                }
                true
            }) => r,
            _ = stop.wait() => return Ok(()),
        };
        match r {
            Err(e) if is_transient(&e) => {
                if retry.failed(&e, None, &stop).await.is_err() {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
            Ok(()) => return Ok(()),
        }
    }
}

/// Options of `weft svc register`.
pub struct RegisterOpts {
    pub service: String,
    pub id: String,
    pub address: String,
    pub ttl: i64,
    pub tags: Vec<String>,
    pub meta: Vec<String>,
    pub weight: u32,
    pub version: String,
    pub check: Option<HealthCheck>,
}

/// `weft svc register`: register and keep the registration alive until interrupted.
pub async fn register(c: Arc<Client>, o: RegisterOpts) -> Result<()> {
    let mut metadata = BTreeMap::new();
    for m in &o.meta {
        let (k, v) = m
            .split_once('=')
            .with_context(|| format!("--meta {m:?} must be KEY=VALUE"))?;
        metadata.insert(k.to_string(), v.to_string());
    }
    let mut inst = Instance::new(&o.id, &o.address);
    inst.tags = o.tags.clone();
    inst.metadata = metadata;
    inst.weight = o.weight;
    inst.version = o.version.clone();
    if let Some(check) = &o.check {
        inst.health = if probe(check).await {
            Health::Passing
        } else {
            Health::Critical
        };
    }
    let stop = Stop::on_signals();
    let lease = ClientLease::grant(c.clone(), o.ttl).await?;
    let body = |inst: &Instance| json!({"service": o.service, "lease": lease.id, "instance": inst});
    c.post("/v1/svc/register", &body(&inst)).await?;
    println!(
        "registered {}/{} at {} (lease {:x}, TTL {}s, {:?})",
        o.service, o.id, o.address, lease.id, lease.ttl, inst.health
    );
    std::io::stdout().flush()?;
    let interval = match &o.check {
        Some(HealthCheck::Http { interval, .. }) | Some(HealthCheck::Tcp { interval, .. }) => {
            *interval
        }
        None => Duration::from_secs(3600),
    };
    let res = loop {
        tokio::select! {
            reason = lease.lost() => break Err(anyhow!("registration of {}/{} lost: {reason}", o.service, o.id)),
            _ = stop.wait() => break Ok(()),
            _ = tokio::time::sleep(interval) => {
                if let Some(check) = &o.check {
                    let h = if probe(check).await { Health::Passing } else { Health::Critical };
                    if h != inst.health {
                        inst.health = h;
                        eprintln!("{}/{} is now {:?}", o.service, o.id, h);
                        if let Err(e) = c.post("/v1/svc/register", &body(&inst)).await {
                            eprintln!("warning: cannot publish health: {e:#}");
                        }
                    }
                }
            }
        }
    };
    let _ = c
        .post(
            "/v1/svc/deregister",
            &json!({"service": o.service, "id": o.id}),
        )
        .await;
    lease.revoke(&c, &stop).await;
    res
}

/// One instance as a line; a value that is not an instance is shown as it came.
fn print_instance(prefix: &str, v: &Value) {
    let Ok(i) = serde_json::from_value::<weft_coord::Instance>(v.clone()) else {
        println!("{prefix}{v}");
        return;
    };
    let health = serde_json::to_value(i.health).unwrap_or_default();
    let tags = if i.tags.is_empty() {
        String::new()
    } else {
        format!(" [{}]", i.tags.join(","))
    };
    println!(
        "{prefix}{} {} {}{tags}",
        i.id,
        i.address,
        health.as_str().unwrap_or("")
    );
}

/// `/v1/svc/list`'s answer and the `reset` event of `/v1/svc/watch`.
#[derive(serde::Deserialize)]
struct Instances {
    #[serde(default)]
    revision: i64,
    instances: Vec<Value>,
}

/// `weft svc list SERVICE`.
pub async fn list(c: &Client, service: &str, json_out: bool) -> Result<()> {
    let r = c
        .get(&format!(
            "/v1/svc/list?service={}",
            crate::urlencode(service)
        ))
        .await?;
    if json_out {
        println!("{r}");
    } else {
        let r: Instances = serde_json::from_value(r).context("not a service's instances")?;
        for i in &r.instances {
            print_instance("", i);
        }
    }
    Ok(())
}

/// `weft svc watch SERVICE`.
pub async fn watch_svc(c: &Client, service: &str, json_out: bool) -> Result<()> {
    c.sse(
        &format!("/v1/svc/watch?service={}", crate::urlencode(service)),
        |ev, data| {
            if json_out {
                println!("{}", json!({"event": ev, "data": data}));
            } else {
                match ev {
                    "reset" => match serde_json::from_value::<Instances>(data.clone()) {
                        Ok(r) => {
                            println!("RESET revision {}", r.revision);
                            for i in &r.instances {
                                print_instance("  ", i);
                            }
                        }
                        Err(_) => println!("RESET {data}"),
                    },
                    "added" => print_instance("ADDED ", data),
                    "updated" => print_instance("UPDATED ", data),
                    "removed" => match data.get("id").and_then(Value::as_str) {
                        Some(id) => println!("REMOVED {id}"),
                        None => println!("REMOVED {data}"),
                    },
                    _ => {}
                }
            }
            let _ = std::io::stdout().flush();
            true
        },
    )
    .await
}

#[derive(clap::Subcommand)]
pub(crate) enum SvcCmd {
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

/// Runs a `weft svc` command.
pub(crate) async fn svc(cmd: SvcCmd, conn: crate::Conn) -> Result<()> {
    let c = Arc::new(conn.client()?);
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
            let interval = crate::secs(check_interval, "--check-interval")?;
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
            let o = RegisterOpts {
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
            register(c, o).await
        }
        SvcCmd::List { service } => list(&c, &service, conn.json).await,
        SvcCmd::Watch { service } => watch_svc(&c, &service, conn.json).await,
    }
}
