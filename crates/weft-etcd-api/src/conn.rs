//! One connection of the etcd API, served on the `h2` crate.
//!
//! The connection's task drives the HTTP/2 connection and, inside the same poll, the unary
//! KV calls on the fast path (`fast.rs`): a call is polled as soon as its request is read, and
//! all responses that one group commit released on this connection leave in one write. Streams
//! (watch, lease keep-alive) and every call tonic serves run as their own tasks through
//! [`tonic_call`], so a connection's watch streams deliver in parallel with its unary calls.
//!
//! Serving h2 directly rather than through hyper's server: hyper hands every request to an
//! executor as a boxed future, converts its head and body, and pipes the response through its
//! own body machinery. Measured with `put` at 64 clients over 16 connections (`weft up`
//! alone, 3 alternating pairs): 19.7–20.8 µs of server CPU per put on h2 against 21.0–22.9 µs
//! on hyper with the same in-task calls, txn 18.6–20.8 against 21.1–23.3 µs, watch fan-out
//! level (docs/benchmarks.md, tenth run).
//!
//! The cost: the unary calls of one connection share one task, so they do not run in parallel
//! on several cores. They only decode, touch the in-memory store, and encode; the waiting (for
//! the log's fsync) is asynchronous and does not hold the task. Clients that want more than
//! one core of server work open more connections, as etcd's Go client and benchmark do
//! (`--conns`).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{Request, Response};
use http_body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::service::Routes;
use tower::ServiceExt;

use crate::{fast, EtcdApi};

/// Flow-control windows a client may fill before the server reads: per stream and per
/// connection (hyper's server defaults, which this server had before it served h2 itself).
const WINDOW: u32 = 1 << 20;
/// Streams a client may have open on one connection. etcd sets no limit; gRPC clients
/// multiplex all of a program's calls over one connection.
const MAX_STREAMS: u32 = 1024;
/// Largest header block a request may carry (hyper's default).
const MAX_HEADER_LIST: u32 = 16 << 10;
/// Bytes a stream may buffer for sending before [`pipe`] waits for the client to read.
const MAX_SEND_BUFFER: usize = 400 << 10;
/// Rounds of (poll calls, read requests) in one poll of the connection's task before it
/// yields to other tasks, so a client that keeps sending cannot hold a worker thread.
const ROUNDS: usize = 8;

