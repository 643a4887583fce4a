//! The narrow I/O boundary of the control plane: the data plane (Kafka) and the state store
//! (Redis). The driver talks only to these traits; each has a real adapter
//! ([`crate::adapters::kafka`], [`crate::adapters::redis`]) and an in-memory one
//! ([`crate::adapters::memory`]) for dev mode and component tests.
//!
//! Contract for every adapter:
//! - a method resolves only when its effect is durable (a Ready's delivery report is in; a Redis
//!   transaction has executed);
//! - errors carry a retryable hint ([`PortError::retryable`]);
//! - no method blocks an async worker thread.

use std::future::Future;

use serde::{Deserialize, Serialize};
use strata_core::agents::{Agent, RegistryChanges};
use strata_core::machine::{BatchState, NodeRecord, NodeState};
use strata_core::submission::BatchOptions;
use strata_core::{ObjectDef, Zone};
use tokio::sync::mpsc;

use strata_proto::signing::ReadySigner;

use crate::records::{AgentReport, DeadLetterRecord, ReadyRecord, StatusChange};

/// An I/O failure at the boundary.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The service is unreachable or timed out; the same call may succeed later.
    #[error("{service} unavailable: {detail}")]
    Unavailable {
        /// `kafka` or `redis`.
        service: &'static str,
        /// What happened.
        detail: String,
    },
    /// The service answered with an error that retrying will not fix.
    #[error("{service} rejected the operation: {detail}")]
    Rejected {
        /// `kafka` or `redis`.
        service: &'static str,
        /// What happened.
        detail: String,
    },
    /// The store no longer holds the state this process wrote to it (its generation marker is
    /// gone or changed: a Redis restarted without persistence, flushed, or evicting keys).
    /// Nothing more is written to it.
    #[error("{service} lost the state this control plane wrote: {detail}")]
    StateLost {
        /// `redis`.
        service: &'static str,
        /// What was found.
        detail: String,
    },
    /// Stored data could not be decoded.
    #[error("corrupt {what} in {service}: {detail}")]
    Corrupt {
        /// `kafka` or `redis`.
        service: &'static str,
        /// Which record.
        what: String,
        /// Why.
        detail: String,
    },
}

impl PortError {
    /// Whether retrying the same call may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, PortError::Unavailable { .. })
    }

    /// `kafka` or `redis`.
    pub fn service(&self) -> &'static str {
        match self {
            PortError::Unavailable { service, .. }
            | PortError::Rejected { service, .. }
            | PortError::StateLost { service, .. }
            | PortError::Corrupt { service, .. } => service,
        }
    }
}

/// Result alias of this module.
pub type PortResult<T> = Result<T, PortError>;

/// Where a consumed result record sits in the results topic, so that its offset can be stored
/// once the state change it caused is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// Partition.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
}

/// One record consumed from the results topic.
#[derive(Debug)]
pub struct ResultRecord {
    /// The decoded report, or why the record could not be decoded (the record is then counted,
    /// logged once with its position and skipped — never retried in a loop).
    pub result: Result<AgentReport, String>,
    /// Where it came from.
    pub position: Position,
    /// The record's W3C `traceparent` header (the agent's span of the attempt), read only while
    /// traces are exported ([`strata_runtime::otlp::enabled`]); `None` otherwise.
    pub traceparent: Option<String>,
}

/// The Kafka side, as the driver sees it.
pub trait DataPlane: Send + Sync + 'static {
    /// Creates the ready topic of every zone and the results, dead-letter and status topics if
    /// they are missing. Idempotent. Resolves to how many were missing: after the first call,
    /// anything but 0 means the broker lost topics (and with them every record in flight).
    fn ensure_topics(&self, zones: &[Zone]) -> impl Future<Output = PortResult<usize>> + Send;

    /// Produces each Ready, signed by `signer`, to its zone's ready topic, keyed by object id,
    /// and resolves when every delivery report is in (acks=all). Fails if any record was not
    /// delivered.
    fn publish_ready(
        &self,
        ready: &[ReadyRecord],
        signer: &ReadySigner,
    ) -> impl Future<Output = PortResult<()>> + Send;

    /// Produces dead letters to the dead-letter topic (keyed by object id); delivery awaited.
    fn publish_dead_letters(
        &self,
        letters: Vec<DeadLetterRecord>,
    ) -> impl Future<Output = PortResult<()>> + Send;

    /// Produces status changes to the status topic (keyed by batch id) for external consumers.
    /// Best effort: delivery is awaited but a failure is only logged by the caller.
    fn publish_status(
        &self,
        changes: Vec<StatusChange>,
    ) -> impl Future<Output = PortResult<()>> + Send;

    /// Starts consuming the results topic; records arrive on the returned channel in partition
    /// order. Called once.
    fn subscribe_results(&self) -> PortResult<mpsc::Receiver<ResultRecord>>;

    /// Replaces the results subscription with a new one (after the broker lost the results
    /// topic, a subscription made before does not reliably follow the re-created topic), and
    /// the producer with a new one (the broker lost its producer state too).
    /// `None` when the adapter's subscription needs no renewal.
    fn resubscribe_results(
        &self,
    ) -> impl Future<Output = PortResult<Option<mpsc::Receiver<ResultRecord>>>> + Send;

    /// Marks every record up to and including these positions as processed (their state changes
    /// are durable); the adapter commits them.
    fn store_positions(&self, positions: &[Position]) -> PortResult<()>;

    /// Round-trip check for readiness: the broker answers a metadata request within `limit`.
    fn ping(&self, limit: std::time::Duration) -> impl Future<Output = PortResult<()>> + Send;
}

