//! `SubmitBatch`, `SubmitBatchStream` and `PlanBatch`: inputs read and planned on a blocking
//! thread, then handed to the driver (or answered as a plan).

use chrono::Utc;
use rustc_hash::FxHashMap;
use strata_core::catalogue::{CatalogueError, read_catalogue};
use strata_core::planner::PlanError;
use strata_core::{ObjectDef, ObjectId};
use strata_proto::v1::{self as pb, submit_batch_stream_request};
use tonic::{Status, Streaming};
use tracing::{Span, field, info, instrument};

use super::OrchestratorService;
use super::ServiceSettings;
use super::validate::Input;
use super::validate::batch_options;
use super::validate::configured_zones;
use super::validate::idempotency_key;
use super::validate::input_of;
use super::validate::within_limits;
use super::wire;
use crate::auth::Principal;
use crate::convert;
use crate::error::ServiceError;
use crate::ports::StateStore;
use strata_core::submission::{self, BatchOptions, PreparedBatch};
/// A planned submission with its summary.
pub(super) struct Planned {
    prepared: PreparedBatch,
    summary: pb::PlanSummary,
    /// The planned objects of a `PlanBatch` reply and how many were left out.
    objects: Option<(Vec<pb::PlannedObject>, u32)>,
}

impl<S: StateStore> OrchestratorService<S> {
    /// When the objects that have a frequency were last loaded by earlier batches (the others
    /// are never skipped as fresh).
    pub(super) async fn last_loaded(
        &self,
        objects: &[ObjectDef],
    ) -> Result<submission::LastLoaded, ServiceError> {
        let ids: Vec<&ObjectId> = objects
            .iter()
            .filter(|o| o.frequency.is_some())
            .map(|o| &o.id)
            .collect();
        let names: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let times = self.store.last_loaded(&names).await?;
        Ok(ids
            .into_iter()
            .zip(times)
            .filter_map(|(id, ms)| {
                Some((id.clone(), chrono::DateTime::from_timestamp_millis(ms?)?))
            })
            .collect())
    }

    /// Reads the input and plans it on blocking threads (the store's record of earlier loads
    /// in between); with `list`, also builds the `PlanBatch` object listing.
    pub(super) async fn plan(
        &self,
        key: String,
        input: Input,
        options: BatchOptions,
        in_flight: FxHashMap<ObjectId, String>,
        list: Option<(usize, bool)>,
    ) -> Result<Planned, ServiceError> {
        let max = self.settings.max_objects;
        let settings = self.settings.clone();
        let zones = self.settings.agents.zones.clone();
        let limits = self.settings.object_limits;
        let objects = tokio::task::spawn_blocking(move || {
            Ok::<_, ServiceError>(match input {
                Input::Objects(defs) => {
                    if defs.len() > max {
                        return Err(PlanError::TooLarge {
                            count: defs.len(),
                            max,
                        }
                        .into());
                    }
                    convert::object_defs(defs).map_err(|problems| CatalogueError { problems })?
                }
                Input::Document(bytes) => read_catalogue(&bytes)?.objects,
            })
            .and_then(|objects| {
                configured_zones(&objects, &zones)?;
                within_limits(&objects, &limits)?;
                Ok(objects)
            })
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("reading task failed: {e}")))??;
        let last_loaded = if options.force {
            submission::LastLoaded::default()
        } else {
            self.last_loaded(&objects).await?
        };
        tokio::task::spawn_blocking(move || {
            let ctx = submission::PlanContext {
                max_objects: max,
                durations: &settings.zone_durations_ms,
                last_loaded: &last_loaded,
                preflight: &settings.preflight,
                now: crate::driver::to_millis(Utc::now()),
            };
            let prepared = submission::prepare(&key, objects, options, &ctx)?;
            let disps = wire::dispositions(
                &prepared.objects,
                &prepared.plan,
                &prepared.dispositions,
                &in_flight,
            );
            let summary = wire::plan_summary(
                &prepared.objects,
                &prepared.plan,
                wire::DispCounts::of(&disps),
            );
            let objects = list.map(|(limit, include_excluded)| {
                let planned = prepared.plan.len();
                let total = planned
                    + if include_excluded {
                        prepared.plan.excluded.len()
                    } else {
                        0
                    };
                let to = total.min(limit);
                let listed =
                    wire::planned_objects(&prepared.objects, &prepared.plan, &disps, 0, to);
                (listed, planned.saturating_sub(to) as u32)
            });
            drop(disps);
            Ok(Planned {
                prepared,
                summary,
                objects,
            })
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("planning task failed: {e}")))?
    }

