//! Jump-family consistent hashing with any node removable.
//!
//! [`Jump`] places keys with [`jump_back`], Ertl's JumpBackHash (2024): the same guarantees
//! as Lamping & Veach's jump hash ([`jump`]: balanced, and growing from n to n + 1 buckets
//! moves exactly the keys that land on the new bucket), but integer-only and O(1) expected
//! time instead of ~ln n dependent floating-point divisions. Its random source is SplitMix64,
//! so other languages reproduce placements from this specification:
//!
//! ```text
//! next(): s += 0x9E3779B97F4A7C15; z = s
//!         z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB
//!         return z ^ z>>31                       (all arithmetic mod 2^64; s starts at h)
//! jump_back(h, n): if n <= 1: return 0
//!   r = next(); x = (low32(r) ^ high32(r)) & (2^bits(n-1) - 1)
//!   loop:
//!     if x == 0: return 0
//!     lo = highest power of two <= x
//!     i = lo + (((popcount(x) odd) ? high32(r) : low32(r)) & (lo - 1))
//!     if i < n: return i
//!     loop:                                   # candidates in [lo, 2lo) above n: draw again
//!       r2 = next()
//!       for half in (low32(r2), high32(r2)):
//!         i = half & (2lo - 1)
//!         if i < lo: goto next_bit
//!         if i < n: return i
//!     next_bit: x = x ^ lo
//! ```

use crate::{check_nodes, mix, Node, Placement, ShardError};

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline(always)]
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// JumpBackHash (Ertl 2024): a bucket in `0..n` for the hash `h`; see the module docs for the
/// exact specification.
#[inline]
pub fn jump_back(h: u64, n: u32) -> u32 {
    if n <= 1 {
        return 0;
    }
    let mut state = h;
    let r0 = splitmix(&mut state);
    let mask = u32::MAX >> (n - 1).leading_zeros();
    let mut x = ((r0 ^ (r0 >> 32)) as u32) & mask;
    'bits: loop {
        if x == 0 {
            return 0;
        }
        let lo = 1u32 << (31 - x.leading_zeros());
        let half = if x.count_ones() & 1 == 1 {
            (r0 >> 32) as u32
        } else {
            r0 as u32
        };
        let i = lo + (half & (lo - 1));
        if i < n {
            return i;
        }
        let hi_mask = (lo << 1).wrapping_sub(1);
        loop {
            let r = splitmix(&mut state);
            for half in [r as u32, (r >> 32) as u32] {
                let i = half & hi_mask;
                if i < lo {
                    x ^= lo;
                    continue 'bits;
                }
                if i < n {
                    return i;
                }
            }
        }
    }
}

/// Lamping & Veach's jump consistent hash, as published: a bucket in `0..n` for `key`. Kept
/// for comparison and for callers that need its exact placements; [`Jump`] uses
/// [`jump_back`].
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

/// Jump hash ([`jump_back`]) over buckets `0..n`. Removing a node leaves its bucket as a tombstone: keys that
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
            return jump_back(h, n) as usize;
        }
        let mut k = h;
        loop {
            if let Some(i) = self.buckets[jump_back(k, n) as usize] {
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
