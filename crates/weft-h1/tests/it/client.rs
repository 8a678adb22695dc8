//! weft's own HTTP/1.1 upstream client (`weft_h1::client`) against raw TCP upstreams that
//! misbehave in the ways real ones do: closing idle keep-alive connections, chunked and
//! close-delimited bodies, truncated bodies, garbage, HEAD.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_h1::client::Pool;

/// Reads one request head (and a content-length body) from `s`; None on EOF.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|v| v.trim().parse::<usize>().unwrap())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut tmp = [0u8; 4096];
                let n = s.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some((head, body));
        }
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// A raw upstream: `answer(request_index_on_connection, head, body, stream)` writes the
/// response and returns whether to keep the connection. Counts accepted connections.
async fn upstream<F, Fut>(answer: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(usize, String, Vec<u8>, TcpStream) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Option<TcpStream>> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut i = 0;
                while let Some((head, body)) = read_request(&mut s, &mut buf).await {
                    match answer(i, head, body, s).await {
                        Some(back) => s = back,
                        None => return,
                    }
                    i += 1;
                }
            });
        }
    });
    (addr, conns)
}

fn host() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(http::header::HOST, "test".parse().unwrap());
    h
}

/// One request through `pool` with the test's `host` header and a 2 s connect timeout.
async fn send_to(
    pool: &Arc<Pool>,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<http::Response<weft_h1::body::Body>, weft_h1::client::Error> {
    pool.send(Duration::from_secs(2), &method, path, &host(), body)
        .await
}

async fn get(pool: &Arc<Pool>, method: Method, body: &str) -> (u16, Bytes) {
    let r = send_to(pool, method, "/p?q=1", Bytes::from(body.to_string()))
        .await
        .expect("request failed");
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.expect("body").to_bytes();
    (status, body)
}

#[tokio::test]
async fn keep_alive_reuses_one_connection_and_sends_the_request_intact() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let (addr, conns) = upstream(move |_, head, body, mut s| {
        let seen = s2.clone();
        async move {
            seen.lock().unwrap().push((head, body.clone()));
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                body.len() + 2
            );
            s.write_all(resp.as_bytes()).await.ok()?;
            s.write_all(b"ok").await.ok()?;
            s.write_all(&body).await.ok()?;
            Some(s)
        }
    })
    .await;
    let pool = Pool::new(&addr, 8, Duration::from_secs(60));
    for i in 0..5 {
        let (st, b) = get(&pool, Method::POST, &format!("body-{i}")).await;
        assert_eq!(st, 200);
        assert_eq!(b, format!("okbody-{i}"));
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1, "one kept-alive connection");
    assert_eq!(pool.idle(), 1);
    let seen = seen.lock().unwrap();
    let (head, body) = &seen[0];
    assert!(head.starts_with("POST /p?q=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("host: test\r\n"), "{head}");
    assert!(head.contains("content-length: 6\r\n"), "{head}");
    assert_eq!(body, b"body-0");
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
    // Answers one request per connection, then closes it without saying so (as upstreams
    // with a short keep-alive timeout do).
    let (addr, conns) = upstream(|_, _, _, mut s| async move {
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi")
            .await
            .ok()?;
        None
    })
    .await;
    let pool = Pool::new(&addr, 8, Duration::from_secs(60));
    for method in [Method::GET, Method::POST, Method::GET, Method::POST] {
        let (st, b) = get(&pool, method, "").await;
        assert_eq!((st, &b[..]), (200, &b"hi"[..]));
        // Let the close reach us.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(conns.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_reused_connection_closed_in_flight_is_retried_for_idempotent_methods_only() {
    // Each connection answers its first request and silently drops the second one.
    let (addr, conns) = upstream(|i, _, _, mut s| async move {
        if i == 0 {
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi")
                .await
                .ok()?;
            Some(s)
        } else {
            None
        }
    })
    .await;
    let pool = Pool::new(&addr, 8, Duration::from_secs(60));
    assert_eq!(get(&pool, Method::GET, "").await.0, 200);
    // GET on the reused connection: dropped, sent again on a new connection.
    assert_eq!(get(&pool, Method::GET, "").await.0, 200);
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    // POST on the reused connection: the upstream may have acted on it: an error, not a resend.
    let r = send_to(&pool, Method::POST, "/", Bytes::from_static(b"x")).await;
    let err = r.expect_err("a POST must not be resent");
    assert!(!err.is_connect());
    assert!(err.to_string().contains("closed"), "{err}");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn chunked_close_delimited_and_large_bodies_stream() {
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let big2 = big.clone();
    let (addr, conns) = upstream(move |_, head, _, mut s| {
        let big = big2.clone();
        async move {
            if head.starts_with("GET /chunked") || head.starts_with("GET /p") {
                s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await
                    .ok()?;
                for part in ["hel", "lo ", "wor", "ld"] {
                    s.write_all(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes())
                        .await
                        .ok()?;
                    s.flush().await.ok()?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                s.write_all(b"0\r\n\r\n").await.ok()?;
                Some(s)
            } else if head.starts_with("GET /big") {
                s.write_all(
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", big.len()).as_bytes(),
                )
                .await
                .ok()?;
                s.write_all(&big).await.ok()?;
                Some(s)
            } else {
                // HTTP/1.0 style: no length, the body ends when the connection does.
                s.write_all(b"HTTP/1.0 200 OK\r\n\r\nuntil close")
                    .await
                    .ok()?;
                None
            }
        }
    })
    .await;
    let pool = Pool::new(&addr, 8, Duration::from_secs(60));
    let send = |path: &'static str| {
        let pool = pool.clone();
        async move {
            let r = send_to(&pool, Method::GET, path, Bytes::new())
                .await
                .unwrap();
            r.into_body().collect().await.unwrap().to_bytes()
        }
    };
    assert_eq!(send("/chunked").await, "hello world");
    assert_eq!(send("/big").await.as_ref(), &big[..]);
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "chunked and length bodies keep the connection"
    );
    assert_eq!(send("/close").await, "until close");
    assert_eq!(pool.idle(), 0, "a close-delimited connection is not pooled");
}

#[tokio::test]
async fn truncated_bodies_garbage_and_head() {
    let (addr, _) = upstream(|_, head, _, mut s| async move {
        if head.starts_with("GET /truncated") {
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
                .await
                .ok()?;
            None
        } else if head.starts_with("GET /garbage") {
            s.write_all(b"SMTP ready\r\n\r\n").await.ok()?;
            None
        } else if head.starts_with("HEAD") {
            // A HEAD answer announces a length but has no body.
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
                .await
                .ok()?;
            Some(s)
        } else {
            s.write_all(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
            )
            .await
            .ok()?;
            Some(s)
        }
    })
    .await;
    let pool = Pool::new(&addr, 8, Duration::from_secs(60));
    let r = send_to(&pool, Method::GET, "/truncated", Bytes::new())
        .await
        .unwrap();
    let e = r.into_body().collect().await.expect_err("truncated body");
    assert!(e.to_string().contains("inside the body"), "{e}");

    let e = send_to(&pool, Method::GET, "/garbage", Bytes::new())
        .await
        .expect_err("garbage");
    assert!(e.to_string().contains("invalid upstream response"), "{e}");

    let (st, b) = get(&pool, Method::HEAD, "").await;
    assert_eq!((st, b.len()), (200, 0));
    // The connection stays usable after HEAD; an interim 100 is skipped.
    let (st, _) = get(&pool, Method::PUT, "x").await;
    assert_eq!(st, 201);

    // Nothing listening: a connect error.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = free.local_addr().unwrap().to_string();
    drop(free);
    let e = send_to(
        &Pool::new(&dead, 8, Duration::from_secs(60)),
        Method::GET,
        "/",
        Bytes::new(),
    )
    .await
    .expect_err("connect");
    assert!(e.is_connect(), "{e}");
}
