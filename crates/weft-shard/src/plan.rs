//! Migration planning (which ranges move from which node to which) and an executor that runs
//! the moves through a user callback with a throttle, pause / resume and progress.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::{Duration, Instant};

use crate::{hash, Maglev, Node, Placement, Ring, ShardError, Slots};

/// What moves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Range {
    /// Hashes in `(start, end]` on the ring (wrapping when `start >= end`).
    Hash {
        /// Exclusive start.
        start: u64,
        /// Inclusive end.
        end: u64,
    },
    /// Slots (or Maglev table entries) `start..end`.
    Slots {
        /// First slot.
        start: usize,
        /// One past the last slot.
        end: usize,
    },
    /// Individual keys (for algorithms without ranges: jump, rendezvous, bounded loads).
    Keys(Vec<Vec<u8>>),
}

/// One move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// What.
    pub range: Range,
    /// Old owner.
    pub from: String,
    /// New owner.
    pub to: String,
}

/// A migration plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The moves, in range order.
    pub moves: Vec<Move>,
    /// Fraction of the key space (or of the given keys) that changes owner.
    pub fraction_moved: f64,
    /// The least any placement could move: `1 − Σ min(old share, new share)` over the nodes.
    pub ideal_fraction: f64,
}

impl Plan {
    /// `fraction_moved / ideal_fraction` (1.0 is optimal; 0 moves over 0 ideal is 1.0).
    pub fn ratio_to_ideal(&self) -> f64 {
        if self.ideal_fraction == 0.0 {
            if self.fraction_moved == 0.0 {
                1.0
            } else {
                f64::INFINITY
            }
        } else {
            self.fraction_moved / self.ideal_fraction
        }
    }
}

/// The minimum fraction that must move between two weighted node sets.
pub fn ideal_fraction(old: &[Node], new: &[Node]) -> f64 {
    let share = |ns: &[Node]| {
        let total: f64 = ns.iter().map(|n| n.weight as f64).sum();
        ns.iter()
            .map(|n| (n.id.clone(), n.weight as f64 / total))
            .collect::<HashMap<_, _>>()
    };
    let (a, b) = (share(old), share(new));
    1.0 - a
        .iter()
        .map(|(id, s)| s.min(*b.get(id).unwrap_or(&0.0)))
        .sum::<f64>()
}

fn push_merged(moves: &mut Vec<Move>, m: Move) {
    if let Some(last) = moves.last_mut() {
        if last.from == m.from && last.to == m.to {
            match (&mut last.range, &m.range) {
                (Range::Hash { end, .. }, Range::Hash { start, end: e2 }) if *end == *start => {
                    *end = *e2;
                    return;
                }
                (Range::Slots { end, .. }, Range::Slots { start, end: e2 }) if *end == *start => {
                    *end = *e2;
                    return;
                }
                _ => {}
            }
        }
    }
    moves.push(m);
}

/// Exact plan between two rings: every hash range whose owner changes.
pub fn plan_ring(old: &Ring, new: &Ring) -> Plan {
    let mut bounds: Vec<u64> = old
        .points()
        .map(|p| p.0)
        .chain(new.points().map(|p| p.0))
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    let mut moves = Vec::new();
    let mut moved: u128 = 0;
    for (i, &b) in bounds.iter().enumerate() {
        let prev = if i == 0 {
            *bounds.last().expect("non-empty")
        } else {
            bounds[i - 1]
        };
        let (from, to) = (old.locate_hash(b), new.locate_hash(b));
        if old.nodes()[from].id != new.nodes()[to].id {
            moved += b.wrapping_sub(prev) as u128;
            push_merged(
                &mut moves,
                Move {
                    range: Range::Hash {
                        start: prev,
                        end: b,
                    },
                    from: old.nodes()[from].id.clone(),
                    to: new.nodes()[to].id.clone(),
                },
            );
        }
    }
    let fraction_moved = if bounds.len() == 1 {
        0.0
    } else {
        moved as f64 / 2f64.powi(64)
    };
    Plan {
        moves,
        fraction_moved,
        ideal_fraction: ideal_fraction(old.nodes(), new.nodes()),
    }
}

fn plan_tables(old_nodes: &[Node], old: &[u32], new_nodes: &[Node], new: &[u32]) -> Plan {
    let mut moves = Vec::new();
    let mut moved = 0usize;
    for (s, (a, b)) in old.iter().zip(new).enumerate() {
        let (from, to) = (&old_nodes[*a as usize].id, &new_nodes[*b as usize].id);
        if from != to {
            moved += 1;
            push_merged(
                &mut moves,
                Move {
                    range: Range::Slots {
                        start: s,
                        end: s + 1,
                    },
                    from: from.clone(),
                    to: to.clone(),
                },
            );
        }
    }
    Plan {
        moves,
        fraction_moved: moved as f64 / old.len() as f64,
        ideal_fraction: ideal_fraction(old_nodes, new_nodes),
    }
}

/// Exact plan between two slot tables.
pub fn plan_slots(old: &Slots, new: &Slots) -> Plan {
    plan_tables(old.nodes(), old.table(), new.nodes(), new.table())
}

/// Exact plan between two Maglev tables of the same size.
pub fn plan_maglev(old: &Maglev, new: &Maglev) -> Result<Plan, ShardError> {
    if old.table().len() != new.table().len() {
        return Err(ShardError::Invalid(format!(
            "Maglev tables differ in size ({} vs {}); build both with the same size, or use plan_keys",
            old.table().len(),
            new.table().len()
        )));
    }
    Ok(plan_tables(
        old.nodes(),
        old.table(),
        new.nodes(),
        new.table(),
    ))
}

