//! One test per transition of the batch state machine, through its public API.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use strata_core::Dag;
use strata_core::machine::{
    BatchMachine, BatchState, DeadReason, Effect, Event, FailureKind, IgnoreReason,
    InitialDisposition, LossReason, MachineError, NodeRecord, NodeState, Outcome,
};
use strata_core::retry::{NodePolicies, RetryPolicy};

use InitialDisposition::{PreflightRejected, Run};
const FRESH: InitialDisposition = InitialDisposition::SkippedFresh;
use NodeState::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap()
}

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        ..RetryPolicy::default()
    }
}

/// A machine plus the effects of its last step.
struct H {
    m: BatchMachine,
    fx: Vec<Effect>,
}

impl H {
    fn new(parents: &[Vec<u32>], init: Vec<InitialDisposition>, max_attempts: u32) -> Self {
        let mut fx = Vec::new();
        let m = BatchMachine::start(
            Dag::from_parents(parents),
            init,
            policy(max_attempts),
            &mut fx,
        )
        .unwrap();
        Self { m, fx }
    }

    fn run_all(parents: &[Vec<u32>], max_attempts: u32) -> Self {
        Self::new(parents, vec![Run; parents.len()], max_attempts)
    }

    fn send(&mut self, ev: Event) -> Outcome {
        self.send_at(ev, t0(), 0.5)
    }

    fn send_at(&mut self, ev: Event, now: DateTime<Utc>, jitter: f64) -> Outcome {
        self.fx.clear();
        let before = self.m.clone();
        let out = self.m.handle(ev, now, jitter, &mut self.fx);
        if let Outcome::Ignored(_) = out {
            assert!(self.fx.is_empty(), "ignored event emitted {:?}", self.fx);
            assert_eq!(self.m, before, "ignored event changed the machine");
        }
        out
    }

    /// The current (attempt, epoch) of a node.
    fn cur(&self, node: u32) -> (u32, u64) {
        let r = self.m.record(node).unwrap();
        (r.attempt, r.dispatch_epoch)
    }

    fn started(&mut self, node: u32) -> Outcome {
        let (attempt, dispatch_epoch) = self.cur(node);
        self.send(Event::Started {
            node,
            attempt,
            dispatch_epoch,
        })
    }

    fn loaded(&mut self, node: u32) -> Outcome {
        let (attempt, dispatch_epoch) = self.cur(node);
        self.send(Event::Loaded {
            node,
            attempt,
            dispatch_epoch,
        })
    }

    fn failed(&mut self, node: u32, retryable: bool) -> Outcome {
        let (attempt, dispatch_epoch) = self.cur(node);
        self.send(Event::Failed {
            node,
            attempt,
            dispatch_epoch,
            retryable,
            error: format!("boom {attempt}"),
            kind: FailureKind::Processor,
        })
    }

    fn released(&self) -> Vec<u32> {
        self.fx
            .iter()
            .filter_map(|e| match e {
                Effect::PublishReady { node, .. } => Some(*node),
                _ => None,
            })
            .collect()
    }

    fn states(&self) -> Vec<NodeState> {
        (0..self.m.len() as u32)
            .map(|i| self.m.state(i).unwrap())
            .collect()
    }
}

/// 0 → 1, 0 → 2, {1, 2} → 3
fn diamond() -> Vec<Vec<u32>> {
    vec![vec![], vec![0], vec![0], vec![1, 2]]
}

