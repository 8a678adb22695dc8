//! `weft svc`, `weft lock` and `weft elect`: clients of the node's coordination API. Each owns a
//! lease that it keeps alive itself (every TTL/3); the node never renews it, so when this
//! process dies, what it held ends within the TTL.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::sync::watch;
use weft_coord::{probe, Health, HealthCheck, Instance};

use crate::client::Client;

/// A lease this process keeps alive; `lost` turns `Some(reason)` if it cannot.
pub struct ClientLease {
    pub id: i64,
    pub ttl: i64,
    lost: watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl ClientLease {
    /// Grants a lease of `ttl` seconds and keeps it alive in the background. The lease counts
    /// as lost when the node says it is gone, or when no keepalive succeeded for TTL minus a
    /// tenth (so the process gives up before the store does).
    pub async fn grant(c: Arc<Client>, ttl: i64) -> Result<ClientLease> {
        let g = c.post("/v1/lease/grant", &json!({"ttl": ttl})).await?;
        let (id, ttl) = (
            g["id"].as_i64().context("lease id")?,
            g["ttl"].as_i64().context("lease ttl")?,
        );
        let (tx, lost) = watch::channel(None);
        let task = tokio::spawn(async move {
            let ttl_d = Duration::from_secs(ttl as u64);
            let margin = (ttl_d / 10).max(Duration::from_millis(100));
            let mut deadline = tokio::time::Instant::now() + ttl_d - margin;
            loop {
                tokio::time::sleep(
                    (ttl_d / 3)
                        .min(deadline.saturating_duration_since(tokio::time::Instant::now())),
                )
                .await;
                if tokio::time::Instant::now() >= deadline {
                    let _ = tx.send(Some("keepalives did not succeed in time".into()));
                    return;
                }
                let sent = tokio::time::Instant::now();
                match c.post("/v1/lease/keepalive", &json!({"id": id})).await {
                    Ok(_) => deadline = sent + ttl_d - margin,
                    Err(e) if e.to_string().contains("lease_not_found") => {
                        let _ = tx.send(Some(format!("the lease is gone: {e}")));
                        return;
                    }
                    Err(e) => eprintln!("warning: keepalive failed, retrying: {e:#}"),
                }
            }
        });
        Ok(ClientLease {
            id,
            ttl,
            lost,
            task,
        })
    }

    /// Resolves with the reason once the lease is lost.
    pub async fn lost(&self) -> String {
        let mut rx = self.lost.clone();
        let r = rx
            .wait_for(Option::is_some)
            .await
            .map(|r| r.clone().unwrap_or_default());
        r.unwrap_or_else(|_| "keepalive task ended".into())
    }

    /// Stops renewing and revokes the lease.
    pub async fn revoke(self, c: &Client) {
        self.task.abort();
        let _ = c.post("/v1/lease/revoke", &json!({"id": self.id})).await;
    }
}

/// Retries a long-poll until it succeeds, `timeout` passes, or the lease is lost.
async fn long_poll(
    c: &Client,
    path: &str,
    mut body: Value,
    timeout: Option<Duration>,
    lease: &ClientLease,
) -> Result<Value> {
    let start = tokio::time::Instant::now();
    loop {
        let left = match timeout {
            Some(t) => t
                .checked_sub(start.elapsed())
                .ok_or_else(|| anyhow!("timed out after {t:?}"))?,
            None => Duration::from_secs(60),
        };
        body["timeout_ms"] = json!(left.as_millis().clamp(1, 60_000) as u64);
        tokio::select! {
            r = c.post(path, &body) => match r {
                Ok(v) => return Ok(v),
                Err(e) if e.to_string().starts_with("timeout:") => continue,
                Err(e) => return Err(e),
            },
            reason = lease.lost() => bail!("lease lost while waiting: {reason}"),
        }
    }
}

/// Resolves when `key`, created at revision `created`, is deleted (or the watch fails).
async fn key_deleted(c: &Client, key: &str, created: i64) -> String {
    let q = format!(
        "/v1/watch?key={}&start_revision={created}",
        crate::urlencode(key)
    );
    let r = c
        .sse(&q, |ev, data| {
            !(ev == "watch"
                && data["events"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["type"] == "DELETE")))
        })
        .await;
    match r {
        Ok(()) => format!("the key {key} was deleted"),
        Err(e) => format!("cannot watch {key}: {e:#}"),
    }
}

