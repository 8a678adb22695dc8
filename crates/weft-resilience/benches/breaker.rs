//! Per-call overhead in closed state: weft's breaker (sync, async and tower APIs) and the full
//! stack, side by side with failsafe, recloser and tower-resilience, on one thread and
//! contended across 2 threads.
//!
//! `cargo bench -p weft-resilience --bench breaker`

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tower::{BoxError, Layer, Service};
use weft_resilience::builder::ResilienceBuilder;
use weft_resilience::circuit::{CircuitBreaker, CircuitBreakerLayer};
use weft_resilience::retry::{RetryDecision, RetryPolicy};

/// Polls a future that completes at once (every call here does) without an executor.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the benchmarked call did not complete at once"),
    }
}

fn weft_breaker() -> CircuitBreaker {
    CircuitBreaker::builder("bench")
        .count_window(100)
        .minimum_calls(20)
        .failure_rate(50.0)
        .build()
        .unwrap()
}

fn failsafe_breaker() -> impl failsafe::CircuitBreaker + Clone + Send + Sync + 'static {
    failsafe::Config::new().build()
}

fn recloser_breaker() -> recloser::Recloser {
    recloser::Recloser::custom()
        .error_rate(0.5)
        .closed_len(100)
        .half_open_len(10)
        .open_wait(Duration::from_secs(30))
        .build()
}

type Svc = tower::util::BoxCloneService<u64, u64, BoxError>;

fn inner() -> impl Service<
    u64,
    Response = u64,
    Error = BoxError,
    Future = std::future::Ready<Result<u64, BoxError>>,
> + Clone {
    tower::service_fn(|x: u64| std::future::ready(Ok::<_, BoxError>(x)))
}

fn single(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("closed_call_1_thread");
    let b = weft_breaker();
    g.bench_function("weft/sync", |bn| {
        bn.iter(|| b.call_sync(|| Ok::<_, ()>(black_box(1u64))))
    });
    g.bench_function("weft/async", |bn| {
        bn.iter(|| ready(b.call(|| async { Ok::<_, ()>(black_box(1u64)) })))
    });
    let mut svc = CircuitBreakerLayer::new(Arc::new(weft_breaker())).layer(inner());
    g.bench_function("weft/tower", |bn| {
        bn.iter(|| ready(svc.call(black_box(1u64))))
    });
    let f = failsafe_breaker();
    g.bench_function("failsafe/sync", |bn| {
        use failsafe::CircuitBreaker as _;
        bn.iter(|| f.call(|| Ok::<_, ()>(black_box(1u64))))
    });
    let r = recloser_breaker();
    g.bench_function("recloser/sync", |bn| {
        bn.iter(|| r.call(|| Ok::<_, ()>(black_box(1u64))))
    });
    let mut tr = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .unwrap()
        .layer(inner());
    g.bench_function("tower-resilience/tower", |bn| {
        bn.iter(|| ready(tr.call(black_box(1u64))))
    });
    let mut full: Svc = ResilienceBuilder::<u64, u64>::new()
        .retry(
            RetryPolicy::new(3, Duration::from_millis(10), Duration::from_millis(100)).unwrap(),
            |_: &u64, r: &Result<u64, BoxError>| {
                if r.is_err() {
                    RetryDecision::Yes { after: None }
                } else {
                    RetryDecision::No
                }
            },
        )
        .circuit_breaker(Arc::new(weft_breaker()))
        .bulkhead(1024, Duration::ZERO)
        .timeout(Duration::from_secs(1))
        .service(inner());
    g.bench_function("weft/full_stack", |bn| {
        bn.iter(|| ready(full.call(black_box(1u64))))
    });
    g.finish();
}

/// Polls until ready with a no-op waker, spinning while pending (tower-resilience's breaker
/// takes an async lock that can be busy when two threads contend).
fn spin_ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            return v;
        }
        std::hint::spin_loop();
    }
}

/// Runs `per_thread(iters / 2)` on 2 threads at once; returns the wall time, so criterion's
/// figure is the time per call with 2 threads hammering one breaker.
fn two_threads(iters: u64, f: impl Fn(u64) + Send + Sync + 'static) -> Duration {
    let f = Arc::new(f);
    let barrier = Arc::new(std::sync::Barrier::new(3));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (f, barrier) = (f.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                f(iters / 2);
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

fn contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("closed_call_2_threads");
    let b = Arc::new(weft_breaker());
    g.bench_function("weft/sync", |bn| {
        bn.iter_custom(|iters| {
            let b = b.clone();
            two_threads(iters, move |n| {
                for _ in 0..n {
                    let _ = black_box(b.call_sync(|| Ok::<_, ()>(1u64)));
                }
            })
        })
    });
    let f = failsafe_breaker();
    g.bench_function("failsafe/sync", |bn| {
        bn.iter_custom(|iters| {
            let f = f.clone();
            two_threads(iters, move |n| {
                use failsafe::CircuitBreaker as _;
                for _ in 0..n {
                    let _ = black_box(f.call(|| Ok::<_, ()>(1u64)));
                }
            })
        })
    });
    let r = Arc::new(recloser_breaker());
    g.bench_function("recloser/sync", |bn| {
        bn.iter_custom(|iters| {
            let r = r.clone();
            two_threads(iters, move |n| {
                for _ in 0..n {
                    let _ = black_box(r.call(|| Ok::<_, ()>(1u64)));
                }
            })
        })
    });
    let svc = CircuitBreakerLayer::new(Arc::new(weft_breaker())).layer(inner());
    g.bench_function("weft/tower", |bn| {
        bn.iter_custom(|iters| {
            let svc = svc.clone();
            two_threads(iters, move |n| {
                let mut s = svc.clone();
                for _ in 0..n {
                    let _ = black_box(spin_ready(s.call(1u64)));
                }
            })
        })
    });
    let tr = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .unwrap()
        .layer(inner());
    g.bench_function("tower-resilience/tower", |bn| {
        bn.iter_custom(|iters| {
            let tr = tr.clone();
            two_threads(iters, move |n| {
                let mut s = tr.clone();
                for _ in 0..n {
                    let _ = black_box(spin_ready(s.call(1u64)));
                }
            })
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

// criterion's macros generate undocumented items.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! { name = benches; config = config(); targets = single, contended }
}
criterion_main!(group::benches);
