//! `weft repl` and `weft promote`: a node's replication status, hash checks, promotion.

use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::Client;
use crate::Conn;

/// `weft repl` subcommands.
#[derive(Subcommand)]
pub enum ReplCmd {
    /// Role, revision, policy, loss window; each replica's state and lag (on a primary) or
    /// the primary and the staleness (on a replica).
    Status,
    /// Compare hashes with every connected replica (run against the primary); exits 1 on a
    /// mismatch or an error.
    Check {
        /// The revision to compare at (default: the oldest revision the replicas hold).
        #[arg(long)]
        revision: Option<i64>,
    },
}

fn print_status(v: &Value) {
    println!(
        "{} ({}) at revision {}, policy {}, loss window {} revisions{}",
        v["name"].as_str().unwrap_or("?"),
        v["role"].as_str().unwrap_or("?"),
        v["revision"],
        v["policy"].as_str().unwrap_or("?"),
        v["loss_window"],
        match v["degraded"].as_u64() {
            Some(k) => format!(", DEGRADED to async (semi-sync {k} timed out)"),
            None => String::new(),
        }
    );
    for r in v["replicas"].as_array().into_iter().flatten() {
        println!(
            "  replica {:<16} {:<14} revision {:<10} lag {} revisions, {} bytes, {:.3} s{}",
            r["name"].as_str().unwrap_or("?"),
            r["state"].as_str().unwrap_or("?"),
            r["revision"],
            r["lag_revisions"],
            r["lag_bytes"],
            r["lag_seconds"].as_f64().unwrap_or(0.0),
            match r["last_check"]["outcome"].as_str() {
                Some(o) => format!(", last check {o}"),
                None => String::new(),
            }
        );
    }
    if let Some(f) = v["follower"].as_object() {
        println!(
            "  following {} ({}), primary at revision {}, staleness {} ms{}",
            f["primary"].as_str().unwrap_or("?"),
            f["state"].as_str().unwrap_or("?"),
            f["primary_revision"],
            f["staleness_ms"],
            match f["last_error"].as_str() {
                Some(e) => format!(", last error: {e}"),
                None => String::new(),
            }
        );
    }
}

/// `weft repl`; returns the exit code.
pub async fn repl(cmd: ReplCmd, conn: Conn) -> Result<i32> {
    let c = Client::new(&conn.endpoint, conn.token.clone())?;
    match cmd {
        ReplCmd::Status => {
            let v = c.get("/v1/repl/status").await?;
            match conn.json {
                true => println!("{v}"),
                false => print_status(&v),
            }
            Ok(0)
        }
        ReplCmd::Check { revision } => {
            let body = match revision {
                Some(r) => json!({ "revision": r }),
                None => json!({}),
            };
            let v = c.post("/v1/repl/check", &body).await?;
            let results = v["results"].as_array().cloned().unwrap_or_default();
            if conn.json {
                println!("{v}");
            } else {
                for r in &results {
                    println!(
                        "{:<16} revision {:<10} {}{}",
                        r["replica"].as_str().unwrap_or("?"),
                        r["revision"],
                        r["outcome"].as_str().unwrap_or("?"),
                        match r["error"].as_str() {
                            Some(e) => format!(": {e}"),
                            None => String::new(),
                        }
                    );
                }
                if results.is_empty() {
                    println!("no replica connected");
                }
            }
            Ok(if v["ok"].as_bool() == Some(true) {
                0
            } else {
                1
            })
        }
    }
}

/// `weft promote`: makes the replica at the endpoint the primary.
pub async fn promote(force: bool, conn: Conn) -> Result<()> {
    let c = Client::new(&conn.endpoint, conn.token.clone())?;
    let v = c
        .post("/v1/repl/promote", &json!({ "force": force }))
        .await?;
    if conn.json {
        println!("{v}");
    } else {
        println!(
            "promoted to primary at revision {} (was following {}){}",
            v["revision"],
            v["previous_primary"].as_str().unwrap_or("?"),
            if v["forced"].as_bool() == Some(true) {
                format!(
                    "; FORCED: revisions after {} acknowledged by the old primary are lost",
                    v["revision"]
                )
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
