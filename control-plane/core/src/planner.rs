//! The planner (`docs/design.md#planning`): targets → ancestor closure → validation → topological order, waves,
//! per-zone counts, critical path, shared-ancestor count and a `plan_hash` that ignores input
//! order.
//!
//! Pure and linear: ids are resolved once into dense positions (a flat table for compact numeric
//! ids), the graph is kept in flat compressed-sparse-row arrays, and every pass — closure,
//! topological sort, renumbering, waves and critical path — is one iterative walk. A
//! 100,000-deep chain plans without recursion, and 1,000,000 objects with ~2 parents each plan
//! in about half a second on two cores (`docs/benchmarks.md`).
//!
//! The three graph passes — the targets' ancestor closure, the topological order and the cycle
//! report — exist twice: hand-written over the flat arrays, and as petgraph's algorithms (`Bfs`,
//! `toposort`, `kosaraju_scc`) run on the same arrays through [`crate::graph::Csr`], without a
//! copy. [`Engine`] picks them; [`plan`] uses [`Engine::default`], the faster of the two as
//! measured on the planning benchmark (`docs/adr/0010-petgraph-over-the-csr-graph.md`).
//!
//! A rejected batch returns every violation found ([`PlanError`]), each naming the ids involved,
//! so the API can answer `INVALID_ARGUMENT` with a precise, machine-readable detail.

use std::collections::BTreeMap;
use std::fmt;

use std::collections::VecDeque;

use petgraph::algo::{kosaraju_scc, toposort};
use petgraph::visit::{Bfs, NodeFiltered, Reversed, VisitMap, Visitable};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::graph::Csr;
use crate::model::{Dag, NodeIx, ObjectDef, ObjectId, Zone};

/// The layer whose objects are the default targets (application).
pub const FINAL_LAYER: u8 = 3;

/// Default size cap of one batch.
pub const DEFAULT_MAX_OBJECTS: usize = 1_000_000;

/// Expected duration of one object of a zone not listed in [`PlanRequest::zone_durations_ms`].
pub const DEFAULT_ZONE_DURATION_MS: u64 = 1_000;

/// Which objects the user wants loaded.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    /// The batch's final-layer objects, or every object if it has none.
    #[default]
    Default,
    /// Every object of the batch.
    All,
    /// These objects (and, with them, their ancestors).
    Ids(Vec<ObjectId>),
}

/// How to plan a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// What to load.
    pub targets: Targets,
    /// Treat parents that are not in the batch as external and already satisfied, instead of
    /// rejecting the batch.
    pub allow_external_parents: bool,
    /// Largest accepted batch.
    pub max_objects: usize,
    /// Expected duration of one object per zone, in milliseconds, for the critical path.
    pub zone_durations_ms: BTreeMap<Zone, u64>,
}

impl Default for PlanRequest {
    fn default() -> Self {
        Self {
            targets: Targets::Default,
            allow_external_parents: false,
            max_objects: DEFAULT_MAX_OBJECTS,
            zone_durations_ms: BTreeMap::new(),
        }
    }
}

