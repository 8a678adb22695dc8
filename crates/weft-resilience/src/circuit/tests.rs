//! Deterministic tests of the breaker with paused time.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::time::{advance, Duration};

use super::*;

fn breaker() -> CircuitBreaker {
    CircuitBreaker::builder("t")
        .failure_rate(50.0)
        .count_window(10)
        .minimum_calls(4)
        .wait_in_open(Duration::from_secs(10), 2.0, Duration::from_secs(60))
        .half_open(2, Duration::from_secs(1))
        .build()
        .unwrap()
}

async fn ok(b: &CircuitBreaker) -> Result<(), Error<&'static str>> {
    b.call(|| async { Ok::<_, &str>(()) }).await
}
async fn fail(b: &CircuitBreaker) -> Result<(), Error<&'static str>> {
    b.call(|| async { Err::<(), _>("boom") }).await
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Ok,
    Fail,
    Wait(u64),
    Expect(State),
    Rejected,
}

/// Table-driven state transitions.
#[tokio::test(start_paused = true)]
async fn transitions_follow_the_table() {
    use State::*;
    use Step::*;
    let tables: Vec<(&str, Vec<Step>)> = vec![
        (
            "below minimum calls nothing trips",
            vec![Fail, Fail, Fail, Expect(Closed)],
        ),
        (
            "at the failure threshold it opens",
            vec![Ok, Ok, Fail, Fail, Expect(Open), Rejected],
        ),
        (
            "below the threshold it stays closed",
            vec![Ok, Ok, Ok, Fail, Ok, Ok, Expect(Closed)],
        ),
        (
            "open waits, then half-open; good probes close",
            vec![
                Fail,
                Fail,
                Fail,
                Fail,
                Expect(Open),
                Wait(9),
                Rejected,
                Wait(1),
                Ok,
                Expect(HalfOpen),
                Ok,
                Expect(Closed),
            ],
        ),
        (
            "a failed probe reopens, with a doubled wait",
            vec![
                Fail,
                Fail,
                Fail,
                Fail,
                Wait(10),
                Fail,
                Fail,
                Expect(Open),
                Wait(19),
                Rejected,
                Wait(1),
                Ok,
                Ok,
                Expect(Closed),
            ],
        ),
        (
            "closing resets the window",
            vec![
                Fail,
                Fail,
                Fail,
                Fail,
                Wait(10),
                Ok,
                Ok,
                Expect(Closed),
                Fail,
                Fail,
                Fail,
                Expect(Closed),
                Fail,
                Expect(Open),
            ],
        ),
    ];
    for (name, steps) in tables {
        let b = breaker();
        for (i, step) in steps.iter().enumerate() {
            match *step {
                Ok => {
                    let _ = ok(&b).await;
                }
                Fail => {
                    let _ = fail(&b).await;
                }
                Wait(s) => advance(Duration::from_secs(s)).await,
                Expect(st) => assert_eq!(b.state(), st, "{name}: step {i}"),
                Rejected => assert!(ok(&b).await.unwrap_err().is_rejected(), "{name}: step {i}"),
            }
        }
    }
}

