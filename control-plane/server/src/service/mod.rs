//! The `strata.v1.Orchestrator` gRPC service (`docs/design.md#grpc-api`), and the tonic services the control
//! plane serves on its gRPC port: the orchestrator (with explicit message-size limits), gRPC
//! health (`grpc.health.v1`) and server reflection (`grpc.reflection.v1` and `v1alpha`).
//!
//! The service validates requests, plans submissions on a blocking thread (a 1,000,000-object
//! batch takes about a second) and talks to the driver only through its [`Handle`]: `submit` and
//! `event` for changes, `read` closures for queries (they run between two driver steps and must
//! stay cheap). Batches the driver does not hold (finished before a restart) are answered from
//! the [`StateStore`]. It owns no scheduling state; the only thing it remembers is the reason
//! given to `CancelBatch`, per process.
//!
//! It must not touch the data plane, and must not map errors to `tonic::Status` anywhere but in
//! [`crate::error`].

pub mod agents;
mod watch;
pub(crate) mod wire;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use rustc_hash::FxHashMap;
use strata_core::catalogue::{CatalogueError, read_catalogue};
use strata_core::machine::{BatchState, Event, NodeState, Outcome};
use strata_core::model::NodeIx;
use strata_core::planner::{DEFAULT_MAX_OBJECTS, PlanError};
use strata_core::preflight::PreflightRules;
use strata_core::retry::RetryPolicy;
use strata_core::{ObjectDef, ObjectId, Zone};
pub use strata_proto::v1::agent_registry_server::SERVICE_NAME as REGISTRY_SERVICE_NAME;
pub use strata_proto::v1::orchestrator_server::SERVICE_NAME;
use strata_proto::v1::orchestrator_server::{Orchestrator, OrchestratorServer};
use strata_proto::v1::{self as pb, batch_input, submit_batch_stream_request};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::server::HealthReporter;
use tracing::{Span, field, info, instrument, warn};

use crate::batch::{self, BatchOptions, PreparedBatch, RetryRequest};
use crate::config::Config;
use crate::convert;
use crate::driver::{BatchRuntime, Handle, WatchEvent};
use crate::error::{OversizeAsResourceExhausted, ServiceError};
use crate::ports::StateStore;

/// Default largest gRPC message, both ways (the contract's default, see
/// `strata_proto::DEFAULT_MAX_MESSAGE_BYTES`). Larger batches use `SubmitBatchStream`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = strata_proto::DEFAULT_MAX_MESSAGE_BYTES;

/// Default largest catalogue document accepted by `SubmitBatchStream` (2 GiB: a 1,000,000-object
/// seed catalogue is about 1 GiB).
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 2 << 30;

/// Objects per `WatchBatch` snapshot part and most planned objects per `PlanBatch` reply.
const DEFAULT_PART_OBJECTS: usize = 10_000;

/// Rounds of store pages one list call reads to fill a page after filtering.
const MAX_STORE_PAGES: usize = 10;

/// What the service needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSettings {
    /// Largest accepted batch, in objects (beyond: `INVALID_ARGUMENT` with a `BatchRejection`).
    pub max_objects: usize,
    /// Expected duration of one object per zone, in ms, for the critical path.
    pub zone_durations_ms: BTreeMap<Zone, u64>,
    /// Largest gRPC message decoded or encoded by the orchestrator service, in bytes (beyond:
    /// `RESOURCE_EXHAUSTED`).
    pub max_message_bytes: usize,
    /// Largest catalogue document assembled from `SubmitBatchStream` chunks, in bytes (beyond:
    /// `RESOURCE_EXHAUSTED`).
    pub max_document_bytes: usize,
    /// The retry policy of a batch that overrides nothing.
    pub retry: RetryPolicy,
    /// Zones whose default retry policy differs from `retry`.
    pub zone_retry: BTreeMap<Zone, RetryPolicy>,
    /// Preflight rules per zone.
    pub preflight: BTreeMap<Zone, PreflightRules>,
    /// What the agent registry tells agents.
    pub agents: agents::AgentSettings,
    /// Objects per `WatchBatch` snapshot part.
    pub snapshot_part_objects: usize,
    /// Most planned objects in one `PlanBatch` reply (the proto's server default, 10,000).
    pub plan_reply_objects: usize,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            max_objects: DEFAULT_MAX_OBJECTS,
            zone_durations_ms: BTreeMap::new(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
            retry: RetryPolicy::default(),
            zone_retry: BTreeMap::new(),
            preflight: BTreeMap::new(),
            agents: agents::AgentSettings::default(),
            snapshot_part_objects: DEFAULT_PART_OBJECTS,
            plan_reply_objects: DEFAULT_PART_OBJECTS,
        }
    }
}

