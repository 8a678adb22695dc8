//! Accept loops: the proxy listener (HTTP/1.1 and h2c, upgrades, header-read timeout,
//! graceful shutdown) and the admin listener.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::Duration;

use crate::proxy::{full, Body};
use crate::Gateway;

/// Binds `threads` listening sockets to `addr` with `SO_REUSEPORT` (one per worker of
/// [`serve_threads`]; the kernel spreads new connections evenly over them). With port 0 the
/// first socket picks the port and the others join it. A port already in use is an error,
/// even if its owner also uses `SO_REUSEPORT`.
pub fn bind_workers(
    addr: std::net::SocketAddr,
    threads: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(threads.max(1));
    let mut addr = addr;
    // SO_REUSEPORT would let this group share a port some other process (with the same user
    // and also SO_REUSEPORT) already serves: check that the port is free first.
    if threads > 1 && addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    for _ in 0..threads.max(1) {
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        if threads > 1 {
            sock.set_reuseport(true)?;
        }
        sock.bind(addr)?;
        let l = sock.listen(1024)?;
        addr = l.local_addr()?;
        out.push(l.into_std()?);
    }
    Ok(out)
}

/// Thread-per-core serving, as nginx workers do: one OS thread with its own single-threaded
/// tokio runtime and accept loop per listener (see [`bind_workers`]); the first listener is
/// served on the calling task's runtime, which also keeps running the gateway's background
/// work (health checks, discovery, reloads). New connections are dealt round robin to the
/// workers, whichever listener accepted them (a hand-off only at accept); a connection then
/// stays on its worker, so a request never hops between threads, and upstream keep-alive
/// connections are reused by the thread that made them. Returns after `shutdown` once every
/// worker drained.
pub async fn serve_threads(
    listeners: Vec<std::net::TcpListener>,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_threads_with(listeners, gw, shutdown, ThreadOptions::default()).await
}

/// How many tasks a gateway worker's runtime polls between two looks at the reactor while
/// tasks are ready (tokio's default is 61). Finishing longer batches before polling for new
/// events, as nginx does with whole `epoll_wait` batches, lowered the 1-thread p99 in
/// alternating wrk rounds (1.79–1.85 ms against 1.93–1.95 ms with the default; nginx
/// 1.84–1.93 ms). Use it for the runtime that calls [`serve_threads`] too.
pub const WORKER_EVENT_INTERVAL: u32 = 256;

/// Options of [`serve_threads_with`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ThreadOptions {
    /// Terminate TLS with this (HTTP/2 offered by ALPN beside HTTP/1.1); none: plain TCP.
    pub tls: Option<Arc<weft_tls::Acceptor>>,
    /// Most connections one client address may hold open over all workers (0: no limit);
    /// more are closed at accept and counted in
    /// `weft_connections_refused_total{listener="gateway"}`.
    pub max_conns_per_client: usize,
    /// Pin worker `k` (the calling thread is worker 0) to the `k`-th CPU the process may run
    /// on, as nginx's `worker_cpu_affinity auto`. Off by default. With as many workers as
    /// cores on a busy machine it keeps the scheduler from stacking two workers on one CPU:
    /// with 2 workers, wrk and the upstream on 2 cores the p99 went from 2.7–4.5 ms to
    /// 1.5–1.6 ms (`scripts/bench-gateway.sh`; docs/runs/gateway.md, "`--pin-cpus`").
    pub pin_cpus: bool,
}

impl ThreadOptions {
    /// Options with CPU pinning on or off.
    pub fn pin_cpus(mut self, on: bool) -> Self {
        self.pin_cpus = on;
        self
    }

    /// Options that terminate TLS with `tls`.
    pub fn tls(mut self, tls: Option<Arc<weft_tls::Acceptor>>) -> Self {
        self.tls = tls;
        self
    }

    /// Options with at most `max` connections per client address (0: no limit).
    pub fn max_conns_per_client(mut self, max: usize) -> Self {
        self.max_conns_per_client = max;
        self
    }
}

