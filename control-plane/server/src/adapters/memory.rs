//! In-memory twins of the ports, for dev mode (`strata dev`) and component tests: the same
//! semantics as Kafka and Redis (delivery awaited, atomic steps, atomic retry claims), nothing
//! durable beyond the process. Ready records and results travel over in-memory topics
//! ([`strata_bus`]) that behave like Kafka's (offsets, consumer groups, nothing dropped when a
//! consumer is slow): agents consume them with the worker agent's own loop. Never used by the
//! end-to-end suites, which run on the real broker and Redis.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use strata_bus::Topic;
use strata_core::agents::{Agent, RegistryChanges};
use strata_core::machine::NodeRecord;
use strata_core::{ObjectDef, Zone};
use strata_proto::signing::ReadySigner;
use strata_proto::v1::{DeadLetter, ObjectReady, ObjectResult, StatusChanged};
use tokio::sync::{broadcast, mpsc};

use crate::convert;
use crate::ports::{
    BatchHead, BatchWithTrails, CreateOutcome, DataPlane, NodeTrail, PortResult, Position,
    RestoredBatch, ResultRecord, RetryEntry, StateStore, StepWrite, StoredBatch, StoredDeadLetter,
};
use crate::records::{DeadLetterRecord, ReadyRecord, StatusChange};

/// Capacity of the status and Ready broadcast channels (taps for tests and watchers; the Ready
/// records agents consume are on the topics, which drop nothing) and of the driver's results
/// channel.
const TOPIC_CAPACITY: usize = 65_536;
/// The consumer group the driver reads the results topic in.
const RESULTS_GROUP: &str = "control-plane";

/// An in-memory data plane: one Ready topic per zone ([`MemoryDataPlane::ready_topic`]) and a
/// results topic ([`MemoryDataPlane::results_topic`]), the driver consuming the latter.
#[derive(Debug)]
pub struct MemoryDataPlane {
    ready: Mutex<HashMap<Zone, Topic<ObjectReady>>>,
    /// Every Ready published, from the moment of subscribing (for tests' logs).
    ready_tap: Mutex<HashMap<Zone, broadcast::Sender<ObjectReady>>>,
    results: Topic<ObjectResult>,
    /// Topics that "exist" (for `ensure_topics`'s count; see [`MemoryDataPlane::lose_topics`]).
    topics: Mutex<BTreeSet<String>>,
    results_tx: mpsc::Sender<ResultRecord>,
    results_rx: Mutex<Option<mpsc::Receiver<ResultRecord>>>,
    dead_letters: Mutex<Vec<DeadLetter>>,
    /// Set by [`MemoryDataPlane::fail_dead_letters`].
    dead_letters_fail: std::sync::atomic::AtomicBool,
    status: broadcast::Sender<StatusChanged>,
}

impl Default for MemoryDataPlane {
    fn default() -> Self {
        let (results_tx, results_rx) = mpsc::channel(TOPIC_CAPACITY);
        Self {
            ready: Mutex::new(HashMap::new()),
            ready_tap: Mutex::new(HashMap::new()),
            results: Topic::new(1),
            topics: Mutex::new(BTreeSet::new()),
            dead_letters_fail: std::sync::atomic::AtomicBool::new(false),
            results_tx,
            results_rx: Mutex::new(Some(results_rx)),
            dead_letters: Mutex::new(Vec::new()),
            status: broadcast::channel(TOPIC_CAPACITY).0,
        }
    }
}

impl MemoryDataPlane {
    /// A new, empty data plane.
    pub fn new() -> Self {
        Self::default()
    }

    /// The Ready topic of `zone` (one partition): what its agents consume, in their zone's
    /// consumer group.
    pub fn ready_topic(&self, zone: &Zone) -> Topic<ObjectReady> {
        self.ready
            .lock()
            .expect("ready map poisoned")
            .entry(zone.clone())
            .or_insert_with(|| Topic::new(1))
            .clone()
    }

    /// The results topic (one partition): where agents publish.
    pub fn results_topic(&self) -> Topic<ObjectResult> {
        self.results.clone()
    }

    fn ready_tap(&self, zone: &Zone) -> broadcast::Sender<ObjectReady> {
        self.ready_tap
            .lock()
            .expect("ready tap poisoned")
            .entry(zone.clone())
            .or_insert_with(|| broadcast::channel(TOPIC_CAPACITY).0)
            .clone()
    }

    /// Receives the Ready records of a zone published from now on: a tap for tests that log
    /// what was released (bounded: a receiver that falls behind misses records). Agents consume
    /// [`MemoryDataPlane::ready_topic`] instead.
    pub fn subscribe_ready(&self, zone: &Zone) -> broadcast::Receiver<ObjectReady> {
        self.ready_tap(zone).subscribe()
    }

