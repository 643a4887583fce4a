//! `strata.v1.AgentRegistry`: worker agents register for a zone, hold a lease by heartbeating,
//! and deregister after draining. The registry itself ([`strata_core::agents::Registry`]) lives
//! in the driver, so that an expired lease turns into lost attempts in the same loop that owns
//! the batches.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_core::Zone;
use strata_core::agents::{Agent, AgentState, HeldAttempt, LeaseError, Registration};
use strata_proto::kafka;
use strata_proto::v1::{self as pb, agent_registry_server::AgentRegistry};
use tonic::{Request, Response, Status};
use tracing::info;

use super::validate;
use crate::auth::principal_of;
use crate::convert;
use crate::driver::{Handle, Renewal};
use crate::error::ServiceError;

/// What the registry tells agents besides their lease.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    /// Zones agents may register for.
    pub zones: Vec<Zone>,
    /// Topic prefix (`<prefix>.ready.<zone>`, `<prefix>.results`).
    pub topic_prefix: String,
    /// Bootstrap servers as agents see them (empty: agents use their own configuration).
    pub bootstrap_servers: Vec<String>,
    /// How often agents heartbeat.
    pub heartbeat_interval: Duration,
    /// How long a lease lives without a heartbeat (the driver's, for the reply).
    pub lease_ttl: Duration,
    /// Default execution timeout of an attempt.
    pub execution_timeout: Duration,
    /// Zones whose execution timeout differs.
    pub zone_execution_timeouts: BTreeMap<Zone, Duration>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            zones: [Zone::RAW, Zone::STANDARDIZED, Zone::APPLICATION]
                .iter()
                .filter_map(|z| Zone::parse(z))
                .collect(),
            topic_prefix: strata_proto::kafka::DEFAULT_TOPIC_PREFIX.into(),
            bootstrap_servers: Vec::new(),
            heartbeat_interval: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(15),
            execution_timeout: Duration::from_secs(3600),
            zone_execution_timeouts: BTreeMap::new(),
        }
    }
}

/// The `AgentRegistry` service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AgentRegistryService {
    handle: Handle,
    settings: std::sync::Arc<AgentSettings>,
    /// Makes agent ids unique across control-plane restarts.
    nonce: u64,
}

impl AgentRegistryService {
    /// The service over the driver behind `handle`.
    pub fn new(handle: Handle, settings: AgentSettings) -> Self {
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self {
            handle,
            settings: std::sync::Arc::new(settings),
            nonce,
        }
    }
}

fn lease_error(e: LeaseError) -> ServiceError {
    match e {
        LeaseError::UnknownAgent(id) => ServiceError::AgentNotFound(id),
        e @ LeaseError::NotHolder { .. } => ServiceError::PermissionDenied(e.to_string()),
        e @ LeaseError::TooManyLeases { .. } => ServiceError::TooLarge(e.to_string()),
        e => ServiceError::FailedPrecondition(e.to_string()),
    }
}

fn held(attempts: Vec<pb::InFlightAttempt>) -> Vec<HeldAttempt> {
    attempts
        .into_iter()
        .map(|a| HeldAttempt {
            batch_id: a.batch_id,
            object_id: a.object_id,
            attempt: a.attempt,
            dispatch_epoch: a.dispatch_epoch,
        })
        .collect()
}

fn same_attempt(h: &HeldAttempt, a: &pb::InFlightAttempt) -> bool {
    h.batch_id == a.batch_id
        && h.object_id == a.object_id
        && h.attempt == a.attempt
        && h.dispatch_epoch == a.dispatch_epoch
}

