//! The gateway against real upstream servers on loopback.

use crate::common;

use std::sync::atomic::Ordering;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Duration;

fn two_endpoints(a: &TestUpstream, b: &TestUpstream, extra: &str) -> String {
    format!(
        r#"
[[route]]
name = "api"
path_prefix = "/api"
rewrite = ""
upstream = "backend"
add_headers = {{ "x-added" = "yes" }}
remove_headers = ["x-secret"]
add_response_headers = {{ "x-served-by" = "weft" }}

[[upstream]]
name = "backend"
endpoints = [{{ address = "{}" }}, {{ address = "{}" }}]
{extra}
"#,
        a.addr, b.addr
    )
}

#[tokio::test]
async fn routes_rewrites_and_forwards_headers() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let toml = format!(
        "{}\n[[route]]\nname = \"user\"\npath_template = \"/users/{{id}}/posts/{{*rest}}\"\nrewrite = \"/v2/{{id}}/{{rest}}\"\nupstream = \"backend\"\n",
        two_endpoints(&a, &b, "")
    );
    let gw = TestGateway::start(&toml, None).await;
    let r = get_h(
        gw.addr,
        "/api/x/y?q=1",
        &[("x-secret", "s"), ("x-forwarded-for", "10.0.0.9")],
    )
    .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["path"], "/x/y?q=1");
    assert_eq!(j["headers"]["x-added"], "yes");
    assert!(j["headers"].get("x-secret").is_none());
    assert_eq!(j["headers"]["x-forwarded-for"], "10.0.0.9, 127.0.0.1");
    assert_eq!(j["headers"]["x-forwarded-proto"], "http");
    assert!(
        j["headers"]["host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "the client's Host is kept"
    );
    let rid = j["headers"]["x-request-id"].as_str().unwrap();
    assert_eq!(rid.len(), 32);
    assert_eq!(r.headers["x-request-id"], rid);
    assert_eq!(r.headers["x-served-by"], "weft");
    // A sane client request id is kept.
    let r = get_h(gw.addr, "/api", &[("x-request-id", "abc-123")]).await;
    assert_eq!(r.json()["headers"]["x-request-id"], "abc-123");
    assert_eq!(r.json()["path"], "/");
    // Template rewrite.
    let r = get(gw.addr, "/users/42/posts/a/b").await;
    assert_eq!(r.json()["path"], "/v2/42/a/b");
    // No route.
    let r = get(gw.addr, "/apix").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.reason(), "no-route");
    gw.shutdown().await;
}

