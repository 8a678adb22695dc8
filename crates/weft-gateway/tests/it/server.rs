//! The client side of the gateway: weft's own HTTP/1.1 server loop (keep-alive, pipelining,
//! bodies arriving in pieces, HEAD, `Connection: close`, response framing, timeouts) and the
//! hand-over of a connection to hyper's server for anything unusual, with raw TCP clients.

use crate::common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Duration};

/// One response read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: bool,
}

impl Raw {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response from `s` (`buf` keeps bytes of the next one). `head_only`: a HEAD
/// request's response, with no body whatever its headers say.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Raw {
    async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) {
        let mut tmp = [0u8; 16384];
        let n = timeout(Duration::from_secs(5), s.read(&mut tmp))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "connection closed early; have {buf:?}");
        buf.extend_from_slice(&tmp[..n]);
    }
    let (status, headers, head_len) = loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut hs);
        if let httparse::Status::Complete(n) = r.parse(buf).unwrap() {
            let headers = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8(h.value.to_vec()).unwrap(),
                    )
                })
                .collect::<Vec<_>>();
            break (r.code.unwrap(), headers, n);
        }
        fill(s, buf).await;
    };
    buf.drain(..head_len);
    let mut raw = Raw {
        status,
        headers,
        body: Vec::new(),
        chunked: false,
    };
    if head_only || status == 204 || status == 304 {
        return raw;
    }
    if let Some(l) = raw.header("content-length") {
        let l: usize = l.parse().unwrap();
        while buf.len() < l {
            fill(s, buf).await;
        }
        raw.body = buf.drain(..l).collect();
    } else if raw.header("transfer-encoding") == Some("chunked") {
        raw.chunked = true;
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(s, buf).await;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
            while buf.len() < line_end + 2 + size + 2 {
                fill(s, buf).await;
            }
            raw.body
                .extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            assert_eq!(&buf[line_end + 2 + size..line_end + 4 + size], b"\r\n");
            buf.drain(..line_end + 4 + size);
            if size == 0 {
                break;
            }
        }
    } else {
        panic!("response without framing: {:?}", raw.headers);
    }
    raw
}

/// A test upstream, a gateway with one route to it, and a raw connection to the gateway.
async fn plain_gateway() -> (TestUpstream, TestGateway, TcpStream) {
    let a = TestUpstream::start("a").await;
    let gw = TestGateway::start(&single_route(a.addr, ""), None).await;
    let s = TcpStream::connect(gw.addr).await.unwrap();
    (a, gw, s)
}

async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        timeout(Duration::from_secs(3), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn keep_alive_pipelining_and_bodies_in_pieces() {
    let (a, gw, mut s) = plain_gateway().await;
    // Three pipelined requests in one write, answered in order on one connection.
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          GET /two?q=1 HTTP/1.1\r\nHost: x\r\nX-Thing: a\r\nX-Thing: b\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let r1 = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r1.status, 200);
    let j = r1.json();
    assert_eq!(j["path"], "/one");
    assert!(r1.header("date").is_some(), "{:?}", r1.headers);
    assert!(r1.header("x-request-id").is_some());
    let r2 = read_response(&mut s, &mut buf, false).await;
    assert_eq!((r2.status, r2.body.as_slice()), (200, &b"hello"[..]));
    let r3 = read_response(&mut s, &mut buf, false).await;
    let j = r3.json();
    assert_eq!(j["path"], "/two?q=1");
    assert_eq!(j["headers"]["x-thing"], "a, b", "{j}");
    // A body that arrives in pieces, after its head.
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhel")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"lo ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"world").await.unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.body, b"hello world");
    // A head in pieces.
    s.write_all(b"GET /pie").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"ces HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"st: x\r\n\r\n").await.unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    let j = r.json();
    assert_eq!(j["path"], "/pieces");
    assert!(buf.is_empty());
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 5);
    gw.shutdown().await;
}

