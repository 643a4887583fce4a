//! The control plane's HTTP admin port (`docs/design.md#observability`): `/metrics` (Prometheus text),
//! `/health/liveness` (the process answers), `/health/readiness` (200 when the broker answers a
//! metadata request and Redis answers `PING`, each within [`CHECK_TIMEOUT`], and the driver is
//! neither stalled on a state write nor without a finished turn for [`STUCK_AFTER`]; else 503
//! with the reasons in a JSON body). A driver merely busy (a long submission, a flood of reads)
//! stays ready.
//!
//! The same checks run every [`CHECK_INTERVAL`] in the background and keep the
//! `grpc.health.v1` status of `strata.v1.Orchestrator`, `strata.v1.AgentRegistry` and the server
//! (`""`) in step: `NOT_SERVING` while not ready.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use serde_json::json;
use strata_core::Zone;
use strata_runtime::admin as runtime_admin;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::driver::Handle;
use crate::metrics::Metrics;
use crate::ports::{DataPlane, PortError, StateStore};
use crate::service::{REGISTRY_SERVICE_NAME, SERVICE_NAME};

/// Bound on each readiness check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// A driver that has not finished a turn for this long is not ready (a single step, even the
/// submission of a million objects, takes seconds).
pub const STUCK_AFTER: Duration = Duration::from_secs(60);
/// How often the gRPC health status is brought in step.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// What the admin port serves from.
pub struct Admin<D, S> {
    /// The driver.
    pub handle: Handle,
    /// The data plane (broker check).
    pub data: Arc<D>,
    /// The state store (Redis check).
    pub store: Arc<S>,
    /// The metrics.
    pub metrics: Metrics,
    /// The configured zones (reported even when they have no agent).
    pub zones: Vec<Zone>,
    /// Why the gRPC port authenticates nobody, if it does not (`--insecure`): said in the
    /// readiness body.
    pub unauthenticated: Option<&'static str>,
    /// What the gRPC port speaks: `plaintext`, `TLS` or `mutual TLS` (said in the readiness body).
    pub transport: &'static str,
}

impl<D, S> std::fmt::Debug for Admin<D, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("zones", &self.zones)
            .finish_non_exhaustive()
    }
}

impl<D, S> Clone for Admin<D, S> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
            data: self.data.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            zones: self.zones.clone(),
            unauthenticated: self.unauthenticated,
            transport: self.transport,
        }
    }
}

/// The outcome of the readiness checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// What is not ready (empty = ready).
    pub reasons: Vec<String>,
    /// Configured zones without a live agent (informational: agents come and go).
    pub zones_without_agents: Vec<String>,
    /// How the gRPC port authenticates callers.
    pub authentication: String,
    /// What the gRPC port speaks: `plaintext`, `TLS` or `mutual TLS`.
    pub transport: &'static str,
}

