//! One client connection: weft's own HTTP/1.1 server loop for plain requests, with hyper's
//! server taking over the connection for everything else.
//!
//! Why: on a proxy that is CPU-bound on one core, hyper's server (its dispatcher, the service
//! future it boxes and moves, the response encoder) was a visible share of each request (see
//! `docs/benchmarks.md`). The plain case is small: an HTTP/1.1 request in origin form, no
//! `Transfer-Encoding`, no `Upgrade` or `Expect`, and a `Content-Length` body of at most
//! [`MAX_BUFFERED_BODY`] bytes. This loop reads such a request into one buffer, parses the
//! head with `httparse` (header values are slices of that buffer, not copies), hands the
//! request to its handler with its body already in memory, and writes the response head and
//! (small) body with one write.
//!
//! Anything else, including every request `httparse` rejects, the h2c preface, HTTP/1.0,
//! upgrades, chunked or large bodies and oversized heads, goes to hyper's server together with
//! the bytes already read: hyper then serves the rest of that connection with its own
//! semantics (400 for garbage, h2c, WebSocket pass-through, streamed bodies).
//!
//! Timeouts: a request head must arrive completely within the header-read timeout from its
//! first byte (or from accept, for the first request); an idle keep-alive connection is closed
//! after [`KEEP_ALIVE_IDLE`]. On shutdown an idle connection closes at once and a busy one
//! after its response (marked `connection: close`).

use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body::Body as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::body::{Body, RequestBody};

/// What the server loop hands requests to (the gateway, in weft).
pub trait Handler: Send + Sync + 'static {
    /// What the handler keeps about a connection's peer (made once per connection by the
    /// accept loop).
    type Peer: Send + Sync + 'static;

    /// How long a request head may take to arrive, from its first byte (or from accept).
    fn header_read_timeout(&self) -> Duration;

    /// Answers one request.
    fn handle(
        &self,
        req: Request<RequestBody>,
        peer: &Self::Peer,
    ) -> impl std::future::Future<Output = Response<Body>> + Send;

    /// The peer's address, for logs.
    fn peer_addr(peer: &Self::Peer) -> std::net::SocketAddr;
}

/// A connection the loop serves: a TCP stream, or anything else that reads and writes (a TLS
/// stream, wrapped in [`Stream`]).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Reads what has already arrived, without waiting: `WouldBlock` when nothing has (or
    /// when the stream cannot tell). Saves a timer for the usual case, where the next request
    /// is already there.
    fn try_read_now(&mut self, _buf: &mut BytesMut) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Io for TcpStream {
    fn try_read_now(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        self.try_read_buf(buf)
    }
}

/// Any stream as an [`Io`] (read through its `AsyncRead` only): a TLS stream, say.
pub struct Stream<T>(pub T);

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for Stream<T> {}

impl<T: AsyncRead + Unpin> AsyncRead for Stream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stream<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Request bodies up to this size (by `Content-Length`) are read whole before the request is
/// routed; larger ones are streamed by hyper's server.
pub const MAX_BUFFERED_BODY: usize = 64 * 1024;
/// Request heads over this size go to hyper's server (which enforces its own limits).
const MAX_FAST_HEAD: usize = 16 * 1024;
/// Most request headers the fast path parses; more go to hyper's server.
const MAX_FAST_HEADERS: usize = 64;
/// An idle keep-alive connection is closed after this long (nginx's default is 75 s).
pub const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(75);
/// Response bodies up to this size go out in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;
const READ_CHUNK: usize = 8 * 1024;

/// The serve loop's shutdown signal: a token to wake waiting connections and a flag that is
/// cheap to check after each response (the token's own check takes a lock).
#[derive(Clone, Default)]
pub struct Stop {
    token: CancellationToken,
    flag: Arc<AtomicBool>,
}

