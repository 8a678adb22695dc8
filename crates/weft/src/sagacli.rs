//! `weft saga`: submit sagas, look at them, and act on parked ones through the node's API.

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::Client;
use crate::Conn;

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

fn ms(v: &Value) -> String {
    match v.as_u64() {
        Some(n) => format!("{n}ms"),
        None => String::new(),
    }
}

/// Prints a saga: header, steps, timeline.
fn print_saga(v: &Value) {
    println!(
        "saga {} ({}): {}",
        v["id"].as_str().unwrap_or(""),
        v["name"].as_str().unwrap_or(""),
        v["status"].as_str().unwrap_or("")
    );
    if let Some(r) = v["reason"].as_str() {
        println!("  reason: {r}");
    }
    if !v["parked"].is_null() {
        let p = &v["parked"];
        println!(
            "  parked at {} ({}) after {} attempts: {}",
            p["step"].as_str().unwrap_or(""),
            p["phase"].as_str().unwrap_or(""),
            p["attempts"],
            p["error"].as_str().unwrap_or("")
        );
    }
    println!("  steps:");
    // In definition order.
    let names: Vec<&str> = v["definition"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for name in names {
        let s = &v["steps"][name];
        let err = s["last_error"]
            .as_str()
            .map(|e| format!("  last error: {e}"))
            .unwrap_or_default();
        println!(
            "    {name:<20} {:<12} attempts {}{}{}",
            s["status"].as_str().unwrap_or(""),
            s["attempts"].as_u64().unwrap_or(0),
            if s["unknown"] == true {
                " (outcome unknown)"
            } else {
                ""
            },
            err
        );
    }
    println!("  timeline:");
    let start = v["created_ms"].as_u64().unwrap_or(0);
    for e in v["timeline"].as_array().into_iter().flatten() {
        let at = e["at_ms"].as_u64().unwrap_or(start).saturating_sub(start);
        let step = match (e["step"].as_str(), e["phase"].as_str()) {
            (Some(s), Some(p)) => format!(" {s}/{p}"),
            _ => String::new(),
        };
        let attempt = e["attempt"]
            .as_u64()
            .map(|a| format!(" #{a}"))
            .unwrap_or_default();
        let took = ms(&e["duration_ms"]);
        let detail = e["detail"].as_str().unwrap_or("");
        println!(
            "    +{at:>6}ms {}{step}{attempt} {took} {detail}",
            e["kind"].as_str().unwrap_or("")
        );
    }
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
                let st = data["status"].as_str().unwrap_or("");
                return matches!(st, "running" | "compensating");
            }
            true
        },
    )
    .await?;
    Ok(last)
}

/// Runs a `weft saga` command; the exit status (0, or 1 for a `--wait` that did not commit).
pub async fn saga(cmd: SagaCmd, conn: Conn) -> Result<i32> {
    let c = Client::new(&conn.endpoint, conn.token.clone())?;
    let out = |v: &Value| {
        if conn.json {
            println!("{v}");
        } else {
            print_saga(v);
        }
        let _ = std::io::stdout().flush();
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
            let r = c.post("/v1/saga/submit", &body).await?;
            let id = r["id"]
                .as_str()
                .context("the node answered no id")?
                .to_string();
            if !wait {
                if conn.json {
                    println!("{r}");
                } else {
                    println!("{id}");
                }
                return Ok(0);
            }
            let last = follow(&c, &id, |_| {}).await?;
            out(&last);
            Ok(if last["status"] == "committed" { 0 } else { 1 })
        }
        SagaCmd::Status { id } => {
            let v = c
                .get(&format!("/v1/saga/get?id={}", crate::urlencode(&id)))
                .await?;
            out(&v);
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
                for s in v["sagas"].as_array().into_iter().flatten() {
                    println!(
                        "{} {} {}{}",
                        s["id"].as_str().unwrap_or(""),
                        s["status"].as_str().unwrap_or(""),
                        s["name"].as_str().unwrap_or(""),
                        s["reason"]
                            .as_str()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    );
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
                    println!(
                        "{} {}",
                        v["status"].as_str().unwrap_or(""),
                        v["timeline"]
                            .as_array()
                            .and_then(|t| t.last())
                            .map(|e| e["kind"].as_str().unwrap_or("").to_string())
                            .unwrap_or_default()
                    );
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
