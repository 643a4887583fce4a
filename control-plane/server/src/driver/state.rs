//! What the driver owns: the running batches, their watchers and history, the agents, the
//! coalescer and the counters.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;
use strata_core::agents::Registry;
use strata_core::coalesce::Coalescer;
use strata_core::machine::{BatchMachine, BatchState, InitialDisposition, NodeState};
use strata_core::model::NodeIx;
use strata_core::planner::Plan;
use strata_core::{ObjectDef, ObjectId};
use tokio::sync::broadcast;

use super::clock::Clock;
use crate::latency::LatencyHistogram;
use crate::ports::BatchHead;
use strata_core::submission::{BatchOptions, PreparedBatch};

/// A change a watcher sees.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// One object changed state.
    Object {
        /// Node.
        node: NodeIx,
        /// Previous state.
        from: NodeState,
        /// New state.
        to: NodeState,
        /// Attempt.
        attempt: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// The batch changed state.
    Batch {
        /// Previous state.
        from: BatchState,
        /// New state.
        to: BatchState,
        /// When.
        at: DateTime<Utc>,
    },
}

/// One driver step's changes of one batch, numbered from 1 in the order the driver made them
/// (a watcher reading the batch between two steps knows which steps its read already shows).
#[derive(Debug, Clone)]
pub struct WatchStep {
    /// The step's number among this batch's steps with changes.
    pub seq: u64,
    /// The changes, in order.
    pub events: Arc<[WatchEvent]>,
}

/// A release waiting on another batch's attempt of the same object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coalesced {
    /// The batch whose attempt runs the object.
    pub onto: String,
    /// Whether both define the object the same way (this batch takes that attempt's outcome);
    /// else this batch runs its own definition once that attempt ends.
    pub shares_outcome: bool,
}

/// One recorded transition of an object.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionRecord {
    /// Previous state.
    pub from: NodeState,
    /// New state.
    pub to: NodeState,
    /// Attempt.
    pub attempt: u32,
    /// When.
    pub at: DateTime<Utc>,
}

/// A running (or recently finished) batch, owned by the driver.
#[derive(Debug)]
pub struct BatchRuntime {
    /// Batch id.
    pub(super) batch_id: String,
    /// Idempotency key.
    pub(super) idempotency_key: String,
    /// Content digest.
    pub(super) content_hash: String,
    /// Options.
    pub(super) options: BatchOptions,
    /// Submitted objects.
    pub(super) objects: Vec<ObjectDef>,
    /// The plan.
    pub(super) plan: Plan,
    /// Execution state.
    pub(super) machine: BatchMachine,
    /// Node of each planned object id.
    pub(super) node_of: FxHashMap<ObjectId, NodeIx>,
    /// Initial dispositions (fresh, preflight) as planned.
    pub(super) dispositions: Vec<InitialDisposition>,
    /// Per-node transitions seen by this process.
    pub(super) history: FxHashMap<NodeIx, Vec<TransitionRecord>>,
    /// The agent that reported on each node last.
    pub(super) last_agent: FxHashMap<NodeIx, String>,
    /// Nodes whose latest release coalesced onto another batch's attempt, with that batch
    /// (kept after the outcome arrives; dropped when the node is released to run itself).
    pub(super) coalesced_onto: FxHashMap<NodeIx, Coalesced>,
    /// Watchers: every step's changes of this batch, in order, as one message.
    pub(super) watch: broadcast::Sender<WatchStep>,
    /// The number of the last step sent to `watch`.
    pub(super) watch_seq: u64,
    /// Submission time.
    pub(super) created_at: DateTime<Utc>,
    /// When it became terminal.
    pub(super) finished_at: Option<DateTime<Utc>>,
    /// When it was taken back from the store after it had left memory (it stays for the
    /// retention from then, not from when it finished).
    pub(super) adopted_at: Option<DateTime<Utc>>,
}