#[test]
fn start_releases_roots_and_loading_releases_children_when_all_parents_are_loaded() {
    let mut h = H::run_all(&diamond(), 3);
    assert_eq!(h.released(), [0]);
    assert_eq!(h.states(), [Ready, Pending, Pending, Pending]);
    assert_eq!(h.m.blocked_on(3), [1, 2]);
    assert_eq!(h.m.batch_state(), BatchState::Running);

    assert_eq!(h.started(0), Outcome::Applied);
    assert_eq!(h.m.state(0), Some(Running));
    assert_eq!(h.loaded(0), Outcome::Applied);
    assert_eq!(h.released(), [1, 2]);
    // The parent's transition comes before the children's releases.
    assert_eq!(
        h.fx[0],
        Effect::Transition {
            node: 0,
            from: Running,
            to: Loaded,
            attempt: 1
        }
    );
    assert_eq!(
        h.loaded(1),
        Outcome::Applied,
        "loaded without started is accepted"
    );
    assert!(h.released().is_empty(), "3 still waits for 2");
    assert_eq!(h.m.blocked_on(3), [2]);
    assert_eq!(h.loaded(2), Outcome::Applied);
    assert_eq!(h.released(), [3]);
    assert_eq!(h.loaded(3), Outcome::Applied);
    assert_eq!(
        h.fx.last(),
        Some(&Effect::BatchFinished {
            state: BatchState::Succeeded
        })
    );
    assert!(h.m.is_terminal());
    assert_eq!(h.m.counts().get(Loaded), 4);
    // Every release got its own epoch, in order.
    let epochs: Vec<u64> = (0..4)
        .map(|i| h.m.record(i).unwrap().dispatch_epoch)
        .collect();
    assert_eq!(epochs, [1, 2, 3, 4]);
}

#[test]
fn stale_duplicate_late_and_unknown_results_are_counted_no_ops() {
    let mut h = H::run_all(&diamond(), 3);
    let (a, e) = h.cur(0);
    assert_eq!(
        h.send(Event::Started {
            node: 0,
            attempt: a,
            dispatch_epoch: e + 1
        }),
        Outcome::Ignored(IgnoreReason::Stale)
    );
    assert_eq!(
        h.send(Event::Loaded {
            node: 0,
            attempt: a + 1,
            dispatch_epoch: e
        }),
        Outcome::Ignored(IgnoreReason::Stale)
    );
    assert_eq!(
        h.send(Event::Loaded {
            node: 9,
            attempt: 1,
            dispatch_epoch: 1
        }),
        Outcome::Ignored(IgnoreReason::UnknownNode)
    );
    // A node that was never released has no current attempt.
    assert_eq!(
        h.send(Event::Loaded {
            node: 1,
            attempt: 0,
            dispatch_epoch: 0
        }),
        Outcome::Ignored(IgnoreReason::Stale)
    );
    assert_eq!(h.started(0), Outcome::Applied);
    assert_eq!(h.started(0), Outcome::Ignored(IgnoreReason::Duplicate));
    assert_eq!(h.loaded(0), Outcome::Applied);
    assert_eq!(h.loaded(0), Outcome::Ignored(IgnoreReason::Duplicate));
    assert_eq!(
        h.started(0),
        Outcome::Ignored(IgnoreReason::Late),
        "started after loaded"
    );
    assert_eq!(
        h.failed(0, true),
        Outcome::Ignored(IgnoreReason::Late),
        "failed after loaded"
    );
}

#[test]
fn a_retryable_failure_waits_with_jittered_backoff_then_runs_the_next_attempt() {
    let mut h = H::run_all(&[vec![]], 3);
    let (a1, e1) = h.cur(0);
    assert_eq!(h.failed(0, true), Outcome::Applied);
    assert_eq!(h.m.state(0), Some(RetryWait));
    assert_eq!(h.m.last_error(0), Some("boom 1"));
    // After failed attempt 1 the ceiling is 1 s; jitter 0.5 → 500 ms.
    let due = t0() + chrono::Duration::milliseconds(500);
    assert!(h.fx.contains(&Effect::ScheduleRetry {
        node: 0,
        attempt: 2,
        due_at: due
    }));
    assert_eq!(h.m.next_retry_at(0), Some(due));
    assert_eq!(h.failed(0, true), Outcome::Ignored(IgnoreReason::Duplicate));
    assert_eq!(
        h.send(Event::Loaded {
            node: 0,
            attempt: a1,
            dispatch_epoch: e1
        }),
        Outcome::Ignored(IgnoreReason::Late),
        "the first outcome of an attempt wins"
    );
    assert_eq!(
        h.send(Event::RetryDue {
            node: 0,
            attempt: 3
        }),
        Outcome::Ignored(IgnoreReason::Stale)
    );
    assert_eq!(
        h.send(Event::RetryDue {
            node: 0,
            attempt: 2
        }),
        Outcome::Applied
    );
    assert_eq!(h.m.state(0), Some(Ready));
    assert_eq!(h.m.next_retry_at(0), None);
    let (a2, e2) = h.cur(0);
    assert_eq!(a2, 2);
    assert!(e2 > e1);
    assert!(h.fx.contains(&Effect::PublishReady {
        node: 0,
        attempt: 2,
        dispatch_epoch: e2
    }));
    // The old attempt's results are stale now.
    assert_eq!(
        h.send(Event::Loaded {
            node: 0,
            attempt: a1,
            dispatch_epoch: e1
        }),
        Outcome::Ignored(IgnoreReason::Stale)
    );
    assert_eq!(
        h.send(Event::RetryDue {
            node: 0,
            attempt: 2
        }),
        Outcome::Ignored(IgnoreReason::Stale)
    );
    // After failed attempt 2 the ceiling is 2 s.
    let now = t0() + chrono::Duration::seconds(10);
    let (attempt, dispatch_epoch) = h.cur(0);
    let ev = Event::Failed {
        node: 0,
        attempt,
        dispatch_epoch,
        retryable: true,
        error: "x".into(),
        kind: FailureKind::Processor,
    };
    assert_eq!(h.send_at(ev, now, 0.75), Outcome::Applied);
    let due = now + chrono::Duration::milliseconds(1500);
    assert!(h.fx.contains(&Effect::ScheduleRetry {
        node: 0,
        attempt: 3,
        due_at: due
    }));
}

