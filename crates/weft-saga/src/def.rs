//! Saga definitions: a DAG of named steps, each with an action and (unless marked as needing
//! none) a compensation, validated before anything runs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::DefError;

/// Longest step or saga name.
pub const MAX_NAME: usize = 128;
/// Most steps in one saga.
pub const MAX_STEPS: usize = 256;

/// A saga: steps with dependencies, an optional deadline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaDef {
    /// A name for people (not unique; the saga id is).
    pub name: String,
    /// The steps; order does not matter, `after` does.
    pub steps: Vec<StepDef>,
    /// Milliseconds from submission after which an unfinished saga compensates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// One step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    /// Unique within the saga.
    pub name: String,
    /// Steps that must succeed before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// What the step does.
    pub action: Call,
    /// How to undo it; required unless `no_compensation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<Call>,
    /// A step that needs no undo (a read, a pivot).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_compensation: bool,
    /// Deadline of each attempt, milliseconds (default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries of the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Retries of the compensation before the saga is parked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_retry: Option<RetrySpec>,
}

/// Bounded retries with exponential backoff and full jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, at least 1.
    pub max_attempts: u32,
    /// First backoff, milliseconds.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// Longest backoff, milliseconds.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
}

fn default_backoff() -> u64 {
    100
}

fn default_max_backoff() -> u64 {
    5_000
}

impl RetrySpec {
    /// The default for actions: 3 attempts.
    pub const ACTION: RetrySpec = RetrySpec {
        max_attempts: 3,
        backoff_ms: 100,
        max_backoff_ms: 5_000,
    };
    /// The default for compensations: 10 attempts, then the saga is parked.
    pub const COMPENSATION: RetrySpec = RetrySpec {
        max_attempts: 10,
        backoff_ms: 100,
        max_backoff_ms: 5_000,
    };

    /// Upper bound of the backoff before attempt `n + 1` (`n` ≥ 1 attempts made).
    pub fn cap(&self, n: u32) -> Duration {
        let ms = self
            .backoff_ms
            .saturating_mul(1u64 << (n.saturating_sub(1)).min(20))
            .min(self.max_backoff_ms);
        Duration::from_millis(ms)
    }
}

/// What a step calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Call {
    /// An HTTP request.
    Http(HttpCall),
    /// An async Rust function registered by name with the orchestrator.
    Local {
        /// The registered name.
        name: String,
        /// An argument passed to it.
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        arg: serde_json::Value,
    },
}

/// An HTTP step. The request carries `Weft-Saga-Id`, `Weft-Saga-Step`, `Weft-Saga-Phase` and
/// `Idempotency-Key` (`<saga id>/<step>/<phase>`) headers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCall {
    /// Method (default POST).
    #[serde(default = "default_method")]
    pub method: String,
    /// Full URL, or a path when `service` is given.
    pub url: String,
    /// A service registered with weft discovery: the URL's path goes to one of its passing
    /// instances (`http://<address><url>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Extra headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// JSON body (default: `{"saga": id, "step": name, "input": <saga input>}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

fn default_method() -> String {
    "POST".into()
}

impl StepDef {
    /// The action's retry policy.
    pub fn action_retry(&self) -> RetrySpec {
        self.retry.unwrap_or(RetrySpec::ACTION)
    }

    /// The compensation's retry policy.
    pub fn compensation_retry(&self) -> RetrySpec {
        self.compensation_retry.unwrap_or(RetrySpec::COMPENSATION)
    }

    /// The deadline of each attempt.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(30_000))
    }
}

fn check_name(what: &str, name: &str) -> Result<(), DefError> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(DefError::new(
            Some(name),
            format!("{what} names are 1 to {MAX_NAME} characters of A-Z a-z 0-9 - _ ."),
        ));
    }
    Ok(())
}

fn check_call(step: &str, what: &str, c: &Call) -> Result<(), DefError> {
    match c {
        Call::Http(h) => {
            let m = h.method.to_ascii_uppercase();
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&m.as_str()) {
                return Err(DefError::new(
                    Some(step),
                    format!(
                        "{what}: method {:?} is not one of GET POST PUT PATCH DELETE",
                        h.method
                    ),
                ));
            }
            let ok = match &h.service {
                Some(s) => !s.is_empty() && h.url.starts_with('/'),
                None => h.url.starts_with("http://") || h.url.starts_with("https://"),
            };
            if !ok {
                return Err(DefError::new(
                    Some(step),
                    format!(
                        "{what}: url {:?} must be http(s)://... (or a path starting with / when service is given)",
                        h.url
                    ),
                ));
            }
        }
        Call::Local { name, .. } if name.is_empty() => {
            return Err(DefError::new(
                Some(step),
                format!("{what}: local call without a name"),
            ));
        }
        Call::Local { .. } => {}
    }
    Ok(())
}

