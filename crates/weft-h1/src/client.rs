//! A lean HTTP/1.1 upstream client for the common case: a request whose body is already in
//! memory (empty or buffered), sent over a pooled keep-alive connection that lives in the
//! endpoint's state, with the response read in the caller's task.
//!
//! Why not hyper's client here: hyper-util's pooled client drives every connection in its own
//! task and hands each request and response across channels; on a proxy that is CPU-bound on
//! one core, those task hops, the shared pool map and the per-request URI were a measurable
//! part of the request path (see `docs/benchmarks.md`). This client writes the request head and
//! body with one write, parses the response head with `httparse` (header values are slices of
//! the read buffer, not copies), and streams the rest of the body from the same connection
//! when the client asks for it. A body already complete in the buffer is answered as one chunk
//! and the connection goes back to the pool at once.
//!
//! Everything else (streamed request bodies, upgrades, h2c) goes through hyper's client.
//!
//! Connection reuse is safe against the usual keep-alive race: an idle connection whose peer
//! has closed it (readable with EOF) is dropped at checkout without a syscall unless the
//! reactor saw it become readable, and a request on a *reused* connection that fails before any
//! response byte arrived is sent again once on a fresh connection if its method is idempotent
//! (or if the write itself failed, in which case the upstream never saw it).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use bytes::Bytes;
//! use weft_h1::client::Pool;
//! let pool = Pool::new("127.0.0.1:9000", 64, std::time::Duration::from_secs(60));
//! let mut headers = http::HeaderMap::new();
//! headers.insert(http::header::HOST, "example".parse()?);
//! let resp = pool
//!     .send(
//!         std::time::Duration::from_secs(2),
//!         &http::Method::GET,
//!         "/hello",
//!         &headers,
//!         Bytes::new(),
//!     )
//!     .await?;
//! println!("{}", resp.status());
//! # Ok(()) }
//! ```

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Duration, Instant};

use crate::body::{Body, BoxError};

/// Largest response head accepted (status line and headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most response headers accepted.
pub const MAX_HEADERS: usize = 128;
const READ_CHUNK: usize = 16 * 1024;

/// What went wrong talking to an upstream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection could not be made (or timed out).
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Upstream address.
        addr: String,
        /// Cause.
        source: io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("upstream i/o: {0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before a complete response head.
    #[error("upstream closed the connection before answering")]
    Closed,
    /// The response was not valid HTTP/1.x.
    #[error("invalid upstream response: {0}")]
    Invalid(String),
}

impl Error {
    /// Whether the failure happened while connecting.
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect { .. })
    }
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as worker `id` of a thread-per-core server (the gateway's
/// `serve_threads`): pooled connections are handed back to the worker (and so the runtime and
/// reactor) that made them.
pub fn set_worker(id: usize) {
    WORKER.with(|w| w.set(id));
}

fn worker() -> usize {
    WORKER.with(|w| w.get())
}

struct Conn {
    io: TcpStream,
    /// The worker thread whose runtime registered the socket.
    worker: usize,
    /// Bytes read but not consumed yet.
    rbuf: BytesMut,
    /// Reused for each request head.
    wbuf: Vec<u8>,
    /// Reused for each response head's header positions.
    spans: Vec<(HeaderName, usize, usize)>,
    since: Instant,
}

/// The client for one upstream endpoint (`host:port`): its idle keep-alive connections, most
/// recently used last.
pub struct Pool {
    addr: String,
    idle: Mutex<Vec<Conn>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.idle.lock().map(|v| v.len()).unwrap_or(0);
        f.debug_struct("Pool")
            .field("addr", &self.addr)
            .field("idle", &n)
            .field("max_idle", &self.max_idle)
            .finish()
    }
}

impl Pool {
    /// A client for `addr` (`host:port`) keeping at most `max_idle` idle connections, each for
    /// at most `idle_timeout`.
    pub fn new(addr: &str, max_idle: usize, idle_timeout: std::time::Duration) -> Arc<Pool> {
        Arc::new(Pool {
            addr: addr.to_string(),
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
        })
    }

