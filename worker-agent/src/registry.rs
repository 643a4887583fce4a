//! The agent's side of `strata.v1.AgentRegistry`: registration (retried with backoff until the
//! control plane answers), heartbeats and deregistration.

use std::collections::HashMap;
use std::time::Duration;

use strata_client::ClientOptions;
use strata_client::channel::{self, AuthChannel, Security};
use strata_proto::signing::{ReadyVerifier, ResultKey};
use strata_proto::v1::agent_registry_client::AgentRegistryClient;
use strata_proto::v1::{
    DeregisterRequest, HeartbeatRequest, HeartbeatResponse, InFlightAttempt, RegisterAgentRequest,
    RegisterAgentResponse,
};
use tonic::Code;
use tracing::{info, warn};

/// Bound on one registry call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest wait between registration attempts.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why the agent cannot work at all (not worth retrying).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The endpoint is not a URL, or its TLS settings or token cannot be used.
    #[error("control-plane endpoint {endpoint:?}: {error}")]
    Endpoint {
        /// The endpoint given.
        endpoint: String,
        /// Why it is not usable.
        error: String,
    },
    /// The control plane refused the registration for good (e.g. an unknown zone).
    #[error("the control plane at {endpoint} refused the registration: {message}")]
    Refused {
        /// The endpoint.
        endpoint: String,
        /// Its message (names the configured zones for an unknown zone).
        message: String,
    },
}

/// A lease: who the agent is for the control plane, and the Kafka settings that came with it.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The agent id.
    pub agent_id: String,
    /// The lease epoch.
    pub epoch: u64,
    /// How often to heartbeat.
    pub heartbeat_interval: Duration,
    /// How long the lease lives without a heartbeat.
    pub ttl: Duration,
    /// The zone's Ready topic.
    pub ready_topic: String,
    /// The results topic.
    pub results_topic: String,
    /// The zone's consumer group.
    pub consumer_group: String,
    /// Bootstrap servers as seen by agents (empty = use the agent's own).
    pub bootstrap_servers: Vec<String>,
    /// The zone's execution timeout for one attempt.
    pub execution_timeout: Duration,
    /// Changes when the control plane created the topics again (0 = not known).
    pub topics_generation: u64,
    /// The key this lease's results are signed with (none: results go unsigned, for a control
    /// plane that does not verify them; only a [`crate::ports::FixedLease`] has none).
    pub result_key: Option<ResultKey>,
    /// The control plane's public key every Ready must be signed with (none: Ready records are
    /// not verified; only a [`crate::ports::FixedLease`] has none).
    pub ready_key: Option<ReadyVerifier>,
}

impl Lease {
    /// The lease of a registration reply; an error unless it carries both keys (a control plane
    /// that sends none predates signed records).
    fn from_response(r: RegisterAgentResponse) -> Result<Self, String> {
        let result_key = ResultKey::from_slice(&r.result_signing_key).ok_or(
            "the registration reply carries no 32-byte result signing key (is the control plane \
             older than this agent?)",
        )?;
        let ready_key = ReadyVerifier::from_slice(&r.ready_verify_key).ok_or(
            "the registration reply carries no Ed25519 Ready verify key (is the control plane \
             older than this agent?)",
        )?;
        let duration = |d: Option<prost_types::Duration>, default: Duration| {
            d.and_then(|d| Duration::try_from(d).ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(default)
        };
        Ok(Self {
            agent_id: r.agent_id,
            epoch: r.lease_epoch,
            heartbeat_interval: duration(r.heartbeat_interval, Duration::from_secs(3)),
            ttl: duration(r.lease_ttl, Duration::from_secs(15)),
            ready_topic: r.ready_topic,
            results_topic: r.results_topic,
            consumer_group: r.consumer_group,
            bootstrap_servers: r.bootstrap_servers,
            execution_timeout: duration(r.execution_timeout, Duration::from_secs(3600)),
            topics_generation: r.topics_generation,
            result_key: Some(result_key),
            ready_key: Some(ready_key),
        })
    }
}

/// How a heartbeat went.
#[derive(Debug)]
pub enum Beat {
    /// Renewed.
    Renewed(HeartbeatResponse),
    /// The lease is gone (expired, stale epoch, unknown agent): stop, drop results, register
    /// again.
    LeaseLost(String),
    /// No answer (the control plane is down or slow); the lease may still be alive.
    Unavailable(String),
}

/// What the agent tells the control plane about itself.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Its zone.
    pub zone: String,
    /// Its capacity.
    pub capacity: u32,
    /// Its host name.
    pub hostname: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
}