/// Pins the calling thread to the `k`-th CPU (modulo their number) of the process's allowed
/// set; returns that CPU's number.
pub(crate) fn pin_current_thread(k: usize) -> std::io::Result<usize> {
    use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
    let allowed = sched_getaffinity(None)?;
    let cpus: Vec<usize> = (0..CpuSet::MAX_CPU)
        .filter(|&c| allowed.is_set(c))
        .collect();
    let Some(&cpu) = cpus.get(k % cpus.len().max(1)) else {
        return Err(std::io::Error::other("no CPU in the affinity mask"));
    };
    let mut one = CpuSet::new();
    one.set(cpu);
    sched_setaffinity(None, &one)?;
    Ok(cpu)
}

/// Pins the calling thread as worker `k`, logging the outcome (a failure is not fatal).
fn pin_worker(k: usize) {
    match pin_current_thread(k) {
        Ok(cpu) => tracing::debug!(worker = k, cpu, "worker pinned"),
        Err(e) => tracing::warn!(worker = k, "cannot pin the worker to a CPU: {e}"),
    }
}

/// [`serve_threads`] with options.
pub async fn serve_threads_with(
    listeners: Vec<std::net::TcpListener>,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
    opts: ThreadOptions,
) -> std::io::Result<()> {
    let mut listeners = listeners.into_iter();
    let Some(first) = listeners.next() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "serve_threads needs at least one listener",
        ));
    };
    let rest: Vec<std::net::TcpListener> = listeners.collect();
    // Connections are spread round robin over the workers (see `Dispatch`).
    let (senders, mut inboxes): (Vec<_>, Vec<_>) = (0..=rest.len())
        .map(|_| tokio::sync::mpsc::unbounded_channel::<Handoff>())
        .unzip();
    let dispatch = Arc::new(Dispatch {
        next: std::sync::atomic::AtomicUsize::new(0),
        workers: senders,
    });
    let mut inboxes = inboxes.drain(..).enumerate().map(|(me, inbox)| Worker {
        me,
        dispatch: dispatch.clone(),
        inbox,
    });
    let first_worker = inboxes.next();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let guard = Guard {
        tls: opts.tls.clone(),
        per_client: weft_tls::limit::PerClient::new("gateway", opts.max_conns_per_client),
    };
    let mut workers = Vec::new();
    for ((i, l), w) in rest.into_iter().enumerate().zip(inboxes) {
        let gw = gw.clone();
        let mut rx = stop_rx.clone();
        let worker = i + 1;
        let guard = guard.clone();
        let handle = std::thread::Builder::new()
            .name(format!("weft-gw-{worker}"))
            .spawn(move || -> std::io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .event_interval(WORKER_EVENT_INTERVAL)
                    .enable_all()
                    .build()?;
                if opts.pin_cpus {
                    pin_worker(worker);
                }
                rt.block_on(async move {
                    weft_h1::client::set_worker(worker);
                    l.set_nonblocking(true)?;
                    let l = TcpListener::from_std(l)?;
                    serve_worker(
                        l,
                        gw,
                        async move {
                            let _ = rx.wait_for(|s| *s).await;
                        },
                        Some(w),
                        guard,
                    )
                    .await
                })
            })?;
        workers.push(handle);
    }
    first.set_nonblocking(true)?;
    let first = TcpListener::from_std(first)?;
    drop(dispatch);
    if opts.pin_cpus {
        pin_worker(0);
    }
    // With one worker there is nobody to hand connections to.
    let first_worker = first_worker.filter(|w| w.dispatch.workers.len() > 1);
    let res = serve_worker(
        first,
        gw,
        async {
            shutdown.await;
            let _ = stop_tx.send(true);
        },
        first_worker,
        guard,
    )
    .await;
    let _ = stop_tx.send(true);
    let joined = tokio::task::spawn_blocking(move || {
        workers
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a gateway worker panicked")))
            })
            .collect::<std::io::Result<Vec<()>>>()
    })
    .await
    .map_err(std::io::Error::other)?;
    res.and(joined.map(|_| ()))
}

/// Serves the gateway on `listener` until `shutdown` completes, then stops accepting and
/// lets open exchanges finish (up to 30 s).
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_worker(listener, gw, shutdown, None, Guard::default()).await
}

/// What a listener checks before it serves a connection: TLS and the per-client limit.
#[derive(Clone)]
struct Guard {
    tls: Option<Arc<weft_tls::Acceptor>>,
    per_client: Arc<weft_tls::limit::PerClient>,
}

