//! The `strata.v1.Orchestrator` gRPC service (`docs/design.md#grpc-api`), and the tonic services the
//! control plane serves on its gRPC port: the orchestrator (with explicit message-size limits),
//! gRPC health (`grpc.health.v1`) and server reflection (`grpc.reflection.v1` and `v1alpha`).
//!
//! One module per group of RPCs, each RPC validate → driver or store → reply:
//! `submit` (SubmitBatch, SubmitBatchStream, PlanBatch), `batches` (GetBatch, GetPlan,
//! ListBatches, CancelBatch), `objects` (GetObject), `retries` (ListRetries, GetRetry,
//! RetryNow), `dead_letters` (ListDeadLetters, ReplayDeadLetters), `watch` (WatchBatch) and
//! `agents` (the AgentRegistry service); `validate` holds every request check and `wire`
//! every conversion to the wire types.
//!
//! The service plans submissions on a blocking thread (a 1,000,000-object batch takes about a
//! second) and talks to the driver only through its [`Handle`]: `submit`, `event` and the agent
//! operations for changes, `read` closures over the driver's read-only state for queries (they
//! run between two driver steps and must stay cheap). Batches the driver does not hold (finished
//! before a restart) are answered from the [`StateStore`]. It owns no scheduling state; the only
//! thing it remembers is the reason given to `CancelBatch`, per process.
//!
//! It must not touch the data plane, and must not map errors to `tonic::Status` anywhere but in
//! [`crate::error`].

pub mod agents;
mod batches;
mod dead_letters;
mod objects;
mod retries;
mod stored;
mod submit;
mod validate;
mod watch;
pub(crate) mod wire;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use strata_core::Zone;
use strata_core::limits::ObjectLimits;
use strata_core::planner::DEFAULT_MAX_OBJECTS;
use strata_core::preflight::PreflightRules;
use strata_core::retry::RetryPolicy;
pub use strata_proto::v1::agent_registry_server::SERVICE_NAME as REGISTRY_SERVICE_NAME;
pub use strata_proto::v1::orchestrator_server::SERVICE_NAME;
use strata_proto::v1::orchestrator_server::{Orchestrator, OrchestratorServer};
use strata_proto::v1::{self as pb};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::server::HealthReporter;

use crate::auth::layer::AuthLayer;
use crate::auth::{Authenticator, principal_of};
use crate::config::Config;
use crate::driver::Handle;
use crate::error::{OversizeAsResourceExhausted, ServiceError};
use crate::ports::StateStore;
use crate::quota::{QuotaLayer, QuotaSettings, Quotas};

/// Default largest gRPC message, both ways (the contract's default, see
/// `strata_proto::DEFAULT_MAX_MESSAGE_BYTES`). Larger batches use `SubmitBatchStream`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = strata_proto::DEFAULT_MAX_MESSAGE_BYTES;

/// Default most bytes one `SubmitBatchStream` may carry (256 MiB: a 1,000,000-object seed
/// catalogue is about 212 MB, its objects as `ObjectDefinition`s less).
pub const DEFAULT_MAX_SUBMISSION_BYTES: usize = 256 << 20;

/// Default most concurrent HTTP/2 streams (calls, `WatchBatch` streams included) one connection
/// may open; a client asking for more waits for a stream to end. Without it one connection could
/// open streams until the server's memory ran out.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;

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
    /// Most bytes one `SubmitBatchStream` may carry, object chunks (encoded) or catalogue
    /// document, checked as each chunk arrives (beyond: `RESOURCE_EXHAUSTED`).
    pub max_submission_bytes: usize,
    /// Bounds on each submitted object (beyond: `INVALID_ARGUMENT`, every object named).
    pub object_limits: ObjectLimits,
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
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Per-principal call rate, calls in progress and `WatchBatch` streams.
    pub quotas: QuotaSettings,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            max_objects: DEFAULT_MAX_OBJECTS,
            zone_durations_ms: BTreeMap::new(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_submission_bytes: DEFAULT_MAX_SUBMISSION_BYTES,
            object_limits: ObjectLimits::default(),
            retry: RetryPolicy::default(),
            zone_retry: BTreeMap::new(),
            preflight: BTreeMap::new(),
            agents: agents::AgentSettings::default(),
            snapshot_part_objects: DEFAULT_PART_OBJECTS,
            plan_reply_objects: DEFAULT_PART_OBJECTS,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            quotas: QuotaSettings::default(),
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
            max_submission_bytes: config.max_submission_bytes,
            quotas: config.quotas,
            object_limits: ObjectLimits {
                object_bytes: config.max_object_bytes,
                ..ObjectLimits::default()
            },
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
    /// The batches last rebuilt from the store for reads, newest first (see `stored.rs`).
    rebuilt: stored::Rebuilt,
}

impl<S: StateStore> Clone for OrchestratorService<S> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
            store: self.store.clone(),
            settings: self.settings.clone(),
            cancel_reasons: self.cancel_reasons.clone(),
            closing: self.closing.clone(),
            rebuilt: self.rebuilt.clone(),
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
    /// Who may call (every caller, with every role, until [`GrpcServices::authenticated_by`]).
    auth: Authenticator,
    /// Most concurrent HTTP/2 streams per connection.
    max_concurrent_streams: u32,
    /// Per-principal quotas.
    quotas: Arc<Quotas>,
}

impl GrpcServices {
    /// Serves only the callers `auth` admits ([`crate::auth`]).
    pub fn authenticated_by(mut self, auth: Authenticator) -> Self {
        self.auth = auth;
        self
    }

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
        self.serve_incoming(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
    }

    /// [`Self::serve`] on the connections of `incoming` (e.g. TLS ones, [`crate::tls`]).
    pub async fn serve_incoming<IO, IE>(
        self,
        incoming: impl Stream<Item = Result<IO, IE>>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServiceError>
    where
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let GrpcServices {
            routes,
            health,
            closing,
            auth,
            max_concurrent_streams,
            quotas,
        } = self;
        tonic::transport::Server::builder()
            .max_concurrent_streams(max_concurrent_streams)
            .layer(AuthLayer::new(auth))
            .layer(QuotaLayer::new(quotas))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                begin_shutdown(&health, &closing).await;
            })
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
    let max_concurrent_streams = settings.max_concurrent_streams;
    let quotas = Quotas::new(settings.quotas);
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
        auth: Authenticator::open("no --auth-file"),
        max_concurrent_streams,
        quotas,
    })
}

impl<S: StateStore> OrchestratorService<S> {
    /// A service over a running driver and its store.
    pub fn new(handle: Handle, store: Arc<S>, settings: ServiceSettings) -> Self {
        Self {
            handle,
            store,
            settings: Arc::new(settings),
            cancel_reasons: Arc::default(),
            rebuilt: stored::Rebuilt::default(),
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

    // ----- queries -----
}

type WatchStream = ReceiverStream<Result<pb::WatchBatchResponse, Status>>;

#[tonic::async_trait]
impl<S: StateStore> Orchestrator for OrchestratorService<S> {
    async fn submit_batch(
        &self,
        request: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let principal = principal_of(&request);
        Ok(Response::new(
            self.do_submit(&principal, request.into_inner()).await?,
        ))
    }

    async fn submit_batch_stream(
        &self,
        request: Request<Streaming<pb::SubmitBatchStreamRequest>>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let principal = principal_of(&request);
        Ok(Response::new(
            self.do_submit_stream(&principal, request.into_inner())
                .await?,
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
