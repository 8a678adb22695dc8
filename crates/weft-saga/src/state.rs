//! The saga record and its pure transitions: which steps may start, which may be compensated,
//! when the saga is finished. No I/O here; the executor applies these and writes the result.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::def::SagaDef;

/// Where a saga is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Steps run forward.
    Running,
    /// A step failed (or the deadline passed, or an operator aborted): undoing what started.
    Compensating,
    /// Every step succeeded.
    Committed,
    /// Everything that started was compensated.
    Compensated,
    /// A compensation (or an action under `park_on_failure`) kept failing; an operator must
    /// resume, skip or abort.
    Parked,
    /// An operator gave up on a parked saga; nothing more runs.
    Aborted,
}

impl Status {
    /// Every status, in order.
    pub const ALL: [Status; 6] = [
        Status::Running,
        Status::Compensating,
        Status::Committed,
        Status::Compensated,
        Status::Parked,
        Status::Aborted,
    ];

    /// The status as written in keys and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Compensating => "compensating",
            Status::Committed => "committed",
            Status::Compensated => "compensated",
            Status::Parked => "parked",
            Status::Aborted => "aborted",
        }
    }

    /// Parses [`Status::as_str`].
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Nothing more will happen by itself (final, or parked).
    pub fn is_at_rest(self) -> bool {
        !matches!(self, Status::Running | Status::Compensating)
    }

    /// Finished for good.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Committed | Status::Compensated | Status::Aborted
        )
    }
}

/// Where one step is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Its action was sent (and may be in flight, or lost in a crash: it runs again with
    /// the same idempotency key).
    Running,
    /// The action succeeded.
    Succeeded,
    /// The action failed (definitely, unless `unknown`).
    Failed,
    /// Its compensation was sent.
    Compensating,
    /// The compensation succeeded (or an operator skipped it).
    Compensated,
}

impl StepStatus {
    /// The status as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Compensating => "compensating",
            StepStatus::Compensated => "compensated",
        }
    }
}

/// Which of a step's calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The action.
    Action,
    /// The compensation.
    Compensation,
}

impl Phase {
    /// As in the idempotency key.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Action => "action",
            Phase::Compensation => "compensation",
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One step's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Where it is.
    pub status: StepStatus,
    /// Attempts of the action.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// Attempts of the compensation.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compensation_attempts: u32,
    /// Some attempt's outcome is unknown (it may have taken effect).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unknown: bool,
    /// The action's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Milliseconds since the epoch: action started, finished; compensation started, finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// See `started_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// See `started_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_started_ms: Option<u64>,
    /// See `started_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_finished_ms: Option<u64>,
}

impl StepRecord {
    fn new() -> Self {
        StepRecord {
            status: StepStatus::Pending,
            attempts: 0,
            compensation_attempts: 0,
            unknown: false,
            result: None,
            last_error: None,
            started_ms: None,
            finished_ms: None,
            compensation_started_ms: None,
            compensation_finished_ms: None,
        }
    }

    /// Whether the action may have taken effect, so it must be undone.
    pub fn took_effect(&self) -> bool {
        match self.status {
            StepStatus::Running | StepStatus::Succeeded | StepStatus::Compensating => true,
            StepStatus::Failed => self.unknown,
            StepStatus::Pending | StepStatus::Compensated => false,
        }
    }
}

/// Why a saga is parked, and what an operator can do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Parked {
    /// The step that kept failing.
    pub step: String,
    /// Its call that kept failing.
    pub phase: Phase,
    /// The last error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
}

/// A saga's durable record (what `/weft/saga/s/<id>` holds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaRecord {
    /// The saga id.
    pub id: String,
    /// The definition's name.
    pub name: String,
    /// Where it is.
    pub status: Status,
    /// Every step, by name.
    pub steps: BTreeMap<String, StepRecord>,
    /// Submitted, milliseconds since the epoch.
    pub created_ms: u64,
    /// Last change.
    pub updated_ms: u64,
    /// Compensate if unfinished by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Why it compensates (the failed step and its error, the deadline, an operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Set while parked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<Parked>,
    /// Timeline events written so far (the next event's sequence number).
    pub events: u64,
}

