//! One saga's task: plan with the pure transitions (`state`), write each transition to the log
//! before acting on it, call steps (with retries) concurrently, apply their outcomes.
//!
//! The loop's invariant: a call is sent only after the record that says it started is
//! durable; an outcome is acted upon (successors started, compensation begun) only in the same
//! write that records it. So after a crash the record says exactly which calls may have been
//! sent without an outcome, and those are sent again with the same idempotency key.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

use crate::def::{Call, SagaDef, StepDef};
use crate::error::{Result, SagaError};
use crate::invoke::{Invoker, StepCtx, StepOutcome};
use crate::log::{Event, Loaded, Log};
use crate::state::{Parked, Phase, SagaRecord, Status, StepStatus};

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A request to a running saga's task.
#[derive(Debug)]
pub(crate) enum Control {
    /// Compensate now.
    Abort,
}

/// How one call ended, after its retries.
pub(crate) struct Completion {
    step: String,
    phase: Phase,
    /// `Ok(answer)` or the last error.
    result: std::result::Result<Value, String>,
    /// Attempts made by this call.
    attempts: u32,
    /// Some attempt may have taken effect.
    unknown: bool,
    /// The failure was final (not retries running out).
    terminal: bool,
    /// Failed attempts, for the timeline.
    events: Vec<Event>,
    took: Duration,
}

/// What a saga task needs from its orchestrator.
pub(crate) struct Ctx {
    pub log: Log,
    pub invoker: Invoker,
    /// Called before and after every durable write with a running count; `true` crashes.
    pub fault: Arc<dyn Fn(u64) -> bool + Send + Sync>,
    /// Durable writes made (by every saga of this orchestrator).
    pub writes: Arc<std::sync::atomic::AtomicU64>,
    /// Set when the orchestrator crashed (simulated): no more writes.
    pub crashed: Arc<std::sync::atomic::AtomicBool>,
    pub rng: Arc<dyn weft_resilience::rng::Random>,
}

impl Ctx {
    fn point(&self) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.writes.load(SeqCst);
        if self.crashed.load(SeqCst) || (self.fault)(n) {
            self.crashed.store(true, SeqCst);
            return Err(SagaError::NotOwner("(the orchestrator crashed)".into()));
        }
        Ok(())
    }
}

/// One attempt after another until success, a final failure, or the step's retries run out.
async fn call_with_retries(
    invoker: Invoker,
    step: StepDef,
    phase: Phase,
    ctx: StepCtx,
    rng: Arc<dyn weft_resilience::rng::Random>,
) -> Completion {
    let (call, spec): (&Call, _) = match phase {
        Phase::Action => (&step.action, step.action_retry()),
        Phase::Compensation => (
            step.compensation
                .as_ref()
                .expect("validated: a compensation"),
            step.compensation_retry(),
        ),
    };
    let t0 = Instant::now();
    let mut unknown = false;
    let mut events = Vec::new();
    let mut n = 0;
    loop {
        n += 1;
        let at = Instant::now();
        let attempt_ctx = StepCtx {
            attempt: ctx.attempt + n,
            ..ctx.clone()
        };
        let outcome = invoker.invoke(call, attempt_ctx, step.timeout()).await;
        let done = |result, terminal, unknown, events| Completion {
            step: step.name.clone(),
            phase,
            result,
            attempts: n,
            unknown,
            terminal,
            events,
            took: t0.elapsed(),
        };
        let err = match outcome {
            StepOutcome::Done(v) => return done(Ok(v), false, unknown, events),
            StepOutcome::Fail(e) => return done(Err(e), true, unknown, events),
            StepOutcome::Retry(e) => e,
            StepOutcome::Unknown(e) => {
                unknown = true;
                e
            }
        };
        metrics::counter!("weft_saga_attempts_failed_total", "phase" => phase.as_str())
            .increment(1);
        let mut ev = Event::new("attempt_failed", now_ms())
            .step(&step.name, phase)
            .detail(err.clone());
        ev.attempt = Some(ctx.attempt + n);
        ev.duration_ms = Some(at.elapsed().as_millis() as u64);
        events.push(ev);
        if n >= spec.max_attempts {
            return done(Err(err), false, unknown, events);
        }
        let cap = spec.cap(n);
        tokio::time::sleep(cap.mul_f64(rng.next_f64())).await;
    }
}

