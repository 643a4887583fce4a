//! Property tests of the batch state machine over random DAGs and random, adversarial event
//! sequences: duplicated, reordered and stale results, lost attempts, retries, retry-now,
//! replays, coalesced outcomes and cancels.
//!
//! A simulated driver replays every effect into a shadow copy of the node states and checks, after
//! every event:
//! 1. no node is released while a parent is not LOADED/SKIPPED_FRESH (in effect order);
//! 2. driven to quiescence, every node is terminal and the batch state is right;
//! 3. ignored events (stale, duplicate, late, unknown) change nothing and emit nothing, and
//!    re-delivering any applied result is ignored;
//! 4. a run never has more than `max_attempts` attempts;
//! 5. a DEAD/UPSTREAM_FAILED node's children are blocked, UPSTREAM_FAILED always has a failed
//!    parent, and replay makes blocked descendants runnable again.
//!
//! Also: effects agree with the machine, epochs strictly increase, only the current release is
//! answered, restore round-trips, and a crash that loses the last step recovers through
//! `restore` + `resume`.
//!
//! Set `SIM_TRACE=/some/file` to get the event trace of a failing case written there.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use strata_core::Dag;
use strata_core::machine::{
    BatchMachine, BatchState, Effect, Event, FailureKind, IgnoreReason, InitialDisposition,
    LossReason, NodeState, Outcome,
};
use strata_core::retry::RetryPolicy;

/// A random DAG: node `j`'s parents are drawn among `0..j` (duplicates allowed, as a stress of
/// the parent counters).
fn dag_strategy(max_nodes: usize) -> impl Strategy<Value = Vec<Vec<u32>>> {
    (1..=max_nodes).prop_flat_map(|n| {
        proptest::collection::vec(
            proptest::collection::vec(any::<proptest::sample::Index>(), 0..4),
            n,
        )
        .prop_map(|picks| {
            picks
                .into_iter()
                .enumerate()
                .map(|(j, ps)| {
                    if j == 0 {
                        Vec::new()
                    } else {
                        ps.iter().map(|ix| ix.index(j) as u32).collect()
                    }
                })
                .collect()
        })
    })
}

fn disposition() -> impl Strategy<Value = InitialDisposition> {
    prop_oneof![
        12 => Just(InitialDisposition::Run),
        2 => Just(InitialDisposition::SkippedFresh),
        1 => Just(InitialDisposition::PreflightRejected { reason: "preflight rule".into() }),
    ]
}

/// One abstract driver action; selectors are resolved against the simulation's state.
#[derive(Debug, Clone)]
enum Action {
    /// An outcome for some release ever published (old ones are stale).
    Deliver {
        release: usize,
        kind: u8,
    },
    /// Re-deliver a result that was applied earlier: must be ignored.
    Redeliver {
        which: usize,
    },
    /// A scheduled retry fires (possibly one already taken).
    RetryDue {
        which: usize,
    },
    RetryNow {
        node: usize,
    },
    Replay {
        nodes: Vec<usize>,
    },
    Cancel,
    /// An event about a node that is not in the batch.
    Unknown {
        kind: u8,
    },
    /// Time passes.
    Tick {
        secs: u16,
    },
    /// The driver crashes and loses the last step's persistence (its effects were performed):
    /// restore from the records before it, maybe raise the epoch floor, resume.
    Crash {
        bump: u8,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        120 => (any::<usize>(), any::<u8>()).prop_map(|(release, kind)| Action::Deliver { release, kind }),
        20 => any::<usize>().prop_map(|which| Action::Redeliver { which }),
        28 => any::<usize>().prop_map(|which| Action::RetryDue { which }),
        8 => any::<usize>().prop_map(|node| Action::RetryNow { node }),
        12 => proptest::collection::vec(any::<usize>(), 1..4).prop_map(|nodes| Action::Replay { nodes }),
        1 => Just(Action::Cancel),
        4 => any::<u8>().prop_map(|kind| Action::Unknown { kind }),
        6 => any::<u16>().prop_map(|secs| Action::Tick { secs }),
        6 => any::<u8>().prop_map(|bump| Action::Crash { bump }),
    ]
}

