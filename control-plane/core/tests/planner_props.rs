//! Planner: every rejection of `docs/design.md#planning`, the derived numbers on small known graphs, and property
//! tests on random DAGs (order, closure, cycles, hash).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use strata_core::planner::{
    Engine, Pass, Plan, PlanError, PlanRequest, Targets, Violation, plan, plan_with,
};
use strata_core::{ObjectDef, ObjectId, Zone};

fn obj(id: &str, zone: &str, parents: &[&str]) -> ObjectDef {
    let id = ObjectId::parse(id).unwrap();
    let zone = Zone::parse(zone).unwrap();
    ObjectDef {
        layer: id.numeric_layer().or_else(|| zone.default_layer()),
        id,
        name: Default::default(),
        zone,
        parents: parents
            .iter()
            .map(|p| ObjectId::parse(p).unwrap())
            .collect(),
        frequency: None,
        last_loaded_at: None,
        enabled: true,
        priority: 0,
        attributes: Default::default(),
    }
}

fn violations(err: PlanError) -> Vec<Violation> {
    match err {
        PlanError::Invalid { violations } => violations,
        other => panic!("expected violations, got {other}"),
    }
}

fn oid(s: &str) -> ObjectId {
    ObjectId::parse(s).unwrap()
}

#[test]
fn empty_batch_and_size_cap() {
    assert_eq!(
        plan(&[], &PlanRequest::default()),
        Err(PlanError::EmptyBatch)
    );
    let objs = vec![obj("1001", "raw", &[]), obj("1002", "raw", &[])];
    let req = PlanRequest {
        max_objects: 1,
        ..PlanRequest::default()
    };
    assert_eq!(
        plan(&objs, &req),
        Err(PlanError::TooLarge { count: 2, max: 1 })
    );
}

#[test]
fn every_violation_is_reported_with_its_ids() {
    let objs = vec![
        obj("1001", "raw", &["1001"]),
        obj("1002", "raw", &[]),
        obj("1002", "raw", &[]),
        obj("2001", "standardized", &["3001", "1999"]),
        obj("3001", "application", &["1002"]),
    ];
    let v = violations(plan(&objs, &PlanRequest::default()).unwrap_err());
    assert!(v.contains(&Violation::DuplicateId {
        id: oid("1002"),
        positions: vec![1, 2]
    }));
    assert!(v.contains(&Violation::SelfParent { id: oid("1001") }));
    assert!(v.contains(&Violation::LayerInversion {
        id: oid("2001"),
        layer: 2,
        parent: oid("3001"),
        parent_layer: 3
    }));
    assert!(v.contains(&Violation::UnknownParent {
        id: oid("2001"),
        parent: oid("1999")
    }));
    assert_eq!(v.len(), 4, "{v:?}");
}

#[test]
fn unknown_targets_are_named() {
    let objs = vec![obj("1001", "raw", &[])];
    let req = PlanRequest {
        targets: Targets::Ids(vec![oid("1001"), oid("3999")]),
        ..PlanRequest::default()
    };
    assert_eq!(
        violations(plan(&objs, &req).unwrap_err()),
        [Violation::UnknownTarget { id: oid("3999") }]
    );
}

#[test]
fn a_cycle_is_reported_as_one_concrete_path() {
    let objs = vec![
        obj("a", "raw", &["c"]),
        obj("b", "raw", &["a"]),
        obj("c", "raw", &["b"]),
        obj("d", "raw", &["c"]),
    ];
    let v = violations(plan(&objs, &PlanRequest::default()).unwrap_err());
    let [Violation::Cycle { path }] = v.as_slice() else {
        panic!("{v:?}")
    };
    assert_eq!(path.len(), 3);
    let err_text = Violation::Cycle { path: path.clone() }.to_string();
    assert!(err_text.starts_with("dependency cycle "), "{err_text}");
    // Each is a parent of the next, and the last a parent of the first.
    let parent_of = |p: &ObjectId, c: &ObjectId| {
        objs.iter()
            .find(|o| &o.id == c)
            .is_some_and(|o| o.parents.contains(p))
    };
    for i in 0..path.len() {
        assert!(parent_of(&path[i], &path[(i + 1) % path.len()]), "{path:?}");
    }
}