/// Serves one connection until the client closes it, or until `stop` turns true and the
/// calls in flight have finished (GOAWAY first, so clients open no new streams here).
pub(crate) async fn serve(
    io: TcpStream,
    api: EtcdApi,
    routes: Routes,
    mut stop: watch::Receiver<bool>,
) {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER);
    let mut conn = tokio::select! {
        r = b.handshake::<_, Bytes>(YieldIo::new(io)) => match r {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("etcd API handshake: {e}");
                return;
            }
        },
        _ = stop.wait_for(|s| *s) => return,
    };
    let stopping = stop.wait_for(|s| *s);
    tokio::pin!(stopping);
    let mut going_away = false;
    let mut open = true;
    let mut calls = FuturesUnordered::new();
    poll_fn(|cx| {
        if !going_away && stopping.as_mut().poll(cx).is_ready() {
            conn.graceful_shutdown();
            going_away = true;
        }
        for _ in 0..ROUNDS {
            // The calls first: what they answer is queued in the connection's send buffer...
            while let Poll::Ready(Some(())) = calls.poll_next_unpin(cx) {}
            // ...then the connection: it writes all of it, and reads new requests, whose
            // calls are polled in the next round.
            let mut accepted = false;
            while open {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        accepted = true;
                        match fast::method(&req) {
                            Some(m) => calls.push(fast::call(api.clone(), m, req, respond)),
                            None => {
                                tokio::spawn(tonic_call(routes.clone(), req, respond));
                            }
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!("etcd API connection: {e}");
                        open = false;
                    }
                    Poll::Ready(None) => open = false,
                    Poll::Pending => break,
                }
            }
            if !accepted {
                // Everything waits on a waker, or is done.
                return if !open && calls.is_empty() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                };
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// A request's body as an [`http_body::Body`], handing read bytes back to the flow-control
/// window as it goes.
struct RecvBody {
    inner: RecvStream,
    data_done: bool,
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match std::task::ready!(this.inner.poll_data(cx)) {
                Some(Ok(b)) => {
                    let _ = this.inner.flow_control().release_capacity(b.len());
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match std::task::ready!(this.inner.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// Serves one call with tonic (streams, and everything off the fast path), as its own task.
/// A stream the client resets is dropped, which ends the watch or keep-alive behind it.
async fn tonic_call(routes: Routes, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let req = req.map(|inner| {
        tonic::body::Body::new(RecvBody {
            inner,
            data_done: false,
        })
    });
    let mut call = routes.oneshot(req);
    let resp = poll_fn(|cx| {
        if respond.poll_reset(cx).is_ready() {
            return Poll::Ready(None);
        }
        Pin::new(&mut call).poll(cx).map(Some)
    })
    .await;
    let Some(Ok(resp)) = resp else { return };
    let (head, body) = resp.into_parts();
    let end = body.is_end_stream();
    match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(send) if !end => pipe(body, send).await,
        Ok(_) => {}
        Err(e) => tracing::debug!("etcd API response: {e}"),
    }
}

/// Writes a response body to its stream: data as the client's window allows, then trailers.
async fn pipe(mut body: tonic::body::Body, mut send: SendStream<Bytes>) {
    loop {
        // Wait until what was sent before is (nearly) out, so a client that does not read
        // holds back the body instead of growing the buffer.
        send.reserve_capacity(1);
        let next = poll_fn(|cx| {
            if let Poll::Ready(r) = send.poll_reset(cx) {
                return Poll::Ready(Err(r
                    .map(|r| r.to_string())
                    .unwrap_or_else(|e| e.to_string())));
            }
            if send.capacity() == 0 {
                match send.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.to_string())),
                    Poll::Ready(None) => return Poll::Ready(Err("stream closed".into())),
                    Poll::Pending => return Poll::Pending,
                }
            }
            Pin::new(&mut body).poll_frame(cx).map(Ok)
        })
        .await;
        let r = match next {
            Err(why) => {
                tracing::debug!("etcd API stream ended by the client: {why}");
                return;
            }
            Ok(None) => send.send_data(Bytes::new(), true),
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => match send.send_data(data, false) {
                    Ok(()) => continue,
                    Err(e) => Err(e),
                },
                Err(frame) => match frame.into_trailers() {
                    Ok(t) => send.send_trailers(t),
                    Err(_) => continue,
                },
            },
            Ok(Some(Err(status))) => {
                let mut t = http::HeaderMap::new();
                match status.add_header(&mut t) {
                    Ok(()) => send.send_trailers(t),
                    Err(_) => {
                        send.send_reset(h2::Reason::INTERNAL_ERROR);
                        return;
                    }
                }
            }
        };
        if let Err(e) = r {
            tracing::debug!("etcd API stream: {e}");
        }
        return;
    }
}

/// The connection's socket, yielding once before the first write of each burst.
///
/// A connection's task is woken by the first of its streams that has something to send, and
/// tokio runs it at once (LIFO slot): without this, each watch stream's event left in its own
/// TCP segment, and the client paid a wake-up and a read per event. Yielding once lets the
/// other streams' tasks queue their frames first, so one write carries them all.
///
/// Watch fan-out at 64 watchers over 16 connections: 76–78k events/s without, 93–96k with;
/// unary calls (already coalesced in the connection's task) are unchanged.
pub(crate) struct YieldIo<T> {
    inner: T,
    yielded: bool,
}

impl<T> YieldIo<T> {
    pub(crate) fn new(inner: T) -> Self {
        YieldIo {
            inner,
            yielded: false,
        }
    }

    fn yield_first(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return true;
        }
        false
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for YieldIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for YieldIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.yield_first(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.yield_first(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        if r.is_ready() {
            this.yielded = false;
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Waker;

    /// A socket stand-in that records writes.
    #[derive(Default)]
    struct Sink(Vec<u8>);

    impl AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.get_mut().0.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn the_socket_yields_once_before_each_burst_of_writes() {
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut io = YieldIo::new(Sink::default());
        let mut io = Pin::new(&mut io);
        // First write of a burst: not written, and the task is woken to try again.
        assert!(io.as_mut().poll_write(&mut cx, b"a").is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        // The rest of the burst goes straight through.
        assert!(matches!(
            io.as_mut().poll_write(&mut cx, b"ab"),
            Poll::Ready(Ok(2))
        ));
        assert!(matches!(
            io.as_mut().poll_write(&mut cx, b"c"),
            Poll::Ready(Ok(1))
        ));
        assert!(io.as_mut().poll_flush(&mut cx).is_ready());
        // A flush ends the burst: the next write yields again.
        assert!(io.as_mut().poll_write(&mut cx, b"d").is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert!(matches!(
            io.as_mut().poll_write(&mut cx, b"d"),
            Poll::Ready(Ok(1))
        ));
        assert_eq!(io.inner.0, b"abcd");
    }
}
