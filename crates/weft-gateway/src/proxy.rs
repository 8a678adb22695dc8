//! The request path: route → CORS → body limit → auth → rate limit → breaker → balanced,
//! retried, deadline-bounded forwarding with streamed bodies → response.
//!
//! Accounting rules (so nothing is counted twice):
//! - endpoint outlier ejection sees every *attempt* on that endpoint (connect error or 5xx is
//!   a failure);
//! - the route's breaker sees one outcome per *client request*, after retries: a request that
//!   failed on one endpoint and succeeded on the next is a success for the route;
//! - answers the gateway makes itself (no route, auth, rate limit, no healthy endpoint) are
//!   not upstream outcomes: the breaker ignores them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::{Duration, Instant};
use weft_resilience::circuit::CircuitBreaker;
use weft_resilience::ratelimit::RateLimiter;
use weft_resilience::retry::RetryBudget;
use weft_resilience::Outcome;

use crate::auth::Authenticator;
use crate::config::{BreakerConfig, CorsConfig, RateKey, RetryConfig, RouteConfig, ServerConfig};
use crate::error::Reason;
use crate::lb::PickCtx;
use crate::route::Matcher;
use crate::upstream::Upstream;
use crate::Gateway;

pub(crate) use weft_h1::body::{empty, full};
pub use weft_h1::body::{Body, BoxError, RequestBody};

pub(crate) type HttpClient = Client<HttpConnector, Body>;

pub(crate) fn build_client(cfg: &ServerConfig, h2: bool) -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)));
    conn.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .http2_only(h2)
        .build(conn)
}

pub(crate) fn build_breaker(route: &str, b: &BreakerConfig) -> Result<CircuitBreaker, String> {
    CircuitBreaker::builder(format!("route:{route}"))
        .config(crate::config::breaker_settings(b))
        .build()
        .map_err(|e| e.to_string())
}

/// A compiled route.
pub(crate) struct Route {
    pub name: String,
    pub cfg: RouteConfig,
    pub matcher: Matcher,
    pub upstream: Arc<Upstream>,
    pub auth: Option<Arc<Authenticator>>,
    pub breaker: Option<Arc<CircuitBreaker>>,
    pub limiter: Option<Arc<RateLimiter<String>>>,
    pub budget: Option<Arc<RetryBudget>>,
    pub add_headers: Vec<(HeaderName, HeaderValue)>,
    pub remove_headers: Vec<HeaderName>,
    pub add_response_headers: Vec<(HeaderName, HeaderValue)>,
    pub retry_methods: Vec<Method>,
    pub counters: [metrics::Counter; 6],
    pub latency: metrics::Histogram,
}

impl Route {
    pub(crate) fn new(
        cfg: RouteConfig,
        upstream: Arc<Upstream>,
        auth: Option<Arc<Authenticator>>,
        breaker: Option<Arc<CircuitBreaker>>,
        limiter: Option<Arc<RateLimiter<String>>>,
        budget: Option<Arc<RetryBudget>>,
    ) -> Route {
        let hv = |m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| {
                    (
                        HeaderName::from_bytes(k.as_bytes()).expect("validated"),
                        HeaderValue::from_str(v).expect("validated"),
                    )
                })
                .collect::<Vec<_>>()
        };
        let retry_methods = match &cfg.retry {
            Some(r) if !r.methods.is_empty() => r
                .methods
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).expect("validated"))
                .collect(),
            _ => weft_h1::client::IDEMPOTENT.to_vec(),
        };
        let name = cfg.name.clone();
        let up = upstream.name.clone();
        let counter = |class: &'static str| metrics::counter!("weft_gateway_requests_total", "route" => name.clone(), "upstream" => up.clone(), "status" => class);
        Route {
            matcher: Matcher::new(&cfg),
            add_headers: hv(&cfg.add_headers),
            remove_headers: cfg
                .remove_headers
                .iter()
                .map(|h| HeaderName::from_bytes(h.as_bytes()).expect("validated"))
                .collect(),
            add_response_headers: hv(&cfg.add_response_headers),
            counters: [
                counter("1xx"),
                counter("2xx"),
                counter("3xx"),
                counter("4xx"),
                counter("5xx"),
                counter("other"),
            ],
            latency: metrics::histogram!("weft_gateway_request_duration_seconds", "route" => name.clone()),
            name,
            retry_methods,
            cfg,
            upstream,
            auth,
            breaker,
            limiter,
            budget,
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_WEFT_CONSUMER: HeaderName = HeaderName::from_static("x-weft-consumer");

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Usually there is none: one pass over the names instead of a hash lookup per
    // hop-by-hop name.
    if !keep_upgrade
        && !h
            .keys()
            .any(|k| k == header::UPGRADE || HOP_BY_HOP.iter().any(|n| n == k))
    {
        return;
    }
    // Headers named by `Connection`. The usual tokens (keep-alive, close, upgrade) are handled
    // below without building header names: this runs twice per request (perf showed it).
    let mut listed: Vec<HeaderName> = Vec::new();
    for v in h.get_all(header::CONNECTION) {
        for t in v.to_str().unwrap_or("").split(',') {
            let t = t.trim();
            if t.is_empty()
                || t.eq_ignore_ascii_case("keep-alive")
                || t.eq_ignore_ascii_case("close")
                || t.eq_ignore_ascii_case("upgrade")
            {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                listed.push(n);
            }
        }
    }
    for n in listed {
        h.remove(n);
    }
    let te_trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for n in HOP_BY_HOP.iter() {
        h.remove(n);
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|s| {
                    s.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                })
                .unwrap_or(false)
        })
}

