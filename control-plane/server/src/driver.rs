//! The driver: the one owner of every running batch's state machine.
//!
//! It receives commands (submit, cancel, retry-now, replay, reads) from the gRPC service through a
//! cheap-clone [`Handle`], results from the data plane, and due retries from the store; feeds them
//! to the pure [`BatchMachine`]s; and performs the effects in a fixed order per step:
//!
//! 1. persist every changed node record, batch head, scheduled retry, dead letter and load time
//!    in **one** store round trip;
//! 2. hand the Ready records to the producer; their delivery reports are awaited beside the
//!    driver (at most 16 steps in flight) — records not delivered are published again, topics
//!    re-created, for as long as their object is READY;
//! 3. produce dead letters (delivery awaited); hand status changes to the in-order status task;
//! 4. store the consumed results' offsets (the state change they caused is durable now);
//! 5. tell watchers (one message per batch and step).
//!
//! A READY object is therefore durable in the store before its Ready is produced, and stays
//! READY until an agent reports on it; after a restart, or when the broker lost its topics, every
//! READY object is published again with the same attempt and dispatch epoch.
//!
//! Results are drained in groups, so one store round trip covers many of them. A restarted driver
//! reloads every active batch from the store, plans it again (planning is deterministic), restores
//! its machine and redoes what [`BatchMachine::resume`] says.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;
use strata_core::agents::Registry;
use strata_core::coalesce::{Claim, Coalescer, Delivery, Settlement, Ticket};
use strata_core::machine::{
    BatchMachine, BatchState, DeadReason, Effect, Event, IgnoreReason, InitialDisposition,
    LossReason, NodeRecord, NodeState, Outcome,
};
use strata_core::model::NodeIx;
use strata_core::planner::Plan;
use strata_core::{ObjectDef, ObjectId, Zone};
use strata_proto::v1::{self as pb, object_result};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::batch::{BatchOptions, PlanContext, PreparedBatch, prepare};
use crate::convert;
use crate::latency::LatencyHistogram;
use crate::metrics::Metrics;
use crate::ports::{
    BatchHead, BatchWrite, CreateOutcome, DataPlane, PortError, Position, RetryEntry, StateStore,
    StepWrite, StoredBatch, StoredDeadLetter,
};

/// How many results one step takes at most. Smaller steps release sooner (a result waits for
/// its whole step and the step's Redis write); 256 measured p99 33 ms against 330 ms at 4,096,
/// for ≈ 0.008 Redis round trips per object (docs/benchmarks.md).
const MAX_RESULTS_PER_STEP: usize = 256;
/// Steps whose Ready records may be in delivery at once.
const PUBLISHING_STEPS: usize = 16;
/// Steps of status changes the status task may fall behind before changes are dropped.
const STATUS_BACKLOG: usize = 256;

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
    /// Results only from agents with a live lease for the object's zone (others are counted
    /// as `no_lease` and ignored). Off in [`DriverSettings::default`] (component tests drive
    /// results by hand); the binary's configuration turns it on unless told otherwise.
    pub require_agent_lease: bool,
    /// How often the topics are checked (and re-created): a broker that lost them lost every
    /// Ready in flight, which the driver then publishes again.
    pub topic_check: Duration,
    /// Where the driver counts what happens (Prometheus).
    pub metrics: Metrics,
}

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
            require_agent_lease: false,
            metrics: Metrics::default(),
        }
    }
}

/// Why a command failed; mapped to a gRPC status in one place (`crate::error`).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// No such batch.
    #[error("batch {0} not found")]
    BatchNotFound(String),
    /// No such object in the batch.
    #[error("object {object} is not in batch {batch}")]
    ObjectNotFound {
        /// Batch id.
        batch: String,
        /// Object id.
        object: String,
    },
    /// The idempotency key was used for another submission.
    #[error("idempotency key {key:?} was already used for batch {batch_id} with different content")]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The batch it names.
        batch_id: String,
    },
    /// The command does not apply in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Storage failed.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The driver has stopped.
    #[error("the control plane is shutting down")]
    ShuttingDown,
}

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
    fn topics_created(&mut self) {
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

type ReadFn = Box<dyn FnOnce(&DriverState) + Send>;
/// A change to the driver's state; events it pushes (batch, event) are applied in the same step.
type MutateFn = Box<dyn FnOnce(&mut DriverState, &mut Vec<(String, Event)>) + Send>;

/// When a RUNNING attempt outlives its zone's execution timeout: (deadline, batch, node,
/// attempt, dispatch epoch).
type Deadline = (tokio::time::Instant, String, NodeIx, u32, u64);

enum Command {
    Submit(
        Box<PreparedBatch>,
        oneshot::Sender<Result<SubmitOutcome, DriverError>>,
    ),
    Event {
        batch_id: String,
        event: Event,
        reply: oneshot::Sender<Result<Outcome, DriverError>>,
    },
    Read(ReadFn),
    Mutate(MutateFn, oneshot::Sender<Result<(), DriverError>>),
}

/// What a submission became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitOutcome {
    /// Batch id.
    pub batch_id: String,
    /// False when an identical earlier submission was found.
    pub created: bool,
}

/// A cheap-clone handle to the driver.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

impl Handle {
    /// Submits a prepared batch; resolves once it is durable and its first objects released.
    pub async fn submit(&self, prepared: PreparedBatch) -> Result<SubmitOutcome, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Submit(Box::new(prepared), reply))
            .await?;
        rx.await.map_err(|_| DriverError::ShuttingDown)?
    }

    /// Feeds a user event (cancel, retry-now, replay) to a batch's machine; resolves once its
    /// effects are durable.
    pub async fn event(&self, batch_id: &str, event: Event) -> Result<Outcome, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Event {
            batch_id: batch_id.to_owned(),
            event,
            reply,
        })
        .await?;
        rx.await.map_err(|_| DriverError::ShuttingDown)?
    }

    /// Runs `f` on the driver's state, between two steps, and returns its result.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&DriverState) -> T + Send + 'static,
    ) -> Result<T, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Read(Box::new(move |s| {
            let _ = reply.send(f(s));
        })))
        .await?;
        rx.await.map_err(|_| DriverError::ShuttingDown)
    }

    /// Runs `f` on the driver's state between two steps; the events it pushes are applied in one
    /// step, and this resolves once their effects are durable.
    pub async fn mutate<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DriverState, &mut Vec<(String, Event)>) -> T + Send + 'static,
    ) -> Result<T, DriverError> {
        let (out_tx, out_rx) = oneshot::channel();
        let (reply, rx) = oneshot::channel();
        self.send(Command::Mutate(
            Box::new(move |s, events| {
                let _ = out_tx.send(f(s, events));
            }),
            reply,
        ))
        .await?;
        rx.await.map_err(|_| DriverError::ShuttingDown)??;
        out_rx.await.map_err(|_| DriverError::ShuttingDown)
    }

    async fn send(&self, cmd: Command) -> Result<(), DriverError> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| DriverError::ShuttingDown)
    }
}

