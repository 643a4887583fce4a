//! Timers: execution deadlines, lease expiry, due retries and redelivery, and the eviction of
//! finished batches, run on every tick.

use std::collections::BTreeMap;

use strata_core::machine::{Event, LossReason, NodeState};
use strata_core::model::NodeIx;
use tracing::{debug, warn};

use super::Driver;
use super::agents::held_attempts_lost;
use super::deadlines::Due;
use super::step::Step;
use crate::ports::{DataPlane, RetryEntry, StateStore};

impl<D: DataPlane, S: StateStore> Driver<D, S> {
    pub(super) async fn tick(&mut self) {
        if !self.undelivered.is_empty() && tokio::time::Instant::now() >= self.redeliver_at {
            let ready = std::mem::take(&mut self.undelivered);
            self.publish_ready(ready, None).await;
        }
        self.expire_attempts().await;
        self.expire_leases().await;
        self.evict_finished();
        if !self.unsent_dead.is_empty() {
            let dead = std::mem::take(&mut self.unsent_dead);
            self.produce_dead_letters(dead).await;
        }
        let now = self.state.now();
        let due = match self
            .store
            .claim_due_retries(now.timestamp_millis(), 1024)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "claiming due retries failed");
                return;
            }
        };
        if due.is_empty() {
            return;
        }
        let mut step = Step::default();
        for RetryEntry {
            batch_id,
            node,
            attempt,
            ..
        } in due
        {
            if self.state.batches.contains_key(&batch_id) {
                self.handle(&mut step, &batch_id, Event::RetryDue { node, attempt });
            }
        }
        if let Err(e) = self.flush(step).await {
            warn!(error = %e, "retry step not persisted");
        }
    }

    /// Finished batches older than the retention leave memory (their state and trails are in
    /// the store, written when they finished); the state gauges count them out.
    pub(super) fn evict_finished(&mut self) {
        let now = self.state.now();
        let retention = chrono::TimeDelta::from_std(self.settings.finished_retention)
            .unwrap_or(chrono::TimeDelta::MAX);
        let gone: Vec<String> = self
            .state
            .batches
            .values()
            .filter(|rt| {
                rt.finished_at
                    .map(|at| rt.adopted_at.map_or(at, |adopted| adopted.max(at)))
                    .and_then(|at| at.checked_add_signed(retention))
                    .is_some_and(|until| until <= now)
            })
            .map(|rt| rt.batch_id.clone())
            .collect();
        for batch_id in gone {
            let Some(rt) = self.state.batches.remove(&batch_id) else {
                continue;
            };
            let metrics = &self.settings.metrics;
            let mut left: BTreeMap<(&str, &str), i64> = BTreeMap::new();
            for (node, record) in rt.machine.records().iter().enumerate() {
                let zone = rt.object(node as NodeIx).zone.as_str();
                *left.entry((zone, record.state.as_str())).or_default() -= 1;
            }
            for ((zone, state), n) in left {
                metrics.objects_entered(zone, state, n);
            }
            metrics.batch_left(rt.machine.batch_state().as_str());
            debug!(%batch_id, "finished batch left memory; reads of it are served from the store");
        }
    }

    /// RUNNING attempts past their zone's execution timeout count as failed (retryable, reason
    /// `timeout`); their late results are then ignored.
    pub(super) async fn expire_attempts(&mut self) {
        let now = tokio::time::Instant::now();
        let mut step = Step::default();
        for Due {
            batch_id,
            node,
            attempt,
            dispatch_epoch: epoch,
        } in self.deadlines.due(now)
        {
            let running = self.state.batches.get(&*batch_id).is_some_and(|rt| {
                rt.machine.record(node).is_some_and(|r| {
                    r.state == NodeState::Running
                        && r.attempt == attempt
                        && r.dispatch_epoch == epoch
                })
            });
            if running {
                warn!(%batch_id, node, attempt, "attempt exceeded its execution timeout");
                let event = Event::AttemptLost {
                    node,
                    attempt,
                    dispatch_epoch: epoch,
                    reason: LossReason::Timeout,
                };
                self.handle(&mut step, &batch_id, event);
            }
        }
        if !step.heads.is_empty()
            && let Err(e) = self.flush(step).await
        {
            warn!(error = %e, "timed-out attempts not persisted");
        }
    }

    /// Agents whose lease ran out are lost: every attempt they held (as they last reported, and
    /// every RUNNING attempt they started) counts as failed with reason `agent_lost`.
    pub(super) async fn expire_leases(&mut self) {
        let now = self.state.now();
        let lost = self.state.agents.expire(now);
        if lost.is_empty() {
            return;
        }
        // Ended leases stay listed for a while.
        self.state
            .agents
            .forget_inactive(now - chrono::TimeDelta::hours(1));
        let mut step = Step::default();
        for agent in lost {
            let events = held_attempts_lost(&self.state, &agent.agent_id, &agent.in_flight);
            warn!(agent_id = %agent.agent_id, zone = %agent.zone, attempts = events.len(), "agent lease expired; its attempts are retried");
            for (batch_id, event) in events {
                self.handle(&mut step, &batch_id, event);
            }
        }
        if let Err(e) = self.flush(step).await {
            warn!(error = %e, "lost attempts not persisted");
        }
    }
}