impl BatchRuntime {
    /// A batch as planned, with its machine, no history yet, and a watch channel of
    /// `watch_capacity` steps.
    pub(super) fn new(
        p: PreparedBatch,
        machine: BatchMachine,
        finished_at: Option<DateTime<Utc>>,
        watch_capacity: usize,
    ) -> Self {
        let node_of = (0..p.plan.len() as u32)
            .map(|n| (p.plan.object(&p.objects, n).id.clone(), n))
            .collect();
        BatchRuntime {
            batch_id: p.batch_id,
            idempotency_key: p.idempotency_key,
            content_hash: p.content_hash,
            options: p.options,
            objects: p.objects,
            plan: p.plan,
            machine,
            node_of,
            dispositions: p.dispositions,
            history: FxHashMap::default(),
            last_agent: FxHashMap::default(),
            coalesced_onto: FxHashMap::default(),
            watch: broadcast::channel(watch_capacity.max(1)).0,
            watch_seq: 0,
            created_at: p.created_at,
            finished_at,
            adopted_at: None,
        }
    }
}

/// Read-only: the driver changes a batch, everyone else reads it through [`super::Handle::read`].
impl BatchRuntime {
    /// The object of a node.
    pub fn object(&self, node: NodeIx) -> &ObjectDef {
        self.plan.object(&self.objects, node)
    }

    /// Batch id.
    pub fn batch_id(&self) -> &str {
        &self.batch_id
    }

    /// Idempotency key.
    pub fn idempotency_key(&self) -> &str {
        &self.idempotency_key
    }

    /// Options.
    pub fn options(&self) -> &BatchOptions {
        &self.options
    }

    /// Submitted objects.
    pub fn objects(&self) -> &[ObjectDef] {
        &self.objects
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Execution state.
    pub fn machine(&self) -> &BatchMachine {
        &self.machine
    }

    /// The node of a planned object id.
    pub fn node_of(&self, id: &ObjectId) -> Option<NodeIx> {
        self.node_of.get(id).copied()
    }

    /// Initial dispositions (fresh, preflight) as planned.
    pub fn dispositions(&self) -> &[InitialDisposition] {
        &self.dispositions
    }

    /// The node's transitions seen by this process, oldest first.
    pub fn history(&self, node: NodeIx) -> &[TransitionRecord] {
        self.history.get(&node).map_or(&[], Vec::as_slice)
    }

    /// The latest transition of any node seen by this process.
    pub fn last_transition_at(&self) -> Option<DateTime<Utc>> {
        self.history
            .values()
            .filter_map(|h| h.last().map(|t| t.at))
            .max()
    }

    /// The agent that reported on the node last.
    pub fn last_agent(&self, node: NodeIx) -> Option<&str> {
        self.last_agent.get(&node).map(String::as_str)
    }

    /// The batch whose attempt the node's latest release coalesced onto.
    pub fn coalesced_onto(&self, node: NodeIx) -> Option<&Coalesced> {
        self.coalesced_onto.get(&node)
    }

    /// Every later step's changes of this batch, in order, one message per step.
    pub fn subscribe(&self) -> broadcast::Receiver<WatchStep> {
        self.watch.subscribe()
    }

    /// The number of the last step with changes: what a read now shows includes every step up to
    /// it, and a receiver subscribed now gets the steps after it.
    pub fn watch_seq(&self) -> u64 {
        self.watch_seq
    }

    /// Submission time.
    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    /// When it became terminal.
    pub fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.finished_at
    }
}

/// Counters of what the driver ignored or could not decode (for metrics and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverCounters {
    /// Results ignored by the machine, by reason.
    pub ignored: BTreeMap<&'static str, u64>,
    /// Records that could not be decoded.
    pub undecodable: u64,
    /// Results naming a batch this control plane does not know.
    pub unknown_batch: u64,
    /// Results rejected before the machine saw them (unsigned, bad signature, unknown, old or
    /// wrong-zone lease), by reason, when results are verified.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Results applied.
    pub applied: u64,
    /// Ready records published (delivery reported).
    pub ready_published: u64,
    /// Status changes dropped because the status topic's producer fell behind.
    pub status_dropped: u64,
    /// Execution deadlines armed: one per attempt running (as of the loop's last turn).
    pub deadlines_armed: usize,
    /// Release latency: a result consumed → its children's Ready handed to the producer (one
    /// sample per released Ready; the store write that makes the step durable is inside it).
    pub release_latency: LatencyHistogram,
}