impl Default for Guard {
    fn default() -> Guard {
        Guard {
            tls: None,
            per_client: weft_tls::limit::PerClient::new("gateway", 0),
        }
    }
}

/// A freshly accepted connection handed from one worker to another.
type Handoff = (std::net::TcpStream, std::net::SocketAddr);

/// How the workers of [`serve_threads`] share connections: round robin by count, whichever
/// worker's listener accepted them (the kernel's `SO_REUSEPORT` hash can leave one worker with
/// most of a client's connections: 2:1 was seen with 64 wrk connections).
struct Dispatch {
    next: std::sync::atomic::AtomicUsize,
    workers: Vec<tokio::sync::mpsc::UnboundedSender<Handoff>>,
}

/// One worker's share of [`Dispatch`]: its index and its inbox.
struct Worker {
    me: usize,
    dispatch: Arc<Dispatch>,
    inbox: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
}

async fn serve_worker(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
    mut worker: Option<Worker>,
    guard: Guard,
) -> std::io::Result<()> {
    let stop = weft_h1::server::Stop::default();
    // Each connection holds a sender: `recv` returns `None` once all of them are done.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let inbox = async {
            match worker.as_mut() {
                Some(w) => w.inbox.recv().await,
                None => std::future::pending().await,
            }
        };
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, remote)) => {
                    if let Some(w) = &worker {
                        let n = w.dispatch.workers.len();
                        let to = w.dispatch.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
                        if to != w.me {
                            // Deregistered here, registered by the receiving worker's runtime.
                            match stream.into_std() {
                                Ok(std) => {
                                    let _ = w.dispatch.workers[to].send((std, remote));
                                }
                                Err(e) => tracing::debug!("hand-off failed: {e}"),
                            }
                            continue;
                        }
                    }
                    (stream, remote)
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some((std, remote)) = inbox => match tokio::net::TcpStream::from_std(std) {
                Ok(stream) => (stream, remote),
                Err(e) => {
                    tracing::debug!("taking over a connection failed: {e}");
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Some(slot) = guard.per_client.admit(remote.ip()) else {
            continue; // closed at once
        };
        let _ = stream.set_nodelay(true);
        let gw = gw.clone();
        let peer = Arc::new(match guard.tls {
            Some(_) => crate::proxy::Remote::new_tls(remote),
            None => crate::proxy::Remote::new(remote),
        });
        let stop = stop.clone();
        let done = done_tx.clone();
        let tls = guard.tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => weft_h1::server::serve_conn(stream, gw, peer, stop).await,
                Some(tls) => match tls.accept(stream).await {
                    Ok(s) => {
                        let s = weft_h1::server::Stream(s);
                        weft_h1::server::serve_conn(s, gw, peer, stop).await
                    }
                    Err(e) => handshake_failed("proxy", remote, &e),
                },
            }
            drop(done);
        });
    }
    drop(listener);
    // Idle connections close now, busy ones after their response.
    stop.cancel();
    drop(done_tx);
    tokio::select! {
        _ = done_rx.recv() => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => {
            tracing::warn!("connections still open after 30 s; closing");
        }
    }
    Ok(())
}

fn handshake_failed(listener: &'static str, remote: std::net::SocketAddr, e: &std::io::Error) {
    metrics::counter!("weft_tls_handshake_failures_total", "listener" => listener).increment(1);
    tracing::debug!(%remote, "TLS handshake failed: {e}");
}

/// The gateway under weft's HTTP/1.1 server loop (crate `weft-h1`).
impl weft_h1::server::Handler for crate::Gateway {
    type Peer = crate::proxy::Remote;

    fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.table.load().server.header_read_timeout_ms)
    }

    fn handle(
        &self,
        req: http::Request<crate::proxy::RequestBody>,
        peer: &Self::Peer,
    ) -> impl Future<Output = Response<Body>> + Send {
        crate::Gateway::handle(self, req, peer)
    }

    fn peer_addr(peer: &Self::Peer) -> std::net::SocketAddr {
        peer.addr
    }
}

/// Renders Prometheus metrics for the admin `/metrics` route.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn err(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response<Body> {
    json(
        status,
        serde_json::json!({"error": code, "message": message.to_string()}),
    )
}

