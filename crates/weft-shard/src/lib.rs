//! Sharding: every serious partitioning algorithm behind one trait, with balance and movement
//! analysis and migration plans.
//!
//! | algorithm | type | weights | lookup | moves on change |
//! |---|---|---|---|---|
//! | consistent-hash ring with virtual nodes | [`Ring`] | yes (vnodes ∝ weight) | O(log V) | ≈ ideal |
//! | rendezvous (weighted HRW) | [`Rendezvous`] | yes | O(N) | ideal |
//! | jump hash (JumpBackHash), any node removable | [`Jump`] | no | O(1) expected | ideal |
//! | Maglev | [`Maglev`] | yes | O(1) | near ideal |
//! | bounded loads (ε) | [`BoundedLoads`] | via ring | O(log V) + probes | ≈ ideal |
//! | hash slots (16384, Redis-style) | [`Slots`] | yes | O(1) | exact minimum |
//!
//! **The hash** is specified so that any language can reproduce placements: XXH3-64 (xxHash
//! 0.8's `XXH3_64bits`, default secret, no seed) over the key's bytes ([`hash`]; test vectors
//! in the tests). Virtual-node points and
//! per-node seeds hash the UTF-8 string `"<node id>#<n>"`. Nothing depends on a process-random
//! seed.
//!
//! ```
//! use weft_shard::{Node, Placement, Ring};
//! let ring = Ring::new(&[Node::new("a"), Node::new("b"), Node::new("c")], 160).unwrap();
//! let owner = ring.locate(b"user:42");
//! assert_eq!(owner, ring.locate(b"user:42"), "deterministic");
//! let replicas = ring.replicas(b"user:42", 2);
//! assert_eq!(replicas.len(), 2);
//! assert_ne!(replicas[0], replicas[1]);
//! ```

pub mod analyze;
mod bounded;
mod jump;
mod maglev;
pub mod plan;
mod rendezvous;
mod ring;
mod slots;

pub use bounded::BoundedLoads;
pub use jump::{jump, jump_back, Jump};
pub use maglev::Maglev;
pub use rendezvous::Rendezvous;
pub use ring::Ring;
pub use slots::{Slots, SLOT_COUNT};

/// The placement hash: XXH3-64 (xxHash 0.8, `XXH3_64bits`, no seed, no secret).
#[inline]
pub fn hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// A second, independent 64-bit mix of a hash (splitmix64's finalizer), for re-hashing.
#[inline]
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A node and its relative weight.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    /// Unique id.
    pub id: String,
    /// Relative capacity (>= 1).
    pub weight: u32,
}

impl Node {
    /// A node of weight 1.
    pub fn new(id: impl Into<String>) -> Self {
        Node {
            id: id.into(),
            weight: 1,
        }
    }
    /// A node with a weight.
    pub fn weighted(id: impl Into<String>, weight: u32) -> Self {
        Node {
            id: id.into(),
            weight,
        }
    }
}

/// Invalid topologies.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// No nodes.
    #[error("a placement needs at least one node")]
    NoNodes,
    /// A node id appears twice.
    #[error("node id {0:?} appears twice")]
    DuplicateNode(String),
    /// A weight of zero.
    #[error("node {0:?} has weight 0 (weights must be >= 1)")]
    ZeroWeight(String),
    /// Any other bad setting.
    #[error("invalid setting: {0}")]
    Invalid(String),
    /// An unknown node id.
    #[error("unknown node {0:?}")]
    UnknownNode(String),
}

pub(crate) fn check_nodes(nodes: &[Node]) -> Result<(), ShardError> {
    if nodes.is_empty() {
        return Err(ShardError::NoNodes);
    }
    let mut seen = std::collections::HashSet::new();
    for n in nodes {
        if n.weight == 0 {
            return Err(ShardError::ZeroWeight(n.id.clone()));
        }
        if !seen.insert(n.id.as_str()) {
            return Err(ShardError::DuplicateNode(n.id.clone()));
        }
    }
    Ok(())
}

/// Key → node placement.
pub trait Placement: Send + Sync {
    /// Algorithm name.
    fn name(&self) -> &'static str;
    /// The nodes, indexed as [`Placement::locate_hash`] returns.
    fn nodes(&self) -> &[Node];
    /// Index of the node owning a hashed key.
    fn locate_hash(&self, h: u64) -> usize;
    /// Indices of `k` distinct nodes for a hashed key, the owner first (fewer if there are fewer
    /// nodes).
    fn replicas_hash(&self, h: u64, k: usize) -> Vec<usize>;
    /// Approximate bytes of lookup state.
    fn memory_bytes(&self) -> usize;
    /// Whether node `i` is still part of the placement (removed nodes keep their index in
    /// some algorithms).
    fn is_live(&self, i: usize) -> bool {
        i < self.nodes().len()
    }

    /// The id of the node owning `key`.
    fn locate(&self, key: &[u8]) -> &str {
        &self.nodes()[self.locate_hash(hash(key))].id
    }
    /// Ids of `k` distinct nodes for `key`, the owner first.
    fn replicas(&self, key: &[u8], k: usize) -> Vec<&str> {
        self.replicas_hash(hash(key), k)
            .into_iter()
            .map(|i| self.nodes()[i].id.as_str())
            .collect()
    }
}

/// Fills `out` with distinct node indices produced by `next` until `k` (or all nodes).
pub(crate) fn distinct(n: usize, k: usize, mut next: impl FnMut(u64) -> usize) -> Vec<usize> {
    let k = k.min(n);
    let mut out = Vec::with_capacity(k);
    let mut i = 0u64;
    while out.len() < k {
        let c = next(i);
        if !out.contains(&c) {
            out.push(c);
        }
        i += 1;
        if i > 64 * n as u64 + 64 {
            // Fall back to filling in order (only for degenerate inputs).
            for c in 0..n {
                if out.len() == k {
                    break;
                }
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    out
}
