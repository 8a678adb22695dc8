//! The saga conformance suite: the same cases on every backend (feature `suite`).
//! `saga_tests!(factory)` expands to one test per case; the factory yields
//! `Option<(Arc<dyn Store>, guard)>` (`None`: backend unavailable, which fails under `CI`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use weft_store::Store;

use crate::{
    Barrier, BarrierOutcome, Options, Orchestrator, Phase, Registry, SagaDef, SagaError, Status,
    StepCtx, StepOutcome, StepStatus,
};

const WAIT: Duration = Duration::from_secs(30);

fn opts(name: &str) -> Options {
    Options {
        name: name.into(),
        ttl: 2,
        sweep_interval: Duration::from_millis(500),
        ..Default::default()
    }
}

/// A model of the example services: each action's effect is applied once per idempotency
/// key, each compensation removes it once; a compensation that comes first is recorded so a
/// late action does nothing (the barrier's rules, in memory).
#[derive(Default)]
pub struct Ledger {
    state: Mutex<LedgerState>,
}

#[derive(Default)]
struct LedgerState {
    /// Effects in place: (saga, step).
    effects: BTreeSet<(String, String)>,
    /// Compensated (or compensated before the action came).
    undone: BTreeSet<(String, String)>,
    /// Calls received, by (step, phase).
    calls: BTreeMap<(String, &'static str), u32>,
    /// Order of completed compensations.
    comp_order: Vec<String>,
}

impl Ledger {
    fn act(&self, c: &StepCtx) {
        let mut s = self.state.lock().unwrap();
        *s.calls.entry((c.step.clone(), "action")).or_default() += 1;
        let k = (c.saga_id.clone(), c.step.clone());
        if !s.undone.contains(&k) {
            s.effects.insert(k);
        }
    }

    fn undo(&self, c: &StepCtx) {
        let mut s = self.state.lock().unwrap();
        *s.calls.entry((c.step.clone(), "compensation")).or_default() += 1;
        let k = (c.saga_id.clone(), c.step.clone());
        s.effects.remove(&k);
        if s.undone.insert(k) {
            s.comp_order.push(c.step.clone());
        }
    }

    /// Steps whose effect is in place for `saga`.
    pub fn effects(&self, saga: &str) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.effects
            .iter()
            .filter(|(g, _)| g == saga)
            .map(|(_, st)| st.clone())
            .collect()
    }

    fn calls(&self, step: &str, phase: &'static str) -> u32 {
        let s = self.state.lock().unwrap();
        s.calls
            .get(&(step.to_string(), phase))
            .copied()
            .unwrap_or(0)
    }

    fn comp_order(&self) -> Vec<String> {
        self.state.lock().unwrap().comp_order.clone()
    }
}

/// order → (reserve ∥ charge) → ship; `fail` names steps whose action fails for good.
fn order_def(fail: &[&str]) -> SagaDef {
    let step = |name: &str, after: &[&str], comp: bool| {
        let f = if fail.contains(&name) { "fail" } else { "act" };
        let mut s = json!({
            "name": name,
            "after": after,
            "action": {"local": {"name": f}},
            "retry": {"max_attempts": 3, "backoff_ms": 1, "max_backoff_ms": 5},
            "compensation_retry": {"max_attempts": 3, "backoff_ms": 1, "max_backoff_ms": 5},
        });
        if comp {
            s["compensation"] = json!({"local": {"name": "undo"}});
        } else {
            s["no_compensation"] = json!(true);
        }
        s
    };
    serde_json::from_value(json!({
        "name": "order",
        "steps": [
            step("order", &[], true),
            step("reserve", &["order"], true),
            step("charge", &["order"], true),
            step("ship", &["reserve", "charge"], false),
        ]
    }))
    .unwrap()
}

fn ledger_registry(ledger: &Arc<Ledger>) -> Registry {
    let mut r = Registry::new();
    let l = ledger.clone();
    r.register("act", move |c| {
        let l = l.clone();
        async move {
            l.act(&c);
            StepOutcome::Done(json!({"ok": c.step}))
        }
    });
    let l = ledger.clone();
    r.register("undo", move |c| {
        let l = l.clone();
        async move {
            l.undo(&c);
            StepOutcome::Done(Value::Null)
        }
    });
    r.register("fail", |_c| async { StepOutcome::Fail("declined".into()) });
    r
}