#[test]
fn exhausting_attempts_dead_letters_and_fails_descendants() {
    let mut h = H::run_all(&diamond(), 2);
    assert_eq!(h.failed(0, true), Outcome::Applied);
    assert_eq!(
        h.send(Event::RetryDue {
            node: 0,
            attempt: 2
        }),
        Outcome::Applied
    );
    assert_eq!(h.failed(0, true), Outcome::Applied);
    assert_eq!(
        h.states(),
        [Dead, UpstreamFailed, UpstreamFailed, UpstreamFailed]
    );
    assert!(h.fx.contains(&Effect::DeadLetter {
        node: 0,
        attempt: 2,
        attempts: 2,
        last_error: Some("boom 2".into()),
        reason: DeadReason::RetriesExhausted,
    }));
    assert_eq!(
        h.m.record(0).unwrap().dead_reason,
        Some(DeadReason::RetriesExhausted)
    );
    assert!(
        h.fx.iter()
            .all(|e| !matches!(e, Effect::ScheduleRetry { .. }))
    );
    assert_eq!(
        h.fx.last(),
        Some(&Effect::BatchFinished {
            state: BatchState::Failed
        })
    );
    assert_eq!(h.m.failed_ancestors(3), [0]);
    assert_eq!(h.m.counts().get(UpstreamFailed), 3);
}

#[test]
fn a_permanent_failure_is_dead_at_once() {
    let mut h = H::run_all(&[vec![], vec![0]], 5);
    assert_eq!(h.failed(0, false), Outcome::Applied);
    assert_eq!(h.states(), [Dead, UpstreamFailed]);
    assert_eq!(
        h.m.record(0).unwrap().dead_reason,
        Some(DeadReason::Permanent)
    );
    assert_eq!(h.m.attempts(0), Some(1));
}

#[test]
fn a_lost_attempt_counts_as_a_retryable_failure() {
    let mut h = H::run_all(&[vec![]], 2);
    h.started(0);
    let (attempt, dispatch_epoch) = h.cur(0);
    let lost = Event::AttemptLost {
        node: 0,
        attempt,
        dispatch_epoch,
        reason: LossReason::Timeout,
    };
    assert_eq!(h.send(lost.clone()), Outcome::Applied);
    assert_eq!(h.m.state(0), Some(RetryWait));
    assert!(h.m.last_error(0).unwrap().contains("timeout"));
    assert_eq!(
        h.m.record(0).unwrap().last_failure,
        Some(FailureKind::Timeout)
    );
    assert_eq!(h.send(lost), Outcome::Ignored(IgnoreReason::Duplicate));
    // The agent's result for the lost attempt arrives after all.
    assert_eq!(
        h.send(Event::Loaded {
            node: 0,
            attempt,
            dispatch_epoch
        }),
        Outcome::Ignored(IgnoreReason::Late)
    );
    h.send(Event::RetryDue {
        node: 0,
        attempt: 2,
    });
    let (attempt, dispatch_epoch) = h.cur(0);
    let lost = Event::AttemptLost {
        node: 0,
        attempt,
        dispatch_epoch,
        reason: LossReason::AgentLost,
    };
    assert_eq!(h.send(lost), Outcome::Applied);
    assert_eq!(h.m.state(0), Some(Dead));
    assert_eq!(
        h.m.record(0).unwrap().dead_reason,
        Some(DeadReason::RetriesExhausted)
    );
    assert_eq!(
        h.m.record(0).unwrap().last_failure,
        Some(FailureKind::AgentLost)
    );
}

