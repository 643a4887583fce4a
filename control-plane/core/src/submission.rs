//! Preparing a submission: the options of a batch, planning it, the initial disposition of every
//! planned object (run, skipped as fresh, rejected by preflight), the batch id and the content
//! digest used for idempotency. Pure: the submission time is passed in. The control plane runs it
//! on a blocking thread (a 1,000,000-object batch takes about a second) when a batch is
//! submitted, and again ([`PlanContext::replanning`]) to rebuild a stored batch after a restart
//! or to answer queries about a batch it does not drive.

use std::collections::BTreeMap;

use crate::freshness::Frequency;
use crate::machine::InitialDisposition;
use crate::model::NodeIx;
use crate::planner::{Plan, PlanError, PlanRequest, Targets, plan};
use crate::preflight::PreflightRules;
use crate::retry::{NodePolicies, RetryPolicy};
use crate::{ObjectDef, ObjectId, Zone};
use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    /// What the submission asked of the retry policy (the content digest covers this, not the
    /// configuration it was resolved against).
    #[serde(default)]
    pub retry_request: RetryRequest,
    /// Retry policy of this batch's objects: the configured default with the request applied.
    pub retry: RetryPolicy,
    /// Zones whose configured defaults differ, with the request applied to them (resolved at
    /// submission, so a restart keeps the batch's policies whatever the configuration says).
    #[serde(default)]
    pub zone_retry: BTreeMap<Zone, RetryPolicy>,
    /// Free labels.
    pub labels: BTreeMap<String, String>,
}

/// The retry settings a submission overrides (unset: the zone's or the global default).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct RetryRequest {
    /// Total attempts.
    pub max_attempts: Option<u32>,
    /// Ceiling of the first backoff.
    pub initial_backoff: Option<std::time::Duration>,
    /// Growth of the ceiling.
    pub multiplier: Option<f64>,
    /// Cap of the ceiling.
    pub max_backoff: Option<std::time::Duration>,
}

impl RetryRequest {
    /// `base` with the requested settings applied.
    pub fn apply(&self, base: RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(base.max_attempts),
            initial_backoff: self.initial_backoff.unwrap_or(base.initial_backoff),
            multiplier: self.multiplier.unwrap_or(base.multiplier),
            max_backoff: self.max_backoff.unwrap_or(base.max_backoff),
        }
    }
}

/// What planning a submission depends on besides the submission itself.
#[derive(Debug, Clone, Copy)]
pub struct PlanContext<'a> {
    /// Largest accepted batch.
    pub max_objects: usize,
    /// Expected duration per zone (critical path).
    pub durations: &'a BTreeMap<Zone, u64>,
    /// When objects were last loaded by earlier batches.
    pub last_loaded: &'a LastLoaded,
    /// Preflight rules per zone (zones without rules reject only disabled objects).
    pub preflight: &'a BTreeMap<Zone, PreflightRules>,
    /// The submission time.
    pub now: DateTime<Utc>,
}

impl<'a> PlanContext<'a> {
    /// The context of planning a stored batch again: its own submission time, no size limit and
    /// no earlier loads (what changed since does not change the batch), and `preflight` — the
    /// rules in force (a restored batch takes each object's disposition from its stored record
    /// and passes none).
    pub fn replanning(
        durations: &'a BTreeMap<Zone, u64>,
        preflight: &'a BTreeMap<Zone, PreflightRules>,
        created_at: DateTime<Utc>,
    ) -> Self {
        static NONE_LOADED: std::sync::LazyLock<LastLoaded> =
            std::sync::LazyLock::new(LastLoaded::default);
        Self {
            max_objects: usize::MAX,
            durations,
            last_loaded: &NONE_LOADED,
            preflight,
            now: created_at,
        }
    }
}