/// A response the gateway makes itself that says nothing about the upstream (the breaker
/// ignores it).
fn ignored(reason: Reason, message: &str) -> (Response<Body>, Outcome) {
    (answer(reason, message), Outcome::Ignore)
}

/// A response the gateway makes itself.
pub(crate) fn answer(reason: Reason, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": reason.as_str(), "message": message }).to_string();
    let mut r = Response::new(full(body));
    *r.status_mut() = reason.status();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert("x-weft-reason", HeaderValue::from_static(reason.as_str()));
    r
}

fn status_class(s: StatusCode) -> usize {
    match s.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

/// Whether the request body's size limit is what failed (anywhere in the error chain).
fn body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = c.source();
    }
    false
}

/// Request id: `<16 hex seed><16 hex counter>`.
pub(crate) struct RequestIds {
    seed: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (std::process::id() as u64).rotate_left(32);
        RequestIds {
            seed,
            counter: AtomicU64::new(0),
        }
    }
    fn next(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        for (i, v) in [self.seed, n].into_iter().enumerate() {
            for j in 0..16 {
                buf[i * 16 + j] = HEX[((v >> (60 - 4 * j)) & 0xf) as usize];
            }
        }
        // An owned buffer: clones (upstream request, response) share it without a copy.
        HeaderValue::from_maybe_shared(Bytes::from_owner(buf)).expect("hex is a valid header")
    }
}

fn sane_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

struct AccessEntry<'a> {
    start: Instant,
    method: &'a Method,
    path: &'a str,
    route: &'a str,
    upstream: &'a str,
    endpoint: &'a str,
    consumer: &'a str,
    remote: SocketAddr,
    request_id: &'a HeaderValue,
    attempts: u32,
}

/// The client end of a connection, with its IP already rendered for `X-Forwarded-For`
/// (formatting an address per request showed up in perf).
#[derive(Debug, Clone)]
pub struct Remote {
    /// The peer address.
    pub addr: SocketAddr,
    ip: HeaderValue,
    /// The IP as text (the per-IP rate-limit key).
    ip_string: String,
    /// The connection is TLS (`x-forwarded-proto: https`).
    tls: bool,
}

impl Remote {
    /// Facts about a peer.
    pub fn new(addr: SocketAddr) -> Remote {
        let ip_string = addr.ip().to_string();
        let ip = HeaderValue::from_str(&ip_string).expect("an IP is a valid header");
        Remote {
            addr,
            ip,
            ip_string,
            tls: false,
        }
    }

    /// Facts about a peer that connected over TLS.
    pub fn new_tls(addr: SocketAddr) -> Remote {
        Remote {
            tls: true,
            ..Remote::new(addr)
        }
    }
}

/// One exchange's facts and what it learned (for the access log).
struct Exchange<'a> {
    route: &'a Route,
    server: &'a ServerConfig,
    rid_header: &'a HeaderName,
    remote: SocketAddr,
    peer: &'a Remote,
    request_id: &'a HeaderValue,
    path_and_query: Option<String>,
    endpoint: Option<Arc<crate::upstream::Endpoint>>,
    consumer: Option<String>,
    attempts: u32,
}

static NO_RETRY: std::sync::LazyLock<RetryConfig> = std::sync::LazyLock::new(|| RetryConfig {
    attempts: 1,
    ..Default::default()
});

impl Gateway {
    /// Sends an attempt through hyper's client for the upstream: its own TLS client for an
    /// `https` upstream, else the shared h2c or HTTP/1.1 one.
    fn send_hyper(
        &self,
        up: &crate::upstream::Upstream,
        h2: bool,
        req: Request<Body>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        match &up.https {
            Some(c) => c.request(req),
            None if h2 => self.client_h2.request(req),
            None => self.client_h1.request(req),
        }
    }

