//! `weft lease`: grant, revoke, keep alive and inspect leases.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;

use crate::client::Client;
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