/// Under 1000 concurrent callers, half-open admits exactly the configured probes.
#[tokio::test(start_paused = true)]
async fn half_open_admits_no_more_probes_than_allowed() {
    let b = Arc::new(
        CircuitBreaker::builder("probe")
            .count_window(10)
            .minimum_calls(1)
            .wait_in_open(Duration::from_secs(1), 1.0, Duration::from_secs(1))
            .half_open(3, Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    let _ = fail(&b).await;
    assert_eq!(b.state(), State::Open);
    advance(Duration::from_secs(1)).await;
    let ran = Arc::new(AtomicU32::new(0));
    let rejected = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (b, ran, rejected) = (b.clone(), ran.clone(), rejected.clone());
        tasks.push(tokio::spawn(async move {
            let r = b
                .call(|| async {
                    ran.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, &str>(())
                })
                .await;
            if matches!(r, Err(Error::Rejected(_))) {
                rejected.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        ran.load(Ordering::SeqCst),
        3,
        "exactly the probe budget ran"
    );
    assert_eq!(rejected.load(Ordering::SeqCst), 997);
    assert_eq!(b.state(), State::Closed);
}

/// A probe that outlives its deadline is cancelled and counts as a failure; a cancelled probe
/// frees its slot.
#[tokio::test(start_paused = true)]
async fn probes_cannot_get_stuck() {
    let b = CircuitBreaker::builder("stuck")
        .count_window(10)
        .minimum_calls(1)
        .wait_in_open(Duration::from_secs(1), 1.0, Duration::from_secs(1))
        .half_open(1, Duration::from_secs(2))
        .build()
        .unwrap();
    let _ = fail(&b).await;
    advance(Duration::from_secs(1)).await;
    // A cancelled probe frees its slot.
    {
        let fut = b.call(|| async {
            tokio::time::sleep(Duration::from_secs(100)).await;
            Ok::<_, &str>(())
        });
        let _ = tokio::time::timeout(Duration::from_millis(10), fut).await;
    }
    assert_eq!(b.state(), State::HalfOpen);
    // A hanging probe times out and reopens the breaker.
    let r = b
        .call(|| async {
            tokio::time::sleep(Duration::from_secs(100)).await;
            Ok::<_, &str>(())
        })
        .await;
    assert_eq!(r, Err(Error::ProbeTimeout(ProbeTimeout)));
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_the_breaker() {
    let b = CircuitBreaker::builder("slow")
        .count_window(4)
        .minimum_calls(4)
        .slow_calls(50.0, Duration::from_millis(500))
        .build()
        .unwrap();
    for i in 0..4 {
        let d = if i % 2 == 0 { 600 } else { 10 };
        let _ = b
            .call(|| async move {
                tokio::time::sleep(Duration::from_millis(d)).await;
                Ok::<_, &str>(())
            })
            .await;
    }
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.snapshot().slow, 2);
    assert_eq!(
        b.totals(),
        Totals {
            success: 4,
            failure: 0,
            slow: 2,
            rejected: 0
        }
    );
}

/// Totals keep counting across state changes (the window resets, they do not).
#[tokio::test(start_paused = true)]
async fn totals_count_every_outcome_across_states() {
    let b = breaker();
    let _ = ok(&b).await;
    for _ in 0..3 {
        let _ = fail(&b).await;
    }
    // 3 failures in 4 calls: open.
    assert_eq!(b.state(), State::Open);
    assert!(ok(&b).await.unwrap_err().is_rejected());
    assert!(ok(&b).await.unwrap_err().is_rejected());
    advance(Duration::from_secs(11)).await;
    let _ = ok(&b).await;
    let _ = ok(&b).await;
    assert_eq!(b.state(), State::Closed);
    assert_eq!(
        b.totals(),
        Totals {
            success: 3,
            failure: 3,
            slow: 0,
            rejected: 2
        }
    );
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_failures() {
    let b = CircuitBreaker::builder("tw")
        .time_window(Duration::from_secs(10), 10)
        .minimum_calls(4)
        .failure_rate(50.0)
        .build()
        .unwrap();
    for _ in 0..3 {
        let _ = fail(&b).await;
    }
    advance(Duration::from_secs(11)).await;
    let _ = fail(&b).await;
    assert_eq!(b.state(), State::Closed, "old failures left the window");
    assert_eq!(b.snapshot().calls, 1);
    // The totals keep what the window forgot.
    let _ = ok(&b).await;
    assert_eq!(
        b.totals(),
        Totals {
            success: 1,
            failure: 4,
            slow: 0,
            rejected: 0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn events_carry_the_snapshot_and_forced_states_work() {
    let b = breaker();
    let mut ev = b.subscribe();
    for _ in 0..4 {
        let _ = fail(&b).await;
    }
    let t = ev.recv().await.unwrap();
    assert_eq!((t.from, t.to), (State::Closed, State::Open));
    assert_eq!((t.snapshot.calls, t.snapshot.failures), (4, 4));
    b.force(Manual::ForcedClosed);
    for _ in 0..10 {
        let _ = fail(&b).await;
    }
    assert_eq!(b.state(), State::ForcedClosed, "forced closed never opens");
    b.force(Manual::ForcedOpen);
    advance(Duration::from_secs(1000)).await;
    assert!(
        ok(&b).await.unwrap_err().is_rejected(),
        "forced open never half-opens"
    );
    b.force(Manual::Disabled);
    assert!(fail(&b).await.is_err());
    assert!(ok(&b).await.is_ok());
    assert_eq!(ev.recv().await.unwrap().to, State::ForcedClosed);
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_to_the_cap_with_jitter_from_the_injected_source() {
    let b = CircuitBreaker::builder("bo")
        .count_window(2)
        .minimum_calls(1)
        .wait_in_open(Duration::from_secs(1), 3.0, Duration::from_secs(5))
        .jitter(0.5)
        .random(|| 1.0 - f64::EPSILON)
        .half_open(1, Duration::from_secs(1))
        .build()
        .unwrap();
    let _ = fail(&b).await;
    // Jitter source at ~1.0 makes each wait ~1.5x the base: 1.5s, 4.5s, then the cap of 5s,
    // which holds with jitter too.
    for want in [1.5, 4.5, 5.0, 5.0] {
        advance(Duration::from_secs_f64(want - 0.01)).await;
        assert!(
            ok(&b).await.unwrap_err().is_rejected(),
            "still open before {want}s"
        );
        advance(Duration::from_millis(20)).await;
        let _ = fail(&b).await; // the probe fails: reopen with a longer wait
        assert_eq!(b.state(), State::Open);
    }
}

#[test]
fn invalid_settings_fail_at_construction() {
    let bad = [
        CircuitBreaker::builder("x").failure_rate(0.0).build(),
        CircuitBreaker::builder("x").failure_rate(101.0).build(),
        CircuitBreaker::builder("x")
            .slow_calls(150.0, Duration::from_secs(1))
            .build(),
        CircuitBreaker::builder("x").count_window(0).build(),
        CircuitBreaker::builder("x")
            .time_window(Duration::ZERO, 10)
            .build(),
        CircuitBreaker::builder("x")
            .time_window(Duration::from_secs(1), 0)
            .build(),
        CircuitBreaker::builder("x")
            .half_open(0, Duration::from_secs(1))
            .build(),
        CircuitBreaker::builder("x").jitter(1.5).build(),
        CircuitBreaker::builder("x")
            .wait_in_open(Duration::from_secs(10), 0.5, Duration::from_secs(20))
            .build(),
    ];
    for (i, b) in bad.into_iter().enumerate() {
        let e = b.expect_err(&format!("case {i} must be rejected"));
        assert!(!e.to_string().is_empty());
    }
    assert!(CircuitBreaker::builder("ok").build().is_ok());
}

#[tokio::test(start_paused = true)]
async fn jitter_never_passes_the_cap() {
    for seed in 1..50u64 {
        let b = CircuitBreaker::builder("cap")
            .count_window(2)
            .minimum_calls(1)
            .wait_in_open(Duration::from_secs(10), 1.0, Duration::from_secs(10))
            .jitter(0.5)
            .random(crate::rng::XorShift::seeded(seed * 7919))
            .build()
            .unwrap();
        let _ = fail(&b).await;
        let wait = b.open_until().unwrap() - tokio::time::Instant::now();
        assert!(
            wait <= Duration::from_secs(10) && wait >= Duration::from_secs(5),
            "seed {seed}: {wait:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn state_reads_half_open_once_the_wait_is_over_and_publishes_it() {
    let b = CircuitBreaker::builder("ho")
        .count_window(2)
        .minimum_calls(1)
        .wait_in_open(Duration::from_secs(1), 1.0, Duration::from_secs(1))
        .build()
        .unwrap();
    let mut ev = b.subscribe();
    let _ = fail(&b).await;
    assert_eq!(ev.recv().await.unwrap().to, State::Open);
    advance(Duration::from_millis(999)).await;
    assert_eq!(b.state(), State::Open);
    advance(Duration::from_millis(2)).await;
    assert_eq!(b.state(), State::HalfOpen, "no call needed");
    let t = ev.try_recv().expect("the transition is published");
    assert_eq!((t.from, t.to), (State::Open, State::HalfOpen));
    assert!(ok(&b).await.is_ok(), "the probe is admitted");
}
