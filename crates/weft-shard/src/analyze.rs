//! Balance and movement analysis of the algorithms, and an SVG chart of per-node load (the
//! engine behind `weft shard analyze`).

mod plot;

pub use plot::svg;

use crate::plan::{ideal_fraction, plan_keys};
use crate::{
    hash, BoundedLoads, Jump, Maglev, Node, Placement, Rendezvous, Ring, ShardError, Slots,
};

/// Algorithm names accepted by [`build`].
pub const ALGORITHMS: &[&str] = &["ring", "rendezvous", "jump", "maglev", "bounded", "slots"];

/// A topology change to analyze.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Add this many nodes.
    Add(usize),
    /// Remove this many nodes (from the middle of the list).
    Remove(usize),
}

/// Settings of an analysis.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Virtual nodes per unit of weight (ring, bounded loads).
    pub vnodes: u32,
    /// ε of bounded loads.
    pub epsilon: f64,
    /// Keys placed (`"key-<i>"`).
    pub keys: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            vnodes: 160,
            epsilon: 0.25,
            keys: 100_000,
        }
    }
}

/// The result for one algorithm.
#[derive(Clone, Debug)]
pub struct Analysis {
    /// Algorithm.
    pub algo: String,
    /// Keys per node, in node order.
    pub loads: Vec<(String, u64)>,
    /// Most loaded node over the mean (1.0 is perfect).
    pub max_over_mean: f64,
    /// Standard deviation over the mean.
    pub stddev_over_mean: f64,
    /// Fraction of keys that moved with the change, if one was given.
    pub moved: Option<f64>,
    /// The least any placement could move.
    pub ideal: Option<f64>,
    /// Mean lookup time (hash + locate), nanoseconds.
    pub lookup_ns: f64,
    /// Lookup state, bytes.
    pub memory_bytes: usize,
}

/// Builds an algorithm by name.
pub fn build(
    algo: &str,
    nodes: &[Node],
    s: &Settings,
    maglev_size: Option<u64>,
) -> Result<Box<dyn Placement>, ShardError> {
    Ok(match algo {
        "ring" => Box::new(Ring::new(nodes, s.vnodes)?),
        "rendezvous" => Box::new(Rendezvous::new(nodes)?),
        "jump" => Box::new(Jump::new(nodes)?),
        "maglev" => Box::new(Maglev::new(nodes, maglev_size)?),
        "bounded" => Box::new(BoundedLoads::new(nodes, s.vnodes, s.epsilon)?),
        "slots" => Box::new(Slots::new(nodes)?),
        other => {
            return Err(ShardError::Invalid(format!(
                "unknown algorithm {other:?}; allowed: {}",
                ALGORITHMS.join(", ")
            )))
        }
    })
}

fn changed(
    algo: &str,
    nodes: &[Node],
    change: Change,
    s: &Settings,
    maglev_size: u64,
) -> Result<(Vec<Node>, Box<dyn Placement>), ShardError> {
    let mut new = nodes.to_vec();
    match change {
        Change::Add(m) => new.extend((0..m).map(|i| Node::new(format!("added-{i}")))),
        Change::Remove(m) => {
            if m >= nodes.len() {
                return Err(ShardError::Invalid(format!(
                    "cannot remove {m} of {} nodes",
                    nodes.len()
                )));
            }
            let at = (nodes.len() - m) / 2;
            new.drain(at..at + m);
        }
    }
    let p: Box<dyn Placement> = match algo {
        "jump" => {
            let mut j = Jump::new(nodes)?;
            match change {
                Change::Add(_) => {
                    for n in &new[nodes.len()..] {
                        j.add(n.clone())?;
                    }
                }
                Change::Remove(_) => {
                    for n in nodes.iter().filter(|n| !new.contains(n)) {
                        j.remove(&n.id)?;
                    }
                }
            }
            Box::new(j)
        }
        "slots" => Box::new(Slots::new(nodes)?.rebalance(&new)?),
        other => build(other, &new, s, Some(maglev_size))?,
    };
    Ok((new, p))
}

/// Analyzes one algorithm over `nodes`, optionally with a change.
pub fn analyze(
    algo: &str,
    nodes: &[Node],
    change: Option<Change>,
    s: &Settings,
) -> Result<Analysis, ShardError> {
    if s.keys == 0 {
        return Err(ShardError::Invalid("analyze at least one key".into()));
    }
    let grown = nodes.len()
        + match change {
            Some(Change::Add(m)) => m,
            _ => 0,
        };
    let maglev_size = (grown as u64 * 100).max(65537);
    let p = build(algo, nodes, s, Some(maglev_size))?;
    let keys: Vec<Vec<u8>> = (0..s.keys)
        .map(|i| format!("key-{i}").into_bytes())
        .collect();
    let mut loads = vec![0u64; p.nodes().len()];
    let start = std::time::Instant::now();
    for k in &keys {
        loads[p.locate_hash(hash(k))] += 1;
    }
    let lookup_ns = start.elapsed().as_nanos() as f64 / keys.len() as f64;
    if let Some(b) = (algo == "bounded")
        .then(|| BoundedLoads::new(nodes, s.vnodes, s.epsilon))
        .transpose()?
    {
        // Bounded loads places by live load: take one unit per key.
        loads = vec![0; nodes.len()];
        for k in &keys {
            loads[b.acquire(hash(k))] += 1;
        }
    }
    let live: Vec<f64> = loads
        .iter()
        .enumerate()
        .filter(|(i, _)| p.is_live(*i))
        .map(|(_, l)| *l as f64)
        .collect();
    let mean = live.iter().sum::<f64>() / live.len() as f64;
    let max = live.iter().cloned().fold(0.0, f64::max);
    let var = live.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / live.len() as f64;
    let (moved, ideal) = match change {
        Some(c) => {
            let (new_nodes, q) = changed(algo, nodes, c, s, maglev_size)?;
            let plan = plan_keys(&*p, &*q, keys.iter().map(|k| k.as_slice()));
            (
                Some(plan.fraction_moved),
                Some(ideal_fraction(nodes, &new_nodes)),
            )
        }
        None => (None, None),
    };
    Ok(Analysis {
        algo: algo.to_string(),
        loads: p.nodes().iter().map(|n| n.id.clone()).zip(loads).collect(),
        max_over_mean: max / mean,
        stddev_over_mean: var.sqrt() / mean,
        moved,
        ideal,
        lookup_ns,
        memory_bytes: p.memory_bytes(),
    })
}