/// One reason a batch is rejected. Every variant names the ids involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Violation {
    /// Two or more objects share an id.
    DuplicateId {
        /// The id.
        id: ObjectId,
        /// Positions of the objects in the batch.
        positions: Vec<usize>,
    },
    /// An object names itself as a parent.
    SelfParent {
        /// The object.
        id: ObjectId,
    },
    /// An object names a parent that is not in the batch.
    UnknownParent {
        /// The child.
        id: ObjectId,
        /// The missing parent.
        parent: ObjectId,
    },
    /// A parent is in a higher layer than its child.
    LayerInversion {
        /// The child.
        id: ObjectId,
        /// The child's layer.
        layer: u8,
        /// The parent.
        parent: ObjectId,
        /// The parent's layer.
        parent_layer: u8,
    },
    /// A requested target is not in the batch.
    UnknownTarget {
        /// The target.
        id: ObjectId,
    },
    /// The dependencies loop. `path` is one concrete cycle: each object is a parent of the next,
    /// and the last is a parent of the first.
    Cycle {
        /// The cycle, starting anywhere on it.
        path: Vec<ObjectId>,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::DuplicateId { id, positions } => {
                write!(f, "duplicate id {id} at positions {positions:?}")
            }
            Violation::SelfParent { id } => write!(f, "object {id} names itself as a parent"),
            Violation::UnknownParent { id, parent } => {
                write!(f, "object {id} has unknown parent {parent}")
            }
            Violation::LayerInversion {
                id,
                layer,
                parent,
                parent_layer,
            } => write!(
                f,
                "object {id} (layer {layer}) has parent {parent} in higher layer {parent_layer}"
            ),
            Violation::UnknownTarget { id } => write!(f, "target {id} is not in the batch"),
            Violation::Cycle { path } => {
                f.write_str("dependency cycle ")?;
                for id in path {
                    write!(f, "{id} -> ")?;
                }
                match path.first() {
                    Some(first) => write!(f, "{first}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Why a batch cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlanError {
    /// The batch has no object.
    #[error("empty batch: it has no object")]
    EmptyBatch,
    /// The batch has more objects than allowed.
    #[error("batch of {count} objects is over the cap of {max}")]
    TooLarge {
        /// Objects submitted.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// The batch's graph is invalid; every violation found.
    #[error("{}", describe(.violations))]
    Invalid {
        /// All violations, grouped by kind.
        violations: Vec<Violation>,
    },
}

impl PlanError {
    /// The distinct unknown parent ids, sorted: what a user must add or declare external.
    pub fn unknown_parents(&self) -> Vec<ObjectId> {
        let PlanError::Invalid { violations } = self else {
            return Vec::new();
        };
        let mut out: Vec<ObjectId> = violations
            .iter()
            .filter_map(|v| match v {
                Violation::UnknownParent { parent, .. } => Some(parent.clone()),
                _ => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

fn describe(violations: &[Violation]) -> String {
    const SHOWN: usize = 20;
    let mut s = format!("batch rejected: {} violation(s): ", violations.len());
    for (i, v) in violations.iter().take(SHOWN).enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        s.push_str(&v.to_string());
    }
    if violations.len() > SHOWN {
        s.push_str(&format!("; and {} more", violations.len() - SHOWN));
    }
    s
}

/// A validated plan. Node `i` is the `i`-th object in topological order; [`Plan::nodes`] maps it
/// back to its position in the submitted batch, and [`Plan::dag`]'s edges go from lower to higher
/// node indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// For each node, the index of its object in the submitted slice.
    pub nodes: Vec<u32>,
    /// Parents and children of every node (edges to external parents are left out).
    pub dag: Dag,
    /// Depth level of each node: 0 for nodes without planned parents, else 1 + max over parents.
    pub waves: Vec<u32>,
    /// Number of waves.
    pub wave_count: u32,
    /// Planned objects per zone.
    pub zone_counts: BTreeMap<Zone, u32>,
    /// The longest chain by expected duration, from a root to a target, as nodes.
    pub critical_path: Vec<NodeIx>,
    /// Expected duration of the critical path, in milliseconds.
    pub critical_path_cost_ms: u64,
    /// Planned objects that are not targets and that two or more targets depend on.
    pub shared_ancestors: u32,
    /// The target nodes.
    pub targets: Vec<NodeIx>,
    /// Objects of the batch outside the targets' closure (indices into the submitted slice).
    pub excluded: Vec<u32>,
    /// Parents named but not in the batch, treated as satisfied (sorted).
    pub external_parents: Vec<ObjectId>,
    /// Hex digest of the planned objects and the request, independent of input order.
    pub plan_hash: String,
}

impl Plan {
    /// Number of planned objects.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when nothing is planned (never, for a plan returned by [`plan`]).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The object of `node`.
    pub fn object<'a>(&self, objects: &'a [ObjectDef], node: NodeIx) -> &'a ObjectDef {
        &objects[self.nodes[node as usize] as usize]
    }

    /// The ids of the nodes of the critical path.
    pub fn critical_path_ids(&self, objects: &[ObjectDef]) -> Vec<ObjectId> {
        self.critical_path
            .iter()
            .map(|&n| self.object(objects, n).id.clone())
            .collect()
    }
}

/// Who runs one graph pass of the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The planner's own loop over its flat arrays.
    HandWritten,
    /// petgraph's algorithm over the same arrays, through [`crate::graph::Csr`].
    Petgraph,
}

/// Which implementation runs each graph pass of [`plan_with`].
///
/// Every combination accepts and rejects the same batches and gives the same plan up to the
/// numbering of the nodes: Kahn's algorithm numbers them wave by wave, petgraph's `toposort` in
/// depth-first finishing order; both are topological orders, and waves, critical path cost,
/// zone counts, shared ancestors and `plan_hash` do not depend on which (tested). A rejected
/// cycle is a real simple cycle either way; which one, when there are several, may differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Engine {
    /// The targets' ancestor closure: a breadth-first walk over parent edges, or petgraph's
    /// `Bfs` over the reversed view, started from every target at once.
    pub closure: Pass,
    /// The topological order: Kahn's algorithm (first in, first out), or petgraph's `toposort`
    /// over the closure (a `NodeFiltered` view).
    pub order: Pass,
    /// The cycle report: a walk up the parents of the nodes Kahn's algorithm left, or one
    /// strongly connected component of petgraph's `kosaraju_scc` (iterative; `tarjan_scc` is
    /// recursive and a deep submitted chain would overflow the stack) and a walk inside it.
    /// With petgraph's order there is no leftover to walk, so the cycle report is petgraph's too.
    pub cycles: Pass,
}

impl Engine {
    /// Every pass hand-written.
    pub const HAND_WRITTEN: Engine = Engine {
        closure: Pass::HandWritten,
        order: Pass::HandWritten,
        cycles: Pass::HandWritten,
    };

    /// Every pass petgraph's.
    pub const PETGRAPH: Engine = Engine {
        closure: Pass::Petgraph,
        order: Pass::Petgraph,
        cycles: Pass::Petgraph,
    };
}

impl Default for Engine {
    /// What [`plan`] uses, per pass the faster on the planning benchmark
    /// (`docs/adr/0010-petgraph-over-the-csr-graph.md`): the hand-written closure and Kahn's
    /// order (petgraph's `Bfs` and `toposort` cost 10–75 % more on a 1,000,000-object plan), and
    /// petgraph's `kosaraju_scc` for the cycle report (no measurable difference).
    fn default() -> Self {
        Engine {
            closure: Pass::HandWritten,
            order: Pass::HandWritten,
            cycles: Pass::Petgraph,
        }
    }
}

/// Plans a batch with [`Engine::default`]. See the module documentation.
pub fn plan(objects: &[ObjectDef], request: &PlanRequest) -> Result<Plan, PlanError> {
    plan_with(objects, request, Engine::default())
}

/// Plans a batch with the graph passes of `engine`: for the comparison benchmark and the tests
/// that check both implementations agree. Use [`plan`].
pub fn plan_with(
    objects: &[ObjectDef],
    request: &PlanRequest,
    engine: Engine,
) -> Result<Plan, PlanError> {
    if objects.is_empty() {
        return Err(PlanError::EmptyBatch);
    }
    let cap = request.max_objects.min(u32::MAX as usize - 1);
    if objects.len() > cap {
        return Err(PlanError::TooLarge {
            count: objects.len(),
            max: cap,
        });
    }

    let mut violations = Vec::new();
    let index = index_ids(objects, &mut violations);
    let (parents, external) = resolve_parents(objects, &index, request, &mut violations);
    let targets = resolve_targets(objects, &index, &request.targets, &mut violations);
    drop(index);
    if !violations.is_empty() {
        return Err(PlanError::Invalid { violations });
    }
    let n = objects.len();

    // Both directions of the submitted graph; petgraph walks them through the view.
    let children = parents.transpose(n);
    let graph = Csr::new(
        &parents.offsets,
        &parents.list,
        &children.offsets,
        &children.list,
    );

    // Ancestor closure of the targets.
    let in_plan = match engine.closure {
        Pass::HandWritten => ancestor_closure(&parents, &targets, n),
        Pass::Petgraph => ancestor_closure_petgraph(graph, &targets),
    };
    let excluded: Vec<u32> = (0..n as u32).filter(|&i| !in_plan[i as usize]).collect();
    let planned = n - excluded.len();

    // Topological order of the closure, or the cycle that prevents one.
    let order = match engine.order {
        Pass::HandWritten => kahn(&parents, &children, &in_plan, planned).map_err(|indegree| {
            // Every node left with a positive in-degree is on a cycle or below one.
            let remaining = |i: u32| in_plan[i as usize] && indegree[i as usize] > 0;
            match engine.cycles {
                Pass::HandWritten => find_cycle(&parents, n, remaining),
                Pass::Petgraph => find_cycle_scc(graph, remaining),
            }
        }),
        Pass::Petgraph => {
            let closure = NodeFiltered::from_fn(graph, |i: u32| in_plan[i as usize]);
            toposort(&closure, None)
                .map_err(|_| find_cycle_scc(graph, |i: u32| in_plan[i as usize]))
        }
    };
    let order = match order {
        Ok(order) => order,
        Err(cycle) => {
            let path = cycle
                .into_iter()
                .map(|i| objects[i as usize].id.clone())
                .collect();
            return Err(PlanError::Invalid {
                violations: vec![Violation::Cycle { path }],
            });
        }
    };
    drop(children);

    // Renumber: node = position in topological order.
    let nodes = order;
    let mut node_of = vec![u32::MAX; n];
    for (node, &i) in nodes.iter().enumerate() {
        node_of[i as usize] = node as u32;
    }
    let mut offsets = Vec::with_capacity(nodes.len() + 1);
    let mut list = Vec::with_capacity(parents.list.len());
    offsets.push(0u32);
    for &i in &nodes {
        list.extend(parents.of(i).iter().map(|&p| node_of[p as usize]));
        offsets.push(list.len() as u32);
    }
    drop(parents);
    let dag = Dag::from_csr(offsets, list);

    // Waves, critical path, zone counts: one pass in topological order.
    let m = nodes.len();
    let mut waves = vec![0u32; m];
    let mut cost = vec![0u64; m];
    let mut best_parent = vec![u32::MAX; m];
    let mut zone_counts: BTreeMap<Zone, u32> = BTreeMap::new();
    // Few zones: a short list beats hashing the zone name once per node.
    let mut zone_cost: Vec<(&Zone, u64, u32)> = Vec::new();
    for node in 0..m as u32 {
        let obj = &objects[nodes[node as usize] as usize];
        let mut wave = 0;
        let mut heaviest = 0;
        for &p in dag.parents(node) {
            wave = wave.max(waves[p as usize] + 1);
            if cost[p as usize] > heaviest || best_parent[node as usize] == u32::MAX {
                heaviest = cost[p as usize];
                best_parent[node as usize] = p;
            }
        }
        waves[node as usize] = wave;
        let k = match zone_cost.iter().position(|(z, ..)| *z == &obj.zone) {
            Some(k) => k,
            None => {
                let ms = request
                    .zone_durations_ms
                    .get(&obj.zone)
                    .copied()
                    .unwrap_or(DEFAULT_ZONE_DURATION_MS);
                zone_cost.push((&obj.zone, ms, 0));
                zone_cost.len() - 1
            }
        };
        zone_cost[k].2 += 1;
        cost[node as usize] = heaviest.saturating_add(zone_cost[k].1);
    }
    for (zone, _, count) in zone_cost {
        zone_counts.insert(zone.clone(), count);
    }
    let wave_count = waves.iter().max().map_or(0, |w| w + 1);
    let end = (0..m)
        .max_by_key(|&i| (cost[i], std::cmp::Reverse(i)))
        .unwrap_or(0);
    let critical_path_cost_ms = cost.get(end).copied().unwrap_or(0);
    let mut critical_path = vec![end as NodeIx];
    let mut at = end;
    while best_parent[at] != u32::MAX {
        at = best_parent[at] as usize;
        critical_path.push(at as NodeIx);
    }
    critical_path.reverse();
    drop(cost);
    drop(best_parent);

    let mut target_nodes: Vec<NodeIx> = targets.iter().map(|&t| node_of[t as usize]).collect();
    target_nodes.sort_unstable();
    target_nodes.dedup();
    let shared_ancestors = count_shared_ancestors(&dag, &target_nodes);

    let plan_hash = plan_hash(objects, &in_plan, &external, request);

    Ok(Plan {
        nodes,
        dag,
        waves,
        wave_count,
        zone_counts,
        critical_path,
        critical_path_cost_ms,
        shared_ancestors,
        targets: target_nodes,
        excluded,
        external_parents: external,
        plan_hash,
    })
}

/// Parent lists of the submitted objects, by position, in one flat array.
struct Parents {
    offsets: Vec<u32>,
    list: Vec<u32>,
}

impl Parents {
    fn of(&self, i: u32) -> &[u32] {
        &self.list[self.offsets[i as usize] as usize..self.offsets[i as usize + 1] as usize]
    }

    /// Children lists, in the same flat form.
    fn transpose(&self, n: usize) -> Parents {
        let mut offsets = vec![0u32; n + 1];
        for &p in &self.list {
            offsets[p as usize + 1] += 1;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut list = vec![0u32; self.list.len()];
        for c in 0..n as u32 {
            for &p in self.of(c) {
                let slot = &mut fill[p as usize];
                list[*slot as usize] = c;
                *slot += 1;
            }
        }
        Parents { offsets, list }
    }
}

/// Positions of ids. Numeric ids (the common case) are keyed by their value, so a lookup never
/// touches the objects themselves: through a flat table when the values are compact (the seed's
/// layered ids are), else a hash of one integer; other ids by their text.
#[derive(Default)]
struct IdIndex<'a> {
    /// `(lowest value, position + 1 per value, 0 = absent)`.
    dense: Option<(u64, Vec<u32>)>,
    numeric: FxHashMap<u64, u32>,
    text: FxHashMap<&'a str, u32>,
}

/// The value of a canonical numeric id (no leading zeros, fits in a u64).
fn numeric_key(id: &str) -> Option<u64> {
    let b = id.as_bytes();
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        b.iter()
            .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0')),
    )
}

impl<'a> IdIndex<'a> {
    fn get(&self, id: &str) -> Option<u32> {
        match numeric_key(id) {
            Some(k) => match &self.dense {
                Some((low, table)) => k
                    .checked_sub(*low)
                    .and_then(|off| table.get(off as usize))
                    .and_then(|&slot| slot.checked_sub(1)),
                None => self.numeric.get(&k).copied(),
            },
            None => self.text.get(id).copied(),
        }
    }

    /// Inserts unless present; returns the earlier position if there was one.
    fn insert(&mut self, id: &'a str, i: u32) -> Option<u32> {
        match numeric_key(id) {
            Some(k) if self.dense.is_some() => {
                let (low, table) = self.dense.as_mut()?;
                let slot = &mut table[(k - *low) as usize];
                if *slot == 0 {
                    *slot = i + 1;
                    None
                } else {
                    Some(*slot - 1)
                }
            }
            Some(k) => match self.numeric.entry(k) {
                std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                    None
                }
            },
            None => match self.text.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                    None
                }
            },
        }
    }
}