struct Sim {
    parents: Vec<Vec<u32>>,
    m: BatchMachine,
    max_attempts: u32,
    now: DateTime<Utc>,
    /// Every `PublishReady` ever emitted: (node, attempt, epoch).
    releases: Vec<(u32, u32, u64)>,
    /// Every `ScheduleRetry` ever emitted: (node, attempt).
    retries: Vec<(u32, u32)>,
    /// Result events that were applied.
    applied: Vec<Event>,
    /// Node states rebuilt from `Transition` effects alone.
    shadow: Vec<NodeState>,
    last_epoch: u64,
    finished: Vec<BatchState>,
    reopened: usize,
    cancel_applied: bool,
    ignored: usize,
    /// A cheap deterministic generator for the drive-to-quiescence phase.
    seed: u64,
    /// What was persisted before the last applied step, to simulate losing it.
    prev: Option<Saved>,
    crashes: usize,
    /// Absorbing the effects of `resume` (which re-publishes current releases).
    resuming: bool,
    /// The event trace, kept only when `SIM_TRACE` names a file to write it to on failure.
    trace: Option<Vec<String>>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let (true, Some(trace), Ok(path)) = (
            std::thread::panicking(),
            &self.trace,
            std::env::var("SIM_TRACE"),
        ) {
            let _ = std::fs::write(path, format!("{:?}\n{}", self.parents, trace.join("\n")));
        }
    }
}

/// The persisted state before a step, and the simulation's bookkeeping at that point.
struct Saved {
    records: Vec<strata_core::machine::NodeRecord>,
    applied: usize,
    finished: usize,
    reopened: usize,
    cancel_applied: bool,
}

