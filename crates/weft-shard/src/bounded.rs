//! Consistent hashing with bounded loads (Mirrokni, Thorup & Zadimoghaddam, 2018).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Node, Placement, Ring, ShardError};

/// A ring where no node takes more than `ceil((1 + ε) · (total + 1) / n)` of the live load: a
/// key goes to the first node clockwise from its hash that is under the cap. Callers report
/// load with [`BoundedLoads::acquire`] and [`BoundedLoads::release`] (e.g. open connections).
#[derive(Debug)]
pub struct BoundedLoads {
    ring: Ring,
    epsilon: f64,
    loads: Vec<AtomicU64>,
    total: AtomicU64,
}

impl BoundedLoads {
    /// `epsilon > 0` (0.25 is common) over a ring with `vnodes` per node.
    pub fn new(nodes: &[Node], vnodes: u32, epsilon: f64) -> Result<BoundedLoads, ShardError> {
        if !(epsilon > 0.0 && epsilon.is_finite()) {
            return Err(ShardError::Invalid(format!(
                "epsilon {epsilon} must be > 0"
            )));
        }
        let ring = Ring::new(nodes, vnodes)?;
        Ok(BoundedLoads {
            loads: (0..nodes.len()).map(|_| AtomicU64::new(0)).collect(),
            ring,
            epsilon,
            total: AtomicU64::new(0),
        })
    }

    /// The current cap per node (for one more unit of load).
    pub fn cap(&self) -> u64 {
        let n = self.loads.len() as f64;
        ((1.0 + self.epsilon) * (self.total.load(Ordering::Relaxed) + 1) as f64 / n).ceil() as u64
    }

    /// The node for `h` given the current loads (does not take load).
    pub fn locate_loaded(&self, h: u64) -> usize {
        let cap = self.cap();
        let start = self.ring.point_of(h);
        for i in 0..self.ring.len() {
            let node = self.ring.owner(start + i);
            if self.loads[node].load(Ordering::Relaxed) < cap {
                return node;
            }
        }
        self.ring.owner(start)
    }

    /// Picks the node for `h` and takes one unit of load on it. Never exceeds the cap as long
    /// as callers are serialized; concurrent callers may overshoot by their number.
    pub fn acquire(&self, h: u64) -> usize {
        let node = self.locate_loaded(h);
        self.loads[node].fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        node
    }

    /// Gives back one unit of load.
    pub fn release(&self, node: usize) {
        if self.loads[node]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
            .is_ok()
        {
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Load per node.
    pub fn loads(&self) -> Vec<u64> {
        self.loads
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }
}

impl Placement for BoundedLoads {
    fn name(&self) -> &'static str {
        "bounded"
    }
    fn nodes(&self) -> &[Node] {
        self.ring.nodes()
    }
    fn locate_hash(&self, h: u64) -> usize {
        self.locate_loaded(h)
    }
    fn replicas_hash(&self, h: u64, k: usize) -> Vec<usize> {
        self.ring.replicas_hash(h, k)
    }
    fn memory_bytes(&self) -> usize {
        self.ring.memory_bytes() + self.loads.len() * 8
    }
}
