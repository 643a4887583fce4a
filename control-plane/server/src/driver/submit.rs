//! Submission: a prepared batch made durable, installed and started.

use std::collections::BTreeMap;

use strata_core::machine::{BatchMachine, BatchState, NodeRecord, NodeState};
use strata_core::model::NodeIx;
use tracing::info;

use super::Driver;
use super::error::DriverError;
use super::handle::SubmitOutcome;
use super::state::BatchRuntime;
use super::state::head_of;
use super::step::Step;
use super::step::retry_port;
use crate::ports::{CreateOutcome, DataPlane, StateStore, StoredBatch};
use strata_core::submission::PreparedBatch;

impl<D: DataPlane, S: StateStore> Driver<D, S> {
    pub(super) async fn submit(&mut self, p: PreparedBatch) -> Result<SubmitOutcome, DriverError> {
        if let Some(existing) = self.state.batches.get(&p.batch_id) {
            return if existing.content_hash == p.content_hash {
                Ok(SubmitOutcome {
                    batch_id: p.batch_id,
                    created: false,
                })
            } else {
                Err(DriverError::IdempotencyConflict {
                    key: p.idempotency_key,
                    batch_id: p.batch_id,
                })
            };
        }
        let mut effects = Vec::new();
        let machine = BatchMachine::start(
            p.plan.dag.clone(),
            p.dispositions.clone(),
            p.options.node_policies(&p.objects, &p.plan),
            &mut effects,
        )
        .map_err(|e| DriverError::FailedPrecondition(e.to_string()))?;
        let stored = StoredBatch::of(&p);
        let head = head_of(&machine, None);
        let initial: Vec<(u32, NodeRecord)> = machine
            .records()
            .iter()
            .enumerate()
            .filter(|(_, r)| r.state != NodeState::Pending)
            .map(|(i, r)| (i as u32, r.clone()))
            .collect();
        let created = retry_port(&self.settings.metrics, "create batch", || {
            self.store
                .create_batch(&stored, &p.objects, &head, &initial)
        })
        .await?;
        drop(initial);
        match created {
            CreateOutcome::Created => {}
            CreateOutcome::Existing {
                batch_id,
                content_hash,
            } => {
                return if content_hash == p.content_hash {
                    Ok(SubmitOutcome {
                        batch_id,
                        created: false,
                    })
                } else {
                    Err(DriverError::IdempotencyConflict {
                        key: p.idempotency_key,
                        batch_id,
                    })
                };
            }
        }
        info!(batch_id = %p.batch_id, objects = p.plan.len(), "batch submitted");
        let batch_id = p.batch_id.clone();
        let (objects, submitted_at) = (p.plan.len(), p.created_at);
        self.install(p, machine, true);
        // The initial records are durable; perform the rest of start's effects.
        let mut step = Step::default();
        self.absorb(&mut step, &batch_id, effects, false);
        self.flush(step).await?;
        if let Some(t) = &self.traces {
            t.batch_submitted(&batch_id, objects, submitted_at.into());
        }
        Ok(SubmitOutcome {
            batch_id,
            created: true,
        })
    }

    /// Installs a batch and counts its objects and itself in the state gauges: a `fresh` one
    /// (just started) as if every object were still PENDING and the batch RUNNING, since the
    /// effects of its start move them; a restored one as its records say, and RUNNING until its
    /// resume's effects say otherwise.
    pub(super) fn install(&mut self, p: PreparedBatch, machine: BatchMachine, fresh: bool) {
        let metrics = &self.settings.metrics;
        let mut entered: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for (node, record) in machine.records().iter().enumerate() {
            let zone = p.plan.object(&p.objects, node as NodeIx).zone.as_str();
            let state = if fresh {
                NodeState::Pending
            } else {
                record.state
            };
            *entered.entry((zone, state.as_str())).or_default() += 1;
        }
        for ((zone, state), n) in entered {
            metrics.objects_entered(zone, state, n);
        }
        metrics.batch_entered(BatchState::Running.as_str());
        let finished_at = machine.is_terminal().then(|| self.state.now());
        let rt = BatchRuntime::new(p, machine, finished_at, self.settings.watch_capacity);
        self.state.batches.insert(rt.batch_id.clone(), rt);
    }
}
