//! `weft queue`: topics, groups, publish, consume (optionally running a command per message,
//! acking on exit 0), ack/nack, readers, dead letters and stats, through the node's API.

use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use weft_queue::{Delivery, GroupConfig, Message, TopicConfig};

use crate::client::Client;
use crate::Conn;

/// `weft queue` subcommands.
#[derive(Subcommand)]
pub enum QueueCmd {
    /// Create a topic (again with the same settings: no-op).
    Create(CreateArgs),
    /// Delete a topic with its messages, groups and dead letters.
    Delete {
        /// The topic.
        topic: String,
    },
    /// Create a consumer group.
    Group(GroupArgs),
    /// Publish messages: the VALUEs given, or one per line of stdin.
    Publish(PublishArgs),
    /// Consume as a group member: print each message (or run --exec with it on stdin) and
    /// ack it; with --exec, exit status 0 acks and anything else nacks.
    Consume(ConsumeArgs),
    /// Acknowledge deliveries by receipt.
    Ack {
        /// The topic.
        topic: String,
        /// The group.
        #[arg(long)]
        group: String,
        /// Receipts.
        #[arg(required = true)]
        receipts: Vec<String>,
    },
    /// Give a delivery back (handed out again after --delay-ms), or dead-letter it (--dead).
    Nack {
        /// The topic.
        topic: String,
        /// The group.
        #[arg(long)]
        group: String,
        /// The receipt.
        receipt: String,
        /// Delay before it is handed out again, milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// The error to keep with it.
        #[arg(long)]
        error: Option<String>,
        /// Move it to the dead letters now.
        #[arg(long)]
        dead: bool,
    },
    /// Read a partition from an offset or a time, without a group.
    Read {
        /// The topic.
        topic: String,
        /// The partition.
        #[arg(long, default_value_t = 0)]
        partition: u32,
        /// First offset.
        #[arg(long)]
        from_offset: Option<u64>,
        /// First publish time (Unix milliseconds).
        #[arg(long)]
        from_time_ms: Option<u64>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        max: u32,
    },
    /// Dead letters: list (default), replay or purge.
    Dlq {
        /// The topic.
        topic: String,
        /// list, replay or purge.
        #[arg(default_value = "list")]
        action: String,
        /// replay: only these dead-letter offsets.
        offsets: Vec<u64>,
    },
    /// Topics with depth per partition, and groups with lag, in flight, dead letters and
    /// the oldest unacked age.
    Stats {
        /// Only this topic.
        topic: Option<String>,
    },
}

/// `weft queue create`.
#[derive(Args)]
pub struct CreateArgs {
    /// The topic.
    topic: String,
    /// Partitions.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Drop messages older than this, milliseconds (0: keep).
    #[arg(long, default_value_t = 0)]
    max_age_ms: u64,
    /// Most messages per partition (0: no limit).
    #[arg(long, default_value_t = 0)]
    max_messages: u64,
    /// Most bytes per partition (0: no limit).
    #[arg(long, default_value_t = 0)]
    max_bytes: u64,
    /// When full, drop the oldest messages instead of refusing new ones.
    #[arg(long)]
    drop_old: bool,
}

/// `weft queue group`.
#[derive(Args)]
pub struct GroupArgs {
    /// The topic.
    topic: String,
    /// The group.
    group: String,
    /// Ack wait, milliseconds.
    #[arg(long, default_value_t = 30_000)]
    ack_wait_ms: u64,
    /// Deliveries before a message is dead-lettered (0: unlimited).
    #[arg(long, default_value_t = 5)]
    max_deliveries: u32,
    /// A key's next message waits for the ack of its previous one.
    #[arg(long)]
    ordered_by_key: bool,
    /// Start at the newest message instead of the oldest.
    #[arg(long)]
    latest: bool,
}

/// `weft queue publish`.
#[derive(Args)]
pub struct PublishArgs {
    /// The topic.
    topic: String,
    /// Values (none: one message per line of stdin).
    values: Vec<String>,
    /// The messages' key (picks the partition). `--key` is the client certificate's key.
    #[arg(long = "partition-key", short = 'k')]
    key: Option<String>,
    /// The producer message id (dedup), for a single message.
    #[arg(long)]
    id: Option<String>,
    /// Delay delivery to groups, milliseconds.
    #[arg(long)]
    delay_ms: Option<u64>,
    /// Headers, NAME=VALUE.
    #[arg(long = "header")]
    headers: Vec<String>,
}

