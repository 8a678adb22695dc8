//! An HTTP/2 server connection written for gRPC, with a fast path: one task per connection.
//!
//! The task reads frames, answers the unary calls its [`FastPath`] takes inside the same poll
//! (the request's message read whole, the call's future polled in place, unboxed), runs every
//! other request through a tower service (tonic's `Routes`, say: streams, compressed calls),
//! polls their response bodies itself, and writes all that one poll produced in one `write`.
//! It implements what a gRPC server needs of RFC 9113: streams and their states, flow control
//! in both directions (a stream's window comes back as its request is read), SETTINGS, PING,
//! RST_STREAM, GOAWAY (graceful, and with an error code on protocol errors), CONTINUATION,
//! padding, and HPACK ([`hpack`]). No server push, no priorities (ignored, as RFC 9113
//! allows), no HTTP/1.1 upgrade: gRPC clients speak HTTP/2 with prior knowledge.
//!
//! Limits a hostile client meets: 1,024 concurrent streams, 16 KiB header lists (a block of
//! references to one large table entry costs its bytes, not its decoded size), 16 MiB of
//! request bodies buffered per connection, PING and SETTINGS answered at 50 a second after a
//! burst of 100 (then `ENHANCE_YOUR_CALM`), a bounded header-decoding budget per poll.
//!
//! Why not the `h2` crate, which served weft's etcd API before: per request it allocates
//! stream state behind a shared lock, builds an `http::Request` with a `HeaderMap`, and moves
//! large frames and futures around. A put at 64 clients cost 18.9–19.3 µs of server CPU on
//! h2 against 13.0–13.3 µs with a loop like this one (`weft-etcd-api/examples/raw_put.rs`,
//! 4 alternating pairs; docs/runs/etcd-api.md, "weft's own HTTP/2 server for the etcd API").
//!
//! The unary calls of one connection share its task: they should only decode, do their
//! in-memory work and encode, leaving waits (an fsync) to other tasks. Clients that want more
//! than one core of server work open more connections, as etcd's Go client does.
//!
//! ```no_run
//! use bytes::Bytes;
//! use tonic::Status;
//!
//! /// Answers `/echo.Echo/Say` on the fast path; everything else goes to the service.
//! #[derive(Clone)]
//! struct Echo;
//!
//! impl weft_h2::FastPath for Echo {
//!     fn method(&self, path: &[u8], _: Option<&[u8]>) -> Option<u32> {
//!         (path == b"/echo.Echo/Say").then_some(0)
//!     }
//!     fn max_message(&self) -> usize {
//!         1 << 20
//!     }
//! }
//!
//! /// The request's gRPC frame (5-byte prefix and message) is the response's.
//! async fn say(_: Echo, _method: u32, frame: Bytes) -> Result<Bytes, Status> {
//!     Ok(frame)
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let (_stop_tx, stop) = tokio::sync::watch::channel(false);
//! // Everything the fast path does not take: tonic's `Routes`, or any such service.
//! let others = tower::service_fn(|_req| async {
//!     let status = Status::unimplemented("only /echo.Echo/Say is served");
//!     Ok::<_, std::convert::Infallible>(status.into_http())
//! });
//! loop {
//!     let (io, _) = listener.accept().await?;
//!     tokio::spawn(weft_h2::serve(io, Echo, say, others.clone(), stop.clone()));
//! }
//! # }
//! ```

pub mod hpack;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::hash::BuildHasherDefault;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::{AbortHandle, Abortable, Aborted};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::task::AtomicWaker;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tonic::Status;
use tower::ServiceExt;

use futures::future::{Join, Ready};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

const NO_ERROR: u32 = 0x0;
const PROTOCOL_ERROR: u32 = 0x1;
const INTERNAL_ERROR: u32 = 0x2;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const STREAM_CLOSED: u32 = 0x5;
const FRAME_SIZE_ERROR: u32 = 0x6;
const REFUSED_STREAM: u32 = 0x7;
const COMPRESSION_ERROR: u32 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Flow-control window a client may fill before the server reads: per stream and per
/// connection (what this server had on hyper and h2).
const WINDOW: u32 = 1 << 20;
/// Streams a client may have open on one connection. etcd sets no limit; gRPC clients
/// multiplex all of a program's calls over one connection.
const MAX_STREAMS: usize = 1024;

/// The limits a connection enforces on its client; [`Limits::default`] is what weft's etcd API
/// serves with. Each limit that trips is counted in
/// `weft_http2_limit_exceeded_total{limit="streams"|"buffered"|"control"|"header_block"}`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Streams open at once (advertised as SETTINGS_MAX_CONCURRENT_STREAMS; more are
    /// refused with REFUSED_STREAM).
    pub max_streams: usize,
    /// Request bytes of unary calls still being received that one connection may hold; a call
    /// that would go over is answered RESOURCE_EXHAUSTED.
    pub max_buffered: usize,
    /// PING and SETTINGS frames a second (each costs an answer), past a burst of
    /// `control_burst`; more end the connection with ENHANCE_YOUR_CALM.
    pub control_per_second: f64,
    /// See `control_per_second`.
    pub control_burst: f64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_streams: MAX_STREAMS,
            max_buffered: MAX_CONN_BUFFERED,
            control_per_second: CONTROL_RATE,
            control_burst: CONTROL_BURST,
        }
    }
}

fn tripped(limit: &'static str) {
    metrics::counter!("weft_http2_limit_exceeded_total", "limit" => limit).increment(1);
}
/// Largest header list a request may carry (name + value + 32 per field, RFC 9113 6.5.2).
const MAX_HEADER_LIST: usize = 16 << 10;
/// Largest frame payload this server accepts: the protocol's default, which it keeps.
const MAX_FRAME: usize = 16 << 10;
/// Unwritten bytes above which the connection stops reading requests and polling response
/// bodies until the client reads what is queued.
const WRITE_HIGH: usize = 256 << 10;
/// Bytes read from the socket in one round.
const READ_CHUNK: usize = 64 << 10;
/// Rounds of (calls, bodies, read, write) in one poll of the connection's task before it
/// yields to other tasks, so a client that keeps sending cannot hold a worker thread.
const ROUNDS: usize = 8;
/// Header block bytes one poll decodes before the connection yields to its neighbours on the
/// same thread (a client sending nothing but maximal header blocks would otherwise keep the
/// thread for ROUNDS x READ_CHUNK of them).
const HEADER_BUDGET: usize = 64 << 10;
/// PING and SETTINGS frames a connection may send a second (each costs an answer), and how
/// many at once; past that the connection is closed with ENHANCE_YOUR_CALM, as etcd's gRPC
/// server closes a PING flood. gRPC clients send a few a second at most (keepalive, BDP).
const CONTROL_RATE: f64 = 50.0;
/// Request bytes one connection may hold for unary calls still being received (4 maximal
/// messages); a call that would go over is answered RESOURCE_EXHAUSTED at once, so that 1,024
/// streams x 4 MiB cannot pile up on one connection.
const MAX_CONN_BUFFERED: usize = 16 << 20;
const CONTROL_BURST: f64 = 100.0;
const MAX_WINDOW: i64 = (1 << 31) - 1;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection error: GOAWAY with `code` (none if the socket itself failed), then the
/// connection closes.
#[derive(Debug)]
struct ConnError {
    code: Option<u32>,
    why: String,
}

