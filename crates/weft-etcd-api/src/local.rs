//! Runs each connection's calls inside the connection's own task.
//!
//! hyper's HTTP/2 server hands every request stream to an executor. With tokio's executor each
//! call is its own task: a call's response wakes the connection task, which tokio runs next
//! (its LIFO slot), so every response goes out in its own `writev`, and each call costs a task
//! spawn and two cross-task wake-ups. Here the executor is a queue owned by the connection's
//! task ([`Driver`]): the task polls the ready calls first, then the connection once, so all
//! responses a group commit released on this connection leave in one write.
//!
//! Only unary KV calls on the fast path run here (the service marks them, see
//! [`ConnExec::next_is_local`]); streams and tonic's calls are spawned as tasks, so a
//! connection's watch streams still deliver in parallel.
//!
//! The cost: the unary calls of one connection share one task, so they do not run in parallel
//! on several cores. They only decode, touch the in-memory store, and encode; the waiting (for
//! the log's fsync) is asynchronous and does not hold the task. Clients that want more than
//! one core of server work open more connections, as etcd's Go client and benchmark do
//! (`--conns`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures::stream::{FuturesUnordered, StreamExt};

type Call = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Default)]
struct Queue {
    new: Vec<Call>,
    /// Set by the connection's service for the call hyper is about to execute: a unary KV
    /// call on the fast path (run here). Anything else (watch and keep-alive streams, tonic's
    /// calls) is spawned as its own task, so long-lived streams of one connection still run
    /// in parallel.
    next_local: bool,
    /// The driver's waker while it is not being polled (calls are normally queued from inside
    /// its poll, which drains the queue before returning).
    waker: Option<Waker>,
}

/// hyper executor that queues calls for the connection's [`Driver`].
#[derive(Clone, Default)]
pub(crate) struct ConnExec {
    queue: Arc<Mutex<Queue>>,
}

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for ConnExec {
    fn execute(&self, fut: F) {
        let waker = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if !std::mem::take(&mut q.next_local) {
                drop(q);
                tokio::spawn(fut);
                return;
            }
            q.new.push(Box::pin(fut));
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl ConnExec {
    /// Says whether the call hyper executes next runs in the connection's task. hyper calls
    /// the service and then hands the call to the executor at once, on the same thread.
    pub(crate) fn next_is_local(&self, local: bool) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_local = local;
    }

    fn take_new(&self, calls: &mut FuturesUnordered<Call>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        calls.extend(q.new.drain(..));
    }

    /// Leaves `waker` for [`hyper::rt::Executor::execute`] if no call is queued; false if
    /// one is.
    fn park(&self, waker: &Waker) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.new.is_empty() {
            q.waker = Some(waker.clone());
            true
        } else {
            false
        }
    }
}

/// A connection future and the calls it started, polled in one task. Completes when the
/// connection is done and every call has finished.
pub(crate) struct Driver<C> {
    conn: Option<Pin<Box<C>>>,
    exec: ConnExec,
    calls: FuturesUnordered<Call>,
}

impl<C> Driver<C> {
    pub(crate) fn new(conn: C, exec: ConnExec) -> Self {
        Driver {
            conn: Some(Box::pin(conn)),
            exec,
            calls: FuturesUnordered::new(),
        }
    }
}

