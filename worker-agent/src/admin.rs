//! The agent's HTTP admin port: `/metrics` (Prometheus text), `/health/liveness` (the process
//! answers), `/health/readiness` (200 when registered and consuming, else 503; the JSON body says
//! what is missing).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use strata_runtime::admin::Readiness;
pub use strata_runtime::admin::serve;

use crate::metrics::Metrics;

/// What readiness is made of, set by the agent as it goes.
#[derive(Debug, Default)]
pub struct Health {
    /// The agent holds a lease.
    pub registered: AtomicBool,
    /// The consumer has joined the zone's group (it received an assignment, possibly empty).
    pub consuming: AtomicBool,
    /// The agent is draining (SIGTERM): it takes no new work.
    pub draining: AtomicBool,
}

impl Health {
    /// Ready, or the reasons it is not.
    pub fn readiness(&self) -> Result<(), Vec<&'static str>> {
        let mut missing = Vec::new();
        if !self.registered.load(Ordering::Relaxed) {
            missing.push("not registered with the control plane");
        }
        if !self.consuming.load(Ordering::Relaxed) {
            missing.push("not consuming: the zone's consumer group is not joined yet");
        }
        if self.draining.load(Ordering::Relaxed) {
            missing.push("draining");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }
}

/// The admin routes.
pub fn router(health: Arc<Health>, metrics: Metrics) -> Router {
    strata_runtime::admin::router(
        move || std::future::ready(metrics.render()),
        move || {
            let mut details = serde_json::Map::new();
            if let Err(missing) = health.readiness() {
                details.insert("reasons".into(), missing.into());
            }
            std::future::ready(Readiness {
                ready: details.is_empty(),
                details,
            })
        },
    )
}