impl Stop {
    /// Asks every connection to finish.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.token.cancel();
    }

    fn is_stopping(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// The answer to a request refused before routing (both `Content-Length` and
/// `Transfer-Encoding`); the connection closes after it.
const REJECTED: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 54\r\nconnection: close\r\n\r\nrequest has both Content-Length and Transfer-Encoding\n";

/// Where the pieces of a parsed request head are in the read buffer.
#[derive(Default)]
struct Head {
    method: Option<Method>,
    len: usize,
    body_len: usize,
    path: (usize, usize),
    /// Name and value ranges of each header.
    headers: Vec<[usize; 4]>,
}

/// What the parser made of the bytes at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// Need more bytes.
    Partial,
    /// A plain request (its pieces are in the `Head`).
    Plain,
    /// Not for the fast path: hand the connection to hyper.
    Fallback,
    /// Refused: answered 400 and the connection closed.
    Reject,
}

/// Serves one accepted connection until the client closes it, a timeout, an error or
/// `stop` (graceful: a request in progress is answered first).
pub async fn serve_conn<H: Handler, S: Io>(mut io: S, gw: Arc<H>, peer: Arc<H::Peer>, stop: Stop) {
    let header_timeout = gw.header_read_timeout();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut wbuf: Vec<u8> = Vec::with_capacity(1024);
    // One timer per connection, re-armed lazily: it only has to fire no later than the
    // current wait's deadline, so a busy keep-alive connection touches it once per idle
    // period, not once per request.
    let timer = tokio::time::sleep(header_timeout);
    tokio::pin!(timer);
    let stopped = stop.token.clone().cancelled_owned();
    tokio::pin!(stopped);
    // The first request's head is due within the header timeout of accept.
    let mut head_start = Some(Instant::now());
    let mut head = Head::default();
    loop {
        // Read until a complete plain head is buffered.
        loop {
            if !buf.is_empty() {
                match parse(&buf, &mut head) {
                    Parsed::Partial if buf.len() < MAX_FAST_HEAD => {
                        // A head in pieces: its deadline runs from the first piece.
                        head_start.get_or_insert_with(Instant::now);
                    }
                    Parsed::Partial | Parsed::Fallback => {
                        return fallback(io, buf.freeze(), gw, peer, stop).await;
                    }
                    Parsed::Reject => {
                        let _ = io.write_all(REJECTED).await;
                        let _ = io.flush().await;
                        return;
                    }
                    Parsed::Plain => break,
                }
            }
            let wait = match head_start {
                Some(t) => Wait::Until(t + header_timeout),
                None => Wait::Idle,
            };
            match read_more(&mut io, &mut buf, &mut timer, wait, &mut stopped).await {
                Ok(true) => {}
                // EOF, timeout, shutdown or error: close (hyper does not answer them either).
                Ok(false) | Err(_) => return,
            }
        }
        // The body: read the rest if it is not all here yet (no timeout beyond shutdown and
        // the idle limit, as with hyper's streamed bodies).
        while buf.len() < head.len + head.body_len {
            match read_more(&mut io, &mut buf, &mut timer, Wait::Idle, &mut stopped).await {
                Ok(true) => {}
                Ok(false) | Err(_) => return,
            }
        }
        head_start = None;
        let raw = buf.split_to(head.len).freeze();
        let body = buf.split_to(head.body_len).freeze();
        let req = match build_request(&mut head, &raw, body) {
            Some(r) => r,
            // Not valid for `http` (a header value, the URI): hyper answers it.
            None => {
                let mut rest = BytesMut::with_capacity(raw.len() + head.body_len + buf.len());
                rest.extend_from_slice(&raw);
                rest.extend_from_slice(&buf);
                return fallback(io, rest.freeze(), gw, peer, stop).await;
            }
        };
        let close = wants_close(req.headers());
        let head_only = req.method() == Method::HEAD;
        let resp = gw.handle(req, &peer).await;
        let close = close || stop.is_stopping();
        if write_response(&mut io, &mut wbuf, resp, head_only, close)
            .await
            .is_err()
            || close
        {
            return;
        }
    }
}

/// How long a read may wait.
#[derive(Clone, Copy)]
enum Wait {
    /// Until this instant (a request head's deadline).
    Until(Instant),
    /// For [`KEEP_ALIVE_IDLE`] from now.
    Idle,
}