impl<C, E> Future for Driver<C>
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.exec.take_new(&mut this.calls);
        // The calls first: what they answer is queued in the connection's send buffer...
        while let Poll::Ready(Some(())) = this.calls.poll_next_unpin(cx) {}
        // ...then the connection once: it writes all of it, and reads new requests, whose
        // calls it queues here.
        if let Some(conn) = &mut this.conn {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                if let Err(e) = r {
                    tracing::debug!("etcd API connection: {e}");
                }
                this.conn = None;
            }
        }
        if this.exec.park(cx.waker()) {
            // Everything waits on a waker (or is done).
            if this.conn.is_none() && this.calls.is_empty() {
                return Poll::Ready(());
            }
        } else {
            // New calls: run them on the next poll, after other tasks had a turn. (Looping
            // here instead, polling the connection twice in one poll, lost a wake-up about
            // once in 40 runs of the watch backlog test, cause not found.)
            cx.waker().wake_by_ref();
        }
        Poll::Pending
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
/// unary calls (already coalesced by [`Driver`]) are unchanged.
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

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for YieldIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for YieldIo<T> {
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
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::sync::oneshot;

    /// A socket stand-in that records writes.
    #[derive(Default)]
    struct Sink(Vec<u8>);

    impl hyper::rt::Write for Sink {
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
        use hyper::rt::Write;
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

    #[tokio::test]
    async fn only_calls_marked_local_wait_for_the_driver() {
        // No driver polls this executor: a call not marked local (a stream) runs as its own
        // task; a marked one stays queued for the connection's driver.
        let exec = ConnExec::default();
        let (tx, rx) = oneshot::channel();
        exec.execute(async move {
            let _ = tx.send(());
        });
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("an unmarked call is spawned")
            .unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        exec.next_is_local(true);
        exec.execute(async move {
            let _ = tx.send(());
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(100), rx)
                .await
                .is_err(),
            "a local call ran without its driver"
        );
        // The mark is for one call only.
        let (tx, rx) = oneshot::channel();
        exec.execute(async move {
            let _ = tx.send(());
        });
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("the mark applies to one call")
            .unwrap();
    }

    #[tokio::test]
    async fn calls_queued_outside_the_drivers_poll_still_run() {
        let exec = ConnExec::default();
        let (end_conn, conn_ended) = oneshot::channel::<()>();
        let conn = async move {
            let _ = conn_ended.await;
            Ok::<(), std::io::Error>(())
        };
        let driver = tokio::spawn(Driver::new(conn, exec.clone()));
        tokio::time::sleep(Duration::from_millis(20)).await; // the driver parks
        let ran = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = oneshot::channel();
        let r = ran.clone();
        exec.next_is_local(true);
        exec.execute(async move {
            r.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send(());
        });
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("a call queued from another task must be woken and run")
            .unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert!(!driver.is_finished(), "the connection is still open");
        end_conn.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), driver)
            .await
            .expect("driver ends with its connection")
            .unwrap();
    }

    #[tokio::test]
    async fn the_driver_outlives_its_connection_until_every_call_is_done() {
        let exec = ConnExec::default();
        let (finish_call, call_may_finish) = oneshot::channel::<()>();
        let done = Arc::new(AtomicUsize::new(0));
        let (d, e) = (done.clone(), exec.clone());
        // The connection starts one call (as hyper does, from inside its poll) and ends.
        let conn = async move {
            e.next_is_local(true);
            e.execute(async move {
                let _ = call_may_finish.await;
                d.fetch_add(1, Ordering::SeqCst);
            });
            Ok::<(), std::io::Error>(())
        };
        let driver = tokio::spawn(Driver::new(conn, exec));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!driver.is_finished(), "a call is still running");
        finish_call.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), driver)
            .await
            .expect("driver ends once its last call is done")
            .unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn many_ready_calls_do_not_starve_other_tasks() {
        // A connection that keeps starting calls that finish at once (for up to LIMIT polls):
        // the driver must yield instead of looping inside one poll, so another task on this
        // single-threaded runtime runs long before the connection ends.
        const LIMIT: usize = 200_000;
        let exec = ConnExec::default();
        let e = exec.clone();
        let polls = Arc::new(AtomicUsize::new(0));
        let p = polls.clone();
        let conn = futures::future::poll_fn(move |_cx| {
            if p.fetch_add(1, Ordering::SeqCst) >= LIMIT {
                return Poll::Ready(Ok::<(), std::io::Error>(()));
            }
            e.next_is_local(true);
            e.execute(async {});
            Poll::Pending
        });
        let driver = tokio::spawn(Driver::new(conn, exec));
        let p = polls.clone();
        let other = tokio::spawn(async move { p.load(Ordering::SeqCst) });
        let seen = other.await.unwrap();
        assert!(
            seen < LIMIT / 10,
            "the other task ran only after {seen} connection polls"
        );
        tokio::time::timeout(Duration::from_secs(30), driver)
            .await
            .expect("driver ends")
            .unwrap();
        assert!(polls.load(Ordering::SeqCst) > LIMIT);
    }
}