    /// Number of idle connections.
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    fn checkout(&self) -> Option<Conn> {
        let now = Instant::now();
        let me = worker();
        loop {
            let c = {
                let mut idle = self.idle.lock().ok()?;
                // Oldest first: drop the expired ones.
                let expired = idle
                    .iter()
                    .take_while(|c| now.saturating_duration_since(c.since) >= self.idle_timeout)
                    .count();
                if expired > 0 {
                    idle.drain(..expired);
                }
                // The most recent connection made by this worker.
                let i = idle.iter().rposition(|c| c.worker == me)?;
                idle.remove(i)
            };
            if c.looks_alive() {
                return Some(c);
            }
        }
    }

    fn checkin(&self, mut c: Conn) {
        if !c.rbuf.is_empty() {
            return; // unexpected bytes after a response: not reusable
        }
        c.since = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push(c);
            }
        }
    }

    /// Sends one request with an in-memory body and returns the response, whose body streams
    /// from the connection. `target` is the path and query; `headers` the request headers
    /// (hop-by-hop headers already removed; `content-length` is written by this function;
    /// `host` defaults to the pool's address).
    pub async fn send(
        self: &Arc<Self>,
        connect_timeout: std::time::Duration,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response<Body>, Error> {
        self.send_with::<()>(connect_timeout, method, target, headers, &[], body, None)
            .await
    }

    /// [`Pool::send`] with header overrides written straight into the request head (each
    /// `(name, value)` in `extra` replaces every `headers` entry of that name; `None` just
    /// drops them), holding `guard` until the response body has been read or dropped (it is
    /// dropped with the head when the body came with it, or with this future on an error).
    #[allow(clippy::too_many_arguments)]
    pub async fn send_with<G: Send + 'static>(
        self: &Arc<Self>,
        connect_timeout: std::time::Duration,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        extra: &[(&HeaderName, Option<&HeaderValue>)],
        body: Bytes,
        guard: Option<G>,
    ) -> Result<Response<Body>, Error> {
        let addr = self.addr.as_str();
        // At most two tries: the second only on a fresh connection, so it never loops again.
        let mut reused = self.checkout();
        loop {
            let was_reused = reused.is_some();
            let mut conn = match reused.take() {
                Some(c) => c,
                // Boxed: rare, and it would make every request's future larger.
                None => Box::pin(connect(addr, connect_timeout)).await?,
            };
            encode_head(&mut conn.wbuf, method, target, headers, extra, &body, addr);
            match exchange(&mut conn, &body, method).await {
                Ok(head) => return Ok(self.respond(conn, head, guard)),
                Err(Failure { error, written }) => {
                    // A reused connection that the upstream had closed: try once more on a new
                    // one if the upstream cannot have acted on the request.
                    let retry = was_reused
                        && matches!(error, Error::Closed | Error::Io(_))
                        && (!written || IDEMPOTENT.contains(method));
                    if !retry {
                        return Err(error);
                    }
                }
            }
        }
    }

    fn respond<G: Send + 'static>(
        self: &Arc<Self>,
        mut conn: Conn,
        head: Head,
        guard: Option<G>,
    ) -> Response<Body> {
        let framing = head.framing;
        let mut resp = Response::new(crate::body::empty());
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        // The whole body is already here: answer it as one chunk, free the connection now.
        if let Framing::Length(n) = framing {
            if n as usize <= conn.rbuf.len() {
                let data = conn.rbuf.split_to(n as usize).freeze();
                if head.keep_alive {
                    self.checkin(conn);
                }
                if !data.is_empty() {
                    *resp.body_mut() = http_body_util::Full::new(data)
                        .map_err(|e| match e {})
                        .boxed_unsync();
                }
                return resp;
            }
        }
        *resp.body_mut() = Streaming {
            conn: Some(conn),
            pool: self.clone(),
            framing,
            keep_alive: head.keep_alive,
            guard: guard.map(|g| Box::new(g) as Box<dyn Send>),
        }
        .boxed_unsync();
        resp
    }
}

