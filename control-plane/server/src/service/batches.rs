//! `GetBatch`, `GetPlan`, `ListBatches` and `CancelBatch`: batches the driver holds, and those it
//! does not (finished before a restart) from the store.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use strata_core::ObjectDef;
use strata_core::machine::{BatchState, Event, Outcome};
use strata_proto::v1::{self as pb};
use tracing::{info, instrument};

use super::MAX_STORE_PAGES;
use super::OrchestratorService;
use super::submit::replan;
use super::validate::{self, required};
use super::wire;
use crate::driver::BatchRuntime;
use crate::error::ServiceError;
use crate::ports::StateStore;
impl<S: StateStore> OrchestratorService<S> {
    pub(super) fn cancel_reason(&self, batch_id: &str) -> Option<String> {
        self.cancel_reasons
            .lock()
            .ok()
            .and_then(|m| m.get(batch_id).cloned())
    }

    /// Runs `f` on the batch if the driver holds it; `Ok(None)` if it does not.
    pub(super) async fn with_batch<T: Send + 'static>(
        &self,
        batch_id: &str,
        f: impl FnOnce(&BatchRuntime) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<Option<T>, ServiceError> {
        let id = batch_id.to_owned();
        self.handle
            .read(move |s| s.batch(&id).map(f).transpose())
            .await?
    }

    /// The error for a batch the driver does not hold: NOT_FOUND unless the store has it.
    pub(super) async fn not_held(&self, batch_id: &str, what: &str) -> ServiceError {
        match self.store.get_batch(batch_id).await {
            Ok(Some((_, head))) => ServiceError::FailedPrecondition(format!(
                "batch {batch_id} is {} and not driven by this control plane: {what}",
                head.state
            )),
            Ok(None) => ServiceError::BatchNotFound(batch_id.to_owned()),
            Err(e) => e.into(),
        }
    }

    /// A batch the driver does not hold, from the store, re-planned (on a blocking thread) for
    /// its summary.
    pub(super) async fn stored_batch(
        &self,
        batch_id: &str,
    ) -> Result<Option<pb::Batch>, ServiceError> {
        let Some((stored, head)) = self.store.get_batch(batch_id).await? else {
            return Ok(None);
        };
        let objects = self.store.batch_objects(batch_id).await?;
        let settings = self.settings.clone();
        let batch = tokio::task::spawn_blocking(move || {
            let prepared = objects.and_then(|objects| replan(&stored, objects, &settings));
            wire::stored_batch(
                &stored,
                &head,
                prepared
                    .as_ref()
                    .map(|p| (p.objects.as_slice(), &p.plan, p.dispositions.as_slice())),
            )
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("re-planning task failed: {e}")))?;
        Ok(Some(batch))
    }

    pub(super) async fn batch(&self, batch_id: &str) -> Result<pb::Batch, ServiceError> {
        let reason = self.cancel_reason(batch_id);
        if let Some(b) = self
            .with_batch(batch_id, move |rt| {
                Ok(wire::batch_of(rt, reason.as_deref()))
            })
            .await?
        {
            return Ok(b);
        }
        if let Some(rt) = self.stored_runtime(batch_id).await? {
            return Ok(wire::batch_of(&rt, self.cancel_reason(batch_id).as_deref()));
        }
        self.stored_batch(batch_id)
            .await?
            .ok_or_else(|| ServiceError::BatchNotFound(batch_id.to_owned()))
    }

    #[instrument(skip_all, fields(batch_id = %req.batch_id))]
    pub(super) async fn do_get_batch(
        &self,
        req: pb::GetBatchRequest,
    ) -> Result<pb::Batch, ServiceError> {
        let batch_id = required("batch_id", &req.batch_id)?;
        self.batch(batch_id).await
    }

    #[instrument(skip_all, fields(batch_id = %req.batch_id))]
    pub(super) async fn do_get_plan(
        &self,
        req: pb::GetPlanRequest,
    ) -> Result<pb::GetPlanResponse, ServiceError> {
        let batch_id = required("batch_id", &req.batch_id)?.to_owned();
        let size = wire::page_size(req.page_size);
        let filters = format!("plan:{batch_id}:{}", req.include_excluded);
        let from: usize = match wire::decode_token(&req.page_token, &filters)? {
            Some(p) => p.parse().map_err(|_| {
                ServiceError::InvalidArgument(format!(
                    "page token {:?} is not valid",
                    req.page_token
                ))
            })?,
            None => 0,
        };
        let include = req.include_excluded;
        let page = move |objects: &[ObjectDef],
                         plan: &strata_core::planner::Plan,
                         init: &[strata_core::machine::InitialDisposition]| {
            let no_flight = FxHashMap::default();
            let disps = wire::dispositions(objects, plan, init, &no_flight);
            let total = plan.len() + if include { plan.excluded.len() } else { 0 };
            let to = (from + size).min(total);
            let listed = wire::planned_objects(objects, plan, &disps, from.min(to), to);
            let summary = wire::plan_summary(objects, plan, wire::DispCounts::of(&disps));
            let next = (to < total).then(|| wire::encode_token(&filters, &to.to_string()));
            pb::GetPlanResponse {
                summary: Some(summary),
                objects: listed,
                next_page_token: next.unwrap_or_default(),
            }
        };
        let held = {
            let page = page.clone();
            self.with_batch(&batch_id, move |rt| {
                Ok(page(rt.objects(), rt.plan(), rt.dispositions()))
            })
            .await?
        };
        if let Some(r) = held {
            return Ok(r);
        }
        let Some((stored, _)) = self.store.get_batch(&batch_id).await? else {
            return Err(ServiceError::BatchNotFound(batch_id));
        };
        let Some(objects) = self.store.batch_objects(&batch_id).await? else {
            return Err(ServiceError::BatchNotFound(batch_id));
        };
        let settings = self.settings.clone();
        tokio::task::spawn_blocking(move || {
            let p = replan(&stored, objects, &settings).ok_or_else(|| {
                ServiceError::Internal(format!("stored batch {batch_id} no longer plans"))
            })?;
            Ok(page(&p.objects, &p.plan, &p.dispositions))
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("re-planning task failed: {e}")))?
    }