#[test]
fn targets_closure_waves_critical_path_and_shared_ancestors() {
    // 1001 -> 2001 -> 3001; 1002 -> 2001; 1002 -> 2002 -> 3002; 1003 (unused raw) -> 2003 (no child)
    let objs = vec![
        obj("3001", "application", &["2001"]),
        obj("3002", "application", &["2002"]),
        obj("2001", "standardized", &["1001", "1002"]),
        obj("2002", "standardized", &["1002"]),
        obj("2003", "standardized", &["1003"]),
        obj("1001", "raw", &[]),
        obj("1002", "raw", &[]),
        obj("1003", "raw", &[]),
    ];
    let req = PlanRequest {
        zone_durations_ms: [
            (Zone::parse("raw").unwrap(), 10),
            (Zone::parse("standardized").unwrap(), 100),
            (Zone::parse("application").unwrap(), 1000),
        ]
        .into_iter()
        .collect(),
        ..PlanRequest::default()
    };
    let p = plan(&objs, &req).unwrap();
    let id = |n: u32| p.object(&objs, n).id.to_string();
    let planned: BTreeSet<String> = (0..p.len() as u32).map(id).collect();
    assert_eq!(
        planned,
        ["1001", "1002", "2001", "2002", "3001", "3002"]
            .map(String::from)
            .into()
    );
    let excluded: Vec<&str> = p
        .excluded
        .iter()
        .map(|&i| objs[i as usize].id.as_str())
        .collect();
    assert_eq!(excluded, ["2003", "1003"]);
    assert_eq!(p.wave_count, 3);
    for n in 0..p.len() as u32 {
        let expected = match &id(n)[..1] {
            "1" => 0,
            "2" => 1,
            _ => 2,
        };
        assert_eq!(p.waves[n as usize], expected, "wave of {}", id(n));
    }
    assert_eq!(p.critical_path_cost_ms, 1110);
    assert_eq!(p.critical_path_ids(&objs).len(), 3);
    // 1002 feeds both targets; nothing else does.
    assert_eq!(p.shared_ancestors, 1);

    let all = plan(
        &objs,
        &PlanRequest {
            targets: Targets::All,
            ..req
        },
    )
    .unwrap();
    assert_eq!(all.len(), 8);
    assert!(all.excluded.is_empty());
}

#[test]
fn a_node_made_shared_by_a_target_ancestor_passes_it_on() {
    // 1001 -> 1002 -> {1003, 1004} -> 1005; targets 1004 and 1005. 1002 is shared (1004 and
    // 1005 depend on it), and so is 1001 above it. 1004 is numbered after 1003, so the shared
    // flag reaches 1002 before any single first target does: it was counted, but not passed up.
    let objs = vec![
        obj("1001", "raw", &[]),
        obj("1002", "raw", &["1001"]),
        obj("1003", "raw", &["1002"]),
        obj("1004", "raw", &["1002"]),
        obj("1005", "raw", &["1003", "1004"]),
    ];
    let req = PlanRequest {
        targets: Targets::Ids(vec![oid("1004"), oid("1005")]),
        ..PlanRequest::default()
    };
    assert_eq!(plan(&objs, &req).unwrap().shared_ancestors, 2);
}

#[test]
fn a_100_000_deep_chain_plans_without_recursion() {
    let n = 100_000;
    let objs: Vec<ObjectDef> = (0..n)
        .map(|i| {
            let parent = if i == 0 {
                vec![]
            } else {
                vec![format!("n{}", i - 1)]
            };
            let parents: Vec<&str> = parent.iter().map(String::as_str).collect();
            obj(&format!("n{i}"), "raw", &parents)
        })
        .collect();
    let p = plan(&objs, &PlanRequest::default()).unwrap();
    assert_eq!(p.len(), n);
    assert_eq!(p.wave_count as usize, n);
    assert_eq!(p.critical_path.len(), n);

    // And the same chain closed into a cycle is found.
    let mut cyclic = objs;
    cyclic[0].parents.push(oid(&format!("n{}", n - 1)));
    let v = violations(plan(&cyclic, &PlanRequest::default()).unwrap_err());
    let [Violation::Cycle { path }] = v.as_slice() else {
        panic!()
    };
    assert_eq!(path.len(), n);
}

// --------------------------------------------------------------------------------------------
// Property tests on random DAGs.
// --------------------------------------------------------------------------------------------