fn check_retry(step: &str, what: &str, r: &Option<RetrySpec>) -> Result<(), DefError> {
    if let Some(r) = r {
        if r.max_attempts == 0 || r.max_attempts > 1000 {
            return Err(DefError::new(
                Some(step),
                format!(
                    "{what}.max_attempts {} must be within 1..=1000",
                    r.max_attempts
                ),
            ));
        }
        if r.backoff_ms > r.max_backoff_ms {
            return Err(DefError::new(
                Some(step),
                format!("{what}.backoff_ms must not exceed max_backoff_ms"),
            ));
        }
    }
    Ok(())
}

impl SagaDef {
    /// Checks names, calls, retries, dependencies (unknown, self, cycles) and compensations;
    /// the first problem is reported with its step's name.
    pub fn validate(&self) -> Result<(), DefError> {
        check_name("saga", &self.name)?;
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return Err(DefError::new(
                None,
                format!(
                    "a saga has 1 to {MAX_STEPS} steps, got {}",
                    self.steps.len()
                ),
            ));
        }
        let mut names = BTreeSet::new();
        for s in &self.steps {
            check_name("step", &s.name)?;
            if !names.insert(s.name.as_str()) {
                return Err(DefError::new(Some(&s.name), "duplicate step name".into()));
            }
        }
        for s in &self.steps {
            check_call(&s.name, "action", &s.action)?;
            match (&s.compensation, s.no_compensation) {
                (Some(c), false) => check_call(&s.name, "compensation", c)?,
                (None, false) => {
                    return Err(DefError::new(
                        Some(&s.name),
                        "missing compensation (give one, or no_compensation: true for a step that needs none)".into(),
                    ))
                }
                (Some(_), true) => {
                    return Err(DefError::new(
                        Some(&s.name),
                        "both a compensation and no_compensation: true".into(),
                    ))
                }
                (None, true) => {}
            }
            check_retry(&s.name, "retry", &s.retry)?;
            check_retry(&s.name, "compensation_retry", &s.compensation_retry)?;
            if s.timeout_ms == Some(0) {
                return Err(DefError::new(
                    Some(&s.name),
                    "timeout_ms must be > 0".into(),
                ));
            }
            for d in &s.after {
                if d == &s.name {
                    return Err(DefError::new(Some(&s.name), "depends on itself".into()));
                }
                if !names.contains(d.as_str()) {
                    return Err(DefError::new(
                        Some(&s.name),
                        format!("depends on unknown step {d:?}"),
                    ));
                }
            }
        }
        if let Some(cycle) = self.find_cycle() {
            return Err(DefError::new(
                Some(&cycle[0]),
                format!("dependency cycle: {}", cycle.join(" -> ")),
            ));
        }
        Ok(())
    }

    /// A cycle among the `after` edges, as step names (first repeated at the end).
    fn find_cycle(&self) -> Option<Vec<String>> {
        let idx: BTreeMap<&str, usize> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        // 0 unvisited, 1 on the stack, 2 done.
        let mut mark = vec![0u8; self.steps.len()];
        let mut path: Vec<usize> = Vec::new();
        fn visit(
            d: &SagaDef,
            idx: &BTreeMap<&str, usize>,
            i: usize,
            mark: &mut [u8],
            path: &mut Vec<usize>,
        ) -> Option<Vec<String>> {
            mark[i] = 1;
            path.push(i);
            for dep in &d.steps[i].after {
                let j = idx[dep.as_str()];
                if mark[j] == 1 {
                    let start = path.iter().position(|p| *p == j).unwrap_or(0);
                    let mut c: Vec<String> = path[start..]
                        .iter()
                        .map(|k| d.steps[*k].name.clone())
                        .collect();
                    c.push(d.steps[j].name.clone());
                    return Some(c);
                }
                if mark[j] == 0 {
                    if let Some(c) = visit(d, idx, j, mark, path) {
                        return Some(c);
                    }
                }
            }
            path.pop();
            mark[i] = 2;
            None
        }
        for i in 0..self.steps.len() {
            if mark[i] == 0 {
                if let Some(c) = visit(self, &idx, i, &mut mark, &mut path) {
                    return Some(c);
                }
            }
        }
        None
    }

    /// The step named `name`.
    pub fn step(&self, name: &str) -> Option<&StepDef> {
        self.steps.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(name: &str) -> Call {
        Call::Local {
            name: name.into(),
            arg: serde_json::Value::Null,
        }
    }

    fn step(name: &str, after: &[&str]) -> StepDef {
        StepDef {
            name: name.into(),
            after: after.iter().map(|s| s.to_string()).collect(),
            action: local("do"),
            compensation: Some(local("undo")),
            no_compensation: false,
            timeout_ms: None,
            retry: None,
            compensation_retry: None,
        }
    }

    fn saga(steps: Vec<StepDef>) -> SagaDef {
        SagaDef {
            name: "order".into(),
            steps,
            deadline_ms: None,
        }
    }

    #[test]
    fn a_good_dag_passes() {
        let d = saga(vec![
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["a"]),
            step("d", &["b", "c"]),
        ]);
        d.validate().unwrap();
    }

    #[test]
    fn every_problem_names_its_step() {
        let cases: Vec<(SagaDef, &str, &str)> = vec![
            (saga(vec![step("a", &[]), step("a", &[])]), "a", "duplicate"),
            (saga(vec![step("a", &["zz"])]), "a", "unknown step \"zz\""),
            (saga(vec![step("a", &["a"])]), "a", "itself"),
            (
                saga(vec![
                    step("a", &["c"]),
                    step("b", &["a"]),
                    step("c", &["b"]),
                ]),
                "a",
                "cycle: a -> c -> b -> a",
            ),
            (
                saga(vec![StepDef {
                    compensation: None,
                    ..step("pay", &[])
                }]),
                "pay",
                "missing compensation",
            ),
            (saga(vec![step("bad name", &[])]), "bad name", "names are"),
            (
                saga(vec![StepDef {
                    action: Call::Http(HttpCall {
                        method: "POST".into(),
                        url: "ftp://x".into(),
                        service: None,
                        headers: BTreeMap::new(),
                        body: None,
                    }),
                    ..step("h", &[])
                }]),
                "h",
                "must be http(s)",
            ),
            (
                saga(vec![StepDef {
                    retry: Some(RetrySpec {
                        max_attempts: 0,
                        backoff_ms: 1,
                        max_backoff_ms: 1,
                    }),
                    ..step("r", &[])
                }]),
                "r",
                "max_attempts",
            ),
        ];
        for (d, who, what) in cases {
            let e = d.validate().unwrap_err();
            assert_eq!(e.step.as_deref(), Some(who), "{e}");
            assert!(e.to_string().contains(what), "{e}");
        }
        let e = saga(vec![]).validate().unwrap_err();
        assert!(e.to_string().contains("1 to 256 steps"), "{e}");
    }

    #[test]
    fn no_compensation_is_explicit() {
        let d = saga(vec![StepDef {
            compensation: None,
            no_compensation: true,
            ..step("read", &[])
        }]);
        d.validate().unwrap();
    }

    #[test]
    fn json_round_trip_and_unknown_fields_refused() {
        let j = r#"{"name":"o","steps":[{"name":"a","action":{"local":{"name":"f"}},"no_compensation":true}]}"#;
        let d: SagaDef = serde_json::from_str(j).unwrap();
        d.validate().unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), j);
        let bad = r#"{"name":"o","steps":[],"colour":1}"#;
        assert!(serde_json::from_str::<SagaDef>(bad).is_err());
    }

    #[test]
    fn backoff_caps_grow_and_stop() {
        let r = RetrySpec {
            max_attempts: 10,
            backoff_ms: 100,
            max_backoff_ms: 1000,
        };
        assert_eq!(r.cap(1), Duration::from_millis(100));
        assert_eq!(r.cap(2), Duration::from_millis(200));
        assert_eq!(r.cap(5), Duration::from_millis(1000));
        assert_eq!(r.cap(60), Duration::from_millis(1000));
    }
}