    /// Handles one client request.
    //
    // About 385 lines, over the ~150 the house style allows, with a reason: the request path
    // is one async function with labelled blocks so that its future stays small (nested async
    // functions each held a copy of the request and were moved into their caller's future:
    // multi-KiB memmoves per request in perf). Every stage that does not wait is a
    // synchronous helper (`no_route`, `cors_check`, `admit`, `rate_limited`, `Forwarding`,
    // `edit_upstream_headers`, `hyper_request`, `settle`, `retry_backoff`, `add_cors_headers`,
    // `finish`): they add nothing to the future. What stays here is what awaits: the shared
    // rate limiter, reading a body to replay it, the attempts and their backoff. Measured
    // side by side against nginx before and after the split (docs/runs/gateway.md,
    // "`Gateway::handle` split into synchronous stages").
    pub async fn handle(&self, req: Request<RequestBody>, peer: &Remote) -> Response<Body> {
        let remote = peer.addr;
        let start = Instant::now();
        let table = self.table.load_full();
        let rid_header = &table.request_id_header;
        let request_id = match req.headers().get(rid_header) {
            Some(v) if sane_request_id(v) => v.clone(),
            _ => self.ids.next(),
        };
        let method = req.method().clone();
        let uri = req.uri();
        let path = uri.path();
        let host = uri.authority().map(|a| a.as_str()).or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let found = table.routes.iter().find_map(|r| {
            r.matcher
                .matches(&method, host, path, uri.query(), req.headers())
                .map(|m| (r, m))
        });
        let Some((route, matched)) = found else {
            return self.no_route(start, &method, path, remote, request_id, rid_header);
        };
        // Only the access log needs the path after the request is handed on.
        let log_path = self.access.is_some().then(|| path.to_string());
        let mut x = Exchange {
            route,
            server: &table.server,
            rid_header,
            remote,
            peer,
            request_id: &request_id,
            path_and_query: matched.path_and_query,
            endpoint: None,
            consumer: None,
            attempts: 0,
        };
        // forward → forward_inner → attempts, inlined as labelled blocks: as nested async
        // functions each held its own copy of the request and was moved into its caller's
        // future (multi-KiB memmoves per request in perf).
        let mut r = {
            let x = &mut x;
            // CORS around everything below.
            'forward: {
                let (origin_ok, cors) = match cors_check(x.route.cfg.cors.as_ref(), &req) {
                    Ok(v) => v,
                    Err(preflight) => break 'forward preflight,
                };
                // Body limit, auth, rate limit, breaker around the attempts.
                let mut resp = 'inner: {
                    let route = x.route;
                    let max_body = route.cfg.max_body_bytes.unwrap_or(x.server.max_body_bytes);
                    let content_length = req
                        .headers()
                        .get(header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    match admit(route, &req, max_body, content_length) {
                        Ok(consumer) => x.consumer = consumer,
                        Err(refused) => break 'inner refused,
                    }
                    // Rate limit.
                    if let Some(rl) = &route.cfg.rate_limit {
                        // Borrowed keys: the limiter clones a key only the first time it sees it.
                        static ROUTE_KEY: String = String::new();
                        let key: &String = match rl.by {
                            RateKey::Consumer => x.consumer.as_ref().unwrap_or(&x.peer.ip_string),
                            RateKey::Ip => &x.peer.ip_string,
                            RateKey::Route => &ROUTE_KEY,
                        };
                        let verdict = if rl.global {
                            // Boxed: a store round trip's future is large and rarely needed.
                            Box::pin(self.global_limit(
                                &route.name,
                                key,
                                rl.per_second,
                                rl.burst.unwrap_or(rl.per_second),
                            ))
                            .await
                        } else {
                            match &route.limiter {
                                Some(l) => l.check(key).map_err(|e| Some(e.retry_after)),
                                None => Ok(()),
                            }
                        };
                        if let Err(e) = verdict {
                            break 'inner rate_limited(e);
                        }
                    }
                    // Breaker.
                    let permit = match &route.breaker {
                        Some(b) => match b.try_acquire() {
                            Ok(p) => Some(p),
                            Err(e) => {
                                break 'inner answer(
                                    Reason::BreakerOpen,
                                    &format!("route {} is failing: {e}", route.name),
                                )
                            }
                        },
                        None => None,
                    };
                    // Balanced, retried, deadline-bounded forwarding.
                    let (resp, outcome) = 'attempts: {
                        let mut req = req;
                        let route = x.route;
                        let deadline = route
                            .cfg
                            .timeout_ms
                            .map(|ms| Instant::now() + Duration::from_millis(ms));
                        let upgrade = is_upgrade(req.headers());
                        let client_upgrade = if upgrade {
                            Some(hyper::upgrade::on(&mut req))
                        } else {
                            None
                        };
                        let (parts, body) = req.into_parts();
                        let ctx = PickCtx::new(
                            &route.upstream,
                            &parts.headers,
                            parts.uri.path(),
                            x.remote.ip(),
                        );
                        // Only a streamed body's framing is read from the headers.
                        let had_body_headers = matches!(body, RequestBody::Incoming(_))
                            && headers_has_body(&parts.headers);
                        // Upstream request head.
                        let mut headers = parts.headers;
                        strip_hop_by_hop(&mut headers, upgrade);
                        let fw =
                            Forwarding::new(x.peer, x.consumer.as_deref(), &headers, &parts.uri);
                        let (forwarded, n_fwd) = fw.list(x.rid_header, x.request_id);
                        let forwarded = &forwarded[..n_fwd];
                        let h2 = route.upstream.cfg.protocol == crate::config::Protocol::H2c;
                        if h2 {
                            headers.remove(header::HOST);
                        }
                        let retry: &RetryConfig = route.cfg.retry.as_ref().unwrap_or(&NO_RETRY);
                        let method = parts.method;
                        let path_and_query = match x.path_and_query.take() {
                            Some(p) => http::uri::PathAndQuery::from_maybe_shared(Bytes::from(p)),
                            None => Ok(parts
                                .uri
                                .path_and_query()
                                .cloned()
                                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))),
                        };
                        let path_and_query = match path_and_query {
                            Ok(p) => p,
                            Err(e) => {
                                break 'attempts ignored(
                                    Reason::BadRequest,
                                    &format!("cannot build the upstream path: {e}"),
                                )
                            }
                        };
                        // A replayable body lets us retry.
                        let mut replay: Option<Bytes> = None;
                        let mut stream: Option<Body> = None;
                        let retryable_method = route.retry_methods.contains(&method) && !upgrade;
                        let body = match body {
                            RequestBody::Buffered(b) => {
                                if b.len() as u64 > max_body {
                                    break 'attempts ignored(
                                        Reason::BodyTooLarge,
                                        &format!("body is over the limit of {max_body} bytes"),
                                    );
                                }
                                replay = Some(b);
                                None
                            }
                            RequestBody::Incoming(b) => Some(b),
                        };
                        if let Some(body) = body {
                            let bodyless = content_length == Some(0)
                                || (content_length.is_none()
                                    && !had_body_headers
                                    && parts.version < http::Version::HTTP_2)
                                || http_body::Body::is_end_stream(&body);
                            if bodyless {
                                replay = Some(Bytes::new());
                            } else if retry.attempts > 1
                                && retryable_method
                                && content_length.is_some_and(|l| l <= retry.buffer_bytes)
                            {
                                match Limited::new(body, max_body as usize).collect().await {
                                    Ok(c) => replay = Some(c.to_bytes()),
                                    Err(e) => {
                                        let too_large = body_too_large(&*e);
                                        break 'attempts if too_large {
                                            ignored(
                                                Reason::BodyTooLarge,
                                                &format!(
                                                    "body is over the limit of {max_body} bytes"
                                                ),
                                            )
                                        } else {
                                            ignored(
                                                Reason::BadRequest,
                                                &format!("reading the request body failed: {e}"),
                                            )
                                        };
                                    }
                                }
                            } else {
                                stream = Some(
                                    Limited::new(body, max_body as usize)
                                        .map_err(|e| -> BoxError { e })
                                        .boxed_unsync(),
                                );
                            }
                        }
                        // weft's own HTTP/1.1 client takes requests whose body is in memory; streamed bodies,
                        // upgrades and h2c go through hyper's.
                        let fast = !h2 && !upgrade && route.upstream.https.is_none();
                        // weft's client writes the forwarding headers straight into the request
                        // head when the route edits no headers; otherwise they go into the map
                        // first, then the route's removals and additions (which may override them).
                        let direct = fast
                            && replay.is_some()
                            && route.add_headers.is_empty()
                            && route.remove_headers.is_empty();
                        edit_upstream_headers(&mut headers, route, forwarded, direct, h2, &fw);
                        let extra = if direct { forwarded } else { &[] };
                        let connect_timeout = Duration::from_millis(x.server.connect_timeout_ms);
                        let max_attempts = if replay.is_some() && retryable_method {
                            retry.attempts.clamp(1, 10)
                        } else {
                            1
                        };
                        let mut tried = [0usize; 10];
                        let mut attempt = 0u32;
                        // Every request counts toward the budget, retried or not.
                        if let Some(b) = &route.budget {
                            b.deposit();
                        }
                        loop {
                            attempt += 1;
                            x.attempts = attempt;
                            let tried_now = &tried[..(attempt - 1) as usize];
                            let t0 = Instant::now();
                            let Some((idx, ep, set)) = route.upstream.pick_at(&ctx, tried_now, t0)
                            else {
                                break 'attempts if attempt == 1 {
                                    ignored(
                                        Reason::NoHealthyUpstream,
                                        &format!(
                                            "upstream {} has no usable endpoint",
                                            route.upstream.name
                                        ),
                                    )
                                } else {
                                    (
                                        answer(
                                            Reason::NoHealthyUpstream,
                                            "no other usable endpoint to retry on",
                                        ),
                                        Outcome::Failure,
                                    )
                                };
                            };
                            tried[(attempt - 1) as usize] = idx;
                            if self.access.is_some() {
                                x.endpoint = Some(ep.clone()); // for the access log only
                            }
                            let per_try = retry.per_try_timeout_ms.map(Duration::from_millis);
                            let mut limit = per_try.map(|d| t0 + d);
                            let mut deadline_hit = false;
                            if let Some(d) = deadline {
                                if limit.is_none_or(|l| d <= l) {
                                    limit = Some(d);
                                    deadline_hit = true;
                                }
                            }
                            let mut guard = Some(InFlight::enter(&ep));
                            let result: Result<Result<UpResp, SendError>, ()> =
                                match (&replay, fast) {
                                    // The common case: HTTP/1.1 upstream, body in memory: weft's own client.
                                    (Some(b), true) => {
                                        // The in-flight count ends with the response body (at once if it came
                                        // whole with the head).
                                        let fut = ep.pool.send_with(
                                            connect_timeout,
                                            &method,
                                            path_and_query.as_str(),
                                            &headers,
                                            extra,
                                            b.clone(),
                                            guard.take(),
                                        );
                                        within(limit, fut)
                                            .await
                                            .map(|r| r.map(UpResp::Fast).map_err(SendError::Fast))
                                    }
                                    _ => {
                                        let head = UpHead {
                                            method: &method,
                                            path_and_query: &path_and_query,
                                            h2,
                                            https: route.upstream.https.is_some(),
                                            last: attempt >= max_attempts,
                                        };
                                        let up = match hyper_request(
                                            &ep,
                                            head,
                                            &mut headers,
                                            &replay,
                                            &mut stream,
                                        ) {
                                            Ok(up) => up,
                                            Err(refused) => break 'attempts refused,
                                        };
                                        let fut = self.send_hyper(&route.upstream, h2, up);
                                        within(limit, fut)
                                            .await
                                            .map(|r| r.map(UpResp::Hyper).map_err(SendError::Hyper))
                                    }
                                };
                            let outlier = &route.upstream.cfg.outlier;
                            let tried = settle(result, &ep, &set, outlier, t0, deadline_hit, guard);
                            let (failure_kind, resp) = match tried {
                                Settled::TooLarge => {
                                    break 'attempts ignored(
                                        Reason::BodyTooLarge,
                                        &format!("body is over the limit of {max_body} bytes"),
                                    )
                                }
                                Settled::ClientBody => {
                                    break 'attempts ignored(
                                        Reason::BadRequest,
                                        "the request body is malformed or was cut off",
                                    )
                                }
                                Settled::Failed(reason) => (Some(reason), None),
                                Settled::Answered(r, guard) => (None, Some((r, guard))),
                            };
                            let retry_status = resp.as_ref().is_some_and(|(r, _)| {
                                retry.on_status.contains(&r.status().as_u16())
                            });
                            let should_retry = (failure_kind.is_some()
                                && failure_kind != Some(Reason::Deadline))
                                || retry_status;
                            let time_left = deadline.is_none_or(|d| Instant::now() < d);
                            if should_retry && attempt < max_attempts && time_left {
                                if let Some(backoff) = retry_backoff(route, attempt) {
                                    tokio::time::sleep(backoff).await;
                                    continue;
                                }
                            }
                            break 'attempts match (failure_kind, resp) {
                                (Some(reason), _) => (
                                    answer(reason, &format!("endpoint {}: {reason}", ep.address)),
                                    Outcome::Failure,
                                ),
                                (None, Some((r, guard))) => {
                                    let outcome = if r.status().is_server_error() {
                                        Outcome::Failure
                                    } else {
                                        Outcome::Success
                                    };
                                    (self.relay(r, guard, client_upgrade), outcome)
                                }
                                (None, None) => (
                                    answer(Reason::UpstreamError, "no response"),
                                    Outcome::Failure,
                                ),
                            };
                        }
                    };
                    if let (Some(b), Some(p)) = (&route.breaker, permit) {
                        b.record(p, outcome);
                    }
                    resp
                };
                if let (Some(c), Some(o)) = (cors, origin_ok) {
                    add_cors_headers(&mut resp, c, &o);
                }
                resp
            }
        };
        self.finish(&mut r, &x, start, &method, log_path.as_deref());
        r.headers_mut()
            .insert(rid_header.clone(), request_id.clone());
        r
    }

    /// The answer when no route matches (logged, with the request id).
    fn no_route(
        &self,
        start: Instant,
        method: &Method,
        path: &str,
        remote: SocketAddr,
        request_id: HeaderValue,
        rid_header: &HeaderName,
    ) -> Response<Body> {
        metrics::counter!("weft_gateway_no_route_total").increment(1);
        let mut resp = answer(Reason::NoRoute, &format!("no route for {method} {path}"));
        self.access_log(
            &AccessEntry {
                start,
                method,
                path,
                route: "",
                upstream: "",
                endpoint: "",
                consumer: "",
                remote,
                request_id: &request_id,
                attempts: 0,
            },
            &resp,
        );
        resp.headers_mut().insert(rid_header.clone(), request_id);
        resp
    }

    /// The route's response headers, its status and latency metrics, the access log.
    fn finish(
        &self,
        r: &mut Response<Body>,
        x: &Exchange<'_>,
        start: Instant,
        method: &Method,
        log_path: Option<&str>,
    ) {
        let route = x.route;
        for (k, v) in &route.add_response_headers {
            r.headers_mut().insert(k.clone(), v.clone());
        }
        route.counters[status_class(r.status())].increment(1);
        route.latency.record(start.elapsed().as_secs_f64());
        if self.access.is_some() {
            let endpoint = x
                .endpoint
                .as_ref()
                .map(|e| e.address.as_str())
                .unwrap_or("");
            self.access_log(
                &AccessEntry {
                    start,
                    method,
                    path: log_path.unwrap_or(""),
                    route: &route.name,
                    upstream: &route.upstream.name,
                    endpoint,
                    consumer: x.consumer.as_deref().unwrap_or(""),
                    remote: x.remote,
                    request_id: x.request_id,
                    attempts: x.attempts,
                },
                r,
            );
        }
    }

    fn access_log(&self, e: &AccessEntry<'_>, r: &Response<Body>) {
        let Some(tx) = &self.access else { return };
        let line = serde_json::json!({
            "ts_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            "request_id": e.request_id.to_str().unwrap_or(""),
            "remote": e.remote.to_string(),
            "method": e.method.as_str(),
            "path": e.path,
            "route": e.route,
            "upstream": e.upstream,
            "endpoint": e.endpoint,
            "consumer": e.consumer,
            "status": r.status().as_u16(),
            "reason": r.headers().get("x-weft-reason").and_then(|v| v.to_str().ok()).unwrap_or(""),
            "attempts": e.attempts,
            "duration_ms": e.start.elapsed().as_secs_f64() * 1000.0,
        })
        .to_string();
        if tx.try_send(line).is_err() {
            metrics::counter!("weft_gateway_access_log_dropped_total").increment(1);
        }
    }

    fn relay(
        &self,
        r: UpResp,
        guard: Option<InFlight>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<Body> {
        let mut r = match r {
            UpResp::Hyper(r) => r,
            UpResp::Fast(mut r) => {
                strip_hop_by_hop(r.headers_mut(), false);
                return r;
            }
        };
        if r.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = client_upgrade {
                let upstream = hyper::upgrade::on(&mut r);
                tokio::spawn(async move {
                    let _guard = guard;
                    match tokio::try_join!(client, upstream) {
                        Ok((c, u)) => {
                            let mut c = hyper_util::rt::TokioIo::new(c);
                            let mut u = hyper_util::rt::TokioIo::new(u);
                            let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                        }
                        Err(e) => tracing::debug!("upgrade failed: {e}"),
                    }
                });
                let (mut parts, _) = r.into_parts();
                strip_hop_by_hop(&mut parts.headers, true);
                return Response::from_parts(parts, empty());
            }
        }
        let (mut parts, body) = r.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        let body = body
            .map_err(move |e| -> BoxError {
                let _ = &guard;
                Box::new(e)
            })
            .boxed_unsync();
        Response::from_parts(parts, body)
    }
}