/// The idempotent methods (RFC 9110 §9.2.2): safe to send again.
pub const IDEMPOTENT: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::TRACE,
    Method::PUT,
    Method::DELETE,
];

/// Whether a response with this status never has a body (RFC 9112 §6.3): 1xx, 204, 304.
pub fn status_has_no_body(s: StatusCode) -> bool {
    s.is_informational() || s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED
}

/// An interim answer (100 Continue and friends) that precedes the real one.
fn is_interim(s: StatusCode) -> bool {
    s.is_informational() && s != StatusCode::SWITCHING_PROTOCOLS
}

/// Bodies up to this size go out in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;

async fn connect(addr: &str, timeout: std::time::Duration) -> Result<Conn, Error> {
    let io = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(Error::Connect {
                addr: addr.to_string(),
                source: e,
            })
        }
        Err(_) => {
            return Err(Error::Connect {
                addr: addr.to_string(),
                source: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
            })
        }
    };
    let _ = io.set_nodelay(true);
    Ok(Conn {
        io,
        worker: worker(),
        rbuf: BytesMut::with_capacity(READ_CHUNK),
        wbuf: Vec::with_capacity(1024),
        spans: Vec::new(),
        since: Instant::now(),
    })
}

impl Conn {
    /// False if the peer closed the idle connection (or sent something unexpected). Costs a
    /// syscall only when the reactor reported the socket readable.
    fn looks_alive(&self) -> bool {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Writes `METHOD target HTTP/1.1`, the headers, framing and the body into `out`.
fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    extra: &[(&HeaderName, Option<&HeaderValue>)],
    body: &Bytes,
    addr: &str,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(addr.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut had_length = false;
    for (k, v) in headers {
        if k == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        if extra.iter().any(|(n, _)| *n == k) {
            continue;
        }
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (k, v) in extra {
        if let Some(v) = v {
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if !body.is_empty()
        || had_length
        || matches!(*method, Method::POST | Method::PUT | Method::PATCH)
    {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if body.len() <= INLINE_BODY {
        out.extend_from_slice(body);
    }
}

struct Failure {
    error: Error,
    /// Whether the request was written (the upstream may have acted on it).
    written: bool,
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

async fn exchange(conn: &mut Conn, body: &Bytes, method: &Method) -> Result<Head, Failure> {
    let fail = |written: bool| {
        move |e: io::Error| Failure {
            error: Error::Io(e),
            written,
        }
    };
    conn.io.write_all(&conn.wbuf).await.map_err(fail(false))?;
    if body.len() > INLINE_BODY {
        conn.io.write_all(body).await.map_err(fail(true))?;
    }
    loop {
        if !conn.rbuf.is_empty() {
            match parse_head_with(&mut conn.rbuf, method, &mut conn.spans) {
                Ok(Some(h)) if is_interim(h.status) => continue,
                Ok(Some(h)) => return Ok(h),
                Ok(None) => {}
                Err(e) => {
                    return Err(Failure {
                        error: e,
                        written: true,
                    })
                }
            }
        }
        if conn.rbuf.len() >= MAX_HEAD_BYTES {
            return Err(Failure {
                error: Error::Invalid(format!("response head over {MAX_HEAD_BYTES} bytes")),
                written: true,
            });
        }
        conn.rbuf.reserve(READ_CHUNK);
        let n = conn.io.read_buf(&mut conn.rbuf).await.map_err(fail(true))?;
        if n == 0 {
            return Err(Failure {
                error: if conn.rbuf.is_empty() {
                    Error::Closed
                } else {
                    Error::Invalid("connection closed inside the response head".into())
                },
                written: true,
            });
        }
    }
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes left.
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes the connection.
    Close,
}

/// Parses a response head from the front of `buf`, consuming it. `Ok(None)`: incomplete.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, Error> {
    parse_head_with(buf, method, &mut Vec::new())
}

/// [`parse_head`] with a reusable vector for the header positions.
fn parse_head_with(
    buf: &mut BytesMut,
    method: &Method,
    spans: &mut Vec<(HeaderName, usize, usize)>,
) -> Result<Option<Head>, Error> {
    // Uninitialized header slots: initializing 128 of them per response showed in perf.
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut r, buf, &mut raw)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::Invalid(e.to_string())),
    };
    let status = StatusCode::from_u16(r.code.unwrap_or(0))
        .map_err(|_| Error::Invalid(format!("status {:?}", r.code)))?;
    let version = if r.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Offsets of the values in the head, to slice the frozen head without copying.
    let base = buf.as_ptr() as usize;
    spans.clear();
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Error::Invalid(format!("header name {:?}", h.name)))?;
        // Values are slices of `buf`; an empty one may point anywhere.
        if h.value.is_empty() {
            spans.push((name, 0, 0));
            continue;
        }
        let start = (h.value.as_ptr() as usize)
            .checked_sub(base)
            .filter(|s| s + h.value.len() <= n)
            .ok_or_else(|| Error::Invalid("header value outside the head".into()))?;
        spans.push((name, start, start + h.value.len()));
    }
    let head = buf.split_to(n).freeze();
    // Room for the headers the proxy adds (request id, CORS, configured ones) without growing.
    let mut headers = HeaderMap::with_capacity(spans.len() + 4);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    let mut close = version == Version::HTTP_10;
    for (name, s, e) in spans.drain(..) {
        let value = HeaderValue::from_maybe_shared(head.slice(s..e))
            .map_err(|_| Error::Invalid(format!("value of header {name}")))?;
        if name == header::CONTENT_LENGTH {
            let l = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| Error::Invalid(format!("content-length {value:?}")))?;
            if length.is_some_and(|p| p != l) {
                return Err(Error::Invalid("conflicting content-length headers".into()));
            }
            length = Some(l);
        } else if name == header::TRANSFER_ENCODING {
            te = true;
            // Chunked must be the last coding.
            chunked = value
                .to_str()
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            // Hop-by-hop: the body is decoded here, and re-framed by whoever sends it on.
            continue;
        } else if name == header::CONNECTION {
            let v = value.to_str().unwrap_or("");
            let mut only_framing = true;
            for token in v.split(',') {
                let t = token.trim();
                if t.eq_ignore_ascii_case("close") {
                    close = true;
                } else if t.eq_ignore_ascii_case("keep-alive") {
                    if version == Version::HTTP_10 {
                        close = false;
                    }
                } else if !t.is_empty() {
                    only_framing = false;
                }
            }
            // Consumed here, unless it names other headers the proxy must drop.
            if only_framing {
                continue;
            }
        } else if name.as_str() == "keep-alive" {
            continue;
        }
        headers.append(name, value);
    }
    let framing = if method == Method::HEAD || status_has_no_body(status) {
        Framing::Length(0)
    } else if te {
        if chunked {
            Framing::Chunked(Chunked::default())
        } else {
            Framing::Close
        }
    } else if let Some(l) = length {
        Framing::Length(l)
    } else {
        Framing::Close
    };
    // With both Transfer-Encoding and Content-Length the length is ignored (RFC 9112 §6.3) and
    // the connection must not be reused.
    let keep_alive = !close && framing != Framing::Close && !(te && length.is_some());
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

/// Chunked transfer-coding decoder state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Chunked {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Reading trailer lines after the last chunk.
    Trailers(usize),
    /// Done.
    Done,
}