impl<D: DataPlane, S: StateStore> Admin<D, S> {
    /// Runs every check at once, each bounded by [`CHECK_TIMEOUT`].
    pub async fn readiness(&self) -> Readiness {
        let zones = self.zones.clone();
        let (broker, redis, driver) = tokio::join!(
            tokio::time::timeout(CHECK_TIMEOUT, self.data.ping(CHECK_TIMEOUT)),
            tokio::time::timeout(CHECK_TIMEOUT, self.store.ping()),
            tokio::time::timeout(
                CHECK_TIMEOUT,
                self.handle.read(move |s| {
                    zones
                        .iter()
                        .filter(|z| s.agents().list(Some(z), false).is_empty())
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                })
            ),
        );
        let mut reasons = Vec::new();
        match broker {
            Ok(Ok(())) => {}
            Ok(Err(e)) => reasons.push(reason("kafka", &e)),
            Err(_) => reasons.push(format!("kafka: no answer within {CHECK_TIMEOUT:?}")),
        }
        match redis {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if matches!(e, PortError::StateLost { .. }) {
                    self.metrics.redis_state_lost();
                }
                reasons.push(reason("redis", &e));
            }
            Err(_) => reasons.push(format!("redis: no answer within {CHECK_TIMEOUT:?}")),
        }
        let health = self.handle.health();
        if let Some(stall) = health.stall() {
            reasons.push(format!("driver: {stall}"));
        }
        let zones_without_agents = match driver {
            Ok(Ok(zones)) => zones,
            Ok(Err(e)) => {
                reasons.push(format!("driver: {e}"));
                Vec::new()
            }
            // Busy (a long step, a flood of reads ahead of this one): ready while it still
            // finishes turns.
            Err(_) => {
                let idle = health.since_last_turn();
                if idle > STUCK_AFTER && health.stall().is_none() {
                    reasons.push(format!("driver: no turn finished for {} s", idle.as_secs()));
                }
                Vec::new()
            }
        };
        Readiness {
            reasons,
            zones_without_agents,
            authentication: match self.unauthenticated {
                Some(why) => format!("none ({why}): every caller has every role"),
                None => "auth file (bearer tokens, client certificates)".into(),
            },
            transport: self.transport,
        }
    }

    /// The admin routes.
    pub fn router(self) -> Router {
        let metrics = self.clone();
        let ready = self;
        runtime_admin::router(
            move || {
                let admin = metrics.clone();
                async move { admin.metrics_text().await }
            },
            move || {
                let admin = ready.clone();
                async move { admin.readiness().await.into_response() }
            },
        )
    }

    async fn metrics_text(&self) -> String {
        let (metrics, zones) = (self.metrics.clone(), self.zones.clone());
        // The live agents come from the driver's registry; a driver too busy to answer leaves
        // them as they were at the last scrape.
        let observed = tokio::time::timeout(
            CHECK_TIMEOUT,
            self.handle.read(move |s| {
                let live = s.agents().list(None, false);
                metrics.set_agents_live(&zones, live.iter().map(|a| &a.zone));
            }),
        )
        .await;
        if !matches!(observed, Ok(Ok(()))) {
            warn!("metrics scrape: the driver did not answer; state gauges are stale");
        }
        self.metrics.render()
    }

    /// Keeps the gRPC health status in step with readiness until aborted.
    pub fn keep_grpc_health(self, reporter: HealthReporter) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut serving = true;
            let mut tick = tokio::time::interval(CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let r = self.readiness().await;
                let ready = r.reasons.is_empty();
                if ready == serving {
                    continue;
                }
                serving = ready;
                let status = if ready {
                    info!("ready again; gRPC health SERVING");
                    ServingStatus::Serving
                } else {
                    warn!(reasons = ?r.reasons, "not ready; gRPC health NOT_SERVING");
                    ServingStatus::NotServing
                };
                for service in [SERVICE_NAME, REGISTRY_SERVICE_NAME, ""] {
                    reporter.set_service_status(service, status).await;
                }
            }
        })
    }
}

/// `<service>: <why>`: an unavailable service's detail as is (e.g. `kafka: authentication
/// failed: SASL authentication error: …`), any other error in full.
fn reason(service: &str, e: &PortError) -> String {
    match e {
        PortError::Unavailable { detail, .. } => format!("{service}: {detail}"),
        other => format!("{service}: {other}"),
    }
}

impl Readiness {
    /// The `/health/readiness` answer: ready when nothing is missing; the body lists both.
    fn into_response(self) -> runtime_admin::Readiness {
        let mut details = serde_json::Map::new();
        details.insert("reasons".into(), json!(self.reasons));
        details.insert(
            "zones_without_agents".into(),
            json!(self.zones_without_agents),
        );
        details.insert("authentication".into(), json!(self.authentication));
        details.insert("transport".into(), json!(self.transport));
        runtime_admin::Readiness {
            ready: self.reasons.is_empty(),
            details,
        }
    }
}