/// A client of the control plane's registry.
#[derive(Debug, Clone)]
pub struct Registry {
    client: AgentRegistryClient<AuthChannel>,
    endpoint: String,
}

impl Registry {
    /// A client of `endpoint` with `security` (TLS, a client certificate, a bearer token: the
    /// Rust client's channel, [`strata_client::channel`]). Connects lazily, so a control plane
    /// that is not up yet is fine; a CA, certificate, key or token that cannot be used is an
    /// error now.
    pub fn new(endpoint: &str, security: Security) -> Result<Self, RegistryError> {
        let options = ClientOptions {
            timeout: CALL_TIMEOUT,
            connect_timeout: CALL_TIMEOUT,
            security,
            ..ClientOptions::default()
        };
        let (endpoint, channel) =
            channel::connect(endpoint, &options).map_err(|e| RegistryError::Endpoint {
                endpoint: endpoint.to_owned(),
                error: e.to_string(),
            })?;
        Ok(Self {
            client: AgentRegistryClient::new(channel),
            endpoint,
        })
    }

    /// Registers, retrying with exponential backoff while the control plane is unreachable or
    /// unavailable, until `stop` resolves (`Ok(None)`). A refusal that retrying cannot fix
    /// (`INVALID_ARGUMENT`, `PERMISSION_DENIED`, …) is an error.
    pub async fn register(
        &self,
        me: &Registration,
        stop: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<Option<Lease>, RegistryError> {
        let mut backoff = BACKOFF_FIRST;
        let mut attempts = 0u32;
        loop {
            let request = RegisterAgentRequest {
                zone: me.zone.clone(),
                capacity: me.capacity,
                version: env!("CARGO_PKG_VERSION").into(),
                hostname: me.hostname.clone(),
                labels: me.labels.clone(),
            };
            let mut client = self.client.clone();
            let answer = tokio::select! {
                () = &mut *stop => return Ok(None),
                a = client.register_agent(request) => a,
            };
            attempts += 1;
            match answer {
                Ok(r) => {
                    let lease = Lease::from_response(r.into_inner()).map_err(|message| {
                        RegistryError::Refused {
                            endpoint: self.endpoint.clone(),
                            message,
                        }
                    })?;
                    info!(agent_id = %lease.agent_id, lease_epoch = lease.epoch, zone = %me.zone, ready_topic = %lease.ready_topic, attempts, "agent registered");
                    return Ok(Some(lease));
                }
                Err(s) if retryable(s.code()) => {
                    if attempts == 1 || attempts.is_power_of_two() {
                        warn!(endpoint = %self.endpoint, code = ?s.code(), error = %channel::error_chain(&s), attempts, "control plane not answering; registering again with backoff");
                    }
                }
                Err(s) => {
                    return Err(RegistryError::Refused {
                        endpoint: self.endpoint.clone(),
                        message: format!("{:?}: {}", s.code(), s.message()),
                    });
                }
            }
            tokio::select! {
                () = &mut *stop => return Ok(None),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One heartbeat.
    pub async fn heartbeat(
        &self,
        lease: &Lease,
        in_flight: Vec<InFlightAttempt>,
        draining: bool,
    ) -> Beat {
        let request = HeartbeatRequest {
            agent_id: lease.agent_id.clone(),
            lease_epoch: lease.epoch,
            in_flight,
            draining,
        };
        match self.client.clone().heartbeat(request).await {
            Ok(r) => Beat::Renewed(r.into_inner()),
            Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                Beat::LeaseLost(s.message().to_owned())
            }
            Err(s) => Beat::Unavailable(format!("{:?}: {}", s.code(), channel::error_chain(&s))),
        }
    }

    /// Ends the lease; returns how many attempts the control plane handed back.
    pub async fn deregister(&self, lease: &Lease, reason: &str) -> Result<u32, String> {
        self.client
            .clone()
            .deregister(DeregisterRequest {
                agent_id: lease.agent_id.clone(),
                lease_epoch: lease.epoch,
                reason: reason.into(),
            })
            .await
            .map(|r| r.into_inner().handed_back_count)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }
}

/// Codes that mean "not now" rather than "never".
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
    )
}
