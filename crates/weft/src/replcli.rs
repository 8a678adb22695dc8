//! `weft repl` and `weft promote`: a node's replication status, hash checks, promotion. The
//! answers are `weft_repl`'s own types, as the server sends them.

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use weft_repl::{CheckResult, Promoted, Status};

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

/// The answer of `POST /v1/repl/check`.
#[derive(serde::Deserialize, serde::Serialize)]
struct Checked {
    ok: bool,
    results: Vec<CheckResult>,
}

fn print_status(s: &Status) {
    let degraded = match s.degraded {
        Some(k) => format!(", DEGRADED to async (semi-sync {k} timed out)"),
        None => String::new(),
    };
    println!(
        "{} ({}) at revision {}, epoch {}, policy {}, loss window {} revisions{degraded}",
        s.name, s.role, s.revision, s.epoch, s.policy, s.loss_window
    );
    for r in &s.replicas {
        let check = match &r.last_check {
            Some(c) => format!(", last check {}", c.outcome),
            None => String::new(),
        };
        println!(
            "  replica {:<16} {:<14} revision {:<10} lag {} revisions, {} bytes, {:.3} s{check}",
            r.name,
            serde_json::to_value(r.state)
                .map(|v| v.as_str().unwrap_or("?").to_string())
                .unwrap_or_default(),
            r.revision,
            r.lag_revisions,
            r.lag_bytes,
            r.lag_seconds,
        );
    }
    if let Some(f) = &s.follower {
        let err = match &f.last_error {
            Some(e) => format!(", last error: {e}"),
            None => String::new(),
        };
        println!(
            "  following {} ({}), primary at revision {}, staleness {} ms{err}",
            f.primary, f.state, f.primary_revision, f.staleness_ms
        );
    }
}

/// `weft repl`; returns the exit code.
pub async fn repl(cmd: ReplCmd, conn: Conn) -> Result<i32> {
    let c = conn.client()?;
    match cmd {
        ReplCmd::Status => {
            let s: Status = serde_json::from_value(c.get("/v1/repl/status").await?)?;
            match conn.json {
                true => println!("{}", serde_json::to_string(&s)?),
                false => print_status(&s),
            }
            Ok(0)
        }
        ReplCmd::Check { revision } => {
            let body = match revision {
                Some(r) => json!({ "revision": r }),
                None => json!({}),
            };
            let v: Checked = c.call("/v1/repl/check", &body).await?;
            if conn.json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                for r in &v.results {
                    let err = r
                        .error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default();
                    println!(
                        "{:<16} revision {:<10} {}{err}",
                        r.replica, r.revision, r.outcome
                    );
                }
                if v.results.is_empty() {
                    println!("no replica connected");
                }
            }
            Ok(if v.ok { 0 } else { 1 })
        }
    }
}

/// `weft promote`: makes the replica at the endpoint the primary.
pub async fn promote(force: bool, conn: Conn) -> Result<()> {
    let c = conn.client()?;
    let p: Promoted = c
        .call("/v1/repl/promote", &json!({ "force": force }))
        .await?;
    if conn.json {
        println!("{}", serde_json::to_string(&p)?);
        return Ok(());
    }
    let forced = match p.forced {
        true => format!(
            "; FORCED: revisions after {} acknowledged by the old primary are lost",
            p.revision
        ),
        false => String::new(),
    };
    println!(
        "promoted to primary at revision {}, epoch {} (was following {}){forced}",
        p.revision, p.epoch, p.previous_primary
    );
    Ok(())
}
