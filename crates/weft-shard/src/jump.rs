//! Jump consistent hash (Lamping & Veach), with any node removable.

use crate::{check_nodes, mix, Node, Placement, ShardError};

/// The jump function: a bucket in `0..n` for `key`.
#[inline]
pub fn jump(mut key: u64, n: u32) -> u32 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < n as i64 {
        b = j;
        key = key.wrapping_mul(2862933555777941757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// Jump hash over buckets `0..n`. Removing a node leaves its bucket as a tombstone: keys that
/// land on a tombstone are re-hashed (`mix`) until they land on a live bucket, so only the
/// removed node's keys move. Adding a node fills the lowest tombstone first (its keys come
/// back), else appends a bucket. Unweighted.
#[derive(Clone, Debug)]
pub struct Jump {
    buckets: Vec<Option<usize>>,
    nodes: Vec<Node>,
    tombstones: usize,
}

impl Jump {
    /// Over `nodes` (weights are ignored; use Maglev, rendezvous or a ring for weights).
    pub fn new(nodes: &[Node]) -> Result<Jump, ShardError> {
        check_nodes(nodes)?;
        Ok(Jump {
            buckets: (0..nodes.len()).map(Some).collect(),
            nodes: nodes.to_vec(),
            tombstones: 0,
        })
    }

    /// Removes a node by id; only its keys move.
    pub fn remove(&mut self, id: &str) -> Result<(), ShardError> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.id == id)
            .ok_or_else(|| ShardError::UnknownNode(id.into()))?;
        if self.buckets.iter().filter(|b| b.is_some()).count() == 1 {
            return Err(ShardError::NoNodes);
        }
        let slot = self
            .buckets
            .iter()
            .position(|b| *b == Some(i))
            .expect("node has a bucket");
        self.buckets[slot] = None;
        self.tombstones += 1;
        Ok(())
    }

    /// Adds a node (into the lowest free bucket, or a new one).
    pub fn add(&mut self, node: Node) -> Result<(), ShardError> {
        if self.nodes.iter().any(|n| n.id == node.id) {
            return Err(ShardError::DuplicateNode(node.id));
        }
        self.nodes.push(node);
        let idx = self.nodes.len() - 1;
        match self.buckets.iter().position(Option::is_none) {
            Some(slot) => {
                self.buckets[slot] = Some(idx);
                self.tombstones -= 1;
            }
            None => self.buckets.push(Some(idx)),
        }
        Ok(())
    }
}

impl Placement for Jump {
    fn name(&self) -> &'static str {
        "jump"
    }
    fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    #[inline]
    fn locate_hash(&self, h: u64) -> usize {
        let n = self.buckets.len() as u32;
        if self.tombstones == 0 && self.buckets.len() == self.nodes.len() {
            // No node was ever removed: bucket i is node i.
            return jump(h, n) as usize;
        }
        let mut k = h;
        loop {
            if let Some(i) = self.buckets[jump(k, n) as usize] {
                return i;
            }
            k = mix(k);
        }
    }
    fn replicas_hash(&self, h: u64, k: usize) -> Vec<usize> {
        let live: Vec<usize> = self.buckets.iter().flatten().copied().collect();
        let k = k.min(live.len());
        let mut out = Vec::with_capacity(k);
        let mut key = h;
        for _ in 0..64 * live.len() + 64 {
            if out.len() == k {
                return out;
            }
            let r = self.locate_hash(key);
            if !out.contains(&r) {
                out.push(r);
            }
            key = mix(key ^ 0x5bd1_e995);
        }
        for i in live {
            if out.len() == k {
                break;
            }
            if !out.contains(&i) {
                out.push(i);
            }
        }
        out
    }
    fn is_live(&self, i: usize) -> bool {
        self.buckets.contains(&Some(i))
    }
    fn memory_bytes(&self) -> usize {
        self.buckets.len() * std::mem::size_of::<Option<usize>>()
    }
}
