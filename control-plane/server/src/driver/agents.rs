//! Agents: registration, heartbeats and deregistration with their rules (a heartbeat is told
//! which attempts to abandon; a deregistered or expired agent's attempts are lost), applied to
//! the registry the driver owns.

use chrono::{DateTime, TimeDelta, Utc};
use strata_core::Zone;
use strata_core::agents::{Agent, HeldAttempt, LeaseError, LeaseKey, Registration};
use strata_core::machine::{Event, LossReason, NodeState};
use strata_core::model::NodeIx;
use tracing::warn;

use super::state::DriverState;

/// What a heartbeat renewed, and what the agent should stop.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatReply {
    /// When the renewed lease ends without another heartbeat.
    pub lease_expires_at: DateTime<Utc>,
    /// Attempts the agent reported that the control plane no longer waits for (they moved on,
    /// or their batch or object is not driven here): the agent abandons them.
    pub abandon: Vec<HeldAttempt>,
    /// The topics' generation (agents subscribe again when it changes).
    pub topics_generation: u64,
    /// The lease's new result signing key, when this renewal rotated it.
    pub result_key: Option<LeaseKey>,
}

/// What a heartbeat says besides whose lease it renews.
#[derive(Debug, Clone, PartialEq)]
pub struct Renewal {
    /// The attempts the agent holds.
    pub held: Vec<HeldAttempt>,
    /// Whether it is draining.
    pub draining: bool,
    /// Whether the reply may carry a new result key (it travels over TLS, or nobody is
    /// authenticated).
    pub rotate_keys: bool,
}

/// A lease granted at registration, with what the agent needs besides it.
#[derive(Debug, Clone, PartialEq)]
pub struct Granted {
    /// The agent and its lease.
    pub agent: Agent,
    /// The topics' generation.
    pub topics_generation: u64,
    /// The public key Ready records are signed with.
    pub ready_verify_key: [u8; strata_proto::signing::KEY_LEN],
}

impl DriverState {
    /// Registers an agent for `zone`: a new id and lease, unless its principal holds
    /// `max_leases` live ones already.
    pub(super) fn register_agent(
        &mut self,
        zone: Zone,
        registration: Registration,
        nonce: u64,
        max_leases: Option<usize>,
        now: DateTime<Utc>,
    ) -> Result<Granted, LeaseError> {
        if let Some(max) = max_leases
            && self.agents.live_leases_of(&registration.owner) >= max
        {
            return Err(LeaseError::TooManyLeases {
                principal: registration.owner,
                max,
            });
        }
        let agent = self.agents.register(zone, registration, nonce, now).clone();
        Ok(Granted {
            agent,
            topics_generation: self.topics_generation,
            ready_verify_key: self
                .ready_signer
                .as_ref()
                .expect("the Ready signing key is loaded at start-up")
                .verify_key(),
        })
    }

    /// Renews agent `agent_id`'s lease `epoch` for `principal` (the one that registered it),
    /// recording the attempts it holds; with `rotate_keys`, a lease whose result key is older
    /// than the rotation interval gets a new one.
    pub(super) fn heartbeat(
        &mut self,
        agent_id: &str,
        epoch: u64,
        principal: &str,
        Renewal {
            held,
            draining,
            rotate_keys,
        }: Renewal,
        now: DateTime<Utc>,
    ) -> Result<HeartbeatReply, LeaseError> {
        self.check_holder(agent_id, principal)?;
        let agent = self
            .agents
            .heartbeat(agent_id, epoch, held.clone(), draining, now)?;
        let lease_expires_at = agent.expires_at;
        let rotation_due = agent.result_key.is_some()
            && TimeDelta::from_std(self.result_key_rotation)
                .ok()
                .and_then(|r| agent.result_key_since().checked_add_signed(r))
                .is_some_and(|due| due <= now);
        let result_key = if rotate_keys && rotation_due {
            match crate::keys::new_lease_key() {
                Ok(key) => self
                    .agents
                    .rotate_result_key(agent_id, epoch, key.clone(), now)
                    .then_some(key),
                Err(e) => {
                    warn!(agent_id, error = %e, "result key not rotated: no random bytes");
                    None
                }
            }
        } else {
            None
        };
        let abandon = held.into_iter().filter(|a| !self.awaits(a)).collect();
        Ok(HeartbeatReply {
            lease_expires_at,
            abandon,
            topics_generation: self.topics_generation,
            result_key,
        })
    }

    /// Ends agent `agent_id`'s lease `epoch`; returns the events that hand back (reason
    /// `drained`) the attempts it held.
    pub(super) fn deregister(
        &mut self,
        agent_id: &str,
        epoch: u64,
        principal: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, Event)>, LeaseError> {
        self.check_holder(agent_id, principal)?;
        let reported = self.agents.deregister(agent_id, epoch, now)?;
        Ok(held_attempts(
            self,
            agent_id,
            &reported,
            LossReason::Drained,
        ))
    }

    /// Refuses a lease operation by a principal other than the one that registered the agent.
    fn check_holder(&self, agent_id: &str, principal: &str) -> Result<(), LeaseError> {
        match self.agents.get(agent_id) {
            Some(a) if a.owner != principal => Err(LeaseError::NotHolder {
                agent: agent_id.to_owned(),
                principal: principal.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Whether the control plane still waits for this attempt: its object is READY or RUNNING
    /// with the same attempt and dispatch epoch.
    fn awaits(&self, a: &HeldAttempt) -> bool {
        let current = self
            .node_of(&a.batch_id, &a.object_id)
            .and_then(|n| self.batches.get(&a.batch_id)?.machine.record(n));
        current.is_some_and(|r| {
            matches!(r.state, NodeState::Ready | NodeState::Running)
                && r.attempt == a.attempt
                && r.dispatch_epoch == a.dispatch_epoch
        })
    }
}

/// The events that declare lost (reason `agent_lost`) the attempts agent `agent_id` held: those
/// it last reported and holds ([`holds`]), and every RUNNING attempt it was the last to report
/// on. The machine ignores any that moved on meanwhile.
pub(super) fn held_attempts_lost(
    state: &DriverState,
    agent_id: &str,
    reported: &[HeldAttempt],
) -> Vec<(String, Event)> {
    held_attempts(state, agent_id, reported, LossReason::AgentLost)
}

/// Whether agent `agent_id` of `zone` may hand back the current attempt of `node`: the object
/// is of its zone and either READY (no agent has started this attempt yet) or RUNNING with this
/// agent the last to report on it. An agent reporting another agent's RUNNING attempt (to have
/// it retried, burning an attempt) is not believed.
fn holds(state: &DriverState, agent_id: &str, zone: &Zone, batch_id: &str, node: NodeIx) -> bool {
    let Some(rt) = state.batches.get(batch_id) else {
        return false;
    };
    if &rt.object(node).zone != zone {
        return false;
    }
    match rt.machine.record(node).map(|r| r.state) {
        Some(NodeState::Ready) => true,
        Some(NodeState::Running) => rt.last_agent.get(&node).is_some_and(|a| a == agent_id),
        _ => false,
    }
}

/// Like [`held_attempts_lost`], with the loss `reason`.
pub(super) fn held_attempts(
    state: &DriverState,
    agent_id: &str,
    reported: &[HeldAttempt],
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
    let zone = state.agents.get(agent_id).map(|a| a.zone.clone());
    for h in reported {
        if let Some(node) = state.node_of(&h.batch_id, &h.object_id)
            && zone
                .as_ref()
                .is_some_and(|z| holds(state, agent_id, z, &h.batch_id, node))
        {
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
