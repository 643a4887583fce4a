//! The driver's settings: limits, timeouts, zones, leases, and where it counts what happens.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strata_core::Zone;

use super::clock::{Clock, SystemClock};
use crate::metrics::Metrics;

/// Settings of the driver.
#[derive(Debug, Clone)]
pub struct DriverSettings {
    /// Largest accepted batch.
    pub max_objects: usize,
    /// Expected per-zone durations for the critical path, in ms.
    pub zone_durations_ms: BTreeMap<Zone, u64>,
    /// Zones whose topics exist from the start.
    pub zones: Vec<Zone>,
    /// Execution timeout put on each Ready.
    pub execution_timeout: Duration,
    /// Zones whose execution timeout differs.
    pub zone_execution_timeouts: BTreeMap<Zone, Duration>,
    /// How often due retries are claimed and undelivered Ready records re-published.
    pub tick: Duration,
    /// Steps a watcher may fall behind (each step's changes of a batch are one message) before
    /// it gets a resync and a fresh snapshot.
    pub watch_capacity: usize,
    /// How long an agent's lease lives without a heartbeat.
    pub lease_ttl: Duration,
    /// Results only when signed with the key of their agent's current, live lease of the
    /// object's zone (others are rejected and counted by reason: `driver/verify.rs`). Off in
    /// [`DriverSettings::default`] (component tests drive unsigned results by hand); the
    /// binary's configuration and dev mode turn it on unless told otherwise.
    pub verify_results: bool,
    /// How long a lease keeps one result signing key: the first heartbeat after it hands out a
    /// new one, and the old key signs valid results for as long again (results signed before
    /// the rotation may still be on the results topic).
    pub result_key_rotation: Duration,
    /// How long a finished batch stays in memory; after it, reads of it are answered from the
    /// store (its records and the trails stored when it finished).
    pub finished_retention: Duration,
    /// How often the topics are checked (and re-created): a broker that lost them lost every
    /// Ready in flight, which the driver then publishes again.
    pub topic_check: Duration,
    /// Where the driver counts what happens (Prometheus).
    pub metrics: Metrics,
    /// Where the driver reads the time of day ([`SystemClock`] unless a test moves time).
    pub clock: Arc<dyn Clock>,
    /// Seed of the backoff jitter (`None`: from the time of start).
    pub seed: Option<u64>,
}

/// The default of [`DriverSettings::finished_retention`]: 15 minutes.
pub const DEFAULT_FINISHED_RETENTION: Duration = Duration::from_secs(900);

/// The default of [`DriverSettings::result_key_rotation`]: an hour.
pub const DEFAULT_RESULT_KEY_ROTATION: Duration = Duration::from_secs(3600);

impl Default for DriverSettings {
    fn default() -> Self {
        Self {
            max_objects: strata_core::planner::DEFAULT_MAX_OBJECTS,
            zone_durations_ms: BTreeMap::new(),
            zones: vec![
                Zone::parse(Zone::RAW).expect("valid"),
                Zone::parse(Zone::STANDARDIZED).expect("valid"),
                Zone::parse(Zone::APPLICATION).expect("valid"),
            ],
            execution_timeout: Duration::from_secs(3600),
            zone_execution_timeouts: BTreeMap::new(),
            tick: Duration::from_millis(100),
            topic_check: Duration::from_secs(5),
            watch_capacity: 1024,
            lease_ttl: Duration::from_secs(15),
            verify_results: false,
            result_key_rotation: DEFAULT_RESULT_KEY_ROTATION,
            finished_retention: DEFAULT_FINISHED_RETENTION,
            metrics: Metrics::default(),
            clock: Arc::new(SystemClock),
            seed: None,
        }
    }
}

/// The execution timeout of one attempt in `zone`.
pub(super) fn execution_timeout(settings: &DriverSettings, zone: &Zone) -> Duration {
    settings
        .zone_execution_timeouts
        .get(zone)
        .copied()
        .unwrap_or(settings.execution_timeout)
}
