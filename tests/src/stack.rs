//! The whole system for a test: a broker ([`TestBroker`]: Apache Kafka by default, the run's
//! shared one when there is one), a Redis, the real `strata-control-plane` binary (in the test's
//! own topic prefix and consumer group on that broker) and a gRPC client of it, plus helpers to
//! start real agents and to read a batch's outcome. [`Stack::start_tls`] serves gRPC over TLS
//! (the client trusts its CA).

use std::time::{Duration, Instant};

use anyhow::ensure;
use strata_client::{AuthChannel, ClientOptions, Security};
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use strata_proto::v1::{self as pb};

use crate::control_plane::{ControlPlane, GrpcTls};
use crate::worker_agent::WorkerAgent;
use crate::{RedisServer, TestBroker, within};

/// Bound on the waits of a [`Stack`] (start-ups, a batch running to its end).
pub const STACK_WAIT: Duration = Duration::from_secs(120);

/// A broker, a Redis, a control plane, and a gRPC client of it. Dropped in reverse: the control
/// plane dies before its services.
#[derive(Debug)]
pub struct Stack {
    /// The control plane.
    pub cp: ControlPlane,
    /// A client of its `Orchestrator` service.
    pub client: OrchestratorClient<AuthChannel>,
    /// Its Redis (declared after the control plane: dropped after it).
    pub redis: RedisServer,
    /// Its broker (topics: `broker.topic_prefix()`).
    pub broker: TestBroker,
}

impl Stack {
    /// Starts everything; `flags` go to the control plane (besides broker, topic prefix,
    /// consumer group, Redis and address).
    pub async fn start(flags: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(flags, None).await
    }

    /// [`Self::start`] with gRPC over `tls`.
    pub async fn start_tls(flags: &[&str], tls: GrpcTls) -> anyhow::Result<Self> {
        Self::start_with(flags, Some(tls)).await
    }

    async fn start_with(flags: &[&str], tls: Option<GrpcTls>) -> anyhow::Result<Self> {
        let broker = within(STACK_WAIT, "start the broker", TestBroker::start()).await??;
        let redis = within(STACK_WAIT, "start redis", RedisServer::start()).await??;
        let cp = match tls {
            Some(tls) => ControlPlane::start_tls_on(&broker, &redis.url(), tls, flags).await?,
            None => ControlPlane::start_on(&broker, &redis.url(), flags, &[]).await?,
        };
        let options = ClientOptions {
            security: Security {
                ca: cp.tls().map(|t| t.ca.clone()),
                ..Security::default()
            },
            ..ClientOptions::default()
        };
        let (_, channel) = strata_client::channel::connect(&cp.endpoint(), &options)?;
        let client = OrchestratorClient::new(channel);
        Ok(Self {
            cp,
            client,
            redis,
            broker,
        })
    }

    /// The control plane's endpoint.
    pub fn endpoint(&self) -> String {
        self.cp.endpoint()
    }

    /// Starts a real agent for `zone` against this control plane (see [`WorkerAgent::start`]).
    pub fn agent(
        &self,
        name: &str,
        zone: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<WorkerAgent> {
        WorkerAgent::start(name, &self.cp.endpoint(), zone, args, env)
    }

    /// Submits `objects` (every one a target, `--all`) under `key`; returns the batch id.
    pub async fn submit(
        &mut self,
        key: &str,
        objects: Vec<pb::ObjectDefinition>,
    ) -> anyhow::Result<String> {
        let request = pb::SubmitBatchRequest {
            idempotency_key: key.into(),
            input: Some(pb::BatchInput {
                source: Some(pb::batch_input::Source::Objects(pb::ObjectList { objects })),
            }),
            options: Some(pb::SubmitOptions {
                all: true,
                ..Default::default()
            }),
        };
        let response = within(STACK_WAIT, "submit", self.client.submit_batch(request))
            .await??
            .into_inner();
        Ok(response.batch_id)
    }

    /// Polls until the batch is terminal (bounded by [`STACK_WAIT`]).
    pub async fn wait_terminal(&mut self, batch_id: &str) -> anyhow::Result<pb::Batch> {
        let started = Instant::now();
        loop {
            let batch = self.batch(batch_id).await?;
            if batch.state() != pb::BatchState::Running {
                return Ok(batch);
            }
            ensure!(
                started.elapsed() < STACK_WAIT,
                "batch {batch_id} still RUNNING after {STACK_WAIT:?}: {:?}; control plane log:\n{}",
                batch.counts,
                self.cp.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET path` on the control plane's admin port: (status, body).
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        crate::worker_agent::http_get(self.cp.admin_port(), path).await
    }

    /// `GetBatch`.
    pub async fn batch(&mut self, batch_id: &str) -> anyhow::Result<pb::Batch> {
        Ok(self
            .client
            .get_batch(pb::GetBatchRequest {
                batch_id: batch_id.into(),
            })
            .await?
            .into_inner())
    }

    /// Polls until the batch is in `state` (bounded by [`STACK_WAIT`]); the error shows its
    /// counts and the control plane's log.
    pub async fn wait_state(
        &mut self,
        batch_id: &str,
        state: pb::BatchState,
    ) -> anyhow::Result<pb::Batch> {
        let started = Instant::now();
        loop {
            let batch = self.batch(batch_id).await?;
            if batch.state() == state {
                return Ok(batch);
            }
            ensure!(
                started.elapsed() < STACK_WAIT,
                "batch {batch_id} is {:?}, not {state:?}, after {STACK_WAIT:?}: {:?}; control \
                 plane log:\n{}",
                batch.state(),
                batch.counts,
                self.cp.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GetObject`.
    pub async fn object(
        &mut self,
        batch_id: &str,
        object_id: &str,
    ) -> anyhow::Result<pb::ObjectStatus> {
        Ok(self
            .client
            .get_object(pb::GetObjectRequest {
                batch_id: batch_id.into(),
                object_id: object_id.into(),
            })
            .await?
            .into_inner())
    }
}

/// The number of objects of `batch` in `state`, over every zone.
pub fn count(batch: &pb::Batch, state: pb::ObjectState) -> u32 {
    batch
        .counts
        .iter()
        .filter(|c| c.state() == state)
        .map(|c| c.count)
        .sum()
}