/// `weft queue consume`.
#[derive(Args)]
pub struct ConsumeArgs {
    /// The topic.
    topic: String,
    /// The group.
    #[arg(long)]
    group: String,
    /// This consumer's name.
    #[arg(long, default_value = "cli")]
    consumer: String,
    /// Run this shell command per message (value on stdin; WEFT_TOPIC, WEFT_PARTITION,
    /// WEFT_OFFSET, WEFT_DELIVERY, WEFT_KEY, WEFT_MESSAGE_ID in its environment).
    #[arg(long)]
    exec: Option<String>,
    /// Stop after this many messages (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Stop when no message came for this long, milliseconds (0: wait forever).
    #[arg(long, default_value_t = 0)]
    idle_exit_ms: u64,
    /// Messages per pull.
    #[arg(long, default_value_t = 16)]
    batch: u32,
}

/// Runs a `weft queue` command.
pub async fn queue(cmd: QueueCmd, conn: Conn) -> Result<()> {
    let c = conn.client()?;
    match cmd {
        QueueCmd::Create(a) => {
            let cfg = TopicConfig {
                partitions: a.partitions,
                max_age_ms: a.max_age_ms,
                max_messages: a.max_messages,
                max_bytes: a.max_bytes,
                full: if a.drop_old {
                    weft_queue::FullPolicy::DropOld
                } else {
                    weft_queue::FullPolicy::Reject
                },
                ..Default::default()
            };
            let v = c
                .post(
                    "/v1/queue/topic/create",
                    &json!({"name": a.topic, "config": cfg}),
                )
                .await?;
            print_or_json(&conn, &v, |t: weft_queue::TopicInfo| {
                println!("topic {} ({} partitions)", t.name, t.partitions.len())
            })?;
        }
        QueueCmd::Delete { topic } => {
            c.post("/v1/queue/topic/delete", &json!({ "name": topic }))
                .await?;
        }
        QueueCmd::Group(a) => {
            let cfg = GroupConfig {
                start: if a.latest {
                    weft_queue::StartAt::Latest
                } else {
                    weft_queue::StartAt::Earliest
                },
                ack_wait_ms: a.ack_wait_ms,
                max_deliveries: a.max_deliveries,
                ordered_by_key: a.ordered_by_key,
                ..Default::default()
            };
            c.post(
                "/v1/queue/group/create",
                &json!({"topic": a.topic, "group": a.group, "config": cfg}),
            )
            .await?;
        }
        QueueCmd::Publish(a) => publish(&c, &conn, a).await?,
        QueueCmd::Consume(a) => consume(&c, &conn, a).await?,
        QueueCmd::Ack {
            topic,
            group,
            receipts,
        } => {
            let v = c
                .post(
                    "/v1/queue/ack",
                    &json!({"topic": topic, "group": group, "receipts": receipts}),
                )
                .await?;
            let acked: Acked = crate::client::answer(v.clone(), "ack")?;
            if conn.json {
                println!("{v}");
            } else {
                println!("acked {}", acked.acked);
            }
            if !acked.errors.is_empty() {
                for e in &acked.errors {
                    eprintln!("{}: {}", e.receipt, e.error.message);
                }
                bail!("some receipts were not acked");
            }
        }
        QueueCmd::Nack {
            topic,
            group,
            receipt,
            delay_ms,
            error,
            dead,
        } => {
            c.post(
                "/v1/queue/nack",
                &json!({"topic": topic, "group": group, "receipt": receipt,
                        "delay_ms": delay_ms, "error": error, "dead": dead}),
            )
            .await?;
        }
        QueueCmd::Read {
            topic,
            partition,
            from_offset,
            from_time_ms,
            max,
        } => {
            let mut path = format!(
                "/v1/queue/read?topic={}&partition={partition}&max={max}",
                crate::urlencode(&topic)
            );
            if let Some(o) = from_offset {
                path += &format!("&from_offset={o}");
            }
            if let Some(t) = from_time_ms {
                path += &format!("&from_time_ms={t}");
            }
            let v = c.get(&path).await?;
            let msgs: Vec<Message> = field(&v, "messages")?;
            for m in msgs {
                print_message(&conn, &m, None);
            }
        }
        QueueCmd::Dlq {
            topic,
            action,
            offsets,
        } => dlq(&c, &conn, &topic, &action, offsets).await?,
        QueueCmd::Stats { topic } => stats(&c, &conn, topic).await?,
    }
    Ok(())
}