async fn orch(store: &Arc<dyn Store>, name: &str, reg: Registry) -> Orchestrator {
    Orchestrator::builder(store.clone())
        .options(opts(name))
        .registry(reg)
        .start()
        .await
        .unwrap()
}

/// Every step succeeds: committed, each action called once, at most two writes per step.
pub async fn commit_with_parallel_branches(store: Arc<dyn Store>) {
    let ledger = Arc::new(Ledger::default());
    let mut reg = ledger_registry(&ledger);
    // reserve and charge each wait until both have started: they must run in parallel.
    let started = Arc::new(AtomicU32::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    let l = ledger.clone();
    reg.register("meet", move |c| {
        let (l, started, notify) = (l.clone(), started.clone(), notify.clone());
        async move {
            if started.fetch_add(1, Ordering::SeqCst) == 1 {
                notify.notify_waiters();
            } else {
                let _ = tokio::time::timeout(Duration::from_secs(5), notify.notified()).await;
            }
            if started.load(Ordering::SeqCst) < 2 {
                return StepOutcome::Fail("the branches did not run in parallel".into());
            }
            l.act(&c);
            StepOutcome::Done(Value::Null)
        }
    });
    let o = orch(&store, "a", reg).await;
    let mut def = order_def(&[]);
    for s in &mut def.steps {
        if s.name == "reserve" || s.name == "charge" {
            s.action = crate::Call::Local {
                name: "meet".into(),
                arg: Value::Null,
            };
        }
    }
    let id = o.submit(def, json!({"order": 1}), None).await.unwrap();
    let rec = o.wait(&id, WAIT).await.unwrap();
    assert_eq!(rec.status, Status::Committed, "{rec:?}");
    assert_eq!(ledger.effects(&id).len(), 4);
    for s in ["order", "reserve", "charge", "ship"] {
        assert_eq!(ledger.calls(s, "action"), 1, "{s}");
        assert_eq!(rec.steps[s].status, StepStatus::Succeeded);
    }
    // Writes after creation: order done+2 started, one per branch (or both at once), ship
    // done+committed: at most 4, so at most 2 per step with the creation.
    assert!(o.writes() <= 4, "{} writes for 4 steps", o.writes());
    let view = o.get(&id).await.unwrap();
    assert_eq!(view.timeline.first().unwrap().kind, "submitted");
    assert_eq!(view.timeline.last().unwrap().kind, "committed");
    assert_eq!(
        view.record.steps["order"].result,
        Some(json!({"ok": "order"}))
    );
    o.shutdown().await;
}

/// A failing step compensates what started, in reverse dependency order, and nothing else.
pub async fn failure_compensates_in_reverse_order(store: Arc<dyn Store>) {
    let ledger = Arc::new(Ledger::default());
    let o = orch(&store, "a", ledger_registry(&ledger)).await;
    let mut def = order_def(&["charge"]);
    // Make reserve finish before charge fails, so it has to be compensated.
    def.steps[2].after = vec!["reserve".into()];
    let id = o.submit(def, json!({}), None).await.unwrap();
    let rec = o.wait(&id, WAIT).await.unwrap();
    assert_eq!(rec.status, Status::Compensated, "{rec:?}");
    assert!(ledger.effects(&id).is_empty(), "everything undone");
    assert_eq!(ledger.comp_order(), vec!["reserve", "order"]);
    assert_eq!(
        ledger.calls("charge", "compensation"),
        0,
        "charge never took effect"
    );
    assert_eq!(ledger.calls("ship", "action"), 0);
    assert_eq!(rec.steps["charge"].status, StepStatus::Failed);
    assert!(rec
        .reason
        .as_deref()
        .unwrap()
        .contains("step charge failed: declined"));
    o.shutdown().await;
}

/// Retryable failures are retried up to the limit; an unknown outcome that keeps failing is
/// compensated; the idempotency key is the same for every attempt.
pub async fn retries_and_unknown_outcomes(store: Arc<dyn Store>) {
    let attempts = Arc::new(AtomicU32::new(0));
    let keys = Arc::new(Mutex::new(BTreeSet::new()));
    let undone = Arc::new(AtomicU32::new(0));
    let mut reg = Registry::new();
    let (a, k) = (attempts.clone(), keys.clone());
    reg.register("flaky", move |c| {
        let (a, k) = (a.clone(), k.clone());
        async move {
            k.lock().unwrap().insert(c.idempotency_key());
            if a.fetch_add(1, Ordering::SeqCst) < 2 {
                StepOutcome::Retry("busy".into())
            } else {
                StepOutcome::Done(json!(1))
            }
        }
    });
    reg.register("timeout", |_c| async {
        StepOutcome::Unknown("timed out".into())
    });
    let u = undone.clone();
    reg.register("undo", move |_c| {
        let u = u.clone();
        async move {
            u.fetch_add(1, Ordering::SeqCst);
            StepOutcome::Done(Value::Null)
        }
    });
    let o = orch(&store, "a", reg).await;
    let def: SagaDef = serde_json::from_value(json!({
        "name": "r",
        "steps": [
            {"name": "a", "action": {"local": {"name": "flaky"}},
             "compensation": {"local": {"name": "undo"}},
             "retry": {"max_attempts": 5, "backoff_ms": 1, "max_backoff_ms": 2}},
            {"name": "b", "after": ["a"], "action": {"local": {"name": "timeout"}},
             "compensation": {"local": {"name": "undo"}},
             "retry": {"max_attempts": 2, "backoff_ms": 1, "max_backoff_ms": 2}}
        ]
    }))
    .unwrap();
    let id = o.submit(def, json!({}), None).await.unwrap();
    let rec = o.wait(&id, WAIT).await.unwrap();
    assert_eq!(rec.status, Status::Compensated, "{rec:?}");
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "2 failures, then success"
    );
    assert_eq!(rec.steps["a"].attempts, 3);
    assert_eq!(rec.steps["b"].attempts, 2, "the retry limit holds");
    assert!(rec.steps["b"].unknown);
    assert_eq!(
        undone.load(Ordering::SeqCst),
        2,
        "a and the unknown b are compensated"
    );
    assert_eq!(
        keys.lock().unwrap().len(),
        1,
        "one idempotency key for every attempt"
    );
    let tl = o.get(&id).await.unwrap().timeline;
    let failed = tl.iter().filter(|e| e.kind == "attempt_failed").count();
    assert_eq!(failed, 4, "every failed attempt is on the timeline: {tl:?}");
    o.shutdown().await;
}

