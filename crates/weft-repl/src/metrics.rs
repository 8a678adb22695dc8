//! Replication metrics (through the `metrics` facade; the node exports them on `/metrics`).

use crate::Replication;

/// Updates the gauges from the status (on each `/metrics` scrape).
pub(crate) fn export(r: &Replication) {
    let s = r.status();
    metrics::gauge!("weft_repl_revision").set(s.revision as f64);
    metrics::gauge!("weft_repl_loss_window_revisions").set(s.loss_window as f64);
    metrics::gauge!("weft_repl_degraded").set(if s.degraded.is_some() { 1.0 } else { 0.0 });
    metrics::gauge!("weft_repl_hash_mismatches_total")
        .set(crate::primary::MISMATCHES.load(std::sync::atomic::Ordering::Relaxed) as f64);
    let ev = crate::tracker::EVENTS.lock().expect("events");
    metrics::gauge!("weft_repl_degraded_events_total").set(ev.degraded as f64);
    metrics::gauge!("weft_repl_recovered_events_total").set(ev.recovered as f64);
    metrics::gauge!("weft_repl_unconfirmed_writes_total").set(ev.unconfirmed as f64);
    drop(ev);
    for rep in &s.replicas {
        let l = [("replica", rep.name.clone())];
        metrics::gauge!("weft_repl_lag_revisions", &l).set(rep.lag_revisions as f64);
        metrics::gauge!("weft_repl_lag_bytes", &l).set(rep.lag_bytes as f64);
        metrics::gauge!("weft_repl_lag_seconds", &l).set(rep.lag_seconds);
        let state = match rep.state {
            crate::ReplicaState::Streaming => 0.0,
            crate::ReplicaState::CatchingUp => 1.0,
            crate::ReplicaState::NeedsSnapshot => 2.0,
            crate::ReplicaState::Disconnected => 3.0,
        };
        metrics::gauge!("weft_repl_replica_state", &l).set(state);
    }
    if let Some(f) = &s.follower {
        metrics::gauge!("weft_repl_staleness_seconds").set(f.staleness_ms as f64 / 1000.0);
        metrics::gauge!("weft_repl_primary_revision").set(f.primary_revision as f64);
    }
}

impl Replication {
    /// Updates the replication gauges (for a `/metrics` scrape).
    pub fn export_metrics(&self) {
        export(self);
    }
}