#[test]
fn retry_now_releases_a_waiting_object_early() {
    let mut h = H::run_all(&[vec![], vec![0]], 3);
    assert_eq!(
        h.send(Event::RetryNow { node: 1 }),
        Outcome::Ignored(IgnoreReason::NotApplicable)
    );
    assert_eq!(
        h.send(Event::RetryNow { node: 7 }),
        Outcome::Ignored(IgnoreReason::UnknownNode)
    );
    h.failed(0, true);
    assert_eq!(h.send(Event::RetryNow { node: 0 }), Outcome::Applied);
    assert_eq!(h.m.state(0), Some(Ready));
    assert_eq!(h.cur(0).0, 2);
    // The scheduled retry fires later: it is stale.
    assert_eq!(
        h.send(Event::RetryDue {
            node: 0,
            attempt: 2
        }),
        Outcome::Ignored(IgnoreReason::Stale)
    );
}

#[test]
fn fresh_objects_are_skipped_and_satisfy_their_children() {
    let mut h = H::new(&diamond(), vec![FRESH, Run, FRESH, Run], 3);
    assert_eq!(h.states(), [SkippedFresh, Ready, SkippedFresh, Pending]);
    assert_eq!(h.released(), [1]);
    h.loaded(1);
    assert_eq!(h.released(), [3]);
    h.loaded(3);
    assert_eq!(h.m.batch_state(), BatchState::Succeeded);

    let all_fresh = H::new(&diamond(), vec![FRESH; 4], 3);
    assert_eq!(all_fresh.m.batch_state(), BatchState::Succeeded);
    assert_eq!(
        all_fresh.fx.last(),
        Some(&Effect::BatchFinished {
            state: BatchState::Succeeded
        })
    );
    let empty = H::new(&[], vec![], 3);
    assert_eq!(empty.m.batch_state(), BatchState::Succeeded);
}

#[test]
fn preflight_rejections_are_dead_with_reason_preflight_and_block_descendants() {
    let reject = |r: &str| PreflightRejected { reason: r.into() };
    // 0 → 1 → 2 → 3, 4 alone; 0 and 2 rejected.
    let parents = vec![vec![], vec![0], vec![1], vec![2], vec![]];
    let h = H::new(
        &parents,
        vec![reject("disabled"), Run, reject("suffix"), Run, Run],
        3,
    );
    assert_eq!(
        h.states(),
        [Dead, UpstreamFailed, Dead, UpstreamFailed, Ready]
    );
    for (node, reason) in [(0, "disabled"), (2, "suffix")] {
        assert_eq!(
            h.m.record(node).unwrap().last_failure,
            Some(FailureKind::Preflight)
        );
        assert!(h.fx.contains(&Effect::DeadLetter {
            node,
            attempt: 0,
            attempts: 0,
            last_error: Some(reason.into()),
            reason: DeadReason::Preflight,
        }));
    }
    assert_eq!(h.released(), [4]);
    assert_eq!(h.m.failed_ancestors(3), [0, 2]);
}