    /// Plans and hands the batch to the driver.
    pub(super) async fn submit_input(
        &self,
        key: String,
        input: Input,
        options: BatchOptions,
    ) -> Result<pb::SubmitBatchResponse, ServiceError> {
        let planned = self
            .plan(key, input, options, FxHashMap::default(), None)
            .await?;
        let objects = planned.prepared.plan.len();
        let outcome = self.handle.submit(planned.prepared).await?;
        Span::current().record("batch_id", field::display(&outcome.batch_id));
        info!(batch_id = %outcome.batch_id, created = outcome.created, objects, "submission accepted");
        Ok(pb::SubmitBatchResponse {
            batch_id: outcome.batch_id,
            created: outcome.created,
            summary: Some(planned.summary),
        })
    }

    #[instrument(skip_all, fields(batch_id = field::Empty, key = %req.idempotency_key))]
    pub(super) async fn do_submit(
        &self,
        principal: &Principal,
        req: pb::SubmitBatchRequest,
    ) -> Result<pb::SubmitBatchResponse, ServiceError> {
        let key = idempotency_key(&req.idempotency_key, principal.idempotency_scope())?;
        let options = batch_options(req.options, &self.settings)?;
        let input = input_of(req.input)?;
        self.submit_input(key, input, options).await
    }

    #[instrument(skip_all, fields(batch_id = field::Empty, key = field::Empty))]
    pub(super) async fn do_submit_stream(
        &self,
        principal: &Principal,
        mut stream: Streaming<pb::SubmitBatchStreamRequest>,
    ) -> Result<pb::SubmitBatchResponse, ServiceError> {
        use submit_batch_stream_request::Chunk;
        let next = |r: Result<Option<pb::SubmitBatchStreamRequest>, Status>| {
            r.map_err(ServiceError::from_request_stream)
        };
        let header = match next(stream.message().await)?.and_then(|m| m.chunk) {
            Some(Chunk::Header(h)) => h,
            _ => {
                return Err(ServiceError::InvalidArgument(
                    "the first message of SubmitBatchStream must be a header".into(),
                ));
            }
        };
        Span::current().record("key", field::display(&header.idempotency_key));
        let key = if header.dry_run {
            header.idempotency_key.clone()
        } else {
            idempotency_key(&header.idempotency_key, principal.idempotency_scope())?
        };
        let options = batch_options(header.options, &self.settings)?;
        let catalogue = header.catalogue_format != pb::CatalogueFormat::Unspecified as i32;
        let max = self.settings.max_objects;
        if !catalogue && header.expected_object_count > max as u64 {
            return Err(PlanError::TooLarge {
                count: header.expected_object_count as usize,
                max,
            }
            .into());
        }
        let mut objects: Vec<pb::ObjectDefinition> = Vec::new();
        let mut document: Vec<u8> = Vec::new();
        // Bytes received so far: checked as each chunk arrives, so a stream over the limit is
        // refused holding at most the limit (and one message) in memory.
        let mut received: usize = 0;
        let mut receive = |bytes: usize| {
            received = received.saturating_add(bytes);
            let limit = self.settings.max_submission_bytes;
            if received > limit {
                Err(ServiceError::TooLarge(format!(
                    "the SubmitBatchStream carried {received} bytes, over the limit of {limit} \
                     bytes (--max-submission-bytes); nothing was planned"
                )))
            } else {
                Ok(())
            }
        };
        while let Some(msg) = next(stream.message().await)? {
            match msg.chunk {
                Some(Chunk::Objects(list)) if !catalogue => {
                    let count = objects.len() + list.objects.len();
                    if count > max {
                        // Stop reading: nothing beyond the cap is kept in memory.
                        return Err(PlanError::TooLarge { count, max }.into());
                    }
                    receive(prost::Message::encoded_len(&list))?;
                    objects.extend(list.objects);
                }
                Some(Chunk::Catalogue(chunk)) if catalogue => {
                    receive(chunk.content.len())?;
                    document.extend_from_slice(&chunk.content);
                }
                Some(Chunk::Objects(_) | Chunk::Catalogue(_)) => {
                    return Err(ServiceError::InvalidArgument(if catalogue {
                        "an objects chunk arrived after a header naming a catalogue format: a stream must not mix object and catalogue chunks".into()
                    } else {
                        "a catalogue chunk arrived after a header without a catalogue format: a stream must not mix object and catalogue chunks".into()
                    }));
                }
                Some(Chunk::Header(_)) => {
                    return Err(ServiceError::InvalidArgument(
                        "a second header arrived: only the first message is a header".into(),
                    ));
                }
                None => {
                    return Err(ServiceError::InvalidArgument(
                        "a SubmitBatchStream message carries no chunk".into(),
                    ));
                }
            }
        }
        if !catalogue
            && header.expected_object_count != 0
            && header.expected_object_count != objects.len() as u64
        {
            return Err(ServiceError::InvalidArgument(format!(
                "the header announced {} objects but {} arrived; a truncated upload is not planned",
                header.expected_object_count,
                objects.len()
            )));
        }
        let input = if catalogue {
            Input::Document(document)
        } else {
            Input::Objects(objects)
        };
        if header.dry_run {
            let in_flight = self.in_flight().await?;
            let planned = self.plan(key, input, options, in_flight, None).await?;
            return Ok(pb::SubmitBatchResponse {
                batch_id: String::new(),
                created: false,
                summary: Some(planned.summary),
            });
        }
        self.submit_input(key, input, options).await
    }