/// Reads more bytes into `buf`: `Ok(false)` on EOF, a passed deadline or shutdown.
async fn read_more<S: Io>(
    io: &mut S,
    buf: &mut BytesMut,
    timer: &mut Pin<&mut tokio::time::Sleep>,
    wait: Wait,
    stopped: &mut Pin<&mut tokio_util::sync::WaitForCancellationFutureOwned>,
) -> io::Result<bool> {
    buf.reserve(READ_CHUNK);
    // Usually the bytes are already there: no clock or timer needed.
    match io.try_read_now(buf) {
        Ok(0) => return Ok(false),
        Ok(_) => return Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    let due = match wait {
        Wait::Until(t) => t,
        Wait::Idle => Instant::now() + KEEP_ALIVE_IDLE,
    };
    if timer.deadline() > due {
        timer.as_mut().reset(due);
    }
    loop {
        tokio::select! {
            biased;
            r = io.read_buf(buf) => return r.map(|n| n > 0),
            _ = timer.as_mut() => {
                // The timer may have been set for an earlier wait.
                if Instant::now() >= due {
                    return Ok(false);
                }
                timer.as_mut().reset(due);
            }
            _ = stopped.as_mut() => return Ok(false),
        }
    }
}

/// Parses the request head at the front of `buf` into `head` (positions, not copies) and
/// decides whether the fast path takes it.
fn parse(buf: &[u8], head: &mut Head) -> Parsed {
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FAST_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Fallback,
    };
    if req.version != Some(1) {
        return Parsed::Fallback;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Fallback;
    };
    if !path.starts_with('/') {
        return Parsed::Fallback;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Fallback;
    };
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let mut body_len: Option<usize> = None;
    // Seen a Content-Length / a Transfer-Encoding / something only hyper serves.
    let (mut cl, mut te, mut other) = (false, false, false);
    head.headers.clear();
    for h in req.headers.iter() {
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"content-length") {
            cl = true;
            let l = std::str::from_utf8(h.value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok());
            match l {
                Some(l) if body_len.is_none_or(|b| b == l) && l <= MAX_BUFFERED_BODY => {
                    body_len = Some(l)
                }
                _ => other = true,
            }
        } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
        } else if n.eq_ignore_ascii_case(b"upgrade") || n.eq_ignore_ascii_case(b"expect") {
            other = true;
        }
        let (ns, nl) = at(n);
        let (vs, vl) = at(h.value);
        head.headers.push([ns, nl, vs, vl]);
    }
    // Both framings: the two sides of a proxy could disagree about where the request ends
    // (request smuggling). Refused, never forwarded (RFC 9112 §6.1 allows the rejection).
    if cl && te {
        return Parsed::Reject;
    }
    if te || other {
        return Parsed::Fallback;
    }
    head.method = Some(method);
    head.len = len;
    head.body_len = body_len.unwrap_or(0);
    head.path = at(path.as_bytes());
    Parsed::Plain
}

/// Builds the `http` request from the head `parse` described, now frozen in `raw`: the URI
/// and the header values share its memory.
fn build_request(head: &mut Head, raw: &Bytes, body: Bytes) -> Option<Request<RequestBody>> {
    let slice = |(start, len): (usize, usize)| raw.slice(start..start + len);
    let uri = Uri::from_maybe_shared(slice(head.path)).ok()?;
    // Room for the forwarded headers the proxy adds without growing the map.
    let mut headers = HeaderMap::with_capacity(head.headers.len() + 6);
    for &[ns, nl, vs, vl] in &head.headers {
        let name = HeaderName::from_bytes(&raw[ns..ns + nl]).ok()?;
        let value = HeaderValue::from_maybe_shared(slice((vs, vl))).ok()?;
        headers.append(name, value);
    }
    let mut r = Request::new(RequestBody::Buffered(body));
    *r.method_mut() = head.method.take()?;
    *r.uri_mut() = uri;
    *r.headers_mut() = headers;
    Some(r)
}

/// What the server loop makes of some bytes at the start of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The head is not complete yet.
    Incomplete,
    /// Hyper's server would take the connection.
    Hyper,
    /// Refused with 400 (both `Content-Length` and `Transfer-Encoding`).
    Refused,
    /// A request the loop serves itself: method, target, body length.
    Request(String, String, usize),
}

