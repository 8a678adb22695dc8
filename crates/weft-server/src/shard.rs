//! `GET /v1/shard/analyze`: `weft shard analyze` as JSON (balance, keys moved by a change,
//! lookup time, memory per algorithm), for the dashboard's sharding charts. Work is bounded:
//! at most [`MAX_NODES`] nodes and [`MAX_KEYS`] keys, run off the async workers.

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use weft_shard::analyze::{analyze as run, Analysis, Change, Settings, ALGORITHMS};

use crate::ApiError;

/// Most nodes one analysis places keys on.
pub const MAX_NODES: usize = 1000;
/// Most keys one analysis places.
pub const MAX_KEYS: usize = 1_000_000;
/// Most virtual nodes per unit of weight.
pub const MAX_VNODES: u32 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnalyzeQuery {
    algo: Option<String>,
    nodes: Option<usize>,
    keys: Option<usize>,
    add: Option<usize>,
    remove: Option<usize>,
    weights: Option<String>,
    vnodes: Option<u32>,
    epsilon: Option<f64>,
}

fn check(q: &AnalyzeQuery) -> Result<(Vec<weft_shard::Node>, Vec<String>), ApiError> {
    let nodes = q.nodes.unwrap_or(10);
    if !(1..=MAX_NODES).contains(&nodes) {
        return Err(ApiError::BadRequest(format!(
            "nodes {nodes} is out of range: 1 to {MAX_NODES}"
        )));
    }
    let keys = q.keys.unwrap_or(100_000);
    if !(1..=MAX_KEYS).contains(&keys) {
        return Err(ApiError::BadRequest(format!(
            "keys {keys} is out of range: 1 to {MAX_KEYS}"
        )));
    }
    if q.add.is_some() && q.remove.is_some() {
        return Err(ApiError::BadRequest(
            "give add or remove, not both".to_string(),
        ));
    }
    if q.add.unwrap_or(0) > MAX_NODES {
        return Err(ApiError::BadRequest(format!(
            "add is out of range: 0 to {MAX_NODES}"
        )));
    }
    let weights: Vec<u32> = match q.weights.as_deref().filter(|w| !w.is_empty()) {
        None => Vec::new(),
        Some(w) => w
            .split(',')
            .map(|x| x.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|e| {
                ApiError::BadRequest(format!("weights must be integers, comma-separated: {e}"))
            })?,
    };
    if !weights.is_empty() && weights.len() != nodes {
        return Err(ApiError::BadRequest(format!(
            "weights has {} values but nodes is {nodes}: give one weight per node",
            weights.len()
        )));
    }
    if let Some(v) = q.vnodes.filter(|v| !(1..=MAX_VNODES).contains(v)) {
        return Err(ApiError::BadRequest(format!(
            "vnodes {v} is out of range: 1 to {MAX_VNODES}"
        )));
    }
    let algos: Vec<String> = match q.algo.as_deref().unwrap_or("all") {
        "all" => ALGORITHMS.iter().map(|s| s.to_string()).collect(),
        list => list.split(',').map(|s| s.trim().to_string()).collect(),
    };
    if let Some(bad) = algos.iter().find(|a| !ALGORITHMS.contains(&a.as_str())) {
        return Err(ApiError::BadRequest(format!(
            "unknown algorithm {bad:?}; allowed: all, {}",
            ALGORITHMS.join(", ")
        )));
    }
    let ns = (0..nodes)
        .map(|i| {
            weft_shard::Node::weighted(format!("node-{i}"), weights.get(i).copied().unwrap_or(1))
        })
        .collect();
    Ok((ns, algos))
}

fn to_json(r: &Analysis) -> Value {
    json!({
        "algo": r.algo, "max_over_mean": r.max_over_mean, "stddev_over_mean": r.stddev_over_mean,
        "moved": r.moved, "ideal": r.ideal, "lookup_ns": r.lookup_ns, "memory_bytes": r.memory_bytes,
        "loads": r.loads.iter().map(|(n, l)| json!({"node": n, "keys": l})).collect::<Vec<_>>(),
    })
}

/// `GET /v1/shard/analyze?algo=all&nodes=10&keys=100000&add=1`.
pub(crate) async fn analyze(
    q: Result<Query<AnalyzeQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let (nodes, algos) = check(&q)?;
    let change = match (q.add, q.remove) {
        (Some(m), _) => Some(Change::Add(m)),
        (_, Some(m)) => Some(Change::Remove(m)),
        _ => None,
    };
    let settings = Settings {
        vnodes: q.vnodes.unwrap_or(160),
        epsilon: q.epsilon.unwrap_or(0.25),
        keys: q.keys.unwrap_or(100_000),
    };
    let results = tokio::task::spawn_blocking(move || {
        algos
            .iter()
            .map(|a| run(a, &nodes, change, &settings).map(|r| to_json(&r)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::Unavailable(format!("analysis failed: {e}")))?
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Json(json!({ "analyses": results })))
}