fn conn_err(code: u32, why: impl Into<String>) -> ConnError {
    ConnError {
        code: Some(code),
        why: why.into(),
    }
}

fn io_err(e: io::Error) -> ConnError {
    ConnError {
        code: None,
        why: e.to_string(),
    }
}

/// A frame's 9-byte head.
fn frame_head(len: usize, ty: u8, flags: u8, id: u32) -> [u8; 9] {
    let l = (len as u32).to_be_bytes();
    let i = id.to_be_bytes();
    [l[1], l[2], l[3], ty, flags, i[0], i[1], i[2], i[3]]
}

/// Request bytes a stream's unary call holds while it is being received.
fn held(r: &Req) -> usize {
    match r {
        Req::Fast { first, more, .. } => first.as_ref().map_or(0, |f| f.len()) + more.len(),
        _ => 0,
    }
}

/// Hashes a stream id (Fibonacci hashing: ids are small and consecutive, and the map's
/// control bytes come from the hash's high bits).
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// What a tonic call's request body has received and not yet read.
#[derive(Default)]
struct ReqQueue {
    data: VecDeque<Bytes>,
    end: bool,
    reset: bool,
    waker: Option<Waker>,
}

impl ReqQueue {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// What request bodies hand back to the connection: bytes read (for WINDOW_UPDATE).
#[derive(Default)]
struct Shared {
    released: Mutex<Vec<(u32, usize)>>,
    waker: AtomicWaker,
}

/// A tonic call's request body: the stream's DATA as the connection received it. Reading
/// gives the bytes' flow-control window back to the client.
struct ReqBody {
    id: u32,
    q: Arc<Mutex<ReqQueue>>,
    conn: Arc<Shared>,
}

impl http_body::Body for ReqBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let mut q = lock(&self.q);
        if let Some(b) = q.data.pop_front() {
            drop(q);
            lock(&self.conn.released).push((self.id, b.len()));
            self.conn.waker.wake();
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if q.reset {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the client reset the stream",
            ))));
        }
        if q.end {
            return Poll::Ready(None);
        }
        if !q.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            q.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let q = lock(&self.q);
        q.end && q.data.is_empty()
    }
}

/// The next frame of a response body, with the body back.
struct NextFrame {
    id: u32,
    body: Option<tonic::body::Body>,
}

type BodyFrame = Option<Result<Frame<Bytes>, Status>>;

impl Future for NextFrame {
    type Output = (u32, tonic::body::Body, BodyFrame);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let body = self.body.as_mut().expect("polled after completion");
        let frame = std::task::ready!(http_body::Body::poll_frame(Pin::new(body), cx));
        let body = self.body.take().expect("just polled");
        Poll::Ready((self.id, body, frame))
    }
}

type TonicCall = Pin<
    Box<dyn Future<Output = (u32, Result<http::Response<tonic::body::Body>, Infallible>)> + Send>,
>;

/// A request's side of a stream.
enum Req {
    /// A unary KV call on the fast path, reading its message: the first frame's bytes as
    /// they came, copied into `more` only if another frame follows.
    Fast {
        m: u32,
        first: Option<Bytes>,
        more: BytesMut,
    },
    /// A call tonic serves, reading from the queue.
    Tonic(Arc<Mutex<ReqQueue>>),
    /// Read to the end: a trailing empty DATA is dropped.
    Done,
}

/// Trailers waiting behind a stream's data.
enum Trailers {
    /// `grpc-status: 0`.
    Ok,
    Map(HeaderMap),
}

/// Flow-controlled output of a stream, in order. Header blocks are encoded when written, so
/// the HPACK table changes in the order the client reads them.
enum Out {
    Data(Bytes, bool),
    Trailers(Trailers),
}

struct Stream {
    req: Req,
    /// The client has not ended its side (END_STREAM) yet.
    recv_open: bool,
    /// Bytes the client may still send on this stream.
    recv_window: i64,
    /// Bytes read since the last WINDOW_UPDATE of this stream.
    unacked: u32,
    /// Bytes this side may still send on this stream.
    send_window: i64,
    out: VecDeque<Out>,
    /// The tonic call or response body in flight.
    abort: Option<AbortHandle>,
    /// A response body not polled while its stream's output waits for window.
    parked: Option<tonic::body::Body>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(a) = self.abort.take() {
            a.abort();
        }
        if let Req::Tonic(q) = &self.req {
            let mut q = lock(q);
            if !q.end {
                q.reset = true;
            }
            q.wake();
        }
    }
}

/// Decodes `blocks` in order with one HPACK decoder, as one connection would: every field, or
/// the first error; checks the dynamic table's accounting after each block (panics if it is
/// off). The entry point of the fuzz target `fuzz/fuzz_targets/hpack.rs`.
pub fn decode_header_blocks(blocks: &[&[u8]]) -> Result<Vec<(Bytes, Bytes)>, hpack::Error> {
    let mut d = hpack::Decoder::default();
    let mut out = Vec::new();
    for b in blocks {
        d.decode(&Bytes::copy_from_slice(b), |n, v| out.push((n, v)))?;
        d.check();
    }
    Ok(out)
}

/// A fast-path call in flight with its stream id.
type FastCall<C> = Join<Ready<u32>, C>;