/// A batch's definition as stored: what is needed, with its objects, to plan it again after a
/// restart (planning is deterministic) and to answer queries about it. How it is encoded is the
/// store adapter's business.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBatch {
    /// The batch id.
    pub batch_id: String,
    /// The submission's idempotency key.
    pub idempotency_key: String,
    /// Digest of the submission (objects and options): same key with another digest is a
    /// conflict.
    pub content_hash: String,
    /// Milliseconds since the epoch.
    pub created_at_ms: i64,
    /// The submission's options, with the retry policies resolved at submission.
    pub options: BatchOptions,
    /// Which object each node is, as planned at submission
    /// (`strata_core::submission::layout_hash`; empty: stored before layouts were).
    pub layout_hash: String,
}

impl StoredBatch {
    /// What the store keeps of a prepared batch (besides its objects).
    pub fn of(p: &strata_core::submission::PreparedBatch) -> Self {
        Self {
            batch_id: p.batch_id.clone(),
            idempotency_key: p.idempotency_key.clone(),
            content_hash: p.content_hash.clone(),
            created_at_ms: p.created_at.timestamp_millis(),
            options: p.options.clone(),
            layout_hash: strata_core::submission::layout_hash(&p.plan, &p.objects),
        }
    }
}

/// What [`StateStore::create_batch`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The batch is now stored.
    Created,
    /// A batch with this idempotency key exists already.
    Existing {
        /// Its id.
        batch_id: String,
        /// Its content digest.
        content_hash: String,
    },
}

/// The mutable head of a batch: its state and counters, written with every step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHead {
    /// Its state.
    pub state: BatchState,
    /// The next dispatch epoch the machine will hand out.
    pub next_epoch: u64,
    /// Milliseconds since the epoch when it became terminal.
    pub finished_at_ms: Option<i64>,
}

/// A scheduled retry: `member` is unique per (batch, node, attempt).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RetryEntry {
    /// Batch id.
    pub batch_id: String,
    /// Node index in the batch's plan.
    pub node: u32,
    /// The attempt that failed (the retry will be `attempt + 1`).
    pub attempt: u32,
    /// When it is due, milliseconds since the epoch.
    pub due_ms: i64,
}

/// Everything one driver step changes, written in one round trip (a pipelined transaction).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepWrite {
    /// Per batch: its new head and the records of the nodes that changed.
    pub batches: Vec<BatchWrite>,
    /// Retries to schedule.
    pub schedule: Vec<RetryEntry>,
    /// Dead letters to index (also produced to Kafka by the driver).
    pub dead_letters: Vec<StoredDeadLetter>,
    /// Objects loaded in this step: object id and when (ms since the epoch). Kept across
    /// batches: a later batch skips an object loaded since its frequency's last tick.
    pub loaded: Vec<(String, i64)>,
}

/// The part of a [`StepWrite`] for one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchWrite {
    /// Batch id.
    pub batch_id: String,
    /// Its head after the step.
    pub head: BatchHead,
    /// Changed node records.
    pub nodes: Vec<(u32, NodeRecord)>,
}

/// A dead letter as indexed for `ListDeadLetters`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    /// Batch id.
    pub batch_id: String,
    /// Node index.
    pub node: u32,
    /// The dead letter.
    pub letter: DeadLetterRecord,
    /// When, milliseconds since the epoch.
    pub dead_at_ms: i64,
}

/// Transitions a [`NodeTrail`] keeps, the latest ones.
pub const MAX_TRAIL: usize = 16;

/// One transition of an object, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredTransition {
    /// Previous state.
    pub from: NodeState,
    /// New state.
    pub to: NodeState,
    /// Attempt.
    pub attempt: u32,
    /// When (ms since the epoch).
    pub at_ms: i64,
}

/// What a finished batch keeps of an object besides its record, for the reads that outlive
/// the batch in memory: its latest transitions (at most [`MAX_TRAIL`]) and the agent that
/// reported on it last.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeTrail {
    /// Oldest first.
    pub transitions: Vec<StoredTransition>,
    /// The agent id of the last report applied.
    pub agent: Option<String>,
}

/// A stored batch with the trails stored for its nodes.
pub type BatchWithTrails = (RestoredBatch, Vec<(u32, NodeTrail)>);

/// A batch read back after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredBatch {
    /// Its definition.
    pub batch: StoredBatch,
    /// Its objects, as submitted.
    pub objects: Vec<ObjectDef>,
    /// Its head.
    pub head: BatchHead,
    /// Every persisted node record (nodes never written are `PENDING`).
    pub nodes: Vec<(u32, NodeRecord)>,
}

