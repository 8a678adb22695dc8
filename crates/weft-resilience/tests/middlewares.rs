//! The rest of the family, deterministic with paused time where time matters.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tower::{BoxError, Service, ServiceExt};
use weft_resilience::builder::ResilienceBuilder;
use weft_resilience::bulkhead::{Bulkhead, BulkheadFull};
use weft_resilience::circuit::{
    is_rejected, rejection, CallNotPermitted, CircuitBreaker, CircuitBreakerLayer, State,
};
use weft_resilience::ratelimit::RateLimiter;
use weft_resilience::retry::{HttpRetry, RetryClassify, RetryDecision, RetryPolicy};
use weft_resilience::throttle::AdaptiveThrottle;
use weft_resilience::HttpClassifier;

fn always_retry<T, E>(r: &Result<T, E>) -> RetryDecision {
    if r.is_err() {
        RetryDecision::Yes { after: None }
    } else {
        RetryDecision::No
    }
}

#[tokio::test(start_paused = true)]
async fn retry_stops_at_max_attempts_and_max_elapsed() {
    let calls = AtomicU32::new(0);
    let p = RetryPolicy::new(4, Duration::from_millis(100), Duration::from_secs(1)).unwrap();
    let r: Result<(), &str> = p
        .call(always_retry, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err("no") }
        })
        .await;
    assert!(r.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // max elapsed: a Retry-After longer than the budget of time ends the retries.
    calls.store(0, Ordering::SeqCst);
    let p = RetryPolicy::new(10, Duration::from_millis(100), Duration::from_secs(1))
        .unwrap()
        .max_elapsed(Duration::from_secs(3));
    let start = tokio::time::Instant::now();
    let _: Result<(), &str> = p
        .call(
            |_: &Result<(), &str>| RetryDecision::Yes {
                after: Some(Duration::from_secs(2)),
            },
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err("no") }
            },
        )
        .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "Retry-After of 2s honoured once, then over 3s"
    );
    assert!(start.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn full_jitter_backoff_stays_within_its_cap() {
    let p = RetryPolicy::new(10, Duration::from_millis(100), Duration::from_secs(1)).unwrap();
    for n in 0..10 {
        let cap = Duration::from_millis(100 * (1 << n)).min(Duration::from_secs(1));
        for _ in 0..100 {
            assert!(p.backoff(n) <= cap);
        }
    }
    let fixed = RetryPolicy::new(3, Duration::from_millis(100), Duration::from_secs(1))
        .unwrap()
        .random(|| 0.5);
    assert_eq!(fixed.backoff(2), Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn retry_budget_is_never_exceeded() {
    // 10 % of requests, no floor: 1000 failing requests may retry at most ~100 times.
    let p = Arc::new(
        RetryPolicy::new(5, Duration::from_millis(1), Duration::from_millis(2))
            .unwrap()
            .budget(Duration::from_secs(10), 0, 0.1)
            .unwrap(),
    );
    let attempts = Arc::new(AtomicU32::new(0));
    for _ in 0..1000 {
        let a = attempts.clone();
        let _: Result<(), &str> = p
            .call(always_retry, || {
                a.fetch_add(1, Ordering::SeqCst);
                async { Err("down") }
            })
            .await;
    }
    let retries = attempts.load(Ordering::SeqCst) - 1000;
    assert_eq!(retries, 100, "1000 requests with a 10% budget");
}

/// The budget's promise for ratios whose inverse is not whole (tower's `TpsBudget` let 0.3
/// through 33 times and 0.4 through 50 times in 100 requests).
#[tokio::test(start_paused = true)]
async fn retry_budget_is_exact_for_every_ratio() {
    for (ratio, want) in [(0.1f32, 10), (0.25, 25), (0.3, 30), (0.4, 40), (0.7, 70)] {
        let p = RetryPolicy::new(2, Duration::from_millis(1), Duration::from_millis(2))
            .unwrap()
            .budget(Duration::from_secs(10), 0, ratio)
            .unwrap();
        let attempts = AtomicU32::new(0);
        for _ in 0..100 {
            let _: Result<(), &str> = p
                .call(always_retry, || {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    async { Err("down") }
                })
                .await;
        }
        let retries = attempts.load(Ordering::SeqCst) - 100;
        assert_eq!(retries, want, "ratio {ratio}");
    }
}

#[test]
fn retry_budget_settings_are_errors_not_panics() {
    let p = || RetryPolicy::new(2, Duration::from_millis(1), Duration::from_millis(2)).unwrap();
    for (ttl, ratio) in [
        (Duration::from_millis(500), 0.2),
        (Duration::from_secs(61), 0.2),
        (Duration::from_secs(10), -0.5),
        (Duration::from_secs(10), f32::NAN),
    ] {
        let e = p().budget(ttl, 1, ratio).unwrap_err();
        assert!(e.to_string().contains("retry budget"), "{e}");
    }
}

#[test]
fn http_retry_only_for_idempotent_methods_and_honours_retry_after() {
    let get = http::Request::get("/").body(()).unwrap();
    let post = http::Request::post("/").body(()).unwrap();
    let busy: Result<http::Response<()>, ()> = Ok(http::Response::builder()
        .status(503)
        .header("retry-after", "7")
        .body(())
        .unwrap());
    assert_eq!(
        HttpRetry.decide(&get, &busy),
        RetryDecision::Yes {
            after: Some(Duration::from_secs(7))
        }
    );
    assert_eq!(
        HttpRetry.decide(&post, &busy),
        RetryDecision::No,
        "POST is not retried"
    );
    let bad: Result<http::Response<()>, ()> =
        Ok(http::Response::builder().status(400).body(()).unwrap());
    assert_eq!(HttpRetry.decide(&get, &bad), RetryDecision::No);
}

#[test]
fn rate_limiter_never_over_admits() {
    use governor::clock::FakeRelativeClock;
    let clock = FakeRelativeClock::default();
    let rl = RateLimiter::<String, _>::with_clock(10, 5, clock.clone()).unwrap();
    let key = "alice".to_string();
    let mut admitted = 0;
    // 3 simulated seconds in 1 ms steps, hammering all the time.
    for _ in 0..3000 {
        for _ in 0..3 {
            if rl.check(&key).is_ok() {
                admitted += 1;
            }
        }
        clock.advance(Duration::from_millis(1));
    }
    // Burst of 5 plus 10/s for 3 s.
    assert!(admitted <= 5 + 30, "admitted {admitted}");
    assert!(admitted >= 30, "admitted {admitted}");
    // Keys are independent.
    assert!(rl.check(&"bob".to_string()).is_ok());
    let mut e = None;
    for _ in 0..100 {
        if let Err(x) = rl.check(&key) {
            e = Some(x);
            break;
        }
    }
    let e = e.expect("an exhausted key is limited");
    assert!(e.retry_after <= Duration::from_millis(100));
    assert!(RateLimiter::<String>::new(0, 1).is_err());
}

#[tokio::test(start_paused = true)]
async fn bulkhead_bounds_concurrency_and_the_wait() {
    let b = Bulkhead::new(2, Duration::from_millis(50)).unwrap();
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (b, running, peak) = (b.clone(), running.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            b.call(|| async {
                let n = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                running.fetch_sub(1, Ordering::SeqCst);
            })
            .await
        }));
    }
    let mut full = 0;
    for t in tasks {
        if t.await.unwrap() == Err(BulkheadFull { max: 2 }) {
            full += 1;
        }
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    assert_eq!(
        full, 4,
        "the rest waited 50 ms, less than a call, and were rejected"
    );
    assert!(Bulkhead::new(0, Duration::ZERO).is_err());
}

#[tokio::test(start_paused = true)]
async fn adaptive_throttle_rejects_in_proportion() {
    let t = AdaptiveThrottle::with_random(2.0, Duration::from_secs(60), || 0.5).unwrap();
    assert!(t.admit().is_ok());
    // The backend accepts nothing: requests grow, accepts stay 0, probability tends to 1.
    for _ in 0..100 {
        if t.admit().is_ok() {
            t.record(false);
        }
    }
    assert!(t.probability() > 0.9, "p = {}", t.probability());
    assert!(t.admit().is_err());
    // With K = 2 and everything accepted, nothing is rejected.
    let t = AdaptiveThrottle::with_random(2.0, Duration::from_secs(60), || 0.0).unwrap();
    for _ in 0..100 {
        t.admit().unwrap();
        t.record(true);
    }
    assert_eq!(t.probability(), 0.0);
    assert!(AdaptiveThrottle::new(0.5, Duration::from_secs(1)).is_err());
}

#[tokio::test(start_paused = true)]
async fn breaker_as_a_tower_layer_with_the_http_classifier() {
    let breaker = Arc::new(
        CircuitBreaker::builder("http")
            .count_window(4)
            .minimum_calls(4)
            .build()
            .unwrap(),
    );
    let status = Arc::new(AtomicU32::new(500));
    let s = status.clone();
    let inner = tower::service_fn(move |_req: ()| {
        let code = s.load(Ordering::SeqCst) as u16;
        async move { Ok::<_, BoxError>(http::Response::builder().status(code).body(()).unwrap()) }
    });
    let mut svc = tower::ServiceBuilder::new()
        .layer(CircuitBreakerLayer::with_classifier(
            breaker.clone(),
            HttpClassifier,
        ))
        .service(inner);
    // 4xx are the caller's fault: they never open the breaker.
    status.store(404, Ordering::SeqCst);
    for _ in 0..8 {
        svc.ready().await.unwrap().call(()).await.unwrap();
    }
    assert_eq!(breaker.state(), State::Closed);
    status.store(503, Ordering::SeqCst);
    for _ in 0..4 {
        let _ = svc.ready().await.unwrap().call(()).await;
    }
    assert_eq!(breaker.state(), State::Open);
    let e = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(e.downcast_ref::<CallNotPermitted>().is_some(), "{e}");
    assert!(is_rejected(&*e), "the documented helper recognises it: {e}");
    assert_eq!(rejection(&*e).map(|r| r.state), Some(State::Open));
    assert!(!is_rejected(&*BoxError::from("upstream failed")));
}

#[tokio::test(start_paused = true)]
async fn the_builder_composes_retry_breaker_and_timeout() {
    let breaker = Arc::new(
        CircuitBreaker::builder("stack")
            .count_window(20)
            .minimum_calls(6)
            .build()
            .unwrap(),
    );
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let inner = tower::service_fn(move |slow: bool| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            if slow {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok::<_, BoxError>(1u32)
        }
    });
    let mut svc = ResilienceBuilder::<bool, u32>::new()
        .retry(
            RetryPolicy::new(3, Duration::from_millis(10), Duration::from_millis(50)).unwrap(),
            |_: &bool, r: &Result<u32, BoxError>| always_retry(r),
        )
        .circuit_breaker(breaker.clone())
        .timeout(Duration::from_millis(100))
        .service(inner);
    assert_eq!(svc.ready().await.unwrap().call(false).await.unwrap(), 1);
    // A slow call times out per attempt, each attempt counts for the breaker.
    assert!(svc.ready().await.unwrap().call(true).await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1 + 3);
    assert_eq!(breaker.snapshot().failures, 3);
    // Two more slow requests: the breaker opens after 6 failures in the window, and the
    // retries of the last request are rejected without reaching the service.
    let _ = svc.ready().await.unwrap().call(true).await;
    assert_eq!(breaker.state(), State::Open);
    let before = calls.load(Ordering::SeqCst);
    assert!(svc.ready().await.unwrap().call(false).await.is_err());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "rejected by the open breaker"
    );
}