/// A compensation that keeps failing parks the saga; resume, skip and abort work and are
/// logged; operator actions on the wrong state are refused with a reason.
pub async fn parking_and_operator_actions(store: Arc<dyn Store>) {
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let mut reg = Registry::new();
    reg.register("ok", |_c| async { StepOutcome::Done(Value::Null) });
    reg.register("fail", |_c| async { StepOutcome::Fail("no".into()) });
    let (b, n) = (broken.clone(), calls.clone());
    reg.register("undo", move |_c| {
        let (b, n) = (b.clone(), n.clone());
        async move {
            n.fetch_add(1, Ordering::SeqCst);
            if b.load(Ordering::SeqCst) {
                StepOutcome::Retry("refund service down".into())
            } else {
                StepOutcome::Done(Value::Null)
            }
        }
    });
    let o = orch(&store, "a", reg).await;
    let def = |id: &str| -> SagaDef {
        serde_json::from_value(json!({
            "name": id,
            "steps": [
                {"name": "pay", "action": {"local": {"name": "ok"}},
                 "compensation": {"local": {"name": "undo"}},
                 "compensation_retry": {"max_attempts": 3, "backoff_ms": 1, "max_backoff_ms": 2}},
                {"name": "ship", "after": ["pay"], "action": {"local": {"name": "fail"}},
                 "no_compensation": true}
            ]
        }))
        .unwrap()
    };
    // Resume once the service is back.
    let id = o.submit(def("p1"), json!({}), None).await.unwrap();
    let rec = o.wait(&id, WAIT).await.unwrap();
    assert_eq!(rec.status, Status::Parked);
    let p = rec.parked.clone().unwrap();
    assert_eq!(
        (p.step.as_str(), p.phase, p.attempts),
        ("pay", Phase::Compensation, 3)
    );
    assert!(p.error.contains("refund service down"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "no more than the retry limit"
    );
    let e = o.skip(&id, "ship").await.unwrap_err();
    assert!(e.to_string().contains("not the parked step"), "{e}");
    broken.store(false, Ordering::SeqCst);
    o.resume(&id).await.unwrap();
    let rec = o.wait(&id, WAIT).await.unwrap();
    assert_eq!(rec.status, Status::Compensated);
    let e = o.resume(&id).await.unwrap_err();
    assert!(e.to_string().contains("only a parked saga"), "{e}");
    // Skip: the operator refunded by hand.
    broken.store(true, Ordering::SeqCst);
    let id = o.submit(def("p2"), json!({}), None).await.unwrap();
    assert_eq!(o.wait(&id, WAIT).await.unwrap().status, Status::Parked);
    o.skip(&id, "pay").await.unwrap();
    let rec = o.wait(&id, WAIT).await.unwrap();
    assert_eq!(rec.status, Status::Compensated);
    assert_eq!(rec.steps["pay"].status, StepStatus::Compensated);
    let kinds: Vec<String> = o
        .get(&id)
        .await
        .unwrap()
        .timeline
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        kinds.contains(&"parked".to_string()) && kinds.contains(&"skipped".to_string()),
        "{kinds:?}"
    );
    // Abort: given up.
    let id = o.submit(def("p3"), json!({}), None).await.unwrap();
    assert_eq!(o.wait(&id, WAIT).await.unwrap().status, Status::Parked);
    o.abort(&id).await.unwrap();
    let rec = o.wait(&id, WAIT).await.unwrap();
    assert_eq!(rec.status, Status::Aborted);
    assert!(matches!(
        o.abort(&id).await,
        Err(SagaError::Conflict { .. })
    ));
    assert_eq!(o.list(Some(Status::Aborted), 0).await.unwrap().len(), 1);
    assert!(matches!(
        o.resume("nope").await,
        Err(SagaError::NotFound(_))
    ));
    o.shutdown().await;
}

