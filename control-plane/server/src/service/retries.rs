//! `ListRetries`, `GetRetry` and `RetryNow`: objects waiting for their next attempt.

use strata_core::ObjectId;
use strata_core::machine::{Event, NodeState, Outcome};
use strata_proto::v1::{self as pb};
use tracing::{info, instrument};

use super::OrchestratorService;
use super::validate::object_id;
use super::validate::optional_zone;
use super::validate::required;
use super::validate::state_name;
use super::wire;
use crate::driver::BatchRuntime;
use crate::error::ServiceError;
use crate::ports::StateStore;
impl<S: StateStore> OrchestratorService<S> {
    #[instrument(skip_all, fields(batch_id = %req.batch_id, zone = %req.zone))]
    pub(super) async fn do_list_retries(
        &self,
        req: pb::ListRetriesRequest,
    ) -> Result<pb::ListRetriesResponse, ServiceError> {
        let size = wire::page_size(req.page_size);
        let zone = optional_zone(&req.zone)?;
        let filters = format!("retries:{}:{}", req.batch_id, req.zone);
        // Keyset paging: (due ms, batch, object) of the last row sent.
        let after: Option<(i64, String, String)> =
            match wire::decode_token(&req.page_token, &filters)? {
                None => None,
                Some(p) => {
                    let mut parts = p.splitn(3, '\n');
                    match (
                        parts.next().and_then(|d| d.parse().ok()),
                        parts.next(),
                        parts.next(),
                    ) {
                        (Some(due), Some(b), Some(o)) => Some((due, b.to_owned(), o.to_owned())),
                        _ => {
                            return Err(ServiceError::InvalidArgument(format!(
                                "page token {:?} is not valid",
                                req.page_token
                            )));
                        }
                    }
                }
            };
        let batch_filter = (!req.batch_id.is_empty()).then(|| req.batch_id.clone());
        let (held, mut rows) = {
            let batch_filter = batch_filter.clone();
            self.handle
                .read(move |s| {
                    let held = batch_filter.as_ref().is_none_or(|b| s.batch(b).is_some());
                    let mut rows: Vec<(i64, String, String, pb::RetryInfo)> = Vec::new();
                    for rt in s.batches() {
                        if batch_filter.as_ref().is_some_and(|b| *b != rt.batch_id())
                            || rt.machine().counts().get(NodeState::RetryWait) == 0
                        {
                            continue;
                        }
                        for node in rt.machine().nodes_in(NodeState::RetryWait) {
                            let o = rt.object(node);
                            if zone.as_ref().is_some_and(|z| *z != o.zone) {
                                continue;
                            }
                            let due = wire::millis(rt.machine().next_retry_at(node));
                            rows.push((
                                due,
                                rt.batch_id().to_owned(),
                                o.id.to_string(),
                                wire::retry_info(rt, node),
                            ));
                        }
                    }
                    (held, rows)
                })
                .await?
        };
        if !held && let Some(b) = &batch_filter {
            // Unknown batch: NOT_FOUND; a stored one has nothing waiting here.
            if self.store.get_batch(b).await?.is_none() {
                return Err(ServiceError::BatchNotFound(b.clone()));
            }
        }
        rows.sort_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
        if let Some(after) = &after {
            rows.retain(|r| (r.0, &r.1, &r.2) > (after.0, &after.1, &after.2));
        }
        let more = rows.len() > size;
        rows.truncate(size);
        let next_page_token = match rows.last() {
            Some((due, b, o, _)) if more => {
                wire::encode_token(&filters, &format!("{due}\n{b}\n{o}"))
            }
            _ => String::new(),
        };
        Ok(pb::ListRetriesResponse {
            retries: rows.into_iter().map(|r| r.3).collect(),
            next_page_token,
        })
    }

    #[instrument(skip_all, fields(batch_id = %req.batch_id, object_id = %req.object_id))]
    pub(super) async fn do_get_retry(
        &self,
        req: pb::GetRetryRequest,
    ) -> Result<pb::GetRetryResponse, ServiceError> {
        let batch_id = required("batch_id", &req.batch_id)?.to_owned();
        let id = object_id(&req.object_id)?;
        let wanted = id.clone();
        let answer = |rt: &BatchRuntime, id: &ObjectId| {
            let node = Self::node_of(rt, id)?;
            Ok(pb::GetRetryResponse {
                retry: Some(wire::retry_info(rt, node)),
                attempts: wire::attempt_records(rt, node),
            })
        };
        match self
            .with_batch(&batch_id, move |rt| answer(rt, &id))
            .await?
        {
            Some(r) => Ok(r),
            None => match self.stored_runtime(&batch_id).await? {
                Some(rt) => answer(&rt, &wanted),
                None => Err(self
                    .not_held(
                        &batch_id,
                        "it is driven by another control plane, or not at all",
                    )
                    .await),
            },
        }
    }

    #[instrument(skip_all, fields(batch_id = %req.batch_id, object_id = %req.object_id))]
    pub(super) async fn do_retry_now(
        &self,
        req: pb::RetryNowRequest,
    ) -> Result<pb::RetryInfo, ServiceError> {
        let batch_id = required("batch_id", &req.batch_id)?.to_owned();
        let id = object_id(&req.object_id)?;
        let node = match self
            .with_batch(&batch_id, move |rt| Self::node_of(rt, &id))
            .await?
        {
            Some(n) => n,
            None => {
                return Err(self
                    .not_held(
                        &batch_id,
                        "only a driven batch has objects waiting for a retry",
                    )
                    .await);
            }
        };
        let outcome = self
            .handle
            .event(&batch_id, Event::RetryNow { node })
            .await?;
        let info = self
            .with_batch(&batch_id, move |rt| Ok(wire::retry_info(rt, node)))
            .await?
            .ok_or_else(|| ServiceError::BatchNotFound(batch_id.clone()))?;
        match outcome {
            Outcome::Applied => {
                info!(%batch_id, object_id = %info.object_id, "retry released now");
                Ok(info)
            }
            Outcome::Ignored(_) => Err(ServiceError::FailedPrecondition(format!(
                "object {} of batch {batch_id} is {}, not RETRY_WAIT",
                info.object_id,
                state_name(info.state)
            ))),
        }
    }
}