/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer bytes accepted (they are dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// Result of one decoding step.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Some body bytes.
    Data(Bytes),
    /// More input is needed.
    NeedMore,
    /// The body ended.
    Done,
}

impl Chunked {
    /// Decodes from the front of `buf`, consuming what it used.
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> Result<Step, String> {
        loop {
            match *self {
                Chunked::Done => return Ok(Step::Done),
                Chunked::Size => {
                    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err("chunk size line too long".into());
                        }
                        return Ok(Step::NeedMore);
                    };
                    if end > MAX_CHUNK_LINE {
                        return Err("chunk size line too long".into());
                    }
                    let line = &buf[..end];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let size_part = match line.iter().position(|b| *b == b';') {
                        Some(i) => &line[..i],
                        None => line,
                    };
                    let size = parse_hex(size_part.trim_ascii())?;
                    buf.advance(end + 1);
                    *self = if size == 0 {
                        Chunked::Trailers(0)
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(rem) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = (rem.min(buf.len() as u64)) as usize;
                    let data = buf.split_to(n).freeze();
                    *self = if rem == n as u64 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(rem - n as u64)
                    };
                    return Ok(Step::Data(data));
                }
                Chunked::DataEnd => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                    } else if buf.starts_with(b"\n") {
                        buf.advance(1);
                    } else if buf.is_empty() || buf[..] == b"\r"[..] {
                        return Ok(Step::NeedMore);
                    } else {
                        return Err("missing CRLF after chunk data".into());
                    }
                    *self = Chunked::Size;
                }
                Chunked::Trailers(seen) => {
                    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
                        if seen + buf.len() > MAX_TRAILERS {
                            return Err("trailers too large".into());
                        }
                        return Ok(Step::NeedMore);
                    };
                    let line = &buf[..end];
                    let empty = line.is_empty() || line == b"\r";
                    buf.advance(end + 1);
                    if empty {
                        *self = Chunked::Done;
                    } else if seen + end + 1 > MAX_TRAILERS {
                        return Err("trailers too large".into());
                    } else {
                        *self = Chunked::Trailers(seen + end + 1);
                    }
                }
            }
        }
    }
}