/// `weft lock NAME -- CMD...`: exit code of the command, or an error.
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
    let lease = ClientLease::grant(c.clone(), ttl).await?;
    let g = match long_poll(
        &c,
        "/v1/lock/acquire",
        json!({"name": name, "lease": lease.id}),
        timeout,
        &lease,
    )
    .await
    {
        Ok(g) => g,
        Err(e) => {
            lease.revoke(&c).await;
            return Err(e);
        }
    };
    let stop = crate::shutdown_signal();
    let key = g["key"].as_str().context("lock key")?.to_string();
    let token = g["fencing_token"].as_i64().context("fencing token")?;
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .env("WEFT_FENCING_TOKEN", token.to_string())
        .env("WEFT_LOCK_KEY", &key)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {prog}"))?;
    let outcome = tokio::select! {
        st = child.wait() => Ok(st?.code().unwrap_or(1)),
        reason = lease.lost() => Err(anyhow!("lock {name} lost ({reason}); the command was killed")),
        reason = key_deleted(&c, &key, token) => Err(anyhow!("lock {name} lost ({reason}); the command was killed")),
        _ = stop => Err(anyhow!("interrupted; the command was killed")),
    };
    if outcome.is_err() {
        let _ = child.kill().await;
    }
    let _ = c
        .post(
            "/v1/lock/release",
            &json!({"key": key, "fencing_token": token}),
        )
        .await;
    lease.revoke(&c).await;
    outcome
}

/// `weft elect NAME VALUE`: campaign, then hold leadership until interrupted.
pub async fn elect(
    c: Arc<Client>,
    name: &str,
    value: &str,
    ttl: i64,
    json_out: bool,
) -> Result<()> {
    let lease = ClientLease::grant(c.clone(), ttl).await?;
    let r = long_poll(
        &c,
        "/v1/election/campaign",
        json!({"name": name, "lease": lease.id, "value": value}),
        None,
        &lease,
    )
    .await?;
    let key = r["key"].as_str().context("key")?.to_string();
    let term = r["term"].as_i64().context("term")?;
    let stop = crate::shutdown_signal();
    if json_out {
        println!("{r}");
    } else {
        println!("elected {name}: {value} (term {term})");
    }
    std::io::stdout().flush()?;
    let res = tokio::select! {
        reason = lease.lost() => Err(anyhow!("leadership of {name} lost: {reason}")),
        reason = key_deleted(&c, &key, term) => Err(anyhow!("leadership of {name} lost: {reason}")),
        _ = stop => {
            c.post("/v1/election/resign", &json!({"key": key, "term": term, "lease": lease.id})).await.map(|_| ())
        }
    };
    lease.revoke(&c).await;
    res
}

/// `weft elect --observe NAME`.
pub async fn observe(c: &Client, name: &str, json_out: bool) -> Result<()> {
    c.sse(
        &format!("/v1/election/observe?name={}", crate::urlencode(name)),
        |ev, data| {
            if ev == "leader" {
                if json_out {
                    println!("{data}");
                } else if data.is_null() {
                    println!("no leader");
                } else {
                    println!(
                        "{} (term {})",
                        data["value"].as_str().unwrap_or(""),
                        data["term"]
                    );
                }
                let _ = std::io::stdout().flush();
            }
            true
        },
    )
    .await
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
    let lease = ClientLease::grant(c.clone(), o.ttl).await?;
    let body = |inst: &Instance| json!({"service": o.service, "lease": lease.id, "instance": inst});
    c.post("/v1/svc/register", &body(&inst)).await?;
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
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
            _ = &mut stop => break Ok(()),
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
    lease.revoke(&c).await;
    res
}

fn print_instance(prefix: &str, i: &Value) {
    let tags: Vec<&str> = i["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!(
        "{prefix}{} {} {}{}",
        i["id"].as_str().unwrap_or(""),
        i["address"].as_str().unwrap_or(""),
        i["health"].as_str().unwrap_or(""),
        if tags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", tags.join(","))
        }
    );
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
        for i in r["instances"].as_array().into_iter().flatten() {
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
                    "reset" => {
                        println!("RESET revision {}", data["revision"]);
                        for i in data["instances"].as_array().into_iter().flatten() {
                            print_instance("  ", i);
                        }
                    }
                    "added" => print_instance("ADDED ", data),
                    "updated" => print_instance("UPDATED ", data),
                    "removed" => println!("REMOVED {}", data["id"].as_str().unwrap_or("")),
                    _ => {}
                }
            }
            let _ = std::io::stdout().flush();
            true
        },
    )
    .await
}
