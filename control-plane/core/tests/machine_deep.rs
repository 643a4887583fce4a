//! Deep graphs: failure and replay propagation down a 100,000-deep chain must be iterative. The
//! tests run on a thread with a 256 KiB stack, far too small for one frame per level.

use chrono::{TimeZone, Utc};
use strata_core::Dag;
use strata_core::machine::{
    BatchMachine, BatchState, Effect, Event, FailureKind, InitialDisposition, NodeState, Outcome,
};
use strata_core::retry::RetryPolicy;

const DEPTH: u32 = 100_000;

fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

fn chain(depth: u32) -> Dag {
    let parents: Vec<Vec<u32>> = (0..depth)
        .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
        .collect();
    Dag::from_parents(&parents)
}

fn transitions_to(fx: &[Effect], to: NodeState) -> usize {
    fx.iter()
        .filter(|e| matches!(e, Effect::Transition { to: t, .. } if *t == to))
        .count()
}

#[test]
fn failing_the_root_of_a_deep_chain_fails_every_descendant_and_replay_rearms_them() {
    on_small_stack(|| {
        let now = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
        let mut fx = Vec::new();
        let init = vec![InitialDisposition::Run; DEPTH as usize];
        let mut m =
            BatchMachine::start(chain(DEPTH), init, RetryPolicy::default(), &mut fx).unwrap();
        assert_eq!(m.state(0), Some(NodeState::Ready));
        assert_eq!(m.counts().get(NodeState::Pending), DEPTH - 1);

        fx.clear();
        let failed = Event::Failed {
            node: 0,
            attempt: 1,
            dispatch_epoch: 1,
            retryable: false,
            error: "schema mismatch".into(),
            kind: FailureKind::Processor,
        };
        assert_eq!(m.handle(failed, now, 0.0, &mut fx), Outcome::Applied);
        assert_eq!(m.state(0), Some(NodeState::Dead));
        assert_eq!(m.counts().get(NodeState::UpstreamFailed), DEPTH - 1);
        assert_eq!(
            transitions_to(&fx, NodeState::UpstreamFailed),
            DEPTH as usize - 1
        );
        assert_eq!(m.state(DEPTH - 1), Some(NodeState::UpstreamFailed));
        assert_eq!(m.failed_ancestors(DEPTH - 1), [0]);
        assert_eq!(m.batch_state(), BatchState::Failed);

        fx.clear();
        let replay = Event::Replay { nodes: vec![0] };
        assert_eq!(m.handle(replay, now, 0.0, &mut fx), Outcome::Applied);
        assert_eq!(m.state(0), Some(NodeState::Ready));
        assert_eq!(m.counts().get(NodeState::Pending), DEPTH - 1);
        assert_eq!(transitions_to(&fx, NodeState::Pending), DEPTH as usize - 1);

        // Loading down the chain releases one node per result.
        for i in 0..DEPTH {
            let r = m.record(i).unwrap().clone();
            fx.clear();
            let loaded = Event::Loaded {
                node: i,
                attempt: r.attempt,
                dispatch_epoch: r.dispatch_epoch,
            };
            assert_eq!(m.handle(loaded, now, 0.0, &mut fx), Outcome::Applied);
            if i + 1 < DEPTH {
                assert_eq!(m.state(i + 1), Some(NodeState::Ready));
            }
        }
        assert_eq!(m.batch_state(), BatchState::Succeeded);
        assert_eq!(m.counts().get(NodeState::Loaded), DEPTH);

        // The machine (and its graph) are dropped on the small stack too.
        drop(m);
    });
}

#[test]
fn preflight_rejection_of_a_deep_chain_root_and_restore_work_on_a_small_stack() {
    on_small_stack(|| {
        let mut fx = Vec::new();
        let mut init = vec![InitialDisposition::Run; DEPTH as usize];
        init[0] = InitialDisposition::PreflightRejected {
            reason: "disabled".into(),
        };
        let m = BatchMachine::start(chain(DEPTH), init, RetryPolicy::default(), &mut fx).unwrap();
        assert_eq!(m.counts().get(NodeState::UpstreamFailed), DEPTH - 1);
        assert_eq!(m.batch_state(), BatchState::Failed);
        let restored =
            BatchMachine::restore(m.dag().clone(), m.records().to_vec(), m.policies().clone())
                .unwrap();
        assert_eq!(restored, m);
    });
}