/// A response from either upstream client.
enum UpResp {
    Hyper(Response<Incoming>),
    Fast(Response<Body>),
}

impl UpResp {
    fn status(&self) -> StatusCode {
        match self {
            UpResp::Hyper(r) => r.status(),
            UpResp::Fast(r) => r.status(),
        }
    }
}

/// An error from either upstream client.
#[derive(Debug)]
enum SendError {
    Hyper(hyper_util::client::legacy::Error),
    Fast(weft_h1::client::Error),
}

impl SendError {
    fn is_connect(&self) -> bool {
        match self {
            SendError::Hyper(e) => e.is_connect(),
            SendError::Fast(e) => e.is_connect(),
        }
    }

    fn body_too_large(&self) -> bool {
        match self {
            SendError::Hyper(e) => body_too_large(e),
            SendError::Fast(_) => false,
        }
    }

    /// The request body the client streamed failed (bad chunked framing, cut off): hyper's
    /// client reports the body's own error as a user error.
    fn client_body_failed(&self) -> bool {
        let SendError::Hyper(e) = self else {
            return false;
        };
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cur {
            if c.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_user)
            {
                return true;
            }
            cur = c.source();
        }
        false
    }
}

/// Runs `f`, giving up at `limit` (Err) if there is one.
async fn within<F: std::future::Future>(limit: Option<Instant>, f: F) -> Result<F::Output, ()> {
    match limit {
        Some(l) => tokio::time::timeout_at(l, f).await.map_err(|_| ()),
        None => Ok(f.await),
    }
}