    /// Publishes a result as an agent would.
    pub async fn send_result(&self, result: ObjectResult) {
        let key = batch_of(&result);
        self.results.publish(key.as_bytes(), result);
    }

    /// Results handed to the driver's subscription and not taken by it yet.
    pub fn results_waiting(&self) -> usize {
        self.results_tx.max_capacity() - self.results_tx.capacity()
    }

    /// While `fail` holds, producing dead letters fails as an unreachable broker would
    /// (component tests of the dead-letter outbox).
    pub fn fail_dead_letters(&self, fail: bool) {
        self.dead_letters_fail
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every dead letter produced so far.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_letters.lock().expect("dlq poisoned").clone()
    }

    /// Forgets which topics exist, as a broker that lost its data would (records already
    /// published stay where they are): the next `ensure_topics` reports them missing.
    pub fn lose_topics(&self) {
        self.topics.lock().expect("topics poisoned").clear();
    }

    /// Receives status changes published from now on.
    pub fn subscribe_status(&self) -> broadcast::Receiver<StatusChanged> {
        self.status.subscribe()
    }
}

/// The batch a result is keyed by.
fn batch_of(result: &ObjectResult) -> String {
    use strata_proto::v1::object_result::Result as R;
    match &result.result {
        Some(R::Started(r)) => r.batch_id.clone(),
        Some(R::Loaded(r)) => r.batch_id.clone(),
        Some(R::Failed(r)) => r.batch_id.clone(),
        None => String::new(),
    }
}

/// Moves the results topic's records into the driver's channel, in the driver's consumer
/// group, until the driver is gone. Offsets are stored as records are handed over: nothing in
/// memory survives the process, so there is nothing to read again after a crash.
async fn forward_results(topic: Topic<ObjectResult>, tx: mpsc::Sender<ResultRecord>) {
    let mut consumer = topic.subscribe(RESULTS_GROUP);
    loop {
        let r = tokio::select! {
            () = tx.closed() => return,
            r = consumer.recv() => r,
        };
        let position = Position {
            partition: r.partition,
            offset: r.offset,
        };
        let record = ResultRecord {
            result: convert::agent_report(r.value)
                .ok_or_else(|| "ObjectResult with no outcome set".into()),
            position,
            traceparent: None,
        };
        if tx.send(record).await.is_err() {
            return;
        }
        let _ = consumer.store(position.partition, position.offset);
    }
}

impl DataPlane for MemoryDataPlane {
    async fn resubscribe_results(&self) -> PortResult<Option<mpsc::Receiver<ResultRecord>>> {
        Ok(None)
    }

    async fn ensure_topics(&self, zones: &[Zone]) -> PortResult<usize> {
        let mut topics = self.topics.lock().expect("topics poisoned");
        let mut created = 0;
        for name in ["results", "dlq", "status"] {
            created += usize::from(topics.insert(name.to_owned()));
        }
        for z in zones {
            self.ready_topic(z);
            created += usize::from(topics.insert(format!("ready.{z}")));
        }
        Ok(created)
    }

    async fn publish_ready(&self, ready: &[ReadyRecord], signer: &ReadySigner) -> PortResult<()> {
        for record in ready {
            let zone = &record.object.zone;
            let r = convert::ready_message(record, signer);
            let tap = self.ready_tap(zone);
            if tap.receiver_count() > 0 {
                let _ = tap.send(r.clone());
            }
            let key = r.batch_id.clone();
            self.ready_topic(zone).publish(key.as_bytes(), r);
        }
        Ok(())
    }

    async fn publish_dead_letters(&self, letters: Vec<DeadLetterRecord>) -> PortResult<()> {
        if self
            .dead_letters_fail
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(crate::ports::PortError::Unavailable {
                service: "kafka",
                detail: "the dead-letter topic takes nothing (MemoryDataPlane::fail_dead_letters)"
                    .into(),
            });
        }
        self.dead_letters
            .lock()
            .expect("dlq poisoned")
            .extend(letters.iter().map(convert::dead_letter_message));
        Ok(())
    }

    async fn publish_status(&self, changes: Vec<StatusChange>) -> PortResult<()> {
        for c in &changes {
            let _ = self.status.send(convert::status_message(c));
        }
        Ok(())
    }

    fn subscribe_results(&self) -> PortResult<mpsc::Receiver<ResultRecord>> {
        let rx = self
            .results_rx
            .lock()
            .expect("results poisoned")
            .take()
            .ok_or_else(|| crate::ports::PortError::Rejected {
                service: "memory",
                detail: "results already subscribed".into(),
            })?;
        tokio::spawn(forward_results(
            self.results.clone(),
            self.results_tx.clone(),
        ));
        Ok(rx)
    }

    fn store_positions(&self, _positions: &[Position]) -> PortResult<()> {
        Ok(())
    }

    async fn ping(&self, _limit: std::time::Duration) -> PortResult<()> {
        Ok(())
    }
}