/// One connection's state. Generic over the fast path's call future `C` (the future of the
/// function given to [`serve`]), so the calls live unboxed in `fast`: naming an `async fn`'s
/// future takes a type parameter.
struct Conn<IO, F, C: Future, S> {
    io: IO,
    /// The transport holds written bytes it could not send yet (TLS records): flush again
    /// once it can.
    needs_flush: bool,
    handler: F,
    service: S,
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    preface: bool,
    decoder: hpack::Decoder,
    encoder: hpack::Encoder,
    streams: HashMap<u32, Stream, BuildHasherDefault<IdHasher>>,
    /// Highest stream id the client opened.
    last_stream: u32,
    /// A header block waiting for CONTINUATION frames: stream, block, HEADERS flags.
    continuation: Option<(u32, BytesMut, u8)>,
    conn_recv_window: i64,
    conn_unacked: u32,
    conn_send_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    /// The last header block's fields (kept for its allocation).
    fields: Vec<(Bytes, Bytes)>,
    /// Streams with output waiting for window.
    blocked: Vec<u32>,
    fast: FuturesUnordered<FastCall<C>>,
    start_fast: fn(F, u32, Bytes) -> C,
    calls: FuturesUnordered<Abortable<TonicCall>>,
    bodies: FuturesUnordered<Abortable<NextFrame>>,
    shared: Arc<Shared>,
    /// GOAWAY sent: no new streams, close when the last one ends.
    going_away: bool,
    /// The client sent GOAWAY: close when the last stream ends.
    client_gone: bool,
    /// The client closed the connection.
    eof: bool,
    yielded: bool,
    /// Complete frames left in the read buffer because this poll's header budget ran out.
    backlog: bool,
    /// Frames that make this side answer (PING, SETTINGS) it may still take now; refilled
    /// at `limits.control_per_second` up to `limits.control_burst`.
    control_tokens: f64,
    limits: Limits,
    control_at: std::time::Instant,
    /// Request bytes held by this connection's unary calls still being received.
    buffered: usize,
}

/// Which calls a connection answers itself, on the fast path: unary calls whose request is
/// one gRPC message, answered by one message (no trailers but `grpc-status`). Every other
/// request goes to the [`serve`]'s `service`.
pub trait FastPath: Clone + Send + 'static {
    /// The fast-path method serving `path` (an id of the implementor's choosing, handed back
    /// to the call function), or `None` to give the request to the service. `grpc_encoding`
    /// is the request's `grpc-encoding` header, if any (compressed calls usually go to the
    /// service).
    fn method(&self, path: &[u8], grpc_encoding: Option<&[u8]>) -> Option<u32>;

    /// The largest gRPC message a fast-path request may carry; a larger one is refused with
    /// `OUT_OF_RANGE` (as tonic's decoder does) before it is buffered.
    fn max_message(&self) -> usize;
}

/// A tower service for the requests the fast path does not take (tonic's `Routes` is one).
pub trait GrpcService:
    tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> GrpcService for S where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Serves one connection until the client closes it, or until `stop` turns true and the