impl SagaRecord {
    /// A new, running saga.
    pub fn new(id: &str, def: &SagaDef, now_ms: u64) -> Self {
        SagaRecord {
            id: id.to_string(),
            name: def.name.clone(),
            status: Status::Running,
            steps: def
                .steps
                .iter()
                .map(|s| (s.name.clone(), StepRecord::new()))
                .collect(),
            created_ms: now_ms,
            updated_ms: now_ms,
            deadline_ms: def.deadline_ms.map(|d| now_ms.saturating_add(d)),
            reason: None,
            parked: None,
            events: 0,
        }
    }

    fn step(&self, name: &str) -> &StepRecord {
        &self.steps[name]
    }

    /// Steps whose action may start now: pending, every dependency succeeded.
    pub fn ready(&self, def: &SagaDef) -> Vec<String> {
        if self.status != Status::Running {
            return Vec::new();
        }
        def.steps
            .iter()
            .filter(|s| self.step(&s.name).status == StepStatus::Pending)
            .filter(|s| {
                s.after
                    .iter()
                    .all(|d| self.step(d).status == StepStatus::Succeeded)
            })
            .map(|s| s.name.clone())
            .collect()
    }

    /// Steps whose action was sent and has no outcome yet (after a crash: run again).
    pub fn in_flight(&self, phase: Phase) -> Vec<String> {
        let want = match phase {
            Phase::Action => StepStatus::Running,
            Phase::Compensation => StepStatus::Compensating,
        };
        self.steps
            .iter()
            .filter(|(_, r)| r.status == want)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether `step` still has to be undone.
    fn needs_compensation(&self, def: &SagaDef, step: &str) -> bool {
        let r = self.step(step);
        let has = def.step(step).is_some_and(|s| !s.no_compensation);
        has && r.took_effect() && r.status != StepStatus::Compensated
    }

    /// Steps whose compensation may start now: they took effect, and every step that depends
    /// on them is compensated or never took effect (reverse dependency order).
    pub fn compensable(&self, def: &SagaDef) -> Vec<String> {
        if self.status != Status::Compensating {
            return Vec::new();
        }
        def.steps
            .iter()
            .filter(|s| {
                self.needs_compensation(def, &s.name)
                    && matches!(
                        self.step(&s.name).status,
                        StepStatus::Succeeded | StepStatus::Failed
                    )
            })
            .filter(|s| {
                def.steps
                    .iter()
                    .filter(|t| t.after.contains(&s.name))
                    .all(|t| {
                        let tr = self.step(&t.name);
                        !self.needs_compensation(def, &t.name)
                            && !matches!(tr.status, StepStatus::Running | StepStatus::Compensating)
                    })
            })
            .map(|s| s.name.clone())
            .collect()
    }

    /// The status the saga reaches when nothing is in flight and nothing can start, if it is
    /// done: `Committed` when every step succeeded, `Compensated` when nothing is left to
    /// undo.
    pub fn finished(&self, def: &SagaDef) -> Option<Status> {
        match self.status {
            Status::Running => self
                .steps
                .values()
                .all(|r| r.status == StepStatus::Succeeded)
                .then_some(Status::Committed),
            Status::Compensating => {
                let busy = self
                    .steps
                    .values()
                    .any(|r| matches!(r.status, StepStatus::Running | StepStatus::Compensating));
                let left = def
                    .steps
                    .iter()
                    .any(|s| self.needs_compensation(def, &s.name));
                (!busy && !left).then_some(Status::Compensated)
            }
            _ => None,
        }
    }

    /// Marks steps started.
    pub fn start(&mut self, steps: &[String], phase: Phase, now_ms: u64) {
        for s in steps {
            let r = self.steps.get_mut(s).expect("known step");
            match phase {
                Phase::Action => {
                    r.status = StepStatus::Running;
                    r.started_ms.get_or_insert(now_ms);
                }
                Phase::Compensation => {
                    r.status = StepStatus::Compensating;
                    r.compensation_started_ms.get_or_insert(now_ms);
                }
            }
        }
        if !steps.is_empty() {
            self.updated_ms = now_ms;
        }
    }

    /// Switches to compensating (once), with the reason.
    pub fn begin_compensation(&mut self, reason: String, now_ms: u64) {
        if self.status == Status::Running {
            self.status = Status::Compensating;
            self.reason = Some(reason);
            self.updated_ms = now_ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::def::{Call, StepDef};

    fn def(edges: &[(&str, &[&str])]) -> SagaDef {
        SagaDef {
            name: "t".into(),
            deadline_ms: None,
            steps: edges
                .iter()
                .map(|(n, after)| StepDef {
                    name: n.to_string(),
                    after: after.iter().map(|s| s.to_string()).collect(),
                    action: Call::Local {
                        name: "x".into(),
                        arg: Value::Null,
                    },
                    compensation: Some(Call::Local {
                        name: "y".into(),
                        arg: Value::Null,
                    }),
                    no_compensation: false,
                    timeout_ms: None,
                    retry: None,
                    compensation_retry: None,
                })
                .collect(),
        }
    }

    fn set(r: &mut SagaRecord, step: &str, st: StepStatus) {
        r.steps.get_mut(step).unwrap().status = st;
    }

    #[test]
    fn parallel_branches_start_together_and_join() {
        let d = def(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])]);
        let mut r = SagaRecord::new("s", &d, 0);
        assert_eq!(r.ready(&d), vec!["a"]);
        set(&mut r, "a", StepStatus::Succeeded);
        assert_eq!(r.ready(&d), vec!["b", "c"]);
        set(&mut r, "b", StepStatus::Succeeded);
        set(&mut r, "c", StepStatus::Running);
        assert!(r.ready(&d).is_empty(), "d waits for c");
        set(&mut r, "c", StepStatus::Succeeded);
        assert_eq!(r.ready(&d), vec!["d"]);
        set(&mut r, "d", StepStatus::Succeeded);
        assert_eq!(r.finished(&d), Some(Status::Committed));
    }