/// The Redis side, as the driver sees it.
pub trait StateStore: Send + Sync + 'static {
    /// Stores a new batch with its initial head and node records, unless its idempotency key is
    /// taken (then nothing is written). Atomic.
    fn create_batch(
        &self,
        batch: &StoredBatch,
        objects: &[ObjectDef],
        head: &BatchHead,
        nodes: &[(u32, NodeRecord)],
    ) -> impl Future<Output = PortResult<CreateOutcome>> + Send;

    /// Applies one step's writes atomically, in one round trip.
    fn apply(&self, step: &StepWrite) -> impl Future<Output = PortResult<()>> + Send;

    /// Every batch not yet terminal, with its node records: what a restarted control plane
    /// resumes.
    fn load_active(&self) -> impl Future<Output = PortResult<Vec<RestoredBatch>>> + Send;

    /// One batch (any state) with its node records and the trails stored for its nodes;
    /// `None` when it is not stored (never, or expired).
    fn load_batch(
        &self,
        batch_id: &str,
    ) -> impl Future<Output = PortResult<Option<BatchWithTrails>>> + Send;

    /// Stores the trails of a batch's nodes (replacing earlier ones of the same nodes); they
    /// expire with the batch. Skipped for a batch that is not stored.
    fn save_trails(
        &self,
        batch_id: &str,
        trails: &[(u32, NodeTrail)],
    ) -> impl Future<Output = PortResult<()>> + Send;

    /// Atomically removes and returns up to `limit` retries due at or before `now_ms`. Two
    /// control planes calling this concurrently never get the same entry.
    fn claim_due_retries(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> impl Future<Output = PortResult<Vec<RetryEntry>>> + Send;

    /// Batch ids, newest first, after `cursor` (an opaque position; `None` = from the newest).
    fn list_batches(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> impl Future<Output = PortResult<(Vec<String>, Option<String>)>> + Send;

    /// A batch's definition and head, if it exists (its objects are not read).
    fn get_batch(
        &self,
        batch_id: &str,
    ) -> impl Future<Output = PortResult<Option<(StoredBatch, BatchHead)>>> + Send;

    /// A batch's objects, as submitted, if it exists.
    fn batch_objects(
        &self,
        batch_id: &str,
    ) -> impl Future<Output = PortResult<Option<Vec<ObjectDef>>>> + Send;

    /// Dead letters, newest first, optionally of one batch, after `cursor`.
    fn list_dead_letters(
        &self,
        batch_id: Option<String>,
        cursor: Option<String>,
        limit: usize,
    ) -> impl Future<Output = PortResult<(Vec<StoredDeadLetter>, Option<String>)>> + Send;

    /// Dead letters stored but not yet confirmed on the dead-letter topic (the outbox), at
    /// most `limit`: what a crash between the state write and the produce left behind.
    fn unsent_dead_letters(
        &self,
        limit: usize,
    ) -> impl Future<Output = PortResult<Vec<StoredDeadLetter>>> + Send;

    /// The dead letters of `(batch, node)` are on the dead-letter topic: out of the outbox.
    fn dead_letters_sent(
        &self,
        sent: &[(String, u32)],
    ) -> impl Future<Output = PortResult<()>> + Send;

    /// When each object was last loaded by any batch (ms since the epoch), in the order asked;
    /// `None` for an object never loaded (or forgotten).
    fn last_loaded(
        &self,
        object_ids: &[String],
    ) -> impl Future<Output = PortResult<Vec<Option<i64>>>> + Send;

    /// Writes what changed in the agent registry (agents' leases and the next lease epoch), so
    /// that a restarted control plane keeps them (`docs/design.md#redis`). Atomic.
    fn save_agents(&self, changes: &RegistryChanges)
    -> impl Future<Output = PortResult<()>> + Send;

    /// Every stored agent and the next lease epoch (1 when none was stored).
    fn load_agents(&self) -> impl Future<Output = PortResult<(Vec<Agent>, u64)>> + Send;

    /// The seed of the control plane's Ready signing key (Ed25519): `candidate` stored if no seed
    /// is, and the stored one returned, atomically, so that every control plane on this store
    /// signs with one key, across restarts.
    fn ready_signing_seed(
        &self,
        candidate: [u8; 32],
    ) -> impl Future<Output = PortResult<[u8; 32]>> + Send;

    /// Opens the store's generation: the marker `candidate` stored if none is, else the stored
    /// one, kept by the store from now on. Every later state write, and [`StateStore::ping`],
    /// fails with [`PortError::StateLost`] once the store no longer holds it.
    fn open_generation(&self, candidate: [u8; 16]) -> impl Future<Output = PortResult<()>> + Send;

    /// Round-trip check for readiness; [`PortError::StateLost`] if the store lost the state
    /// written since [`StateStore::open_generation`].
    fn ping(&self) -> impl Future<Output = PortResult<()>> + Send;
}