/// Applies a completion to `next`, adding its events. Returns a parking decision for a
/// compensation that failed for good.
fn apply(
    next: &mut SagaRecord,
    c: Completion,
    now: u64,
    events: &mut Vec<Event>,
) -> Option<Parked> {
    events.extend(c.events);
    let took = c.took.as_millis() as u64;
    metrics::histogram!("weft_saga_call_seconds", "phase" => c.phase.as_str())
        .record(c.took.as_secs_f64());
    let r = next.steps.get_mut(&c.step).expect("known step");
    let ev = |kind: &str| {
        let mut e = Event::new(kind, now).step(&c.step, c.phase);
        e.duration_ms = Some(took);
        e
    };
    match (c.phase, c.result) {
        (Phase::Action, Ok(v)) => {
            r.status = StepStatus::Succeeded;
            r.attempts += c.attempts;
            r.unknown |= c.unknown;
            r.result = Some(v);
            r.finished_ms = Some(now);
            events.push(ev("succeeded"));
            None
        }
        (Phase::Action, Err(e)) => {
            r.status = StepStatus::Failed;
            r.attempts += c.attempts;
            r.unknown |= c.unknown;
            r.last_error = Some(e.clone());
            r.finished_ms = Some(now);
            let how = if c.terminal {
                "failed"
            } else {
                "failed after its retries"
            };
            events.push(ev("failed").detail(format!("{how}: {e}")));
            if next.status == Status::Running {
                next.begin_compensation(format!("step {} failed: {e}", c.step), now);
                events.push(
                    Event::new("compensating", now).detail(next.reason.clone().unwrap_or_default()),
                );
            }
            None
        }
        (Phase::Compensation, Ok(_)) => {
            r.status = StepStatus::Compensated;
            r.compensation_attempts += c.attempts;
            r.compensation_finished_ms = Some(now);
            events.push(ev("compensated"));
            metrics::counter!("weft_saga_compensations_total").increment(1);
            None
        }
        (Phase::Compensation, Err(e)) => {
            r.compensation_attempts += c.attempts;
            r.last_error = Some(e.clone());
            events.push(ev("compensation_failed").detail(e.clone()));
            Some(Parked {
                step: c.step.clone(),
                phase: Phase::Compensation,
                error: e,
                attempts: r.compensation_attempts,
            })
        }
    }
}

/// What the task keeps between iterations.
struct Task<'a> {
    ctx: &'a Ctx,
    def: &'a SagaDef,
    input: Arc<Value>,
    owner_rev: i64,
    loaded: Loaded,
    running: HashSet<(String, Phase)>,
    park: Option<Parked>,
}

