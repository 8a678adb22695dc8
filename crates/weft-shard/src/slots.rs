//! Fixed hash slots with a slot → node table (Redis Cluster style).

use crate::{check_nodes, Node, Placement, ShardError};

/// Number of slots.
pub const SLOT_COUNT: usize = 16384;

/// `slot = hash(key) mod 16384`; a table maps slots to nodes. Topology changes move the fewest
/// slots needed to reach each node's weighted share.
#[derive(Clone, Debug)]
pub struct Slots {
    nodes: Vec<Node>,
    table: Vec<u32>,
}

fn targets(nodes: &[Node]) -> Vec<usize> {
    let total: u64 = nodes.iter().map(|n| n.weight as u64).sum();
    let mut t: Vec<usize> = nodes
        .iter()
        .map(|n| (SLOT_COUNT as u64 * n.weight as u64 / total) as usize)
        .collect();
    let mut left = SLOT_COUNT - t.iter().sum::<usize>();
    let (mut i, n) = (0, t.len());
    while left > 0 {
        t[i % n] += 1;
        left -= 1;
        i += 1;
    }
    t
}

impl Slots {
    /// Contiguous ranges in node order, sized by weight.
    pub fn new(nodes: &[Node]) -> Result<Slots, ShardError> {
        check_nodes(nodes)?;
        let mut table = Vec::with_capacity(SLOT_COUNT);
        for (i, n) in targets(nodes).into_iter().enumerate() {
            table.extend(std::iter::repeat_n(i as u32, n));
        }
        Ok(Slots {
            nodes: nodes.to_vec(),
            table,
        })
    }

    /// The slot of a hashed key.
    #[inline]
    pub fn slot(h: u64) -> usize {
        (h % SLOT_COUNT as u64) as usize
    }

    /// The slot table (slot → node index).
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// A new table for `nodes` that keeps every slot whose node stays and is not over its new
    /// share, moving only what balance requires.
    pub fn rebalance(&self, nodes: &[Node]) -> Result<Slots, ShardError> {
        check_nodes(nodes)?;
        let target = targets(nodes);
        let new_index: std::collections::HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        let mut table = vec![u32::MAX; SLOT_COUNT];
        let mut count = vec![0usize; nodes.len()];
        for (s, old) in self.table.iter().enumerate() {
            if let Some(&ni) = new_index.get(self.nodes[*old as usize].id.as_str()) {
                if count[ni] < target[ni] {
                    table[s] = ni as u32;
                    count[ni] += 1;
                }
            }
        }
        let mut ni = 0;
        for slot in table.iter_mut().filter(|s| **s == u32::MAX) {
            while count[ni] >= target[ni] {
                ni += 1;
            }
            *slot = ni as u32;
            count[ni] += 1;
        }
        Ok(Slots {
            nodes: nodes.to_vec(),
            table,
        })
    }
}

impl Placement for Slots {
    fn name(&self) -> &'static str {
        "slots"
    }
    fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    #[inline]
    fn locate_hash(&self, h: u64) -> usize {
        self.table[Self::slot(h)] as usize
    }
    fn replicas_hash(&self, h: u64, k: usize) -> Vec<usize> {
        let start = Self::slot(h);
        crate::distinct(self.nodes.len(), k, |i| {
            self.table[(start + i as usize * 997) % SLOT_COUNT] as usize
        })
    }
    fn memory_bytes(&self) -> usize {
        SLOT_COUNT * 4
    }
}