impl BatchOptions {
    /// The retry policy of each planned node: its zone's, else the batch's.
    pub fn node_policies(&self, objects: &[ObjectDef], plan: &Plan) -> NodePolicies {
        if self.zone_retry.is_empty() {
            return self.retry.into();
        }
        let mut table = vec![self.retry];
        let zones: Vec<&Zone> = self.zone_retry.keys().collect();
        table.extend(self.zone_retry.values().copied());
        let class = (0..plan.len() as u32)
            .map(|node| {
                let zone = &plan.object(objects, node).zone;
                zones.iter().position(|z| *z == zone).map_or(0, |i| i + 1) as u8
            })
            .collect();
        // At most 255 configured zones differ: `Config::validate` refuses more.
        NodePolicies::per_node(table, class).unwrap_or_else(|_| self.retry.into())
    }
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
    /// Batch id (from the idempotency key and the creation time: [`batch_id_for`]).
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

/// Separates the submitting principal from the caller's key in a scoped idempotency key. A
/// caller's key holds no control character, so the last separator always starts it.
const SCOPE_SEPARATOR: char = '\u{1f}';

/// The idempotency key as stored: the caller's `key` within `scope` (the submitting principal),
/// so that one principal can neither pre-claim nor look up another's key. Without a scope
/// (insecure mode: every caller is the same anonymous principal) the key is global.
pub fn scoped_idempotency_key(scope: Option<&str>, key: &str) -> String {
    match scope {
        Some(scope) => format!("{scope}{SCOPE_SEPARATOR}{key}"),
        None => key.to_owned(),
    }
}

/// The caller's part of a stored idempotency key (what it submitted; the scope is not shown).
pub fn caller_idempotency_key(stored: &str) -> &str {
    stored
        .rsplit_once(SCOPE_SEPARATOR)
        .map_or(stored, |(_, key)| key)
}

/// The id of a new batch of `idempotency_key` created at `created_at`. The store keeps the key
/// → id mapping, so a retry with the same key answers the first batch whatever id it computes;
/// the creation time makes a batch of a key whose earlier batch expired a new id, never the old
/// one again (agents remember the dispatch epochs they saw per batch and object: a reused id
/// would start again below them).
pub fn batch_id_for(idempotency_key: &str, created_at: DateTime<Utc>) -> String {
    let mut h = Sha256::new();
    h.update(idempotency_key.as_bytes());
    h.update([0]);
    h.update(created_at.timestamp_millis().to_be_bytes());
    let digest = h.finalize();
    let hex: String = digest.iter().take(10).map(|b| format!("{b:02x}")).collect();
    format!("b-{hex}")
}

/// A digest of which object each node of `plan` is, in node order: the node records a store
/// keeps are indexed by node, so a batch planned again after a restart (by another version,
/// say) may only take its stored records if its layout is the same.
pub fn layout_hash(plan: &Plan, objects: &[ObjectDef]) -> String {
    let mut h = Sha256::new();
    for node in 0..plan.len() {
        h.update(plan.object(objects, node as NodeIx).id.as_str().as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// When objects were last loaded by earlier batches (the store's record), by id.
pub type LastLoaded = FxHashMap<ObjectId, DateTime<Utc>>;

/// Plans a submission and decides each object's initial disposition. An object counts as loaded
/// at the later of its submitted `last_loaded_at` and `ctx.last_loaded[id]`.
pub fn prepare(
    idempotency_key: &str,
    objects: Vec<ObjectDef>,
    options: BatchOptions,
    ctx: &PlanContext<'_>,
) -> Result<PreparedBatch, PlanError> {
    let plan = plan(
        &objects,
        &options.plan_request(ctx.max_objects, ctx.durations),
    )?;
    let dispositions = dispositions(&objects, &plan, options.force, ctx);
    let now = ctx.now;
    let content_hash = content_hash(&plan.plan_hash, &options);
    Ok(PreparedBatch {
        batch_id: batch_id_for(idempotency_key, now),
        idempotency_key: idempotency_key.to_owned(),
        content_hash,
        options,
        objects,
        plan,
        dispositions,
        created_at: now,
    })
}

/// Objects failing their zone's preflight rules (disabled ones in every zone) are rejected;
/// fresh ones are skipped unless forced.
pub fn dispositions(
    objects: &[ObjectDef],
    plan: &Plan,
    force: bool,
    ctx: &PlanContext<'_>,
) -> Vec<InitialDisposition> {
    let mut frequencies: FxHashMap<&str, Option<Frequency>> = FxHashMap::default();
    let no_rules = PreflightRules::default();
    let now = ctx.now;
    (0..plan.len() as u32)
        .map(|node| {
            let o = plan.object(objects, node);
            if let Some(reason) = ctx.preflight.get(&o.zone).unwrap_or(&no_rules).check(o) {
                return InitialDisposition::PreflightRejected { reason };
            }
            let loaded_at = o.last_loaded_at.max(ctx.last_loaded.get(&o.id).copied());
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
    /// What the submitter chose; the policies resolved from the configuration are left out.
    #[derive(Serialize)]
    struct Requested<'a> {
        targets: &'a [ObjectId],
        all: bool,
        force: bool,
        allow_external_parents: bool,
        retry: &'a RetryRequest,
        labels: &'a BTreeMap<String, String>,
    }
    let requested = Requested {
        targets: &options.targets,
        all: options.all,
        force: options.force,
        allow_external_parents: options.allow_external_parents,
        retry: &options.retry_request,
        labels: &options.labels,
    };
    let mut h = Sha256::new();
    h.update(plan_hash.as_bytes());
    h.update(serde_json::to_vec(&requested).unwrap_or_default());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_scoped_to_their_principal() {
        let mine = scoped_idempotency_key(Some("ci"), "nightly-1");
        let theirs = scoped_idempotency_key(Some("etl"), "nightly-1");
        let at = DateTime::<Utc>::from_timestamp_millis(1_700_000_000_000).expect("in range");
        assert_ne!(batch_id_for(&mine, at), batch_id_for(&theirs, at));
        assert_eq!(caller_idempotency_key(&mine), "nightly-1");
        assert_eq!(caller_idempotency_key(&theirs), "nightly-1");
        // Insecure mode (and batches stored before scoping): the key as given.
        assert_eq!(scoped_idempotency_key(None, "nightly-1"), "nightly-1");
        assert_eq!(caller_idempotency_key("nightly-1"), "nightly-1");
        // A principal name with the separator in it still shows only the caller's key.
        let odd = scoped_idempotency_key(Some("a\u{1f}b"), "k");
        assert_eq!(caller_idempotency_key(&odd), "k");
    }

    #[test]
    fn a_key_whose_batch_expired_gets_a_new_batch_id() {
        let at = |ms| DateTime::<Utc>::from_timestamp_millis(ms).expect("in range");
        let first = batch_id_for("nightly-1", at(1_700_000_000_000));
        assert_eq!(first, batch_id_for("nightly-1", at(1_700_000_000_000)));
        assert_ne!(first, batch_id_for("nightly-1", at(1_700_000_000_001)));
        assert!(first.starts_with("b-") && first.len() == 22, "{first}");
    }
}