/// Everything the driver owns. Only the driver changes it; the service and the admin port read
/// it through [`super::Handle::read`] and the methods below.
#[derive(Debug)]
pub struct DriverState {
    /// Batches by id.
    pub(super) batches: HashMap<String, BatchRuntime>,
    /// Counters.
    pub(super) counters: DriverCounters,
    /// Objects in flight across batches, and the releases waiting on them (`docs/design.md#coalescing`).
    pub(super) coalescer: Coalescer<String>,
    /// Worker agents and their leases.
    pub(super) agents: Registry,
    /// Changes whenever this control plane created the topics (at start-up, or after the broker
    /// lost them): agents that see it change subscribe again. 0 = it found them in place.
    pub(super) topics_generation: u64,
    /// The key every Ready is signed with, from the store (loaded at start-up, before any
    /// command or publication).
    pub(super) ready_signer: Option<std::sync::Arc<strata_proto::signing::ReadySigner>>,
    /// How long a lease keeps one result signing key (`DriverSettings::result_key_rotation`).
    pub(super) result_key_rotation: std::time::Duration,
    /// Where the time of day is read (the settings' clock).
    pub(super) clock: Arc<dyn Clock>,
}

impl DriverState {
    /// The time of day, from the driver's clock.
    pub(super) fn now(&self) -> DateTime<Utc> {
        to_millis(self.clock.now())
    }

    /// Records that the topics were just created: a new, non-zero generation.
    pub(super) fn topics_created(&mut self) {
        let now = self.now().timestamp_millis().max(1) as u64;
        self.topics_generation = now.max(self.topics_generation + 1);
    }
}

/// Read-only queries.
impl DriverState {
    /// The attempt of `batch_id`'s object `object_id` that an agent reported, as the machine's
    /// node, if that object is in the batch.
    pub fn node_of(&self, batch_id: &str, object_id: &str) -> Option<NodeIx> {
        let rt = self.batches.get(batch_id)?;
        let id = ObjectId::parse(object_id).ok()?;
        rt.node_of.get(&id).copied()
    }

    /// A batch this control plane drives.
    pub fn batch(&self, batch_id: &str) -> Option<&BatchRuntime> {
        self.batches.get(batch_id)
    }

    /// Every batch this control plane drives, in no order.
    pub fn batches(&self) -> impl Iterator<Item = &BatchRuntime> {
        self.batches.values()
    }

    /// What the driver counted.
    pub fn counters(&self) -> &DriverCounters {
        &self.counters
    }

    /// The worker agents and their leases.
    pub fn agents(&self) -> &Registry {
        &self.agents
    }

    /// Objects in flight across batches, each with the batch whose attempt runs it.
    pub fn in_flight_owners(&self) -> impl Iterator<Item = (&ObjectId, &String)> {
        self.coalescer.owners()
    }

    /// Changes whenever this control plane created the topics (0: it found them in place).
    pub fn topics_generation(&self) -> u64 {
        self.topics_generation
    }
}

/// READY, RUNNING and RETRY_WAIT: the object's run is in progress (others may coalesce onto it).
pub(super) fn in_flight(state: NodeState) -> bool {
    matches!(
        state,
        NodeState::Ready | NodeState::Running | NodeState::RetryWait
    )
}

pub(super) fn head_of(machine: &BatchMachine, finished_at: Option<DateTime<Utc>>) -> BatchHead {
    BatchHead {
        state: machine.batch_state(),
        next_epoch: machine.next_epoch(),
        finished_at_ms: finished_at.map(|t| t.timestamp_millis()),
    }
}

/// `t` to the millisecond, the precision the store keeps: a time the driver records reads the
/// same from memory and, after the batch left memory or a restart, from the store.
pub fn to_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}