    /// Objects in flight (READY, RUNNING, RETRY_WAIT) in running batches, with the batch whose
    /// attempt runs them: what a new batch would coalesce onto.
    pub(super) async fn in_flight(&self) -> Result<FxHashMap<ObjectId, String>, ServiceError> {
        let map = self
            .handle
            .read(|s| {
                s.in_flight_owners()
                    .map(|(id, batch)| (id.clone(), batch.clone()))
                    .collect()
            })
            .await?;
        Ok(map)
    }

    #[instrument(skip_all)]
    pub(super) async fn do_plan_batch(
        &self,
        req: pb::PlanBatchRequest,
    ) -> Result<pb::PlanBatchResponse, ServiceError> {
        let options = batch_options(req.options, &self.settings)?;
        let input = input_of(req.input)?;
        let limit = match req.max_objects {
            0 => self.settings.plan_reply_objects,
            n => (n as usize).min(self.settings.plan_reply_objects),
        };
        let in_flight = self.in_flight().await?;
        let planned = self
            .plan(
                String::new(),
                input,
                options,
                in_flight,
                Some((limit, req.include_excluded)),
            )
            .await?;
        let (objects, omitted_count) = planned.objects.unwrap_or_default();
        Ok(pb::PlanBatchResponse {
            summary: Some(planned.summary),
            objects,
            omitted_count,
        })
    }
}

/// Re-plans a stored batch (same objects, options and submission time; loads recorded since are
/// not taken into account, the preflight rules in force are).
pub(super) fn replan(
    stored: &crate::ports::StoredBatch,
    objects: Vec<ObjectDef>,
    settings: &ServiceSettings,
) -> Option<PreparedBatch> {
    let created_at = chrono::DateTime::from_timestamp_millis(stored.created_at_ms)?;
    let ctx = submission::PlanContext::replanning(
        &settings.zone_durations_ms,
        &settings.preflight,
        created_at,
    );
    submission::prepare(
        &stored.idempotency_key,
        objects,
        stored.options.clone(),
        &ctx,
    )
    .ok()
}
