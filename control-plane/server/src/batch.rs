//! Preparing a submission: the options of a batch, planning it, the initial disposition of every
//! planned object (run, skipped as fresh, rejected by preflight), the batch id and the content
//! digest used for idempotency. Pure apart from the clock value passed in; the service runs it on
//! a blocking thread (a 1,000,000-object batch takes about a second), and a restarted driver runs
//! it again to rebuild a batch from its stored objects.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use strata_core::freshness::Frequency;
use strata_core::machine::InitialDisposition;
use strata_core::planner::{Plan, PlanError, PlanRequest, Targets, plan};
use strata_core::retry::RetryPolicy;
use strata_core::{ObjectDef, ObjectId, Zone};

/// What the user asked for besides the objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct BatchOptions {
    /// Explicit targets (empty = default targets).
    pub targets: Vec<ObjectId>,
    /// Run every object of the batch.
    pub all: bool,
    /// Re-run objects that are fresh.
    pub force: bool,
    /// Treat unknown parents as external and satisfied.
    pub allow_external_parents: bool,
    /// Retry policy of this batch.
    pub retry: RetryPolicy,
    /// Free labels.
    pub labels: BTreeMap<String, String>,
}

impl BatchOptions {
    /// The planner request these options describe.
    pub fn plan_request(&self, max_objects: usize, durations: &BTreeMap<Zone, u64>) -> PlanRequest {
        PlanRequest {
            targets: if self.all {
                Targets::All
            } else if self.targets.is_empty() {
                Targets::Default
            } else {
                Targets::Ids(self.targets.clone())
            },
            allow_external_parents: self.allow_external_parents,
            max_objects,
            zone_durations_ms: durations.clone(),
        }
    }
}

/// A planned submission, ready for the driver.
#[derive(Debug)]
pub struct PreparedBatch {
    /// Batch id (derived from the idempotency key).
    pub batch_id: String,
    /// The idempotency key.
    pub idempotency_key: String,
    /// Digest of objects and options.
    pub content_hash: String,
    /// Options.
    pub options: BatchOptions,
    /// The submitted objects.
    pub objects: Vec<ObjectDef>,
    /// Their plan.
    pub plan: Plan,
    /// Initial disposition of each planned node.
    pub dispositions: Vec<InitialDisposition>,
    /// Submission time.
    pub created_at: DateTime<Utc>,
}

/// The batch id of an idempotency key: the same key always names the same batch.
pub fn batch_id_for(idempotency_key: &str) -> String {
    let digest = Sha256::digest(idempotency_key.as_bytes());
    let hex: String = digest.iter().take(10).map(|b| format!("{b:02x}")).collect();
    format!("b-{hex}")
}

/// When objects were last loaded by earlier batches (the store's record), by id.
pub type LastLoaded = FxHashMap<ObjectId, DateTime<Utc>>;

/// Plans a submission and decides each object's initial disposition. An object counts as loaded
/// at the later of its submitted `last_loaded_at` and `last_loaded[id]`.
pub fn prepare(
    idempotency_key: &str,
    objects: Vec<ObjectDef>,
    options: BatchOptions,
    max_objects: usize,
    durations: &BTreeMap<Zone, u64>,
    last_loaded: &LastLoaded,
    now: DateTime<Utc>,
) -> Result<PreparedBatch, PlanError> {
    let plan = plan(&objects, &options.plan_request(max_objects, durations))?;
    let dispositions = dispositions(&objects, &plan, options.force, last_loaded, now);
    let content_hash = content_hash(&plan.plan_hash, &options);
    Ok(PreparedBatch {
        batch_id: batch_id_for(idempotency_key),
        idempotency_key: idempotency_key.to_owned(),
        content_hash,
        options,
        objects,
        plan,
        dispositions,
        created_at: now,
    })
}

/// Disabled objects are rejected by preflight; fresh ones are skipped unless forced.
pub fn dispositions(
    objects: &[ObjectDef],
    plan: &Plan,
    force: bool,
    last_loaded: &LastLoaded,
    now: DateTime<Utc>,
) -> Vec<InitialDisposition> {
    let mut frequencies: FxHashMap<&str, Option<Frequency>> = FxHashMap::default();
    (0..plan.len() as u32)
        .map(|node| {
            let o = plan.object(objects, node);
            if !o.enabled {
                return InitialDisposition::PreflightRejected {
                    reason: format!("object {} is disabled", o.id),
                };
            }
            let loaded_at = o.last_loaded_at.max(last_loaded.get(&o.id).copied());
            if !force && let (Some(freq), Some(_)) = (o.frequency.as_deref(), loaded_at) {
                let f = frequencies
                    .entry(freq)
                    .or_insert_with(|| Frequency::parse(freq).ok());
                if f.as_ref().is_some_and(|f| f.is_fresh(loaded_at, now)) {
                    return InitialDisposition::SkippedFresh;
                }
            }
            InitialDisposition::Run
        })
        .collect()
}

fn content_hash(plan_hash: &str, options: &BatchOptions) -> String {
    let mut h = Sha256::new();
    h.update(plan_hash.as_bytes());
    h.update(serde_json::to_vec(options).unwrap_or_default());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