fn headers_has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING) || h.contains_key(header::CONTENT_LENGTH)
}

/// Decrements an endpoint's in-flight count when the exchange (including the streamed
/// response body) ends.
pub(crate) struct InFlight(Arc<crate::upstream::Endpoint>);

impl InFlight {
    fn enter(ep: &Arc<crate::upstream::Endpoint>) -> InFlight {
        ep.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(ep.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// CORS before anything else: a preflight is answered here (`Err`); otherwise the origin
/// to allow on the response, if the route allows it, and the route's CORS settings.
// The refusal is the response itself, returned in place; boxing it would allocate on the
// refusal path for nothing.
#[allow(clippy::result_large_err)]
fn cors_check<'c>(
    cors: Option<&'c CorsConfig>,
    req: &Request<RequestBody>,
) -> Result<(Option<HeaderValue>, Option<&'c CorsConfig>), Response<Body>> {
    let Some(c) = cors else {
        return Ok((None, None));
    };
    let origin = req.headers().get(header::ORIGIN).cloned();
    if let Some(o) = &origin {
        if req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return Err(preflight(c, o));
        }
    }
    Ok((origin.filter(|o| origin_allowed(c, o)), Some(c)))
}

/// The CORS headers of an allowed origin's response.
fn add_cors_headers(resp: &mut Response<Body>, c: &CorsConfig, origin: &HeaderValue) {
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin(c, origin));
    h.append(header::VARY, HeaderValue::from_static("origin"));
    if c.credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// The body limit (by `Content-Length`) and authentication: the consumer it names (none
/// without auth), or the refusal.
// The refusal is the response itself, returned in place; boxing it would allocate on the
// refusal path for nothing.
#[allow(clippy::result_large_err)]
fn admit(
    route: &Route,
    req: &Request<RequestBody>,
    max_body: u64,
    content_length: Option<u64>,
) -> Result<Option<String>, Response<Body>> {
    if let Some(l) = content_length.filter(|l| *l > max_body) {
        return Err(answer(
            Reason::BodyTooLarge,
            &format!("body of {l} bytes is over the limit of {max_body} bytes"),
        ));
    }
    let Some(a) = &route.auth else {
        return Ok(None);
    };
    match a.authenticate(req.headers(), req.uri().query()) {
        Ok(c) => Ok(Some(c)),
        Err(f) => {
            let mut r = answer(Reason::Unauthorized, &f.message);
            if let Ok(v) = HeaderValue::from_str(&f.challenge) {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            Err(r)
        }
    }
}

/// The answer to a request a rate limit refused: `Some(wait)` past the limit (with
/// `Retry-After`), `None` when the shared limiter could not be asked.
fn rate_limited(refusal: Option<Duration>) -> Response<Body> {
    match refusal {
        Some(after) => {
            let mut r = answer(Reason::RateLimited, "rate limit exceeded");
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
        None => answer(
            Reason::LimiterUnavailable,
            "the shared rate limiter is unavailable",
        ),
    }
}

/// The forwarding headers of one request: each replaces the client's (`None`: drops it). A
/// client value that cannot be extended (XFF) or is not replaced (XFH without a host) passes
/// through.
struct Forwarding {
    names: [HeaderName; 4],
    xff: Option<HeaderValue>,
    proto: HeaderValue,
    consumer: Option<HeaderValue>,
    /// The client's Host (or the authority of an absolute URI).
    original_host: Option<HeaderValue>,
    /// Whether `original_host` came from the Host header.
    host_in_headers: bool,
}

impl Forwarding {
    fn new(peer: &Remote, consumer: Option<&str>, headers: &HeaderMap, uri: &http::Uri) -> Self {
        let (original_host, host_in_headers) = match headers.get(header::HOST) {
            Some(h) => (Some(h.clone()), true),
            None => (
                uri.authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
                false,
            ),
        };
        let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) => {
                HeaderValue::from_str(&format!("{prev}, {}", peer.ip.to_str().unwrap_or("")))
            }
            None => Ok(peer.ip.clone()),
        };
        Forwarding {
            names: [
                X_FORWARDED_FOR,
                X_FORWARDED_PROTO,
                X_FORWARDED_HOST,
                X_WEFT_CONSUMER,
            ],
            xff: xff.ok(),
            proto: HeaderValue::from_static(if peer.tls { "https" } else { "http" }),
            consumer: consumer.and_then(|c| HeaderValue::from_str(c).ok()),
            original_host,
            host_in_headers,
        }
    }

    /// The (name, value) pairs to set, with the request id; the first `.1` are used.
    #[allow(clippy::type_complexity)]
    fn list<'a>(
        &'a self,
        rid_header: &'a HeaderName,
        request_id: &'a HeaderValue,
    ) -> ([(&'a HeaderName, Option<&'a HeaderValue>); 5], usize) {
        let [xff_n, xfp_n, xfh_n, consumer_n] = &self.names;
        let mut forwarded: [(&HeaderName, Option<&HeaderValue>); 5] = [(consumer_n, None); 5];
        let mut n = 0;
        for (k, v) in [
            (xff_n, self.xff.as_ref().map(Some)),
            (xfp_n, Some(Some(&self.proto))),
            (xfh_n, self.original_host.as_ref().map(Some)),
            (rid_header, Some(Some(request_id))),
            (consumer_n, Some(self.consumer.as_ref())),
        ] {
            if let Some(v) = v {
                forwarded[n] = (k, v);
                n += 1;
            }
        }
        (forwarded, n)
    }
}