impl Task<'_> {
    /// Writes `next` with `events` (retrying store failures with backoff). A fenced write ends
    /// the task with `NotOwner`.
    async fn write(
        &mut self,
        mut next: SagaRecord,
        events: Vec<Event>,
        release: bool,
    ) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        next.events = self.loaded.record.events + events.len() as u64;
        let mut delay = Duration::from_millis(50);
        loop {
            self.ctx.point()?;
            match self
                .ctx
                .log
                .commit(&self.loaded, &next, &events, self.owner_rev, release)
                .await
            {
                Ok(rev) => {
                    self.ctx.writes.fetch_add(1, SeqCst);
                    self.ctx.point()?;
                    if next.status != self.loaded.record.status {
                        metrics::counter!("weft_saga_transitions_total", "to" => next.status.as_str())
                            .increment(1);
                    }
                    self.loaded = Loaded {
                        record: next,
                        mod_revision: rev,
                    };
                    return Ok(());
                }
                Err(e) if e.is_retryable() && !matches!(e, SagaError::NotOwner(_)) => {
                    tracing::warn!(saga = %next.id, error = %e, "saga log write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn results(&self) -> BTreeMap<String, Value> {
        self.loaded
            .record
            .steps
            .iter()
            .filter_map(|(n, r)| r.result.clone().map(|v| (n.clone(), v)))
            .collect()
    }

    /// Plans the next transition from `done` completions and controls; returns the new
    /// record, its events and the calls to send once it is durable.
    fn plan(
        &mut self,
        done: Vec<Completion>,
        abort: bool,
        now: u64,
    ) -> (SagaRecord, Vec<Event>, Vec<(String, Phase)>) {
        let mut next = self.loaded.record.clone();
        let mut events = Vec::new();
        for c in done {
            self.running.remove(&(c.step.clone(), c.phase));
            if let Some(p) = apply(&mut next, c, now, &mut events) {
                self.park.get_or_insert(p);
            }
        }
        if abort && next.status == Status::Running {
            next.begin_compensation("aborted by an operator".into(), now);
            events.push(Event::new("aborted", now).detail("compensating"));
        }
        if next.status == Status::Running && next.deadline_ms.is_some_and(|d| now >= d) {
            next.begin_compensation("the saga's deadline passed".into(), now);
            events.push(Event::new("deadline", now).detail("compensating"));
        }
        let mut calls = Vec::new();
        if self.park.is_none() {
            for phase in [Phase::Action, Phase::Compensation] {
                for s in next.in_flight(phase) {
                    if !self.running.contains(&(s.clone(), phase)) {
                        calls.push((s, phase));
                    }
                }
            }
            let ready = next.ready(self.def);
            next.start(&ready, Phase::Action, now);
            let comps = next.compensable(self.def);
            next.start(&comps, Phase::Compensation, now);
            for s in ready {
                events.push(Event::new("started", now).step(&s, Phase::Action));
                calls.push((s, Phase::Action));
            }
            for s in comps {
                events.push(Event::new("started", now).step(&s, Phase::Compensation));
                calls.push((s, Phase::Compensation));
            }
        }
        if self.running.is_empty() && calls.is_empty() {
            if let Some(p) = self.park.take() {
                events.push(
                    Event::new("parked", now)
                        .step(&p.step, p.phase)
                        .detail(format!("after {} attempts: {}", p.attempts, p.error)),
                );
                metrics::counter!("weft_saga_parked_total").increment(1);
                next.status = Status::Parked;
                next.parked = Some(p);
            } else if let Some(st) = next.finished(self.def) {
                events.push(Event::new(st.as_str(), now));
                next.status = st;
            }
        }
        if next != self.loaded.record || !events.is_empty() {
            next.updated_ms = now;
        }
        (next, events, calls)
    }
}

/// Runs the saga `id`, owned under `owner_rev`, until it is committed, compensated or parked
/// (or this orchestrator loses it); returns the record at rest.
pub(crate) async fn drive(
    ctx: &Ctx,
    id: &str,
    owner_rev: i64,
    control: &mut mpsc::UnboundedReceiver<Control>,
    mut note: Option<Event>,
    known: Option<(Arc<crate::log::Stored>, Loaded)>,
) -> Result<SagaRecord> {
    // A saga this orchestrator just created needs no read back.
    let (stored, loaded) = match known {
        Some(k) => k,
        None => (Arc::new(ctx.log.stored(id).await?), ctx.log.load(id).await?),
    };
    let mut t = Task {
        ctx,
        def: &stored.def,
        input: Arc::new(stored.input.clone()),
        owner_rev,
        loaded,
        running: HashSet::new(),
        park: None,
    };
    if t.loaded.record.status.is_at_rest() {
        // Claimed as it came to rest (a late takeover): nothing to do, give it back.
        ctx.log.release(id, owner_rev).await?;
        return Ok(t.loaded.record);
    }
    let mut inflight = FuturesUnordered::new();
    let mut done = Vec::new();
    let mut abort = false;
    loop {
        let now = now_ms();
        let (next, mut events, calls) =
            t.plan(std::mem::take(&mut done), std::mem::take(&mut abort), now);
        if let Some(n) = note.take() {
            events.insert(0, n);
        }
        if next != t.loaded.record || !events.is_empty() {
            let release = next.status.is_at_rest();
            t.write(next, events, release).await?;
        }
        if t.loaded.record.status.is_at_rest() {
            return Ok(t.loaded.record);
        }
        let results = t.results();
        for (s, phase) in calls {
            let step = t.def.step(&s).expect("known step").clone();
            let r = &t.loaded.record.steps[&s];
            let attempt = match phase {
                Phase::Action => r.attempts,
                Phase::Compensation => r.compensation_attempts,
            };
            let sctx = StepCtx {
                saga_id: id.to_string(),
                step: s.clone(),
                phase,
                attempt,
                input: t.input.clone(),
                arg: Value::Null,
                results: results.clone(),
            };
            t.running.insert((s, phase));
            inflight.push(call_with_retries(
                ctx.invoker.clone(),
                step,
                phase,
                sctx,
                ctx.rng.clone(),
            ));
        }
        let deadline = t
            .loaded
            .record
            .deadline_ms
            .filter(|_| t.loaded.record.status == Status::Running)
            .map(|d| Instant::now() + Duration::from_millis(d.saturating_sub(now_ms())));
        tokio::select! {
            // An operator's abort already received goes before completions that are ready:
            // it applies at the saga's next transition, never lost to a race with its steps.
            biased;
            Some(Control::Abort) = control.recv() => abort = true,
            Some(c) = inflight.next(), if !inflight.is_empty() => {
                done.push(c);
                // Completions that are already in: one write for all of them.
                while let Some(Some(c)) = futures::FutureExt::now_or_never(inflight.next()) {
                    done.push(c);
                }
            }
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {}
            else => {
                return Err(SagaError::Conflict {
                    id: id.to_string(),
                    message: "nothing to run and nothing in flight, yet not finished (a bug)".into(),
                })
            }
        }
    }
}
