//! Rendezvous (highest random weight) hashing, weighted.

use crate::{check_nodes, hash, mix, Node, Placement, ShardError};

/// Weighted HRW: node `i` scores `−w_i / ln(u)` with `u = (mix(seed_i ^ h) >> 11 + 0.5) / 2^53`,
/// `seed_i = hash("<id>#0")`; the highest score owns the key (Schindelhauer & Schomaker's
/// weighted variant, as used by e.g. Ceph's straw2).
#[derive(Clone, Debug)]
pub struct Rendezvous {
    nodes: Vec<Node>,
    seeds: Vec<u64>,
}

impl Rendezvous {
    /// Over `nodes`.
    pub fn new(nodes: &[Node]) -> Result<Rendezvous, ShardError> {
        check_nodes(nodes)?;
        Ok(Rendezvous {
            nodes: nodes.to_vec(),
            seeds: nodes
                .iter()
                .map(|n| hash(format!("{}#0", n.id).as_bytes()))
                .collect(),
        })
    }

    #[inline]
    fn score(&self, i: usize, h: u64) -> f64 {
        let u = ((mix(self.seeds[i] ^ h) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -(self.nodes[i].weight as f64) / u.ln()
    }
}

impl Placement for Rendezvous {
    fn name(&self) -> &'static str {
        "rendezvous"
    }
    fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    fn locate_hash(&self, h: u64) -> usize {
        let mut best = (f64::MIN, 0);
        for i in 0..self.nodes.len() {
            let s = self.score(i, h);
            if s > best.0 {
                best = (s, i);
            }
        }
        best.1
    }
    fn replicas_hash(&self, h: u64, k: usize) -> Vec<usize> {
        let mut scored: Vec<(f64, usize)> = (0..self.nodes.len())
            .map(|i| (self.score(i, h), i))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().take(k).map(|s| s.1).collect()
    }
    fn memory_bytes(&self) -> usize {
        self.seeds.len() * 8
    }
}