/// Decodes `data` as the server loop would. For fuzzing and property tests.
pub fn decode_request(data: &[u8]) -> Decoded {
    let mut head = Head::default();
    match parse(data, &mut head) {
        Parsed::Partial => Decoded::Incomplete,
        Parsed::Fallback => Decoded::Hyper,
        Parsed::Reject => Decoded::Refused,
        Parsed::Plain => {
            let raw = Bytes::copy_from_slice(&data[..head.len]);
            let body_len = head.body_len;
            match build_request(&mut head, &raw, Bytes::new()) {
                Some(r) => Decoded::Request(r.method().to_string(), r.uri().to_string(), body_len),
                None => Decoded::Hyper,
            }
        }
    }
}

/// Whether the client's `Connection` header says `close`.
fn wants_close(h: &HeaderMap) -> bool {
    h.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// Writes `resp`: head and first (small) body piece in one write, then the rest of the body,
/// `Content-Length`-framed when its size is known and chunked otherwise.
async fn write_response<S: Io>(
    io: &mut S,
    wbuf: &mut Vec<u8>,
    resp: Response<Body>,
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let bodiless_status = crate::client::status_has_no_body(status);
    let no_body = head_only || bodiless_status;
    let length = body.size_hint().exact();
    let chunked = !no_body && length.is_none();
    wbuf.clear();
    wbuf.extend_from_slice(b"HTTP/1.1 ");
    wbuf.extend_from_slice(status.as_str().as_bytes());
    wbuf.push(b' ');
    wbuf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    wbuf.extend_from_slice(b"\r\n");
    let mut had_length = false;
    for (k, v) in &parts.headers {
        if k == header::CONTENT_LENGTH {
            // Ours decides unless nothing is sent (HEAD keeps the upstream's).
            if !no_body {
                continue;
            }
            had_length = true;
        }
        if k == header::TRANSFER_ENCODING || k == header::CONNECTION {
            continue;
        }
        wbuf.extend_from_slice(k.as_str().as_bytes());
        wbuf.extend_from_slice(b": ");
        wbuf.extend_from_slice(v.as_bytes());
        wbuf.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        wbuf.extend_from_slice(b"date: ");
        date::with(|d| wbuf.extend_from_slice(d));
        wbuf.extend_from_slice(b"\r\n");
    }
    if close {
        wbuf.extend_from_slice(b"connection: close\r\n");
    }
    match length {
        Some(n) if !(bodiless_status || head_only && had_length) => {
            wbuf.extend_from_slice(b"content-length: ");
            let _ = write!(wbuf, "{n}");
            wbuf.extend_from_slice(b"\r\n");
        }
        _ if chunked => wbuf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    wbuf.extend_from_slice(b"\r\n");
    if no_body {
        io.write_all(wbuf).await?;
        return io.flush().await;
    }
    let mut body = std::pin::pin!(body);
    loop {
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue, // trailers are not forwarded
            },
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            let _ = write!(wbuf, "{:x}\r\n", data.len());
        }
        if data.len() <= INLINE_BODY {
            wbuf.extend_from_slice(&data);
        } else {
            io.write_all(wbuf).await?;
            io.write_all(&data).await?;
            wbuf.clear();
        }
        if chunked {
            wbuf.extend_from_slice(b"\r\n");
        }
        // Write now unless the body's end is already known: the next frame may be a while.
        if !body.is_end_stream() {
            io.write_all(wbuf).await?;
            io.flush().await?;
            wbuf.clear();
        }
    }
    if chunked {
        wbuf.extend_from_slice(b"0\r\n\r\n");
    }
    if !wbuf.is_empty() {
        io.write_all(wbuf).await?;
    }
    io.flush().await
}

/// Hands the connection to hyper's server (HTTP/1.1 with upgrades, or h2c), replaying the
/// bytes already read.
async fn fallback<H: Handler, S: Io>(
    io: S,
    read: Bytes,
    gw: Arc<H>,
    peer: Arc<H::Peer>,
    stop: Stop,
) {
    let header_timeout = gw.header_read_timeout();
    let remote = H::peer_addr(&peer);
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (gw, peer) = (gw.clone(), peer.clone());
        // Boxed once here: the request future is a few KiB and hyper moves it.
        let fut = Box::pin(async move { gw.handle(req.map(RequestBody::Incoming), &peer).await });
        async move { Ok::<_, std::convert::Infallible>(fut.await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(Rewind::new(read, io)), svc);
    tokio::pin!(conn);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        tracing::debug!(%remote, "connection ended: {e}");
    }
}

