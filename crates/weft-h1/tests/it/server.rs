//! `weft_h1::server::serve_conn` through its public interface, with raw TCP clients: plain
//! requests on the fast loop (keep-alive, buffered bodies), what goes to hyper's server
//! (chunked bodies), what must be refused (a request smuggling attempt), and shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_h1::body::{full, Body, RequestBody};
use weft_h1::server::{serve_conn, Handler, Stop};

/// Answers `<method> <path> <buffered|streamed> <body>` and counts its calls.
#[derive(Default)]
struct Echo {
    calls: AtomicUsize,
}

impl Handler for Echo {
    type Peer = std::net::SocketAddr;
    fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(5)
    }
    async fn handle(&self, req: Request<RequestBody>, _: &Self::Peer) -> Response<Body> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (parts, body) = req.into_parts();
        let (how, bytes) = match body {
            RequestBody::Buffered(b) => ("buffered", b),
            RequestBody::Incoming(i) => ("streamed", i.collect().await.unwrap().to_bytes()),
        };
        let text = format!(
            "{} {} {how} {}",
            parts.method,
            parts.uri.path(),
            String::from_utf8_lossy(&bytes)
        );
        Response::new(full(text))
    }
    fn peer_addr(peer: &Self::Peer) -> std::net::SocketAddr {
        *peer
    }
}

async fn server() -> (std::net::SocketAddr, Arc<Echo>, Stop) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (echo, stop) = (Arc::new(Echo::default()), Stop::default());
    let (e, s) = (echo.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            let (io, peer) = l.accept().await.unwrap();
            tokio::spawn(serve_conn(io, e.clone(), Arc::new(peer), s.clone()));
        }
    });
    (addr, echo, stop)
}

/// Reads until `n` responses' bodies are in (each ends with its content-length), or EOF.
async fn read_responses(io: &mut TcpStream, n: usize) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).to_string();
        if complete(&text) >= n {
            return text;
        }
        match tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return text,
            Ok(Ok(k)) => out.extend_from_slice(&buf[..k]),
        }
    }
}

/// How many complete content-length-framed responses `text` holds.
fn complete(text: &str) -> usize {
    let mut rest = text;
    let mut n = 0;
    while let Some(end) = rest.find("\r\n\r\n") {
        let head = rest[..end].to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if rest.len() < end + 4 + len {
            break;
        }
        rest = &rest[end + 4 + len..];
        n += 1;
    }
    n
}

#[tokio::test]
async fn plain_requests_are_served_on_one_keep_alive_connection() {
    let (addr, echo, _stop) = server().await;
    let mut io = TcpStream::connect(addr).await.unwrap();
    io.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nPOST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let text = read_responses(&mut io, 2).await;
    assert!(text.contains("GET /a buffered "), "{text}");
    assert!(text.contains("POST /b buffered hello"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(echo.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_chunked_body_goes_to_hypers_server_and_still_reaches_the_handler() {
    let (addr, _echo, _stop) = server().await;
    let mut io = TcpStream::connect(addr).await.unwrap();
    io.write_all(b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        .await
        .unwrap();
    let text = read_responses(&mut io, 1).await;
    assert!(text.contains("POST /c streamed abcde"), "{text}");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_not_served() {
    let (addr, echo, _stop) = server().await;
    let mut io = TcpStream::connect(addr).await.unwrap();
    // A smuggling attempt: the two framings disagree about where the request ends.
    io.write_all(b"POST /s HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let text = read_responses(&mut io, 2).await;
    assert!(text.starts_with("HTTP/1.1 400 Bad Request"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(
        text.contains("both Content-Length and Transfer-Encoding"),
        "{text}"
    );
    assert!(!text.contains("/smuggled"), "{text}");
    assert_eq!(
        echo.calls.load(Ordering::SeqCst),
        0,
        "nothing reached the handler"
    );
    assert_eq!(
        weft_h1::decode_request(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 1\r\n\r\n"
        ),
        weft_h1::Decoded::Refused
    );
}

#[tokio::test]
async fn stop_closes_an_idle_connection_at_once() {
    let (addr, _echo, stop) = server().await;
    let mut io = TcpStream::connect(addr).await.unwrap();
    io.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_responses(&mut io, 1).await;
    stop.cancel();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), io.read(&mut buf))
        .await
        .expect("closed within 2 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the idle connection was closed");
}
