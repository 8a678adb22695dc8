//! Maglev hashing (Eisenbud et al., NSDI 2016), weighted.

use crate::{check_nodes, hash, Node, Placement, ShardError};

/// The table entry of a hash: `⌊h · len / 2^64⌋`.
#[inline]
fn entry(h: u64, len: usize) -> usize {
    ((h as u128 * len as u128) >> 64) as usize
}

/// Smallest prime >= `n`.
fn next_prime(mut n: u64) -> u64 {
    fn is_prime(n: u64) -> bool {
        if n < 2 {
            return false;
        }
        let mut d = 2;
        while d * d <= n {
            if n.is_multiple_of(d) {
                return false;
            }
            d += 1;
        }
        true
    }
    while !is_prime(n) {
        n += 1;
    }
    n
}

/// A Maglev lookup table of prime size `M`: each node walks its own permutation
/// `(offset + j·skip) mod M` (offset = `hash("<id>#0") mod M`,
/// skip = `hash("<id>#1") mod (M−1) + 1`) and claims free entries, `weight` entries per round. A key owns entry
/// `⌊h · M / 2^64⌋` (a multiply and a shift instead of a division).
#[derive(Clone, Debug)]
pub struct Maglev {
    nodes: Vec<Node>,
    table: Vec<u32>,
}

impl Maglev {
    /// A table of at least `min_size` entries (rounded up to a prime; use at least 100 × nodes
    /// for < 1 % imbalance). `None`: `max(65537, 100 × nodes)`.
    pub fn new(nodes: &[Node], min_size: Option<u64>) -> Result<Maglev, ShardError> {
        check_nodes(nodes)?;
        let m = next_prime(min_size.unwrap_or_else(|| (nodes.len() as u64 * 100).max(65537)));
        if m < nodes.len() as u64 {
            return Err(ShardError::Invalid(format!(
                "table size {m} is smaller than the node count"
            )));
        }
        let perms: Vec<(u64, u64)> = nodes
            .iter()
            .map(|n| {
                (
                    hash(format!("{}#0", n.id).as_bytes()) % m,
                    hash(format!("{}#1", n.id).as_bytes()) % (m - 1) + 1,
                )
            })
            .collect();
        let mut next = vec![0u64; nodes.len()];
        let mut table = vec![u32::MAX; m as usize];
        let mut filled = 0u64;
        'outer: loop {
            for (i, n) in nodes.iter().enumerate() {
                for _ in 0..n.weight {
                    let (off, skip) = perms[i];
                    let mut c = (off + next[i] * skip) % m;
                    while table[c as usize] != u32::MAX {
                        next[i] += 1;
                        c = (off + next[i] * skip) % m;
                    }
                    table[c as usize] = i as u32;
                    next[i] += 1;
                    filled += 1;
                    if filled == m {
                        break 'outer;
                    }
                }
            }
        }
        Ok(Maglev {
            nodes: nodes.to_vec(),
            table,
        })
    }

    /// The lookup table (entry → node index), for migration planning.
    pub fn table(&self) -> &[u32] {
        &self.table
    }
}

impl Placement for Maglev {
    fn name(&self) -> &'static str {
        "maglev"
    }
    fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    #[inline]
    fn locate_hash(&self, h: u64) -> usize {
        self.table[entry(h, self.table.len())] as usize
    }
    fn replicas_hash(&self, h: u64, k: usize) -> Vec<usize> {
        let m = self.table.len() as u64;
        let start = entry(h, self.table.len()) as u64;
        crate::distinct(self.nodes.len(), k, |i| {
            self.table[((start + i) % m) as usize] as usize
        })
    }
    fn memory_bytes(&self) -> usize {
        self.table.len() * 4
    }
}