#[tokio::test]
async fn head_and_connection_close() {
    let (_upstream, gw, mut s) = plain_gateway().await;
    s.write_all(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\nGET /y HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let h = read_response(&mut s, &mut buf, true).await;
    let g = read_response(&mut s, &mut buf, false).await;
    assert_eq!(h.status, 200);
    // The HEAD answer has the upstream's length and no body: the next response follows it
    // directly.
    let len: usize = h.header("content-length").unwrap().parse().unwrap();
    assert!(len > 0);
    assert_eq!(g.status, 200);
    let j = g.json();
    assert_eq!(j["path"], "/y");
    // The gateway's own answers are framed too (and dated).
    s.write_all(b"GET /y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let c = read_response(&mut s, &mut buf, false).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.header("connection"), Some("close"));
    assert!(
        closed(&mut s).await,
        "the server closes after Connection: close"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn unusual_requests_are_handed_to_hyper_mid_connection() {
    let (_upstream, gw, mut s) = plain_gateway().await;
    let mut buf = Vec::new();
    // Plain first (weft's loop), then a chunked body (hyper from here on), then plain again.
    s.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200);
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.body, b"hello world");
    s.write_all(b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    let j = r.json();
    assert_eq!(j["path"], "/third");
    // A body over the in-memory limit streams through hyper.
    let big = vec![b'z'; 200_000];
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&big).await.unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.body.len(), big.len());
    // HTTP/1.0 and garbage are hyper's to answer.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    let _ = timeout(Duration::from_secs(3), s.read_to_end(&mut all)).await;
    assert!(all.starts_with(b"HTTP/1.0 200") || all.starts_with(b"HTTP/1.1 200"));
    gw.shutdown().await;
}

/// A raw upstream answering every request with a chunked body of `pieces`.
async fn chunked_upstream(pieces: Vec<Vec<u8>>) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let pieces = pieces.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    buf.clear();
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await;
                    for p in &pieces {
                        let _ = s.write_all(format!("{:x}\r\n", p.len()).as_bytes()).await;
                        let _ = s.write_all(p).await;
                        let _ = s.write_all(b"\r\n").await;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let _ = s.write_all(b"0\r\n\r\n").await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn bodies_of_unknown_length_are_sent_chunked() {
    let pieces = vec![b"hello".to_vec(), vec![b'x'; 40_000], b" end".to_vec()];
    let want: Vec<u8> = pieces.concat();
    let up = chunked_upstream(pieces).await;
    let gw = TestGateway::start(&single_route(up, ""), None).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s, &mut buf, false).await;
        assert!(r.chunked, "{:?}", r.headers);
        assert!(r.header("content-length").is_none());
        assert_eq!(r.body, want);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn slow_heads_time_out_after_a_request_and_idle_connections_close_on_shutdown() {
    let a = TestUpstream::start("a").await;
    let toml = format!(
        "[server]\nheader_read_timeout_ms = 300\n{}",
        single_route(a.addr, "")
    );
    let gw = TestGateway::start(&toml, None).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf, false).await.status, 200);
    // Idle longer than the header timeout: still open (keep-alive idles for longer).
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf, false).await.status, 200);
    // A second head that never completes is cut.
    s.write_all(b"GET /c HTTP/1.1\r\nHo").await.unwrap();
    let t0 = tokio::time::Instant::now();
    assert!(closed(&mut s).await);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // An idle keep-alive connection does not hold up shutdown.
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut idle, &mut buf, false).await.status, 200);
    let t0 = tokio::time::Instant::now();
    timeout(Duration::from_secs(5), gw.shutdown())
        .await
        .expect("shutdown in time");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(closed(&mut idle).await);
}

#[tokio::test]
async fn forwarding_headers_replace_the_clients_on_both_header_paths() {
    let a = TestUpstream::start("a").await;
    // Route `plain` edits no headers (weft's client writes the forwarding headers into the
    // request head); route `edited` overrides one of them (they go through the header map).
    let toml = format!(
        r#"
[[route]]
name = "plain"
path_prefix = "/plain"
upstream = "u"

[[route]]
name = "edited"
path_prefix = "/edited"
upstream = "u"
add_headers = {{ "x-forwarded-proto" = "https" }}

[[upstream]]
name = "u"
endpoints = [{{ address = "{}" }}]
"#,
        a.addr
    );
    let gw = TestGateway::start(&toml, None).await;
    let spoofed = [
        ("x-weft-consumer", "forged"),
        ("x-forwarded-proto", "gopher"),
        ("x-forwarded-host", "evil"),
        ("x-forwarded-for", "10.1.1.1"),
        ("x-request-id", "client-id-1"),
    ];
    for (path, proto) in [("/plain", "http"), ("/edited", "https")] {
        let r = get_h(gw.addr, path, &spoofed).await;
        let h = &r.json()["headers"];
        assert!(h.get("x-weft-consumer").is_none(), "{path}: {h}");
        assert_eq!(h["x-forwarded-proto"], proto, "{path}");
        assert_eq!(h["x-forwarded-for"], "10.1.1.1, 127.0.0.1", "{path}");
        // The client's Host (not its X-Forwarded-Host) is what is forwarded; one value each.
        let host = h["host"].as_str().unwrap();
        assert_eq!(h["x-forwarded-host"], host, "{path}");
        assert_eq!(h["x-request-id"], "client-id-1", "{path}");
        assert_eq!(r.headers["x-request-id"], "client-id-1");
    }
    gw.shutdown().await;
}
