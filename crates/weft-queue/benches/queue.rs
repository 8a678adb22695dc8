//! weft's queue beside NATS JetStream, same machine, same run (scripts/bench-queue.sh).
//!
//! Starts `nats-server -js` (file storage, default settings: it acknowledges a publish before
//! any fsync) and `weft up` (the release binary at `WEFT_BIN`; acknowledges after the fsync that
//! covers the message), then measures with 1 KiB messages:
//! - `fsync`: this disk's single durable writes (1 KiB `pwrite` + `fdatasync`), and
//!   `loopback round trip`: a 1 KiB tokio echo on one connection; their sum is the floor of
//!   one-producer publish latency over the network when every ack waits for the disk;
//! - `publish P`: P producers, each waiting for the ack of its message before sending the next
//!   (JetStream: one async-nats connection; weft: one HTTP/1.1 connection carrying a binary
//!   publish stream, acks streamed back as NDJSON, `/v1/queue/publish/stream`), and the
//!   embedded queue called in this process (no HTTP) for what the API adds;
//! - `consume`: a group drains the 64-producer topic in batches of 256 (weft: binary pull
//!   frames, `weft_queue::wire`), acking each batch without waiting for the answer;
//! - `end-to-end`: one producer, one consumer: publish → delivered, p50/p99.
//!
//! Env: `QUEUE_BENCH_SECS` (3), `QUEUE_BENCH_PRODUCERS` ("1,64"), `WEFT_BIN`
//! (target/release/weft), `QUEUE_BENCH_DIR` (a temp dir on this file system).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn row(name: &str, system: &str, n: usize, secs: f64, lat: &mut [u64]) {
    println!(
        "| {name} | {system} | {:.0} | {} | {} |",
        n as f64 / secs,
        pct(lat, 0.5),
        pct(lat, 0.99)
    );
}

/// Single durable 1 KiB writes on this file system: (p50 µs, writes/s).
fn fsync_probe(dir: &std::path::Path, secs: f64) -> (u64, f64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(dir.join("fsync-probe")).unwrap();
    let buf = vec![7u8; 1024];
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut off = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        f.write_all_at(&buf, off).unwrap();
        f.sync_data().unwrap();
        lat.push(t.elapsed().as_micros() as u64);
        off = (off + 1024) % (1 << 20);
    }
    let n = lat.len();
    (pct(&mut lat, 0.5), n as f64 / start.elapsed().as_secs_f64())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_nats(dir: &std::path::Path) -> (Proc, String) {
    let port = free_port();
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server (apt-get install nats-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), format!("nats://127.0.0.1:{port}"))
}

fn start_weft(dir: &std::path::Path) -> (Proc, String) {
    let bin = std::env::var("WEFT_BIN").unwrap_or_else(|_| "target/release/weft".into());
    let mut child = Command::new(&bin)
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--sagas",
            "false",
            "--data-dir",
        ])
        .arg(dir)
        .args(
            std::env::var("QUEUE_BENCH_WEFT_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {bin} (build it: cargo build --release -p weft): {e}")
        });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ep = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("weft address")
        .to_string();
    (Proc(child), ep)
}

fn payload(at: Instant, base: Instant) -> Bytes {
    let mut v = vec![b'x'; 1024];
    let nanos = at.duration_since(base).as_nanos() as u64;
    v[..8].copy_from_slice(&nanos.to_le_bytes());
    Bytes::from(v)
}

