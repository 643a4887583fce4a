//! Restore: the active batches and agent leases reloaded from the store after a restart, planned
//! again and resumed.

use std::collections::BTreeMap;

use chrono::DateTime;
use strata_core::agents::Registry;
use strata_core::machine::{BatchMachine, DeadReason, InitialDisposition, NodeRecord, NodeState};
use strata_core::model::NodeIx;
use strata_core::submission::{PlanContext, layout_hash, prepare};
use tracing::{error, info};

use super::Driver;
use super::error::DriverError;
use super::settings::execution_timeout;
use super::step::Step;
use super::step::retry_port;
use crate::ports::{DataPlane, StateStore};

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
            let b = restored.batch;
            let created_at = DateTime::from_timestamp_millis(b.created_at_ms)
                .unwrap_or_else(|| self.state.now());
            // The initial dispositions are in the restored records already (and taken from
            // them below): planning needs no preflight rules.
            let no_rules = BTreeMap::new();
            let ctx =
                PlanContext::replanning(&self.settings.zone_durations_ms, &no_rules, created_at);
            let prepared = match prepare(&b.idempotency_key, restored.objects, b.options, &ctx) {
                Ok(p) => p,
                Err(e) => {
                    error!(batch_id = %b.batch_id, error = %e, "stored batch no longer plans: not restored");
                    self.settings.metrics.batch_not_restored("no_plan");
                    continue;
                }
            };
            let layout = layout_hash(&prepared.plan, &prepared.objects);
            if !b.layout_hash.is_empty() && layout != b.layout_hash {
                error!(batch_id = %b.batch_id, stored = %b.layout_hash, planned = %layout,
                    "stored batch plans to another node layout (a planner change?): its stored \
                     records would land on the wrong objects, so it is not restored");
                self.settings.metrics.batch_not_restored("layout_changed");
                continue;
            }
            let n = prepared.plan.len();
            let mut records: Vec<NodeRecord> = (0..n).map(|_| NodeRecord::pending()).collect();
            for (node, r) in restored.nodes {
                if let Some(slot) = records.get_mut(node as usize) {
                    *slot = r;
                }
            }
            let mut prepared = prepared;
            prepared.dispositions = records.iter().map(disposition_of).collect();
            let policies = prepared
                .options
                .node_policies(&prepared.objects, &prepared.plan);
            let mut machine = match BatchMachine::restore(
                prepared.plan.dag.clone(),
                records,
                policies,
            ) {
                Ok(m) => m,
                Err(e) => {
                    error!(batch_id = %b.batch_id, error = %e, "stored batch inconsistent: not restored");
                    self.settings.metrics.batch_not_restored("inconsistent");
                    continue;
                }
            };
            machine.raise_epoch_floor(restored.head.next_epoch);
            prepared.batch_id = b.batch_id.clone();
            prepared.content_hash = b.content_hash;
            info!(batch_id = %b.batch_id, objects = n, "batch restored");
            self.install(prepared, machine, false);
            resumed.push(b.batch_id);
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
                    self.state.coalescer.adopt(&o.id, batch_id.clone(), node);
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
