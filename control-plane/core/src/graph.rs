//! A borrowed view of the core's compressed-sparse-row graphs that implements petgraph's visit
//! traits, so petgraph's algorithms run on the planner's and the [`Dag`]'s own arrays, uncopied.
//!
//! Nodes are dense `u32` indices `0..n`; an edge goes from a parent to its child, so petgraph's
//! `Outgoing` neighbours of a node are its children and its `Incoming` neighbours its parents
//! (wrap the view in [`petgraph::visit::Reversed`] to walk towards ancestors). The view has no
//! edge identities or weights: the algorithms that need only neighbours and a visit map
//! (`toposort`, `kosaraju_scc`, `Dfs`, `Bfs`, `DfsPostOrder`, `Topo`, `has_path_connecting`, and
//! the same through `NodeFiltered` and `Reversed`) work on it as they do on a `Graph`.
//!
//! Its visit map is [`Visited`], one `bool` per node: after a walk it is directly the planner's
//! membership table (no conversion from a bit set).
//!
//! [`Dag`]: crate::model::Dag

use std::iter::Copied;
use std::ops::Range;
use std::slice::Iter;

use petgraph::Direction;
use petgraph::visit::{
    GraphBase, GraphRef, IntoNeighbors, IntoNeighborsDirected, IntoNodeIdentifiers, NodeCount,
    NodeIndexable, VisitMap, Visitable,
};

use crate::model::NodeIx;

/// A directed graph in compressed sparse row form, both directions, borrowed: node `i`'s parents
/// are `parent_list[parent_offsets[i]..parent_offsets[i + 1]]`, its children likewise. Copying
/// the view copies four slice references, never the arrays.
///
/// Unlike [`Dag`](crate::model::Dag) it may have cycles (the planner walks a submitted batch
/// with it before it knows the batch is acyclic).
#[derive(Debug, Clone, Copy)]
pub struct Csr<'a> {
    parent_offsets: &'a [u32],
    parent_list: &'a [NodeIx],
    child_offsets: &'a [u32],
    child_list: &'a [NodeIx],
}

impl<'a> Csr<'a> {
    /// The view over both directions' arrays. The caller guarantees that both have the same
    /// node count, that every index is below it, and that the children are the transpose of the
    /// parents (checked in debug builds for the counts only).
    pub(crate) fn new(
        parent_offsets: &'a [u32],
        parent_list: &'a [NodeIx],
        child_offsets: &'a [u32],
        child_list: &'a [NodeIx],
    ) -> Self {
        debug_assert_eq!(parent_offsets.len(), child_offsets.len());
        debug_assert_eq!(parent_list.len(), child_list.len());
        Self {
            parent_offsets,
            parent_list,
            child_offsets,
            child_list,
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.parent_offsets.len().saturating_sub(1)
    }

    /// True when the graph has no node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The parents of `node`.
    pub fn parents(&self, node: NodeIx) -> &'a [NodeIx] {
        let i = node as usize;
        &self.parent_list[self.parent_offsets[i] as usize..self.parent_offsets[i + 1] as usize]
    }

    /// The children of `node`.
    pub fn children(&self, node: NodeIx) -> &'a [NodeIx] {
        let i = node as usize;
        &self.child_list[self.child_offsets[i] as usize..self.child_offsets[i + 1] as usize]
    }
}

/// petgraph's visit map for [`Csr`]: one `bool` per node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Visited(Vec<bool>);

impl Visited {
    /// `n` unvisited nodes.
    pub fn new(n: usize) -> Self {
        Self(vec![false; n])
    }

    /// The table: `true` for every visited node.
    pub fn into_inner(self) -> Vec<bool> {
        self.0
    }

    /// The table, borrowed.
    pub fn as_slice(&self) -> &[bool] {
        &self.0
    }
}

impl VisitMap<NodeIx> for Visited {
    fn visit(&mut self, a: NodeIx) -> bool {
        !std::mem::replace(&mut self.0[a as usize], true)
    }

    fn is_visited(&self, a: &NodeIx) -> bool {
        self.0[*a as usize]
    }

    fn unvisit(&mut self, a: NodeIx) -> bool {
        std::mem::replace(&mut self.0[a as usize], false)
    }
}

impl GraphBase for Csr<'_> {
    /// No edge identities: the view is for neighbour-based algorithms.
    type EdgeId = ();
    type NodeId = NodeIx;
}

impl GraphRef for Csr<'_> {}

impl<'a> IntoNeighbors for Csr<'a> {
    type Neighbors = Copied<Iter<'a, NodeIx>>;

    /// The children of `a`.
    fn neighbors(self, a: NodeIx) -> Self::Neighbors {
        self.children(a).iter().copied()
    }
}

impl<'a> IntoNeighborsDirected for Csr<'a> {
    type NeighborsDirected = Copied<Iter<'a, NodeIx>>;