fn parse_hex(s: &[u8]) -> Result<u64, String> {
    // At most 15 hex digits, so it fits in a u64; from_str_radix alone would accept a sign.
    std::str::from_utf8(s)
        .ok()
        .filter(|t| !t.is_empty() && t.len() <= 15 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|t| u64::from_str_radix(t, 16).ok())
        .ok_or_else(|| format!("invalid chunk size {:?}", String::from_utf8_lossy(s)))
}

/// Parses a complete response (head and body) held in `data` with the same code the client
/// uses on the wire: status and body, or why it is invalid or incomplete. For fuzzing and
/// tests; never panics.
#[doc(hidden)]
pub fn decode_response(data: &[u8], method: &Method) -> Result<(u16, Vec<u8>), String> {
    let mut buf = BytesMut::from(data);
    let head = loop {
        match parse_head(&mut buf, method).map_err(|e| e.to_string())? {
            None => return Err("incomplete head".into()),
            Some(h) if is_interim(h.status) => {}
            Some(h) => break h,
        }
    };
    let mut body = Vec::new();
    match head.framing {
        Framing::Length(n) => {
            if (buf.len() as u64) < n {
                return Err("incomplete body".into());
            }
            body.extend_from_slice(&buf[..n as usize]);
        }
        Framing::Close => body.extend_from_slice(&buf),
        Framing::Chunked(mut st) => loop {
            match st.step(&mut buf)? {
                Step::Data(d) => body.extend_from_slice(&d),
                Step::NeedMore => return Err("incomplete chunked body".into()),
                Step::Done => break,
            }
        },
    }
    Ok((head.status.as_u16(), body))
}

/// A response body read from the connection as the client asks for it.
struct Streaming {
    conn: Option<Conn>,
    pool: Arc<Pool>,
    framing: Framing,
    keep_alive: bool,
    /// Held until the body is done or dropped.
    guard: Option<Box<dyn Send>>,
}

