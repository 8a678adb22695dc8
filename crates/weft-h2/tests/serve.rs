//! `weft_h2::serve` through its public interface, with the `h2` crate as the client (and raw
//! frames where a well-behaved client cannot misbehave): the fast path, the service path,
//! errors as gRPC statuses, concurrency on one connection, limits, and shutdown.

use std::convert::Infallible;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::Status;

/// Fast path: `/t.T/Echo` (method 0) echoes, `/t.T/Fail` (method 1) fails; messages up to
/// 1 KiB.
#[derive(Clone)]
struct Echo;

impl weft_h2::FastPath for Echo {
    fn method(&self, path: &[u8], grpc_encoding: Option<&[u8]>) -> Option<u32> {
        if grpc_encoding.is_some_and(|e| e != b"identity") {
            return None;
        }
        match path {
            b"/t.T/Echo" => Some(0),
            b"/t.T/Fail" => Some(1),
            _ => None,
        }
    }
    fn max_message(&self) -> usize {
        1024
    }
}

async fn call(_: Echo, method: u32, frame: Bytes) -> Result<Bytes, Status> {
    match method {
        0 => Ok(frame),
        _ => Err(Status::invalid_argument("told to fail")),
    }
}

/// Starts a server; returns its address and the sender that stops it.
async fn server() -> (std::net::SocketAddr, watch::Sender<bool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = watch::channel(false);
    // The service answers every other path with its path in `grpc-message`.
    let others = tower::service_fn(|req: http::Request<tonic::body::Body>| async move {
        let s = Status::unimplemented(format!("service got {}", req.uri().path()));
        Ok::<_, Infallible>(s.into_http())
    });
    tokio::spawn(async move {
        loop {
            let (io, _) = l.accept().await.unwrap();
            tokio::spawn(weft_h2::serve(io, Echo, call, others, rx.clone()));
        }
    });
    (addr, tx)
}

fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

async fn client(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let io = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    send
}

/// One unary call: the response body and the `grpc-status` / `grpc-message` from the
/// trailers (or from the headers of a trailers-only answer).
async fn unary(
    send: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    body: Bytes,
) -> (Bytes, String, String) {
    let req = http::Request::post(format!("http://t{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut send = send.clone().ready().await.unwrap();
    let (resp, mut stream) = send.send_request(req, false).unwrap();
    stream.send_data(body, true).unwrap();
    let resp = resp.await.unwrap();
    let (parts, mut body) = resp.into_parts();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        data.put_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    let get = |k: &str| {
        trailers
            .get(k)
            .or_else(|| parts.headers.get(k))
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (
        data.freeze(),
        get("grpc-status"),
        unescape(&get("grpc-message")),
    )
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn the_fast_path_answers_and_everything_else_goes_to_the_service() {
    let (addr, _stop) = server().await;
    let mut c = client(addr).await;
    let f = grpc_frame(b"hello");
    let (body, status, _) = unary(&mut c, "/t.T/Echo", f.clone()).await;
    assert_eq!((body, status.as_str()), (f, "0"));
    let (body, status, msg) = unary(&mut c, "/t.T/Fail", grpc_frame(b"x")).await;
    assert!(body.is_empty());
    assert_eq!((status.as_str(), msg.as_str()), ("3", "told to fail"));
    let (_, status, msg) = unary(&mut c, "/t.T/Other", grpc_frame(b"x")).await;
    assert_eq!(status, "12");
    assert!(msg.contains("service got /t.T/Other"), "{msg}");
}

#[tokio::test]
async fn a_message_over_the_limit_is_refused_with_out_of_range() {
    let (addr, _stop) = server().await;
    let mut c = client(addr).await;
    let (_, status, msg) = unary(&mut c, "/t.T/Echo", grpc_frame(&[7u8; 2000])).await;
    assert_eq!(status, "11", "{msg}");
    assert!(msg.contains("over 1024 bytes"), "{msg}");
    // The connection still serves.
    let f = grpc_frame(&[1u8; 1000]);
    assert_eq!(unary(&mut c, "/t.T/Echo", f.clone()).await.0, f);
}

#[tokio::test]
async fn many_calls_on_one_connection_each_get_their_own_answer() {
    let (addr, _stop) = server().await;
    let c = client(addr).await;
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let f = grpc_frame(format!("call {i}").as_bytes());
            let (body, status, _) = unary(&mut c, "/t.T/Echo", f.clone()).await;
            assert_eq!((body, status.as_str()), (f, "0"));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Reads frames until a GOAWAY or the end; returns the GOAWAY's error code.
async fn goaway_code(io: &mut TcpStream) -> Option<u32> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == 0x7 {
                return Some(u32::from_be_bytes(buf[13..17].try_into().unwrap()));
            }
            buf.drain(..9 + len);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, io.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn a_ping_flood_is_closed_with_enhance_your_calm() {
    let (addr, _stop) = server().await;
    let mut io = TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // SETTINGS
    for i in 0..500u64 {
        out.extend_from_slice(&[0, 0, 8, 0x6, 0, 0, 0, 0, 0]); // PING
        out.extend_from_slice(&i.to_be_bytes());
    }
    io.write_all(&out).await.unwrap();
    assert_eq!(goaway_code(&mut io).await, Some(0xb));
}

#[tokio::test]
async fn a_bad_preface_is_a_protocol_error() {
    let (addr, _stop) = server().await;
    let mut io = TcpStream::connect(addr).await.unwrap();
    io.write_all(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(goaway_code(&mut io).await, Some(0x1));
}

#[tokio::test]
async fn stop_sends_goaway_and_ends_the_connection() {
    let (addr, stop) = server().await;
    let mut c = client(addr).await;
    let f = grpc_frame(b"before");
    assert_eq!(unary(&mut c, "/t.T/Echo", f.clone()).await.0, f);
    stop.send(true).unwrap();
    // New streams are refused once the GOAWAY is read; the connection then closes.
    let mut refused = false;
    // Up to 5 s: the GOAWAY comes when the connection's task next runs.
    for _ in 0..250 {
        let req = http::Request::post("http://t/t.T/Echo").body(()).unwrap();
        match c.clone().ready().await {
            Ok(mut s) => {
                if s.send_request(req, true).is_err() {
                    refused = true;
                    break;
                }
            }
            Err(_) => {
                refused = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the connection still took streams after stop");
}
