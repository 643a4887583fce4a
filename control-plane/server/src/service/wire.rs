//! The replies of the gRPC service, built from the driver's state or from a plan: summaries,
//! planned objects with their dispositions, batches with per-zone counters, object statuses with
//! their blocked reasons, retry state and attempt records, and the paging tokens.
//!
//! Pure functions over borrowed state: the service calls them inside [`Handle::read`] closures
//! (so they must stay cheap: linear at worst) or on a blocking thread for a re-planned batch.
//!
//! [`Handle::read`]: crate::driver::Handle::read

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;
use strata_core::machine::{
    BatchState, DeadReason, FailureKind, InitialDisposition, NodeRecord, NodeState,
};
use strata_core::model::NodeIx;
use strata_core::planner::Plan;
use strata_core::retry::RetryPolicy;
use strata_core::submission::caller_idempotency_key;
use strata_core::{ObjectDef, ObjectId, Zone};
use strata_proto::v1 as pb;

use crate::convert;
use crate::driver::BatchRuntime;
use crate::error::ServiceError;
use crate::ports::{BatchHead, StoredBatch};
use strata_core::submission::BatchOptions;

/// What the plan does with one planned node (excluded objects are not nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Disp<'a> {
    /// Runs when its parents are satisfied.
    Run,
    /// Fresh: `SKIPPED_FRESH` at once.
    Fresh,
    /// Rejected by preflight, with the rule's message.
    Preflight(&'a str),
    /// Below a preflight-rejected object (the node named): becomes `UPSTREAM_FAILED`.
    Upstream(NodeIx),
    /// In flight in another batch (named): would coalesce onto its attempt.
    Coalesced(&'a str),
}

/// The disposition of every planned node, in node order. Mirrors `BatchMachine::start`: preflight
/// rejections win over freshness, and only nodes that would run become upstream-rejected (a
/// fresh node below a rejected one stays fresh). `in_flight` maps object ids in flight in other
/// batches to those batches (empty = no coalescing).
pub(crate) fn dispositions<'a>(
    objects: &[ObjectDef],
    plan: &Plan,
    init: &'a [InitialDisposition],
    in_flight: &'a FxHashMap<ObjectId, String>,
) -> Vec<Disp<'a>> {
    let mut out: Vec<Disp<'a>> = Vec::with_capacity(plan.len());
    for node in 0..plan.len() as NodeIx {
        let d = match init.get(node as usize) {
            Some(InitialDisposition::PreflightRejected { reason }) => Disp::Preflight(reason),
            Some(InitialDisposition::SkippedFresh) => Disp::Fresh,
            _ => {
                let culprit = plan
                    .dag
                    .parents(node)
                    .iter()
                    .find_map(|&p| match out[p as usize] {
                        Disp::Preflight(_) => Some(p),
                        Disp::Upstream(root) => Some(root),
                        _ => None,
                    });
                match culprit {
                    Some(root) => Disp::Upstream(root),
                    None if in_flight.is_empty() => Disp::Run,
                    None => match in_flight.get(&plan.object(objects, node).id) {
                        Some(batch) => Disp::Coalesced(batch),
                        None => Disp::Run,
                    },
                }
            }
        };
        out.push(d);
    }
    out
}

/// How many planned objects are fresh, would coalesce, and are rejected by preflight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DispCounts {
    fresh: u32,
    coalesced: u32,
    rejected: u32,
}

