//! Hostile HTTP/1.1 clients against the gateway's listener: request smuggling attempts
//! (conflicting Content-Length / Transfer-Encoding, bad chunk framing) are refused and never
//! reach the upstream; oversized heads and too many headers are refused; deep pipelining is
//! answered in order; a head sent byte by byte is cut off at the header-read timeout; a slow
//! body holds only its own connection. After each, the gateway serves a normal request.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `raw` on a new connection and reads until the server closes it or 3 s pass.
async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(raw).await;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn gateway() -> (TestUpstream, TestGateway) {
    let up = TestUpstream::start("up").await;
    let toml = format!(
        "[server]\nheader_read_timeout_ms = 500\n{}",
        single_route(up.addr, "path_prefix = \"/\"")
    );
    let gw = TestGateway::start(&toml, None).await;
    (up, gw)
}

#[tokio::test]
async fn smuggling_attempts_are_refused_and_never_forwarded() {
    let (up, gw) = gateway().await;
    let attempts: &[&[u8]] = &[
        // CL.TE and TE.CL: both headers.
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n1\r\nZ\r\n0\r\n\r\n",
        // Two different lengths.
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 30\r\n\r\nAGET /smuggled HTTP/1.1\r\n\r\n",
        // A transfer coding other than chunked last, and an obfuscated one.
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        // A chunk size that is not hex, and one that overflows.
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        // A header line folded onto the next (obsolete line folding).
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
    ];
    for raw in attempts {
        let before = up.hits.load(Ordering::SeqCst);
        let answer = exchange(gw.addr, raw).await;
        let code = status(&answer);
        assert!(
            (400..500).contains(&code),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(raw)
        );
        assert_eq!(
            up.hits.load(Ordering::SeqCst),
            before,
            "{:?} reached the upstream",
            String::from_utf8_lossy(raw)
        );
        assert!(!answer.contains("/smuggled"), "{answer}");
    }
    assert_eq!(get(gw.addr, "/ok").await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn oversized_heads_and_too_many_headers_are_refused() {
    let (up, gw) = gateway().await;
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_value = "v".repeat(1 << 20);
    let long_uri = "a".repeat(1 << 20);
    let heads = [
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {long_value}\r\n\r\n"),
        format!("GET /{long_uri} HTTP/1.1\r\nHost: x\r\n\r\n"),
    ];
    for h in &heads {
        let before = up.hits.load(Ordering::SeqCst);
        let answer = exchange(gw.addr, h.as_bytes()).await;
        let code = status(&answer);
        assert!(
            code == 0 || (400..500).contains(&code),
            "a head of {} bytes got {:?}",
            h.len(),
            &answer[..answer.len().min(200)]
        );
        assert_eq!(up.hits.load(Ordering::SeqCst), before, "forwarded");
    }
    assert_eq!(get(gw.addr, "/ok").await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn deep_pipelining_is_answered_in_order() {
    let (_up, gw) = gateway().await;
    let mut raw = Vec::new();
    for i in 0..1_000 {
        raw.extend_from_slice(format!("GET /p{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    }
    raw.extend_from_slice(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answer = tokio::time::timeout(Duration::from_secs(30), exchange(gw.addr, &raw))
        .await
        .expect("pipelined requests answered");
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 1_001);
    // In order: the upstream echoes each path in its JSON.
    let mut at = 0;
    for i in [0, 1, 500, 999] {
        let p = answer[at..].find(&format!("\"/p{i}\"")).expect("in order");
        at += p;
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_head_sent_byte_by_byte_is_cut_off_and_a_slow_body_holds_only_its_connection() {
    let (up, gw) = gateway().await;
    // Slowloris: one byte every 100 ms; the head is due within 500 ms.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let t = Instant::now();
    let mut closed = false;
    for b in
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
    {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut probe = [0u8; 256];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a head trickling in was not cut off");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "cut off late: {:?}",
        t.elapsed()
    );
    // A body that trickles in holds its own connection, not the gateway.
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab")
        .await
        .unwrap();
    let before = up.hits.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(get(gw.addr, "/ok").await.status, 200);
    }
    assert!(up.hits.load(Ordering::SeqCst) >= before + 20);
    drop(slow);
    gw.shutdown().await;
}

#[tokio::test]
async fn connections_per_client_are_limited_over_all_workers() {
    let up = TestUpstream::start("up").await;
    let cfg =
        weft_gateway::Config::from_toml(&single_route(up.addr, "path_prefix = \"/\""), "t.toml")
            .unwrap();
    let gw = weft_gateway::Gateway::new(cfg, None).unwrap();
    let listeners = weft_gateway::bind_workers("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = weft_gateway::ThreadOptions::default().max_conns_per_client(3);
    let task = tokio::spawn(weft_gateway::serve_threads_with(
        listeners,
        gw,
        async move {
            let _ = rx.await;
        },
        opts,
    ));
    // Three connections, each answered once (so each surely holds its slot).
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut b = [0u8; 12];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"HTTP/1.1 200");
        held.push(s);
    }
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let mut b = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "a fourth connection is closed: {r:?}"
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(addr, "/ok").await.status != 200 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}