    #[instrument(skip_all)]
    pub(super) async fn do_list_batches(
        &self,
        req: pb::ListBatchesRequest,
    ) -> Result<pb::ListBatchesResponse, ServiceError> {
        let size = wire::page_size(req.page_size);
        let mut states: Vec<i32> = req
            .states
            .iter()
            .copied()
            .filter(|&s| s != pb::BatchState::Unspecified as i32)
            .collect();
        states.sort_unstable();
        states.dedup();
        for &s in &states {
            if pb::BatchState::try_from(s).is_err() {
                return Err(ServiceError::InvalidArgument(format!(
                    "{s} is not a batch state"
                )));
            }
        }
        let filters = format!("batches:{states:?}");
        let mut cursor = wire::decode_token(&req.page_token, &filters)?;
        let mut batches = Vec::new();
        for _ in 0..MAX_STORE_PAGES {
            let (ids, next) = self
                .store
                .list_batches(cursor.clone(), size - batches.len())
                .await?;
            cursor = next;
            let reasons: HashMap<String, String> = ids
                .iter()
                .filter_map(|id| self.cancel_reason(id).map(|r| (id.clone(), r)))
                .collect();
            let wanted = ids.clone();
            let held: Vec<Option<pb::Batch>> = self
                .handle
                .read(move |s| {
                    wanted
                        .iter()
                        .map(|id| {
                            s.batch(id)
                                .map(|rt| wire::batch_of(rt, reasons.get(id).map(String::as_str)))
                        })
                        .collect()
                })
                .await?;
            for (id, held) in ids.iter().zip(held) {
                let batch = match held {
                    Some(b) => b,
                    // Not re-planned here (a page of large batches would take seconds): no
                    // summary; GetBatch has it.
                    None => match self.store.get_batch(id).await? {
                        Some((stored, head)) => wire::stored_batch(&stored, &head, None),
                        None => continue,
                    },
                };
                if states.is_empty() || states.contains(&batch.state) {
                    batches.push(batch);
                }
            }
            if batches.len() >= size || cursor.is_none() {
                break;
            }
        }
        Ok(pb::ListBatchesResponse {
            batches,
            next_page_token: cursor
                .map(|c| wire::encode_token(&filters, &c))
                .unwrap_or_default(),
        })
    }

    #[instrument(skip_all, fields(batch_id = %req.batch_id))]
    pub(super) async fn do_cancel(
        &self,
        req: pb::CancelBatchRequest,
    ) -> Result<pb::Batch, ServiceError> {
        let batch_id = required("batch_id", &req.batch_id)?.to_owned();
        let not_running = |id: &str, state: BatchState| {
            ServiceError::FailedPrecondition(format!(
                "batch {id} is {state}: only a running batch can be cancelled"
            ))
        };
        let state = match self
            .with_batch(&batch_id, |rt| Ok(rt.machine().batch_state()))
            .await?
        {
            Some(s) => s,
            None => {
                let batch = self
                    .stored_batch(&batch_id)
                    .await?
                    .ok_or_else(|| ServiceError::BatchNotFound(batch_id.clone()))?;
                return match pb::BatchState::try_from(batch.state) {
                    Ok(pb::BatchState::Cancelled) => Ok(batch),
                    Ok(pb::BatchState::Running) => Err(self
                        .not_held(&batch_id, "cancel it on the control plane that drives it")
                        .await),
                    _ => Err(ServiceError::FailedPrecondition(format!(
                        "batch {batch_id} is {}: only a running batch can be cancelled",
                        pb::BatchState::try_from(batch.state)
                            .map(|s| s.as_str_name().trim_start_matches("BATCH_STATE_"))
                            .unwrap_or("finished")
                    ))),
                };
            }
        };
        match state {
            BatchState::Cancelled => return self.batch(&batch_id).await,
            BatchState::Succeeded | BatchState::Failed => {
                return Err(not_running(&batch_id, state));
            }
            BatchState::Running => {}
        }
        let reason = validate::reason(req.reason);
        if !reason.is_empty()
            && let Ok(mut m) = self.cancel_reasons.lock()
        {
            m.insert(batch_id.clone(), reason.clone());
        }
        match self.handle.event(&batch_id, Event::Cancel).await? {
            Outcome::Applied => info!(%batch_id, %reason, "batch cancelled"),
            Outcome::Ignored(_) => {
                // It finished (or was cancelled) between the check and the event.
                let state = self
                    .with_batch(&batch_id, |rt| Ok(rt.machine().batch_state()))
                    .await?
                    .unwrap_or(BatchState::Cancelled);
                if state != BatchState::Cancelled {
                    return Err(not_running(&batch_id, state));
                }
            }
        }
        self.batch(&batch_id).await
    }
}