impl Sim {
    fn new(
        parents: Vec<Vec<u32>>,
        init: Vec<InitialDisposition>,
        max_attempts: u32,
        seed: u64,
    ) -> Self {
        let policy = RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(5),
        };
        let mut fx = Vec::new();
        let m = BatchMachine::start(Dag::from_parents(&parents), init, policy, &mut fx).unwrap();
        let n = parents.len();
        let mut sim = Self {
            parents,
            m,
            max_attempts,
            now: Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap(),
            releases: Vec::new(),
            retries: Vec::new(),
            applied: Vec::new(),
            shadow: vec![NodeState::Pending; n],
            last_epoch: 0,
            finished: Vec::new(),
            reopened: 0,
            cancel_applied: false,
            ignored: 0,
            seed,
            prev: None,
            crashes: 0,
            resuming: false,
            trace: std::env::var_os("SIM_TRACE").map(|_| Vec::new()),
        };
        sim.log(|| format!("start: {fx:?}"));
        sim.absorb(&fx);
        sim.check_invariants();
        sim
    }

    fn rand(&mut self) -> u64 {
        // splitmix64
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.rand() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(line());
        }
    }

    fn n(&self) -> usize {
        self.parents.len()
    }

    /// Applies one event and checks everything that must hold after it.
    fn send(&mut self, ev: Event) -> Outcome {
        let before = self.m.clone();
        let mut fx = Vec::new();
        let jitter = self.unit();
        let out = self.m.handle(ev.clone(), self.now, jitter, &mut fx);
        self.log(|| format!("{ev:?} -> {out:?} {fx:?}"));
        match out {
            Outcome::Ignored(_) => {
                self.ignored += 1;
                assert!(fx.is_empty(), "ignored {ev:?} emitted {fx:?}");
                assert_eq!(self.m, before, "ignored {ev:?} changed the machine");
            }
            Outcome::Applied => {
                assert!(!fx.is_empty(), "applied {ev:?} emitted nothing");
                self.prev = Some(Saved {
                    records: before.records().to_vec(),
                    applied: self.applied.len(),
                    finished: self.finished.len(),
                    reopened: self.reopened,
                    cancel_applied: self.cancel_applied,
                });
                let is_result = matches!(
                    ev,
                    Event::Started { .. }
                        | Event::Loaded { .. }
                        | Event::Failed { .. }
                        | Event::AttemptLost { .. }
                        | Event::CoalescedOutcome { .. }
                        | Event::RetryDue { .. }
                );
                if is_result {
                    self.applied.push(ev.clone());
                }
                if ev == Event::Cancel {
                    self.cancel_applied = true;
                }
            }
        }
        self.absorb(&fx);
        self.check_invariants();
        out
    }

    /// Replays effects into the shadow, checking each against what came before it.
    fn absorb(&mut self, fx: &[Effect]) {
        for e in fx {
            match e {
                Effect::Transition {
                    node,
                    from,
                    to,
                    attempt,
                } => {
                    let i = *node as usize;
                    assert_eq!(
                        self.shadow[i], *from,
                        "transition of {node} from the wrong state"
                    );
                    assert_ne!(from, to);
                    self.shadow[i] = *to;
                    assert!(*attempt <= self.m.record(*node).unwrap().attempt);
                }
                Effect::PublishReady {
                    node,
                    attempt,
                    dispatch_epoch,
                } => {
                    let i = *node as usize;
                    assert_eq!(self.shadow[i], NodeState::Ready, "publish before READY");
                    // (1) never released before every parent is satisfied.
                    for &p in &self.parents[i] {
                        assert!(
                            self.shadow[p as usize].is_satisfied(),
                            "node {node} released while parent {p} is {:?}",
                            self.shadow[p as usize]
                        );
                    }
                    let republished = self.resuming
                        && *dispatch_epoch == self.m.record(*node).unwrap().dispatch_epoch
                        && *dispatch_epoch <= self.last_epoch;
                    assert!(
                        republished || *dispatch_epoch > self.last_epoch,
                        "epochs must increase"
                    );
                    self.last_epoch = self.last_epoch.max(*dispatch_epoch);
                    assert!(*attempt >= 1);
                    self.releases.push((*node, *attempt, *dispatch_epoch));
                }
                Effect::ScheduleRetry {
                    node,
                    attempt,
                    due_at,
                } => {
                    assert_eq!(self.shadow[*node as usize], NodeState::RetryWait);
                    if !self.resuming {
                        // A fresh schedule is within the policy's cap; resume repeats the
                        // persisted due time, which may have passed.
                        assert!(*due_at >= self.now);
                        assert!(*due_at <= self.now + chrono::Duration::seconds(5));
                    }
                    self.retries.push((*node, *attempt));
                }
                Effect::DeadLetter { node, attempts, .. } => {
                    assert_eq!(self.shadow[*node as usize], NodeState::Dead);
                    assert!(*attempts <= self.max_attempts);
                }
                Effect::BatchFinished { state } => {
                    assert!(state.is_terminal());
                    self.finished.push(*state);
                }
                Effect::BatchReopened => self.reopened += 1,
            }
        }
    }

    fn check_invariants(&self) {
        let m = &self.m;
        let n = self.n();
        let mut counts = [0u32; 9];
        for i in 0..n {
            let node = i as u32;
            let rec = m.record(node).unwrap();
            let s = rec.state;
            assert_eq!(
                self.shadow[i], s,
                "shadow of node {i} disagrees with the machine"
            );
            counts[NodeState::ALL.iter().position(|x| *x == s).unwrap()] += 1;
            // (4) attempt budget.
            assert!(rec.run_attempts() <= self.max_attempts, "node {i}: {rec:?}");
            let ps = &self.parents[i];
            let any_failed = ps.iter().any(|&p| m.state(p).unwrap().is_failed());
            let all_sat = ps.iter().all(|&p| m.state(p).unwrap().is_satisfied());
            match s {
                NodeState::Ready
                | NodeState::Running
                | NodeState::RetryWait
                | NodeState::Loaded => {
                    assert!(all_sat, "node {i} is {s:?} with an unsatisfied parent")
                }
                // A pending node with every parent satisfied is a missed release (unless the
                // batch is cancelled, where nothing stays pending anyway).
                NodeState::Pending => {
                    assert!(!all_sat, "node {i} pending with all parents satisfied");
                    assert!(!any_failed, "node {i} pending under a failed parent");
                }
                // (5) UPSTREAM_FAILED has a failed parent.
                NodeState::UpstreamFailed => {
                    assert!(
                        any_failed,
                        "node {i} upstream-failed without a failed parent"
                    );
                    let dead = m.failed_ancestors(node);
                    assert!(!dead.is_empty());
                    assert!(dead.iter().all(|&d| m.state(d) == Some(NodeState::Dead)));
                }
                _ => {}
            }
            // (5) a failed node's children are blocked.
            if s.is_failed() {
                for c in m.dag().children(node) {
                    let cs = m.state(*c).unwrap();
                    assert!(
                        matches!(
                            cs,
                            NodeState::UpstreamFailed | NodeState::Dead | NodeState::SkippedFresh
                        ),
                        "child {c} of failed node {i} is {cs:?}"
                    );
                }
            }
            if s == NodeState::RetryWait {
                assert!(rec.retry_due.is_some());
            }
            assert_eq!(m.blocked_on(node).is_empty(), all_sat);
        }
        for (k, s) in NodeState::ALL.iter().enumerate() {
            assert_eq!(m.counts().get(*s), counts[k], "count of {s:?}");
        }
        // Batch state follows the counts.
        let active = m.counts().active();
        match m.batch_state() {
            BatchState::Running => assert!(active > 0),
            BatchState::Succeeded => {
                assert_eq!(active, 0);
                assert_eq!(m.counts().failed(), 0);
            }
            BatchState::Failed => {
                assert_eq!(active, 0);
                assert!(m.counts().failed() > 0);
            }
            BatchState::Cancelled => assert_eq!(active, 0),
        }
        // Restore from the records gives the same machine back.
        let mut restored =
            BatchMachine::restore(m.dag().clone(), m.records().to_vec(), m.policies().clone())
                .expect("records of a live machine restore");
        if self.crashes > 0 {
            // A raised epoch floor is not in the records.
            assert!(restored.next_epoch() <= m.next_epoch());
            restored.raise_epoch_floor(m.next_epoch());
        }
        assert_eq!(&restored, m);
    }

    fn result_event(&self, node: u32, attempt: u32, dispatch_epoch: u64, kind: u8) -> Event {
        match kind % 8 {
            0 | 1 => Event::Started {
                node,
                attempt,
                dispatch_epoch,
            },
            2 | 3 => Event::Loaded {
                node,
                attempt,
                dispatch_epoch,
            },
            4 => Event::Failed {
                node,
                attempt,
                dispatch_epoch,
                retryable: true,
                error: "temp".into(),
                kind: FailureKind::Processor,
            },
            5 => Event::Failed {
                node,
                attempt,
                dispatch_epoch,
                retryable: kind & 0x80 != 0,
                error: "perm".into(),
                kind: FailureKind::Processor,
            },
            6 => Event::AttemptLost {
                node,
                attempt,
                dispatch_epoch,
                reason: if kind & 0x80 != 0 {
                    LossReason::Timeout
                } else {
                    LossReason::AgentLost
                },
            },
            _ => Event::CoalescedOutcome {
                node,
                attempt,
                dispatch_epoch,
                loaded: kind & 0x80 != 0,
                error: None,
            },
        }
    }

    fn act(&mut self, a: &Action) {
        match a {
            Action::Deliver { release, kind } => {
                if self.releases.is_empty() {
                    return;
                }
                // Favour recent releases so that batches make progress; old ones are stale.
                let len = self.releases.len();
                let ix = if release % 3 == 0 {
                    release % len
                } else {
                    len - 1 - (release / 3) % len.min(4)
                };
                let (node, attempt, epoch) = self.releases[ix];
                let rec = self.m.record(node).unwrap();
                let current = (rec.attempt, rec.dispatch_epoch) == (attempt, epoch);
                let ev = self.result_event(node, attempt, epoch, *kind);
                let out = self.send(ev.clone());
                if !current {
                    // Reference check of the fencing: only the current release is answered.
                    assert_eq!(out, Outcome::Ignored(IgnoreReason::Stale), "{ev:?}");
                }
            }
            Action::Redeliver { which } => {
                if self.applied.is_empty() {
                    return;
                }
                let ev = self.applied[which % self.applied.len()].clone();
                let out = self.send(ev.clone());
                assert!(
                    matches!(
                        out,
                        Outcome::Ignored(
                            IgnoreReason::Stale | IgnoreReason::Duplicate | IgnoreReason::Late
                        )
                    ),
                    "re-delivered {ev:?} gave {out:?}"
                );
            }
            Action::RetryDue { which } => {
                if self.retries.is_empty() {
                    return;
                }
                let (node, attempt) = self.retries[which % self.retries.len()];
                self.send(Event::RetryDue { node, attempt });
            }
            Action::RetryNow { node } => {
                let node = (node % self.n()) as u32;
                let was = self.m.state(node).unwrap();
                let out = self.send(Event::RetryNow { node });
                assert_eq!(out.is_applied(), was == NodeState::RetryWait);
            }
            Action::Replay { nodes } => {
                let nodes: Vec<u32> = nodes.iter().map(|x| (x % self.n()) as u32).collect();
                let before: Vec<NodeState> = self.shadow.clone();
                let out = self.send(Event::Replay {
                    nodes: nodes.clone(),
                });
                if out.is_applied() {
                    // (5) every replayed node with no failed parent is runnable again, and so is
                    // every descendant left without a failed parent.
                    for &x in &nodes {
                        if before[x as usize] == NodeState::Dead {
                            let s = self.m.state(x).unwrap();
                            assert!(
                                matches!(
                                    s,
                                    NodeState::Ready
                                        | NodeState::Pending
                                        | NodeState::UpstreamFailed
                                ),
                                "replayed {x} is {s:?}"
                            );
                        }
                    }
                }
            }
            Action::Cancel => {
                let was_running = self.m.batch_state() == BatchState::Running;
                let out = self.send(Event::Cancel);
                assert_eq!(out.is_applied(), was_running);
            }
            Action::Unknown { kind } => {
                let node = self.n() as u32 + u32::from(*kind);
                let ev = match kind % 3 {
                    0 => self.result_event(node, 1, 1, *kind),
                    1 => Event::RetryDue { node, attempt: 2 },
                    _ => Event::Replay {
                        nodes: vec![0, node],
                    },
                };
                assert_eq!(self.send(ev), Outcome::Ignored(IgnoreReason::UnknownNode));
            }
            Action::Tick { secs } => self.now += chrono::Duration::seconds(i64::from(*secs)),
            Action::Crash { bump } => {
                let Some(saved) = self.prev.take() else {
                    return;
                };
                self.crashes += 1;
                let dag = self.m.dag().clone();
                let policy = self.m.policies().clone();
                let mut m = BatchMachine::restore(dag, saved.records, policy).unwrap();
                if *bump > 0 {
                    // A driver that persists a high-water mark of epochs.
                    m.raise_epoch_floor(self.last_epoch + u64::from(*bump));
                }
                self.last_epoch = m.next_epoch() - 1;
                self.shadow = m.records().iter().map(|r| r.state).collect();
                self.m = m;
                self.applied.truncate(saved.applied);
                self.finished.truncate(saved.finished);
                self.reopened = saved.reopened;
                self.cancel_applied = saved.cancel_applied;
                let was_terminal = self.m.is_terminal();
                let mut fx = Vec::new();
                self.m.resume(self.now, &mut fx);
                let states: Vec<NodeState> = self.m.records().iter().map(|r| r.state).collect();
                self.log(|| format!("CRASH bump {bump} restored {states:?} resume {fx:?}"));
                self.resuming = true;
                self.absorb(&fx);
                self.resuming = false;
                if was_terminal {
                    // resume repeats the end of an already finished batch.
                    let again = self.finished.pop();
                    assert_eq!(again, Some(self.m.batch_state()));
                }
                self.check_invariants();
            }
        }
    }

    /// (2) Keeps delivering outcomes (with random failures) for every outstanding release and
    /// firing due retries until nothing is active.
    fn drive_to_quiescence(&mut self) {
        let mut rounds = 0;
        while self.m.counts().active() > 0 {
            rounds += 1;
            assert!(rounds < 10_000, "no quiescence");
            let mut progressed = false;
            for i in 0..self.n() as u32 {
                let rec = self.m.record(i).unwrap().clone();
                let (a, e) = (rec.attempt, rec.dispatch_epoch);
                let r = self.rand() % 10;
                let ev = match rec.state {
                    NodeState::Ready if r < 3 => Event::Started {
                        node: i,
                        attempt: a,
                        dispatch_epoch: e,
                    },
                    NodeState::Ready | NodeState::Running => match r {
                        0..=5 => Event::Loaded {
                            node: i,
                            attempt: a,
                            dispatch_epoch: e,
                        },
                        6 | 7 => Event::Failed {
                            node: i,
                            attempt: a,
                            dispatch_epoch: e,
                            retryable: true,
                            error: "temp".into(),
                            kind: FailureKind::Processor,
                        },
                        8 => Event::AttemptLost {
                            node: i,
                            attempt: a,
                            dispatch_epoch: e,
                            reason: LossReason::Timeout,
                        },
                        _ => Event::Failed {
                            node: i,
                            attempt: a,
                            dispatch_epoch: e,
                            retryable: false,
                            error: "perm".into(),
                            kind: FailureKind::Processor,
                        },
                    },
                    NodeState::RetryWait => {
                        self.now = self.now.max(rec.retry_due.unwrap());
                        Event::RetryDue {
                            node: i,
                            attempt: a + 1,
                        }
                    }
                    _ => continue,
                };
                assert!(self.send(ev).is_applied());
                progressed = true;
            }
            assert!(
                progressed,
                "active nodes but nothing to deliver: {:?}",
                self.shadow
            );
        }
    }

    fn check_final(&self) {
        let m = &self.m;
        // Every node is in exactly one terminal state.
        for i in 0..self.n() as u32 {
            assert!(m.state(i).unwrap().is_terminal(), "node {i} not terminal");
        }
        assert_eq!(m.counts().total() as usize, self.n());
        assert_eq!(m.counts().get(NodeState::Pending), 0);
        let expected = if self.cancel_applied {
            BatchState::Cancelled
        } else if m.counts().failed() > 0 {
            BatchState::Failed
        } else {
            BatchState::Succeeded
        };
        assert_eq!(m.batch_state(), expected);
        assert_eq!(
            self.finished.last(),
            Some(&expected),
            "BatchFinished announces the end"
        );
        assert_eq!(
            self.finished.len(),
            self.reopened + 1,
            "one BatchFinished per run"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn random_event_sequences_keep_every_invariant(
        (parents, init) in dag_strategy(24).prop_flat_map(|p| {
            let n = p.len();
            (Just(p), proptest::collection::vec(disposition(), n))
        }),
        max_attempts in 1u32..=3,
        actions in proptest::collection::vec(action(), 0..150),
        seed in any::<u64>(),
    ) {
        let mut sim = Sim::new(parents, init, max_attempts, seed);
        for a in &actions {
            sim.act(a);
        }
        sim.drive_to_quiescence();
        sim.check_final();
        // Once terminal, re-delivering anything applied is still a no-op.
        for ev in sim.applied.clone() {
            prop_assert!(!sim.send(ev).is_applied());
        }
    }

    #[test]
    fn without_failures_every_node_loads_or_is_skipped(
        (parents, fresh) in dag_strategy(40).prop_flat_map(|p| {
            let n = p.len();
            (Just(p), proptest::collection::vec(any::<bool>(), n))
        }),
        seed in any::<u64>(),
    ) {
        let init = fresh
            .iter()
            .map(|&f| if f { InitialDisposition::SkippedFresh } else { InitialDisposition::Run })
            .collect();
        let mut sim = Sim::new(parents, init, 3, seed);
        // Deliver Loaded for outstanding releases in a random order.
        while sim.m.counts().active() > 0 {
            let ready: Vec<u32> = sim.m.nodes_in(NodeState::Ready).collect();
            prop_assert!(!ready.is_empty());
            let pick = ready[(sim.rand() % ready.len() as u64) as usize];
            let r = sim.m.record(pick).unwrap().clone();
            let ev = Event::Loaded { node: pick, attempt: r.attempt, dispatch_epoch: r.dispatch_epoch };
            let out = sim.send(ev);
            prop_assert!(out.is_applied());
        }
        prop_assert_eq!(sim.m.batch_state(), BatchState::Succeeded);
        for (i, f) in fresh.iter().enumerate() {
            let want = if *f { NodeState::SkippedFresh } else { NodeState::Loaded };
            prop_assert_eq!(sim.m.state(i as u32), Some(want));
        }
        // Exactly one release per non-fresh node.
        prop_assert_eq!(sim.releases.len(), fresh.iter().filter(|f| !**f).count());
    }

    #[test]
    fn killing_a_node_blocks_all_its_descendants_and_replay_unblocks_them(
        parents in dag_strategy(30),
        victim_ix in any::<proptest::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let n = parents.len();
        let mut sim = Sim::new(parents.clone(), vec![InitialDisposition::Run; n], 1, seed);
        let victim = victim_ix.index(n) as u32;
        // Load everything up to the victim, then fail it permanently.
        loop {
            let ready: Vec<u32> = sim.m.nodes_in(NodeState::Ready).filter(|&i| i != victim).collect();
            if ready.is_empty() { break; }
            for i in ready {
                let r = sim.m.record(i).unwrap().clone();
                sim.send(Event::Loaded { node: i, attempt: r.attempt, dispatch_epoch: r.dispatch_epoch });
            }
        }
        let r = sim.m.record(victim).unwrap().clone();
        prop_assert_eq!(r.state, NodeState::Ready);
        sim.send(Event::Failed { node: victim, attempt: r.attempt, dispatch_epoch: r.dispatch_epoch, retryable: true, error: "x".into(), kind: FailureKind::Processor });
        // Descendants, computed independently.
        let mut desc = vec![false; n];
        for (j, ps) in parents.iter().enumerate() {
            desc[j] = ps.iter().any(|&p| p == victim || desc[p as usize]);
        }
        for (j, &is_desc) in desc.iter().enumerate() {
            let s = sim.m.state(j as u32).unwrap();
            if is_desc {
                prop_assert_eq!(s, NodeState::UpstreamFailed, "descendant {}", j);
                prop_assert_eq!(sim.m.failed_ancestors(j as u32), vec![victim]);
            } else if j as u32 != victim {
                prop_assert_eq!(s, NodeState::Loaded, "non-descendant {}", j);
            }
        }
        prop_assert_eq!(sim.m.batch_state(), BatchState::Failed);
        let replayed = sim.send(Event::Replay { nodes: vec![victim] });
        prop_assert!(replayed.is_applied());
        prop_assert_eq!(sim.m.state(victim), Some(NodeState::Ready));
        for (j, &is_desc) in desc.iter().enumerate() {
            if is_desc {
                prop_assert_eq!(sim.m.state(j as u32), Some(NodeState::Pending));
            }
        }
        prop_assert_eq!(sim.m.batch_state(), BatchState::Running);
        sim.drive_to_quiescence();
        sim.check_final();
    }
}
