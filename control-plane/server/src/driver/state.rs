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

use crate::batch::BatchOptions;
use crate::latency::LatencyHistogram;
use crate::ports::BatchHead;

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
    pub batch_id: String,
    /// Idempotency key.
    pub idempotency_key: String,
    /// Content digest.
    pub content_hash: String,
    /// Options.
    pub options: BatchOptions,
    /// Submitted objects.
    pub objects: Vec<ObjectDef>,
    /// The plan.
    pub plan: Plan,
    /// Execution state.
    pub machine: BatchMachine,
    /// Node of each planned object id.
    pub node_of: FxHashMap<ObjectId, NodeIx>,
    /// Initial dispositions (fresh, preflight) as planned.
    pub dispositions: Vec<InitialDisposition>,
    /// Per-node transitions seen by this process.
    pub history: FxHashMap<NodeIx, Vec<TransitionRecord>>,
    /// The agent that reported on each node last.
    pub last_agent: FxHashMap<NodeIx, String>,
    /// Nodes whose latest release coalesced onto another batch's attempt, with that batch
    /// (kept after the outcome arrives; dropped when the node is released to run itself).
    pub coalesced_onto: FxHashMap<NodeIx, String>,
    /// Watchers: every step's changes of this batch, in order, as one message.
    pub watch: broadcast::Sender<Arc<[WatchEvent]>>,
    /// Submission time.
    pub created_at: DateTime<Utc>,
    /// When it became terminal.
    pub finished_at: Option<DateTime<Utc>>,
}

impl BatchRuntime {
    /// The object of a node.
    pub fn object(&self, node: NodeIx) -> &ObjectDef {
        self.plan.object(&self.objects, node)
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
    /// Results from an agent without a live lease for the object's zone (when leases are
    /// required).
    pub no_lease: u64,
    /// Results applied.
    pub applied: u64,
    /// Ready records published (delivery reported).
    pub ready_published: u64,
    /// Status changes dropped because the status topic's producer fell behind.
    pub status_dropped: u64,
    /// Release latency: a result consumed → its children's Ready handed to the producer (one
    /// sample per released Ready; the store write that makes the step durable is inside it).
    pub release_latency: LatencyHistogram,
}

/// Everything the driver owns; read through [`Handle::read`].
#[derive(Debug)]
pub struct DriverState {
    /// Batches by id.
    pub batches: HashMap<String, BatchRuntime>,
    /// Counters.
    pub counters: DriverCounters,
    /// Objects in flight across batches, and the releases waiting on them (`docs/design.md#coalescing`).
    pub coalescer: Coalescer<String>,
    /// Worker agents and their leases.
    pub agents: Registry,
    /// Changes whenever this control plane created the topics (at start-up, or after the broker
    /// lost them): agents that see it change subscribe again. 0 = it found them in place.
    pub topics_generation: u64,
}

impl DriverState {
    /// Records that the topics were just created: a new, non-zero generation.
    pub(super) fn topics_created(&mut self) {
        let now = Utc::now().timestamp_millis().max(1) as u64;
        self.topics_generation = now.max(self.topics_generation + 1);
    }
}

impl DriverState {
    /// The attempt of `batch_id`'s object `object_id` that an agent reported, as the machine's
    /// node, if that object is in the batch.
    pub fn node_of(&self, batch_id: &str, object_id: &str) -> Option<NodeIx> {
        let rt = self.batches.get(batch_id)?;
        let id = ObjectId::parse(object_id).ok()?;
        rt.node_of.get(&id).copied()
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
        state: machine.batch_state().as_str().to_owned(),
        next_epoch: machine.next_epoch(),
        finished_at_ms: finished_at.map(|t| t.timestamp_millis()),
    }
}