#[tokio::test]
async fn weighted_round_robin_spreads_by_weight() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let toml = format!(
        "[[route]]\nname = \"r\"\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nendpoints = [{{ address = \"{}\", weight = 3 }}, {{ address = \"{}\" }}]\n",
        a.addr, b.addr
    );
    let gw = TestGateway::start(&toml, None).await;
    for _ in 0..40 {
        assert_eq!(get(gw.addr, "/").await.status, 200);
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), 30);
    assert_eq!(b.hits.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn consecutive_failures_eject_an_endpoint_and_state_survives_reload() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    a.fail.store(500, Ordering::SeqCst);
    let extra = "[upstream.outlier]\nconsecutive_failures = 3\nbase_ejection_ms = 60000\npanic_threshold_percent = 0\n";
    let toml = two_endpoints(&a, &b, extra);
    let gw = TestGateway::start(&toml, None).await;
    let mut failures = 0;
    for _ in 0..20 {
        if get(gw.addr, "/api/").await.status == 500 {
            failures += 1;
        }
    }
    assert_eq!(failures, 3, "three failures eject a; the rest go to b");
    let st = gw.gw.status();
    let eps = &st["upstreams"][0]["endpoints"];
    let ea = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == a.addr.to_string())
        .unwrap();
    assert_eq!(ea["ejected"], true);
    assert_eq!(ea["ejections"], 1);
    // A reload with a changed route keeps the ejection (state is per endpoint, not per table).
    let toml2 = toml.replace("x-added", "x-added2");
    gw.gw
        .reload(weft_gateway::Config::from_toml(&toml2, "t").unwrap())
        .unwrap();
    assert_eq!(gw.gw.generation(), 2);
    for _ in 0..10 {
        let r = get(gw.addr, "/api/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["headers"]["x-added2"], "yes");
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn ejection_is_capped_and_panic_mode_uses_everything() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    a.fail.store(503, Ordering::SeqCst);
    b.fail.store(503, Ordering::SeqCst);
    let extra = "[upstream.outlier]\nconsecutive_failures = 1\nmax_ejection_percent = 50\npanic_threshold_percent = 0\n";
    let gw = TestGateway::start(&two_endpoints(&a, &b, extra), None).await;
    for _ in 0..10 {
        assert_eq!(get(gw.addr, "/api").await.status, 503);
    }
    let st = gw.gw.status();
    let ejected = st["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ejected"] == true)
        .count();
    assert_eq!(ejected, 1, "at most 50% of 2 endpoints may be ejected");
    // Panic threshold: with 1 of 2 usable (50%) and a threshold of 60%, both get traffic.
    let extra = "[upstream.outlier]\nconsecutive_failures = 1\nmax_ejection_percent = 50\npanic_threshold_percent = 60\n";
    let a2 = TestUpstream::start("a2").await;
    let b2 = TestUpstream::start("b2").await;
    a2.fail.store(500, Ordering::SeqCst);
    let gw2 = TestGateway::start(&two_endpoints(&a2, &b2, extra), None).await;
    for _ in 0..20 {
        get(gw2.addr, "/api").await;
    }
    assert!(
        a2.hits.load(Ordering::SeqCst) >= 5,
        "panic mode keeps sending to the ejected endpoint: {}",
        a2.hits.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn retries_only_idempotent_requests_on_another_endpoint() {
    let b = TestUpstream::start("b").await;
    // A port with nothing listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let toml = format!(
        r#"
[[route]]
name = "r"
upstream = "u"
retry = {{ attempts = 2 }}

[[upstream]]
name = "u"
endpoints = [{{ address = "{dead}" }}, {{ address = "{}" }}]
outlier = {{ consecutive_failures = 0 }}
"#,
        b.addr
    );
    let gw = TestGateway::start(&toml, None).await;
    for _ in 0..10 {
        let r = get(gw.addr, "/").await;
        assert_eq!(r.status, 200, "GET is retried on the other endpoint");
    }
    let mut connect_errors = 0;
    for _ in 0..10 {
        let r = send(gw.addr, "POST", "/", &[], b"x").await;
        if r.status == 502 {
            assert_eq!(r.reason(), "connect-error");
            connect_errors += 1;
        }
    }
    assert_eq!(
        connect_errors, 5,
        "POST is not retried: half of them hit the dead endpoint"
    );
}

/// 100 requests to a route with `retry` whose two endpoints both answer 503: the upstream
/// attempts in all.
async fn attempts_for_100_failing_requests(retry: &str) -> usize {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    a.fail.store(503, Ordering::SeqCst);
    b.fail.store(503, Ordering::SeqCst);
    let toml = format!(
        r#"
[[route]]
name = "r"
upstream = "u"
retry = {retry}

[[upstream]]
name = "u"
endpoints = [{{ address = "{}" }}, {{ address = "{}" }}]
outlier = {{ consecutive_failures = 0 }}
"#,
        a.addr, b.addr
    );
    let gw = TestGateway::start(&toml, None).await;
    for _ in 0..100 {
        assert_eq!(get(gw.addr, "/").await.status, 503);
    }
    (a.hits.load(Ordering::SeqCst) + b.hits.load(Ordering::SeqCst)) as usize
}

#[tokio::test]
async fn retry_budget_limits_retries() {
    let total = attempts_for_100_failing_requests(
        "{ attempts = 2, budget_ratio = 0.1, budget_min_per_sec = 1 }",
    )
    .await;
    // 100 requests; retries at most 10% of them plus the 1/s floor over the 10 s budget window.
    assert!((100..=125).contains(&total), "{total} upstream attempts");
}

/// The budget is exact for ratios whose inverse is not whole, and retried requests count
/// toward it: 100 failing requests at 0.3 and no floor make exactly 30 retries.
#[tokio::test]
async fn retry_budget_is_exact() {
    let total = attempts_for_100_failing_requests(
        "{ attempts = 2, budget_ratio = 0.3, budget_min_per_sec = 0 }",
    )
    .await;
    assert_eq!(total, 130, "100 requests and 30 retries");
}

#[tokio::test]
async fn breaker_opens_on_failures_and_answers_503() {
    let a = TestUpstream::start("a").await;
    a.fail.store(500, Ordering::SeqCst);
    let toml = format!(
        r#"
[[route]]
name = "r"
upstream = "u"
breaker = {{ failure_rate = 50, window = 10, minimum_calls = 5, open_ms = 60000 }}

[[upstream]]
name = "u"
endpoints = [{{ address = "{}" }}]
outlier = {{ consecutive_failures = 0 }}
"#,
        a.addr
    );
    let gw = TestGateway::start(&toml, None).await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let r = get(gw.addr, "/").await;
        statuses.push((r.status.as_u16(), r.reason().to_string()));
    }
    assert!(statuses[..5].iter().all(|s| s.0 == 500), "{statuses:?}");
    assert!(
        statuses[5..]
            .iter()
            .all(|s| s.0 == 503 && s.1 == "breaker-open"),
        "{statuses:?}"
    );
    assert_eq!(a.hits.load(Ordering::SeqCst), 5);
    let st = gw.gw.status();
    assert_eq!(st["routes"][0]["breaker"], "open");
    // The Hystrix view's counts: 5 failures admitted, 5 refused while open.
    let stats = &st["routes"][0]["breaker_stats"];
    assert_eq!(stats["totals"]["failure"], 5, "{stats}");
    assert_eq!(stats["totals"]["rejected"], 5, "{stats}");
    assert_eq!(stats["totals"]["success"], 0, "{stats}");
    assert_eq!(stats["window"]["failure_rate"], 100.0, "{stats}");
}