/// The upstream head's edits: the forwarding headers into the map (unless weft's client
/// writes them straight into the head, `direct`), then the route's removals and additions,
/// and the client's Host kept over them (it is usually still in place).
fn edit_upstream_headers(
    headers: &mut HeaderMap,
    route: &Route,
    forwarded: &[(&HeaderName, Option<&HeaderValue>)],
    direct: bool,
    h2: bool,
    fw: &Forwarding,
) {
    if !direct {
        for (k, v) in forwarded {
            match v {
                Some(v) => {
                    headers.insert((*k).clone(), (*v).clone());
                }
                None => {
                    headers.remove(*k);
                }
            }
        }
        for h in &route.remove_headers {
            headers.remove(h);
        }
        for (k, v) in &route.add_headers {
            headers.insert(k.clone(), v.clone());
        }
    }
    if !h2 {
        if let Some(h) = &fw.original_host {
            let touched = !fw.host_in_headers
                || route.remove_headers.contains(&header::HOST)
                || route.add_headers.iter().any(|(k, _)| k == header::HOST);
            if touched {
                headers.insert(header::HOST, h.clone());
            }
        }
    }
}

/// A retry within the route's budget: the backoff before it (full jitter, growing with the
/// attempt), or `None` when the budget is spent. Counted either way.
fn retry_backoff(route: &Route, attempt: u32) -> Option<Duration> {
    if !route.budget.as_ref().is_none_or(|b| b.withdraw()) {
        metrics::counter!("weft_gateway_retry_budget_exhausted_total", "route" => route.name.clone())
            .increment(1);
        return None;
    }
    metrics::counter!("weft_gateway_retries_total", "route" => route.name.clone()).increment(1);
    Some(Duration::from_millis(
        (route.upstream.rng.next_f64() * (10u64 << attempt.min(4)) as f64) as u64,
    ))
}

