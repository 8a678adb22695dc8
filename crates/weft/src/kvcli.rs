//! `weft kv` and `weft status`: keys, ranges, transactions and watches through the node's API.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use weft_server::api::{DeleteResp, KvJson, OpResp, PutResp, RangeResp, TxnResp, WatchJson};

use crate::client::Client;
use crate::leasecli::parse_lease;
use crate::{urlencode, Conn};

#[derive(Args, Default)]
pub(crate) struct Sel {
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
pub(crate) enum KvCmd {
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

fn print_kvs(kvs: &[KvJson]) {
    for kv in kvs {
        println!("{}", kv.key);
        println!("{}", kv.value);
    }
}

pub(crate) async fn kv(cmd: KvCmd, conn: Conn) -> Result<()> {
    let c = conn.client()?;
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
                let r: PutResp = crate::client::answer(r, "put")?;
                if let Some(p) = r.prev_kv {
                    print_kvs(&[p]);
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
            } else {
                let r: RangeResp = crate::client::answer(r, "range")?;
                if count_only {
                    println!("{}", r.count);
                } else if keys_only {
                    for kv in &r.kvs {
                        println!("{}", kv.key);
                    }
                } else {
                    print_kvs(&r.kvs);
                }
            }
        }
        KvCmd::Del { key, sel, prev_kv } => {
            let mut body = json!({"key": key, "prev_kv": prev_kv});
            sel.apply(&mut body);
            let r = c.post("/v1/kv/delete", &body).await?;
            if conn.json {
                println!("{r}");
            } else {
                let r: DeleteResp = crate::client::answer(r, "delete")?;
                println!("{}", r.deleted);
                print_kvs(&r.prev_kvs);
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
                let Ok(batch) = serde_json::from_value::<WatchJson>(data.clone()) else {
                    eprintln!("not a watch message: {data}");
                    return true;
                };
                for e in &batch.events {
                    if json_out {
                        println!("{}", serde_json::to_string(e).unwrap_or_default());
                    } else {
                        println!("{}", e.kind);
                        println!("{}", e.kv.key);
                        if e.kind == "PUT" {
                            println!("{}", e.kv.value);
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
        KvCmd::Txn { file } => txn(&c, file, conn.json).await?,
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

/// `weft status`.
pub(crate) async fn status(conn: Conn) -> Result<()> {
    let c = conn.client()?;
    let s = c.get("/v1/status").await?;
    if conn.json {
        println!("{s}");
    } else {
        let s: NodeStatus = crate::client::answer(s, "status")?;
        println!(
            "revision {}  compact revision {}  size {} bytes  {}",
            s.header.revision, s.compact_revision, s.db_size, s.version
        );
    }
    Ok(())
}

/// `weft kv txn`: etcdctl's txn syntax from FILE or stdin; prints as etcdctl does.
async fn txn(c: &Client, file: Option<PathBuf>, json_out: bool) -> Result<()> {
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
    let body = crate::txn::parse(&input)?;
    let r = c.post("/v1/kv/txn", &body).await?;
    if json_out {
        println!("{r}");
    } else {
        print_txn(&crate::client::answer(r, "txn")?);
    }
    Ok(())
}

/// A txn's result as etcdctl prints it (a nested txn's results follow its own line).
fn print_txn(r: &TxnResp) {
    println!("{}", if r.succeeded { "SUCCESS" } else { "FAILURE" });
    for resp in &r.responses {
        println!();
        match resp {
            OpResp::Put(_) => println!("OK"),
            OpResp::Range(g) => print_kvs(&g.kvs),
            OpResp::Delete(d) => println!("{}", d.deleted),
            OpResp::Txn(t) => print_txn(t),
        }
    }
}

/// `/v1/status`'s answer.
#[derive(serde::Deserialize)]
struct NodeStatus {
    header: weft_server::api::Header,
    compact_revision: i64,
    db_size: i64,
    version: String,
}