/// Maps ids to positions; records duplicates.
fn index_ids<'a>(objects: &'a [ObjectDef], violations: &mut Vec<Violation>) -> IdIndex<'a> {
    let mut index = IdIndex::default();
    let (mut low, mut high, mut numeric) = (u64::MAX, 0u64, 0usize);
    for o in objects {
        if let Some(k) = numeric_key(o.id.as_str()) {
            low = low.min(k);
            high = high.max(k);
            numeric += 1;
        }
    }
    // A flat table when it costs at most 8 slots per numeric id.
    if numeric > 0 && high - low < (numeric as u64).saturating_mul(8).max(1024) {
        index.dense = Some((low, vec![0; (high - low + 1) as usize]));
    } else {
        index.numeric.reserve(numeric);
    }
    let mut dups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, o) in objects.iter().enumerate() {
        if let Some(first) = index.insert(o.id.as_str(), i as u32) {
            dups.entry(o.id.as_str())
                .or_insert_with(|| vec![first as usize])
                .push(i);
        }
    }
    for positions in dups.into_values() {
        violations.push(Violation::DuplicateId {
            id: objects[positions[0]].id.clone(),
            positions,
        });
    }
    index
}

/// Each object's parents as positions; external parents collected separately.
fn resolve_parents(
    objects: &[ObjectDef],
    index: &IdIndex<'_>,
    request: &PlanRequest,
    violations: &mut Vec<Violation>,
) -> (Parents, Vec<ObjectId>) {
    let layers: Vec<Option<u8>> = objects.iter().map(|o| o.layer).collect();
    let mut external: FxHashSet<&ObjectId> = FxHashSet::default();
    let mut offsets = Vec::with_capacity(objects.len() + 1);
    let mut list: Vec<u32> = Vec::with_capacity(objects.len() * 3);
    offsets.push(0u32);
    for o in objects {
        let start = list.len();
        for p in &o.parents {
            if *p == o.id {
                violations.push(Violation::SelfParent { id: o.id.clone() });
                continue;
            }
            match index.get(p.as_str()) {
                Some(pi) => {
                    if let (Some(layer), Some(parent_layer)) = (o.layer, layers[pi as usize])
                        && parent_layer > layer
                    {
                        violations.push(Violation::LayerInversion {
                            id: o.id.clone(),
                            layer,
                            parent: p.clone(),
                            parent_layer,
                        });
                    }
                    list.push(pi);
                }
                None if request.allow_external_parents => {
                    external.insert(p);
                }
                None => violations.push(Violation::UnknownParent {
                    id: o.id.clone(),
                    parent: p.clone(),
                }),
            }
        }
        crate::dedup::dedup_tail(&mut list, start);
        offsets.push(list.len() as u32);
    }
    let mut external: Vec<ObjectId> = external.into_iter().cloned().collect();
    external.sort();
    (Parents { offsets, list }, external)
}