#[test]
fn replay_reruns_dead_objects_and_rearms_their_descendants() {
    let mut h = H::run_all(&diamond(), 1);
    h.loaded(0);
    h.failed(1, true);
    h.loaded(2);
    assert_eq!(h.states(), [Loaded, Dead, Loaded, UpstreamFailed]);
    assert_eq!(h.m.batch_state(), BatchState::Failed);

    assert_eq!(
        h.send(Event::Replay { nodes: vec![2] }),
        Outcome::Ignored(IgnoreReason::NotApplicable),
        "nothing dead in the list"
    );
    assert_eq!(
        h.send(Event::Replay { nodes: vec![1, 99] }),
        Outcome::Ignored(IgnoreReason::UnknownNode)
    );
    assert_eq!(
        h.send(Event::Replay { nodes: vec![1, 1] }),
        Outcome::Applied
    );
    assert_eq!(h.fx[0], Effect::BatchReopened);
    assert_eq!(h.states(), [Loaded, Ready, Loaded, Pending]);
    let rec = h.m.record(1).unwrap().clone();
    assert_eq!((rec.attempt, rec.run_start, rec.run_attempts()), (2, 1, 1));
    assert_eq!(rec.dead_reason, None);
    assert_eq!(h.m.batch_state(), BatchState::Running);
    h.loaded(1);
    assert_eq!(h.released(), [3]);
    h.loaded(3);
    assert_eq!(h.m.batch_state(), BatchState::Succeeded);
}

#[test]
fn a_node_with_two_dead_ancestors_waits_for_both_replays() {
    // 0 → 2, 1 → 2, 2 → 3
    let parents = vec![vec![], vec![], vec![0, 1], vec![2]];
    let mut h = H::run_all(&parents, 1);
    h.failed(0, false);
    h.failed(1, false);
    assert_eq!(h.states(), [Dead, Dead, UpstreamFailed, UpstreamFailed]);
    assert_eq!(h.m.failed_ancestors(3), [0, 1]);
    h.send(Event::Replay { nodes: vec![0] });
    assert_eq!(h.states(), [Ready, Dead, UpstreamFailed, UpstreamFailed]);
    h.send(Event::Replay { nodes: vec![1] });
    assert_eq!(h.states(), [Ready, Ready, Pending, Pending]);
}

#[test]
fn replaying_a_dead_node_below_another_dead_one_works_in_any_order() {
    // 0 → 1 → 2, 0 and 1 both rejected by preflight.
    let reject = || PreflightRejected {
        reason: "no".into(),
    };
    let parents = vec![vec![], vec![0], vec![1]];
    let mut h = H::new(&parents, vec![reject(), reject(), Run], 3);
    assert_eq!(h.states(), [Dead, Dead, UpstreamFailed]);
    h.send(Event::Replay { nodes: vec![1, 0] });
    assert_eq!(h.states(), [Ready, Pending, Pending]);

    let mut h = H::new(&parents, vec![reject(), reject(), Run], 3);
    h.send(Event::Replay { nodes: vec![1] });
    assert_eq!(
        h.states(),
        [Dead, UpstreamFailed, UpstreamFailed],
        "still blocked by 0"
    );
    assert_eq!(h.m.batch_state(), BatchState::Failed);
}

#[test]
fn coalesced_outcomes_load_or_kill_the_release_they_answer() {
    let mut h = H::run_all(&[vec![], vec![0], vec![]], 3);
    let (attempt, dispatch_epoch) = h.cur(0);
    let ok = Event::CoalescedOutcome {
        node: 0,
        attempt,
        dispatch_epoch,
        loaded: true,
        error: None,
    };
    assert_eq!(h.send(ok.clone()), Outcome::Applied);
    assert_eq!(h.m.state(0), Some(Loaded));
    assert_eq!(h.released(), [1]);
    assert_eq!(h.send(ok), Outcome::Ignored(IgnoreReason::Duplicate));

    let (attempt, dispatch_epoch) = h.cur(2);
    let stale = Event::CoalescedOutcome {
        node: 2,
        attempt,
        dispatch_epoch: dispatch_epoch + 7,
        loaded: false,
        error: None,
    };
    assert_eq!(h.send(stale), Outcome::Ignored(IgnoreReason::Stale));
    let failed = Event::CoalescedOutcome {
        node: 2,
        attempt,
        dispatch_epoch,
        loaded: false,
        error: Some("batch b-17: boom".into()),
    };
    assert_eq!(h.send(failed), Outcome::Applied);
    assert_eq!(h.m.state(2), Some(Dead));
    assert_eq!(
        h.m.record(2).unwrap().dead_reason,
        Some(DeadReason::CoalescedFailed)
    );
    assert_eq!(h.m.last_error(2), Some("batch b-17: boom"));
}