impl DispCounts {
    /// The counts of computed dispositions.
    pub(crate) fn of(disps: &[Disp<'_>]) -> Self {
        let mut c = Self::default();
        for d in disps {
            match d {
                Disp::Fresh => c.fresh += 1,
                Disp::Coalesced(_) => c.coalesced += 1,
                Disp::Preflight(_) => c.rejected += 1,
                Disp::Run | Disp::Upstream(_) => {}
            }
        }
        c
    }

    /// The counts of a batch's initial dispositions (it coalesces nothing), without building
    /// the per-node dispositions.
    pub(crate) fn of_initial(init: &[InitialDisposition]) -> Self {
        let mut c = Self::default();
        for d in init {
            match d {
                InitialDisposition::SkippedFresh => c.fresh += 1,
                InitialDisposition::PreflightRejected { .. } => c.rejected += 1,
                InitialDisposition::Run => {}
            }
        }
        c
    }
}

/// The summary of a plan.
pub(crate) fn plan_summary(
    objects: &[ObjectDef],
    plan: &Plan,
    counts: DispCounts,
) -> pb::PlanSummary {
    let DispCounts {
        fresh,
        coalesced,
        rejected,
    } = counts;
    pb::PlanSummary {
        object_count: plan.len() as u32,
        excluded_count: plan.excluded.len() as u32,
        wave_count: plan.wave_count,
        objects_per_zone: plan
            .zone_counts
            .iter()
            .map(|(z, &n)| (z.to_string(), n))
            .collect(),
        critical_path: plan
            .critical_path_ids(objects)
            .iter()
            .map(ToString::to_string)
            .collect(),
        critical_path_cost: Some(convert::duration(Duration::from_millis(
            plan.critical_path_cost_ms,
        ))),
        shared_ancestor_count: plan.shared_ancestors,
        plan_hash: plan.plan_hash.clone(),
        skipped_fresh_count: fresh,
        coalesced_count: coalesced,
        preflight_rejected_count: rejected,
        external_parents: plan
            .external_parents
            .iter()
            .map(ToString::to_string)
            .collect(),
        target_count: plan.targets.len() as u32,
    }
}

/// Planned objects `[from, to)` of the listing "planned nodes in topological order, then (with
/// `include_excluded`) the excluded objects".
pub(crate) fn planned_objects(
    objects: &[ObjectDef],
    plan: &Plan,
    disps: &[Disp<'_>],
    from: usize,
    to: usize,
) -> Vec<pb::PlannedObject> {
    let n = plan.len();
    let mut out = Vec::with_capacity(to.saturating_sub(from));
    let mut is_target = vec![false; n];
    for &t in &plan.targets {
        is_target[t as usize] = true;
    }
    for i in from..to {
        if i < n {
            let node = i as NodeIx;
            let o = plan.object(objects, node);
            let (disposition, reason, onto) = match &disps[i] {
                Disp::Run => (pb::Disposition::Run, String::new(), String::new()),
                Disp::Fresh => (
                    pb::Disposition::SkippedFresh,
                    fresh_reason(o),
                    String::new(),
                ),
                Disp::Preflight(r) => (
                    pb::Disposition::PreflightRejected,
                    (*r).to_owned(),
                    String::new(),
                ),
                Disp::Upstream(root) => (
                    pb::Disposition::UpstreamRejected,
                    format!(
                        "ancestor {} is rejected by preflight",
                        plan.object(objects, *root).id
                    ),
                    String::new(),
                ),
                Disp::Coalesced(b) => (
                    pb::Disposition::Coalesced,
                    format!("already in flight in batch {b}"),
                    (*b).to_owned(),
                ),
            };
            out.push(pb::PlannedObject {
                object_id: o.id.to_string(),
                zone: o.zone.to_string(),
                wave: plan.waves[i],
                parents: o.parents.iter().map(ToString::to_string).collect(),
                disposition: disposition as i32,
                reason,
                coalesced_onto_batch_id: onto,
                target: is_target[i],
            });
        } else if let Some(&ix) = plan.excluded.get(i - n) {
            let o = &objects[ix as usize];
            out.push(pb::PlannedObject {
                object_id: o.id.to_string(),
                zone: o.zone.to_string(),
                wave: 0,
                parents: o.parents.iter().map(ToString::to_string).collect(),
                disposition: pb::Disposition::Excluded as i32,
                reason: "not an ancestor of any target".into(),
                coalesced_onto_batch_id: String::new(),
                target: false,
            });
        }
    }
    out
}

fn fresh_reason(o: &ObjectDef) -> String {
    match (&o.last_loaded_at, &o.frequency) {
        (Some(at), Some(f)) => format!(
            "loaded {}, after the last tick of {f:?}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        _ => "fresh".into(),
    }
}

/// The options a batch was submitted with, as the client sees them (the effective retry policy).
pub(crate) fn submit_options(o: &BatchOptions) -> pb::SubmitOptions {
    pb::SubmitOptions {
        targets: o.targets.iter().map(ToString::to_string).collect(),
        all: o.all,
        force: o.force,
        max_attempts: o.retry.max_attempts,
        retry_policy: Some(retry_policy(&o.retry)),
        allow_external_parents: o.allow_external_parents,
        labels: o
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn retry_policy(p: &RetryPolicy) -> pb::RetryPolicy {
    pb::RetryPolicy {
        max_attempts: p.max_attempts,
        initial_backoff: Some(convert::duration(p.initial_backoff)),
        multiplier: p.multiplier,
        max_backoff: Some(convert::duration(p.max_backoff)),
    }
}

/// Total attempts an object may have in its current run, as an attempt number: attempts count on
/// across replays, so the budget starts after the run's first attempt.
fn max_attempts(policy: &RetryPolicy, rec: &NodeRecord) -> u32 {
    rec.run_start.saturating_add(policy.max_attempts)
}

/// A batch held by the driver.
pub(crate) fn batch_of(rt: &BatchRuntime, cancel_reason: Option<&str>) -> pb::Batch {
    let machine = &rt.machine();
    let state = machine.batch_state();
    // Per zone (few) × state counts, in one pass.
    let mut per_zone: Vec<(&Zone, [u32; 9])> = Vec::new();
    for (node, rec) in machine.records().iter().enumerate() {
        let zone = &rt.object(node as NodeIx).zone;
        let k = match per_zone.iter().position(|(z, _)| *z == zone) {
            Some(k) => k,
            None => {
                per_zone.push((zone, [0; 9]));
                per_zone.len() - 1
            }
        };
        per_zone[k].1[state_index(rec.state)] += 1;
    }
    per_zone.sort_by(|a, b| a.0.cmp(b.0));
    let counts = per_zone
        .iter()
        .flat_map(|(zone, c)| {
            NodeState::ALL
                .iter()
                .zip(c.iter())
                .filter(|(_, n)| **n > 0)
                .map(|(s, n)| pb::StateCount {
                    zone: zone.to_string(),
                    state: convert::object_state(*s) as i32,
                    count: *n,
                })
        })
        .collect();
    let state_reason = match state {
        BatchState::Cancelled => match cancel_reason {
            Some(r) if !r.is_empty() => format!("cancelled: {r}"),
            _ => "cancelled".into(),
        },
        BatchState::Failed => failed_reason(rt),
        BatchState::Running | BatchState::Succeeded => String::new(),
    };
    let updated_at = rt.last_transition_at().unwrap_or(rt.created_at());
    pb::Batch {
        batch_id: rt.batch_id().to_owned(),
        state: convert::batch_state(state) as i32,
        idempotency_key: caller_idempotency_key(rt.idempotency_key()).to_owned(),
        created_at: Some(convert::timestamp(rt.created_at())),
        finished_at: rt.finished_at().map(convert::timestamp),
        summary: Some(plan_summary(
            rt.objects(),
            rt.plan(),
            DispCounts::of_initial(rt.dispositions()),
        )),
        counts,
        labels: rt
            .options()
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        options: Some(submit_options(rt.options())),
        state_reason,
        updated_at: Some(convert::timestamp(updated_at)),
    }
}

fn state_index(s: NodeState) -> usize {
    NodeState::ALL
        .iter()
        .position(|&x| x == s)
        .unwrap_or_default()
}

fn failed_reason(rt: &BatchRuntime) -> String {
    const NAMED: usize = 5;
    let counts = rt.machine().counts();
    let dead: Vec<String> = rt
        .machine()
        .nodes_in(NodeState::Dead)
        .take(NAMED)
        .map(|n| rt.object(n).id.to_string())
        .collect();
    let n_dead = counts.get(NodeState::Dead);
    let mut s = format!("{n_dead} object(s) dead ({}", dead.join(", "));
    if n_dead as usize > NAMED {
        s.push_str(", …");
    }
    s.push(')');
    let upstream = counts.get(NodeState::UpstreamFailed);
    if upstream > 0 {
        let _ = write!(s, ", {upstream} upstream failed");
    }
    s
}

/// A batch the driver does not hold (finished before a restart, or driven elsewhere), from its
/// stored definition and head. `planned` is its plan, re-made from the stored objects, when the
/// caller could afford it: it gives the summary, and for a SUCCEEDED batch the exact counts
/// (every object ran or was fresh).
pub(crate) fn stored_batch(
    stored: &StoredBatch,
    head: &BatchHead,
    planned: Option<(&[ObjectDef], &Plan, &[InitialDisposition])>,
) -> pb::Batch {
    let options = &stored.options;
    let state = convert::batch_state(head.state);
    let mut summary = None;
    let mut counts = Vec::new();
    if let Some((objects, plan, init)) = planned {
        let no_flight = FxHashMap::default();
        let disps = dispositions(objects, plan, init, &no_flight);
        if state == pb::BatchState::Succeeded {
            let mut per: BTreeMap<(&Zone, i32), u32> = BTreeMap::new();
            for (node, d) in disps.iter().enumerate() {
                let s = if *d == Disp::Fresh {
                    pb::ObjectState::SkippedFresh
                } else {
                    pb::ObjectState::Loaded
                };
                *per.entry((&plan.object(objects, node as NodeIx).zone, s as i32))
                    .or_default() += 1;
            }
            counts = per
                .into_iter()
                .map(|((zone, state), count)| pb::StateCount {
                    zone: zone.to_string(),
                    state,
                    count,
                })
                .collect();
        }
        summary = Some(plan_summary(objects, plan, DispCounts::of(&disps)));
    }
    let ts = |ms: i64| DateTime::from_timestamp_millis(ms).map(convert::timestamp);
    pb::Batch {
        batch_id: stored.batch_id.clone(),
        state: state as i32,
        idempotency_key: caller_idempotency_key(&stored.idempotency_key).to_owned(),
        created_at: ts(stored.created_at_ms),
        finished_at: head.finished_at_ms.and_then(ts),
        summary,
        counts,
        labels: options
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        options: Some(submit_options(options)),
        state_reason: String::new(),
        updated_at: head.finished_at_ms.and_then(ts),
    }
}

/// A short human reason for a transition (`ObjectStateChanged.reason`, `StateTransition.reason`).
pub(crate) fn transition_reason(from: NodeState, to: NodeState) -> &'static str {
    use NodeState as S;
    match (from, to) {
        (S::Pending, S::Ready) => "released: parents satisfied",
        (S::RetryWait, S::Ready) => "retry released",
        (S::Dead, S::Ready) => "replayed",
        (S::Ready, S::Running) => "started",
        (_, S::Loaded) => "loaded",
        (_, S::RetryWait) => "failed; retry scheduled",
        (S::Pending, S::Dead) => "rejected by preflight",
        (_, S::Dead) => "failed for good",
        (S::Dead, S::Pending) => "replayed; waiting on parents",
        (S::UpstreamFailed, S::Pending) => "dead ancestor replayed",
        (S::Dead, S::UpstreamFailed) => "replayed; another ancestor is still dead",
        (_, S::UpstreamFailed) => "an ancestor is dead",
        (_, S::SkippedFresh) => "fresh",
        (_, S::Cancelled) => "batch cancelled",
        _ => "",
    }
}

/// The reason of a transition with what the record adds (the error of a failure).
pub(crate) fn detailed_reason(from: NodeState, to: NodeState, rec: Option<&NodeRecord>) -> String {
    let error = rec.and_then(|r| r.last_error.as_deref()).unwrap_or("");
    match to {
        NodeState::RetryWait if !error.is_empty() => format!("retryable failure: {error}"),
        NodeState::Dead => {
            let why = match rec.and_then(|r| r.dead_reason) {
                Some(DeadReason::Permanent) => "permanent failure",
                Some(DeadReason::RetriesExhausted) => "attempts exhausted",
                Some(DeadReason::Preflight) => "rejected by preflight",
                Some(DeadReason::CoalescedFailed) => "coalesced attempt failed",
                None => transition_reason(from, to),
            };
            if error.is_empty() {
                why.to_owned()
            } else {
                format!("{why}: {error}")
            }
        }
        _ => transition_reason(from, to).to_owned(),
    }
}

/// The retry state of one node.
pub(crate) fn retry_info(rt: &BatchRuntime, node: NodeIx) -> pb::RetryInfo {
    let o = rt.object(node);
    let rec = rt
        .machine()
        .record(node)
        .cloned()
        .unwrap_or_else(NodeRecord::pending);
    let last_error = rec.last_error.clone().unwrap_or_default();
    pb::RetryInfo {
        batch_id: rt.batch_id().to_owned(),
        object_id: o.id.to_string(),
        zone: o.zone.to_string(),
        attempt: rec.attempt,
        max_attempts: max_attempts(rt.machine().policy(node), &rec),
        error_fingerprint: if last_error.is_empty() {
            String::new()
        } else {
            convert::fingerprint(&last_error)
        },
        last_error,
        next_attempt_at: (rec.state == NodeState::RetryWait)
            .then_some(rec.retry_due)
            .flatten()
            .map(convert::timestamp),
        state: convert::object_state(rec.state) as i32,
    }
}

/// Every attempt of a node, rebuilt from the transitions this process saw. Only the latest
/// attempt knows its agent, error and dispatch epoch (the machine keeps the current ones only).
pub(crate) fn attempt_records(rt: &BatchRuntime, node: NodeIx) -> Vec<pb::AttemptRecord> {
    use NodeState as S;
    let rec = rt
        .machine()
        .record(node)
        .cloned()
        .unwrap_or_else(NodeRecord::pending);
    let history = rt.history(node);
    let mut out: Vec<pb::AttemptRecord> = Vec::new();
    for t in history {
        let ts = Some(convert::timestamp(t.at));
        match (t.from, t.to) {
            (_, S::Ready) => out.push(pb::AttemptRecord {
                attempt: t.attempt,
                released_at: ts,
                outcome: pb::AttemptOutcome::InFlight as i32,
                ..Default::default()
            }),
            (S::Ready | S::Running, to) => {
                let Some(a) = out.last_mut().filter(|a| a.attempt == t.attempt) else {
                    continue;
                };
                match to {
                    S::Running => a.started_at = ts,
                    S::Loaded => {
                        a.finished_at = ts;
                        a.outcome = pb::AttemptOutcome::Loaded as i32;
                    }
                    S::RetryWait | S::Dead => {
                        a.finished_at = ts;
                        a.outcome = pb::AttemptOutcome::Failed as i32;
                        a.retryable = to == S::RetryWait;
                        a.reason = pb::FailureReason::Processor as i32;
                    }
                    S::Cancelled => {
                        a.finished_at = ts;
                        a.outcome = pb::AttemptOutcome::Cancelled as i32;
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    // The history of a restored batch starts at the restart: add the current attempt if missing.
    if rec.attempt > 0 && out.last().is_none_or(|a| a.attempt != rec.attempt) {
        let outcome = match rec.state {
            S::Ready | S::Running => pb::AttemptOutcome::InFlight,
            S::Loaded => pb::AttemptOutcome::Loaded,
            S::Cancelled => pb::AttemptOutcome::Cancelled,
            _ => pb::AttemptOutcome::Failed,
        };
        out.push(pb::AttemptRecord {
            attempt: rec.attempt,
            outcome: outcome as i32,
            ..Default::default()
        });
    }
    if let Some(a) = out.last_mut().filter(|a| a.attempt == rec.attempt) {
        a.dispatch_epoch = rec.dispatch_epoch;
        if a.started_at.is_some() || a.outcome != pb::AttemptOutcome::InFlight as i32 {
            a.agent_id = rt.last_agent(node).map(str::to_owned).unwrap_or_default();
        }
        if a.outcome == pb::AttemptOutcome::Failed as i32 {
            a.error = rec.last_error.clone().unwrap_or_default();
            match rec.dead_reason {
                Some(DeadReason::Permanent) => a.retryable = false,
                Some(DeadReason::RetriesExhausted) => a.retryable = true,
                _ => {}
            }
            a.reason =
                convert::failure_reason(rec.last_failure.unwrap_or(FailureKind::Processor)) as i32;
        }
    }
    out
}

/// The full status of one node.
/// `live_agents`: agents of the object's zone that hold a live lease and take work.
pub(crate) fn object_status(rt: &BatchRuntime, node: NodeIx, live_agents: u32) -> pb::ObjectStatus {
    use NodeState as S;
    let o = rt.object(node);
    let machine = &rt.machine();
    let rec = machine
        .record(node)
        .cloned()
        .unwrap_or_else(NodeRecord::pending);
    let mut history = vec![pb::StateTransition {
        from_state: pb::ObjectState::Unspecified as i32,
        to_state: pb::ObjectState::Pending as i32,
        at: Some(convert::timestamp(rt.created_at())),
        attempt: 0,
        reason: "planned".into(),
    }];
    let records = rt.history(node);
    for (i, t) in records.iter().enumerate() {
        let last = i + 1 == records.len();
        history.push(pb::StateTransition {
            from_state: convert::object_state(t.from) as i32,
            to_state: convert::object_state(t.to) as i32,
            at: Some(convert::timestamp(t.at)),
            attempt: t.attempt,
            reason: if last {
                detailed_reason(t.from, t.to, Some(&rec))
            } else {
                transition_reason(t.from, t.to).to_owned()
            },
        });
    }
    let released_at = records
        .iter()
        .rev()
        .find(|t| t.to == S::Ready)
        .map(|t| convert::timestamp(t.at));
    let blocked = match rec.state {
        S::Pending => {
            let parents: Vec<pb::ParentState> = machine
                .blocked_on(node)
                .into_iter()
                .map(|p| pb::ParentState {
                    object_id: rt.object(p).id.to_string(),
                    state: convert::object_state(machine.state(p).unwrap_or(S::Pending)) as i32,
                })
                .collect();
            let summary = waiting_summary(&parents);
            Some(pb::BlockedReason {
                reason: Some(pb::blocked_reason::Reason::WaitingOnParents(
                    pb::WaitingOnParents { parents },
                )),
                summary,
            })
        }
        S::RetryWait => {
            let due = rec.retry_due.map(convert::timestamp);
            let at = rec
                .retry_due
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_else(|| "now".into());
            let error = rec.last_error.as_deref().unwrap_or("unknown error");
            Some(pb::BlockedReason {
                reason: Some(pb::blocked_reason::Reason::Backoff(pb::Backoff {
                    next_attempt_at: due,
                    next_attempt: rec.attempt.saturating_add(1),
                })),
                summary: format!(
                    "attempt {} failed ({error}); attempt {} is due at {at}",
                    rec.attempt,
                    rec.attempt.saturating_add(1)
                ),
            })
        }
        S::Ready if let Some(c) = rt.coalesced_onto(node) => Some(pb::BlockedReason {
            reason: Some(pb::blocked_reason::Reason::Coalesced(pb::Coalesced {
                batch_id: c.onto.clone(),
            })),
            summary: if c.shares_outcome {
                format!(
                    "object {} is already in flight for batch {}; this batch takes the outcome \
                     of that attempt",
                    o.id, c.onto
                )
            } else {
                format!(
                    "object {} is already in flight for batch {}, defined otherwise there; this \
                     batch runs its own definition once that attempt ends",
                    o.id, c.onto
                )
            },
        }),
        S::Ready if live_agents == 0 => Some(pb::BlockedReason {
            reason: Some(pb::blocked_reason::Reason::NoLiveAgent(pb::NoLiveAgent {
                zone: o.zone.to_string(),
            })),
            summary: format!(
                "released to zone {} (attempt {}), but no live agent of zone {} is registered: \
                 start one (strata-worker-agent --zone {})",
                o.zone, rec.attempt, o.zone, o.zone
            ),
        }),
        S::Ready => Some(pb::BlockedReason {
            reason: Some(pb::blocked_reason::Reason::Queued(pb::Queued {
                zone: o.zone.to_string(),
                released_at,
                live_agents,
            })),
            summary: format!(
                "released to zone {} (attempt {}); waiting for an agent of the zone to start it",
                o.zone, rec.attempt
            ),
        }),
        S::UpstreamFailed => {
            let dead: Vec<String> = machine
                .failed_ancestors(node)
                .into_iter()
                .map(|a| rt.object(a).id.to_string())
                .collect();
            Some(pb::BlockedReason {
                summary: format!(
                    "will not run: dead ancestor(s) {}; replaying them re-arms it",
                    dead.join(", ")
                ),
                reason: Some(pb::blocked_reason::Reason::UpstreamFailed(
                    pb::UpstreamFailed {
                        dead_ancestors: dead,
                    },
                )),
            })
        }
        S::Running | S::Loaded | S::SkippedFresh | S::Dead | S::Cancelled => None,
    };
    pb::ObjectStatus {
        batch_id: rt.batch_id().to_owned(),
        definition: Some(convert::object_definition(o)),
        zone: o.zone.to_string(),
        state: convert::object_state(rec.state) as i32,
        attempt: rec.attempt,
        max_attempts: max_attempts(machine.policy(node), &rec),
        last_error: rec.last_error.clone().unwrap_or_default(),
        next_attempt_at: (rec.state == S::RetryWait)
            .then_some(rec.retry_due)
            .flatten()
            .map(convert::timestamp),
        agent_id: rt.last_agent(node).map(str::to_owned).unwrap_or_default(),
        history,
        coalesced_onto_batch_id: rt
            .coalesced_onto(node)
            .map(|c| c.onto.clone())
            .unwrap_or_default(),
        blocked,
        wave: rt
            .plan()
            .waves
            .get(node as usize)
            .copied()
            .unwrap_or_default(),
        dispatch_epoch: rec.dispatch_epoch,
    }
}

fn waiting_summary(parents: &[pb::ParentState]) -> String {
    const NAMED: usize = 10;
    let mut s = format!(
        "waiting on {} parent{}: ",
        parents.len(),
        if parents.len() == 1 { "" } else { "s" }
    );
    for (i, p) in parents.iter().take(NAMED).enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let state = pb::ObjectState::try_from(p.state)
            .map(|s| s.as_str_name().trim_start_matches("OBJECT_STATE_"))
            .unwrap_or("?");
        let _ = write!(s, "{} ({state})", p.object_id);
    }
    if parents.len() > NAMED {
        let _ = write!(s, ", and {} more", parents.len() - NAMED);
    }
    s
}

/// How many `UPSTREAM_FAILED` descendants a `DEAD` node blocks (reached through such nodes).
pub(crate) fn blocked_descendants(rt: &BatchRuntime, node: NodeIx) -> u32 {
    let dag = rt.machine().dag();
    let mut seen = rustc_hash::FxHashSet::default();
    let mut stack = vec![node];
    let mut count = 0;
    while let Some(x) = stack.pop() {
        for &c in dag.children(x) {
            if rt.machine().state(c) == Some(NodeState::UpstreamFailed) && seen.insert(c) {
                count += 1;
                stack.push(c);
            }
        }
    }
    count
}

/// Page size per the paging conventions: 0 = 100, at most 1000.
pub(crate) fn page_size(requested: u32) -> usize {
    match requested {
        0 => 100,
        n => n.min(1000) as usize,
    }
}

/// An opaque page token: the filters it was issued for and a position, hex-encoded.
pub(crate) fn encode_token(filters: &str, position: &str) -> String {
    let raw = format!("{}\n{position}", token_filters(filters));
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The position of a page token, checked against the request's filters. Empty token = `None`.
pub(crate) fn decode_token(token: &str, filters: &str) -> Result<Option<String>, ServiceError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || ServiceError::InvalidArgument(format!("page token {token:?} is not valid"));
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    let raw = String::from_utf8(bytes).map_err(|_| bad())?;
    let (f, position) = raw.split_once('\n').ok_or_else(bad)?;
    if f != token_filters(filters) {
        return Err(ServiceError::InvalidArgument(
            "page token was issued for other filters; start again without a token".into(),
        ));
    }
    Ok(Some(position.to_owned()))
}

/// The filters as a token holds them: `\` and newlines escaped, so that the token's first newline
/// ends them (filters hold the caller's batch id and zone, which may have newlines).
fn token_filters(filters: &str) -> std::borrow::Cow<'_, str> {
    if filters.contains(['\\', '\n']) {
        filters.replace('\\', "\\\\").replace('\n', "\\n").into()
    } else {
        filters.into()
    }
}

/// Milliseconds of a time, for ordering.
pub(crate) fn millis(t: Option<DateTime<Utc>>) -> i64 {
    t.map_or(i64::MAX, |t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_are_bound_to_their_filters() {
        let t = encode_token("states=1,2", "42");
        assert_eq!(
            decode_token(&t, "states=1,2").unwrap().as_deref(),
            Some("42")
        );
        assert!(decode_token(&t, "states=3").is_err());
        assert!(decode_token("zz", "").is_err());
        assert_eq!(decode_token("", "x").unwrap(), None);
    }

    #[test]
    fn a_page_token_for_filters_with_a_newline_decodes() {
        // Found by tests/decode_arbitrary.rs: the filters ended at their own newline, so the
        // token of the next page was refused as issued for other filters.
        for (filters, position) in [("\n", ""), ("dead:b\n1:raw", "7\n8"), ("a\\nb", "1")] {
            let t = encode_token(filters, position);
            assert_eq!(
                decode_token(&t, filters).unwrap().as_deref(),
                Some(position)
            );
        }
        let t = encode_token("a\nb", "c");
        assert!(decode_token(&t, "a").is_err(), "not a token of filters `a`");
        assert!(decode_token(&t, "a\\nb").is_err(), "escapes do not collide");
    }

    #[test]
    fn page_sizes_follow_the_conventions() {
        assert_eq!(page_size(0), 100);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(5000), 1000);
    }
}
