//! Agents: which attempts an agent held, declared lost when its lease ends or it deregisters.

use super::state::DriverState;
use strata_core::machine::{Event, LossReason, NodeState};
use strata_core::model::NodeIx;

/// The events that declare lost (reason `agent_lost`) the attempts agent `agent_id` held: those
/// it last reported, and every RUNNING attempt it was the last to report on. The machine ignores
/// any that moved on meanwhile.
pub fn held_attempts_lost(
    state: &DriverState,
    agent_id: &str,
    reported: &[strata_core::agents::HeldAttempt],
) -> Vec<(String, Event)> {
    held_attempts(state, agent_id, reported, LossReason::AgentLost)
}

/// Like [`held_attempts_lost`], with the loss `reason`.
pub fn held_attempts(
    state: &DriverState,
    agent_id: &str,
    reported: &[strata_core::agents::HeldAttempt],
    reason: LossReason,
) -> Vec<(String, Event)> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let mut add = |batch_id: &str, node: NodeIx, attempt: u32, dispatch_epoch: u64| {
        if seen.insert((batch_id.to_owned(), node, attempt)) {
            out.push((
                batch_id.to_owned(),
                Event::AttemptLost {
                    node,
                    attempt,
                    dispatch_epoch,
                    reason,
                },
            ));
        }
    };
    for h in reported {
        if let Some(node) = state.node_of(&h.batch_id, &h.object_id) {
            add(&h.batch_id, node, h.attempt, h.dispatch_epoch);
        }
    }
    for rt in state.batches.values() {
        if rt.machine.is_terminal() {
            continue;
        }
        for (node, agent) in &rt.last_agent {
            if agent != agent_id {
                continue;
            }
            if let Some(r) = rt.machine.record(*node)
                && r.state == NodeState::Running
            {
                add(&rt.batch_id, *node, r.attempt, r.dispatch_epoch);
            }
        }
    }
    out
}