fn resolve_targets(
    objects: &[ObjectDef],
    index: &IdIndex<'_>,
    targets: &Targets,
    violations: &mut Vec<Violation>,
) -> Vec<u32> {
    match targets {
        Targets::All => (0..objects.len() as u32).collect(),
        Targets::Default => {
            let finals: Vec<u32> = (0..objects.len() as u32)
                .filter(|&i| objects[i as usize].layer == Some(FINAL_LAYER))
                .collect();
            if finals.is_empty() {
                (0..objects.len() as u32).collect()
            } else {
                finals
            }
        }
        Targets::Ids(ids) => {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                match index.get(id.as_str()) {
                    Some(i) => out.push(i),
                    None => violations.push(Violation::UnknownTarget { id: id.clone() }),
                }
            }
            out
        }
    }
}

/// The targets and all their ancestors (`true` = planned), breadth first over parent edges.
fn ancestor_closure(parents: &Parents, targets: &[u32], n: usize) -> Vec<bool> {
    let mut in_plan = vec![false; n];
    let mut queue: Vec<u32> = Vec::with_capacity(targets.len());
    for &t in targets {
        if !in_plan[t as usize] {
            in_plan[t as usize] = true;
            queue.push(t);
        }
    }
    let mut head = 0;
    while head < queue.len() {
        let i = queue[head];
        head += 1;
        for &p in parents.of(i) {
            if !in_plan[p as usize] {
                in_plan[p as usize] = true;
                queue.push(p);
            }
        }
    }
    in_plan
}