impl ServiceSettings {
    /// The settings of a validated configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_objects: config.max_objects,
            zone_durations_ms: config.zone_durations_ms.clone(),
            max_message_bytes: config.max_message_bytes,
            retry: config.retry,
            zone_retry: config.zone_retry.clone(),
            preflight: config.preflight.clone(),
            agents: agents::AgentSettings {
                zones: config.zones.clone(),
                topic_prefix: config.topic_prefix.clone(),
                bootstrap_servers: if config.agent_kafka_brokers.is_empty() {
                    &config.kafka_brokers
                } else {
                    &config.agent_kafka_brokers
                }
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
                execution_timeout: config.execution_timeout,
                zone_execution_timeouts: config.zone_execution_timeouts.clone(),
                heartbeat_interval: config.heartbeat_interval,
                lease_ttl: config.lease_ttl,
            },
            ..Self::default()
        }
    }
}

/// The `strata.v1.Orchestrator` implementation. Cheap to clone.
pub struct OrchestratorService<S: StateStore> {
    handle: Handle,
    store: Arc<S>,
    settings: Arc<ServiceSettings>,
    /// Reasons given to `CancelBatch`, by batch (shown as `Batch.state_reason`).
    cancel_reasons: Arc<Mutex<HashMap<String, String>>>,
    /// Set to true to end every `WatchBatch` stream (shutdown).
    closing: Arc<tokio::sync::watch::Sender<bool>>,
}

impl<S: StateStore> Clone for OrchestratorService<S> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
            store: self.store.clone(),
            settings: self.settings.clone(),
            cancel_reasons: self.cancel_reasons.clone(),
            closing: self.closing.clone(),
        }
    }
}

impl<S: StateStore> std::fmt::Debug for OrchestratorService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestratorService")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The tonic services of the gRPC port, ready to serve.
#[derive(Debug)]
pub struct GrpcServices {
    /// Orchestrator, health and reflection, for `Server::builder().add_routes(..)`.
    pub routes: Routes,
    /// The health reporter: `strata.v1.Orchestrator` (and the server, `""`) are SERVING.
    pub health: HealthReporter,
    closing: Arc<tokio::sync::watch::Sender<bool>>,
}

impl GrpcServices {
    /// Marks the services NOT_SERVING and ends every `WatchBatch` stream with `UNAVAILABLE`, so a
    /// graceful server shutdown does not wait for watchers. Idempotent.
    pub async fn begin_shutdown(&self) {
        begin_shutdown(&self.health, &self.closing).await;
    }

    /// Serves the routes on `listener` until `shutdown` resolves, then calls
    /// [`GrpcServices::begin_shutdown`] and finishes the calls in flight.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServiceError> {
        let GrpcServices {
            routes,
            health,
            closing,
        } = self;
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    shutdown.await;
                    begin_shutdown(&health, &closing).await;
                },
            )
            .await
            .map_err(|e| ServiceError::Internal(format!("grpc server failed: {e}")))
    }
}

async fn begin_shutdown(health: &HealthReporter, closing: &tokio::sync::watch::Sender<bool>) {
    health
        .set_service_status(SERVICE_NAME, tonic_health::ServingStatus::NotServing)
        .await;
    health
        .set_service_status(
            REGISTRY_SERVICE_NAME,
            tonic_health::ServingStatus::NotServing,
        )
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    closing.send_replace(true);
}

/// The orchestrator (limits applied, oversize mapped to `RESOURCE_EXHAUSTED`), health (SERVING)
/// and reflection services for one gRPC port.
pub async fn grpc_services<S: StateStore>(
    handle: Handle,
    store: Arc<S>,
    settings: ServiceSettings,
) -> Result<GrpcServices, ServiceError> {
    let registry = agents::AgentRegistryService::new(handle.clone(), settings.agents.clone());
    let service = OrchestratorService::new(handle, store, settings);
    let closing = service.closing.clone();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE_NAME, tonic_health::ServingStatus::Serving)
        .await;
    fn reflection(
        b: tonic_reflection::server::Builder<'static>,
    ) -> tonic_reflection::server::Builder<'static> {
        b.register_encoded_file_descriptor_set(strata_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    }
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| ServiceError::Internal(format!("reflection service: {e}")))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| ServiceError::Internal(format!("reflection service: {e}")))?;
    health
        .set_service_status(REGISTRY_SERVICE_NAME, tonic_health::ServingStatus::Serving)
        .await;
    let routes = Routes::new(OversizeAsResourceExhausted::new(service.into_server()))
        .add_service(strata_proto::v1::agent_registry_server::AgentRegistryServer::new(registry))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok(GrpcServices {
        routes,
        health,
        closing,
    })
}