fn agent_info(a: &Agent) -> pb::AgentInfo {
    pb::AgentInfo {
        agent_id: a.id.clone(),
        zone: a.zone.to_string(),
        hostname: a.hostname.clone(),
        version: a.version.clone(),
        capacity: a.capacity,
        in_flight: a.in_flight.len() as u32,
        lease_epoch: a.lease_epoch,
        registered_at: Some(convert::timestamp(a.registered_at)),
        last_heartbeat_at: a.last_heartbeat_at.map(convert::timestamp),
        state: match a.state {
            AgentState::Active => pb::AgentState::Active,
            AgentState::Draining => pb::AgentState::Draining,
            AgentState::Expired => pb::AgentState::Expired,
            AgentState::Deregistered => pb::AgentState::Deregistered,
        } as i32,
        lease_expires_at: Some(convert::timestamp(a.expires_at)),
        labels: a
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

#[tonic::async_trait]
impl AgentRegistry for AgentRegistryService {
    async fn register_agent(
        &self,
        request: Request<pb::RegisterAgentRequest>,
    ) -> Result<Response<pb::RegisterAgentResponse>, Status> {
        let principal = principal_of(&request);
        let over_tls = crate::tls::over_tls(&request);
        let req = request.into_inner();
        let configured: Vec<String> = self
            .settings
            .zones
            .iter()
            .map(ToString::to_string)
            .collect();
        let zone = Zone::parse(&req.zone)
            .filter(|z| self.settings.zones.contains(z))
            .ok_or_else(|| {
                ServiceError::InvalidArgument(format!(
                    "zone {:?} is not a configured zone (configured: {})",
                    req.zone,
                    configured.join(", ")
                ))
            })?;
        if !principal.is_agent_of(&zone) {
            return Err(ServiceError::PermissionDenied(format!(
                "principal {:?} may not register agents of zone {zone}: it needs agent:{zone}",
                principal.name()
            ))
            .into());
        }
        validate::registration(&req)?;
        if !(over_tls || principal.is_open()) {
            return Err(ServiceError::FailedPrecondition(
                "RegisterAgent hands out the lease's result signing key, which is only sent over \
                 TLS: configure the control plane's gRPC TLS (--tls-cert, --tls-key) and connect \
                 the agent with https://"
                    .into(),
            )
            .into());
        }
        let result_key = crate::keys::new_lease_key().map_err(ServiceError::Internal)?;
        let reg = Registration {
            zone: Some(zone.clone()),
            capacity: req.capacity,
            version: req.version,
            hostname: req.hostname,
            labels: req.labels.into_iter().collect(),
            owner: principal.name().to_owned(),
            result_key: Some(result_key.clone()),
        };
        let per_principal =
            (principal.idempotency_scope().is_some()).then_some(validate::MAX_LEASES_PER_PRINCIPAL);
        let granted = self
            .handle
            .register_agent(zone.clone(), reg, self.nonce, per_principal)
            .await
            .map_err(ServiceError::from)?
            .map_err(lease_error)?;
        let agent = &granted.agent;
        info!(agent_id = %agent.id, zone = %agent.zone, capacity = agent.capacity, hostname = %agent.hostname, "agent registered");
        let prefix = &self.settings.topic_prefix;
        Ok(Response::new(pb::RegisterAgentResponse {
            agent_id: agent.id.clone(),
            lease_epoch: agent.lease_epoch,
            heartbeat_interval: Some(convert::duration(self.settings.heartbeat_interval)),
            lease_ttl: Some(convert::duration(self.settings.lease_ttl)),
            ready_topic: kafka::ready_topic(prefix, zone.as_str()),
            results_topic: kafka::results_topic(prefix),
            consumer_group: kafka::agent_group(prefix, zone.as_str()),
            bootstrap_servers: self.settings.bootstrap_servers.clone(),
            execution_timeout: Some(convert::duration(
                self.settings
                    .zone_execution_timeouts
                    .get(&zone)
                    .copied()
                    .unwrap_or(self.settings.execution_timeout),
            )),
            result_signing_key: result_key.as_bytes().to_vec(),
            topics_generation: granted.topics_generation,
            ready_verify_key: granted.ready_verify_key.to_vec(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let principal = principal_of(&request);
        let keys_may_travel = crate::tls::over_tls(&request) || principal.is_open();
        let req = request.into_inner();
        validate::heartbeat(&req)?;
        let in_flight = req.in_flight;
        let reply = self
            .handle
            .heartbeat(
                req.agent_id,
                req.lease_epoch,
                principal.name().to_owned(),
                Renewal {
                    held: held(in_flight.clone()),
                    draining: req.draining,
                    rotate_keys: keys_may_travel,
                },
            )
            .await
            .map_err(ServiceError::from)?
            .map_err(lease_error)?;
        Ok(Response::new(pb::HeartbeatResponse {
            lease_expires_at: Some(convert::timestamp(reply.lease_expires_at)),
            drain: false,
            // The agent's own entries, as it reported them.
            abandon: in_flight
                .into_iter()
                .filter(|a| reply.abandon.iter().any(|h| same_attempt(h, a)))
                .collect(),
            heartbeat_interval: None,
            topics_generation: reply.topics_generation,
            result_signing_key: reply
                .result_key
                .map(|k| k.as_bytes().to_vec())
                .unwrap_or_default(),
        }))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let principal = principal_of(&request);
        let req = request.into_inner();
        let agent = req.agent_id.clone();
        let reason = validate::reason(req.reason);
        let handed_back = self
            .handle
            .deregister(req.agent_id, req.lease_epoch, principal.name().to_owned())
            .await
            .map_err(ServiceError::from)?
            .map_err(lease_error)?;
        info!(agent_id = %agent, %reason, handed_back, "agent deregistered");
        Ok(Response::new(pb::DeregisterResponse {
            handed_back_count: handed_back,
        }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let req = request.into_inner();
        let zone = if req.zone.is_empty() {
            None
        } else {
            Some(Zone::parse(&req.zone).ok_or_else(|| {
                ServiceError::InvalidArgument(format!("{:?} is not a zone name", req.zone))
            })?)
        };
        let include = req.include_inactive;
        let agents = self
            .handle
            .read(move |s| {
                s.agents()
                    .list(zone.as_ref(), include)
                    .into_iter()
                    .map(agent_info)
                    .collect()
            })
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }
}
