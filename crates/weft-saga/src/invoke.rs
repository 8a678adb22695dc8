//! Calling a step: local functions registered by name, and HTTP requests (through a circuit
//! breaker per target, with idempotency headers). Outcomes are classified here.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::time::Duration;
use weft_resilience::circuit::CircuitBreaker;

use crate::def::Call;
use crate::state::Phase;

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum StepOutcome {
    /// It succeeded, with an answer.
    Done(Value),
    /// It failed without taking effect and may be retried.
    Retry(String),
    /// It may have taken effect (a timeout, a connection lost after sending); retried, and
    /// compensated if the step ends up failing.
    Unknown(String),
    /// It failed for good (start compensating).
    Fail(String),
}

/// What a step's call gets.
#[derive(Clone, Debug)]
pub struct StepCtx {
    /// The saga.
    pub saga_id: String,
    /// The step.
    pub step: String,
    /// Action or compensation.
    pub phase: Phase,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The saga's input.
    pub input: Arc<Value>,
    /// The step's `arg` (local calls).
    pub arg: Value,
    /// Answers of the steps that succeeded so far, by name.
    pub results: BTreeMap<String, Value>,
}

impl StepCtx {
    /// `<saga id>/<step>/<phase>`: the same for every attempt of one call, across crashes.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}/{}", self.saga_id, self.step, self.phase.as_str())
    }
}

/// A boxed step future.
pub type StepFuture = Pin<Box<dyn Future<Output = StepOutcome> + Send>>;

/// A local step: an async function of the context.
pub type LocalFn = Arc<dyn Fn(StepCtx) -> StepFuture + Send + Sync>;