/// A random DAG: node i's parents are drawn from 0..i.
fn dag_strategy() -> impl Strategy<Value = Vec<Vec<usize>>> {
    (1usize..60).prop_flat_map(|n| {
        (0..n)
            .map(|i| {
                if i == 0 {
                    Just(Vec::new()).boxed()
                } else {
                    proptest::collection::btree_set(0..i, 0..4.min(i + 1))
                        .prop_map(|s| s.into_iter().collect())
                        .boxed()
                }
            })
            .collect::<Vec<_>>()
    })
}

fn to_objects(parents: &[Vec<usize>], perm: &[usize]) -> Vec<ObjectDef> {
    // Node i gets id "n{i}"; objects are laid out in the order `perm`.
    perm.iter()
        .map(|&i| {
            let ps: Vec<String> = parents[i].iter().map(|p| format!("n{p}")).collect();
            let ps: Vec<&str> = ps.iter().map(String::as_str).collect();
            obj(&format!("n{i}"), "raw", &ps)
        })
        .collect()
}

fn permutation(n: usize, mut seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let j = (seed >> 33) as usize % (i + 1);
        v.swap(i, j);
    }
    v
}

fn ancestors_of(parents: &[Vec<usize>], targets: &[usize]) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<usize> = targets.to_vec();
    while let Some(i) = stack.pop() {
        if seen.insert(i) {
            stack.extend(&parents[i]);
        }
    }
    seen
}