/// A stream that first yields bytes already read from it.
struct Rewind<S> {
    pre: Bytes,
    io: S,
}

impl<S> Rewind<S> {
    fn new(pre: Bytes, io: S) -> Rewind<S> {
        Rewind { pre, io }
    }
}

impl<S: Io> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let piece = self.pre.split_to(n);
            buf.put_slice(&piece);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: Io> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The `Date` header, rendered once per second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((0, Vec::new())) };
    }

    /// Calls `f` with the current date in IMF-fixdate form.
    pub(super) fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs || c.1.is_empty() {
                c.0 = secs;
                c.1 = httpdate::fmt_http_date(now).into_bytes();
            }
            f(&c.1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(raw: &[u8]) -> Option<(usize, usize)> {
        let mut h = Head::default();
        (parse(raw, &mut h) == Parsed::Plain).then_some((h.len, h.body_len))
    }

    fn kind(raw: &[u8]) -> Parsed {
        parse(raw, &mut Head::default())
    }

    #[test]
    fn plain_requests_take_the_fast_path() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(plain(raw), Some((raw.len(), 0)));
        let raw = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(plain(raw), Some((raw.len() - 5, 5)));
        assert_eq!(kind(b"GET /a HTTP/1.1\r\nHost:"), Parsed::Partial);
    }

    #[test]
    fn unusual_requests_go_to_hyper() {
        for raw in [
            &b"GET /a HTTP/1.0\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            b"POST /a HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
            b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST /a HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert_eq!(
                kind(raw),
                Parsed::Fallback,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_FAST_HEADERS + 1 {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(kind(&many), Parsed::Fallback);
    }

    #[test]
    fn requests_are_built_without_copying_the_head() {
        let raw = Bytes::from_static(b"PUT /p?q=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-A: 2\r\n\r\n");
        let mut head = Head::default();
        assert_eq!(parse(&raw, &mut head), Parsed::Plain);
        let r = build_request(&mut head, &raw, Bytes::new()).unwrap();
        assert_eq!(r.method(), Method::PUT);
        assert_eq!(r.uri().path(), "/p");
        assert_eq!(r.uri().query(), Some("q=1"));
        assert_eq!(r.headers()["host"], "h");
        let xa: Vec<_> = r.headers().get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        // The value points into the head, not at a copy.
        let v = r.headers()["host"].as_bytes().as_ptr() as usize;
        let base = raw.as_ptr() as usize;
        assert!(v > base && v < base + raw.len());
        assert!(wants_close(
            &[(header::CONNECTION, HeaderValue::from_static("foo, Close"))]
                .into_iter()
                .collect()
        ));
        assert!(!wants_close(
            &[(header::CONNECTION, HeaderValue::from_static("keep-alive"))]
                .into_iter()
                .collect()
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = decode_request(&data);
        }

        #[test]
        fn any_split_of_a_request_parses_the_same(cut in 0usize..60, extra in "[a-z]{0,20}") {
            let raw = format!("POST /p/{extra}?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-Y: {extra}\r\n\r\nabc");
            let whole = decode_request(raw.as_bytes());
            proptest::prop_assert_eq!(&whole, &Decoded::Request("POST".to_string(), format!("/p/{extra}?x=1"), 3));
            let cut = cut.min(raw.len());
            let head_len = raw.len() - 3;
            match decode_request(&raw.as_bytes()[..cut]) {
                Decoded::Incomplete => proptest::prop_assert!(cut < head_len),
                Decoded::Hyper => proptest::prop_assert!(false, "a prefix of a valid request went to hyper"),
                p => {
                    proptest::prop_assert!(cut >= head_len);
                    proptest::prop_assert_eq!(p, whole);
                }
            }
        }
    }

    #[test]
    fn the_date_is_an_imf_fixdate() {
        let mut got = Vec::new();
        date::with(|d| got = d.to_vec());
        let s = String::from_utf8(got).unwrap();
        assert!(httpdate::parse_http_date(&s).is_ok(), "{s}");
        assert!(s.ends_with(" GMT"));
    }
}