/// What an upstream request through hyper's client is made of, beside its headers and body.
struct UpHead<'a> {
    method: &'a Method,
    path_and_query: &'a http::uri::PathAndQuery,
    h2: bool,
    /// The upstream speaks TLS.
    https: bool,
    /// The last attempt: the headers are moved, not copied.
    last: bool,
}

/// An attempt's request for hyper's client (h2c, streamed bodies, upgrades): the endpoint's
/// URI, the head, and the body (the replayable copy, else the stream, taken once).
// The refusal is the response itself, returned in place (as in `admit`).
#[allow(clippy::result_large_err)]
fn hyper_request(
    ep: &crate::upstream::Endpoint,
    head: UpHead<'_>,
    headers: &mut HeaderMap,
    replay: &Option<Bytes>,
    stream: &mut Option<Body>,
) -> Result<Request<Body>, (Response<Body>, Outcome)> {
    let scheme = if head.https {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    };
    let uri = http::Uri::builder()
        .scheme(scheme)
        .authority(ep.authority.clone())
        .path_and_query(head.path_and_query.clone())
        .build()
        .map_err(|e| {
            ignored(
                Reason::BadRequest,
                &format!("cannot build the upstream URI: {e}"),
            )
        })?;
    let body = match (replay, stream.take()) {
        (Some(b), _) if b.is_empty() => empty(),
        (Some(b), _) => full(b.clone()),
        (None, Some(s)) => s,
        (None, None) => empty(),
    };
    let mut up = Request::new(body);
    *up.method_mut() = head.method.clone();
    *up.uri_mut() = uri;
    *up.headers_mut() = if head.last {
        std::mem::take(headers)
    } else {
        headers.clone()
    };
    if head.h2 {
        *up.version_mut() = http::Version::HTTP_2;
    }
    Ok(up)
}