/// [`ancestor_closure`] with petgraph: one `Bfs` over the reversed view, seeded with every
/// target; its visit map is the membership table.
fn ancestor_closure_petgraph(graph: Csr<'_>, targets: &[u32]) -> Vec<bool> {
    let up = Reversed(graph);
    let mut discovered = graph.visit_map();
    let mut stack = VecDeque::with_capacity(targets.len());
    for &t in targets {
        if discovered.visit(t) {
            stack.push_back(t);
        }
    }
    let mut bfs = Bfs { stack, discovered };
    while bfs.next(up).is_some() {}
    bfs.discovered.into_inner()
}

/// Kahn's algorithm over the planned nodes, first in first out, so the order also runs wave by
/// wave. On a cycle, the in-degrees left: every planned node still positive is on a cycle or
/// below one.
fn kahn(
    parents: &Parents,
    children: &Parents,
    in_plan: &[bool],
    planned: usize,
) -> Result<Vec<u32>, Vec<u32>> {
    let n = in_plan.len();
    let mut indegree = vec![0u32; n];
    for i in 0..n as u32 {
        if in_plan[i as usize] {
            indegree[i as usize] = parents.of(i).len() as u32;
        }
    }
    let mut order: Vec<u32> = Vec::with_capacity(planned);
    order.extend((0..n as u32).filter(|&i| in_plan[i as usize] && indegree[i as usize] == 0));
    let mut head = 0;
    while head < order.len() {
        let i = order[head];
        head += 1;
        for &c in children.of(i) {
            if in_plan[c as usize] {
                let d = &mut indegree[c as usize];
                *d -= 1;
                if *d == 0 {
                    order.push(c);
                }
            }
        }
    }
    if order.len() < planned {
        Err(indegree)
    } else {
        Ok(order)
    }
}

