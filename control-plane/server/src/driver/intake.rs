//! Result intake: records from the results topic turned into machine events (after their
//! signature and lease are verified: [`super::verify`]) and applied in one step.

use std::time::Instant;

use chrono::TimeDelta;
use strata_core::ObjectId;
use strata_core::machine::IgnoreReason;
use tracing::{debug, warn};

use super::Driver;
use super::step::Step;
use super::verify::verify;
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
            let mut report = match rec.result {
                Ok(r) => r,
                Err(reason) => {
                    self.state.counters.undecodable += 1;
                    self.settings.metrics.result("undecodable");
                    warn!(partition = rec.position.partition, offset = rec.position.offset, %reason, "undecodable result record skipped");
                    continue;
                }
            };
            let mut span = match (&self.traces, &rec.traceparent) {
                (Some(t), Some(tp)) => t.result_consumed(tp, &report),
                _ => None,
            };
            let mut decided = |span: &mut Option<_>, d| {
                if let Some(mut s) = span.take() {
                    crate::telemetry::result_decided(&mut s, d);
                    spans.push(s);
                }
            };
            self.settings.metrics.result(report.outcome.label());
            let batch_id = std::mem::take(&mut report.batch_id);
            let agent = std::mem::take(&mut report.agent_id);
            let Some(rt) = self.state.batches.get(&batch_id) else {
                self.state.counters.unknown_batch += 1;
                self.settings.metrics.result_ignored("unknown_batch");
                debug!(%batch_id, "result for an unknown batch ignored");
                decided(&mut span, Err("unknown_batch"));
                continue;
            };
            let Some(node) = ObjectId::parse(&report.object_id)
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
            if let Some(processed) = report.outcome.processed() {
                self.settings
                    .metrics
                    .processed(rt.object(node).zone.as_str(), processed.as_secs_f64());
            }
            if self.settings.verify_results
                && let Err(rejection) = verify(
                    &self.state.agents,
                    &agent,
                    &report.seal,
                    &rt.object(node).zone,
                    self.state.now(),
                    TimeDelta::from_std(self.settings.result_key_rotation)
                        .unwrap_or(TimeDelta::MAX),
                )
            {
                let reason = rejection.as_str();
                *self.state.counters.rejected.entry(reason).or_default() += 1;
                self.settings.metrics.result_rejected(reason);
                if let Some(suppressed) = self.rejections_log.admit(reason) {
                    warn!(reason, batch_id = ?batch_id, object_id = ?report.object_id, agent_id = ?agent, lease_epoch = report.seal.lease_epoch, suppressed, "result rejected (at most one line per reason per 10 s)");
                }
                decided(&mut span, Err(reason));
                continue;
            }
            let event = report.into_event(node);
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