/// The driver task. Build with [`Driver::new`], run with [`Driver::run`].
#[derive(Debug)]
pub struct Driver<D, S> {
    data: Arc<D>,
    store: Arc<S>,
    settings: DriverSettings,
    state: DriverState,
    commands: mpsc::Receiver<Command>,
    /// Ready records not yet delivered (the broker was down or a topic was missing).
    undelivered: Vec<pb::ObjectReady>,
    /// When the undelivered records are tried next, and the wait after a failure (doubling from
    /// the tick to 5 s, reset by a delivery).
    redeliver_at: tokio::time::Instant,
    redeliver_backoff: Duration,
    /// Steps whose Ready records are being delivered beside the driver (at most
    /// [`PUBLISHING_STEPS`] at once: a slow broker slows the driver down instead of piling up).
    publishing: Arc<tokio::sync::Semaphore>,
    /// Reports of those deliveries, back to the driver.
    published_tx: mpsc::UnboundedSender<Published>,
    published_rx: Option<mpsc::UnboundedReceiver<Published>>,
    /// Status changes for the status topic, produced in order by a task of their own (best
    /// effort: dropped and counted when it falls [`STATUS_BACKLOG`] steps behind).
    status_tx: Option<mpsc::Sender<Vec<pb::StatusChanged>>>,
    /// Execution deadlines of RUNNING attempts, earliest first: (when, batch, node, attempt,
    /// dispatch epoch). Entries whose attempt ended are dropped when they come up.
    deadlines: BinaryHeap<Reverse<Deadline>>,
    rng: u64,
    /// Spans, when traces are exported (`None` otherwise: nothing traced, nothing formatted).
    traces: Option<crate::telemetry::DriverTraces>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Submit(..) => "Submit",
            Command::Event { .. } => "Event",
            Command::Read(_) => "Read",
            Command::Mutate(..) => "Mutate",
        })
    }
}

/// Per-step accumulation of effects.
#[derive(Default)]
struct Step {
    write: StepWrite,
    ready: Vec<pb::ObjectReady>,
    dead: Vec<pb::DeadLetter>,
    status: Vec<pb::StatusChanged>,
    watch: Vec<(String, WatchEvent)>,
    /// Changed nodes per batch (deduplicated at flush).
    changed: BTreeMap<String, Vec<NodeIx>>,
    heads: BTreeMap<String, ()>,
    positions: Vec<Position>,
    /// When the results that drove this step were consumed (release latency).
    consumed_at: Option<Instant>,
    /// Settled in-flight objects' waiters, still to be told.
    deliveries: Vec<Delivery<String>>,
}

impl<D: DataPlane, S: StateStore> Driver<D, S> {
    /// A driver and the handle to reach it.
    pub fn new(data: Arc<D>, store: Arc<S>, settings: DriverSettings) -> (Self, Handle) {
        let lease_ttl = settings.lease_ttl;
        let (tx, commands) = mpsc::channel(1024);
        let (published_tx, published_rx) = mpsc::unbounded_channel();
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
        (
            Self {
                data,
                store,
                settings,
                state: DriverState {
                    batches: HashMap::new(),
                    counters: DriverCounters::default(),
                    coalescer: Coalescer::default(),
                    agents: Registry::new(lease_ttl),
                    topics_generation: 0,
                },
                commands,
                undelivered: Vec::new(),
                redeliver_at: tokio::time::Instant::now(),
                redeliver_backoff: Duration::ZERO,
                deadlines: BinaryHeap::new(),
                publishing: Arc::new(tokio::sync::Semaphore::new(PUBLISHING_STEPS)),
                published_tx,
                published_rx: Some(published_rx),
                status_tx: None,
                rng: seed | 1,
                traces: crate::telemetry::DriverTraces::from_installed(),
            },
            Handle { tx },
        )
    }