#[test]
fn cancel_stops_every_active_object_and_is_final() {
    // 0 running, 1 waiting for a retry, 2 pending behind 0, 3 loaded, 4 dead
    let parents = vec![vec![], vec![], vec![0], vec![], vec![]];
    let mut h = H::run_all(&parents, 3);
    h.started(0);
    h.failed(1, true);
    h.loaded(3);
    h.failed(4, false);
    assert_eq!(h.send(Event::Cancel), Outcome::Applied);
    assert_eq!(h.states(), [Cancelled, Cancelled, Cancelled, Loaded, Dead]);
    assert_eq!(h.m.next_retry_at(1), None);
    assert_eq!(
        h.fx.last(),
        Some(&Effect::BatchFinished {
            state: BatchState::Cancelled
        })
    );
    assert_eq!(h.m.batch_state(), BatchState::Cancelled);
    assert_eq!(
        h.send(Event::Cancel),
        Outcome::Ignored(IgnoreReason::NotApplicable)
    );
    assert_eq!(h.loaded(0), Outcome::Ignored(IgnoreReason::Late));
    assert_eq!(
        h.send(Event::RetryDue {
            node: 1,
            attempt: 2
        }),
        Outcome::Ignored(IgnoreReason::Late)
    );
    assert_eq!(
        h.send(Event::Replay { nodes: vec![4] }),
        Outcome::Ignored(IgnoreReason::NotApplicable)
    );

    let mut done = H::run_all(&[vec![]], 3);
    done.loaded(0);
    assert_eq!(
        done.send(Event::Cancel),
        Outcome::Ignored(IgnoreReason::NotApplicable)
    );
}

#[test]
fn restore_rebuilds_the_same_machine_and_resume_says_what_to_redo() {
    // 0 → 2, 1 → 2; 3 alone; 4 pending behind 1.
    let parents = vec![vec![], vec![], vec![0, 1], vec![], vec![1]];
    let mut h = H::run_all(&parents, 3);
    h.loaded(0); // 0 loaded
    h.started(1); // 1 running
    h.failed(3, true); // 3 waiting for a retry
    let records: Vec<NodeRecord> = h.m.records().to_vec();
    let restored = BatchMachine::restore(h.m.dag().clone(), records.clone(), policy(3)).unwrap();
    assert_eq!(restored, h.m);

    let mut m = restored;
    let mut fx = Vec::new();
    m.resume(t0(), &mut fx);
    let due = h.m.next_retry_at(3).unwrap();
    assert_eq!(
        fx,
        vec![Effect::ScheduleRetry {
            node: 3,
            attempt: 2,
            due_at: due
        }]
    );
    assert_eq!(m, h.m, "resume changes nothing when nothing was lost");

    // A release lost in a crash: 2's parents are loaded but 2 was persisted PENDING, and 3's
    // retry was persisted READY but maybe never published.
    h.loaded(1);
    h.send(Event::RetryDue {
        node: 3,
        attempt: 2,
    });
    let mut records = h.m.records().to_vec();
    records[2] = NodeRecord {
        state: Pending,
        attempt: 0,
        dispatch_epoch: 0,
        ..records[2].clone()
    };
    records[4] = NodeRecord {
        state: Pending,
        attempt: 0,
        dispatch_epoch: 0,
        ..records[4].clone()
    };
    let mut m = BatchMachine::restore(h.m.dag().clone(), records, policy(3)).unwrap();
    let mut fx = Vec::new();
    m.resume(t0(), &mut fx);
    let published: Vec<(u32, u32)> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::PublishReady { node, attempt, .. } => Some((*node, *attempt)),
            _ => None,
        })
        .collect();
    assert_eq!(published, [(2, 1), (3, 2), (4, 1)]);
    assert_eq!(
        m.record(3).unwrap().dispatch_epoch,
        h.m.record(3).unwrap().dispatch_epoch
    );
    let persisted_max = h.m.record(3).unwrap().dispatch_epoch;
    assert!(m.record(2).unwrap().dispatch_epoch > persisted_max);
    assert!(m.record(4).unwrap().dispatch_epoch > m.record(2).unwrap().dispatch_epoch);
}