/// The named-future middlewares as tower services: timeout, rate limit, throttle.
#[tokio::test(start_paused = true)]
async fn timeout_rate_limit_and_throttle_layers_as_services() {
    use tower::{service_fn, Layer};
    use weft_resilience::ratelimit::{RateLimitLayer, RateLimited};
    use weft_resilience::throttle::{ThrottleLayer, Throttled};
    use weft_resilience::timeout::{Elapsed, TimeoutLayer};

    // Timeout: a slow call fails with Elapsed, a quick one passes.
    let slow = service_fn(|ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, std::io::Error>(ms)
    });
    let mut svc = TimeoutLayer(Duration::from_millis(100)).layer(slow);
    assert_eq!(svc.ready().await.unwrap().call(10).await.unwrap(), 10);
    let e = svc.ready().await.unwrap().call(500).await.unwrap_err();
    assert_eq!(
        e.downcast_ref::<Elapsed>(),
        Some(&Elapsed(Duration::from_millis(100)))
    );

    // Rate limit: a burst of 2 per key, then refused with RateLimited.
    let echo = service_fn(|k: &'static str| async move { Ok::<_, std::io::Error>(k) });
    let limiter = Arc::new(RateLimiter::new(1, 2).unwrap());
    let mut svc = RateLimitLayer::new(limiter, |k: &&'static str| *k).layer(echo);
    for _ in 0..2 {
        assert_eq!(svc.ready().await.unwrap().call("a").await.unwrap(), "a");
    }
    let e = svc.ready().await.unwrap().call("a").await.unwrap_err();
    assert!(e.downcast_ref::<RateLimited>().is_some(), "{e}");
    assert_eq!(svc.ready().await.unwrap().call("b").await.unwrap(), "b");

    // Throttle: outcomes of admitted calls are recorded; failing calls make it refuse.
    let t = Arc::new(AdaptiveThrottle::with_random(1.1, Duration::from_secs(60), || 0.5).unwrap());
    let failing = service_fn(|_: ()| async { Err::<(), _>(std::io::Error::other("down")) });
    let mut svc = ThrottleLayer::new(t.clone()).layer(failing);
    let mut refused = 0;
    for _ in 0..50 {
        match svc.ready().await.unwrap().call(()).await {
            Err(e) if e.downcast_ref::<Throttled>().is_some() => refused += 1,
            Err(_) => {}
            Ok(()) => panic!("the service always fails"),
        }
    }
    assert!(
        t.probability() > 0.5,
        "failures were recorded: p = {}",
        t.probability()
    );
    assert!(refused > 0, "the throttle refused calls");
}
