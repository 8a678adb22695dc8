//! Consistent-hash ring with virtual nodes and weights.

use crate::{check_nodes, hash, Node, Placement, ShardError};

/// A ring: node `i` owns `vnodes × weight_i` points `hash("<id>#<n>")`; a key belongs to the
/// first point at or after its hash (wrapping).
#[derive(Clone, Debug)]
pub struct Ring {
    nodes: Vec<Node>,
    points: Vec<u64>,
    owners: Vec<u32>,
}

impl Ring {
    /// A ring with `vnodes` points per unit of weight.
    pub fn new(nodes: &[Node], vnodes: u32) -> Result<Ring, ShardError> {
        check_nodes(nodes)?;
        if vnodes == 0 {
            return Err(ShardError::Invalid(
                "a ring needs at least one virtual node per node".into(),
            ));
        }
        let mut pts: Vec<(u64, u32)> = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            for v in 0..vnodes as u64 * n.weight as u64 {
                pts.push((hash(format!("{}#{v}", n.id).as_bytes()), i as u32));
            }
        }
        // Ties (astronomically rare) are broken by node index, deterministically.
        pts.sort_unstable();
        pts.dedup_by_key(|p| p.0);
        Ok(Ring {
            nodes: nodes.to_vec(),
            points: pts.iter().map(|p| p.0).collect(),
            owners: pts.iter().map(|p| p.1).collect(),
        })
    }

    /// Index of the point owning `h`.
    #[inline]
    pub(crate) fn point_of(&self, h: u64) -> usize {
        let i = self.points.partition_point(|p| *p < h);
        if i == self.points.len() {
            0
        } else {
            i
        }
    }

    /// Number of points.
    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }

    /// Owner of point `i`.
    #[inline]
    pub(crate) fn owner(&self, i: usize) -> usize {
        self.owners[i % self.owners.len()] as usize
    }

    /// The points and their owners, sorted (for migration planning).
    pub fn points(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.points
            .iter()
            .zip(&self.owners)
            .map(|(p, o)| (*p, *o as usize))
    }
}

impl Placement for Ring {
    fn name(&self) -> &'static str {
        "ring"
    }
    fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    #[inline]
    fn locate_hash(&self, h: u64) -> usize {
        self.owners[self.point_of(h)] as usize
    }
    fn replicas_hash(&self, h: u64, k: usize) -> Vec<usize> {
        let start = self.point_of(h);
        crate::distinct(self.nodes.len(), k, |i| self.owner(start + i as usize))
    }
    fn memory_bytes(&self) -> usize {
        self.points.len() * 12
    }
}
