//! `weft lease`: grant, revoke, keep alive and inspect leases.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;

use crate::Conn;

#[derive(Subcommand)]
pub(crate) enum LeaseCmd {
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

pub(crate) fn parse_lease(s: &str) -> Result<i64> {
    let r = if let Some(h) = s.strip_prefix("0x") {
        i64::from_str_radix(h, 16)
    } else if s.chars().all(|c| c.is_ascii_digit()) {
        s.parse()
    } else {
        i64::from_str_radix(s, 16)
    };
    r.with_context(|| format!("lease id {s:?} is not a decimal or hex number"))
}

pub(crate) async fn lease(cmd: LeaseCmd, conn: Conn) -> Result<()> {
    let c = conn.client()?;
    match cmd {
        LeaseCmd::Grant { ttl } => {
            let r = c.post("/v1/lease/grant", &json!({"ttl": ttl})).await?;
            if conn.json {
                println!("{r}");
            } else {
                let g: Granted = crate::client::answer(r, "lease")?;
                println!("lease {:x} granted with TTL({}s)", g.id, g.ttl);
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
                let ttl = crate::client::answer::<Granted>(r.clone(), "lease")?.ttl;
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
                let t: TimeToLive = crate::client::answer(r, "lease")?;
                let mut line = format!(
                    "lease {id:x} granted with TTL({}s), remaining({}s)",
                    t.granted_ttl, t.ttl
                );
                if keys {
                    line.push_str(&format!(", attached keys({})", t.keys.join(", ")));
                }
                println!("{line}");
            }
        }
        LeaseCmd::List => {
            let r = c.get("/v1/lease/list").await?;
            if conn.json {
                println!("{r}");
            } else {
                let l: Leases = crate::client::answer(r, "lease")?;
                println!("found {} leases", l.leases.len());
                for id in l.leases {
                    println!("{id:x}");
                }
            }
        }
    }
    Ok(())
}

/// `/v1/lease/grant` and `/v1/lease/keepalive` answers.
#[derive(serde::Deserialize)]
struct Granted {
    id: i64,
    ttl: i64,
}

/// `/v1/lease/ttl`'s answer.
#[derive(serde::Deserialize)]
struct TimeToLive {
    granted_ttl: i64,
    ttl: i64,
    #[serde(default)]
    keys: Vec<String>,
}

/// `/v1/lease/list`'s answer.
#[derive(serde::Deserialize)]
struct Leases {
    leases: Vec<i64>,
}
