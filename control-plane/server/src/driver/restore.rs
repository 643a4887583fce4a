//! Restore: the active batches and agent leases reloaded from the store after a restart, planned
//! again and resumed.

use chrono::DateTime;
use strata_core::agents::Registry;
use strata_core::coalesce::definition_digest;
use strata_core::machine::{BatchState, NodeState};
use strata_core::model::NodeIx;
use tracing::{error, info};

use super::Driver;
use super::error::DriverError;
use super::rebuild::{apply_trails, replan};
use super::settings::execution_timeout;
use super::step::Step;
use super::step::retry_port;
use crate::ports::{DataPlane, StateStore};

/// Dead letters of the outbox produced at start, at most.
const OUTBOX_AT_START: usize = 100_000;

impl<D: DataPlane, S: StateStore> Driver<D, S> {
    pub(super) async fn restore(&mut self) -> Result<(), DriverError> {
        let candidate = crate::keys::random_bytes::<16>().map_err(|detail| {
            DriverError::Port(crate::ports::PortError::Rejected {
                service: "os",
                detail,
            })
        })?;
        retry_port(
            &self.settings.metrics,
            "open the store's generation",
            || self.store.open_generation(candidate),
        )
        .await?;
        let signer = retry_port(&self.settings.metrics, "load the Ready signing key", || {
            crate::keys::ready_signer(&*self.store)
        })
        .await?;
        self.state.ready_signer = Some(std::sync::Arc::new(signer));
        let (agents, next_epoch) = retry_port(&self.settings.metrics, "load agent leases", || {
            self.store.load_agents()
        })
        .await?;
        let registry = Registry::restore(
            self.settings.lease_ttl,
            agents,
            next_epoch,
            self.state.now(),
        );
        let live = registry.list(None, false).len();
        if live > 0 {
            info!(
                agents = live,
                "agent leases restored; each runs a full TTL from now"
            );
        }
        self.state.agents = registry;
        let mut active = retry_port(&self.settings.metrics, "load active batches", || {
            self.store.load_active()
        })
        .await?;
        // Oldest first: where two batches hold the same object in flight, the older one's
        // release is the one that ran, and the newer one coalesces onto it again.
        active.sort_by_key(|r| r.batch.created_at_ms);
        let mut resumed = Vec::with_capacity(active.len());
        for restored in active {
            let batch_id = restored.batch.batch_id.clone();
            let (prepared, machine) = match replan(restored, &self.settings.zone_durations_ms) {
                Ok(r) => r,
                Err(e) => {
                    error!(%batch_id, error = %e, "stored batch not restored");
                    self.settings.metrics.batch_not_restored(e.reason());
                    continue;
                }
            };
            let n = prepared.plan.len();
            info!(%batch_id, objects = n, "batch restored");
            self.install(prepared, machine, false);
            resumed.push(batch_id);
        }
        // Attempts running or waiting for their retry own their objects again, before any
        // READY release is re-issued; running ones get a full execution timeout from now (how
        // long they ran before the restart is not known).
        let rearmed_at = tokio::time::Instant::now();
        for batch_id in &resumed {
            let rt = &self.state.batches[batch_id];
            for (node, rec) in rt.machine.records().iter().enumerate() {
                if matches!(rec.state, NodeState::Running | NodeState::RetryWait) {
                    let node = node as NodeIx;
                    let o = rt.object(node);
                    self.state
                        .coalescer
                        .adopt(&o.id, definition_digest(o), batch_id.clone(), node);
                    if rec.state == NodeState::Running {
                        self.deadlines.arm(
                            batch_id,
                            node,
                            (rec.attempt, rec.dispatch_epoch),
                            rearmed_at + execution_timeout(&self.settings, &o.zone),
                        );
                    }
                }
            }
        }
        // Dead letters stored but never produced (a crash between the write and the produce).
        let unsent = retry_port(
            &self.settings.metrics,
            "read the dead-letter outbox",
            || self.store.unsent_dead_letters(OUTBOX_AT_START),
        )
        .await?;
        if !unsent.is_empty() {
            info!(
                count = unsent.len(),
                "dead letters stored but not produced: producing them"
            );
            let dead = unsent.into_iter().map(|d| (d.node, d.letter)).collect();
            self.produce_dead_letters(dead).await;
        }
        for batch_id in resumed {
            let mut effects = Vec::new();
            let now = self.state.now();
            if let Some(rt) = self.state.batches.get_mut(&batch_id) {
                rt.machine.resume(now, &mut effects);
            }
            let mut step = Step::default();
            self.absorb(&mut step, &batch_id, effects, true);
            self.deliver(&mut step);
            self.flush(step).await?;
        }
        Ok(())
    }

    /// Takes a finished batch that left memory back from the store (planned again, its trails
    /// as history): true when it is held now, false when the store does not have it finished.
    pub(super) async fn adopt(&mut self, batch_id: &str) -> Result<bool, DriverError> {
        if self.state.batches.contains_key(batch_id) {
            return Ok(true);
        }
        let Some((restored, trails)) = retry_port(&self.settings.metrics, "load a batch", || {
            self.store.load_batch(batch_id)
        })
        .await?
        else {
            return Ok(false);
        };
        let state = restored.head.state;
        if !state.is_terminal() {
            return Ok(false);
        }
        let finished_at = restored
            .head
            .finished_at_ms
            .and_then(DateTime::from_timestamp_millis);
        let (prepared, machine) =
            replan(restored, &self.settings.zone_durations_ms).map_err(|e| {
                DriverError::FailedPrecondition(format!(
                    "batch {batch_id} cannot be taken back from the store: {e}"
                ))
            })?;
        self.install(prepared, machine, false);
        self.settings
            .metrics
            .batch_moved(BatchState::Running.as_str(), state.as_str());
        let now = self.state.now();
        if let Some(rt) = self.state.batches.get_mut(batch_id) {
            apply_trails(rt, trails);
            rt.finished_at = finished_at.or(Some(now));
            rt.adopted_at = Some(now);
        }
        info!(%batch_id, "finished batch taken back from the store");
        Ok(true)
    }
}
