//! Sagas on any [`weft_store::Store`]: a DAG of steps with compensations, run by an
//! [`Orchestrator`] that writes every transition to the store before acting on it, so a crash
//! (`kill -9`) loses nothing: every unfinished saga resumes from its log, on this orchestrator
//! when it restarts or on another one sharing the store once its lease expires.
//!
//! - **Definitions** ([`SagaDef`]) are validated first: cycles, unknown dependencies, missing
//!   compensations and duplicate names are reported with the step's name.
//! - **Steps** are HTTP requests (a URL, or a path on a service found through discovery) or
//!   async Rust functions registered by name ([`Registry`]). Independent branches run in
//!   parallel. Every call carries the idempotency key `<saga id>/<step>/<phase>`.
//! - **Outcomes**: success; retryable failures (bounded retries with backoff and jitter);
//!   final failures (compensation starts); unknown outcomes (a timeout after sending) are
//!   retried and, if the step still fails, compensated.
//! - **Compensations** run in reverse dependency order for the steps that took effect. One
//!   that keeps failing **parks** the saga with the step, the last error and the attempts;
//!   an operator [resumes](Orchestrator::resume), [skips](Orchestrator::skip) the step or
//!   [aborts](Orchestrator::abort), and each action is on the timeline.
//! - **Barrier** ([`Barrier`]): for services written in Rust on a weft store, action and
//!   compensation applied once, null compensations and hanging actions handled.
//!
//! ```
//! use std::sync::Arc;
//! use serde_json::json;
//! use weft_saga::{Orchestrator, Registry, SagaDef, Status, StepOutcome};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let store: Arc<dyn weft_store::Store> =
//!     Arc::new(weft_store::embedded::Embedded::open(dir.path(), Default::default()).await?);
//! let mut steps = Registry::new();
//! steps.register("reserve", |_ctx| async { StepOutcome::Done(json!({"held": 2})) });
//! steps.register("release", |_ctx| async { StepOutcome::Done(json!(null)) });
//! steps.register("charge", |_ctx| async { StepOutcome::Fail("card declined".into()) });
//! let orch = Orchestrator::builder(store).registry(steps).start().await?;
//! let def: SagaDef = serde_json::from_value(json!({
//!     "name": "order",
//!     "steps": [
//!         {"name": "reserve", "action": {"local": {"name": "reserve"}},
//!          "compensation": {"local": {"name": "release"}}},
//!         {"name": "charge", "after": ["reserve"], "action": {"local": {"name": "charge"}},
//!          "no_compensation": true}
//!     ]
//! }))?;
//! let id = orch.submit(def, json!({"order": 7}), None).await?;
//! let done = orch.wait(&id, std::time::Duration::from_secs(10)).await?;
//! assert_eq!(done.status, Status::Compensated); // the payment failed: the stock is released
//! orch.shutdown().await;
//! # Ok(()) }
//! ```

mod barrier;
mod def;
mod error;
mod invoke;
mod lazy;
mod log;
mod orch;
mod run;
mod state;

#[cfg(feature = "suite")]
pub mod suite;

pub use barrier::{Barrier, BarrierOutcome, BARRIER_PREFIX};
pub use def::{Call, HttpCall, RetrySpec, SagaDef, StepDef};
pub use error::{DefError, Result, SagaError};
pub use invoke::{LocalFn, Registry, Resolver, StepCtx, StepOutcome};
pub use lazy::{Lazy, MakeBuilder, Reader};
pub use log::{check_id, Event, PREFIX};
pub use orch::{Builder, Options, Orchestrator, SagaView};
pub use state::{Parked, Phase, SagaRecord, Status, StepRecord, StepStatus};