/// Bad definitions and inputs store nothing; a submission with an id is idempotent.
pub async fn validation_and_idempotent_submit(store: Arc<dyn Store>) {
    let ledger = Arc::new(Ledger::default());
    let o = orch(&store, "a", ledger_registry(&ledger)).await;
    let mut bad = order_def(&[]);
    bad.steps[0].after = vec!["ship".into()];
    let e = o
        .submit(bad, json!({}), Some("x1".into()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");
    assert!(matches!(o.get("x1").await, Err(SagaError::NotFound(_))));
    let big = json!({"blob": "x".repeat(300 * 1024)});
    assert!(matches!(
        o.submit(order_def(&[]), big, None).await,
        Err(SagaError::InvalidArgument(_))
    ));
    assert!(o
        .submit(order_def(&[]), json!({}), Some("a b".into()))
        .await
        .is_err());
    let id = o
        .submit(order_def(&[]), json!({"n": 1}), Some("same".into()))
        .await
        .unwrap();
    let again = o
        .submit(order_def(&[]), json!({"n": 1}), Some("same".into()))
        .await
        .unwrap();
    assert_eq!(id, again);
    assert!(matches!(
        o.submit(order_def(&[]), json!({"n": 2}), Some("same".into()))
            .await,
        Err(SagaError::Conflict { .. })
    ));
    o.wait(&id, WAIT).await.unwrap();
    assert_eq!(
        ledger.calls("order", "action"),
        1,
        "submitted twice, run once"
    );
    o.shutdown().await;
}

/// A saga whose deadline passes compensates.
pub async fn deadline_compensates(store: Arc<dyn Store>) {
    let ledger = Arc::new(Ledger::default());
    let mut reg = ledger_registry(&ledger);
    reg.register("slow", |_c| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        StepOutcome::Done(Value::Null)
    });
    let o = orch(&store, "a", reg).await;
    let mut def = order_def(&[]);
    def.deadline_ms = Some(300);
    def.steps[1].action = crate::Call::Local {
        name: "slow".into(),
        arg: Value::Null,
    };
    let id = o.submit(def, json!({}), None).await.unwrap();
    let rec = o.wait(&id, WAIT).await.unwrap();
    assert_eq!(rec.status, Status::Compensated, "{rec:?}");
    assert!(rec.reason.as_deref().unwrap().contains("deadline"));
    assert!(ledger.effects(&id).is_empty());
    o.shutdown().await;
}

/// The orchestrator crashes at every log point of a saga with parallel branches (before and
/// after each write); its next incarnation finishes the saga, and the services' ledger agrees
/// with the outcome: all effects for a committed saga, none for a compensated one.
pub async fn crash_at_every_log_point(store: Arc<dyn Store>) {
    for fail in [&[][..], &["charge"][..]] {
        let mut point = 0u64;
        loop {
            let ledger = Arc::new(Ledger::default());
            let n = Arc::new(AtomicU64::new(0));
            let (n2, at) = (n.clone(), point);
            let o = Orchestrator::builder(store.clone())
                .options(opts("crashy"))
                .registry(ledger_registry(&ledger))
                .fault(move |_| n2.fetch_add(1, Ordering::SeqCst) == at)
                .start()
                .await
                .unwrap();
            let id = o.submit(order_def(fail), json!({}), None).await.unwrap();
            let r = tokio::select! {
                r = o.wait(&id, WAIT) => Some(r),
                _ = async {
                    while !o.has_crashed() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                } => None,
            };
            // A crash after the last write races with `wait` seeing it: let it land.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let crashed = o.has_crashed();
            o.crash();
            if !crashed {
                let rec = r.expect("not crashed").unwrap();
                assert!(rec.status.is_final(), "{rec:?}");
                // Every write of the run was a crash point (two per write).
                assert!(point >= 6, "only {point} crash points for {fail:?}");
                eprintln!("{fail:?}: crashed at each of {point} log points, then ran through");
                break;
            }
            // Restart under the same name: the old lease is revoked, the saga taken over.
            let o2 = orch(&store, "crashy", ledger_registry(&ledger)).await;
            let rec = o2.wait(&id, WAIT).await.unwrap();
            let effects = ledger.effects(&id);
            match rec.status {
                Status::Committed => {
                    assert!(fail.is_empty(), "point {point}: {rec:?}");
                    assert_eq!(effects.len(), 4, "point {point}: {effects:?}");
                }
                Status::Compensated => {
                    assert!(!fail.is_empty(), "point {point}: {rec:?}");
                    assert!(effects.is_empty(), "point {point}: left {effects:?}");
                }
                other => panic!("point {point}: {other:?}"),
            }
            o2.shutdown().await;
            point += 1;
            assert!(point < 60, "the saga never ran through");
        }
    }
}

/// Two orchestrators on one store: one dies (no revoke); the other takes its sagas over
/// within the TTL and finishes them.
pub async fn takeover_after_owner_death(store: Arc<dyn Store>) {
    let ledger = Arc::new(Ledger::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut reg = ledger_registry(&ledger);
    let g = gate.clone();
    reg.register("gated", move |_c| {
        let g = g.clone();
        async move {
            let _ = g.acquire().await;
            StepOutcome::Done(Value::Null)
        }
    });
    let a = orch(&store, "a", reg.clone()).await;
    let b = orch(&store, "b", reg).await;
    let mut def = order_def(&[]);
    def.steps[0].action = crate::Call::Local {
        name: "gated".into(),
        arg: Value::Null,
    };
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(a.submit(def.clone(), json!({}), None).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.crash();
    let t0 = std::time::Instant::now();
    gate.add_permits(100);
    for id in &ids {
        let rec = b.wait(id, WAIT).await.unwrap();
        assert_eq!(rec.status, Status::Committed);
    }
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(3 + 2),
        "taken over in {took:?} (TTL 2 s)"
    );
    b.shutdown().await;
}

/// The barrier: idempotent action and compensation, null compensation, hanging action.
pub async fn barrier_rules(store: Arc<dyn Store>) {
    use weft_store::{PutRequest, StoreExt, TxnOp};
    let b = Barrier::new(store.clone());
    let put = |k: &str| vec![TxnOp::Put(PutRequest::new(k.to_string(), "1"))];
    assert_eq!(
        b.action("g1", "s", put("/d/g1")).await.unwrap(),
        BarrierOutcome::Applied
    );
    assert_eq!(
        b.action("g1", "s", put("/d/g1")).await.unwrap(),
        BarrierOutcome::Duplicate
    );
    let del = || {
        vec![TxnOp::Delete(weft_store::DeleteRequest::new(
            weft_store::KeyRange::key("/d/g1"),
        ))]
    };
    assert_eq!(
        b.compensate("g1", "s", del()).await.unwrap(),
        BarrierOutcome::Applied
    );
    assert!(store.get("/d/g1").await.unwrap().is_none());
    assert_eq!(
        b.compensate("g1", "s", del()).await.unwrap(),
        BarrierOutcome::Duplicate
    );
    assert_eq!(
        b.compensate("g2", "s", put("/d/never")).await.unwrap(),
        BarrierOutcome::NullCompensation
    );
    assert!(
        store.get("/d/never").await.unwrap().is_none(),
        "nothing undone"
    );
    assert_eq!(
        b.action("g2", "s", put("/d/g2")).await.unwrap(),
        BarrierOutcome::Refused
    );
    assert!(
        store.get("/d/g2").await.unwrap().is_none(),
        "the late action did nothing"
    );
}

/// Finished sagas are removed after their retention (counted in metrics); parked and
/// running ones are kept.
pub async fn retention_removes_only_finished_sagas(store: Arc<dyn Store>) {
    let ledger = Arc::new(Ledger::default());
    let mut reg = ledger_registry(&ledger);
    reg.register("stuck", |_c| async { StepOutcome::Retry("down".into()) });
    let o = Orchestrator::builder(store.clone())
        .options(Options {
            retention: Duration::ZERO,
            // Only the explicit sweep below.
            sweep_interval: Duration::from_secs(3600),
            ..opts("ret")
        })
        .registry(reg)
        .start()
        .await
        .unwrap();
    let done = o.submit(order_def(&[]), json!({}), None).await.unwrap();
    assert_eq!(o.wait(&done, WAIT).await.unwrap().status, Status::Committed);
    let mut def = order_def(&["charge"]);
    def.steps[0].compensation = Some(crate::Call::Local {
        name: "stuck".into(),
        arg: Value::Null,
    });
    let parked = o.submit(def, json!({}), None).await.unwrap();
    assert_eq!(o.wait(&parked, WAIT).await.unwrap().status, Status::Parked);
    // More than one sweep batch (256) of finished sagas.
    let more: Vec<_> = (0..299)
        .map(|_| {
            let o = o.clone();
            tokio::spawn(async move {
                let id = o.submit(order_def(&[]), json!({}), None).await.unwrap();
                o.wait(&id, WAIT).await.unwrap().status
            })
        })
        .collect();
    for t in more {
        assert_eq!(t.await.unwrap(), Status::Committed);
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(o.sweep().await.unwrap(), 300);
    let index = store
        .range(weft_store::RangeRequest::new(weft_store::KeyRange::prefix(
            format!("{}f/", crate::PREFIX),
        )))
        .await
        .unwrap();
    assert_eq!(index.count, 0, "the time index is empty again");
    assert_eq!(o.sweep().await.unwrap(), 0, "nothing left to remove");
    assert!(matches!(o.get(&done).await, Err(SagaError::NotFound(_))));
    assert_eq!(o.get(&parked).await.unwrap().record.status, Status::Parked);
    let left = store
        .range(weft_store::RangeRequest::new(weft_store::KeyRange::prefix(
            format!("{}e/{done}/", crate::PREFIX),
        )))
        .await
        .unwrap();
    assert_eq!(left.count, 0, "its timeline went too");
    o.shutdown().await;
}

/// The ledger's steps plus `gated`, an action that waits for a permit of the returned gate
/// (one permit per call).
fn gated_registry() -> (Registry, Arc<tokio::sync::Semaphore>) {
    let ledger = Arc::new(Ledger::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut reg = ledger_registry(&ledger);
    let g = gate.clone();
    reg.register("gated", move |c| {
        let g = g.clone();
        async move {
            if c.phase == Phase::Action {
                if let Ok(p) = g.acquire().await {
                    p.forget();
                }
            }
            StepOutcome::Done(Value::Null)
        }
    });
    (reg, gate)
}

/// New sagas are spread over the live orchestrators (rendezvous on the id), whoever received
/// them; an abort sent to another orchestrator reaches the owner.
pub async fn new_sagas_are_spread_and_aborts_reach_the_owner(store: Arc<dyn Store>) {
    let (reg, gate) = gated_registry();
    let a = orch(&store, "a", reg.clone()).await;
    let b = orch(&store, "b", reg).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // each sees the other's member key
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(a.submit(order_def(&[]), json!({}), None).await.unwrap());
    }
    let mut by_b = 0;
    for id in &ids {
        assert_eq!(b.wait(id, WAIT).await.unwrap().status, Status::Committed);
        let tl = a.get(id).await.unwrap().timeline;
        if tl.iter().any(|e| e.kind == "claimed") {
            by_b += 1;
        }
    }
    assert!((3..=27).contains(&by_b), "{by_b} of 30 ran on b");
    // A saga of b's, stuck in its first step, aborted through a.
    let mut def = order_def(&[]);
    def.steps[0].action = crate::Call::Local {
        name: "gated".into(),
        arg: Value::Null,
    };
    let id = loop {
        let id = a.submit(def.clone(), json!({}), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        if a.get(&id)
            .await
            .unwrap()
            .timeline
            .iter()
            .any(|e| e.kind == "claimed")
        {
            break id;
        }
        gate.add_permits(1); // one of a's: let it finish
    };
    a.abort(&id).await.unwrap();
    // The request goes through the store to b; once b took it, the step may finish.
    let key = format!("{}c/{id}", crate::PREFIX);
    let t0 = std::time::Instant::now();
    while store
        .range(weft_store::RangeRequest::new(weft_store::KeyRange::key(
            key.clone(),
        )))
        .await
        .unwrap()
        .count
        > 0
    {
        assert!(t0.elapsed() < WAIT, "the owner never took the abort");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.add_permits(100);
    let rec = a.wait(&id, WAIT).await.unwrap();
    assert_eq!(rec.status, Status::Compensated, "{rec:?}");
    assert_eq!(rec.reason.as_deref(), Some("aborted by an operator"));
    a.shutdown().await;
    b.shutdown().await;
}

/// An abort sent while its saga is being submitted on the same orchestrator (before, during
/// and right after the create) is never lost: every saga starts compensating while its first
/// step is held, and ends compensated by the operator.
pub async fn abort_racing_submit_is_kept(store: Arc<dyn Store>) {
    let (reg, gate) = gated_registry();
    let o = orch(&store, "a", reg).await;
    let mut def = order_def(&[]);
    def.steps[0].action = crate::Call::Local {
        name: "gated".into(),
        arg: Value::Null,
    };
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = format!("race-{i}");
        let (o2, id2) = (o.clone(), id.clone());
        // Retries while the saga does not exist yet; bounded by WAIT.
        let aborter = tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            loop {
                match o2.abort(&id2).await {
                    Ok(()) => return,
                    Err(SagaError::NotFound(_)) if t0.elapsed() < WAIT => {
                        tokio::task::yield_now().await
                    }
                    Err(e) => panic!("abort of {id2}: {e}"),
                }
            }
        });
        o.submit(def.clone(), json!({}), Some(id.clone()))
            .await
            .unwrap();
        aborter.await.unwrap();
        ids.push(id);
    }
    // Each abort takes effect while its saga's first step is still held.
    for id in &ids {
        let t0 = std::time::Instant::now();
        while o.get(id).await.unwrap().record.status != Status::Compensating {
            assert!(t0.elapsed() < WAIT, "{id}: the abort was lost");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    gate.add_permits(100);
    for id in &ids {
        let rec = o.wait(id, WAIT).await.unwrap();
        assert_eq!(rec.status, Status::Compensated, "{rec:?}");
        assert_eq!(
            rec.reason.as_deref(),
            Some("aborted by an operator"),
            "{id}"
        );
    }
    o.shutdown().await;
}

/// Expands to one `#[tokio::test]` per suite case for a backend factory.
#[macro_export]
macro_rules! saga_tests {
    ($factory:expr) => {
        $crate::saga_tests!(@case $factory;
            commit_with_parallel_branches failure_compensates_in_reverse_order
            retries_and_unknown_outcomes parking_and_operator_actions
            validation_and_idempotent_submit deadline_compensates crash_at_every_log_point
            takeover_after_owner_death barrier_rules retention_removes_only_finished_sagas
            new_sagas_are_spread_and_aborts_reach_the_owner abort_racing_submit_is_kept);
    };
    (@case $factory:expr; $($name:ident)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((store, _guard)) = $factory.await else {
                    eprintln!("backend not available: case skipped");
                    return;
                };
                $crate::suite::$name(store).await;
            }
        )*
    };
}