/// Plan over explicit keys, for any two placements.
pub fn plan_keys<'k>(
    old: &dyn Placement,
    new: &dyn Placement,
    keys: impl IntoIterator<Item = &'k [u8]>,
) -> Plan {
    let mut by_pair: Vec<Move> = Vec::new();
    let mut index: HashMap<(usize, usize), usize> = HashMap::new();
    let (mut total, mut moved) = (0usize, 0usize);
    for k in keys {
        total += 1;
        let h = hash(k);
        let (a, b) = (old.locate_hash(h), new.locate_hash(h));
        if old.nodes()[a].id != new.nodes()[b].id {
            moved += 1;
            let slot = *index.entry((a, b)).or_insert_with(|| {
                let (from, to) = (old.nodes()[a].id.clone(), new.nodes()[b].id.clone());
                by_pair.push(Move {
                    range: Range::Keys(Vec::new()),
                    from,
                    to,
                });
                by_pair.len() - 1
            });
            if let Range::Keys(ks) = &mut by_pair[slot].range {
                ks.push(k.to_vec());
            }
        }
    }
    Plan {
        moves: by_pair,
        fraction_moved: if total == 0 {
            0.0
        } else {
            moved as f64 / total as f64
        },
        ideal_fraction: ideal_fraction(old.nodes(), new.nodes()),
    }
}

/// Executor settings.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// At most this many moves started per second (`None`: no limit).
    pub max_per_second: Option<f64>,
    /// Moves in flight at once (>= 1).
    pub concurrency: usize,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            max_per_second: None,
            concurrency: 1,
        }
    }
}

/// Progress of an execution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Moves finished.
    pub done: usize,
    /// Moves in the plan.
    pub total: usize,
}

/// Controls a running [`Executor`] from elsewhere.
#[derive(Clone, Debug)]
pub struct ExecHandle {
    paused: Arc<watch::Sender<bool>>,
    done: Arc<AtomicUsize>,
    total: usize,
}

impl ExecHandle {
    /// No new move starts until [`ExecHandle::resume`]; moves in flight finish.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }
    /// Lets moves start again.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
    /// Moves done so far.
    pub fn progress(&self) -> Progress {
        Progress {
            done: self.done.load(Ordering::Relaxed),
            total: self.total,
        }
    }
}

/// Runs a plan's moves through a callback.
#[derive(Debug)]
pub struct Executor {
    moves: Vec<Move>,
    opts: ExecOptions,
    handle: ExecHandle,
}

/// A move failed; the execution stopped.
#[derive(Debug, thiserror::Error)]
#[error("move of {:?} from {} to {} failed after {} of {} moves: {error}", .failed.range, .failed.from, .failed.to, .progress.done, .progress.total)]
pub struct ExecError<E: std::fmt::Display + std::fmt::Debug> {
    /// The move that failed.
    pub failed: Move,
    /// Its error.
    pub error: E,
    /// Progress when it failed.
    pub progress: Progress,
}

impl Executor {
    /// An executor for `plan`.
    pub fn new(plan: &Plan, opts: ExecOptions) -> Result<Executor, ShardError> {
        if opts.concurrency == 0 {
            return Err(ShardError::Invalid("concurrency must be at least 1".into()));
        }
        if opts
            .max_per_second
            .is_some_and(|r| !(r > 0.0 && r.is_finite()))
        {
            return Err(ShardError::Invalid("max_per_second must be > 0".into()));
        }
        let handle = ExecHandle {
            paused: Arc::new(watch::channel(false).0),
            done: Arc::new(AtomicUsize::new(0)),
            total: plan.moves.len(),
        };
        Ok(Executor {
            moves: plan.moves.clone(),
            opts,
            handle,
        })
    }

    /// A handle for pause, resume and progress.
    pub fn handle(&self) -> ExecHandle {
        self.handle.clone()
    }

    /// Runs every move through `f`; stops at the first error.
    pub async fn run<F, Fut, E>(self, f: F) -> Result<Progress, ExecError<E>>
    where
        F: Fn(Move) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: std::fmt::Display + std::fmt::Debug,
    {
        let Executor {
            moves,
            opts,
            handle,
        } = self;
        let spacing = opts
            .max_per_second
            .map(|r| Duration::from_secs_f64(1.0 / r));
        let mut next_start = Instant::now();
        let paused = handle.paused.subscribe();
        let gate = |m: Move| {
            let mut paused = paused.clone();
            let start_at = spacing.map(|s| {
                let t = next_start.max(Instant::now());
                next_start = t + s;
                t
            });
            async move {
                let _ = paused.wait_for(|p| !*p).await;
                if let Some(t) = start_at {
                    tokio::time::sleep_until(t).await;
                }
                m
            }
        };
        let stream = futures::stream::iter(moves)
            .then(gate)
            .map(|m| {
                let fut = f(m.clone());
                async move { (m, fut.await) }
            })
            .buffer_unordered(opts.concurrency);
        let mut stream = std::pin::pin!(stream);
        while let Some((m, r)) = stream.next().await {
            match r {
                Ok(()) => {
                    handle.done.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    return Err(ExecError {
                        failed: m,
                        error,
                        progress: handle.progress(),
                    })
                }
            }
        }
        Ok(handle.progress())
    }
}