    /// Creates the topics, restores the active batches, then serves until `shutdown` resolves
    /// (which also cuts the start-up short: a control plane waiting for its broker or Redis stops
    /// at once).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), DriverError> {
        tokio::pin!(shutdown);
        let mut results = tokio::select! {
            biased;
            () = &mut shutdown => {
                info!("driver stopped during start-up");
                return Ok(());
            }
            started = self.start_up() => started?,
        };
        let mut tick = tokio::time::interval(self.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut published = self.published_rx.take().expect("the driver runs once");
        let (status_tx, status_task) = publish_status_in_order(self.data.clone());
        self.status_tx = Some(status_tx);
        let (lost_tx, mut lost) = mpsc::channel(4);
        let watcher = watch_topics(
            self.data.clone(),
            self.settings.zones.clone(),
            self.settings.topic_check,
            lost_tx,
        );
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => break,
                },
                // Before results: under a steady stream of results the branches below them
                // would never be polled (delivery reports hold their records until handled;
                // due retries, timeouts and lease expiry would wait for a quiet moment).
                Some(report) = published.recv() => self.published(report),
                Some(created) = lost.recv() => {
                    if let Some(fresh) = self.topics_recreated(created).await {
                        results = fresh;
                    }
                }
                _ = tick.tick() => self.tick().await,
                first = results.recv() => {
                    let Some(first) = first else { break };
                    let mut records = vec![first];
                    while records.len() < MAX_RESULTS_PER_STEP {
                        match results.try_recv() {
                            Ok(r) => records.push(r),
                            Err(_) => break,
                        }
                    }
                    self.results(records).await;
                }
            }
        }
        watcher.abort();
        // The status task ends once it has produced what it was handed.
        self.status_tx = None;
        if tokio::time::timeout(Duration::from_secs(5), status_task)
            .await
            .is_err()
        {
            warn!("status changes still unproduced at shutdown were dropped");
        }
        info!("driver stopped");
        Ok(())
    }

    async fn start_up(
        &mut self,
    ) -> Result<mpsc::Receiver<crate::ports::ResultRecord>, DriverError> {
        let created = retry_port(&self.settings.metrics, "ensure topics", || {
            self.data.ensure_topics(&self.settings.zones)
        })
        .await?;
        if created > 0 {
            self.state.topics_created();
        }
        let results = self.data.subscribe_results()?;
        self.restore().await?;
        Ok(results)
    }

    fn jitter(&mut self) -> f64 {
        // splitmix64: jitter needs no cryptographic quality.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Read(f) => f(&self.state),
            Command::Mutate(f, reply) => {
                let mut events = Vec::new();
                f(&mut self.state, &mut events);
                let mut step = Step::default();
                for (batch_id, event) in events {
                    self.handle(&mut step, &batch_id, event);
                }
                let _ = reply.send(self.flush(step).await);
            }
            Command::Submit(prepared, reply) => {
                let r = self.submit(*prepared).await;
                let _ = reply.send(r);
            }
            Command::Event {
                batch_id,
                event,
                reply,
            } => {
                if !self.state.batches.contains_key(&batch_id) {
                    let _ = reply.send(Err(DriverError::BatchNotFound(batch_id)));
                    return;
                }
                let mut step = Step::default();
                let outcome = self.handle(&mut step, &batch_id, event);
                let r = self.flush(step).await.map(|()| outcome);
                let _ = reply.send(r);
            }
        }
    }

    async fn submit(&mut self, p: PreparedBatch) -> Result<SubmitOutcome, DriverError> {
        if let Some(existing) = self.state.batches.get(&p.batch_id) {
            return if existing.content_hash == p.content_hash {
                Ok(SubmitOutcome {
                    batch_id: p.batch_id,
                    created: false,
                })
            } else {
                Err(DriverError::IdempotencyConflict {
                    key: p.idempotency_key,
                    batch_id: p.batch_id,
                })
            };
        }
        let mut effects = Vec::new();
        let machine = BatchMachine::start(
            p.plan.dag.clone(),
            p.dispositions.clone(),
            p.options.node_policies(&p.objects, &p.plan),
            &mut effects,
        )
        .map_err(|e| DriverError::FailedPrecondition(e.to_string()))?;
        let stored = StoredBatch {
            batch_id: p.batch_id.clone(),
            idempotency_key: p.idempotency_key.clone(),
            content_hash: p.content_hash.clone(),
            created_at_ms: p.created_at.timestamp_millis(),
            options: serde_json::to_value(&p.options).unwrap_or_default(),
            objects_json: serde_json::to_vec(&p.objects).unwrap_or_default(),
        };
        let head = head_of(&machine, None);
        let initial: Vec<(u32, NodeRecord)> = machine
            .records()
            .iter()
            .enumerate()
            .filter(|(_, r)| r.state != NodeState::Pending)
            .map(|(i, r)| (i as u32, r.clone()))
            .collect();
        let created = retry_port(&self.settings.metrics, "create batch", || {
            self.store.create_batch(&stored, &head, &initial)
        })
        .await?;
        // The stored form (the objects as JSON: ~270 MB at 1M objects) is not needed any more.
        drop(stored);
        drop(initial);
        match created {
            CreateOutcome::Created => {}
            CreateOutcome::Existing {
                batch_id,
                content_hash,
            } => {
                return if content_hash == p.content_hash {
                    Ok(SubmitOutcome {
                        batch_id,
                        created: false,
                    })
                } else {
                    Err(DriverError::IdempotencyConflict {
                        key: p.idempotency_key,
                        batch_id,
                    })
                };
            }
        }
        info!(batch_id = %p.batch_id, objects = p.plan.len(), "batch submitted");
        let batch_id = p.batch_id.clone();
        let (objects, submitted_at) = (p.plan.len(), p.created_at);
        self.install(p, machine);
        // The initial records are durable; perform the rest of start's effects.
        let mut step = Step::default();
        self.absorb(&mut step, &batch_id, effects, false);
        self.flush(step).await?;
        if let Some(t) = &self.traces {
            t.batch_submitted(&batch_id, objects, submitted_at.into());
        }
        Ok(SubmitOutcome {
            batch_id,
            created: true,
        })
    }

    fn install(&mut self, p: PreparedBatch, machine: BatchMachine) {
        let node_of = (0..p.plan.len() as u32)
            .map(|n| (p.plan.object(&p.objects, n).id.clone(), n))
            .collect();
        let finished_at = machine.is_terminal().then(Utc::now);
        self.state.batches.insert(
            p.batch_id.clone(),
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
                watch: broadcast::channel(self.settings.watch_capacity.max(1)).0,
                created_at: p.created_at,
                finished_at,
            },
        );
    }

    async fn restore(&mut self) -> Result<(), DriverError> {
        let (agents, next_epoch) = retry_port(&self.settings.metrics, "load agent leases", || {
            self.store.load_agents()
        })
        .await?;
        let registry = Registry::restore(self.settings.lease_ttl, agents, next_epoch, Utc::now());
        let live = registry.list(None, false).len();
        if live > 0 {
            info!(
                agents = live,
                "agent leases restored; each runs a full TTL from now"
            );
        }
        self.state.agents = registry;
        let mut active = retry_port(&self.settings.metrics, "load active batches", || {
            self.store.load_active()
        })
        .await?;
        // Oldest first: where two batches hold the same object in flight, the older one's
        // release is the one that ran, and the newer one coalesces onto it again.
        active.sort_by_key(|r| r.batch.created_at_ms);
        let mut resumed = Vec::with_capacity(active.len());
        for restored in active {
            let b = restored.batch;
            let objects: Vec<ObjectDef> = match serde_json::from_slice(&b.objects_json) {
                Ok(o) => o,
                Err(e) => {
                    warn!(batch_id = %b.batch_id, error = %e, "stored batch unreadable; skipped");
                    continue;
                }
            };
            let options: BatchOptions =
                serde_json::from_value(b.options.clone()).unwrap_or_default();
            let created_at =
                DateTime::from_timestamp_millis(b.created_at_ms).unwrap_or_else(Utc::now);
            // The initial dispositions are in the restored records already (and taken from
            // them below): planning needs no earlier loads and no preflight rules.
            let ctx = PlanContext {
                max_objects: usize::MAX,
                durations: &self.settings.zone_durations_ms,
                last_loaded: &Default::default(),
                preflight: &Default::default(),
                now: created_at,
            };
            let prepared = match prepare(&b.idempotency_key, objects, options, &ctx) {
                Ok(p) => p,
                Err(e) => {
                    warn!(batch_id = %b.batch_id, error = %e, "stored batch no longer plans; skipped");
                    continue;
                }
            };
            let n = prepared.plan.len();
            let mut records: Vec<NodeRecord> = (0..n).map(|_| NodeRecord::pending()).collect();
            for (node, r) in restored.nodes {
                if let Some(slot) = records.get_mut(node as usize) {
                    *slot = r;
                }
            }
            let mut prepared = prepared;
            prepared.dispositions = records.iter().map(disposition_of).collect();
            let policies = prepared
                .options
                .node_policies(&prepared.objects, &prepared.plan);
            let mut machine = match BatchMachine::restore(
                prepared.plan.dag.clone(),
                records,
                policies,
            ) {
                Ok(m) => m,
                Err(e) => {
                    warn!(batch_id = %b.batch_id, error = %e, "stored batch inconsistent; skipped");
                    continue;
                }
            };
            machine.raise_epoch_floor(restored.head.next_epoch);
            prepared.batch_id = b.batch_id.clone();
            prepared.content_hash = b.content_hash;
            info!(batch_id = %b.batch_id, objects = n, "batch restored");
            self.install(prepared, machine);
            resumed.push(b.batch_id);
        }
        // Attempts running or waiting for their retry own their objects again, before any
        // READY release is re-issued; running ones get a full execution timeout from now (how
        // long they ran before the restart is not known).
        let rearmed_at = tokio::time::Instant::now();
        for batch_id in &resumed {
            let rt = &self.state.batches[batch_id];
            for (node, rec) in rt.machine.records().iter().enumerate() {
                if matches!(rec.state, NodeState::Running | NodeState::RetryWait) {
                    let node = node as NodeIx;
                    let o = rt.object(node);
                    self.state.coalescer.adopt(&o.id, batch_id.clone(), node);
                    if rec.state == NodeState::Running {
                        self.deadlines.push(Reverse((
                            rearmed_at + execution_timeout(&self.settings, &o.zone),
                            batch_id.clone(),
                            node,
                            rec.attempt,
                            rec.dispatch_epoch,
                        )));
                    }
                }
            }
        }
        for batch_id in resumed {
            let mut effects = Vec::new();
            if let Some(rt) = self.state.batches.get_mut(&batch_id) {
                rt.machine.resume(Utc::now(), &mut effects);
            }
            let mut step = Step::default();
            self.absorb(&mut step, &batch_id, effects, true);
            self.deliver(&mut step);
            self.flush(step).await?;
        }
        Ok(())
    }

    async fn results(&mut self, records: Vec<crate::ports::ResultRecord>) {
        let mut step = Step {
            consumed_at: Some(Instant::now()),
            ..Step::default()
        };
        // `apply_result` spans, ended once the step is durable (traces exported only).
        let mut spans = Vec::new();
        for rec in records {
            step.positions.push(rec.position);
            let result = match rec.result {
                Ok(r) => r,
                Err(reason) => {
                    self.state.counters.undecodable += 1;
                    self.settings.metrics.result("undecodable");
                    warn!(partition = rec.position.partition, offset = rec.position.offset, %reason, "undecodable result record skipped");
                    continue;
                }
            };
            let (outcome, processed) = result_outcome(&result);
            let mut span = match (&self.traces, &rec.traceparent) {
                (Some(t), Some(tp)) => t.result_consumed(tp, &result),
                _ => None,
            };
            let mut decided = |span: &mut Option<_>, d| {
                if let Some(mut s) = span.take() {
                    crate::telemetry::result_decided(&mut s, d);
                    spans.push(s);
                }
            };
            let Some((batch_id, object_id, agent, event)) = to_event(result) else {
                self.state.counters.undecodable += 1;
                self.settings.metrics.result("undecodable");
                warn!(
                    partition = rec.position.partition,
                    offset = rec.position.offset,
                    "result record without an outcome skipped"
                );
                continue;
            };
            self.settings.metrics.result(outcome);
            let Some(rt) = self.state.batches.get(&batch_id) else {
                self.state.counters.unknown_batch += 1;
                self.settings.metrics.result_ignored("unknown_batch");
                debug!(%batch_id, "result for an unknown batch ignored");
                decided(&mut span, Err("unknown_batch"));
                continue;
            };
            let Some(node) = ObjectId::parse(&object_id)
                .ok()
                .and_then(|id| rt.node_of.get(&id).copied())
            else {
                *self
                    .state
                    .counters
                    .ignored
                    .entry(IgnoreReason::UnknownNode.as_str())
                    .or_default() += 1;
                self.settings
                    .metrics
                    .result_ignored(IgnoreReason::UnknownNode.as_str());
                decided(&mut span, Err(IgnoreReason::UnknownNode.as_str()));
                continue;
            };
            if let Some(seconds) = processed {
                self.settings
                    .metrics
                    .processed(rt.object(node).zone.as_str(), seconds);
            }
            if self.settings.require_agent_lease
                && !self.state.agents.is_live_in(&agent, &rt.object(node).zone)
            {
                self.state.counters.no_lease += 1;
                self.settings.metrics.result_ignored("no_lease");
                warn!(%batch_id, %object_id, agent_id = %agent, "result from an agent without a live lease for the object's zone rejected");
                decided(&mut span, Err("no_lease"));
                continue;
            }
            let event = event(node);
            let outcome = self.handle(&mut step, &batch_id, event);
            decided(&mut span, Ok(outcome));
            if outcome.is_applied()
                && !agent.is_empty()
                && let Some(rt) = self.state.batches.get_mut(&batch_id)
            {
                rt.last_agent.insert(node, agent);
            }
        }
        if let Err(e) = self.flush(step).await {
            warn!(error = %e, "step not persisted");
        }
        // Dropping a span ends it.
        drop(spans);
    }

    /// The broker had lost topics (they were just created again): every Ready in flight is
    /// gone with them, so every READY object of every running batch is published again, with
    /// the same attempt and dispatch epoch.
    async fn topics_recreated(
        &mut self,
        created: usize,
    ) -> Option<mpsc::Receiver<crate::ports::ResultRecord>> {
        warn!(
            created,
            "the broker had lost topics; subscribing to the results again and publishing every READY object again"
        );
        let fresh = match self.data.resubscribe_results().await {
            Ok(fresh) => fresh,
            Err(e) => {
                warn!(error = %e, "results not subscribed again");
                None
            }
        };
        self.state.topics_created();
        // Everything undelivered is READY and published below.
        self.undelivered.clear();
        let running: Vec<String> = self
            .state
            .batches
            .iter()
            .filter(|(_, rt)| !rt.machine.is_terminal())
            .map(|(id, _)| id.clone())
            .collect();
        let mut step = Step::default();
        for batch_id in running {
            let rt = &self.state.batches[&batch_id];
            let effects: Vec<Effect> = rt
                .machine
                .nodes_in(NodeState::Ready)
                .filter_map(|node| {
                    let r = rt.machine.record(node)?;
                    Some(Effect::PublishReady {
                        node,
                        attempt: r.attempt,
                        dispatch_epoch: r.dispatch_epoch,
                    })
                })
                .collect();
            self.absorb(&mut step, &batch_id, effects, true);
        }
        self.deliver(&mut step);
        if let Err(e) = self.flush(step).await {
            warn!(error = %e, "re-publishing after the topics were lost failed");
        }
        fresh
    }

    /// RUNNING attempts past their zone's execution timeout count as failed (retryable, reason
    /// `timeout`); their late results are then ignored.
    async fn expire_attempts(&mut self) {
        let now = tokio::time::Instant::now();
        let mut step = Step::default();
        while let Some(Reverse((at, ..))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, batch_id, node, attempt, epoch))) = self.deadlines.pop() else {
                break;
            };
            let running = self.state.batches.get(&batch_id).is_some_and(|rt| {
                rt.machine.record(node).is_some_and(|r| {
                    r.state == NodeState::Running
                        && r.attempt == attempt
                        && r.dispatch_epoch == epoch
                })
            });
            if running {
                warn!(%batch_id, node, attempt, "attempt exceeded its execution timeout");
                let event = Event::AttemptLost {
                    node,
                    attempt,
                    dispatch_epoch: epoch,
                    reason: LossReason::Timeout,
                };
                self.handle(&mut step, &batch_id, event);
            }
        }
        if !step.heads.is_empty()
            && let Err(e) = self.flush(step).await
        {
            warn!(error = %e, "timed-out attempts not persisted");
        }
    }

    /// Agents whose lease ran out are lost: every attempt they held (as they last reported, and
    /// every RUNNING attempt they started) counts as failed with reason `agent_lost`.
    async fn expire_leases(&mut self) {
        let now = Utc::now();
        let lost = self.state.agents.expire(now);
        if lost.is_empty() {
            return;
        }
        // Ended leases stay listed for a while.
        self.state
            .agents
            .forget_inactive(now - chrono::TimeDelta::hours(1));
        let mut step = Step::default();
        for agent in lost {
            let events = held_attempts_lost(&self.state, &agent.agent_id, &agent.in_flight);
            warn!(agent_id = %agent.agent_id, zone = %agent.zone, attempts = events.len(), "agent lease expired; its attempts are retried");
            for (batch_id, event) in events {
                self.handle(&mut step, &batch_id, event);
            }
        }
        if let Err(e) = self.flush(step).await {
            warn!(error = %e, "lost attempts not persisted");
        }
    }

    async fn tick(&mut self) {
        if !self.undelivered.is_empty() && tokio::time::Instant::now() >= self.redeliver_at {
            let ready = std::mem::take(&mut self.undelivered);
            self.publish_ready(ready, None).await;
        }
        self.expire_attempts().await;
        self.expire_leases().await;
        let now = Utc::now();
        let due = match self
            .store
            .claim_due_retries(now.timestamp_millis(), 1024)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "claiming due retries failed");
                return;
            }
        };
        if due.is_empty() {
            return;
        }
        let mut step = Step::default();
        for RetryEntry {
            batch_id,
            node,
            attempt,
            ..
        } in due
        {
            if self.state.batches.contains_key(&batch_id) {
                self.handle(&mut step, &batch_id, Event::RetryDue { node, attempt });
            }
        }
        if let Err(e) = self.flush(step).await {
            warn!(error = %e, "retry step not persisted");
        }
    }

    /// Feeds one event to a batch's machine and absorbs its effects into the step, then tells
    /// the batches whose releases waited on what this event settled.
    fn handle(&mut self, step: &mut Step, batch_id: &str, event: Event) -> Outcome {
        let outcome = self.handle_one(step, batch_id, event);
        self.deliver(step);
        outcome
    }

    /// Performs the step's pending deliveries (and those they cause) to waiting batches.
    fn deliver(&mut self, step: &mut Step) {
        while let Some(delivery) = step.deliveries.pop() {
            match delivery {
                Delivery::Outcome {
                    waiter,
                    loaded,
                    error,
                } => {
                    let event = Event::CoalescedOutcome {
                        node: waiter.node,
                        attempt: waiter.attempt,
                        dispatch_epoch: waiter.dispatch_epoch,
                        loaded,
                        error,
                    };
                    self.handle_one(step, &waiter.batch, event);
                }
                Delivery::Rerelease(waiter) => {
                    let still_waiting = self.state.batches.get(&waiter.batch).is_some_and(|rt| {
                        rt.machine.record(waiter.node).is_some_and(|r| {
                            r.state == NodeState::Ready
                                && r.attempt == waiter.attempt
                                && r.dispatch_epoch == waiter.dispatch_epoch
                        })
                    });
                    if still_waiting {
                        let effect = Effect::PublishReady {
                            node: waiter.node,
                            attempt: waiter.attempt,
                            dispatch_epoch: waiter.dispatch_epoch,
                        };
                        self.absorb(step, &waiter.batch, vec![effect], false);
                    }
                }
            }
        }
    }

    fn handle_one(&mut self, step: &mut Step, batch_id: &str, event: Event) -> Outcome {
        let jitter = self.jitter();
        let Some(rt) = self.state.batches.get_mut(batch_id) else {
            return Outcome::Ignored(IgnoreReason::UnknownNode);
        };
        let mut effects = Vec::new();
        let outcome = rt.machine.handle(event, Utc::now(), jitter, &mut effects);
        match outcome {
            Outcome::Applied => self.state.counters.applied += 1,
            Outcome::Ignored(reason) => {
                *self
                    .state
                    .counters
                    .ignored
                    .entry(reason.as_str())
                    .or_default() += 1;
                self.settings.metrics.result_ignored(reason.as_str());
            }
        }
        self.absorb(step, batch_id, effects, false);
        outcome
    }

    /// Turns machine effects into writes, records and notifications.
    fn absorb(&mut self, step: &mut Step, batch_id: &str, effects: Vec<Effect>, resumed: bool) {
        let Some(rt) = self.state.batches.get_mut(batch_id) else {
            return;
        };
        let now = Utc::now();
        step.heads.insert(batch_id.to_owned(), ());
        for effect in effects {
            match effect {
                Effect::Transition {
                    node,
                    from,
                    to,
                    attempt,
                } => {
                    if to == NodeState::Loaded && !resumed {
                        let waited = (now - rt.created_at).to_std().unwrap_or_default();
                        self.settings.metrics.object_loaded(
                            rt.plan.object(&rt.objects, node).zone.as_str(),
                            waited.as_secs_f64(),
                        );
                    }
                    step.changed
                        .entry(batch_id.to_owned())
                        .or_default()
                        .push(node);
                    if in_flight(from) && !in_flight(to) {
                        let settlement = match to {
                            NodeState::Loaded => Settlement::Loaded,
                            NodeState::Dead => Settlement::Failed {
                                error: rt.machine.last_error(node).map(str::to_owned),
                            },
                            _ => Settlement::Abandoned,
                        };
                        let id = &rt.plan.object(&rt.objects, node).id;
                        step.deliveries.extend(self.state.coalescer.settle(
                            id,
                            &rt.batch_id,
                            node,
                            settlement,
                        ));
                    }
                    if to == NodeState::Loaded {
                        let id = rt.plan.object(&rt.objects, node).id.to_string();
                        step.write.loaded.push((id, now.timestamp_millis()));
                    }
                    if to == NodeState::Running {
                        let zone = &rt.plan.object(&rt.objects, node).zone;
                        let epoch = rt.machine.record(node).map_or(0, |r| r.dispatch_epoch);
                        self.deadlines.push(Reverse((
                            tokio::time::Instant::now() + execution_timeout(&self.settings, zone),
                            batch_id.to_owned(),
                            node,
                            attempt,
                            epoch,
                        )));
                    }
                    if let Some(t) = &mut self.traces {
                        t.transition(batch_id, node, from, to, rt.machine.last_error(node));
                    }
                    rt.history.entry(node).or_default().push(TransitionRecord {
                        from,
                        to,
                        attempt,
                        at: now,
                    });
                    let o = rt.plan.object(&rt.objects, node);
                    step.status.push(pb::StatusChanged {
                        batch_id: batch_id.to_owned(),
                        object_id: o.id.to_string(),
                        zone: o.zone.to_string(),
                        from_state: convert::object_state(from) as i32,
                        to_state: convert::object_state(to) as i32,
                        batch_state: convert::batch_state(rt.machine.batch_state()) as i32,
                        previous_batch_state: 0,
                        attempt,
                        at: Some(convert::timestamp(now)),
                        reason: String::new(),
                    });
                    step.watch.push((
                        batch_id.to_owned(),
                        WatchEvent::Object {
                            node,
                            from,
                            to,
                            attempt,
                            at: now,
                        },
                    ));
                }
                Effect::PublishReady {
                    node,
                    attempt,
                    dispatch_epoch,
                } => {
                    let o = rt.plan.object(&rt.objects, node);
                    let ticket = Ticket {
                        batch: rt.batch_id.clone(),
                        node,
                        attempt,
                        dispatch_epoch,
                    };
                    match self.state.coalescer.claim(&o.id, ticket) {
                        Claim::Run => {
                            rt.coalesced_onto.remove(&node);
                        }
                        Claim::Wait { onto } => {
                            debug!(%batch_id, object = %o.id, %onto, "coalesced onto another batch's attempt");
                            rt.coalesced_onto.insert(node, onto);
                            continue;
                        }
                    }
                    step.ready.push(pb::ObjectReady {
                        batch_id: batch_id.to_owned(),
                        object_id: o.id.to_string(),
                        zone: o.zone.to_string(),
                        attempt,
                        max_attempts: rt.machine.policy(node).max_attempts,
                        dispatch_epoch,
                        object: Some(convert::object_definition(o)),
                        released_at: Some(convert::timestamp(now)),
                        execution_timeout: Some(convert::duration(execution_timeout(
                            &self.settings,
                            &o.zone,
                        ))),
                        trace: self.traces.as_mut().map(|t| {
                            let (id, zone) = (o.id.as_str(), o.zone.as_str());
                            t.released(batch_id, node, id, zone, attempt, dispatch_epoch)
                        }),
                    });
                }
                Effect::ScheduleRetry {
                    node,
                    attempt,
                    due_at,
                } => {
                    if !resumed {
                        let zone = &rt.plan.object(&rt.objects, node).zone;
                        self.settings.metrics.retry_scheduled(zone.as_str());
                    }
                    step.write.schedule.push(RetryEntry {
                        batch_id: batch_id.to_owned(),
                        node,
                        attempt,
                        due_ms: due_at.timestamp_millis(),
                    });
                }
                Effect::DeadLetter {
                    node,
                    attempt: _,
                    attempts,
                    last_error,
                    reason,
                } => {
                    let o = rt.plan.object(&rt.objects, node);
                    let error = last_error.unwrap_or_default();
                    let letter = pb::DeadLetter {
                        batch_id: batch_id.to_owned(),
                        object_id: o.id.to_string(),
                        zone: o.zone.to_string(),
                        attempts,
                        error_fingerprint: convert::fingerprint(&error),
                        last_error: error,
                        reason: convert::failure_reason(reason) as i32,
                        dead_at: Some(convert::timestamp(now)),
                        object: Some(convert::object_definition(o)),
                        last_agent_id: rt.last_agent.get(&node).cloned().unwrap_or_default(),
                        blocked_descendant_count: 0,
                    };
                    step.write.dead_letters.push(StoredDeadLetter {
                        batch_id: batch_id.to_owned(),
                        node,
                        payload: prost::Message::encode_to_vec(&letter),
                        dead_at_ms: now.timestamp_millis(),
                    });
                    // A resumed batch already produced its dead letters before the restart.
                    if !resumed {
                        self.settings.metrics.dead_letter(&letter.zone);
                        step.dead.push(letter);
                    }
                }
                Effect::BatchFinished { state } => {
                    rt.finished_at = Some(now);
                    info!(%batch_id, state = %state, "batch finished");
                    step.watch.push((
                        batch_id.to_owned(),
                        WatchEvent::Batch {
                            from: BatchState::Running,
                            to: state,
                            at: now,
                        },
                    ));
                }
                Effect::BatchReopened => {
                    rt.finished_at = None;
                    step.watch.push((
                        batch_id.to_owned(),
                        WatchEvent::Batch {
                            from: BatchState::Failed,
                            to: BatchState::Running,
                            at: now,
                        },
                    ));
                }
            }
        }
    }

    /// Performs a step: persist, publish, commit, notify.
    async fn flush(&mut self, mut step: Step) -> Result<(), DriverError> {
        for (batch_id, ()) in std::mem::take(&mut step.heads) {
            let Some(rt) = self.state.batches.get(&batch_id) else {
                continue;
            };
            let mut nodes = step.changed.remove(&batch_id).unwrap_or_default();
            nodes.sort_unstable();
            nodes.dedup();
            step.write.batches.push(BatchWrite {
                head: head_of(&rt.machine, rt.finished_at),
                nodes: nodes
                    .into_iter()
                    .filter_map(|n| rt.machine.record(n).map(|r| (n, r.clone())))
                    .collect(),
                batch_id,
            });
        }
        let write = std::mem::take(&mut step.write);
        if !write.batches.is_empty()
            || !write.schedule.is_empty()
            || !write.dead_letters.is_empty()
            || !write.loaded.is_empty()
        {
            retry_port(&self.settings.metrics, "persist step", || {
                self.store.apply(&write)
            })
            .await?;
        }
        if let Some(changes) = self.state.agents.take_changes()
            && let Err(e) = retry_port(&self.settings.metrics, "persist agent leases", || {
                self.store.save_agents(&changes)
            })
            .await
        {
            self.state.agents.mark_unsaved(&changes);
            return Err(e.into());
        }
        if !step.ready.is_empty() {
            let mut ready = std::mem::take(&mut step.ready);
            // Higher priority first among the objects released together.
            ready.sort_by_key(|r| std::cmp::Reverse(r.object.as_ref().map_or(0, |o| o.priority)));
            self.publish_ready(ready, step.consumed_at).await;
        }
        if !step.dead.is_empty()
            && let Err(e) = self
                .data
                .publish_dead_letters(std::mem::take(&mut step.dead))
                .await
        {
            self.settings
                .metrics
                .port_error("kafka", "publish dead letters");
            warn!(error = %e, "dead letters not produced to the dead-letter topic");
        }
        if !step.status.is_empty()
            && let Some(tx) = &self.status_tx
            && tx.try_send(std::mem::take(&mut step.status)).is_err()
        {
            self.state.counters.status_dropped += 1;
            debug!("status changes dropped: the status topic's producer is behind");
        }
        if !step.positions.is_empty()
            && let Err(e) = self.data.store_positions(&step.positions)
        {
            warn!(error = %e, "result offsets not stored");
        }
        let mut by_batch: BTreeMap<String, Vec<WatchEvent>> = BTreeMap::new();
        for (batch_id, ev) in step.watch {
            by_batch.entry(batch_id).or_default().push(ev);
        }
        for (batch_id, events) in by_batch {
            if let Some(rt) = self.state.batches.get(&batch_id) {
                let _ = rt.watch.send(events.into());
            }
        }
        Ok(())
    }

    /// Hands a step's Ready records to the producer and moves on: the delivery reports are
    /// awaited beside the driver (at most [`PUBLISHING_STEPS`] steps at once) and come back as a
    /// [`Published`] report. `consumed_at`: when the results that released them were consumed
    /// (release latency, measured when the records are handed to the producer).
    async fn publish_ready(&mut self, ready: Vec<pb::ObjectReady>, consumed_at: Option<Instant>) {
        let Ok(permit) = self.publishing.clone().acquire_owned().await else {
            return;
        };
        let data = self.data.clone();
        let zones = self.settings.zones.clone();
        let report = self.published_tx.clone();
        tokio::spawn(async move {
            let latency = consumed_at.map(|t| t.elapsed());
            let result = data.publish_ready(&ready).await;
            let failed = match result {
                Ok(()) => None,
                Err(e) => {
                    // Make sure the topics exist before the records are tried again.
                    let mut all = zones;
                    all.extend(ready.iter().filter_map(|r| Zone::parse(&r.zone)));
                    all.sort();
                    all.dedup();
                    if let Err(e) = data.ensure_topics(&all).await {
                        warn!(error = %e, "topics not ensured");
                    }
                    Some(e)
                }
            };
            drop(permit);
            let _ = report.send(Published {
                ready,
                latency,
                failed,
            });
        });
    }

    /// A delivery report of [`Driver::publish_ready`].
    fn published(&mut self, report: Published) {
        let n = report.ready.len() as u64;
        if let Some(latency) = report.latency {
            self.state.counters.release_latency.record_n(latency, n);
            self.settings
                .metrics
                .release_latency(latency.as_secs_f64(), n);
        }
        match report.failed {
            None => {
                self.state.counters.ready_published += n;
                for r in &report.ready {
                    self.settings.metrics.ready_published(&r.zone, 1);
                }
                self.redeliver_backoff = Duration::ZERO;
            }
            Some(e) => {
                self.settings.metrics.port_error("kafka", "publish ready");
                self.redeliver_backoff = (self.redeliver_backoff * 2)
                    .max(self.settings.tick)
                    .min(Duration::from_secs(5));
                self.redeliver_at = tokio::time::Instant::now() + self.redeliver_backoff;
                warn!(error = %e, records = n, retry_in = ?self.redeliver_backoff, "ready records not delivered; publishing them again");
                // Those still READY with the same attempt: the rest moved on meanwhile.
                let still_ready = |r: &pb::ObjectReady| {
                    self.state.batches.get(&r.batch_id).is_some_and(|rt| {
                        ObjectId::parse(&r.object_id)
                            .ok()
                            .and_then(|id| rt.node_of.get(&id))
                            .and_then(|n| rt.machine.record(*n))
                            .is_some_and(|rec| {
                                rec.state == NodeState::Ready
                                    && rec.attempt == r.attempt
                                    && rec.dispatch_epoch == r.dispatch_epoch
                            })
                    })
                };
                let again: Vec<pb::ObjectReady> = report
                    .ready
                    .into_iter()
                    .filter(|r| still_ready(r))
                    .collect();
                self.undelivered.extend(again);
            }
        }
    }
}

