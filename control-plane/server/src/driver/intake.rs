//! Result intake: records from the results topic turned into machine events (after the lease
//! check) and applied in one step.

use std::time::{Duration, Instant};

use strata_core::ObjectId;
use strata_core::machine::{Event, IgnoreReason};
use strata_core::model::NodeIx;
use strata_proto::v1::{self as pb, object_result};
use tracing::{debug, warn};

use super::Driver;
use super::step::Step;
use crate::ports::{DataPlane, StateStore};

impl<D: DataPlane, S: StateStore> Driver<D, S> {
    pub(super) async fn results(&mut self, records: Vec<crate::ports::ResultRecord>) {
        let mut step = Step {
            consumed_at: Some(Instant::now()),
            ..Step::default()
        };
        // `apply_result` spans, ended once the step is durable (traces exported only).
        let mut spans = Vec::new();
        for rec in records {
            step.positions.push(rec.position);
            let result = match rec.result {
                Ok(r) => r,
                Err(reason) => {
                    self.state.counters.undecodable += 1;
                    self.settings.metrics.result("undecodable");
                    warn!(partition = rec.position.partition, offset = rec.position.offset, %reason, "undecodable result record skipped");
                    continue;
                }
            };
            let (outcome, processed) = result_outcome(&result);
            let mut span = match (&self.traces, &rec.traceparent) {
                (Some(t), Some(tp)) => t.result_consumed(tp, &result),
                _ => None,
            };
            let mut decided = |span: &mut Option<_>, d| {
                if let Some(mut s) = span.take() {
                    crate::telemetry::result_decided(&mut s, d);
                    spans.push(s);
                }
            };
            let Some((batch_id, object_id, agent, event)) = to_event(result) else {
                self.state.counters.undecodable += 1;
                self.settings.metrics.result("undecodable");
                warn!(
                    partition = rec.position.partition,
                    offset = rec.position.offset,
                    "result record without an outcome skipped"
                );
                continue;
            };
            self.settings.metrics.result(outcome);
            let Some(rt) = self.state.batches.get(&batch_id) else {
                self.state.counters.unknown_batch += 1;
                self.settings.metrics.result_ignored("unknown_batch");
                debug!(%batch_id, "result for an unknown batch ignored");
                decided(&mut span, Err("unknown_batch"));
                continue;
            };
            let Some(node) = ObjectId::parse(&object_id)
                .ok()
                .and_then(|id| rt.node_of.get(&id).copied())
            else {
                *self
                    .state
                    .counters
                    .ignored
                    .entry(IgnoreReason::UnknownNode.as_str())
                    .or_default() += 1;
                self.settings
                    .metrics
                    .result_ignored(IgnoreReason::UnknownNode.as_str());
                decided(&mut span, Err(IgnoreReason::UnknownNode.as_str()));
                continue;
            };
            if let Some(seconds) = processed {
                self.settings
                    .metrics
                    .processed(rt.object(node).zone.as_str(), seconds);
            }
            if self.settings.require_agent_lease
                && !self.state.agents.is_live_in(&agent, &rt.object(node).zone)
            {
                self.state.counters.no_lease += 1;
                self.settings.metrics.result_ignored("no_lease");
                warn!(%batch_id, %object_id, agent_id = %agent, "result from an agent without a live lease for the object's zone rejected");
                decided(&mut span, Err("no_lease"));
                continue;
            }
            let event = event(node);
            let outcome = self.handle(&mut step, &batch_id, event);
            decided(&mut span, Ok(outcome));
            if outcome.is_applied()
                && !agent.is_empty()
                && let Some(rt) = self.state.batches.get_mut(&batch_id)
            {
                rt.last_agent.insert(node, agent);
            }
        }
        if let Err(e) = self.flush(step).await {
            warn!(error = %e, "step not persisted");
        }
        // Dropping a span ends it.
        drop(spans);
    }
}

pub(super) type EventFor = Box<dyn FnOnce(NodeIx) -> Event>;

/// Splits a result into (batch, object, agent, event-for-node).
/// The outcome label of a result record, and the processor run time it reports.
pub(super) fn result_outcome(result: &pb::ObjectResult) -> (&'static str, Option<f64>) {
    let seconds = |d: &Option<prost_types::Duration>| {
        d.and_then(|d| Duration::try_from(d).ok())
            .map(|d| d.as_secs_f64())
    };
    match &result.result {
        Some(object_result::Result::Started(_)) => ("started", None),
        Some(object_result::Result::Loaded(l)) => ("loaded", seconds(&l.duration)),
        Some(object_result::Result::Failed(f)) => ("failed", seconds(&f.duration)),
        None => ("undecodable", None),
    }
}

pub(super) fn to_event(result: pb::ObjectResult) -> Option<(String, String, String, EventFor)> {
    Some(match result.result? {
        object_result::Result::Started(s) => {
            let (attempt, dispatch_epoch) = (s.attempt, s.dispatch_epoch);
            (
                s.batch_id,
                s.object_id,
                s.agent_id,
                Box::new(move |node| Event::Started {
                    node,
                    attempt,
                    dispatch_epoch,
                }),
            )
        }
        object_result::Result::Loaded(l) => {
            let (attempt, dispatch_epoch) = (l.attempt, l.dispatch_epoch);
            (
                l.batch_id,
                l.object_id,
                l.agent_id,
                Box::new(move |node| Event::Loaded {
                    node,
                    attempt,
                    dispatch_epoch,
                }),
            )
        }
        object_result::Result::Failed(f) => {
            let (attempt, dispatch_epoch, retryable, error) =
                (f.attempt, f.dispatch_epoch, f.retryable, f.error);
            (
                f.batch_id,
                f.object_id,
                f.agent_id,
                Box::new(move |node| Event::Failed {
                    node,
                    attempt,
                    dispatch_epoch,
                    retryable,
                    error,
                }),
            )
        }
    })
}