async fn admin(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    metrics: Option<MetricsRender>,
    token: Option<Arc<str>>,
) -> Response<Body> {
    if let Some(t) = &token {
        let ok = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| {
                use subtle::ConstantTimeEq;
                bool::from(v.as_bytes().ct_eq(t.as_bytes()))
            });
        if !ok && req.uri().path() != "/health" {
            return err(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
            );
        }
    }
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/health") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (Method::GET, "/status") => json(StatusCode::OK, gw.status()),
        (Method::GET, "/metrics") => match metrics {
            Some(m) => {
                let mut r = Response::new(full(m()));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            None => err(
                StatusCode::NOT_FOUND,
                "not_found",
                "metrics are served by the node's /metrics",
            ),
        },
        (Method::GET, "/routes") => json(StatusCode::OK, gw.status()["routes"].clone()),
        (m, p) if p.starts_with("/routes/") => {
            let name = &p["/routes/".len()..];
            match m {
                Method::PUT => {
                    let body = match http_body_util::Limited::new(req.into_body(), 1 << 20)
                        .collect()
                        .await
                    {
                        Ok(b) => b.to_bytes(),
                        Err(e) => return err(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", e),
                    };
                    let route: crate::config::RouteConfig = match serde_json::from_slice(&body) {
                        Ok(r) => r,
                        Err(e) => return err(StatusCode::BAD_REQUEST, "invalid_route", e),
                    };
                    if route.name != name {
                        return err(
                            StatusCode::BAD_REQUEST,
                            "invalid_route",
                            format!(
                                "the path names route {name:?} but the body names {:?}",
                                route.name
                            ),
                        );
                    }
                    match gw.put_route(route).await {
                        Ok(()) => json(StatusCode::OK, serde_json::json!({"stored": name})),
                        Err(crate::GatewayError::Config(e)) => {
                            err(StatusCode::BAD_REQUEST, "invalid_route", e)
                        }
                        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, "store", e),
                    }
                }
                Method::DELETE => match gw.delete_route(name).await {
                    Ok(true) => json(StatusCode::OK, serde_json::json!({"deleted": name})),
                    Ok(false) => err(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        format!("no stored route {name:?}"),
                    ),
                    Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, "store", e),
                },
                _ => err(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "use PUT or DELETE",
                ),
            }
        }
        (_, p) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no admin route {p}"),
        ),
    }
}

/// Serves the admin API: `GET /health`, `GET /status` (routes, endpoints, health, breakers),
/// `GET /routes`, `PUT|DELETE /routes/{name}` (stored routes), `GET /metrics`.
pub async fn serve_admin(
    listener: TcpListener,
    gw: Arc<Gateway>,
    metrics: Option<MetricsRender>,
    token: Option<String>,
    tls: Option<Arc<weft_tls::Acceptor>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let token: Option<Arc<str>> = token.map(Into::into);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => r?,
            _ = &mut shutdown => return Ok(()),
        };
        let gw = gw.clone();
        let metrics = metrics.clone();
        let token = token.clone();
        let svc = service_fn(move |req| {
            let (gw, metrics, token) = (gw.clone(), metrics.clone(), token.clone());
            async move { Ok::<_, Infallible>(admin(gw, req, metrics, token).await) }
        });
        let tls = tls.clone();
        tokio::spawn(async move {
            let http1 = hyper::server::conn::http1::Builder::new();
            let _ = match tls {
                None => http1.serve_connection(TokioIo::new(stream), svc).await,
                Some(tls) => match tls.accept(stream).await {
                    Ok(s) => http1.serve_connection(TokioIo::new(s), svc).await,
                    Err(e) => return handshake_failed("admin", remote, &e),
                },
            };
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pinned_thread_runs_on_exactly_one_allowed_cpu() {
        let allowed = rustix::thread::sched_getaffinity(None).unwrap();
        let n = allowed.count() as usize;
        // On its own thread: pinning must not leak into the test harness's threads.
        let (cpu, after) = std::thread::spawn(move || {
            let cpu = super::pin_current_thread(n + 1).unwrap();
            (cpu, rustix::thread::sched_getaffinity(None).unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(after.count(), 1);
        assert!(after.is_set(cpu));
        assert!(allowed.is_set(cpu), "cpu {cpu} is in the allowed set");
    }
}