/// What a background delivery of one step's Ready records reports back.
#[derive(Debug)]
struct Published {
    /// The records.
    ready: Vec<pb::ObjectReady>,
    /// Release latency of the step (when the results were consumed → handed to the producer).
    latency: Option<Duration>,
    /// Why they were not (all) delivered.
    failed: Option<PortError>,
}

/// A task producing status changes in the order it receives them (best effort: failures are
/// logged). It ends when the sender is dropped and what it was handed is produced.
fn publish_status_in_order<D: DataPlane>(
    data: Arc<D>,
) -> (
    mpsc::Sender<Vec<pb::StatusChanged>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = mpsc::channel::<Vec<pb::StatusChanged>>(STATUS_BACKLOG);
    let task = tokio::spawn(async move {
        while let Some(mut changes) = rx.recv().await {
            // Whatever else is queued goes in the same produce call.
            while let Ok(more) = rx.try_recv() {
                changes.extend(more);
            }
            if let Err(e) = data.publish_status(changes).await {
                debug!(error = %e, "status changes not produced");
            }
        }
    });
    (tx, task)
}

/// The initial disposition a restored record shows: skipped as fresh, rejected by preflight,
/// or run.
fn disposition_of(r: &NodeRecord) -> InitialDisposition {
    match (r.state, r.dead_reason) {
        (NodeState::SkippedFresh, _) => InitialDisposition::SkippedFresh,
        (NodeState::Dead, Some(DeadReason::Preflight)) => InitialDisposition::PreflightRejected {
            reason: r.last_error.clone().unwrap_or_default(),
        },
        _ => InitialDisposition::Run,
    }
}