fn node_number(id: &ObjectId) -> usize {
    id.as_str()[1..].parse().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn order_respects_every_edge_and_closure_is_exact(
        parents in dag_strategy(),
        seed in any::<u64>(),
        pick in proptest::collection::vec(any::<prop::sample::Index>(), 1..4),
    ) {
        let n = parents.len();
        let perm = permutation(n, seed);
        let objs = to_objects(&parents, &perm);
        let targets: Vec<usize> = pick.iter().map(|ix| ix.index(n)).collect();
        let req = PlanRequest {
            targets: Targets::Ids(targets.iter().map(|t| oid(&format!("n{t}"))).collect()),
            ..PlanRequest::default()
        };
        let p = plan(&objs, &req).unwrap();

        let planned: Vec<usize> = (0..p.len() as u32).map(|k| node_number(&p.object(&objs, k).id)).collect();
        let planned_set: BTreeSet<usize> = planned.iter().copied().collect();
        prop_assert_eq!(planned_set.len(), planned.len(), "each object planned once");
        prop_assert_eq!(&planned_set, &ancestors_of(&parents, &targets));

        let position: BTreeMap<usize, usize> = planned.iter().enumerate().map(|(k, &i)| (i, k)).collect();
        for (&i, &k) in &position {
            for p_ in &parents[i] {
                prop_assert!(position[p_] < k, "parent n{} after child n{}", p_, i);
            }
            // The DAG handed to the state machine has exactly these parents.
            let dag_parents: BTreeSet<usize> = p.dag.parents(k as u32).iter().map(|&q| planned[q as usize]).collect();
            prop_assert_eq!(dag_parents, parents[i].iter().copied().collect::<BTreeSet<_>>());
            for &c in p.dag.children(k as u32) {
                prop_assert!(p.dag.parents(c).contains(&(k as u32)));
            }
        }
        for (k, &i) in planned.iter().enumerate() {
            let expected_wave = parents[i].iter().map(|q| p.waves[position[q]] + 1).max().unwrap_or(0);
            prop_assert_eq!(p.waves[k], expected_wave);
        }
        prop_assert_eq!(p.len() + p.excluded.len(), n);
    }

    #[test]
    fn an_injected_cycle_is_always_found_and_real(
        parents in dag_strategy(),
        a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let n = parents.len();
        // Close a loop: an ancestor `u` of `v` gets `v` as a parent. Without ancestors, `v`
        // names itself.
        let v_ = b.index(n);
        let ancestors: Vec<usize> = ancestors_of(&parents, &[v_]).into_iter().filter(|&x| x != v_).collect();
        let mut with_cycle = parents.clone();
        if ancestors.is_empty() {
            with_cycle[v_].push(v_);
        } else {
            with_cycle[ancestors[a.index(ancestors.len())]].push(v_);
        }
        let objs = to_objects(&with_cycle, &permutation(n, seed));
        let req = PlanRequest { targets: Targets::All, ..PlanRequest::default() };
        let v = violations(plan(&objs, &req).unwrap_err());
        prop_assert_eq!(v.len(), 1);
        match &v[0] {
            Violation::SelfParent { id } => prop_assert!(with_cycle[node_number(id)].contains(&node_number(id))),
            Violation::Cycle { path } => {
                prop_assert!(path.len() >= 2);
                let nodes: Vec<usize> = path.iter().map(node_number).collect();
                let distinct: BTreeSet<usize> = nodes.iter().copied().collect();
                prop_assert_eq!(distinct.len(), nodes.len(), "a simple cycle");
                for i in 0..nodes.len() {
                    let (p_, c) = (nodes[i], nodes[(i + 1) % nodes.len()]);
                    prop_assert!(with_cycle[c].contains(&p_), "n{} is not a parent of n{}", p_, c);
                }
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn the_hash_ignores_input_order(parents in dag_strategy(), s1 in any::<u64>(), s2 in any::<u64>()) {
        let n = parents.len();
        let req = PlanRequest { targets: Targets::All, ..PlanRequest::default() };
        let a = plan(&to_objects(&parents, &permutation(n, s1)), &req).unwrap();
        let mut shuffled = to_objects(&parents, &permutation(n, s2));
        for o in &mut shuffled { o.parents.reverse(); }
        let b = plan(&shuffled, &req).unwrap();
        prop_assert_eq!(&a.plan_hash, &b.plan_hash);
        prop_assert_eq!(a.plan_hash.len(), 64);

        // …but not content: one changed attribute changes it.
        shuffled[0].attributes.insert("owner", "someone");
        let c = plan(&shuffled, &req).unwrap();
        prop_assert_ne!(&a.plan_hash, &c.plan_hash);
    }
}

// --------------------------------------------------------------------------------------------
// The hand-written and petgraph graph passes agree.
// --------------------------------------------------------------------------------------------

/// Every engine: all hand-written, all petgraph, and each petgraph pass alone.
const ENGINES: [Engine; 4] = [
    Engine::HAND_WRITTEN,
    Engine::PETGRAPH,
    Engine {
        closure: Pass::Petgraph,
        order: Pass::HandWritten,
        cycles: Pass::HandWritten,
    },
    Engine {
        closure: Pass::HandWritten,
        order: Pass::HandWritten,
        cycles: Pass::Petgraph,
    },
];

/// What a plan says about each object, independent of the node numbering: per object id, its
/// wave and its planned parents' ids.
fn by_object(p: &Plan, objs: &[ObjectDef]) -> BTreeMap<String, (u32, BTreeSet<String>)> {
    (0..p.len() as u32)
        .map(|k| {
            let parents = p
                .dag
                .parents(k)
                .iter()
                .map(|&q| p.object(objs, q).id.to_string())
                .collect();
            (
                p.object(objs, k).id.to_string(),
                (p.waves[k as usize], parents),
            )
        })
        .collect()
}

/// `b` reachable from `a` over parent → child edges (`parents[c]` lists c's parents).
fn reaches(parents: &[Vec<usize>], a: usize, b: usize) -> bool {
    ancestors_of(parents, &[b]).contains(&a)
}

#[test]
fn the_petgraph_engine_plans_and_rejects_a_100_000_deep_chain_without_recursion() {
    let n = 100_000;
    let mut objs: Vec<ObjectDef> = (0..n)
        .map(|i| {
            let parent = if i == 0 {
                vec![]
            } else {
                vec![format!("n{}", i - 1)]
            };
            let parents: Vec<&str> = parent.iter().map(String::as_str).collect();
            obj(&format!("n{i}"), "raw", &parents)
        })
        .collect();
    let p = plan_with(&objs, &PlanRequest::default(), Engine::PETGRAPH).unwrap();
    assert_eq!(p.wave_count as usize, n);
    assert_eq!(p.critical_path.len(), n);
    objs[0].parents.push(oid(&format!("n{}", n - 1)));
    for engine in ENGINES {
        let v = violations(plan_with(&objs, &PlanRequest::default(), engine).unwrap_err());
        let [Violation::Cycle { path }] = v.as_slice() else {
            panic!("{engine:?}: {v:?}")
        };
        assert_eq!(path.len(), n, "{engine:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_engine_gives_the_same_plan(
        parents in dag_strategy(),
        seed in any::<u64>(),
        pick in proptest::collection::vec(any::<prop::sample::Index>(), 1..4),
        all in any::<bool>(),
    ) {
        let n = parents.len();
        let objs = to_objects(&parents, &permutation(n, seed));
        let targets = if all {
            Targets::All
        } else {
            Targets::Ids(pick.iter().map(|ix| oid(&format!("n{}", ix.index(n)))).collect())
        };
        let req = PlanRequest { targets, ..PlanRequest::default() };
        let hand = plan_with(&objs, &req, Engine::HAND_WRITTEN).unwrap();
        // The default engine differs from the hand-written one only in the cycle report.
        prop_assert_eq!(&hand, &plan(&objs, &req).unwrap());
        let expected = by_object(&hand, &objs);
        for engine in ENGINES {
            let p = plan_with(&objs, &req, engine).unwrap();
            // A topological order: every parent numbered before its child.
            for k in 0..p.len() as u32 {
                for &q in p.dag.parents(k) {
                    prop_assert!(q < k, "{:?}: parent {} after child {}", engine, q, k);
                }
            }
            prop_assert_eq!(&by_object(&p, &objs), &expected, "{:?}", engine);
            prop_assert_eq!(&p.excluded, &hand.excluded);
            prop_assert_eq!(p.wave_count, hand.wave_count);
            prop_assert_eq!(&p.zone_counts, &hand.zone_counts);
            prop_assert_eq!(p.critical_path_cost_ms, hand.critical_path_cost_ms);
            prop_assert_eq!(p.shared_ancestors, hand.shared_ancestors);
            prop_assert_eq!(&p.plan_hash, &hand.plan_hash);
            let targets = |p: &Plan| -> BTreeSet<String> {
                p.targets.iter().map(|&t| p.object(&objs, t).id.to_string()).collect()
            };
            prop_assert_eq!(targets(&p), targets(&hand));
        }
    }

    #[test]
    fn every_engine_reports_a_cycle_of_the_same_strongly_connected_component(
        parents in dag_strategy(),
        a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let n = parents.len();
        let v_ = b.index(n);
        let ancestors: Vec<usize> = ancestors_of(&parents, &[v_]).into_iter().filter(|&x| x != v_).collect();
        prop_assume!(!ancestors.is_empty());
        // One back edge: `u` (an ancestor of `v`) gets `v` as a parent. The one component with
        // a cycle is every node on a path from `u` to `v`.
        let u = ancestors[a.index(ancestors.len())];
        let mut with_cycle = parents.clone();
        with_cycle[u].push(v_);
        let component: BTreeSet<usize> = (0..n)
            .filter(|&x| reaches(&parents, u, x) && reaches(&parents, x, v_))
            .collect();
        let inner_edges: usize = component
            .iter()
            .map(|&c| with_cycle[c].iter().filter(|p_| component.contains(p_)).count())
            .sum();
        let objs = to_objects(&with_cycle, &permutation(n, seed));
        let req = PlanRequest { targets: Targets::All, ..PlanRequest::default() };
        for engine in ENGINES {
            let v = violations(plan_with(&objs, &req, engine).unwrap_err());
            let [Violation::Cycle { path }] = v.as_slice() else {
                return Err(TestCaseError::fail(format!("{engine:?}: {v:?}")));
            };
            let nodes: Vec<usize> = path.iter().map(node_number).collect();
            let members: BTreeSet<usize> = nodes.iter().copied().collect();
            prop_assert_eq!(members.len(), nodes.len(), "{:?}: a simple cycle", engine);
            for i in 0..nodes.len() {
                let (p_, c) = (nodes[i], nodes[(i + 1) % nodes.len()]);
                prop_assert!(with_cycle[c].contains(&p_), "{:?}: n{} is not a parent of n{}", engine, p_, c);
            }
            prop_assert!(members.is_subset(&component), "{:?}: {:?} outside {:?}", engine, members, component);
            if inner_edges == component.len() {
                // The component is one simple cycle: every engine names exactly its members.
                prop_assert_eq!(&members, &component, "{:?}", engine);
            }
        }
    }
}