    #[test]
    fn compensation_runs_in_reverse_dependency_order_for_started_steps_only() {
        let d = def(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])]);
        let mut r = SagaRecord::new("s", &d, 0);
        set(&mut r, "a", StepStatus::Succeeded);
        set(&mut r, "b", StepStatus::Succeeded);
        set(&mut r, "c", StepStatus::Failed); // definite failure: nothing to undo
        r.begin_compensation("c failed".into(), 1);
        assert_eq!(
            r.compensable(&d),
            vec!["b"],
            "a waits for b; c and d never took effect"
        );
        set(&mut r, "b", StepStatus::Compensated);
        assert_eq!(r.compensable(&d), vec!["a"]);
        assert_eq!(r.finished(&d), None);
        set(&mut r, "a", StepStatus::Compensated);
        assert_eq!(r.finished(&d), Some(Status::Compensated));
    }

    #[test]
    fn an_unknown_outcome_is_compensated() {
        let d = def(&[("a", &[]), ("b", &["a"])]);
        let mut r = SagaRecord::new("s", &d, 0);
        set(&mut r, "a", StepStatus::Succeeded);
        set(&mut r, "b", StepStatus::Failed);
        r.steps.get_mut("b").unwrap().unknown = true;
        r.begin_compensation("b timed out".into(), 1);
        assert_eq!(r.compensable(&d), vec!["b"]);
    }

    #[test]
    fn in_flight_steps_hold_back_compensation_of_their_dependencies() {
        let d = def(&[("a", &[]), ("b", &["a"]), ("c", &["a"])]);
        let mut r = SagaRecord::new("s", &d, 0);
        set(&mut r, "a", StepStatus::Succeeded);
        set(&mut r, "b", StepStatus::Failed);
        set(&mut r, "c", StepStatus::Running);
        r.begin_compensation("b failed".into(), 1);
        assert!(r.compensable(&d).is_empty(), "c is still running");
        assert_eq!(r.finished(&d), None);
    }

    #[test]
    fn status_names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        use StepStatus::*;
        for s in [
            Pending,
            Running,
            Succeeded,
            Failed,
            Compensating,
            Compensated,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for p in [Phase::Action, Phase::Compensation] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
    }
}