#[test]
fn restore_rejects_records_that_contradict_the_graph() {
    let parents = vec![vec![], vec![0]];
    let dag = Dag::from_parents(&parents);
    let pending = NodeRecord {
        state: Pending,
        attempt: 0,
        run_start: 0,
        dispatch_epoch: 0,
        last_error: None,
        last_failure: None,
        dead_reason: None,
        retry_due: None,
    };
    let running = NodeRecord {
        state: Running,
        attempt: 1,
        dispatch_epoch: 1,
        ..pending.clone()
    };
    let err = BatchMachine::restore(dag.clone(), vec![pending.clone(), running], policy(3));
    assert!(
        matches!(
            err,
            Err(MachineError::Inconsistent {
                node: 1,
                state: Running,
                ..
            })
        ),
        "{err:?}"
    );
    let uf = NodeRecord {
        state: UpstreamFailed,
        ..pending.clone()
    };
    let err = BatchMachine::restore(dag.clone(), vec![pending.clone(), uf], policy(3));
    assert!(
        matches!(err, Err(MachineError::Inconsistent { node: 1, .. })),
        "{err:?}"
    );
    let err = BatchMachine::restore(dag, vec![pending], policy(3));
    assert!(matches!(
        err,
        Err(MachineError::LengthMismatch { dag: 2, given: 1 })
    ));
}

#[test]
fn a_cancel_persisted_in_part_is_completed_on_resume() {
    let parents = vec![vec![], vec![]];
    let mut h = H::run_all(&parents, 3);
    h.send(Event::Cancel);
    let mut records = h.m.records().to_vec();
    records[1].state = Ready; // its CANCELLED was not persisted
    let mut m = BatchMachine::restore(h.m.dag().clone(), records, policy(3)).unwrap();
    assert_eq!(m.batch_state(), BatchState::Cancelled);
    let mut fx = Vec::new();
    m.resume(t0(), &mut fx);
    assert_eq!(m.state(1), Some(Cancelled));
    assert_eq!(
        fx.last(),
        Some(&Effect::BatchFinished {
            state: BatchState::Cancelled
        })
    );
}

#[test]
fn construction_errors_are_named() {
    let mut fx = Vec::new();
    let err = BatchMachine::start(Dag::from_parents(&[vec![]]), vec![], policy(3), &mut fx);
    assert!(matches!(
        err,
        Err(MachineError::LengthMismatch { dag: 1, given: 0 })
    ));
    let bad = RetryPolicy {
        initial_backoff: Duration::from_secs(9),
        max_backoff: Duration::ZERO,
        ..policy(3)
    };
    let err = BatchMachine::start(Dag::from_parents(&[vec![]]), vec![Run], bad, &mut fx);
    assert!(matches!(err, Err(MachineError::Policy(_))));
    assert!(fx.is_empty());
}

#[test]
fn each_node_retries_by_its_own_policy_and_keeps_it_across_a_restore() {
    // Two roots: node 0 may run once (its zone never retries), node 1 three times.
    let policies = NodePolicies::per_node(vec![policy(1), policy(3)], vec![0, 1]).unwrap();
    let mut fx = Vec::new();
    let m = BatchMachine::start(
        Dag::from_parents(&[vec![], vec![]]),
        vec![Run, Run],
        policies.clone(),
        &mut fx,
    )
    .unwrap();
    let mut h = H { m, fx };
    assert_eq!(h.m.policy(0).max_attempts, 1);
    assert_eq!(h.m.policy(1).max_attempts, 3);
    assert_eq!(h.failed(0, true), Outcome::Applied);
    assert_eq!(h.m.state(0), Some(Dead));
    assert_eq!(h.failed(1, true), Outcome::Applied);
    assert_eq!(h.m.state(1), Some(RetryWait));
    let restored =
        BatchMachine::restore(h.m.dag().clone(), h.m.records().to_vec(), policies).unwrap();
    assert_eq!(restored.policies(), h.m.policies());
    // A policy table that does not cover the graph is refused.
    let short = NodePolicies::per_node(vec![policy(1), policy(3)], vec![0, 1, 1]).unwrap();
    assert!(matches!(
        BatchMachine::restore(h.m.dag().clone(), h.m.records().to_vec(), short),
        Err(MachineError::PoliciesMismatch { dag: 2, given: 3 })
    ));
}
