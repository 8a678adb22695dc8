//! `weft saga`: submit sagas, look at them, and act on parked ones through the node's API.

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use serde::Deserialize;
use weft_saga::{SagaView, Status};

use crate::client::Client;
use crate::Conn;

/// `/v1/saga/submit`'s answer.
#[derive(Deserialize)]
struct Submitted {
    id: String,
}

/// `/v1/saga/list`'s answer: a summary per saga.
#[derive(Deserialize)]
struct SagaList {
    sagas: Vec<SagaSummary>,
}

#[derive(Deserialize)]
struct SagaSummary {
    id: String,
    name: String,
    status: Status,
    #[serde(default)]
    reason: Option<String>,
}

/// `weft saga` subcommands.
#[derive(Subcommand)]
pub enum SagaCmd {
    /// Submit a saga definition (JSON) from FILE, or from stdin with "-".
    Submit {
        /// The definition file, or "-".
        file: String,
        /// The saga's input: JSON, or @FILE.
        #[arg(long)]
        input: Option<String>,
        /// The saga id (default: generated); submitting again with the same id is idempotent.
        #[arg(long)]
        id: Option<String>,
        /// Wait until the saga is at rest and print its outcome; exit 0 only if committed.
        #[arg(long)]
        wait: bool,
    },
    /// A saga's state, steps and timeline.
    Status {
        /// The saga id.
        id: String,
    },
    /// Sagas, newest state first.
    List {
        /// Only this state: running, compensating, committed, compensated, parked, aborted.
        #[arg(long)]
        state: Option<String>,
        /// At most this many per state (0: all).
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Resume a parked saga (its failing call gets a fresh set of retries).
    Resume {
        /// The saga id.
        id: String,
    },
    /// Mark the parked step of a parked saga as done (compensated by hand), then run on.
    Skip {
        /// The saga id.
        id: String,
        /// The parked step.
        step: String,
    },
    /// Abort: a running saga compensates now; a parked one is given up.
    Abort {
        /// The saga id.
        id: String,
    },
    /// Print the saga's changes until it is at rest.
    Watch {
        /// The saga id.
        id: String,
    },
}

fn read_json(src: &str, what: &str) -> Result<Value> {
    let text = if src == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else if let Some(f) = src.strip_prefix('@') {
        std::fs::read_to_string(f).with_context(|| format!("cannot read {what} file {f}"))?
    } else {
        src.to_string()
    };
    serde_json::from_str(&text).with_context(|| format!("{what} is not valid JSON"))
}

fn ms(v: Option<u64>) -> String {
    v.map(|n| format!("{n}ms")).unwrap_or_default()
}

/// Prints a saga: header, steps, timeline.
fn print_saga(v: &SagaView) {
    let r = &v.record;
    println!("saga {} ({}): {}", r.id, r.name, r.status.as_str());
    if let Some(reason) = &r.reason {
        println!("  reason: {reason}");
    }
    if let Some(p) = &r.parked {
        println!(
            "  parked at {} ({}) after {} attempts: {}",
            p.step,
            p.phase.as_str(),
            p.attempts,
            p.error
        );
    }
    println!("  steps:");
    // In definition order.
    for step in &v.definition.steps {
        let Some(s) = r.steps.get(&step.name) else {
            continue;
        };
        let err = s
            .last_error
            .as_ref()
            .map(|e| format!("  last error: {e}"))
            .unwrap_or_default();
        let unknown = if s.unknown { " (outcome unknown)" } else { "" };
        println!(
            "    {:<20} {:<12} attempts {}{unknown}{err}",
            step.name,
            s.status.as_str(),
            s.attempts
        );
    }
    println!("  timeline:");
    for e in &v.timeline {
        let at = e.at_ms.saturating_sub(r.created_ms);
        let step = match (&e.step, e.phase) {
            (Some(s), Some(p)) => format!(" {s}/{}", p.as_str()),
            _ => String::new(),
        };
        let attempt = e.attempt.map(|a| format!(" #{a}")).unwrap_or_default();
        let took = ms(e.duration_ms);
        let detail = e.detail.as_deref().unwrap_or("");
        println!("    +{at:>6}ms {}{step}{attempt} {took} {detail}", e.kind);
    }
}

/// The status of a saga the node sent, if it has one.
fn status_of(v: &Value) -> Option<Status> {
    v.get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
}

/// Follows `/v1/saga/watch` until the saga is at rest; returns its last state.
async fn follow(c: &Client, id: &str, print: impl Fn(&Value)) -> Result<Value> {
    let mut last = Value::Null;
    c.sse(
        &format!("/v1/saga/watch?id={}", crate::urlencode(id)),
        |ev, data| {
            if ev == "saga" {
                print(data);
                last = data.clone();
                return matches!(
                    status_of(data),
                    Some(Status::Running | Status::Compensating)
                );
            }
            true
        },
    )
    .await?;
    Ok(last)
}

/// Runs a `weft saga` command; the exit status (0, or 1 for a `--wait` that did not commit).
pub async fn saga(cmd: SagaCmd, conn: Conn) -> Result<i32> {
    let c = conn.client()?;
    let out = |v: &Value| -> Result<()> {
        if conn.json {
            println!("{v}");
        } else {
            print_saga(&crate::client::answer::<SagaView>(v.clone(), "saga")?);
        }
        let _ = std::io::stdout().flush();
        Ok(())
    };
    match cmd {
        SagaCmd::Submit {
            file,
            input,
            id,
            wait,
        } => {
            let src = if file == "-" {
                file.clone()
            } else {
                format!("@{file}")
            };
            let definition = read_json(&src, "the definition")?;
            let input = match input {
                Some(i) => read_json(&i, "--input")?,
                None => Value::Null,
            };
            let mut body = json!({ "definition": definition, "input": input });
            if let Some(id) = id {
                body["id"] = json!(id);
            }
            let r: Submitted = c.call("/v1/saga/submit", &body).await?;
            if !wait {
                if conn.json {
                    println!("{}", json!({ "id": r.id }));
                } else {
                    println!("{}", r.id);
                }
                return Ok(0);
            }
            let last = follow(&c, &r.id, |_| {}).await?;
            out(&last)?;
            Ok(if status_of(&last) == Some(Status::Committed) {
                0
            } else {
                1
            })
        }
        SagaCmd::Status { id } => {
            let v = c
                .get(&format!("/v1/saga/get?id={}", crate::urlencode(&id)))
                .await?;
            out(&v)?;
            Ok(0)
        }
        SagaCmd::List { state, limit } => {
            let mut q = format!("/v1/saga/list?limit={limit}");
            if let Some(s) = &state {
                q.push_str(&format!("&state={}", crate::urlencode(s)));
            }
            let v = c.get(&q).await?;
            if conn.json {
                println!("{v}");
            } else {
                let list: SagaList = crate::client::answer(v, "saga list")?;
                for s in list.sagas {
                    let reason = s.reason.map(|r| format!(" ({r})")).unwrap_or_default();
                    println!("{} {} {}{reason}", s.id, s.status.as_str(), s.name);
                }
            }
            Ok(0)
        }
        SagaCmd::Resume { id } => action(&c, "resume", json!({ "id": id })).await,
        SagaCmd::Skip { id, step } => action(&c, "skip", json!({ "id": id, "step": step })).await,
        SagaCmd::Abort { id } => action(&c, "abort", json!({ "id": id })).await,
        SagaCmd::Watch { id } => {
            let json_out = conn.json;
            let last = follow(&c, &id, |v| {
                if json_out {
                    println!("{v}");
                } else {
                    let last = crate::client::answer::<SagaView>(v.clone(), "saga")
                        .ok()
                        .and_then(|v| v.timeline.last().map(|e| e.kind.clone()))
                        .unwrap_or_default();
                    let status = status_of(v).map(Status::as_str).unwrap_or("");
                    println!("{status} {last}");
                }
                let _ = std::io::stdout().flush();
            })
            .await?;
            if last.is_null() {
                bail!("no update for saga {id}");
            }
            Ok(0)
        }
    }
}

async fn action(c: &Client, what: &str, body: Value) -> Result<i32> {
    c.post(&format!("/v1/saga/{what}"), &body).await?;
    println!("{what}: ok");
    Ok(0)
}