/// An in-memory state store with the same atomicity as the Redis one.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<StoreInner>,
    /// Set by [`MemoryStore::fail_writes`]: every state write fails as an unreachable Redis's.
    writes_fail: std::sync::atomic::AtomicBool,
}

/// One stored batch: its definition, objects, head and node records.
#[derive(Debug)]
struct StoredEntry {
    batch: StoredBatch,
    objects: Vec<ObjectDef>,
    head: BatchHead,
    nodes: BTreeMap<u32, NodeRecord>,
    trails: BTreeMap<u32, NodeTrail>,
}

/// The Ready signing seed: a secret, so its `Debug` never shows it.
struct Seed([u8; 32]);

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seed(<redacted>)")
    }
}

#[derive(Debug, Default)]
struct StoreInner {
    batches: HashMap<String, StoredEntry>,
    idempotency: HashMap<String, String>,
    /// (created_at_ms, batch_id)
    order: BTreeSet<(i64, String)>,
    /// (due_ms, batch_id, node, attempt)
    retries: BTreeSet<(i64, String, u32, u32)>,
    /// object id → last loaded (ms)
    loaded: HashMap<String, i64>,
    /// (dead_at_ms, batch_id, node) → letter
    dead: BTreeMap<(i64, String, u32), StoredDeadLetter>,
    /// (batch_id, node) of letters not yet confirmed on the dead-letter topic
    unsent: BTreeSet<(String, u32)>,
    /// agent id → agent, and the next lease epoch
    agents: BTreeMap<String, Agent>,
    next_agent_epoch: u64,
    /// The Ready signing seed, once created.
    ready_seed: Option<Seed>,
}

impl MemoryStore {
    /// A new, empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// While `fail` holds, `apply` and `save_agents` fail as a Redis that does not answer
    /// (component tests of what the driver does then).
    pub fn fail_writes(&self, fail: bool) {
        self.writes_fail
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    fn write_allowed(&self) -> PortResult<()> {
        if self.writes_fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::ports::PortError::Unavailable {
                service: "redis",
                detail: "writes fail (MemoryStore::fail_writes)".into(),
            });
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreInner> {
        self.inner.lock().expect("memory store poisoned")
    }
}

impl StateStore for MemoryStore {
    async fn create_batch(
        &self,
        batch: &StoredBatch,
        objects: &[ObjectDef],
        head: &BatchHead,
        nodes: &[(u32, NodeRecord)],
    ) -> PortResult<CreateOutcome> {
        let mut s = self.lock();
        if let Some(id) = s.idempotency.get(&batch.idempotency_key) {
            let hash = s.batches[id].batch.content_hash.clone();
            return Ok(CreateOutcome::Existing {
                batch_id: id.clone(),
                content_hash: hash,
            });
        }
        s.idempotency
            .insert(batch.idempotency_key.clone(), batch.batch_id.clone());
        s.order
            .insert((batch.created_at_ms, batch.batch_id.clone()));
        s.batches.insert(
            batch.batch_id.clone(),
            StoredEntry {
                batch: batch.clone(),
                objects: objects.to_vec(),
                head: head.clone(),
                nodes: nodes.iter().cloned().collect(),
                trails: BTreeMap::new(),
            },
        );
        Ok(CreateOutcome::Created)
    }

    async fn apply(&self, step: &StepWrite) -> PortResult<()> {
        self.write_allowed()?;
        let mut s = self.lock();
        for w in &step.batches {
            if let Some(e) = s.batches.get_mut(&w.batch_id) {
                e.head = w.head.clone();
                for (n, r) in &w.nodes {
                    e.nodes.insert(*n, r.clone());
                }
            }
        }
        for r in &step.schedule {
            s.retries
                .insert((r.due_ms, r.batch_id.clone(), r.node, r.attempt));
        }
        for d in &step.dead_letters {
            s.dead
                .insert((d.dead_at_ms, d.batch_id.clone(), d.node), d.clone());
            s.unsent.insert((d.batch_id.clone(), d.node));
        }
        for (id, at) in &step.loaded {
            s.loaded.insert(id.clone(), *at);
        }
        Ok(())
    }

    async fn load_active(&self) -> PortResult<Vec<RestoredBatch>> {
        let s = self.lock();
        Ok(s.batches
            .values()
            .filter(|e| !e.head.state.is_terminal())
            .map(|e| RestoredBatch {
                batch: e.batch.clone(),
                objects: e.objects.clone(),
                head: e.head.clone(),
                nodes: e.nodes.iter().map(|(n, r)| (*n, r.clone())).collect(),
            })
            .collect())
    }