/// The events that declare lost (reason `agent_lost`) the attempts agent `agent_id` held: those
/// it last reported, and every RUNNING attempt it was the last to report on. The machine ignores
/// any that moved on meanwhile.
pub fn held_attempts_lost(
    state: &DriverState,
    agent_id: &str,
    reported: &[strata_core::agents::HeldAttempt],
) -> Vec<(String, Event)> {
    held_attempts(state, agent_id, reported, LossReason::AgentLost)
}

/// Like [`held_attempts_lost`], with the loss `reason`.
pub fn held_attempts(
    state: &DriverState,
    agent_id: &str,
    reported: &[strata_core::agents::HeldAttempt],
    reason: LossReason,
) -> Vec<(String, Event)> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let mut add = |batch_id: &str, node: NodeIx, attempt: u32, dispatch_epoch: u64| {
        if seen.insert((batch_id.to_owned(), node, attempt)) {
            out.push((
                batch_id.to_owned(),
                Event::AttemptLost {
                    node,
                    attempt,
                    dispatch_epoch,
                    reason,
                },
            ));
        }
    };
    for h in reported {
        if let Some(node) = state.node_of(&h.batch_id, &h.object_id) {
            add(&h.batch_id, node, h.attempt, h.dispatch_epoch);
        }
    }
    for rt in state.batches.values() {
        if rt.machine.is_terminal() {
            continue;
        }
        for (node, agent) in &rt.last_agent {
            if agent != agent_id {
                continue;
            }
            if let Some(r) = rt.machine.record(*node)
                && r.state == NodeState::Running
            {
                add(&rt.batch_id, *node, r.attempt, r.dispatch_epoch);
            }
        }
    }
    out
}