/// The input of a submission.
enum Input {
    Objects(Vec<pb::ObjectDefinition>),
    Document(Vec<u8>),
}

/// A planned submission with its summary.
struct Planned {
    prepared: PreparedBatch,
    summary: pb::PlanSummary,
    /// The planned objects of a `PlanBatch` reply and how many were left out.
    objects: Option<(Vec<pb::PlannedObject>, u32)>,
}

impl<S: StateStore> OrchestratorService<S> {
    /// A service over a running driver and its store.
    pub fn new(handle: Handle, store: Arc<S>, settings: ServiceSettings) -> Self {
        Self {
            handle,
            store,
            settings: Arc::new(settings),
            cancel_reasons: Arc::default(),
            closing: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// The tonic server of this service, with the message-size limits of the settings. (Wrap it
    /// in [`OversizeAsResourceExhausted`] for the contract's status code on oversize requests;
    /// [`grpc_services`] does.)
    pub fn into_server(self) -> OrchestratorServer<Self> {
        let limit = self.settings.max_message_bytes;
        OrchestratorServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    // ----- submission -----

    /// When the objects that have a frequency were last loaded by earlier batches (the others
    /// are never skipped as fresh).
    async fn last_loaded(&self, objects: &[ObjectDef]) -> Result<batch::LastLoaded, ServiceError> {
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
    async fn plan(
        &self,
        key: String,
        input: Input,
        options: BatchOptions,
        in_flight: FxHashMap<ObjectId, String>,
        list: Option<(usize, bool)>,
    ) -> Result<Planned, ServiceError> {
        let max = self.settings.max_objects;
        let settings = self.settings.clone();
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
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("reading task failed: {e}")))??;
        let last_loaded = if options.force {
            batch::LastLoaded::default()
        } else {
            self.last_loaded(&objects).await?
        };
        tokio::task::spawn_blocking(move || {
            let ctx = batch::PlanContext {
                max_objects: max,
                durations: &settings.zone_durations_ms,
                last_loaded: &last_loaded,
                preflight: &settings.preflight,
                now: Utc::now(),
            };
            let prepared = batch::prepare(&key, objects, options, &ctx)?;
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
    async fn submit_input(
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
    async fn do_submit(
        &self,
        req: pb::SubmitBatchRequest,
    ) -> Result<pb::SubmitBatchResponse, ServiceError> {
        let key = idempotency_key(&req.idempotency_key)?;
        let options = batch_options(req.options, &self.settings)?;
        let input = input_of(req.input)?;
        self.submit_input(key, input, options).await
    }

    #[instrument(skip_all, fields(batch_id = field::Empty, key = field::Empty))]
    async fn do_submit_stream(
        &self,
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
            idempotency_key(&header.idempotency_key)?
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
        while let Some(msg) = next(stream.message().await)? {
            match msg.chunk {
                Some(Chunk::Objects(list)) if !catalogue => {
                    let count = objects.len() + list.objects.len();
                    if count > max {
                        // Stop reading: nothing beyond the cap is kept in memory.
                        return Err(PlanError::TooLarge { count, max }.into());
                    }
                    objects.extend(list.objects);
                }
                Some(Chunk::Catalogue(chunk)) if catalogue => {
                    let len = document.len() + chunk.content.len();
                    if len > self.settings.max_document_bytes {
                        return Err(ServiceError::TooLarge(format!(
                            "catalogue document of more than {len} bytes is over the limit of {} bytes",
                            self.settings.max_document_bytes
                        )));
                    }
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
    async fn in_flight(&self) -> Result<FxHashMap<ObjectId, String>, ServiceError> {
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
    async fn do_plan_batch(
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

    // ----- queries -----

    fn cancel_reason(&self, batch_id: &str) -> Option<String> {
        self.cancel_reasons
            .lock()
            .ok()
            .and_then(|m| m.get(batch_id).cloned())
    }

    /// Runs `f` on the batch if the driver holds it; `Ok(None)` if it does not.
    async fn with_batch<T: Send + 'static>(
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
    async fn not_held(&self, batch_id: &str, what: &str) -> ServiceError {
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
    async fn stored_batch(&self, batch_id: &str) -> Result<Option<pb::Batch>, ServiceError> {
        let Some((stored, head)) = self.store.get_batch(batch_id).await? else {
            return Ok(None);
        };
        let settings = self.settings.clone();
        let batch = tokio::task::spawn_blocking(move || {
            let prepared = replan(&stored, &settings);
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

    async fn batch(&self, batch_id: &str) -> Result<pb::Batch, ServiceError> {
        let reason = self.cancel_reason(batch_id);
        if let Some(b) = self
            .with_batch(batch_id, move |rt| {
                Ok(wire::batch_of(rt, reason.as_deref()))
            })
            .await?
        {
            return Ok(b);
        }
        self.stored_batch(batch_id)
            .await?
            .ok_or_else(|| ServiceError::BatchNotFound(batch_id.to_owned()))
    }

    #[instrument(skip_all, fields(batch_id = %req.batch_id))]
    async fn do_get_batch(&self, req: pb::GetBatchRequest) -> Result<pb::Batch, ServiceError> {
        let batch_id = required("batch_id", &req.batch_id)?;
        self.batch(batch_id).await
    }

    #[instrument(skip_all, fields(batch_id = %req.batch_id))]
    async fn do_get_plan(
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
        let settings = self.settings.clone();
        tokio::task::spawn_blocking(move || {
            let p = replan(&stored, &settings).ok_or_else(|| {
                ServiceError::Internal(format!("stored batch {batch_id} no longer plans"))
            })?;
            Ok(page(&p.objects, &p.plan, &p.dispositions))
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("re-planning task failed: {e}")))?
    }

    #[instrument(skip_all)]
    async fn do_list_batches(
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
    async fn do_watch(
        &self,
        req: pb::WatchBatchRequest,
    ) -> Result<ReceiverStream<Result<pb::WatchBatchResponse, Status>>, ServiceError> {
        let batch_id = required("batch_id", &req.batch_id)?.to_owned();
        let watcher = watch::Watcher {
            handle: self.handle.clone(),
            batch_id: batch_id.clone(),
            part_objects: self.settings.snapshot_part_objects,
            cancel_reasons: self.cancel_reasons.clone(),
            closing: self.closing.subscribe(),
        };
        let (tx, rx) = mpsc::channel(16);
        match watcher.snapshot().await? {
            Some(first) => {
                tokio::spawn(watcher.run(first, tx));
            }
            None => {
                // Not driven here: a finished batch yields its snapshot and ends.
                let batch = self
                    .stored_batch(&batch_id)
                    .await?
                    .ok_or_else(|| ServiceError::BatchNotFound(batch_id.clone()))?;
                if batch.state() == pb::BatchState::Running {
                    return Err(self
                        .not_held(&batch_id, "watch it on the control plane that drives it")
                        .await);
                }
                let snapshot = pb::WatchBatchResponse {
                    sequence: 1,
                    event: Some(pb::watch_batch_response::Event::Snapshot(
                        pb::BatchSnapshot {
                            batch: Some(batch),
                            objects: Vec::new(),
                            last_part: true,
                        },
                    )),
                };
                // The channel has room: this cannot wait.
                let _ = tx.send(Ok(snapshot)).await;
            }
        }
        Ok(ReceiverStream::new(rx))
    }

    /// Resolves an object id of a held batch to its node.
    fn node_of(rt: &BatchRuntime, object_id: &ObjectId) -> Result<NodeIx, ServiceError> {
        rt.node_of(object_id)
            .ok_or_else(|| ServiceError::ObjectNotFound {
                batch: rt.batch_id().to_owned(),
                object: object_id.to_string(),
            })
    }

    #[instrument(skip_all, fields(batch_id = %req.batch_id, object_id = %req.object_id))]
    async fn do_get_object(
        &self,
        req: pb::GetObjectRequest,
    ) -> Result<pb::ObjectStatus, ServiceError> {
        let batch_id = required("batch_id", &req.batch_id)?.to_owned();
        let id = object_id(&req.object_id)?;
        let held = batch_id.clone();
        match self
            .handle
            .read(move |s| {
                s.batch(&held)
                    .map(|rt| {
                        let node = Self::node_of(rt, &id)?;
                        let live = s.agents().active_in(&rt.object(node).zone) as u32;
                        Ok::<_, ServiceError>(wire::object_status(rt, node, live))
                    })
                    .transpose()
            })
            .await??
        {
            Some(s) => Ok(s),
            None => Err(self
                .not_held(
                    &batch_id,
                    "object states are kept only while a batch is driven",
                )
                .await),
        }
    }

    #[instrument(skip_all, fields(batch_id = %req.batch_id))]
    async fn do_cancel(&self, req: pb::CancelBatchRequest) -> Result<pb::Batch, ServiceError> {
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
        if !req.reason.is_empty()
            && let Ok(mut m) = self.cancel_reasons.lock()
        {
            m.insert(batch_id.clone(), req.reason.clone());
        }
        match self.handle.event(&batch_id, Event::Cancel).await? {
            Outcome::Applied => info!(%batch_id, reason = %req.reason, "batch cancelled"),
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

    #[instrument(skip_all, fields(batch_id = %req.batch_id, zone = %req.zone))]
    async fn do_list_retries(
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
    async fn do_get_retry(
        &self,
        req: pb::GetRetryRequest,
    ) -> Result<pb::GetRetryResponse, ServiceError> {
        let batch_id = required("batch_id", &req.batch_id)?.to_owned();
        let id = object_id(&req.object_id)?;
        match self
            .with_batch(&batch_id, move |rt| {
                let node = Self::node_of(rt, &id)?;
                Ok(pb::GetRetryResponse {
                    retry: Some(wire::retry_info(rt, node)),
                    attempts: wire::attempt_records(rt, node),
                })
            })
            .await?
        {
            Some(r) => Ok(r),
            None => Err(self
                .not_held(
                    &batch_id,
                    "retry state is kept only while a batch is driven",
                )
                .await),
        }
    }

    #[instrument(skip_all, fields(batch_id = %req.batch_id, object_id = %req.object_id))]
    async fn do_retry_now(&self, req: pb::RetryNowRequest) -> Result<pb::RetryInfo, ServiceError> {
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

    #[instrument(skip_all, fields(batch_id = %req.batch_id, zone = %req.zone))]
    async fn do_list_dead_letters(
        &self,
        req: pb::ListDeadLettersRequest,
    ) -> Result<pb::ListDeadLettersResponse, ServiceError> {
        let size = wire::page_size(req.page_size);
        let zone = optional_zone(&req.zone)?;
        let filters = format!("dead:{}:{}", req.batch_id, req.zone);
        let mut cursor = wire::decode_token(&req.page_token, &filters)?;
        let batch_filter = (!req.batch_id.is_empty()).then(|| req.batch_id.clone());
        let mut letters = Vec::new();
        for _ in 0..MAX_STORE_PAGES {
            let (page, next) = self
                .store
                .list_dead_letters(batch_filter.clone(), cursor.clone(), size - letters.len())
                .await?;
            cursor = next;
            let mut decoded = Vec::with_capacity(page.len());
            for stored in page {
                match <pb::DeadLetter as prost::Message>::decode(stored.payload.as_slice()) {
                    Ok(l) => {
                        if zone.as_ref().is_none_or(|z| z.as_str() == l.zone) {
                            decoded.push((stored.node, l));
                        }
                    }
                    Err(e) => warn!(
                        batch_id = %stored.batch_id,
                        node = stored.node,
                        error = %e,
                        "stored dead letter undecodable; skipped"
                    ),
                }
            }
            // Replayed objects are no longer dead: only letters of objects still DEAD (or of
            // batches this process does not drive) are listed, with their blocked descendants.
            let kept: Vec<pb::DeadLetter> = self
                .handle
                .read(move |s| {
                    decoded
                        .into_iter()
                        .filter_map(|(node, mut l)| match s.batch(&l.batch_id) {
                            None => Some(l),
                            Some(rt) => (rt.machine().state(node) == Some(NodeState::Dead)
                                && rt.object(node).id.as_str() == l.object_id)
                                .then(|| {
                                    l.blocked_descendant_count =
                                        wire::blocked_descendants(rt, node);
                                    l
                                }),
                        })
                        .collect()
                })
                .await?;
            letters.extend(kept);
            if letters.len() >= size || cursor.is_none() {
                break;
            }
        }
        Ok(pb::ListDeadLettersResponse {
            dead_letters: letters,
            next_page_token: cursor
                .map(|c| wire::encode_token(&filters, &c))
                .unwrap_or_default(),
        })
    }

    #[instrument(skip_all, fields(batch_id = %req.batch_id))]
    async fn do_replay(
        &self,
        req: pb::ReplayDeadLettersRequest,
    ) -> Result<pb::ReplayDeadLettersResponse, ServiceError> {
        let batch_id = required("batch_id", &req.batch_id)?.to_owned();
        let ids = req
            .object_ids
            .iter()
            .map(|t| object_id(t))
            .collect::<Result<Vec<_>, _>>()?;
        let budget = req.max_attempts;
        struct Prepared {
            nodes: Vec<NodeIx>,
            names: Vec<String>,
            upstream_before: u32,
            rx: broadcast::Receiver<Arc<[WatchEvent]>>,
        }
        let prepared = self
            .with_batch(&batch_id, move |rt| {
                let batch_id = &rt.batch_id();
                if rt.machine().batch_state() == BatchState::Cancelled {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "batch {batch_id} is CANCELLED: its dead objects cannot be replayed"
                    )));
                }
                let policy = rt.options().retry.max_attempts;
                if budget != 0 && (budget != policy || !rt.machine().policies().is_uniform()) {
                    return Err(ServiceError::Unsupported(format!(
                        "replaying with max_attempts {budget} is not supported: batch {batch_id} replays with its policies' attempts ({policy} outside the zones configured otherwise; send 0)"
                    )));
                }
                let nodes: Vec<NodeIx> = if ids.is_empty() {
                    rt.machine().nodes_in(NodeState::Dead).collect()
                } else {
                    let nodes = ids
                        .iter()
                        .map(|id| Self::node_of(rt, id))
                        .collect::<Result<Vec<_>, _>>()?;
                    let not_dead: Vec<String> = nodes
                        .iter()
                        .filter_map(|&n| {
                            let s = rt.machine().state(n).unwrap_or(NodeState::Pending);
                            (s != NodeState::Dead).then(|| format!("{} ({s})", rt.object(n).id))
                        })
                        .collect();
                    if !not_dead.is_empty() {
                        return Err(ServiceError::FailedPrecondition(format!(
                            "only DEAD objects can be replayed; in batch {batch_id} these are not: {}",
                            not_dead.join(", ")
                        )));
                    }
                    let mut nodes = nodes;
                    nodes.sort_unstable();
                    nodes.dedup();
                    nodes
                };
                Ok(Prepared {
                    names: nodes.iter().map(|&n| rt.object(n).id.to_string()).collect(),
                    nodes,
                    upstream_before: rt.machine().counts().get(NodeState::UpstreamFailed),
                    rx: rt.subscribe(),
                })
            })
            .await?;
        let Some(Prepared {
            nodes,
            names,
            upstream_before,
            mut rx,
        }) = prepared
        else {
            return Err(self
                .not_held(&batch_id, "replay it on the control plane that drives it")
                .await);
        };
        if nodes.is_empty() {
            return Ok(pb::ReplayDeadLettersResponse {
                replayed_object_ids: Vec::new(),
                rearmed_descendant_count: 0,
                batch: Some(self.batch(&batch_id).await?),
            });
        }
        match self
            .handle
            .event(&batch_id, Event::Replay { nodes })
            .await?
        {
            Outcome::Applied => {}
            Outcome::Ignored(_) => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "batch {batch_id} changed while replaying: none of {} is DEAD any more, or it was cancelled",
                    names.join(", ")
                )));
            }
        }
        // The step's changes were broadcast before the event's reply: count the re-armed
        // descendants among them (UPSTREAM_FAILED → PENDING happens only on replay).
        let mut rearmed = 0u32;
        let mut lagged = false;
        loop {
            match rx.try_recv() {
                Ok(events) => {
                    rearmed += events
                        .iter()
                        .filter(|e| {
                            matches!(
                                e,
                                WatchEvent::Object {
                                    from: NodeState::UpstreamFailed,
                                    to: NodeState::Pending,
                                    ..
                                }
                            )
                        })
                        .count() as u32;
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    lagged = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if lagged {
            // Too many changes to follow: the drop in UPSTREAM_FAILED objects.
            let after = self
                .with_batch(&batch_id, |rt| {
                    Ok(rt.machine().counts().get(NodeState::UpstreamFailed))
                })
                .await?
                .unwrap_or_default();
            rearmed = upstream_before.saturating_sub(after);
        }
        info!(%batch_id, replayed = names.len(), rearmed, "dead letters replayed");
        Ok(pb::ReplayDeadLettersResponse {
            replayed_object_ids: names,
            rearmed_descendant_count: rearmed,
            batch: Some(self.batch(&batch_id).await?),
        })
    }
}

/// Re-plans a stored batch (same objects, options and submission time; loads recorded since
/// and changed preflight rules are not taken into account).
fn replan(stored: &crate::ports::StoredBatch, settings: &ServiceSettings) -> Option<PreparedBatch> {
    let objects: Vec<ObjectDef> = serde_json::from_slice(&stored.objects_json).ok()?;
    let options: BatchOptions = serde_json::from_value(stored.options.clone()).ok()?;
    let created_at = chrono::DateTime::from_timestamp_millis(stored.created_at_ms)?;
    let ctx = batch::PlanContext {
        max_objects: usize::MAX,
        durations: &settings.zone_durations_ms,
        last_loaded: &Default::default(),
        preflight: &settings.preflight,
        now: created_at,
    };
    batch::prepare(&stored.idempotency_key, objects, options, &ctx).ok()
}

fn state_name(state: i32) -> &'static str {
    pb::ObjectState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("OBJECT_STATE_"))
        .unwrap_or("UNKNOWN")
}

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, ServiceError> {
    if value.trim().is_empty() {
        Err(ServiceError::InvalidArgument(format!(
            "{field} is required"
        )))
    } else {
        Ok(value)
    }
}

fn object_id(token: &str) -> Result<ObjectId, ServiceError> {
    ObjectId::parse(token)
        .map_err(|e| ServiceError::InvalidArgument(format!("object id {token:?}: {e}")))
}

fn optional_zone(token: &str) -> Result<Option<Zone>, ServiceError> {
    if token.is_empty() {
        return Ok(None);
    }
    Zone::parse(token)
        .map(Some)
        .ok_or_else(|| ServiceError::InvalidArgument(format!("zone {token:?} is not a zone name")))
}

fn idempotency_key(key: &str) -> Result<String, ServiceError> {
    if key.trim().is_empty() {
        return Err(ServiceError::InvalidArgument(
            "idempotency_key is required (e.g. a UUID per logical submission)".into(),
        ));
    }
    if key.len() > 128 {
        return Err(ServiceError::InvalidArgument(format!(
            "idempotency_key is {} bytes long; at most 128 are allowed",
            key.len()
        )));
    }
    Ok(key.to_owned())
}

fn input_of(input: Option<pb::BatchInput>) -> Result<Input, ServiceError> {
    match input.and_then(|i| i.source) {
        Some(batch_input::Source::Objects(list)) => Ok(Input::Objects(list.objects)),
        Some(batch_input::Source::Catalogue(doc)) => Ok(Input::Document(doc.content)),
        None => Err(ServiceError::InvalidArgument(
            "input is required: set objects or catalogue".into(),
        )),
    }
}

fn duration_arg(
    field: &str,
    d: &prost_types::Duration,
) -> Result<std::time::Duration, ServiceError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ServiceError::InvalidArgument(format!(
            "retry_policy.{field} must not be negative"
        )));
    }
    Ok(convert::from_duration(d))
}

/// The options of a submission: targets parsed, the retry policy overridden field by field over
/// `default` and validated, labels checked.
fn batch_options(
    options: Option<pb::SubmitOptions>,
    settings: &ServiceSettings,
) -> Result<BatchOptions, ServiceError> {
    let o = options.unwrap_or_default();
    if o.all && !o.targets.is_empty() {
        return Err(ServiceError::InvalidArgument(
            "options.all and options.targets are exclusive: set one".into(),
        ));
    }
    let targets = o
        .targets
        .iter()
        .map(|t| {
            ObjectId::parse(t)
                .map_err(|e| ServiceError::InvalidArgument(format!("target {t:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut request = RetryRequest::default();
    if let Some(p) = &o.retry_policy {
        request.max_attempts = (p.max_attempts != 0).then_some(p.max_attempts);
        if let Some(d) = &p.initial_backoff {
            request.initial_backoff = Some(duration_arg("initial_backoff", d)?);
        }
        request.multiplier = (p.multiplier != 0.0).then_some(p.multiplier);
        if let Some(d) = &p.max_backoff {
            request.max_backoff = Some(duration_arg("max_backoff", d)?);
        }
    }
    if o.max_attempts != 0 {
        request.max_attempts = Some(o.max_attempts);
    }
    let retry = request.apply(settings.retry);
    retry
        .validate()
        .map_err(|e| ServiceError::InvalidArgument(e.to_string()))?;
    let mut zone_retry = BTreeMap::new();
    for (zone, default) in &settings.zone_retry {
        let policy = request.apply(*default);
        policy
            .validate()
            .map_err(|e| ServiceError::InvalidArgument(format!("in zone {zone}: {e}")))?;
        if policy != retry {
            zone_retry.insert(zone.clone(), policy);
        }
    }
    for (k, v) in &o.labels {
        if k.is_empty() || k.len() > 63 {
            return Err(ServiceError::InvalidArgument(format!(
                "label key {k:?} must be 1 to 63 bytes long"
            )));
        }
        if v.len() > 256 {
            return Err(ServiceError::InvalidArgument(format!(
                "label {k:?} has a value of {} bytes; at most 256 are allowed",
                v.len()
            )));
        }
    }
    Ok(BatchOptions {
        targets,
        all: o.all,
        force: o.force,
        allow_external_parents: o.allow_external_parents,
        retry_request: request,
        retry,
        zone_retry,
        labels: o.labels.into_iter().collect(),
    })
}

type WatchStream = ReceiverStream<Result<pb::WatchBatchResponse, Status>>;

#[tonic::async_trait]
impl<S: StateStore> Orchestrator for OrchestratorService<S> {
    async fn submit_batch(
        &self,
        request: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        Ok(Response::new(self.do_submit(request.into_inner()).await?))
    }

    async fn submit_batch_stream(
        &self,
        request: Request<Streaming<pb::SubmitBatchStreamRequest>>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        Ok(Response::new(
            self.do_submit_stream(request.into_inner()).await?,
        ))
    }

    async fn plan_batch(
        &self,
        request: Request<pb::PlanBatchRequest>,
    ) -> Result<Response<pb::PlanBatchResponse>, Status> {
        Ok(Response::new(
            self.do_plan_batch(request.into_inner()).await?,
        ))
    }

    async fn get_plan(
        &self,
        request: Request<pb::GetPlanRequest>,
    ) -> Result<Response<pb::GetPlanResponse>, Status> {
        Ok(Response::new(self.do_get_plan(request.into_inner()).await?))
    }

    async fn get_batch(
        &self,
        request: Request<pb::GetBatchRequest>,
    ) -> Result<Response<pb::Batch>, Status> {
        Ok(Response::new(
            self.do_get_batch(request.into_inner()).await?,
        ))
    }

    async fn list_batches(
        &self,
        request: Request<pb::ListBatchesRequest>,
    ) -> Result<Response<pb::ListBatchesResponse>, Status> {
        Ok(Response::new(
            self.do_list_batches(request.into_inner()).await?,
        ))
    }

    type WatchBatchStream = WatchStream;

    async fn watch_batch(
        &self,
        request: Request<pb::WatchBatchRequest>,
    ) -> Result<Response<Self::WatchBatchStream>, Status> {
        Ok(Response::new(self.do_watch(request.into_inner()).await?))
    }

    async fn get_object(
        &self,
        request: Request<pb::GetObjectRequest>,
    ) -> Result<Response<pb::ObjectStatus>, Status> {
        Ok(Response::new(
            self.do_get_object(request.into_inner()).await?,
        ))
    }

    async fn cancel_batch(
        &self,
        request: Request<pb::CancelBatchRequest>,
    ) -> Result<Response<pb::Batch>, Status> {
        Ok(Response::new(self.do_cancel(request.into_inner()).await?))
    }

    async fn list_retries(
        &self,
        request: Request<pb::ListRetriesRequest>,
    ) -> Result<Response<pb::ListRetriesResponse>, Status> {
        Ok(Response::new(
            self.do_list_retries(request.into_inner()).await?,
        ))
    }

    async fn get_retry(
        &self,
        request: Request<pb::GetRetryRequest>,
    ) -> Result<Response<pb::GetRetryResponse>, Status> {
        Ok(Response::new(
            self.do_get_retry(request.into_inner()).await?,
        ))
    }

    async fn retry_now(
        &self,
        request: Request<pb::RetryNowRequest>,
    ) -> Result<Response<pb::RetryInfo>, Status> {
        Ok(Response::new(
            self.do_retry_now(request.into_inner()).await?,
        ))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        Ok(Response::new(
            self.do_list_dead_letters(request.into_inner()).await?,
        ))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        Ok(Response::new(self.do_replay(request.into_inner()).await?))
    }
}