#[tokio::test]
async fn deadlines_and_per_try_timeouts() {
    let a = TestUpstream::start("a").await;
    let toml = format!(
        r#"
[[route]]
name = "r"
upstream = "u"
timeout_ms = 200

[[upstream]]
name = "u"
endpoints = [{{ address = "{}" }}]
"#,
        a.addr
    );
    let gw = TestGateway::start(&toml, None).await;
    let r = get(gw.addr, "/slow/2000").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.reason(), "deadline");
    assert_eq!(get(gw.addr, "/slow/10").await.status, 200);
}

#[tokio::test]
async fn body_limits_and_streaming() {
    let a = TestUpstream::start("a").await;
    let toml = format!(
        "[server]\nmax_body_bytes = 4000000\n{}",
        single_route(a.addr, "")
    );
    let gw = TestGateway::start(&toml, None).await;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let r = send(gw.addr, "POST", "/echo", &[], &big).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), big.len());
    assert!(r.body == big[..]);
    let too_big = vec![0u8; 4_000_001];
    let r = send(gw.addr, "POST", "/echo", &[], &too_big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.reason(), "body-too-large");
    // Chunked (no length): the limit applies while streaming.
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        for _ in 0..50 {
            if tx
                .send(Ok(http_body::Frame::data(bytes::Bytes::from(vec![
                    1u8;
                    100_000
                ]))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
    let req = http::Request::post(format!("http://{}/echo", gw.addr))
        .body(body)
        .unwrap();
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let resp = c.request(req).await;
    // Either the gateway answers 413, or the exchange is cut; the upstream never gets more
    // than the limit.
    if let Ok(resp) = resp {
        use http_body_util::BodyExt;
        let status = resp.status();
        let got = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        assert!(status == 413 || got <= 4_000_000, "{status} {got}");
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn malformed_requests_get_400_and_slow_headers_time_out() {
    let a = TestUpstream::start("a").await;
    let toml = format!(
        "[server]\nheader_read_timeout_ms = 300\n{}",
        single_route(a.addr, "")
    );
    let gw = TestGateway::start(&toml, None).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    // Slowloris: a partial head is cut after the header-read timeout.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let t0 = tokio::time::Instant::now();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "connection not closed");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(a.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let a = TestUpstream::start("a").await;
    let toml = single_route(a.addr, "");
    let gw = TestGateway::start(&toml, None).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    s.write_all(b"ping").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"echo:ping");
}

#[tokio::test]
async fn h2c_to_clients_and_upstreams() {
    let a = TestUpstream::start_h2("a").await;
    let toml = format!(
        "[[route]]\nname = \"r\"\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nprotocol = \"h2c\"\nendpoints = [{{ address = \"{}\" }}]\n",
        a.addr
    );
    let gw = TestGateway::start(&toml, None).await;
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    for _ in 0..3 {
        let req = http::Request::get(format!("http://{}/hello", gw.addr))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(j["version"], "HTTP/2.0");
        assert_eq!(j["path"], "/hello");
    }
}

#[tokio::test]
async fn active_health_checks_take_endpoints_out_and_back() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let extra = "[upstream.health_check]\ninterval_ms = 50\ntimeout_ms = 200\nhealthy_threshold = 2\nunhealthy_threshold = 2\n[upstream.outlier]\npanic_threshold_percent = 0\n";
    let gw = TestGateway::start(&two_endpoints(&a, &b, extra), None).await;
    a.health.store(503, Ordering::SeqCst);
    let healthy = |gw: &TestGateway, addr: std::net::SocketAddr| {
        gw.gw.status()["upstreams"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == addr.to_string())
            .unwrap()["healthy"]
            .as_bool()
            .unwrap()
    };
    for _ in 0..100 {
        if !healthy(&gw, a.addr) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!healthy(&gw, a.addr));
    let before = a.hits.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(get(gw.addr, "/api").await.server(), "b");
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), before);
    a.health.store(200, Ordering::SeqCst);
    for _ in 0..100 {
        if healthy(&gw, a.addr) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(healthy(&gw, a.addr));
}

#[tokio::test]
async fn sticky_hashing_on_a_header() {
    let ups: Vec<TestUpstream> = futures::future::join_all(
        (0..4).map(|i| TestUpstream::start(Box::leak(format!("s{i}").into_boxed_str()))),
    )
    .await;
    for balance in ["ring_hash", "maglev"] {
        let eps: Vec<String> = ups
            .iter()
            .map(|u| format!("{{ address = \"{}\" }}", u.addr))
            .collect();
        let toml = format!(
            "[[route]]\nname = \"r\"\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbalance = \"{balance}\"\nhash_on = \"header:x-user\"\nendpoints = [{}]\n",
            eps.join(", ")
        );
        let gw = TestGateway::start(&toml, None).await;
        let mut seen = std::collections::HashSet::new();
        for user in 0..20 {
            let u = format!("user{user}");
            let first = get_h(gw.addr, "/", &[("x-user", &u)]).await.server();
            for _ in 0..3 {
                assert_eq!(get_h(gw.addr, "/", &[("x-user", &u)]).await.server(), first);
            }
            seen.insert(first);
        }
        assert!(seen.len() >= 3, "{balance}: users spread over {seen:?}");
    }
}

#[tokio::test]
async fn cors_preflight_and_headers() {
    let a = TestUpstream::start("a").await;
    let toml = single_route(
        a.addr,
        "cors = { origins = [\"https://app.example\"], credentials = true }",
    );
    let gw = TestGateway::start(&toml, None).await;
    let r = send(
        gw.addr,
        "OPTIONS",
        "/",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "PUT"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    assert!(r.headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("PUT"));
    assert_eq!(
        a.hits.load(Ordering::SeqCst),
        0,
        "preflight answered by the gateway"
    );
    let r = get_h(gw.addr, "/", &[("origin", "https://app.example")]).await;
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let r = get_h(gw.addr, "/", &[("origin", "https://evil.example")]).await;
    assert!(r.headers.get("access-control-allow-origin").is_none());
    let r = send(
        gw.addr,
        "OPTIONS",
        "/",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "PUT"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let a = TestUpstream::start("a").await;
    let toml = single_route(a.addr, "");
    let gw = TestGateway::start(&toml, None).await;
    let addr = gw.addr;
    let slow = tokio::spawn(async move { get(addr, "/slow/300").await.status });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.shutdown().await;
    assert_eq!(slow.await.unwrap(), 200);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn per_try_timeouts_bound_each_attempt() {
    let slow = TestUpstream::start("a").await;
    let fast = TestUpstream::start("b").await;
    let toml = format!(
        r#"
[[route]]
name = "r"
path_prefix = "/"
upstream = "u"
retry = {{ attempts = 2, per_try_timeout_ms = 100 }}

[[upstream]]
name = "u"
endpoints = [{{ address = "{}" }}, {{ address = "{}" }}]
outlier = {{ consecutive_failures = 0 }}
"#,
        slow.addr, fast.addr
    );
    let gw = TestGateway::start(&toml, None).await;
    // Quick answers are unaffected.
    let t0 = tokio::time::Instant::now();
    for _ in 0..4 {
        let r = get(gw.addr, "/slow/0").await;
        assert_eq!(r.status, 200);
    }
    assert!(t0.elapsed() < Duration::from_secs(2));
    // Every attempt on a hanging path times out after 100 ms; with two attempts the answer is
    // a 504 upstream-timeout after about 200 ms, not a hang.
    let t0 = tokio::time::Instant::now();
    let r = get(gw.addr, "/slow/5000").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.reason(), "upstream-timeout");
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(
        slow.hits.load(Ordering::SeqCst) + fast.hits.load(Ordering::SeqCst),
        6,
        "4 + 2 attempts"
    );
}

#[tokio::test]
async fn breaker_counts_requests_after_retries_and_ejection_counts_attempts() {
    let bad = TestUpstream::start("bad").await;
    let good = TestUpstream::start("good").await;
    bad.fail.store(503, Ordering::SeqCst);
    let toml = format!(
        r#"
[[route]]
name = "r"
upstream = "u"
retry = {{ attempts = 2, budget_ratio = 1.0 }}
breaker = {{ failure_rate = 20, window = 10, minimum_calls = 5, open_ms = 60000 }}

[[upstream]]
name = "u"
endpoints = [{{ address = "{}" }}, {{ address = "{}" }}]
outlier = {{ consecutive_failures = 3, base_ejection_ms = 60000, panic_threshold_percent = 0 }}
"#,
        bad.addr, good.addr
    );
    let gw = TestGateway::start(&toml, None).await;
    for _ in 0..20 {
        assert_eq!(
            get(gw.addr, "/").await.status,
            200,
            "retried on the good endpoint"
        );
    }
    let st = gw.gw.status();
    assert_eq!(
        st["routes"][0]["breaker"], "closed",
        "the route never failed a request"
    );
    let eps = st["upstreams"][0]["endpoints"].as_array().unwrap().clone();
    let b = eps
        .iter()
        .find(|e| e["address"] == bad.addr.to_string())
        .unwrap();
    assert_eq!(
        b["ejected"], true,
        "the endpoint failed 3 attempts in a row"
    );
    assert_eq!(bad.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn breaker_survives_an_unrelated_reload() {
    let a = TestUpstream::start("a").await;
    a.fail.store(500, Ordering::SeqCst);
    let toml = format!(
        "[[route]]\nname = \"r\"\nupstream = \"u\"\nbreaker = {{ window = 10, minimum_calls = 3, open_ms = 60000 }}\n[[upstream]]\nname = \"u\"\nendpoints = [{{ address = \"{}\" }}]\noutlier = {{ consecutive_failures = 0 }}\n",
        a.addr
    );
    let gw = TestGateway::start(&toml, None).await;
    for _ in 0..3 {
        get(gw.addr, "/").await;
    }
    assert_eq!(get(gw.addr, "/").await.reason(), "breaker-open");
    let more = format!("{toml}[[route]]\nname = \"other\"\npath = \"/other\"\nupstream = \"u\"\n");
    gw.gw
        .reload(weft_gateway::Config::from_toml(&more, "t").unwrap())
        .unwrap();
    assert_eq!(
        get(gw.addr, "/").await.reason(),
        "breaker-open",
        "reload kept the open breaker"
    );
    // Changing the breaker's settings starts a fresh one.
    let changed = toml.replace("minimum_calls = 3", "minimum_calls = 4");
    gw.gw
        .reload(weft_gateway::Config::from_toml(&changed, "t").unwrap())
        .unwrap();
    assert_eq!(get(gw.addr, "/").await.status, 500);
}

#[tokio::test]
async fn tcp_health_checks() {
    let a = TestUpstream::start("a").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let toml = format!(
        "[[route]]\nname = \"r\"\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nendpoints = [{{ address = \"{}\" }}, {{ address = \"{dead}\" }}]\nhealth_check = {{ kind = \"tcp\", interval_ms = 30, unhealthy_threshold = 1 }}\noutlier = {{ consecutive_failures = 0, panic_threshold_percent = 0 }}\n",
        a.addr
    );
    let gw = TestGateway::start(&toml, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        assert_eq!(
            get(gw.addr, "/").await.status,
            200,
            "the dead endpoint was taken out"
        );
    }
}

#[tokio::test]
async fn thread_per_core_workers_share_one_port_and_drain_on_shutdown() {
    let a = TestUpstream::start("a").await;
    let toml = single_route(a.addr, "");
    let cfg = weft_gateway::Config::from_toml(&toml, "t.toml").unwrap();
    let gw = weft_gateway::Gateway::new(cfg, None).unwrap();
    let listeners = weft_gateway::bind_workers("127.0.0.1:0".parse().unwrap(), 3).unwrap();
    let port = listeners[0].local_addr().unwrap().port();
    assert!(listeners
        .iter()
        .all(|l| l.local_addr().unwrap().port() == port));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // A port in use (here by the first group, which uses SO_REUSEPORT itself) is refused.
    let e = weft_gateway::bind_workers(addr, 2).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // Pinned workers (each on one CPU; on this test's thread too, which ends with it).
    let opts = weft_gateway::ThreadOptions::default().pin_cpus(true);
    let task = tokio::spawn(weft_gateway::serve_threads_with(
        listeners,
        gw,
        async move {
            let _ = rx.await;
        },
        opts,
    ));
    // A new connection each time: they are dealt round robin to the three workers, so two
    // of three are handed from the accepting worker to another one (which worker served a
    // request is not observable here; every request must succeed wherever it lands).
    for _ in 0..60 {
        assert_eq!(get(addr, "/x").await.status, 200);
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), 60);
    // A request in flight on a worker finishes before shutdown returns.
    let slow = tokio::spawn(async move { get(addr, "/slow/300").await.status });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = tx.send(());
    assert_eq!(slow.await.unwrap(), 200);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("all workers stop")
        .unwrap()
        .unwrap();
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // Bad input: no listener at all.
    let cfg = weft_gateway::Config::from_toml(&toml, "t.toml").unwrap();
    let gw = weft_gateway::Gateway::new(cfg, None).unwrap();
    let e = weft_gateway::serve_threads(Vec::new(), gw, async {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("at least one listener"));
}

/// The request future's size: the request path is one async function so that it stays small
/// (see the comment on `Gateway::handle`). 4,304 bytes in a debug build (4,256 in release)
/// before its stages became synchronous helpers, 4,112 (4,064) after; this bound keeps a
/// change from growing it unnoticed.
#[tokio::test]
async fn the_request_future_stays_small() {
    let toml = r#"
[[route]]
name = "r"
upstream = "u"

[[upstream]]
name = "u"
endpoints = [{ address = "127.0.0.1:9" }]
"#;
    let gw = TestGateway::start(toml, None).await;
    let peer = weft_gateway::proxy::Remote::new("127.0.0.1:1".parse().unwrap());
    let req = http::Request::new(weft_gateway::proxy::RequestBody::Buffered(
        bytes::Bytes::new(),
    ));
    let fut = gw.gw.handle(req, &peer);
    let size = std::mem::size_of_val(&fut);
    eprintln!("request future: {size} bytes");
    assert!(size <= 4112, "the request future grew to {size} bytes");
}