    fn neighbors_directed(self, n: NodeIx, d: Direction) -> Self::NeighborsDirected {
        match d {
            Direction::Outgoing => self.children(n).iter().copied(),
            Direction::Incoming => self.parents(n).iter().copied(),
        }
    }
}

impl IntoNodeIdentifiers for Csr<'_> {
    type NodeIdentifiers = Range<NodeIx>;

    fn node_identifiers(self) -> Self::NodeIdentifiers {
        0..self.len() as NodeIx
    }
}

impl NodeCount for Csr<'_> {
    fn node_count(&self) -> usize {
        self.len()
    }
}

impl NodeIndexable for Csr<'_> {
    fn node_bound(&self) -> usize {
        self.len()
    }

    fn to_index(&self, a: NodeIx) -> usize {
        a as usize
    }

    fn from_index(&self, i: usize) -> NodeIx {
        i as NodeIx
    }
}

impl Visitable for Csr<'_> {
    type Map = Visited;

    fn visit_map(&self) -> Visited {
        Visited::new(self.len())
    }

    fn reset_map(&self, map: &mut Visited) {
        map.0.clear();
        map.0.resize(self.len(), false);
    }
}

#[cfg(test)]
mod tests {
    use petgraph::Direction::{Incoming, Outgoing};
    use petgraph::algo::{has_path_connecting, kosaraju_scc, toposort};
    use petgraph::visit::{Bfs, Dfs, NodeFiltered, Reversed, Topo, Walker};

    use super::*;
    use crate::model::Dag;

    /// 0 -> 2, 1 -> 2, 2 -> 3, 0 -> 3, 4 alone
    fn dag() -> Dag {
        Dag::from_parents(&[vec![], vec![], vec![0, 1], vec![2, 0], vec![]])
    }

    #[test]
    fn neighbours_are_children_outgoing_and_parents_incoming() {
        let dag = dag();
        let g = dag.graph();
        assert_eq!(g.node_count(), 5);
        assert_eq!(g.neighbors(0).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(g.neighbors_directed(2, Outgoing).collect::<Vec<_>>(), [3]);
        assert_eq!(
            g.neighbors_directed(3, Incoming).collect::<Vec<_>>(),
            [2, 0]
        );
        assert_eq!(g.node_identifiers().collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        // The view borrows the Dag's arrays.
        assert!(std::ptr::eq(g.parents(3), dag.parents(3)));
    }

    #[test]
    fn petgraph_algorithms_run_on_the_view() {
        let dag = dag();
        let g = dag.graph();
        let order = toposort(g, None).unwrap();
        let pos = |n: u32| order.iter().position(|&x| x == n).unwrap();
        for c in 0..5 {
            for &p in dag.parents(c) {
                assert!(pos(p) < pos(c));
            }
        }
        assert_eq!(Topo::new(g).iter(g).count(), 5);
        assert!(kosaraju_scc(g).iter().all(|scc| scc.len() == 1));
        let mut below: Vec<u32> = Dfs::new(g, 1).iter(g).collect();
        below.sort_unstable();
        assert_eq!(below, [1, 2, 3]);
        let mut above: Vec<u32> = Bfs::new(Reversed(g), 3).iter(Reversed(g)).collect();
        above.sort_unstable();
        assert_eq!(above, [0, 1, 2, 3]);
        assert!(has_path_connecting(g, 1, 3, None));
        assert!(!has_path_connecting(g, 3, 1, None));
        let without_2 = NodeFiltered::from_fn(g, |n| n != 2);
        assert_eq!(toposort(&without_2, None).unwrap().len(), 4);
    }

    #[test]
    fn a_cycle_is_one_strongly_connected_component() {
        // 0 -> 1 -> 2 -> 0, 2 -> 3
        let parent_offsets = [0, 1, 2, 3, 4];
        let parent_list = [2, 0, 1, 2];
        let child_offsets = [0, 1, 2, 4, 4];
        let child_list = [1, 2, 0, 3];
        let g = Csr::new(&parent_offsets, &parent_list, &child_offsets, &child_list);
        assert!(toposort(g, None).is_err());
        let mut sccs: Vec<Vec<u32>> = kosaraju_scc(g)
            .into_iter()
            .map(|mut s| {
                s.sort_unstable();
                s
            })
            .collect();
        sccs.sort();
        assert_eq!(sccs, [vec![0, 1, 2], vec![3]]);
    }

    #[test]
    fn the_visit_map_is_a_membership_table() {
        let dag = dag();
        let g = dag.graph();
        let mut bfs = Bfs::new(Reversed(g), 2);
        while bfs.next(Reversed(g)).is_some() {}
        assert_eq!(
            bfs.discovered.into_inner(),
            [true, true, true, false, false]
        );
        let mut map = g.visit_map();
        assert!(map.visit(4));
        assert!(!map.visit(4));
        assert!(map.unvisit(4));
        g.reset_map(&mut map);
        assert_eq!(map.as_slice(), &[false; 5]);
    }
}