/// The execution timeout of one attempt in `zone`.
fn execution_timeout(settings: &DriverSettings, zone: &Zone) -> Duration {
    settings
        .zone_execution_timeouts
        .get(zone)
        .copied()
        .unwrap_or(settings.execution_timeout)
}

/// Checks the topics every `every` (the first check after one period) and reports how many had
/// to be created again. Runs beside the driver so that a slow or absent broker never stalls it.
fn watch_topics<D: DataPlane>(
    data: Arc<D>,
    zones: Vec<Zone>,
    every: Duration,
    lost: mpsc::Sender<usize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            match data.ensure_topics(&zones).await {
                Ok(0) => {}
                Ok(created) => {
                    if lost.send(created).await.is_err() {
                        return;
                    }
                }
                Err(e) => debug!(error = %e, "topic check failed"),
            }
        }
    })
}

/// READY, RUNNING and RETRY_WAIT: the object's run is in progress (others may coalesce onto it).
fn in_flight(state: NodeState) -> bool {
    matches!(
        state,
        NodeState::Ready | NodeState::Running | NodeState::RetryWait
    )
}

fn head_of(machine: &BatchMachine, finished_at: Option<DateTime<Utc>>) -> BatchHead {
    BatchHead {
        state: machine.batch_state().as_str().to_owned(),
        next_epoch: machine.next_epoch(),
        finished_at_ms: finished_at.map(|t| t.timestamp_millis()),
    }
}