/// The node's answer as it came (`--json`), or read into its type `T` and printed by `human`.
fn print_or_json<T: serde::de::DeserializeOwned>(
    conn: &Conn,
    v: &Value,
    human: impl Fn(T),
) -> Result<()> {
    if conn.json {
        println!("{v}");
    } else {
        human(crate::client::answer(v.clone(), "queue")?);
    }
    Ok(())
}

/// `/v1/queue/ack`'s answer.
#[derive(serde::Deserialize)]
struct Acked {
    acked: u64,
    #[serde(default)]
    errors: Vec<AckError>,
}

#[derive(serde::Deserialize)]
struct AckError {
    receipt: String,
    error: ErrorBody,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    message: String,
}

/// A count the node answers (`replayed`, `purged`).
#[derive(serde::Deserialize)]
struct Count {
    #[serde(alias = "replayed", alias = "purged")]
    n: u64,
}

/// Messages under one field of the node's answer (`messages`, `dead`, `published`, `topics`).
fn field<T: serde::de::DeserializeOwned>(v: &Value, name: &str) -> Result<Vec<T>> {
    let items = v
        .get(name)
        .cloned()
        .with_context(|| format!("the node's answer has no {name:?}"))?;
    crate::client::answer(items, name)
}

fn value_text(m: &Message) -> String {
    match std::str::from_utf8(&m.value) {
        Ok(s) => s.to_string(),
        Err(_) => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(&m.value)
        ),
    }
}

fn print_message(conn: &Conn, m: &Message, d: Option<&Delivery>) {
    if conn.json {
        match d {
            Some(d) => println!("{}", serde_json::to_string(d).unwrap_or_default()),
            None => println!("{}", serde_json::to_string(m).unwrap_or_default()),
        }
        return;
    }
    let extra = d
        .map(|d| format!(" delivery {}", d.delivery))
        .unwrap_or_default();
    println!("{}/{}{extra}: {}", m.partition, m.offset, value_text(m));
}

async fn publish(c: &Client, conn: &Conn, a: PublishArgs) -> Result<()> {
    let mut headers = serde_json::Map::new();
    for h in &a.headers {
        let (k, v) = h
            .split_once('=')
            .with_context(|| format!("bad --header {h:?}: use NAME=VALUE"))?;
        headers.insert(k.to_string(), Value::String(v.to_string()));
    }
    let values: Vec<String> = if a.values.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<std::io::Result<_>>()?
    } else {
        a.values
    };
    if a.id.is_some() && values.len() != 1 {
        bail!("--id names one message; {} were given", values.len());
    }
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for chunk in values.chunks(1000) {
        let msgs: Vec<Value> = chunk
            .iter()
            .map(|v| {
                json!({"value": b64(v), "key": a.key.as_deref().map(b64), "id": a.id,
                       "delay_ms": a.delay_ms, "headers": headers})
            })
            .collect();
        let v = c
            .post(
                "/v1/queue/publish",
                &json!({"topic": a.topic, "messages": msgs}),
            )
            .await?;
        let published: Vec<weft_queue::Published> = field(&v, "published")?;
        for p in published {
            if conn.json {
                println!("{}", serde_json::to_string(&p)?);
            } else {
                let dup = if p.duplicate { " (duplicate)" } else { "" };
                println!("{}/{}{dup}", p.partition, p.offset);
            }
        }
    }
    Ok(())
}

/// Runs `--exec` for one delivery: `Ok(None)` on exit 0, else the error to nack with.
async fn run_exec(cmd: &str, topic: &str, d: &Delivery) -> Result<Option<String>> {
    use tokio::io::AsyncWriteExt;
    let m = &d.message;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("WEFT_TOPIC", topic)
        .env("WEFT_PARTITION", m.partition.to_string())
        .env("WEFT_OFFSET", m.offset.to_string())
        .env("WEFT_DELIVERY", d.delivery.to_string())
        .env(
            "WEFT_KEY",
            m.key
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .to_string(),
        )
        .env("WEFT_MESSAGE_ID", m.id.clone().unwrap_or_default())
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&m.value).await;
    }
    let out = child.wait_with_output().await?;
    if out.status.success() {
        return Ok(None);
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: String = err
        .chars()
        .rev()
        .take(500)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Ok(Some(format!("{}: {}", out.status, tail.trim())))
}