    async fn load_batch(&self, batch_id: &str) -> PortResult<Option<BatchWithTrails>> {
        let s = self.lock();
        Ok(s.batches.get(batch_id).map(|e| {
            (
                RestoredBatch {
                    batch: e.batch.clone(),
                    objects: e.objects.clone(),
                    head: e.head.clone(),
                    nodes: e.nodes.iter().map(|(n, r)| (*n, r.clone())).collect(),
                },
                e.trails.iter().map(|(n, t)| (*n, t.clone())).collect(),
            )
        }))
    }

    async fn save_trails(&self, batch_id: &str, trails: &[(u32, NodeTrail)]) -> PortResult<()> {
        self.write_allowed()?;
        if let Some(e) = self.lock().batches.get_mut(batch_id) {
            e.trails.extend(trails.iter().cloned());
        }
        Ok(())
    }

    async fn claim_due_retries(&self, now_ms: i64, limit: usize) -> PortResult<Vec<RetryEntry>> {
        let mut s = self.lock();
        let due: Vec<_> = s
            .retries
            .iter()
            .take_while(|(due, ..)| *due <= now_ms)
            .take(limit)
            .cloned()
            .collect();
        for d in &due {
            s.retries.remove(d);
        }
        Ok(due
            .into_iter()
            .map(|(due_ms, batch_id, node, attempt)| RetryEntry {
                batch_id,
                node,
                attempt,
                due_ms,
            })
            .collect())
    }

    async fn list_batches(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> PortResult<(Vec<String>, Option<String>)> {
        let s = self.lock();
        let skip: usize = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
        let ids: Vec<String> = s
            .order
            .iter()
            .rev()
            .skip(skip)
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect();
        let next = (skip + ids.len() < s.order.len()).then(|| (skip + ids.len()).to_string());
        Ok((ids, next))
    }

    async fn get_batch(&self, batch_id: &str) -> PortResult<Option<(StoredBatch, BatchHead)>> {
        Ok(self
            .lock()
            .batches
            .get(batch_id)
            .map(|e| (e.batch.clone(), e.head.clone())))
    }

    async fn batch_objects(&self, batch_id: &str) -> PortResult<Option<Vec<ObjectDef>>> {
        Ok(self.lock().batches.get(batch_id).map(|e| e.objects.clone()))
    }

    async fn list_dead_letters(
        &self,
        batch_id: Option<String>,
        cursor: Option<String>,
        limit: usize,
    ) -> PortResult<(Vec<StoredDeadLetter>, Option<String>)> {
        let s = self.lock();
        let skip: usize = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
        let matching: Vec<&StoredDeadLetter> = s
            .dead
            .values()
            .rev()
            .filter(|d| batch_id.as_ref().is_none_or(|b| &d.batch_id == b))
            .collect();
        let page: Vec<StoredDeadLetter> = matching
            .iter()
            .skip(skip)
            .take(limit)
            .map(|d| (*d).clone())
            .collect();
        let next = (skip + page.len() < matching.len()).then(|| (skip + page.len()).to_string());
        Ok((page, next))
    }

    async fn unsent_dead_letters(&self, limit: usize) -> PortResult<Vec<StoredDeadLetter>> {
        let s = self.lock();
        Ok(s.dead
            .values()
            .filter(|d| s.unsent.contains(&(d.batch_id.clone(), d.node)))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn dead_letters_sent(&self, sent: &[(String, u32)]) -> PortResult<()> {
        let mut s = self.lock();
        for k in sent {
            s.unsent.remove(k);
        }
        Ok(())
    }

    async fn last_loaded(&self, object_ids: &[String]) -> PortResult<Vec<Option<i64>>> {
        let s = self.lock();
        Ok(object_ids
            .iter()
            .map(|id| s.loaded.get(id).copied())
            .collect())
    }

    async fn save_agents(&self, changes: &RegistryChanges) -> PortResult<()> {
        self.write_allowed()?;
        let mut s = self.lock();
        for agent in &changes.upsert {
            s.agents.insert(agent.id.clone(), agent.clone());
        }
        for id in &changes.removed {
            s.agents.remove(id);
        }
        s.next_agent_epoch = changes.next_epoch;
        Ok(())
    }

    async fn load_agents(&self) -> PortResult<(Vec<Agent>, u64)> {
        let s = self.lock();
        Ok((
            s.agents.values().cloned().collect(),
            s.next_agent_epoch.max(1),
        ))
    }

    async fn ready_signing_seed(&self, candidate: [u8; 32]) -> PortResult<[u8; 32]> {
        Ok(self.lock().ready_seed.get_or_insert(Seed(candidate)).0)
    }

    async fn open_generation(&self, _candidate: [u8; 16]) -> PortResult<()> {
        // Memory cannot lose what it holds without the process.
        Ok(())
    }

    async fn ping(&self) -> PortResult<()> {
        Ok(())
    }
}