/// One concrete cycle, found without recursion: after Kahn's algorithm, every planned node left
/// with a positive in-degree (`remaining`) keeps a parent that was not removed either, so walking
/// such parents from the first of them must revisit a node, and the walk between the two visits
/// is a cycle.
fn find_cycle(parents: &Parents, n: usize, remaining: impl Fn(u32) -> bool) -> Vec<u32> {
    match (0..n as u32).find(|&i| remaining(i)) {
        Some(start) => walk_to_cycle(|i| parents.of(i), start, remaining),
        None => Vec::new(),
    }
}

/// [`find_cycle`] with petgraph: the strongly connected components of the `suspect` nodes
/// (`kosaraju_scc`, iterative), the one with two or more members and the lowest position
/// (self-parents are rejected before planning, so a cycle has two or more), and a walk up its
/// parents from that position: every member of such a component has a parent inside it.
fn find_cycle_scc(graph: Csr<'_>, suspect: impl Fn(u32) -> bool) -> Vec<u32> {
    let view = NodeFiltered::from_fn(graph, &suspect);
    let Some(component) = kosaraju_scc(&view)
        .into_iter()
        .filter(|c| c.len() >= 2)
        .min_by_key(|c| c.iter().copied().min())
    else {
        return Vec::new();
    };
    let start = component.iter().copied().min().unwrap_or_default();
    let mut member = vec![false; graph.len()];
    for &i in &component {
        member[i as usize] = true;
    }
    walk_to_cycle(|i| graph.parents(i), start, |i| member[i as usize])
}