async fn consume(c: &Client, conn: &Conn, a: ConsumeArgs) -> Result<()> {
    let mut done = 0u64;
    let mut idle_since = std::time::Instant::now();
    loop {
        let v = c
            .post(
                "/v1/queue/pull",
                &json!({"topic": a.topic, "group": a.group, "consumer": a.consumer,
                        "max": a.batch, "wait_ms": 5000}),
            )
            .await?;
        let got: Vec<Delivery> = field(&v, "messages")?;
        if got.is_empty() {
            if a.idle_exit_ms > 0 && idle_since.elapsed() >= Duration::from_millis(a.idle_exit_ms) {
                return Ok(());
            }
            continue;
        }
        idle_since = std::time::Instant::now();
        for d in got {
            let failed = match &a.exec {
                Some(cmd) => run_exec(cmd, &a.topic, &d).await?,
                None => {
                    print_message(conn, &d.message, Some(&d));
                    None
                }
            };
            match failed {
                None => {
                    c.post(
                        "/v1/queue/ack",
                        &json!({"topic": a.topic, "group": a.group, "receipts": [d.receipt]}),
                    )
                    .await?;
                }
                Some(err) => {
                    eprintln!(
                        "weft queue consume: {}/{} failed: {err}",
                        d.message.partition, d.message.offset
                    );
                    c.post(
                        "/v1/queue/nack",
                        &json!({"topic": a.topic, "group": a.group, "receipt": d.receipt,
                                "delay_ms": 1000, "error": err}),
                    )
                    .await?;
                }
            }
            let _ = std::io::stdout().flush();
            done += 1;
            if a.count > 0 && done >= a.count {
                return Ok(());
            }
        }
    }
}

async fn dlq(c: &Client, conn: &Conn, topic: &str, action: &str, offsets: Vec<u64>) -> Result<()> {
    match action {
        "list" => {
            let v = c
                .get(&format!(
                    "/v1/queue/dead?topic={}&max=1000",
                    crate::urlencode(topic)
                ))
                .await?;
            let msgs: Vec<Message> = field(&v, "dead")?;
            for m in msgs {
                if conn.json {
                    println!("{}", serde_json::to_string(&m)?);
                    continue;
                }
                let h = |k: &str| m.headers.get(k).cloned().unwrap_or_default();
                println!(
                    "dead {}: from {}/{} group {} after {} deliveries: {}; last error: {}; value: {}",
                    m.offset,
                    h("weft-dead-partition"),
                    h("weft-dead-offset"),
                    h("weft-dead-group"),
                    h("weft-dead-deliveries"),
                    h("weft-dead-reason"),
                    h("weft-dead-error"),
                    value_text(&m)
                );
            }
        }
        "replay" => {
            let offs = (!offsets.is_empty()).then_some(offsets);
            let v = c
                .post(
                    "/v1/queue/dead/replay",
                    &json!({"topic": topic, "offsets": offs}),
                )
                .await?;
            print_or_json(conn, &v, |c: Count| println!("replayed {}", c.n))?;
        }
        "purge" => {
            let v = c
                .post("/v1/queue/dead/purge", &json!({ "topic": topic }))
                .await?;
            print_or_json(conn, &v, |c: Count| println!("purged {}", c.n))?;
        }
        other => bail!("unknown dlq action {other:?}: use list, replay or purge"),
    }
    Ok(())
}

async fn stats(c: &Client, conn: &Conn, topic: Option<String>) -> Result<()> {
    let topics: Vec<weft_queue::TopicInfo> = match topic {
        Some(t) => vec![serde_json::from_value(
            c.get(&format!("/v1/queue/topic?name={}", crate::urlencode(&t)))
                .await?,
        )?],
        None => field(&c.get("/v1/queue/topics").await?, "topics")?,
    };
    if conn.json {
        println!("{}", serde_json::to_string(&topics)?);
        return Ok(());
    }
    for t in topics {
        println!("topic {}: {} messages", t.name, t.depth());
        for p in &t.partitions {
            println!(
                "  partition {}: offsets {}..{} ({} bytes)",
                p.partition, p.start, p.end, p.bytes
            );
        }
        for g in &t.groups {
            println!(
                "  group {}: lag {}, in flight {}, delayed {}, redeliveries {}, dead {}, oldest unacked {} ms",
                g.name, g.lag, g.in_flight, g.delayed, g.redeliveries, g.dead, g.oldest_unacked_ms
            );
        }
    }
    Ok(())
}
