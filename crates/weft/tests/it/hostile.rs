//! Hostile HTTP/2 clients against `weft up --etcd-listen`, and the same attacks against a real
//! etcd for reference: PING and SETTINGS floods, rapid reset (CVE-2023-44487), a CONTINUATION
//! flood, a stream flood, request bodies left unfinished on many streams, 1,000 idle
//! connections and slowloris. Each attack is bounded in
//! count and time. After each, the server must still answer a put within 5 s, and weft's
//! memory must be back near where it was; etcd's outcomes are printed beside weft's, not
//! asserted (its behaviour is the reference, not under test).
#![cfg(feature = "etcd")]

use crate::common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_store_etcd::testing::EtcdServer;

const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const RST_STREAM: u8 = 0x3;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

fn hpack_len(out: &mut Vec<u8>, n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    let mut n = n - 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// A gRPC request's header block (literals, no Huffman, no indexing).
fn grpc_headers(path: &str) -> Vec<u8> {
    let mut out = vec![0x83, 0x86]; // :method POST, :scheme http
    for (k, v) in [
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        out.push(0);
        hpack_len(&mut out, k.len());
        out.extend(k.as_bytes());
        hpack_len(&mut out, v.len());
        out.extend(v.as_bytes());
    }
    out
}

async fn h2(addr: &str) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&out).await?;
    Ok(s)
}

/// Writes `bytes` (as much as the server takes within 5 s), then reads until the server
/// closes or 3 s pass: whether a GOAWAY with ENHANCE_YOUR_CALM (0xb) came back, and whether
/// the server closed the connection.
async fn send_and_watch(mut s: TcpStream, bytes: Vec<u8>) -> (bool, bool) {
    let (mut r, mut w) = s.split();
    let write = async {
        let _ = tokio::time::timeout(Duration::from_secs(5), w.write_all(&bytes)).await;
    };
    let read = async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(3), r.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => break false,
            }
            if got.len() > 64 << 20 {
                break false;
            }
        };
        (calm(&got), closed)
    };
    let ((), out) = tokio::join!(write, read);
    out
}

/// Whether the frames in `got` include a GOAWAY with ENHANCE_YOUR_CALM.
fn calm(got: &[u8]) -> bool {
    let mut at = 0;
    while got.len() >= at + 9 {
        let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
        if got[at + 3] == GOAWAY && got.len() >= at + 17 {
            return u32::from_be_bytes(got[at + 13..at + 17].try_into().unwrap()) == 0xb;
        }
        at += 9 + len;
    }
    false
}

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Whether the server answers a put within 5 s.
async fn alive(url: &str) -> bool {
    let put = async {
        let mut c = etcd_client::Client::connect([url], None).await.ok()?;
        c.put("hostile/alive", "1", None).await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), put).await,
        Ok(Some(_))
    )
}

/// What one attack did to one server.
#[derive(Debug)]
struct Outcome {
    calm: bool,
    closed: bool,
    alive: bool,
    rss_before: f64,
    rss_peak: f64,
    rss_after: f64,
}