/// Walks from `start` to the first parent inside `keep`, until a node repeats; returns the loop,
/// each node a parent of the next. Every node of `keep` must have a parent in `keep`.
fn walk_to_cycle<'p>(
    parents_of: impl Fn(u32) -> &'p [u32],
    start: u32,
    keep: impl Fn(u32) -> bool,
) -> Vec<u32> {
    let mut seen_at: FxHashMap<u32, usize> = FxHashMap::default();
    let mut walk = Vec::new();
    let mut at = start;
    while !seen_at.contains_key(&at) {
        seen_at.insert(at, walk.len());
        walk.push(at);
        at = parents_of(at)
            .iter()
            .copied()
            .find(|&p| keep(p))
            .expect("every node walked keeps a parent in the set");
    }
    // The walk follows parent links; reversed, each node is a parent of the next.
    let mut cycle = walk[seen_at[&at]..].to_vec();
    cycle.reverse();
    cycle
}

/// Non-target nodes on which two or more distinct targets depend. One reverse-topological pass:
/// each node keeps the first target that reaches it, and a flag once a second one does.
fn count_shared_ancestors(dag: &Dag, targets: &[NodeIx]) -> u32 {
    const NONE: u32 = u32::MAX;
    let n = dag.len();
    let mut is_target = vec![false; n];
    for &t in targets {
        is_target[t as usize] = true;
    }
    let mut first = vec![NONE; n];
    let mut shared = vec![false; n];
    let mut count = 0;
    for node in (0..n as u32).rev() {
        let i = node as usize;
        if is_target[i] {
            // Merge with itself as a target.
            merge(&mut first[i], &mut shared[i], node, false);
        }
        let (f, s) = (first[i], shared[i]);
        if !is_target[i] && s {
            count += 1;
        }
        // A node can be known shared before any single first target reached it (a shared
        // child came first): it still passes that on.
        if f == NONE && !s {
            continue;
        }
        for &p in dag.parents(node) {
            let p = p as usize;
            merge(&mut first[p], &mut shared[p], f, s);
        }
    }
    count
}