type EventFor = Box<dyn FnOnce(NodeIx) -> Event>;

/// Splits a result into (batch, object, agent, event-for-node).
/// The outcome label of a result record, and the processor run time it reports.
fn result_outcome(result: &pb::ObjectResult) -> (&'static str, Option<f64>) {
    let seconds = |d: &Option<prost_types::Duration>| {
        d.and_then(|d| Duration::try_from(d).ok())
            .map(|d| d.as_secs_f64())
    };
    match &result.result {
        Some(object_result::Result::Started(_)) => ("started", None),
        Some(object_result::Result::Loaded(l)) => ("loaded", seconds(&l.duration)),
        Some(object_result::Result::Failed(f)) => ("failed", seconds(&f.duration)),
        None => ("undecodable", None),
    }
}

fn to_event(result: pb::ObjectResult) -> Option<(String, String, String, EventFor)> {
    Some(match result.result? {
        object_result::Result::Started(s) => {
            let (attempt, dispatch_epoch) = (s.attempt, s.dispatch_epoch);
            (
                s.batch_id,
                s.object_id,
                s.agent_id,
                Box::new(move |node| Event::Started {
                    node,
                    attempt,
                    dispatch_epoch,
                }),
            )
        }
        object_result::Result::Loaded(l) => {
            let (attempt, dispatch_epoch) = (l.attempt, l.dispatch_epoch);
            (
                l.batch_id,
                l.object_id,
                l.agent_id,
                Box::new(move |node| Event::Loaded {
                    node,
                    attempt,
                    dispatch_epoch,
                }),
            )
        }
        object_result::Result::Failed(f) => {
            let (attempt, dispatch_epoch, retryable, error) =
                (f.attempt, f.dispatch_epoch, f.retryable, f.error);
            (
                f.batch_id,
                f.object_id,
                f.agent_id,
                Box::new(move |node| Event::Failed {
                    node,
                    attempt,
                    dispatch_epoch,
                    retryable,
                    error,
                }),
            )
        }
    })
}

/// Retries a store or broker call while it fails with a retryable error (bounded backoff, about
/// a minute in all); a non-retryable error is returned at once.
async fn retry_port<T, F, Fut>(metrics: &Metrics, what: &str, mut call: F) -> Result<T, PortError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, PortError>>,
{
    let mut delay = Duration::from_millis(50);
    let mut tries = 0;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if e.retryable() && tries < 20 => {
                metrics.port_error(e.service(), what);
                tries += 1;
                warn!(error = %e, tries, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                metrics.port_error(e.service(), what);
                return Err(e);
            }
        }
    }
}
