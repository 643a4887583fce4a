//! A stored batch made a runtime again: planned again from its stored objects (planning is
//! deterministic), checked to put the same object at every node as the plan its records were
//! stored under, its machine restored from the records. Restore uses it for the batches a
//! restarted driver resumes; reads use it for batches the driver no longer holds (finished and
//! evicted), with the trails stored when they finished as their history.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use strata_core::Zone;
use strata_core::machine::{BatchMachine, DeadReason, InitialDisposition, NodeRecord, NodeState};
use strata_core::model::NodeIx;
use strata_core::submission::{PlanContext, PreparedBatch, layout_hash, prepare};

use super::state::{BatchRuntime, TransitionRecord};
use crate::ports::{NodeTrail, RestoredBatch};

/// Why a stored batch cannot be made a runtime again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RebuildError {
    /// Its objects no longer plan.
    #[error("its objects no longer plan: {0}")]
    NoPlan(String),
    /// It plans to another node layout than its records were stored under.
    #[error(
        "it plans to another node layout ({planned}) than its records were stored under \
         ({stored}): a planner change? its records would land on the wrong objects"
    )]
    LayoutChanged {
        /// The stored layout digest.
        stored: String,
        /// The new plan's.
        planned: String,
    },
    /// The state machine rejects its records.
    #[error("its records are inconsistent: {0}")]
    Inconsistent(String),
}

impl RebuildError {
    /// The metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            RebuildError::NoPlan(_) => "no_plan",
            RebuildError::LayoutChanged { .. } => "layout_changed",
            RebuildError::Inconsistent(_) => "inconsistent",
        }
    }
}

/// `restored` planned again (batch id and content hash as stored) with its machine restored
/// from its records.
pub(super) fn replan(
    restored: RestoredBatch,
    zone_durations_ms: &BTreeMap<Zone, u64>,
) -> Result<(PreparedBatch, BatchMachine), RebuildError> {
    let b = restored.batch;
    let created_at = DateTime::from_timestamp_millis(b.created_at_ms).unwrap_or_else(Utc::now);
    // The initial dispositions are in the stored records already (and taken from them below):
    // planning needs no preflight rules.
    let no_rules = BTreeMap::new();
    let ctx = PlanContext::replanning(zone_durations_ms, &no_rules, created_at);
    let mut prepared = prepare(&b.idempotency_key, restored.objects, b.options, &ctx)
        .map_err(|e| RebuildError::NoPlan(e.to_string()))?;
    let planned = layout_hash(&prepared.plan, &prepared.objects);
    if !b.layout_hash.is_empty() && planned != b.layout_hash {
        return Err(RebuildError::LayoutChanged {
            stored: b.layout_hash,
            planned,
        });
    }
    let n = prepared.plan.len();
    let mut records: Vec<NodeRecord> = (0..n).map(|_| NodeRecord::pending()).collect();
    for (node, r) in restored.nodes {
        if let Some(slot) = records.get_mut(node as usize) {
            *slot = r;
        }
    }
    prepared.dispositions = records.iter().map(disposition_of).collect();
    let policies = prepared
        .options
        .node_policies(&prepared.objects, &prepared.plan);
    let mut machine = BatchMachine::restore(prepared.plan.dag.clone(), records, policies)
        .map_err(|e| RebuildError::Inconsistent(e.to_string()))?;
    machine.raise_epoch_floor(restored.head.next_epoch);
    prepared.batch_id = b.batch_id;
    prepared.content_hash = b.content_hash;
    Ok((prepared, machine))
}

/// A stored batch as a runtime to answer reads from (never driven): its records, and its
/// trails as each node's history and last agent.
pub fn for_reads(
    restored: RestoredBatch,
    trails: Vec<(u32, NodeTrail)>,
    zone_durations_ms: &BTreeMap<Zone, u64>,
) -> Result<BatchRuntime, RebuildError> {
    let finished_at = restored
        .head
        .finished_at_ms
        .and_then(DateTime::from_timestamp_millis);
    let (prepared, machine) = replan(restored, zone_durations_ms)?;
    let mut rt = BatchRuntime::new(prepared, machine, finished_at, 1);
    apply_trails(&mut rt, trails);
    Ok(rt)
}

/// Stored trails as the batch's history and last agents.
pub(super) fn apply_trails(rt: &mut BatchRuntime, trails: Vec<(u32, NodeTrail)>) {
    let n = rt.machine.records().len();
    for (node, trail) in trails {
        if node as usize >= n {
            continue;
        }
        let node = node as NodeIx;
        let transitions: Vec<TransitionRecord> = trail
            .transitions
            .into_iter()
            .filter_map(|t| {
                Some(TransitionRecord {
                    from: t.from,
                    to: t.to,
                    attempt: t.attempt,
                    at: DateTime::from_timestamp_millis(t.at_ms)?,
                })
            })
            .collect();
        if !transitions.is_empty() {
            rt.history.insert(node, transitions);
        }
        if let Some(agent) = trail.agent {
            rt.last_agent.insert(node, agent);
        }
    }
}

/// The initial disposition a restored record shows: skipped as fresh, rejected by preflight,
/// or run.
pub(super) fn disposition_of(r: &NodeRecord) -> InitialDisposition {
    match (r.state, r.dead_reason) {
        (NodeState::SkippedFresh, _) => InitialDisposition::SkippedFresh,
        (NodeState::Dead, Some(DeadReason::Preflight)) => InitialDisposition::PreflightRejected {
            reason: r.last_error.clone().unwrap_or_default(),
        },
        _ => InitialDisposition::Run,
    }
}