/// Local functions by name.
#[derive(Clone, Default)]
pub struct Registry {
    fns: HashMap<String, LocalFn>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.fns.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` as `name` (replacing one of that name).
    pub fn register<F, Fut>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(StepCtx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StepOutcome> + Send + 'static,
    {
        self.fns
            .insert(name.to_string(), Arc::new(move |c| Box::pin(f(c))));
        self
    }

    /// The function named `name`.
    pub fn get(&self, name: &str) -> Option<&LocalFn> {
        self.fns.get(name)
    }
}

/// Resolves a service name to one instance address (`host:port`).
pub type Resolver =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Option<String>> + Send>> + Send + Sync>;

/// Calls steps.
#[derive(Clone)]
pub struct Invoker {
    registry: Registry,
    #[cfg(feature = "http")]
    http: reqwest::Client,
    resolver: Option<Resolver>,
    breakers: Arc<Mutex<HashMap<String, Arc<CircuitBreaker>>>>,
}

impl Invoker {
    /// An invoker for `registry`'s local functions and HTTP calls.
    pub fn new(registry: Registry, resolver: Option<Resolver>) -> Self {
        Invoker {
            registry,
            #[cfg(feature = "http")]
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("an HTTP client"),
            resolver,
            breakers: Arc::default(),
        }
    }

    /// The breaker of one target (a host or a service): opens at 50 % failures over the last
    /// 20 calls, probes after 5 s.
    fn breaker(&self, target: &str) -> Arc<CircuitBreaker> {
        let mut b = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        b.entry(target.to_string())
            .or_insert_with(|| {
                Arc::new(
                    CircuitBreaker::builder(format!("saga:{target}"))
                        .count_window(20)
                        .minimum_calls(10)
                        .wait_in_open(Duration::from_secs(5), 2.0, Duration::from_secs(60))
                        .half_open(2, Duration::from_secs(30))
                        .build()
                        .expect("valid breaker settings"),
                )
            })
            .clone()
    }

    /// One attempt of `call` within `timeout`.
    pub async fn invoke(&self, call: &Call, ctx: StepCtx, timeout: Duration) -> StepOutcome {
        match call {
            Call::Local { name, arg } => {
                let Some(f) = self.registry.get(name).cloned() else {
                    return StepOutcome::Fail(format!("no local step function named {name:?}"));
                };
                let ctx = StepCtx {
                    arg: arg.clone(),
                    ..ctx
                };
                match tokio::time::timeout(timeout, f(ctx)).await {
                    Ok(o) => o,
                    Err(_) => StepOutcome::Unknown(format!("timed out after {timeout:?}")),
                }
            }
            Call::Http(h) => self.http(h, ctx, timeout).await,
        }
    }

    #[cfg(not(feature = "http"))]
    async fn http(&self, _h: &crate::def::HttpCall, _c: StepCtx, _t: Duration) -> StepOutcome {
        StepOutcome::Fail("HTTP steps need weft-saga's `http` feature".into())
    }

    #[cfg(feature = "http")]
    async fn http(&self, h: &crate::def::HttpCall, ctx: StepCtx, timeout: Duration) -> StepOutcome {
        let (url, target) = match &h.service {
            Some(svc) => {
                let Some(resolve) = &self.resolver else {
                    return StepOutcome::Fail(format!(
                        "service {svc:?}: this orchestrator has no discovery"
                    ));
                };
                match resolve(svc.clone()).await {
                    Some(addr) => (format!("http://{addr}{}", h.url), svc.clone()),
                    None => {
                        return StepOutcome::Retry(format!(
                            "service {svc:?} has no passing instance"
                        ))
                    }
                }
            }
            None => {
                let host = h.url.split('/').nth(2).unwrap_or("").to_string();
                (h.url.clone(), host)
            }
        };
        let breaker = self.breaker(&target);
        let permit = match breaker.try_acquire() {
            Ok(p) => p,
            Err(e) => return StepOutcome::Retry(format!("{target}: {e}")),
        };
        let body = h.body.clone().unwrap_or_else(|| {
            serde_json::json!({
                "saga": ctx.saga_id, "step": ctx.step, "phase": ctx.phase.as_str(),
                "input": *ctx.input, "results": ctx.results,
            })
        });
        let method = reqwest::Method::from_bytes(h.method.to_ascii_uppercase().as_bytes())
            .unwrap_or(reqwest::Method::POST);
        let mut req = self
            .http
            .request(method, &url)
            .timeout(timeout)
            .header("idempotency-key", ctx.idempotency_key())
            .header("weft-saga-id", &ctx.saga_id)
            .header("weft-saga-step", &ctx.step)
            .header("weft-saga-phase", ctx.phase.as_str())
            .header("weft-saga-attempt", ctx.attempt.to_string())
            .json(&body);
        for (k, v) in &h.headers {
            req = req.header(k, v);
        }
        let outcome = classify(req.send().await, &url).await;
        breaker.record(
            permit,
            match outcome {
                StepOutcome::Done(_) | StepOutcome::Fail(_) => weft_resilience::Outcome::Success,
                _ => weft_resilience::Outcome::Failure,
            },
        );
        outcome
    }
}

/// 2xx: done (the JSON answer, or the text); 4xx except 408, 425 and 429: failed for good;
/// other statuses: retry; an error before the request was sent: retry; after: unknown.
#[cfg(feature = "http")]
async fn classify(r: reqwest::Result<reqwest::Response>, url: &str) -> StepOutcome {
    match r {
        Ok(resp) => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if status.is_success() {
                let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
                return StepOutcome::Done(v);
            }
            let msg = format!("{url}: HTTP {}: {}", status.as_u16(), truncate(&text, 300));
            match status.as_u16() {
                408 | 425 | 429 => StepOutcome::Retry(msg),
                400..=499 => StepOutcome::Fail(msg),
                _ => StepOutcome::Retry(msg),
            }
        }
        Err(e) if e.is_connect() => StepOutcome::Retry(format!("{url}: {e}")),
        Err(e) => StepOutcome::Unknown(format!("{url}: {e}")),
    }
}

#[cfg(feature = "http")]
fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
