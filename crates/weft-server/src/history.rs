//! `GET /v1/history`: the node's counters sampled every [`INTERVAL`] over the last
//! [`KEEP`] samples (5 minutes), so the dashboard's charts start with the last minutes
//! rather than from when the page was opened. The store's revision is sampled through the
//! [`Store`] trait; the counters a backend keeps itself (reads, watch events, log fsyncs) come
//! from [`ServerConfig::counters`](crate::ServerConfig::counters) when the node gives them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use weft_store::Store;

use crate::AppState;

/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept.
pub const KEEP: usize = 150;

/// Counters a backend keeps beyond the [`Store`] trait, each counted since the node started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Range requests served.
    pub reads: u64,
    /// Watch events delivered.
    pub watch_events: u64,
    /// Durable log writes (fsyncs).
    pub fsyncs: u64,
}

/// Reads a backend's [`Counters`].
pub type CounterSource = Arc<dyn Fn() -> Counters + Send + Sync>;

#[derive(Clone, Copy, Debug, Serialize)]
struct Sample {
    at_ms: u64,
    revision: i64,
    #[serde(flatten)]
    counters: Option<Counters>,
}

/// The samples, shared by the sampler task and the route.
#[derive(Default)]
pub(crate) struct History {
    started_ms: u64,
    samples: Mutex<VecDeque<Sample>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Resolves once `rx` reads true; holds no guard across an await.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl History {
    /// Starts sampling `store` (and `counters`) until `shutdown` turns true or the history is
    /// dropped. Outside a runtime nothing is sampled.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        counters: Option<CounterSource>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Arc<History> {
        let h = Arc::new(History {
            started_ms: now_ms(),
            samples: Mutex::new(VecDeque::with_capacity(KEEP)),
        });
        let weak: Weak<History> = Arc::downgrade(&h);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut tick = tokio::time::interval(INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stopped(&mut shutdown) => return,
                    }
                    let Some(h) = weak.upgrade() else { return };
                    let Ok(status) = store.status().await else {
                        continue;
                    };
                    let s = Sample {
                        at_ms: now_ms(),
                        revision: status.header.revision,
                        counters: counters.as_ref().map(|c| c()),
                    };
                    let mut q = h.samples.lock().unwrap_or_else(|e| e.into_inner());
                    if q.len() == KEEP {
                        q.pop_front();
                    }
                    q.push_back(s);
                }
            });
        }
        h
    }
}

/// `GET /v1/history`.
pub(crate) async fn get(State(st): State<AppState>) -> Json<Value> {
    let h = &st.history;
    let samples: Vec<Sample> = h
        .samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .copied()
        .collect();
    Json(json!({
        "started_ms": h.started_ms,
        "interval_ms": INTERVAL.as_millis() as u64,
        "samples": samples,
    }))
}