impl Streaming {
    fn finish(&mut self) {
        self.guard = None;
        if let Some(c) = self.conn.take() {
            if self.keep_alive {
                self.pool.checkin(c);
            }
        }
    }
}

fn poll_fill(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    conn.rbuf.reserve(READ_CHUNK);
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.rbuf)
}

impl http_body::Body for Streaming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.framing {
                Framing::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(rem) => {
                    if !conn.rbuf.is_empty() {
                        let n = (*rem).min(conn.rbuf.len() as u64) as usize;
                        *rem -= n as u64;
                        let data = conn.rbuf.split_to(n).freeze();
                        if *rem == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Close => {
                    if !conn.rbuf.is_empty() {
                        let data = conn.rbuf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(state) => match state.step(&mut conn.rbuf) {
                    Ok(Step::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                    Ok(Step::Done) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {}
                    Err(e) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(format!(
                            "invalid chunked upstream body: {e}"
                        )
                        .into())));
                    }
                },
            }
            match poll_fill(conn, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(Ok(0)) => {
                    let ended = this.framing == Framing::Close;
                    this.conn = None;
                    return Poll::Ready(if ended {
                        None
                    } else {
                        Some(Err("upstream closed the connection inside the body".into()))
                    });
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing == Framing::Length(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool), String> {
        let mut st = Chunked::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for p in pieces {
            buf.extend_from_slice(p);
            loop {
                match st.step(&mut buf)? {
                    Step::Data(d) => out.extend_from_slice(&d),
                    Step::NeedMore => break,
                    Step::Done => return Ok((out, true)),
                }
            }
        }
        Ok((out, false))
    }

    #[test]
    fn chunked_basics() {
        let (d, done) =
            decode_all(&[b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n"]).unwrap();
        assert_eq!(d, b"hello world");
        assert!(done);
        // Bare LF line ends and spaces around the size are tolerated.
        let (d, done) = decode_all(&[b"3 \nabc\n0\n\n"]).unwrap();
        assert_eq!((d.as_slice(), done), (&b"abc"[..], true));
        // Incomplete.
        let (d, done) = decode_all(&[b"5\r\nhel"]).unwrap();
        assert_eq!((d.as_slice(), done), (&b"hel"[..], false));
        // Errors.
        assert!(decode_all(&[b"zz\r\n"]).is_err());
        assert!(decode_all(&[b"\r\n"]).is_err());
        assert!(decode_all(&[b"3\r\nabcXY"]).is_err());
        assert!(decode_all(&[b"ffffffffffffffff\r\n"]).is_err());
        assert!(decode_all(&[&[b'1'; 5000][..]]).is_err());
    }

    #[test]
    fn response_heads() {
        let mut b = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\nx-a: 2\r\n\r\nhello"[..],
        );
        let h = parse_head(&mut b, &Method::GET).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&b[..], b"hello");

        let mut b =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"[..]);
        let h = parse_head(&mut b, &Method::GET).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Chunked(Chunked::Size));

        let mut b = BytesMut::from(&b"HTTP/1.0 200 OK\r\n\r\nrest"[..]);
        let h = parse_head(&mut b, &Method::GET).unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));

        let mut b = BytesMut::from(
            &b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"[..],
        );
        let h = parse_head(&mut b, &Method::GET).unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(0), true));

        let mut b = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\n"[..],
        );
        let h = parse_head(&mut b, &Method::GET).unwrap().unwrap();
        assert!(!h.keep_alive);
        // Framing headers are consumed, not handed on.
        assert!(h.headers.get("connection").is_none());

        let mut b = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nconnection: keep-alive, x-secret\r\nkeep-alive: timeout=5\r\ntransfer-encoding: chunked\r\nx-secret: 1\r\n\r\n"[..],
        );
        let h = parse_head(&mut b, &Method::GET).unwrap().unwrap();
        assert!(h.keep_alive);
        assert!(h.headers.get("keep-alive").is_none());
        assert!(h.headers.get("transfer-encoding").is_none());
        // A Connection header naming other headers stays, for the proxy to drop them.
        assert_eq!(h.headers["connection"], "keep-alive, x-secret");

        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n"[..]);
        let h = parse_head(&mut b, &Method::HEAD).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Length(0));

        let mut b =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nx-empty:\r\ncontent-length: 0\r\n\r\n"[..]);
        let h = parse_head(&mut b, &Method::GET).unwrap().unwrap();
        assert_eq!(h.headers["x-empty"], "");

        let mut b = BytesMut::from(&b"HTTP/1.1 204 No Content\r\n\r\n"[..]);
        let h = parse_head(&mut b, &Method::GET).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Length(0));

        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
        assert!(parse_head(&mut b, &Method::GET).unwrap().is_none());

        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"[..],
            &b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"[..],
            &b"HTTP/2 200 OK\r\n\r\n"[..],
            &b"garbage\r\n\r\n"[..],
        ] {
            let mut b = BytesMut::from(bad);
            assert!(parse_head(&mut b, &Method::GET).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn extra_headers_replace_or_drop_map_entries() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        h.insert("x-gone", HeaderValue::from_static("g"));
        h.insert("x-kept", HeaderValue::from_static("k"));
        let (a, gone, new) = (
            HeaderName::from_static("x-a"),
            HeaderName::from_static("x-gone"),
            HeaderName::from_static("x-new"),
        );
        let three = HeaderValue::from_static("3");
        let n = HeaderValue::from_static("n");
        let extra = [(&a, Some(&three)), (&gone, None), (&new, Some(&n))];
        let mut out = Vec::new();
        encode_head(
            &mut out,
            &Method::GET,
            "/p",
            &h,
            &extra,
            &Bytes::new(),
            "up:1",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET /p HTTP/1.1\r\n"), "{text}");
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert!(lines.contains(&"host: example"));
        assert!(lines.contains(&"x-kept: k"));
        assert!(lines.contains(&"x-a: 3"));
        assert!(lines.contains(&"x-new: n"));
        assert!(!text.contains("x-a: 1") && !text.contains("x-a: 2") && !text.contains("x-gone"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn whole_responses_decode() {
        let ok = |d: &[u8]| decode_response(d, &Method::GET).unwrap();
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"),
            (200, b"hi".to_vec())
        );
        assert_eq!(
            ok(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"),
            (201, b"ab".to_vec())
        );
        assert!(decode_response(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhi",
            &Method::GET
        )
        .is_err());
        assert!(decode_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab",
            &Method::GET
        )
        .is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_response(&data, &Method::GET);
            let mut with_head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            with_head.extend_from_slice(&data);
            let _ = decode_response(&with_head, &Method::GET);
        }

        #[test]
        fn chunked_round_trip(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            sizes in proptest::collection::vec(1usize..700, 1..20),
            cuts in proptest::collection::vec(1usize..500, 1..30),
            ext in any::<bool>(),
        ) {
            // Encode with the given chunk sizes.
            let mut enc = Vec::new();
            let mut rest = &data[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                enc.extend_from_slice(format!("{n:X}").as_bytes());
                if ext { enc.extend_from_slice(b";a=b"); }
                enc.extend_from_slice(b"\r\n");
                enc.extend_from_slice(&rest[..n]);
                enc.extend_from_slice(b"\r\n");
                rest = &rest[n..];
                i += 1;
            }
            enc.extend_from_slice(b"0\r\ntrailer: x\r\n\r\n");
            // Feed it cut into arbitrary pieces.
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut rest = &enc[..];
            let mut j = 0;
            while !rest.is_empty() {
                let n = cuts[j % cuts.len()].min(rest.len());
                pieces.push(&rest[..n]);
                rest = &rest[n..];
                j += 1;
            }
            let (out, done) = decode_all(&pieces).unwrap();
            prop_assert!(done);
            prop_assert_eq!(out, data);
        }
    }
}