/// Runs `attack` against the server at `url` (process `pid`).
async fn measure<F, Fut>(url: &str, pid: u32, attack: F) -> Outcome
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = (bool, bool)>,
{
    let addr = url.trim_start_matches("http://").to_string();
    let rss_before = rss_mib(pid);
    let peak = std::sync::Arc::new(std::sync::Mutex::new(rss_before));
    let p2 = peak.clone();
    let sampler = tokio::spawn(async move {
        loop {
            let r = rss_mib(pid);
            {
                let mut p = p2.lock().unwrap();
                *p = p.max(r);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let (calm, closed) = attack(addr).await;
    let alive = alive(url).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sampler.abort();
    let rss_peak = *peak.lock().unwrap();
    Outcome {
        calm,
        closed,
        alive,
        rss_before,
        rss_peak,
        rss_after: rss_mib(pid),
    }
}

async fn ping_flood(addr: String) -> (bool, bool) {
    let s = h2(&addr).await.unwrap();
    let mut bytes = Vec::new();
    for i in 0..20_000u64 {
        bytes.extend(frame(PING, 0, 0, &i.to_be_bytes()));
    }
    send_and_watch(s, bytes).await
}

async fn settings_flood(addr: String) -> (bool, bool) {
    let s = h2(&addr).await.unwrap();
    let mut bytes = Vec::new();
    for _ in 0..20_000 {
        bytes.extend(frame(SETTINGS, 0, 0, &[]));
    }
    send_and_watch(s, bytes).await
}

/// 20,000 streams opened and reset at once (CVE-2023-44487).
async fn rapid_reset(addr: String) -> (bool, bool) {
    let s = h2(&addr).await.unwrap();
    let block = grpc_headers("/etcdserverpb.KV/Range");
    let mut bytes = Vec::new();
    for i in 0..20_000u32 {
        let id = 2 * i + 1;
        bytes.extend(frame(HEADERS, END_HEADERS, id, &block));
        bytes.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    send_and_watch(s, bytes).await
}

/// A header block that never ends: 2,000 CONTINUATION frames of 16 KiB (32 MiB).
async fn continuation_flood(addr: String) -> (bool, bool) {
    let s = h2(&addr).await.unwrap();
    let mut bytes = frame(HEADERS, 0, 1, &grpc_headers("/etcdserverpb.KV/Range"));
    let junk = {
        let mut b = Vec::new();
        while b.len() < 16_000 {
            b.push(0);
            hpack_len(&mut b, 8);
            b.extend(b"x-filler");
            hpack_len(&mut b, 100);
            b.extend([b'a'; 100]);
        }
        b
    };
    for _ in 0..2_000 {
        bytes.extend(frame(CONTINUATION, 0, 1, &junk));
    }
    send_and_watch(s, bytes).await
}

/// 3,000 streams left open (no END_STREAM) on one connection.
async fn stream_flood(addr: String) -> (bool, bool) {
    let s = h2(&addr).await.unwrap();
    let block = grpc_headers("/etcdserverpb.KV/Put");
    let mut bytes = Vec::new();
    for i in 0..3_000u32 {
        bytes.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
    }
    send_and_watch(s, bytes).await
}

/// 4 connections, each opening up to 1,000 Put streams that announce a 4 MiB message and send
/// 1 MiB of it (the stream's window), never ending them: unbounded, a few connections would
/// hold GBs of request bodies. Writes for 4 s.
async fn buffered_bodies(addr: String) -> (bool, bool) {
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(s) = h2(&addr).await else {
                return (false, true);
            };
            let (mut r, mut w) = s.into_split();
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => return (calm(&got), true),
                        Ok(n) if got.len() < 1 << 20 => got.extend_from_slice(&buf[..n]),
                        Ok(_) => {}
                    }
                }
            });
            let block = grpc_headers("/etcdserverpb.KV/Put");
            let start = Instant::now();
            let chunk = vec![7u8; 16 << 10];
            'streams: for i in 0..1_000u32 {
                let id = 2 * i + 1;
                let mut out = frame(HEADERS, END_HEADERS, id, &block);
                let mut first = vec![0u8];
                first.extend((4u32 << 20).to_be_bytes());
                first.extend(&chunk[..chunk.len() - 5]);
                out.extend(frame(0x0, 0, id, &first));
                for _ in 1..64 {
                    out.extend(frame(0x0, 0, id, &chunk));
                }
                let left = Duration::from_secs(4).saturating_sub(start.elapsed());
                match tokio::time::timeout(left, w.write_all(&out)).await {
                    Ok(Ok(())) => {}
                    _ => break 'streams,
                }
            }
            drop(w);
            tokio::time::timeout(Duration::from_secs(3), reader)
                .await
                .map_or((false, false), |r| r.unwrap_or((false, false)))
        }));
    }
    let mut closed = false;
    for t in tasks {
        closed |= t.await.unwrap().1;
    }
    (false, closed)
}

/// 1,000 connections that send the preface and then nothing, held while the server is asked
/// for a put.
async fn idle_connections(addr: String) -> (bool, bool) {
    let mut held = Vec::new();
    for _ in 0..1_000 {
        match h2(&addr).await {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    let all = held.len() == 1_000;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(held);
    (false, all)
}

/// 200 connections each sending its preface one byte every 50 ms for 2 s.
async fn slowloris(addr: String) -> (bool, bool) {
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(&addr).await else {
                return;
            };
            let start = Instant::now();
            for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".iter().cycle() {
                if start.elapsed() > Duration::from_secs(2) || s.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (false, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http2_clients_against_weft_and_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (node, weft_url) = common::weft_etcd_with(&["--data-dir".as_ref(), dir.path().as_os_str()]);
    let etcd = EtcdServer::start_or_skip().await;
    let mut servers = vec![("weft", weft_url, node.child.id())];
    if let Some(e) = &etcd {
        servers.push(("etcd", e.endpoint.clone(), e.pid()));
    }
    for (_, url, _) in &servers {
        assert!(alive(url).await, "{url} answers before any attack");
    }
    macro_rules! attacks {
        ($($name:ident),*) => {{
            let mut rows = Vec::new();
            $(
                for (who, url, pid) in &servers {
                    let o = measure(url, *pid, $name).await;
                    eprintln!(
                        "{:<20} {who}: alive {}, ENHANCE_YOUR_CALM {}, closed {}, RSS {:.0} -> peak {:.0} -> {:.0} MiB",
                        stringify!($name), o.alive, o.calm, o.closed, o.rss_before, o.rss_peak, o.rss_after
                    );
                    rows.push((stringify!($name), *who, o));
                }
            )*
            rows
        }};
    }
    let rows = attacks!(
        ping_flood,
        settings_flood,
        rapid_reset,
        continuation_flood,
        stream_flood,
        buffered_bodies,
        idle_connections,
        slowloris
    );
    for (attack, who, o) in &rows {
        if *who != "weft" {
            continue;
        }
        assert!(o.alive, "weft stopped answering after {attack}: {o:?}");
        assert!(
            o.rss_peak - o.rss_before < 256.0 && o.rss_after - o.rss_before < 128.0,
            "weft's memory after {attack}: {o:?}"
        );
        if matches!(*attack, "ping_flood" | "settings_flood") {
            assert!(
                o.calm && o.closed,
                "weft ends a {attack} with ENHANCE_YOUR_CALM: {o:?}"
            );
        }
        if *attack == "continuation_flood" {
            assert!(o.closed, "weft ends a never-ending header block: {o:?}");
        }
        if *attack == "idle_connections" {
            assert!(o.closed, "weft accepts 1,000 idle connections: {o:?}");
        }
    }
}