type PublishFn = Arc<dyn Fn(Bytes) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// `producers` tasks, each publishing 1 KiB messages one at a time (waiting for each ack) for
/// `secs`; returns the count and each publish's latency (µs).
async fn drive(producers: usize, secs: f64, publish: PublishFn) -> (usize, Vec<u64>) {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let publish = publish.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let base = Instant::now();
            while Instant::now() < stop {
                let t = Instant::now();
                publish(payload(t, base)).await;
                lat.push(t.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all.len(), all)
}

async fn nats_publish(
    js: &jetstream::Context,
    subject: &str,
    producers: usize,
    secs: f64,
) -> (usize, Vec<u64>) {
    let (js, subject) = (js.clone(), subject.to_string());
    let publish: PublishFn = Arc::new(move |b| {
        let (js, subject) = (js.clone(), subject.clone());
        Box::pin(async move {
            js.publish(subject, b).await.unwrap().await.unwrap();
        })
    });
    drive(producers, secs, publish).await
}

type AckQueue = Arc<Mutex<VecDeque<oneshot::Sender<()>>>>;

/// One HTTP connection carrying a binary publish stream (acks come back as NDJSON lines, in
/// order). A producer queues its ack's sender and its frame under one lock, so the body reads
/// straight from the producers (no task between them and the connection).
#[derive(Clone)]
struct WeftStream {
    acks: AckQueue,
    body: mpsc::UnboundedSender<Result<Bytes, std::io::Error>>,
}

impl WeftStream {
    async fn publish(&self, frame: Bytes) {
        let (done, wait) = oneshot::channel();
        {
            let mut q = self.acks.lock().unwrap();
            q.push_back(done);
            self.body.send(Ok(frame)).unwrap();
        }
        wait.await.unwrap();
    }
}

async fn weft_stream(ep: &str, topic: &str) -> WeftStream {
    let (body_tx, mut body_rx) = mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
    let acks: AckQueue = Default::default();
    let http = reqwest::Client::new();
    let body =
        reqwest::Body::wrap_stream(futures::stream::poll_fn(move |cx| body_rx.poll_recv(cx)));
    let url = format!("{ep}/v1/queue/publish/stream?name={topic}");
    let a2 = acks.clone();
    tokio::spawn(async move {
        let r = http
            .post(url)
            .header("content-type", weft_queue::wire::BINARY)
            .body(body)
            .send()
            .await
            .unwrap();
        let mut s = r.bytes_stream();
        while let Some(chunk) = s.next().await {
            let chunk = chunk.unwrap();
            assert!(
                !chunk.windows(8).any(|w| w == b"\"error\""),
                "{}",
                String::from_utf8_lossy(&chunk)
            );
            let n = chunk.iter().filter(|b| **b == b'\n').count();
            let mut q = a2.lock().unwrap();
            for _ in 0..n {
                if let Some(done) = q.pop_front() {
                    let _ = done.send(());
                }
            }
        }
    });
    WeftStream {
        acks,
        body: body_tx,
    }
}

/// A binary publish frame without a key.
fn frame(value: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(8 + value.len());
    weft_queue::wire::publish_frame(None, value, &mut v);
    Bytes::from(v)
}

async fn weft_publish(ep: &str, topic: &str, producers: usize, secs: f64) -> (usize, Vec<u64>) {
    let stream = weft_stream(ep, topic).await;
    let publish: PublishFn = Arc::new(move |b| {
        let stream = stream.clone();
        Box::pin(async move { stream.publish(frame(&b)).await })
    });
    drive(producers, secs, publish).await
}

async fn nats_consume(js: &jetstream::Context, stream: &str, secs: f64) -> usize {
    let s = js.get_stream(stream).await.unwrap();
    let c: jetstream::consumer::PullConsumer = s
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("drain".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let mut n = 0;
    while Instant::now() < stop {
        let mut b = c.fetch().max_messages(256).messages().await.unwrap();
        let mut got = 0;
        while let Some(m) = b.next().await {
            m.unwrap().ack().await.unwrap();
            got += 1;
        }
        if got == 0 {
            break;
        }
        n += got;
    }
    n
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    http.post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn weft_consume(ep: &str, topic: &str, secs: f64) -> usize {
    let http = reqwest::Client::new();
    post(
        &http,
        format!("{ep}/v1/queue/group/create"),
        json!({"topic": topic, "group": "drain"}),
    )
    .await;
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let mut n = 0;
    let mut acks = Vec::new();
    while Instant::now() < stop {
        let msgs = weft_pull(&http, ep, topic, "drain", 256, 0).await;
        if msgs.is_empty() {
            break;
        }
        let receipts: Vec<String> = msgs.into_iter().map(|d| d.receipt).collect();
        n += receipts.len();
        // As JetStream's `ack()`: sent, not waited for (weft's is durable when answered).
        let (h, url) = (http.clone(), format!("{ep}/v1/queue/ack"));
        let body = json!({"topic": topic, "group": "drain", "receipts": receipts});
        acks.push(tokio::spawn(async move { post(&h, url, body).await }));
    }
    for a in acks {
        let v = a.await.unwrap();
        assert_eq!(v["errors"], json!([]), "{v}");
    }
    n
}

/// A pull in binary frames (`weft_queue::wire`).
async fn weft_pull(
    http: &reqwest::Client,
    ep: &str,
    topic: &str,
    group: &str,
    max: u32,
    wait_ms: u64,
) -> Vec<weft_queue::Delivery> {
    let r = http
        .post(format!("{ep}/v1/queue/pull"))
        .header("accept", weft_queue::wire::BINARY)
        .json(&json!({"topic": topic, "group": group, "max": max, "wait_ms": wait_ms}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    weft_queue::wire::decode_deliveries(&r.bytes().await.unwrap()).unwrap()
}

fn sent_at(value: &[u8], base: Instant) -> Instant {
    base + Duration::from_nanos(u64::from_le_bytes(value[..8].try_into().unwrap()))
}

async fn nats_e2e(js: &jetstream::Context, secs: f64) -> Vec<u64> {
    js.create_stream(jetstream::stream::Config {
        name: "E2E".into(),
        subjects: vec!["e2e".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let s = js.get_stream("E2E").await.unwrap();
    let c: jetstream::consumer::PullConsumer = s
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("e2e".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let base = Instant::now();
    let stop = base + Duration::from_secs_f64(secs);
    let consumer = tokio::spawn(async move {
        let mut lat = Vec::new();
        let mut msgs = c.messages().await.unwrap();
        while Instant::now() < stop + Duration::from_millis(200) {
            let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), msgs.next()).await
            else {
                break;
            };
            let m = m.unwrap();
            lat.push(sent_at(&m.payload, base).elapsed().as_micros() as u64);
            m.ack().await.unwrap();
        }
        lat
    });
    while Instant::now() < stop {
        js.publish("e2e", payload(Instant::now(), base))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    consumer.await.unwrap()
}

async fn weft_e2e(ep: &str, secs: f64) -> Vec<u64> {
    let http = reqwest::Client::new();
    post(
        &http,
        format!("{ep}/v1/queue/topic/create"),
        json!({"name": "e2e"}),
    )
    .await;
    post(
        &http,
        format!("{ep}/v1/queue/group/create"),
        json!({"topic": "e2e", "group": "g"}),
    )
    .await;
    let base = Instant::now();
    let stop = base + Duration::from_secs_f64(secs);
    let ep2 = ep.to_string();
    let consumer = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut lat = Vec::new();
        while Instant::now() < stop + Duration::from_millis(200) {
            let msgs = weft_pull(&http, &ep2, "e2e", "g", 64, 300).await;
            if msgs.is_empty() && Instant::now() > stop {
                break;
            }
            let now = Instant::now();
            for m in &msgs {
                lat.push(
                    now.duration_since(sent_at(&m.message.value, base))
                        .as_micros() as u64,
                );
            }
            let receipts: Vec<String> = msgs.into_iter().map(|d| d.receipt).collect();
            if !receipts.is_empty() {
                let (h, url) = (http.clone(), format!("{ep2}/v1/queue/ack"));
                let body = json!({"topic": "e2e", "group": "g", "receipts": receipts});
                tokio::spawn(async move { post(&h, url, body).await });
            }
        }
        lat
    });
    let stream = weft_stream(ep, "e2e").await;
    while Instant::now() < stop {
        stream.publish(frame(&payload(Instant::now(), base))).await;
    }
    consumer.await.unwrap()
}

fn main() {
    let secs: f64 = env("QUEUE_BENCH_SECS", 3.0);
    let producers: Vec<usize> = std::env::var("QUEUE_BENCH_PRODUCERS")
        .unwrap_or_else(|_| "1,64".into())
        .split(',')
        .map(|p| p.trim().parse().expect("QUEUE_BENCH_PRODUCERS: numbers"))
        .collect();
    let base = std::env::var("QUEUE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let work = tempfile::tempdir_in(&base).unwrap();
    let (nats_dir, weft_dir) = (work.path().join("nats"), work.path().join("weft"));
    std::fs::create_dir_all(&nats_dir).unwrap();
    let (p50, rate) = fsync_probe(work.path(), 1.0);
    println!("| row | system | msgs/s | p50 µs | p99 µs |");
    println!("|---|---|---|---|---|");
    println!("| fsync (1 KiB pwrite + fdatasync) | disk | {rate:.0} | {p50} | |");
    for &p in &producers {
        let (n, mut lat) = in_process(&work.path().join(format!("inproc{p}")), p, secs);
        row(
            &format!("publish, {p} producers, in process (no HTTP)"),
            "weft",
            n,
            secs,
            &mut lat,
        );
    }
    let (_nats, nats_url) = start_nats(&nats_dir);
    let (_weft, ep) = start_weft(&weft_dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (p50, rate) = echo_probe(1.0).await;
        println!("| loopback round trip (tokio echo, 1 KiB) | network | {rate:.0} | {p50} | |");
        let client = async_nats::connect(&nats_url).await.unwrap();
        let js = jetstream::new(client);
        let http = reqwest::Client::new();
        for &p in &producers {
            let name = format!("P{p}");
            js.create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("bench.{p}")],
                ..Default::default()
            })
            .await
            .unwrap();
            post(
                &http,
                format!("{ep}/v1/queue/topic/create"),
                json!({"name": name}),
            )
            .await;
            let (n, mut lat) = nats_publish(&js, &format!("bench.{p}"), p, secs).await;
            row(
                &format!("publish, {p} producers"),
                "JetStream",
                n,
                secs,
                &mut lat,
            );
            let (n, mut lat) = weft_publish(&ep, &name, p, secs).await;
            row(
                &format!("publish, {p} producers"),
                "weft",
                n,
                secs,
                &mut lat,
            );
        }
        let last = format!("P{}", producers.last().copied().unwrap_or(1));
        let t = Instant::now();
        let n = nats_consume(&js, &last, secs).await;
        row(
            "consume (batches of 256, acked)",
            "JetStream",
            n,
            t.elapsed().as_secs_f64(),
            &mut [],
        );
        let t = Instant::now();
        let n = weft_consume(&ep, &last, secs).await;
        row(
            "consume (batches of 256, acked)",
            "weft",
            n,
            t.elapsed().as_secs_f64(),
            &mut [],
        );
        let mut lat = nats_e2e(&js, secs).await;
        row(
            "end-to-end, 1 producer → 1 consumer",
            "JetStream",
            lat.len(),
            secs,
            &mut lat,
        );
        let mut lat = weft_e2e(&ep, secs).await;
        row(
            "end-to-end, 1 producer → 1 consumer",
            "weft",
            lat.len(),
            secs,
            &mut lat,
        );
    });
}

/// The embedded queue in this process, no HTTP: what the node's API adds on top.
pub fn in_process(dir: &std::path::Path, producers: usize, secs: f64) -> (usize, Vec<u64>) {
    use weft_queue::{OutMessage, Queue};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let q = weft_queue::embedded::EmbeddedQueue::open(dir, Default::default())
            .await
            .unwrap();
        q.create_topic("t", Default::default()).await.unwrap();
        let q = Arc::new(q);
        let q2 = q.clone();
        let publish: PublishFn = Arc::new(move |b| {
            let q = q2.clone();
            Box::pin(async move {
                q.publish("t", vec![OutMessage::new(b)]).await.unwrap();
            })
        });
        let out = drive(producers, secs, publish).await;
        q.close().await;
        out
    })
}

/// This machine's loopback round trip: a 1 KiB message to a tokio echo server and back, one
/// at a time, on one connection (p50 µs, round trips/s). A publish over the network cannot
/// answer faster than this plus one fsync.
async fn echo_probe(secs: f64) -> (u64, f64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = vec![0u8; 1024];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = vec![7u8; 1024];
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        s.write_all(&buf).await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        lat.push(t.elapsed().as_micros() as u64);
    }
    let n = lat.len();
    (pct(&mut lat, 0.5), n as f64 / start.elapsed().as_secs_f64())
}