/// calls in flight have finished (GOAWAY first, so clients open no new streams here).
///
/// A request whose `:path` the `fast` path takes is read whole and answered by
/// `call(fast, method, frame)`: `frame` is the request's body (one gRPC message with its
/// 5-byte length prefix, unchecked), the result the response's body (one message with its
/// prefix) sent with `grpc-status: 0`, or a status sent as trailers only. Every other request
/// goes to `service`, its body streamed in and its response body streamed out.
pub async fn serve<IO, F, C, S>(
    io: IO,
    fast: F,
    call: fn(F, u32, Bytes) -> C,
    service: S,
    stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FastPath,
    C: Future<Output = Result<Bytes, Status>>,
    S: GrpcService,
{
    serve_limited(io, fast, call, service, stop, Limits::default()).await
}

/// [`serve`] with other [`Limits`].
pub async fn serve_limited<IO, F, C, S>(
    io: IO,
    fast: F,
    call: fn(F, u32, Bytes) -> C,
    service: S,
    mut stop: watch::Receiver<bool>,
    limits: Limits,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FastPath,
    C: Future<Output = Result<Bytes, Status>>,
    S: GrpcService,
{
    let stopping = Box::pin(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    let mut c = Conn::new(io, fast, service, stopping, call, limits);
    if let Err(e) = poll_fn(|cx| c.poll(cx)).await {
        tracing::debug!("HTTP/2 connection: {} (code {:?})", e.why, e.code);
        if let Some(code) = e.code {
            c.goaway(code, &e.why);
        }
    }
    c.finish().await;
}

impl<IO, F, C, S> Conn<IO, F, C, S>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FastPath,
    C: Future<Output = Result<Bytes, Status>>,
    S: GrpcService,
{
    fn new(
        io: IO,
        handler: F,
        service: S,
        stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
        start_fast: fn(F, u32, Bytes) -> C,
        limits: Limits,
    ) -> Self {
        let mut c = Conn {
            io,
            needs_flush: false,
            handler,
            service,
            stopping,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(16 << 10),
            preface: false,
            decoder: hpack::Decoder::default(),
            encoder: hpack::Encoder::default(),
            streams: HashMap::default(),
            last_stream: 0,
            continuation: None,
            conn_recv_window: WINDOW as i64,
            conn_unacked: 0,
            conn_send_window: 65535,
            peer_initial_window: 65535,
            peer_max_frame: MAX_FRAME,
            fields: Vec::new(),
            blocked: Vec::new(),
            fast: FuturesUnordered::new(),
            start_fast,
            calls: FuturesUnordered::new(),
            bodies: FuturesUnordered::new(),
            shared: Arc::new(Shared::default()),
            going_away: false,
            client_gone: false,
            eof: false,
            yielded: false,
            backlog: false,
            control_tokens: limits.control_burst,
            limits,
            buffered: 0,
            control_at: std::time::Instant::now(),
        };
        // SETTINGS: MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_HEADER_LIST_SIZE; then
        // the connection's window from the default 65535 up to WINDOW.
        c.head(18, SETTINGS, 0, 0);
        for (k, v) in [
            (3u16, c.limits.max_streams as u32),
            (4, WINDOW),
            (6, MAX_HEADER_LIST as u32),
        ] {
            c.wbuf.put_u16(k);
            c.wbuf.put_u32(v);
        }
        c.head(4, WINDOW_UPDATE, 0, 0);
        c.wbuf.put_u32(WINDOW - 65535);
        c
    }

    fn head(&mut self, len: usize, ty: u8, flags: u8, id: u32) {
        self.wbuf.put_slice(&frame_head(len, ty, flags, id));
    }

    fn rst(&mut self, id: u32, code: u32) {
        self.head(4, RST_STREAM, 0, id);
        self.wbuf.put_u32(code);
    }

    fn goaway(&mut self, code: u32, why: &str) {
        let debug = &why.as_bytes()[..why.len().min(256)];
        self.head(8 + debug.len(), GOAWAY, 0, 0);
        self.wbuf.put_u32(self.last_stream);
        self.wbuf.put_u32(code);
        self.wbuf.put_slice(debug);
        self.going_away = true;
    }

    /// Writes what is queued (best effort, bounded in time) and closes.
    async fn finish(&mut self) {
        use tokio::io::AsyncWriteExt;
        let wbuf = std::mem::take(&mut self.wbuf);
        let io = &mut self.io;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            io.write_all(&wbuf).await?;
            io.shutdown().await
        })
        .await;
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        if !self.going_away && self.stopping.as_mut().poll(cx).is_ready() {
            self.goaway(NO_ERROR, "server stopping");
        }
        for _ in 0..ROUNDS {
            let mut progress = false;
            self.shared.waker.register(cx.waker());
            let released = std::mem::take(&mut *lock(&self.shared.released));
            for (id, n) in released {
                self.release(id, n);
                progress = true;
            }
            while let Poll::Ready(Some((id, r))) = self.fast.poll_next_unpin(cx) {
                self.answer_fast(id, r);
                progress = true;
            }
            while let Poll::Ready(Some(r)) = self.calls.poll_next_unpin(cx) {
                if let Ok((id, Ok(resp))) = r {
                    self.answer_tonic(id, resp);
                }
                progress = true;
            }
            while self.wbuf.len() < WRITE_HIGH {
                match self.bodies.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok((id, body, frame)))) => self.body_frame(id, body, frame),
                    Poll::Ready(Some(Err(Aborted))) => {}
                    _ => break,
                }
                progress = true;
            }
            if !self.eof && self.wbuf.len() < WRITE_HIGH && self.read(cx)? {
                progress = true;
            }
            if self.backlog {
                // Header budget spent: write what there is, then let the others run.
                if !self.wbuf.is_empty() || self.needs_flush {
                    self.write(cx)?;
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if !self.wbuf.is_empty() {
                if !self.yielded {
                    // Yield once before the first write of a burst: the tasks feeding this
                    // connection's watch streams run first, and one write carries all their
                    // events (watch fan-out at 64 watchers: 76-78k events/s without, 93-96k
                    // with; docs/runs/etcd-api.md, "one TCP write for a connection's watch streams").
                    self.yielded = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                if self.write(cx)? {
                    progress = true;
                }
            } else if self.needs_flush {
                self.write(cx)?;
            }
            if self.eof {
                // The client closed the connection: nobody is left to answer.
                return Poll::Ready(Ok(()));
            }
            if (self.going_away || self.client_gone)
                && self.streams.is_empty()
                && self.fast.is_empty()
                && self.wbuf.is_empty()
                && !self.needs_flush
            {
                return Poll::Ready(Ok(()));
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads what the socket has (up to [`READ_CHUNK`]) and handles the complete frames.
    ///
    /// Through `AsyncRead`, whose short reads clear the socket's readiness: `try_read` would
    /// cost one more `recvfrom` per wake-up to learn that the socket is drained.
    fn read(&mut self, cx: &mut Context<'_>) -> Result<bool, ConnError> {
        if self.backlog {
            // Frames left from the last poll first.
            self.frames()?;
            return Ok(true);
        }
        let mut got = 0;
        while got < READ_CHUNK {
            if self.rbuf.capacity() - self.rbuf.len() < 8 << 10 {
                self.rbuf.reserve(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
                Poll::Ready(Ok(0)) => {
                    self.eof = true;
                    break;
                }
                Poll::Ready(Ok(n)) => got += n,
                Poll::Ready(Err(e)) => return Err(io_err(e)),
                Poll::Pending => break,
            }
        }
        if got > 0 {
            self.frames()?;
        }
        Ok(got > 0 || self.eof)
    }

    /// Writes the queued frames; true if any byte went out.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<bool, ConnError> {
        let mut wrote = false;
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => return Err(io_err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    wrote = true;
                }
                Poll::Ready(Err(e)) => return Err(io_err(e)),
                Poll::Pending => return Ok(wrote),
            }
        }
        self.wbuf.clear();
        self.yielded = false;
        // A TCP socket has nothing to flush; a TLS stream sends its records.
        self.needs_flush = match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Ok(())) => false,
            Poll::Ready(Err(e)) => return Err(io_err(e)),
            Poll::Pending => true,
        };
        Ok(wrote)
    }

    fn frames(&mut self) -> Result<(), ConnError> {
        if !self.preface {
            if self.rbuf.len() < PREFACE.len() {
                if !PREFACE.starts_with(&self.rbuf) {
                    return Err(conn_err(PROTOCOL_ERROR, "not an HTTP/2 connection preface"));
                }
                return Ok(());
            }
            if &self.rbuf[..PREFACE.len()] != PREFACE {
                return Err(conn_err(PROTOCOL_ERROR, "not an HTTP/2 connection preface"));
            }
            self.rbuf.advance(PREFACE.len());
            self.preface = true;
        }
        self.backlog = false;
        let mut header_bytes = 0;
        while self.rbuf.len() >= 9 {
            if header_bytes > HEADER_BUDGET {
                self.backlog = true;
                break;
            }
            let len = u32::from_be_bytes([0, self.rbuf[0], self.rbuf[1], self.rbuf[2]]) as usize;
            if len > MAX_FRAME {
                return Err(conn_err(
                    FRAME_SIZE_ERROR,
                    format!("a frame of {len} bytes, at most {MAX_FRAME} are allowed"),
                ));
            }
            if self.rbuf.len() < 9 + len {
                break;
            }
            let (ty, flags) = (self.rbuf[3], self.rbuf[4]);
            let id = u32::from_be_bytes([self.rbuf[5], self.rbuf[6], self.rbuf[7], self.rbuf[8]])
                & 0x7fff_ffff;
            // Copied out, so the read buffer stays unshared and is reused in place (slices of
            // it kept alive by calls in flight made every refill a fresh allocation).
            let payload = Bytes::copy_from_slice(&self.rbuf[9..9 + len]);
            self.rbuf.advance(9 + len);
            if ty == HEADERS || ty == CONTINUATION {
                header_bytes += len;
            }
            self.frame(ty, flags, id, payload)?;
        }
        Ok(())
    }

    fn frame(&mut self, ty: u8, flags: u8, id: u32, p: Bytes) -> Result<(), ConnError> {
        if let Some((cid, _, _)) = &self.continuation {
            if ty != CONTINUATION || id != *cid {
                return Err(conn_err(PROTOCOL_ERROR, "a header block was interrupted"));
            }
        }
        match ty {
            DATA => self.data(flags, id, p),
            HEADERS => self.headers(flags, id, p),
            PRIORITY => {
                if id == 0 || p.len() != 5 {
                    return Err(conn_err(PROTOCOL_ERROR, "malformed PRIORITY"));
                }
                Ok(())
            }
            RST_STREAM => {
                if id == 0 || id > self.last_stream {
                    return Err(conn_err(PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
                }
                if p.len() != 4 {
                    return Err(conn_err(FRAME_SIZE_ERROR, "RST_STREAM of the wrong size"));
                }
                self.remove(id);
                Ok(())
            }
            SETTINGS => self.settings(flags, id, p),
            PUSH_PROMISE => Err(conn_err(PROTOCOL_ERROR, "clients cannot push")),
            PING => {
                if id != 0 {
                    return Err(conn_err(PROTOCOL_ERROR, "PING on a stream"));
                }
                if p.len() != 8 {
                    return Err(conn_err(FRAME_SIZE_ERROR, "PING of the wrong size"));
                }
                if flags & ACK == 0 {
                    self.control_frame("PING")?;
                    self.head(8, PING, ACK, 0);
                    self.wbuf.put_slice(&p);
                }
                Ok(())
            }
            GOAWAY => {
                if id != 0 {
                    return Err(conn_err(PROTOCOL_ERROR, "GOAWAY on a stream"));
                }
                self.client_gone = true;
                Ok(())
            }
            WINDOW_UPDATE => self.window_update(id, p),
            CONTINUATION => {
                let Some((cid, mut block, hflags)) = self.continuation.take() else {
                    return Err(conn_err(PROTOCOL_ERROR, "CONTINUATION without HEADERS"));
                };
                block.extend_from_slice(&p);
                if block.len() > 4 * MAX_HEADER_LIST {
                    tripped("header_block");
                    return Err(conn_err(ENHANCE_YOUR_CALM, "header block too large"));
                }
                if flags & END_HEADERS != 0 {
                    self.header_block(cid, hflags, block.freeze())
                } else {
                    self.continuation = Some((cid, block, hflags));
                    Ok(())
                }
            }
            _ => Ok(()), // Unknown frame types are ignored (RFC 9113 4.1).
        }
    }

    /// Takes a token for a frame that makes this side answer; a flood ends the connection.
    fn control_frame(&mut self, what: &str) -> Result<(), ConnError> {
        let now = std::time::Instant::now();
        let rate = self.limits.control_per_second;
        let refill = now.duration_since(self.control_at).as_secs_f64() * rate;
        self.control_at = now;
        self.control_tokens = (self.control_tokens + refill).min(self.limits.control_burst);
        if self.control_tokens < 1.0 {
            tripped("control");
            return Err(conn_err(
                ENHANCE_YOUR_CALM,
                format!("too many {what} frames (at most {rate} a second)"),
            ));
        }
        self.control_tokens -= 1.0;
        Ok(())
    }

    fn settings(&mut self, flags: u8, id: u32, p: Bytes) -> Result<(), ConnError> {
        if id != 0 {
            return Err(conn_err(PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if flags & ACK != 0 {
            if !p.is_empty() {
                return Err(conn_err(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload"));
            }
            return Ok(());
        }
        self.control_frame("SETTINGS")?;
        if !p.len().is_multiple_of(6) {
            return Err(conn_err(FRAME_SIZE_ERROR, "SETTINGS of the wrong size"));
        }
        for s in p.chunks(6) {
            let k = u16::from_be_bytes([s[0], s[1]]);
            let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match k {
                1 => self.encoder.set_max(v as usize),
                2 if v > 1 => return Err(conn_err(PROTOCOL_ERROR, "ENABLE_PUSH above 1")),
                4 => {
                    if v as i64 > MAX_WINDOW {
                        return Err(conn_err(
                            FLOW_CONTROL_ERROR,
                            "INITIAL_WINDOW_SIZE above 2^31-1",
                        ));
                    }
                    let delta = v as i64 - self.peer_initial_window;
                    self.peer_initial_window = v as i64;
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                        if s.send_window > MAX_WINDOW {
                            return Err(conn_err(
                                FLOW_CONTROL_ERROR,
                                "a stream's window above 2^31-1",
                            ));
                        }
                    }
                    if delta > 0 {
                        self.flush_blocked();
                    }
                }
                5 => {
                    if !(16384..=16_777_215).contains(&v) {
                        return Err(conn_err(PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range"));
                    }
                    self.peer_max_frame = v as usize;
                }
                _ => {}
            }
        }
        self.head(0, SETTINGS, ACK, 0);
        Ok(())
    }

    fn window_update(&mut self, id: u32, p: Bytes) -> Result<(), ConnError> {
        if p.len() != 4 {
            return Err(conn_err(
                FRAME_SIZE_ERROR,
                "WINDOW_UPDATE of the wrong size",
            ));
        }
        let inc = (u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff) as i64;
        if id == 0 {
            if inc == 0 {
                return Err(conn_err(PROTOCOL_ERROR, "WINDOW_UPDATE of 0"));
            }
            self.conn_send_window += inc;
            if self.conn_send_window > MAX_WINDOW {
                return Err(conn_err(
                    FLOW_CONTROL_ERROR,
                    "connection window above 2^31-1",
                ));
            }
            self.flush_blocked();
            return Ok(());
        }
        if id > self.last_stream {
            return Err(conn_err(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream"));
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        s.send_window += inc;
        if inc == 0 || s.send_window > MAX_WINDOW {
            let code = if inc == 0 {
                PROTOCOL_ERROR
            } else {
                FLOW_CONTROL_ERROR
            };
            self.rst(id, code);
            self.remove(id);
            return Ok(());
        }
        self.flush(id);
        Ok(())
    }

    fn headers(&mut self, flags: u8, id: u32, p: Bytes) -> Result<(), ConnError> {
        if id == 0 || id.is_multiple_of(2) {
            return Err(conn_err(
                PROTOCOL_ERROR,
                format!("HEADERS on stream {id}: clients open odd-numbered streams"),
            ));
        }
        let mut start = 0;
        let mut end = p.len();
        if flags & PADDED != 0 {
            let pad = *p
                .first()
                .ok_or_else(|| conn_err(FRAME_SIZE_ERROR, "empty HEADERS"))?;
            start = 1;
            end = end
                .checked_sub(pad as usize)
                .filter(|e| *e >= start)
                .ok_or_else(|| conn_err(PROTOCOL_ERROR, "padding longer than the frame"))?;
        }
        if flags & PRIORITY_FLAG != 0 {
            start += 5;
            if start > end {
                return Err(conn_err(
                    FRAME_SIZE_ERROR,
                    "HEADERS too short for its priority",
                ));
            }
        }
        let block = p.slice(start..end);
        if flags & END_HEADERS == 0 {
            self.continuation = Some((id, BytesMut::from(&block[..]), flags));
            return Ok(());
        }
        self.header_block(id, flags, block)
    }

    fn header_block(&mut self, id: u32, flags: u8, block: Bytes) -> Result<(), ConnError> {
        // Decoded whatever becomes of the stream: the table must stay in step with the client's.
        let mut fields = std::mem::take(&mut self.fields);
        fields.clear();
        // Past the list limit the decoder only keeps its table in step (no copies), so a block
        // of references to one large entry costs its 64 KiB, not its decoded size.
        let within = self
            .decoder
            .decode_until(&block, MAX_HEADER_LIST, |n, v| fields.push((n, v)))
            .map_err(|e| conn_err(COMPRESSION_ERROR, e.to_string()))?;
        let end_stream = flags & END_STREAM != 0;
        if id <= self.last_stream {
            // Trailers of an open stream.
            if self.streams.get(&id).is_some_and(|s| s.recv_open) {
                if end_stream {
                    self.end_request(id);
                } else {
                    self.rst(id, PROTOCOL_ERROR);
                    self.remove(id);
                }
                return Ok(());
            }
            // A request (it has pseudo-headers) on a stream id not above the last one opened:
            // RFC 9113 5.1.1, a connection error. Trailers on a stream this side has already
            // reset are dropped, as RFC 9113 5.4.2 allows for frames in flight.
            if fields.iter().any(|(n, _)| n.starts_with(b":")) {
                return Err(conn_err(
                    PROTOCOL_ERROR,
                    format!(
                        "HEADERS opening stream {id}, not above stream {} already opened",
                        self.last_stream
                    ),
                ));
            }
            return Ok(());
        }
        self.last_stream = id;
        if self.going_away {
            return Ok(()); // Above the GOAWAY's last stream: ignored, the client retries.
        }
        if self.streams.len() >= self.limits.max_streams {
            tripped("streams");
            self.rst(id, REFUSED_STREAM);
            return Ok(());
        }
        let mut stream = Stream {
            req: Req::Done,
            recv_open: !end_stream,
            recv_window: WINDOW as i64,
            unacked: 0,
            send_window: self.peer_initial_window,
            out: VecDeque::new(),
            abort: None,
            parked: None,
        };
        if !within {
            self.streams.insert(id, stream);
            self.respond_head(id, Some(431), std::iter::empty::<(&[u8], &[u8])>(), true);
            self.closed_send(id);
            return Ok(());
        }
        let mut path = None;
        let mut encoding = None;
        for (n, v) in &fields {
            match &n[..] {
                b":path" => path = Some(v.clone()),
                b"grpc-encoding" => encoding = Some(v.clone()),
                _ => {}
            }
        }
        let Some(path) = path else {
            self.rst(id, PROTOCOL_ERROR);
            return Ok(());
        };
        if let Some(m) = self.handler.method(&path, encoding.as_deref()) {
            fields.clear();
            self.fields = fields;
            stream.req = Req::Fast {
                m,
                first: None,
                more: BytesMut::new(),
            };
            self.streams.insert(id, stream);
            if end_stream {
                self.end_request(id);
            }
            return Ok(());
        }
        let q = Arc::new(Mutex::new(ReqQueue {
            end: end_stream,
            ..ReqQueue::default()
        }));
        let body = ReqBody {
            id,
            q: q.clone(),
            conn: self.shared.clone(),
        };
        let req = match request(fields, body) {
            Ok(r) => r,
            Err(why) => {
                tracing::debug!("HTTP/2 stream {id}: {why}");
                self.rst(id, PROTOCOL_ERROR);
                return Ok(());
            }
        };
        let call = self.service.clone().oneshot(req);
        let (handle, reg) = AbortHandle::new_pair();
        self.calls.push(Abortable::new(
            Box::pin(async move { (id, call.await) }),
            reg,
        ));
        stream.req = Req::Tonic(q);
        stream.abort = Some(handle);
        self.streams.insert(id, stream);
        Ok(())
    }

    fn data(&mut self, flags: u8, id: u32, p: Bytes) -> Result<(), ConnError> {
        if id == 0 {
            return Err(conn_err(PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let flen = p.len();
        if flen as i64 > self.conn_recv_window {
            return Err(conn_err(
                FLOW_CONTROL_ERROR,
                "the client sent more than the connection's window",
            ));
        }
        self.conn_recv_window -= flen as i64;
        let data = if flags & PADDED != 0 {
            let pad = *p
                .first()
                .ok_or_else(|| conn_err(FRAME_SIZE_ERROR, "empty padded DATA"))?;
            if pad as usize >= flen {
                return Err(conn_err(PROTOCOL_ERROR, "padding longer than the frame"));
            }
            p.slice(1..flen - pad as usize)
        } else {
            p
        };
        let Some((recv_open, window)) = self.streams.get(&id).map(|s| (s.recv_open, s.recv_window))
        else {
            if id > self.last_stream {
                return Err(conn_err(PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            // A stream closed here (answered, reset): its bytes still come back.
            self.release(0, flen);
            return Ok(());
        };
        if !recv_open || flen as i64 > window {
            self.release(0, flen);
            self.rst(
                id,
                if recv_open {
                    FLOW_CONTROL_ERROR
                } else {
                    STREAM_CLOSED
                },
            );
            self.remove(id);
            return Ok(());
        }
        let buffered = self.buffered;
        let s = self.streams.get_mut(&id).expect("looked up above");
        s.recv_window -= flen as i64;
        let end = flags & END_STREAM != 0;
        let mut consumed = flen;
        let mut too_large = false;
        let mut over_conn = false;
        let mut added = 0;
        match &mut s.req {
            Req::Fast { first, more, .. } => {
                let have = first.as_ref().map_or(0, |f| f.len()) + more.len();
                if have + data.len() > self.handler.max_message() + 5 {
                    too_large = true;
                } else if buffered + data.len() > self.limits.max_buffered {
                    over_conn = true;
                } else if first.is_none() && more.is_empty() {
                    added = data.len();
                    *first = Some(data);
                } else {
                    added = data.len();
                    if let Some(f) = first.take() {
                        more.extend_from_slice(&f);
                    }
                    more.extend_from_slice(&data);
                }
                // A length prefix over the limit is answered as soon as it arrives, not when
                // a client that means to send it all has sent it.
                let body: &[u8] = first.as_deref().unwrap_or(&more[..]);
                if let Some(p) = body.get(1..5) {
                    let declared = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
                    too_large |= declared > self.handler.max_message();
                }
            }
            Req::Tonic(q) => {
                // Padding comes back at once, the data when the call reads it.
                consumed = flen - data.len();
                if !data.is_empty() {
                    let mut q = lock(q);
                    q.data.push_back(data);
                    q.wake();
                } else {
                    consumed = flen;
                }
            }
            Req::Done => {}
        }
        self.buffered += added;
        if consumed > 0 {
            self.release(id, consumed);
        }
        if over_conn {
            tripped("buffered");
            let e = Status::resource_exhausted(format!(
                "this connection holds {} bytes of requests still being received, at most {}",
                self.buffered, self.limits.max_buffered
            ));
            self.answer_fast(id, Err(e));
            return Ok(());
        }
        if too_large {
            let e = Status::out_of_range(format!(
                "cannot read the request: it is over {} bytes, the most allowed",
                self.handler.max_message()
            ));
            self.answer_fast(id, Err(e));
            return Ok(());
        }
        if end {
            self.end_request(id);
        }
        Ok(())
    }

    /// The client ended its side of stream `id`.
    fn end_request(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.recv_open = false;
        self.buffered -= held(&s.req);
        match std::mem::replace(&mut s.req, Req::Done) {
            Req::Fast { m, first, more } => {
                let body = first.unwrap_or_else(|| more.freeze());
                self.fast.push(futures::future::join(
                    futures::future::ready(id),
                    (self.start_fast)(self.handler.clone(), m, body),
                ));
            }
            Req::Tonic(q) => {
                {
                    let mut g = lock(&q);
                    g.end = true;
                    g.wake();
                }
                s.req = Req::Tonic(q);
            }
            Req::Done => {}
        }
    }

    /// Gives `n` bytes of window back: the connection's, and stream `id`'s if it is open.
    fn release(&mut self, id: u32, n: usize) {
        self.conn_unacked += n as u32;
        if self.conn_unacked >= WINDOW / 2 {
            let n = std::mem::take(&mut self.conn_unacked);
            self.conn_recv_window += n as i64;
            self.head(4, WINDOW_UPDATE, 0, 0);
            self.wbuf.put_u32(n);
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if !s.recv_open {
            return;
        }
        s.unacked += n as u32;
        if s.unacked >= WINDOW / 2 {
            let n = std::mem::take(&mut s.unacked);
            s.recv_window += n as i64;
            self.head(4, WINDOW_UPDATE, 0, id);
            self.wbuf.put_u32(n);
        }
    }

    /// Drops stream `id` (reset by the client or by this side): its call or body is aborted.
    fn remove(&mut self, id: u32) {
        if let Some(s) = self.streams.remove(&id) {
            self.buffered -= held(&s.req);
        }
    }

    /// END_STREAM went out on `id`: the stream is over. A client still sending is told to
    /// stop (RST_STREAM NO_ERROR, RFC 9113 8.1); what it sent meanwhile is dropped.
    fn closed_send(&mut self, id: u32) {
        if self.streams.get(&id).is_some_and(|s| s.recv_open) {
            self.rst(id, NO_ERROR);
        }
        self.remove(id);
    }

    /// Encodes a header block for `id` straight into the write buffer, split into
    /// CONTINUATION frames if it is larger than the client's frame size.
    fn respond_head<'a>(
        &mut self,
        id: u32,
        status: Option<u16>,
        fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
        end_stream: bool,
    ) {
        let start = self.wbuf.len();
        self.wbuf.put_bytes(0, 9);
        self.encoder.begin(&mut self.wbuf);
        if let Some(status) = status {
            self.encoder.status(&mut self.wbuf, status);
        }
        for (n, v) in fields {
            self.encoder.field(&mut self.wbuf, n, v);
        }
        let len = self.wbuf.len() - start - 9;
        let eos = if end_stream { END_STREAM } else { 0 };
        if len <= self.peer_max_frame {
            self.wbuf[start..start + 9].copy_from_slice(&frame_head(
                len,
                HEADERS,
                eos | END_HEADERS,
                id,
            ));
            return;
        }
        let mut block = self.wbuf.split_off(start + 9).freeze();
        self.wbuf.truncate(start);
        let mut ty = HEADERS;
        let mut flags = eos;
        while !block.is_empty() {
            let chunk = block.split_to(block.len().min(self.peer_max_frame));
            if block.is_empty() {
                flags |= END_HEADERS;
            }
            self.head(chunk.len(), ty, flags, id);
            self.wbuf.put_slice(&chunk);
            ty = CONTINUATION;
            flags = 0;
        }
    }

    fn write_trailers(&mut self, id: u32, t: &Trailers) {
        match t {
            Trailers::Ok => self.respond_head(
                id,
                None,
                [(&b"grpc-status"[..], &b"0"[..])].into_iter(),
                true,
            ),
            Trailers::Map(m) => self.respond_head(
                id,
                None,
                m.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
                true,
            ),
        }
    }

    /// Flushes the streams whose output waited for window (a window just grew).
    fn flush_blocked(&mut self) {
        for id in std::mem::take(&mut self.blocked) {
            self.flush(id);
        }
    }

    /// Writes as much of stream `id`'s queued output as the windows allow; a stream that
    /// has to wait joins `blocked`.
    fn flush(&mut self, id: u32) {
        loop {
            let Some(s) = self.streams.get_mut(&id) else {
                return;
            };
            let (chunk, eos) = match s.out.front_mut() {
                None => {
                    if let Some(body) = s.parked.take() {
                        self.poll_body(id, body);
                    }
                    return;
                }
                Some(Out::Trailers(_)) => {
                    let Some(Out::Trailers(t)) = s.out.pop_front() else {
                        unreachable!("just matched")
                    };
                    self.write_trailers(id, &t);
                    self.closed_send(id);
                    return;
                }
                Some(Out::Data(b, end)) => {
                    let end = *end;
                    if b.is_empty() {
                        s.out.pop_front();
                        if !end {
                            continue;
                        }
                        (Bytes::new(), true)
                    } else {
                        let n = (b.len() as i64)
                            .min(s.send_window)
                            .min(self.conn_send_window)
                            .min(self.peer_max_frame as i64);
                        if n <= 0 {
                            if !self.blocked.contains(&id) {
                                self.blocked.push(id);
                            }
                            return;
                        }
                        let chunk = b.split_to(n as usize);
                        let last = b.is_empty();
                        s.send_window -= n;
                        self.conn_send_window -= n;
                        if last {
                            s.out.pop_front();
                        }
                        (chunk, last && end)
                    }
                }
            };
            self.head(chunk.len(), DATA, if eos { END_STREAM } else { 0 }, id);
            self.wbuf.put_slice(&chunk);
            if eos {
                self.closed_send(id);
                return;
            }
        }
    }

    fn answer_fast(&mut self, id: u32, r: Result<Bytes, Status>) {
        if !self.streams.contains_key(&id) {
            return; // Reset by the client meanwhile.
        }
        match r {
            Ok(data) => {
                self.respond_head(
                    id,
                    Some(200),
                    [(&b"content-type"[..], &b"application/grpc"[..])].into_iter(),
                    false,
                );
                if let Some(s) = self.streams.get_mut(&id) {
                    s.out.push_back(Out::Data(data, false));
                    s.out.push_back(Out::Trailers(Trailers::Ok));
                }
                self.flush(id);
            }
            Err(status) => {
                // Trailers-only, as tonic answers errors.
                let mut t = HeaderMap::new();
                if status.add_header(&mut t).is_err() {
                    t.insert("grpc-status", HeaderValue::from_static("13"));
                }
                let ct = [(&b"content-type"[..], &b"application/grpc"[..])];
                let fields = ct
                    .into_iter()
                    .chain(t.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())));
                self.respond_head(id, Some(200), fields, true);
                self.closed_send(id);
            }
        }
    }

    fn answer_tonic(&mut self, id: u32, resp: http::Response<tonic::body::Body>) {
        if !self.streams.contains_key(&id) {
            return; // Reset meanwhile: dropping the response ends what it serves.
        }
        let (parts, body) = resp.into_parts();
        let end = http_body::Body::is_end_stream(&body);
        self.respond_head(
            id,
            Some(parts.status.as_u16()),
            parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            end,
        );
        if end {
            self.closed_send(id);
            return;
        }
        self.poll_body(id, body);
    }

    /// Polls stream `id`'s response body for its next frame (abortable with the stream).
    fn poll_body(&mut self, id: u32, body: tonic::body::Body) {
        let (h, reg) = AbortHandle::new_pair();
        if let Some(s) = self.streams.get_mut(&id) {
            s.abort = Some(h);
        }
        self.bodies.push(Abortable::new(
            NextFrame {
                id,
                body: Some(body),
            },
            reg,
        ));
    }

    fn body_frame(&mut self, id: u32, body: tonic::body::Body, frame: BodyFrame) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let mut again = false;
        match frame {
            None => s.out.push_back(Out::Data(Bytes::new(), true)),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => {
                    s.out.push_back(Out::Data(d, false));
                    again = true;
                }
                Err(f) => match f.into_trailers() {
                    Ok(t) => s.out.push_back(Out::Trailers(Trailers::Map(t))),
                    Err(_) => again = true,
                },
            },
            Some(Err(status)) => {
                let mut t = HeaderMap::new();
                if status.add_header(&mut t).is_err() {
                    self.rst(id, INTERNAL_ERROR);
                    self.remove(id);
                    return;
                }
                s.out.push_back(Out::Trailers(Trailers::Map(t)));
            }
        }
        if again {
            s.parked = Some(body);
        }
        // Writes what the windows allow; a parked body is polled again once its stream's
        // output is all out (here, or when the client's WINDOW_UPDATE comes).
        self.flush(id);
    }
}

/// The `http::Request` tonic serves, from a decoded header list.
fn request(
    fields: Vec<(Bytes, Bytes)>,
    body: ReqBody,
) -> Result<http::Request<tonic::body::Body>, &'static str> {
    let mut req = http::Request::builder().version(http::Version::HTTP_2);
    let mut scheme = None;
    let mut authority = None;
    let mut path = None;
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (n, v) in fields {
        match &n[..] {
            b":method" => {
                req = req.method(http::Method::from_bytes(&v).map_err(|_| "bad :method")?)
            }
            b":scheme" => scheme = Some(v),
            b":authority" => authority = authority_of(&v),
            b":path" => {
                path = Some(http::uri::PathAndQuery::from_maybe_shared(v).map_err(|_| "bad :path")?)
            }
            p if p.starts_with(b":") => return Err("unknown pseudo-header"),
            _ => {
                let name = HeaderName::from_bytes(&n).map_err(|_| "bad header name")?;
                let value = HeaderValue::from_maybe_shared(v).map_err(|_| "bad header value")?;
                headers.append(name, value);
            }
        }
    }
    let mut uri = http::Uri::builder().path_and_query(path.ok_or("no :path")?);
    if let Some(a) = authority {
        uri = uri
            .scheme(match scheme.as_deref() {
                Some(b"https") => http::uri::Scheme::HTTPS,
                _ => http::uri::Scheme::HTTP,
            })
            .authority(a);
    }
    let mut req = req
        .uri(uri.build().map_err(|_| "bad URI")?)
        .body(tonic::body::Body::new(body))
        .map_err(|_| "bad request")?;
    *req.headers_mut() = headers;
    Ok(req)
}

/// The authority of `v`: itself if it is one, the `host:port` of a URL, or none. etcd's own
/// clients send URLs (etcdctl 3.4 for maintenance calls) and `#initially=[...]` (Go clientv3
/// 3.5.0, etcd-io/etcd#13192) as `:authority`, and etcd (grpc-go) serves them.
fn authority_of(v: &[u8]) -> Option<http::uri::Authority> {
    if let Ok(a) = http::uri::Authority::try_from(v) {
        return Some(a);
    }
    let uri = http::Uri::try_from(v).ok()?;
    uri.authority().cloned()
}