fn merge(first: &mut u32, shared: &mut bool, other_first: u32, other_shared: bool) {
    if *shared {
        return;
    }
    if other_shared {
        *shared = true;
    } else if *first == u32::MAX {
        *first = other_first;
    } else if *first != other_first {
        *shared = true;
    }
}

/// Order-independent digest: each planned object is hashed on its own (xxh3-128 over a canonical
/// encoding, parents sorted), the per-object hashes are added (a multiset hash), and SHA-256
/// seals the sum with the request's parameters.
fn plan_hash(
    objects: &[ObjectDef],
    in_plan: &[bool],
    external: &[ObjectId],
    request: &PlanRequest,
) -> String {
    // The sum does not depend on the order: large batches are hashed in parts, in parallel.
    let parts = if objects.len() >= 100_000 {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
    } else {
        1
    };
    let step = objects.len().div_ceil(parts);
    let (sum, count) = std::thread::scope(|scope| {
        let handles: Vec<_> = objects
            .chunks(step)
            .zip(in_plan.chunks(step))
            .map(|(objs, planned)| scope.spawn(move || hash_objects(objs, planned)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("hashing does not panic"))
            .fold((0u128, 0u64), |(s, c), (s2, c2)| {
                (s.wrapping_add(s2), c + c2)
            })
    });
    let mut h = Sha256::new();
    h.update(b"strata.plan.v1");
    h.update(sum.to_le_bytes());
    h.update(count.to_le_bytes());
    for e in external {
        h.update(e.as_str().as_bytes());
        h.update([0]);
    }
    h.update([u8::from(request.allow_external_parents)]);
    let digest = h.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sum of the per-object hashes of the planned objects among `objects`, and their count.
fn hash_objects(objects: &[ObjectDef], in_plan: &[bool]) -> (u128, u64) {
    let mut sum: u128 = 0;
    let mut count: u64 = 0;
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut sorted: Vec<&str> = Vec::new();
    for (o, _) in objects.iter().zip(in_plan).filter(|(_, planned)| **planned) {
        count += 1;
        buf.clear();
        field(&mut buf, o.id.as_str());
        field(&mut buf, &o.name);
        field(&mut buf, o.zone.as_str());
        sorted.clear();
        sorted.extend(o.parents.iter().map(ObjectId::as_str));
        sorted.sort_unstable();
        buf.extend_from_slice(&(sorted.len() as u32).to_le_bytes());
        for p in &sorted {
            field(&mut buf, p);
        }
        field(&mut buf, o.frequency.as_deref().unwrap_or(""));
        buf.extend_from_slice(
            &o.last_loaded_at
                .map_or(i64::MIN, |t| t.timestamp_millis())
                .to_le_bytes(),
        );
        buf.push(u8::from(o.enabled));
        buf.extend_from_slice(&o.priority.to_le_bytes());
        buf.extend_from_slice(&(o.attributes.len() as u32).to_le_bytes());
        for (k, v) in o.attributes.iter() {
            field(&mut buf, k);
            field(&mut buf, v);
        }
        sum = sum.wrapping_add(xxhash_rust::xxh3::xxh3_128(&buf));
    }
    (sum, count)
}

fn field(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}