/// How one attempt ended, once its endpoint has been told (latency, outlier ejection).
enum Settled {
    /// A response (with the in-flight guard that lasts as long as its body).
    Answered(UpResp, Option<InFlight>),
    /// No response: timeout, deadline, connect or upstream error.
    Failed(Reason),
    /// The request body went over the limit while it was sent.
    TooLarge,
    /// The client's request body was malformed or broke off while it was sent: the client's
    /// fault, not the endpoint's (which is not charged with a failure).
    ClientBody,
}

/// Feeds an attempt's result to its endpoint and classifies it.
fn settle(
    result: Result<Result<UpResp, SendError>, ()>,
    ep: &Arc<crate::upstream::Endpoint>,
    set: &crate::lb::EndpointSet,
    outlier: &crate::config::OutlierConfig,
    t0: Instant,
    deadline_hit: bool,
    guard: Option<InFlight>,
) -> Settled {
    let now = Instant::now();
    match result {
        Err(()) => {
            ep.observe_latency(now - t0);
            ep.record(true, outlier, &set.endpoints, now);
            drop(guard);
            Settled::Failed(if deadline_hit {
                Reason::Deadline
            } else {
                Reason::UpstreamTimeout
            })
        }
        Ok(Err(e)) => {
            if e.body_too_large() {
                return Settled::TooLarge;
            }
            if e.client_body_failed() {
                drop(guard);
                return Settled::ClientBody;
            }
            ep.record(true, outlier, &set.endpoints, now);
            drop(guard);
            tracing::debug!(endpoint = %ep.address, "upstream error: {e:?}");
            Settled::Failed(if e.is_connect() {
                Reason::ConnectError
            } else {
                Reason::UpstreamError
            })
        }
        Ok(Ok(r)) => {
            ep.observe_latency(now - t0);
            let failed = r.status().is_server_error();
            ep.record(failed, outlier, &set.endpoints, now);
            Settled::Answered(r, guard)
        }
    }
}

fn origin_allowed(c: &CorsConfig, o: &HeaderValue) -> bool {
    c.origins
        .iter()
        .any(|x| x == "*" || x.as_bytes() == o.as_bytes())
}

/// `*` for a wildcard policy without credentials, else the (allowed) origin itself.
fn allow_origin(c: &CorsConfig, origin: &HeaderValue) -> HeaderValue {
    if c.origins.iter().any(|x| x == "*") && !c.credentials {
        HeaderValue::from_static("*")
    } else {
        origin.clone()
    }
}

fn preflight(c: &CorsConfig, origin: &HeaderValue) -> Response<Body> {
    if !origin_allowed(c, origin) {
        return answer(
            Reason::BadRequest,
            "origin not allowed by the route's CORS policy",
        );
    }
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin(c, origin));
    if let Ok(v) = HeaderValue::from_str(&c.methods.join(", ")) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if let Ok(v) = HeaderValue::from_str(&c.headers.join(", ")) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(c.max_age_secs),
    );
    if c.credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, X-Private, upgrade"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("x-public", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        let mut names: Vec<&str> = plain.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-public"]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert!(h.get("x-private").is_none() && h.get("keep-alive").is_none());
    }

    #[test]
    fn remote_renders_the_ip_once() {
        let r = Remote::new("[::1]:8080".parse().unwrap());
        assert_eq!(r.ip, "::1");
        let r = Remote::new("10.1.2.3:1".parse().unwrap());
        assert_eq!(r.ip, "10.1.2.3");
    }
}
