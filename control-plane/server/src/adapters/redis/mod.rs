//! The Redis [`StateStore`]: batch definitions, heads and per-object records (so that a restarted
//! control plane resumes every running batch), the delayed-retry schedule, and the dead-letter
//! index. Every write is one Lua script (atomic, one round trip); reads are single commands,
//! pipelines or scripts. It depends on the [`ports`](crate::ports) types only, never on the
//! driver.
//!
//! # Key layout
//!
//! All keys start with the configured prefix `{p}` (e.g. `strata:`). Targets one Redis (not a
//! cluster): scripts build key names from the prefix instead of declaring them.
//!
//! | key | type | content |
//! |---|---|---|
//! | `{p}batch:{id}` | hash | `id`, `idem`, `hash`, `created_at_ms`, `options` (JSON), `state`, `next_epoch`, `finished_at_ms` (absent = none), `layout` (which object each node is; absent = stored before it was) |
//! | `{p}batch:{id}:objects` | string | the submitted objects JSON (~150 MB for 1M objects), kept apart so heads stay small |
//! | `{p}batch:{id}:nodes` | hash | node index (decimal) → record, compact binary (see `codec.rs`) |
//! | `{p}batch:{id}:trails` | hash | node index → the node's last transitions and last agent (`NodeTrail`, compact binary), written when the batch finishes |
//! | `{p}batch:{id}:dlq` | hash | node index → `DeadLetter` protobuf (the latest one of that node) |
//! | `{p}batch:{id}:dlqidx` | zset | node index, score `dead_at_ms` (per-batch listing) |
//! | `{p}idem:{key}` | string | batch id of an idempotency key |
//! | `{p}active` | set | ids of batches whose head is `RUNNING` |
//! | `{p}batches` | zset | batch id, score `created_at_ms` (`list_batches`) |
//! | `{p}retries` | zset | `{batch}:{node}:{attempt}`, score `due_ms` |
//! | `{p}dlq:unsent` | zset | `{batch}:{node}` of dead letters not yet produced to the dead-letter topic (the outbox), score `dead_at_ms` |
//! | `{p}dlq` | zset | `{batch}:{node}`, score `dead_at_ms` (`list_dead_letters`) |
//! | `{p}expiring` | zset | ids of finished batches, score = when their keys expire (pruning) |
//! | `{p}loaded` | hash | object id → when it was last loaded (ms), by any batch (freshness; no TTL: one field per object ever loaded) |
//! | `{p}agents` | hash | agent id → the agent's lease as JSON (`strata_core::agents::Agent`); ended leases are deleted an hour after they end |
//! | `{p}agents:next_epoch` | string | the next lease epoch to hand out |
//! | `{p}generation` | string | a random marker written once by the first control plane (`SET NX`): every state write checks it, so a Redis that lost its data (a restart without persistence, FLUSHALL, eviction) is found out instead of written to as if empty |
//! | `{p}ready_signing_seed` | string | the 32-byte seed of the control planes' Ed25519 Ready signing key, created once (`SET NX`); a secret, like the lease keys in `{p}agents` |
//!
//! # Finished batches
//!
//! When a head becomes terminal (anything but `RUNNING`) the batch leaves `{p}active` and its
//! keys (including its idempotency key, so the key can be reused afterwards) get the finished
//! TTL; a reopened batch (`FAILED` → `RUNNING` after a replay) is made persistent again. Expired
//! batches leave entries in `{p}batches` and `{p}dlq`: listings skip and remove them, and every
//! `claim_due_retries` call prunes a few (via `{p}expiring`; the per-batch dead-letter index
//! outlives the batch by a grace day for that purpose).
//!
//! # Round trips
//!
//! `create_batch`, `apply`, `claim_due_retries`, `list_batches`, `list_dead_letters`, `ping`: 1.
//! `last_loaded`: 1 (a pipeline of `HMGET`s of 10,000 fields each).
//! `save_agents`, `load_agents`, `ready_signing_seed`: 1 (a `MULTI` transaction, a pipeline). `get_batch`: 2. `load_active`: 1, plus per active batch 2 + one per 10,000 node records (at
//! least one). After a Redis restart the first script call costs 2 more (`NOSCRIPT`, then the
//! scripts are loaded again).
//! [`RedisStore::round_trips`] counts them.
//!
//! # Differences from the in-memory store
//!
//! - Writes for a batch that is not stored (never created, or expired) are skipped and logged.
//! - One dead letter per (batch, node) is kept: a node that dies again after a replay replaces
//!   its earlier letter and moves to its new time.
//! - Cursors are `{score}:{member}` strings, stable while entries are added. A page may hold
//!   fewer than `limit` entries while more follow (expired entries are skipped within a bounded
//!   scan): the end of a listing is a `None` cursor, not a short page.
//! - Re-running the exact same `create_batch` (same id, content hash and `created_at_ms`) after
//!   an ambiguous failure (a timeout whose write did happen) answers `Created`, not `Existing`.

pub(crate) mod codec;
mod scripts;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, ServerErrorKind, Value};
use strata_core::ObjectDef;
use strata_core::agents::{Agent, RegistryChanges};
use strata_core::machine::NodeRecord;
use strata_proto::v1 as pb;
use tracing::warn;

use self::codec::{
    decode_batch_hash, decode_cursor, decode_objects, decode_record, decode_trail, encode_cursor,
    encode_objects, encode_options, encode_record, encode_trail, parse_dead_member,
    parse_retry_member, parse_score, retry_member,
};
use self::scripts::{Lua, SCRIPTS};
use crate::convert;
use crate::ports::{
    BatchHead, BatchWithTrails, CreateOutcome, NodeTrail, PortError, PortResult, RestoredBatch,
    RetryEntry, StateStore, StepWrite, StoredBatch, StoredDeadLetter,
};

const SERVICE: &str = "redis";
/// Bound on establishing the first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection attempts per reconnect (with exponential backoff from 100 ms).
const RECONNECT_RETRIES: usize = 3;
/// Default bound on one round trip of a small request.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// A round trip may take one second longer per this much cost: bytes sent or expected, plus
/// [`ITEM_COST`] per record or entry written (so 100,000 records add one second).
const COST_PER_EXTRA_SECOND: usize = 8 << 20;
/// The cost of writing one hash field or sorted-set entry, in bytes-equivalent.
const ITEM_COST: usize = 80;
/// How long a finished batch's dead-letter index outlives it (so the pruner can find them).
const DLQ_INDEX_GRACE_MS: u64 = 24 * 3600 * 1000;
/// Longest TTL accepted (Lua numbers are doubles; keep `now + ttl` exact).
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
/// Node records fetched per `HSCAN` page by `load_active`.
const HSCAN_COUNT: usize = 10_000;
/// Largest page a listing returns.
const MAX_PAGE: usize = 10_000;
/// Expired batches pruned per `claim_due_retries` call, and their dead-letter entries.
const PRUNE_BATCHES: usize = 4;
const PRUNE_LETTERS: usize = 2_000;
/// Node trails per `save_trails` script call.
const TRAILS_PER_CALL: usize = 10_000;
/// Fields per `HMGET` of `last_loaded`.
const HMGET_CHUNK: usize = 10_000;

/// The Redis state store. Cheap to clone (clones share the connection and the counter).
#[derive(Debug, Clone)]
pub struct RedisStore {
    con: ConnectionManager,
    prefix: Arc<str>,
    ttl_ms: u64,
    timeout: Duration,
    round_trips: Arc<AtomicU64>,
    /// The generation marker found or stored by [`StateStore::open_generation`] (hex), sent with
    /// every state write: a Redis that no longer holds it lost the state.
    generation: Arc<std::sync::OnceLock<String>>,
}

impl RedisStore {
    /// Connects to `url` (`redis://[user:password@]host:port/db`) and loads the store's scripts.
    /// Every key is under `prefix`; finished batches expire `finished_ttl` after they finish. The
    /// connection is re-established automatically when it drops (each failed request starts a
    /// reconnect). Fails with [`PortError::Unavailable`] when Redis cannot be reached, and
    /// [`PortError::Rejected`] for a bad URL or TTL. `rediss://` connects over TLS (OpenSSL, the
    /// workspace's one TLS stack; certificates verified against the system's roots).
    pub async fn connect(url: &str, prefix: &str, finished_ttl: Duration) -> PortResult<Self> {
        let ttl_ms = u64::try_from(finished_ttl.as_millis()).unwrap_or(u64::MAX);
        if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
            return Err(rejected(format!(
                "finished batch ttl must be between 1 ms and 100 years, got {finished_ttl:?}"
            )));
        }
        // The URL may hold a password: it is never echoed.
        let client = redis::Client::open(url)
            .map_err(|e| rejected(format!("invalid redis url: {}", e.category())))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // Bounded per call by `self.timeout`, scaled with the payload.
            .set_response_timeout(None)
            // Each failed request starts a new reconnect, so a short series per attempt is enough
            // and keeps callers from waiting on a long one.
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(Duration::from_secs(1));
        let con = tokio::time::timeout(
            2 * CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| {
            unavailable(format!(
                "connect: no connection within {:?}",
                2 * CONNECT_TIMEOUT
            ))
        })?
        .map_err(|e| map_err("connect", e))?;
        let store = Self {
            con,
            prefix: prefix.into(),
            ttl_ms,
            timeout: DEFAULT_TIMEOUT,
            round_trips: Arc::new(AtomicU64::new(0)),
            generation: Arc::new(std::sync::OnceLock::new()),
        };
        store.load_scripts().await?;
        Ok(store)
    }

    /// The generation marker state writes are checked against (`""` before it is opened).
    fn generation(&self) -> &str {
        self.generation.get().map_or("", String::as_str)
    }

    fn generation_key(&self) -> String {
        format!("{}generation", self.prefix)
    }

    /// Sets the bound on one round trip of a small request (default 5 s); bigger requests get
    /// one more second per 8 MiB sent or expected and per 100,000 records written. A request
    /// that times out is reported [`PortError::Unavailable`]; it may still have been applied
    /// (every write of this store is idempotent, so retrying it is safe).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Requests (commands, pipelines, script calls) sent to Redis so far by this store and its
    /// clones.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn batch_key(&self, batch_id: &str) -> String {
        format!("{}batch:{batch_id}", self.prefix)
    }

    fn limit(&self, cost: usize) -> Duration {
        self.timeout + Duration::from_secs((cost / COST_PER_EXTRA_SECOND) as u64)
    }

    /// Sends one request; the outer error is a timeout, the inner one Redis's answer.
    async fn send<F, T>(
        &self,
        what: &str,
        cost: usize,
        request: F,
    ) -> PortResult<Result<T, RedisError>>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let limit = self.limit(cost);
        tokio::time::timeout(limit, request)
            .await
            .map_err(|_| unavailable(format!("{what}: no reply within {limit:?}")))
    }

    async fn query(&self, what: &str, cmd: &Cmd, cost: usize) -> PortResult<Value> {
        let mut con = self.con.clone();
        self.send(what, cost, cmd.query_async::<Value>(&mut con))
            .await?
            .map_err(|e| map_err(what, e))
    }

    async fn query_pipe(&self, what: &str, pipe: &Pipeline, cost: usize) -> PortResult<Vec<Value>> {
        let mut con = self.con.clone();
        self.send(what, cost, pipe.query_async::<Vec<Value>>(&mut con))
            .await?
            .map_err(|e| map_err(what, e))
    }

    /// Runs a script call built by [`script_cmd`]; reloads the scripts once if Redis lost them.
    async fn eval(&self, what: &str, cmd: &Cmd, cost: usize) -> PortResult<Value> {
        let mut con = self.con.clone();
        match self
            .send(what, cost, cmd.query_async::<Value>(&mut con))
            .await?
        {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.load_scripts().await?;
                self.query(what, cmd, cost).await
            }
            Err(e) => Err(map_err(what, e)),
        }
    }

    async fn load_scripts(&self) -> PortResult<()> {
        let mut pipe = redis::pipe();
        for lua in SCRIPTS.all() {
            pipe.cmd("SCRIPT").arg("LOAD").arg(lua.src.as_str());
        }
        let hashes = self.query_pipe("load scripts", &pipe, 0).await?;
        for (lua, got) in SCRIPTS.all().into_iter().zip(hashes) {
            let got = text(got).map_err(|d| corrupt("script digest", d))?;
            if got != lua.hash() {
                return Err(corrupt(
                    "script digest",
                    format!("redis answered {got}, expected {}", lua.hash()),
                ));
            }
        }
        Ok(())
    }

    /// Reads one batch's definition and head (one round trip). `None` when it does not exist.
    async fn read_head(&self, batch_id: &str) -> PortResult<Option<(StoredBatch, BatchHead)>> {
        let reply = self
            .query(
                "read batch head",
                redis::cmd("HGETALL").arg(self.batch_key(batch_id)),
                0,
            )
            .await?;
        let what = || format!("batch {batch_id}");
        let fields = hash_map(reply).map_err(|d| corrupt(what(), d))?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode_batch_hash(&fields)
            .map(Some)
            .map_err(|d| corrupt(what(), d))
    }

    /// Reads one batch's objects. Two round trips (the size of the objects bounds the second
    /// one's timeout). `None` when the batch does not exist.
    async fn read_objects(&self, batch_id: &str) -> PortResult<Option<Vec<ObjectDef>>> {
        let objects_key = format!("{}:objects", self.batch_key(batch_id));
        let what = || format!("objects of batch {batch_id}");
        let size = int(self
            .query(
                "size batch objects",
                redis::cmd("STRLEN").arg(&objects_key),
                0,
            )
            .await?)
        .map_err(|d| corrupt(what(), d))?;
        if size == 0 {
            return Ok(None);
        }
        match self
            .query(
                "read batch objects",
                redis::cmd("GET").arg(&objects_key),
                size as usize,
            )
            .await?
        {
            // Expired between the two reads.
            Value::Nil => Ok(None),
            v => {
                let raw = bytes(v).map_err(|d| corrupt(what(), d))?;
                decode_objects(&raw)
                    .map(Some)
                    .map_err(|d| corrupt(what(), d))
            }
        }
    }

    /// Every node record of a batch (`HSCAN`, one round trip per [`HSCAN_COUNT`] fields).
    async fn read_nodes(&self, batch_id: &str) -> PortResult<Vec<(u32, NodeRecord)>> {
        self.read_per_node(batch_id, "nodes", "node records", decode_record)
            .await
    }

    /// Every node trail of a batch, like [`Self::read_nodes`].
    async fn read_trails(&self, batch_id: &str) -> PortResult<Vec<(u32, NodeTrail)>> {
        self.read_per_node(batch_id, "trails", "node trails", decode_trail)
            .await
    }

    /// The fields of the per-node hash `{p}batch:{id}:{suffix}`, decoded, by node.
    async fn read_per_node<T>(
        &self,
        batch_id: &str,
        suffix: &str,
        label: &str,
        decode: fn(&[u8]) -> Result<T, String>,
    ) -> PortResult<Vec<(u32, T)>> {
        let key = format!("{}:{suffix}", self.batch_key(batch_id));
        let what = || format!("{label} of batch {batch_id}");
        let mut nodes = Vec::new();
        let mut cursor = "0".to_owned();
        loop {
            let mut cmd = redis::cmd("HSCAN");
            cmd.arg(&key).arg(&cursor).arg("COUNT").arg(HSCAN_COUNT);
            let reply = self
                .query("scan per-node hash", &cmd, HSCAN_COUNT * 64)
                .await?;
            let mut parts = array(reply).map_err(|d| corrupt(what(), d))?.into_iter();
            let (Some(next), Some(page)) = (parts.next(), parts.next()) else {
                return Err(corrupt(what(), "HSCAN reply is not [cursor, page]".into()));
            };
            let mut page = array(page).map_err(|d| corrupt(what(), d))?.into_iter();
            while let (Some(node), Some(value)) = (page.next(), page.next()) {
                let node = text(node)
                    .ok()
                    .and_then(|n| n.parse::<u32>().ok())
                    .ok_or_else(|| corrupt(what(), "a field is not a node index".into()))?;
                let value = bytes(value)
                    .and_then(|b| decode(&b))
                    .map_err(|d| corrupt(what(), format!("node {node}: {d}")))?;
                nodes.push((node, value));
            }
            cursor = text(next).map_err(|d| corrupt(what(), d))?;
            if cursor == "0" {
                break;
            }
        }
        // HSCAN may return a field twice (while the hash is rehashed).
        nodes.sort_unstable_by_key(|(n, _)| *n);
        nodes.dedup_by_key(|(n, _)| *n);
        Ok(nodes)
    }

    /// Dead letters of a page (`(member, score, payload)`): of `batch_id`'s index when given,
    /// else of a global index (`{batch}:{node}` members).
    fn decode_dead_letters(
        &self,
        batch_id: Option<String>,
        page: Vec<(String, String, Vec<u8>)>,
    ) -> PortResult<Vec<StoredDeadLetter>> {
        let mut letters = Vec::with_capacity(page.len());
        for (member, score, payload) in page {
            let (batch_id, node) = match &batch_id {
                Some(id) => (id.clone(), member.parse::<u32>().map_err(|e| e.to_string())),
                None => match parse_dead_member(&member) {
                    Ok((b, n)) => (b, Ok(n)),
                    Err(d) => (String::new(), Err(d)),
                },
            };
            let what = || format!("dead-letter index entry {member:?}");
            let node = node.map_err(|d| corrupt(what(), d))?;
            let dead_at_ms = parse_score(&score).map_err(|d| corrupt(what(), d))?;
            let letter = pb::DeadLetter::decode(payload.as_slice())
                .map_err(|e| e.to_string())
                .and_then(convert::dead_letter_record);
            match letter {
                Ok(letter) => letters.push(StoredDeadLetter {
                    batch_id,
                    node,
                    letter,
                    dead_at_ms,
                }),
                // One bad letter does not hide the others.
                Err(error) => {
                    warn!(%batch_id, node, %error, "stored dead letter undecodable; skipped")
                }
            }
        }
        Ok(letters)
    }

    /// A page of a listing (see the `PAGE` script): `(member, score, payload)` and the cursor.
    async fn page(
        &self,
        mode: &str,
        zset: &str,
        batch_id: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> PortResult<(Vec<(String, String, Vec<u8>)>, Option<String>)> {
        let (score, member) = match cursor.as_deref() {
            Some(c) => decode_cursor(c).map_err(rejected)?,
            None => (String::new(), String::new()),
        };
        let mut cmd = script_cmd(&SCRIPTS.page);
        cmd.arg(&*self.prefix)
            .arg(mode)
            .arg(zset)
            .arg(&score)
            .arg(&member)
            .arg(limit.min(MAX_PAGE))
            .arg(batch_id);
        let what = || format!("{mode} listing");
        let reply = self.eval("list", &cmd, 0).await?;
        let mut items = array(reply).map_err(|d| corrupt(what(), d))?.into_iter();
        let (Some(next_score), Some(next_member)) = (items.next(), items.next()) else {
            return Err(corrupt(what(), "reply has no cursor".into()));
        };
        let next_score = text(next_score).map_err(|d| corrupt(what(), d))?;
        let next = if next_score.is_empty() {
            None
        } else {
            let next_member = text(next_member).map_err(|d| corrupt(what(), d))?;
            Some(encode_cursor(&next_score, &next_member))
        };
        let mut page = Vec::new();
        while let (Some(m), Some(s), Some(v)) = (items.next(), items.next(), items.next()) {
            page.push((
                text(m).map_err(|d| corrupt(what(), d))?,
                text(s).map_err(|d| corrupt(what(), d))?,
                bytes(v).map_err(|d| corrupt(what(), d))?,
            ));
        }
        Ok((page, next))
    }
}

impl StateStore for RedisStore {
    async fn create_batch(
        &self,
        batch: &StoredBatch,
        objects: &[ObjectDef],
        head: &BatchHead,
        nodes: &[(u32, NodeRecord)],
    ) -> PortResult<CreateOutcome> {
        let options = encode_options(&batch.options)
            .map_err(|e| rejected(format!("batch {}: {e}", batch.batch_id)))?;
        let objects = encode_objects(objects)
            .map_err(|e| rejected(format!("batch {}: {e}", batch.batch_id)))?;
        let mut cmd = script_cmd(&SCRIPTS.create);
        cmd.arg(&*self.prefix)
            .arg(&batch.batch_id)
            .arg(&batch.idempotency_key)
            .arg(&batch.content_hash)
            .arg(batch.created_at_ms)
            .arg(&options[..])
            .arg(&objects[..])
            .arg(head.state.as_str())
            .arg(head.next_epoch)
            .arg(optional(head.finished_at_ms))
            .arg(self.ttl_ms)
            .arg(DLQ_INDEX_GRACE_MS)
            .arg(&batch.layout_hash);
        let mut buf = Vec::with_capacity(64);
        for (node, record) in nodes {
            buf.clear();
            encode_record(record, &mut buf);
            cmd.arg(*node).arg(&buf[..]);
        }
        let size = objects.len() + options.len() + nodes.len() * ITEM_COST;
        cmd.arg(self.generation());
        let reply = self.eval("create batch", &cmd, size).await?;
        let what = || format!("create reply for batch {}", batch.batch_id);
        let mut parts = array(reply).map_err(|d| corrupt(what(), d))?.into_iter();
        let tag = parts
            .next()
            .map(text)
            .transpose()
            .map_err(|d| corrupt(what(), d))?;
        match tag.as_deref() {
            Some("created") => Ok(CreateOutcome::Created),
            Some("existing") => {
                let (Some(id), Some(hash)) = (parts.next(), parts.next()) else {
                    return Err(corrupt(what(), "existing without id and hash".into()));
                };
                Ok(CreateOutcome::Existing {
                    batch_id: text(id).map_err(|d| corrupt(what(), d))?,
                    content_hash: text(hash).map_err(|d| corrupt(what(), d))?,
                })
            }
            other => Err(corrupt(what(), format!("unexpected tag {other:?}"))),
        }
    }

    async fn apply(&self, step: &StepWrite) -> PortResult<()> {
        if step.batches.is_empty()
            && step.schedule.is_empty()
            && step.dead_letters.is_empty()
            && step.loaded.is_empty()
        {
            return Ok(());
        }
        let mut cmd = script_cmd(&SCRIPTS.apply);
        cmd.arg(&*self.prefix)
            .arg(self.ttl_ms)
            .arg(DLQ_INDEX_GRACE_MS);
        let mut size = 0;
        cmd.arg(step.dead_letters.len());
        for d in &step.dead_letters {
            let payload = convert::dead_letter_message(&d.letter).encode_to_vec();
            size += payload.len() + 3 * ITEM_COST;
            cmd.arg(&d.batch_id)
                .arg(d.node)
                .arg(d.dead_at_ms)
                .arg(payload);
        }
        cmd.arg(step.schedule.len());
        for r in &step.schedule {
            cmd.arg(r.due_ms)
                .arg(retry_member(&r.batch_id, r.node, r.attempt));
        }
        size += step.schedule.len() * ITEM_COST;
        cmd.arg(step.batches.len());
        let mut buf = Vec::with_capacity(64);
        for w in &step.batches {
            cmd.arg(&w.batch_id)
                .arg(w.head.state.as_str())
                .arg(w.head.next_epoch)
                .arg(optional(w.head.finished_at_ms))
                .arg(w.nodes.len());
            for (node, record) in &w.nodes {
                buf.clear();
                encode_record(record, &mut buf);
                cmd.arg(*node).arg(&buf[..]);
                size += ITEM_COST;
            }
        }
        cmd.arg(step.loaded.len());
        for (object_id, at_ms) in &step.loaded {
            cmd.arg(object_id).arg(*at_ms);
        }
        size += step.loaded.len() * ITEM_COST;
        cmd.arg(self.generation());
        let reply = self.eval("apply step", &cmd, size).await?;
        for id in array(reply).map_err(|d| corrupt("apply reply", d))? {
            let id = text(id).map_err(|d| corrupt("apply reply", d))?;
            warn!(batch_id = %id, "state write for a batch that is not stored (expired?) skipped");
        }
        Ok(())
    }

    async fn load_active(&self) -> PortResult<Vec<RestoredBatch>> {
        let active_key = format!("{}active", self.prefix);
        let reply = self
            .query(
                "list active batches",
                redis::cmd("SMEMBERS").arg(&active_key),
                0,
            )
            .await?;
        let ids = array(reply)
            .and_then(|ids| ids.into_iter().map(text).collect::<Result<Vec<_>, _>>())
            .map_err(|d| corrupt("active batch set", d))?;
        let mut restored = Vec::with_capacity(ids.len());
        for id in ids {
            let read = async {
                let Some((batch, head)) = self.read_head(&id).await? else {
                    return Ok(None);
                };
                Ok(self
                    .read_objects(&id)
                    .await?
                    .map(|objects| (batch, objects, head)))
            };
            let (batch, objects, head) = match read.await {
                Ok(Some(b)) => b,
                Ok(None) => {
                    warn!(batch_id = %id, "active batch has no stored definition; dropped from the active set");
                    self.query(
                        "drop active batch",
                        redis::cmd("SREM").arg(&active_key).arg(&id),
                        0,
                    )
                    .await?;
                    continue;
                }
                Err(e @ PortError::Corrupt { .. }) => {
                    warn!(batch_id = %id, error = %e, "stored batch unreadable; not restored");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let nodes = match self.read_nodes(&id).await {
                Ok(n) => n,
                Err(e @ PortError::Corrupt { .. }) => {
                    warn!(batch_id = %id, error = %e, "stored node records unreadable; batch not restored");
                    continue;
                }
                Err(e) => return Err(e),
            };
            restored.push(RestoredBatch {
                batch,
                objects,
                head,
                nodes,
            });
        }
        restored.sort_by(|a, b| {
            (a.batch.created_at_ms, &a.batch.batch_id)
                .cmp(&(b.batch.created_at_ms, &b.batch.batch_id))
        });
        Ok(restored)
    }

    async fn load_batch(&self, batch_id: &str) -> PortResult<Option<BatchWithTrails>> {
        let Some((batch, head)) = self.read_head(batch_id).await? else {
            return Ok(None);
        };
        let Some(objects) = self.read_objects(batch_id).await? else {
            return Ok(None);
        };
        let nodes = self.read_nodes(batch_id).await?;
        let trails = self.read_trails(batch_id).await?;
        Ok(Some((
            RestoredBatch {
                batch,
                objects,
                head,
                nodes,
            },
            trails,
        )))
    }

    async fn save_trails(&self, batch_id: &str, trails: &[(u32, NodeTrail)]) -> PortResult<()> {
        for chunk in trails.chunks(TRAILS_PER_CALL) {
            let mut cmd = script_cmd(&SCRIPTS.trails);
            cmd.arg(&*self.prefix).arg(batch_id);
            let mut buf = Vec::with_capacity(64);
            for (node, trail) in chunk {
                buf.clear();
                encode_trail(trail, &mut buf);
                cmd.arg(*node).arg(&buf[..]);
            }
            cmd.arg(self.generation());
            self.eval("save trails", &cmd, chunk.len() * ITEM_COST)
                .await?;
        }
        Ok(())
    }

    async fn claim_due_retries(&self, now_ms: i64, limit: usize) -> PortResult<Vec<RetryEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = script_cmd(&SCRIPTS.claim);
        cmd.arg(&*self.prefix)
            .arg(now_ms)
            .arg(limit)
            .arg(PRUNE_BATCHES)
            .arg(PRUNE_LETTERS);
        let reply = self
            .eval("claim due retries", &cmd, limit * ITEM_COST)
            .await?;
        let mut items = array(reply)
            .map_err(|d| corrupt("retry schedule", d))?
            .into_iter();
        let mut due = Vec::new();
        while let (Some(member), Some(score)) = (items.next(), items.next()) {
            let member = text(member).map_err(|d| corrupt("retry schedule", d))?;
            let parsed = parse_retry_member(&member).and_then(|(batch_id, node, attempt)| {
                let score = text(score)?;
                Ok(RetryEntry {
                    batch_id,
                    node,
                    attempt,
                    due_ms: parse_score(&score)?,
                })
            });
            match parsed {
                Ok(entry) => due.push(entry),
                // Already removed: skipping it is all that can be done.
                Err(d) => warn!(member = %member, reason = %d, "undecodable retry entry dropped"),
            }
        }
        Ok(due)
    }

    async fn list_batches(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> PortResult<(Vec<String>, Option<String>)> {
        if limit == 0 {
            return Ok((Vec::new(), cursor));
        }
        let (page, next) = self.page("batches", "batches", "", cursor, limit).await?;
        Ok((page.into_iter().map(|(id, _, _)| id).collect(), next))
    }

    async fn get_batch(&self, batch_id: &str) -> PortResult<Option<(StoredBatch, BatchHead)>> {
        self.read_head(batch_id).await
    }

    async fn batch_objects(&self, batch_id: &str) -> PortResult<Option<Vec<ObjectDef>>> {
        self.read_objects(batch_id).await
    }

    async fn unsent_dead_letters(&self, limit: usize) -> PortResult<Vec<StoredDeadLetter>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (page, _) = self.page("dlq", "dlq:unsent", "", None, limit).await?;
        self.decode_dead_letters(None, page)
    }

    async fn dead_letters_sent(&self, sent: &[(String, u32)]) -> PortResult<()> {
        for chunk in sent.chunks(10_000) {
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(format!("{}dlq:unsent", self.prefix));
            for (batch_id, node) in chunk {
                cmd.arg(format!("{batch_id}:{node}"));
            }
            self.query("dead letters sent", &cmd, chunk.len() * ITEM_COST)
                .await?;
        }
        Ok(())
    }

    async fn list_dead_letters(
        &self,
        batch_id: Option<String>,
        cursor: Option<String>,
        limit: usize,
    ) -> PortResult<(Vec<StoredDeadLetter>, Option<String>)> {
        if limit == 0 {
            return Ok((Vec::new(), cursor));
        }
        let (page, next) = match &batch_id {
            Some(id) => {
                let zset = format!("batch:{id}:dlqidx");
                self.page("dlq1", &zset, id, cursor, limit).await?
            }
            None => self.page("dlq", "dlq", "", cursor, limit).await?,
        };
        Ok((self.decode_dead_letters(batch_id, page)?, next))
    }

    async fn last_loaded(&self, object_ids: &[String]) -> PortResult<Vec<Option<i64>>> {
        if object_ids.is_empty() {
            return Ok(Vec::new());
        }
        let key = format!("{}loaded", self.prefix);
        let mut pipe = redis::pipe();
        for chunk in object_ids.chunks(HMGET_CHUNK) {
            pipe.cmd("HMGET").arg(&key).arg(chunk);
        }
        let replies = self
            .query_pipe("read last loaded times", &pipe, object_ids.len() * 24)
            .await?;
        let mut out = Vec::with_capacity(object_ids.len());
        for reply in replies {
            for v in array(reply).map_err(|d| corrupt("last loaded times", d))? {
                out.push(match v {
                    Value::Nil => None,
                    v => Some(int(v).map_err(|d| corrupt("last loaded time", d))?),
                });
            }
        }
        if out.len() != object_ids.len() {
            return Err(corrupt(
                "last loaded times",
                format!("{} values for {} ids", out.len(), object_ids.len()),
            ));
        }
        Ok(out)
    }

    async fn save_agents(&self, changes: &RegistryChanges) -> PortResult<()> {
        let key = format!("{}agents", self.prefix);
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut size = 0;
        if !changes.upsert.is_empty() {
            let cmd = pipe.cmd("HSET").arg(&key);
            for agent in &changes.upsert {
                let json = serde_json::to_vec(agent)
                    .map_err(|e| rejected(format!("agent {} not encodable: {e}", agent.id)))?;
                size += json.len() + ITEM_COST;
                cmd.arg(&agent.id).arg(json);
            }
            cmd.ignore();
        }
        if !changes.removed.is_empty() {
            pipe.cmd("HDEL").arg(&key).arg(&changes.removed).ignore();
        }
        pipe.cmd("SET")
            .arg(format!("{key}:next_epoch"))
            .arg(changes.next_epoch)
            .ignore();
        self.query_pipe("save agents", &pipe, size).await?;
        Ok(())
    }

    async fn load_agents(&self) -> PortResult<(Vec<Agent>, u64)> {
        let key = format!("{}agents", self.prefix);
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL")
            .arg(&key)
            .cmd("GET")
            .arg(format!("{key}:next_epoch"));
        let mut replies = self.query_pipe("load agents", &pipe, 0).await?.into_iter();
        let fields = hash_map(replies.next().unwrap_or(Value::Nil))
            .map_err(|d| corrupt("agent registry", d))?;
        let next_epoch = match replies.next().unwrap_or(Value::Nil) {
            Value::Nil => 1,
            v => int(v)
                .ok()
                .and_then(|e| u64::try_from(e).ok())
                .ok_or_else(|| corrupt("agent registry", "next lease epoch not a number".into()))?,
        };
        let mut agents = Vec::with_capacity(fields.len());
        for (id, json) in fields {
            match serde_json::from_slice::<Agent>(&json) {
                Ok(agent) => agents.push(agent),
                // One unreadable lease must not keep the control plane from starting; its agent
                // is told to register again at its next heartbeat.
                Err(e) => {
                    warn!(agent_id = %String::from_utf8_lossy(&id), error = %e, "unreadable agent lease skipped")
                }
            }
        }
        Ok((agents, next_epoch))
    }

    async fn ready_signing_seed(&self, candidate: [u8; 32]) -> PortResult<[u8; 32]> {
        let key = format!("{}ready_signing_seed", self.prefix);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&key)
            .arg(&candidate[..])
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&key);
        let stored = self
            .query_pipe("ready signing seed", &pipe, candidate.len())
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| corrupt("ready signing seed", "no reply".into()))?;
        bytes(stored)
            .and_then(|b| {
                <[u8; 32]>::try_from(b.as_slice()).map_err(|_| format!("{} bytes, not 32", b.len()))
            })
            .map_err(|d| corrupt("ready signing seed", d))
    }

    async fn open_generation(&self, candidate: [u8; 16]) -> PortResult<()> {
        let candidate: String = candidate.iter().map(|b| format!("{b:02x}")).collect();
        let key = self.generation_key();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&key)
            .arg(&candidate)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&key);
        let stored = self
            .query_pipe("open generation", &pipe, 0)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| corrupt("generation", "no reply".into()))?;
        let stored = text(stored).map_err(|d| corrupt("generation", d))?;
        if let Err(stored) = self.generation.set(stored.clone())
            && Some(&stored) != self.generation.get()
        {
            return Err(self.lost(&format!("it holds {stored:?}")));
        }
        Ok(())
    }

    async fn ping(&self) -> PortResult<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("PING").cmd("GET").arg(self.generation_key());
        let mut replies = self.query_pipe("ping", &pipe, 0).await?.into_iter();
        match replies.next() {
            Some(Value::SimpleString(s)) if s == "PONG" => {}
            other => return Err(corrupt("ping reply", format!("{other:?}"))),
        }
        let Some(expected) = self.generation.get() else {
            return Ok(());
        };
        match replies.next() {
            Some(Value::Nil) => Err(self.lost("it is missing")),
            Some(v) => match text(v) {
                Ok(found) if found == *expected => Ok(()),
                Ok(found) => Err(self.lost(&format!("it holds {found:?}"))),
                Err(d) => Err(corrupt("generation", d)),
            },
            None => Err(corrupt("ping reply", "no generation".into())),
        }
    }
}

/// `EVALSHA <digest> 0`, to which the script's arguments are appended.
fn script_cmd(lua: &Lua) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(lua.hash()).arg(0);
    cmd
}

impl RedisStore {
    /// The error of a Redis that no longer holds this process's generation marker.
    fn lost(&self, found: &str) -> PortError {
        PortError::StateLost {
            service: SERVICE,
            detail: format!(
                "the generation marker {} should hold {:?} but {found} (a restart without \
                 persistence, FLUSHALL, eviction); nothing more is written, and the batches in \
                 flight are lost from Redis: restart the control plane to start anew",
                self.generation_key(),
                self.generation()
            ),
        }
    }
}

fn optional(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// Maps a client error: connection trouble and transient server states may pass on a retry;
/// unreadable replies are corrupt data; anything else is a rejection.
fn map_err(what: &str, e: RedisError) -> PortError {
    let detail = format!("{what}: {e}");
    let transient_server = matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::ReadOnly
        )
    ) || matches!(e.code(), Some("BUSY" | "OOM" | "LOADING"));
    if e.code() == Some("STRATA_STATE_LOST") {
        return PortError::StateLost {
            service: SERVICE,
            detail: format!(
                "{detail} (a restart without persistence, FLUSHALL, eviction); nothing more is \
                 written, and the batches in flight are lost from Redis: restart the control \
                 plane to start anew"
            ),
        };
    }
    match e.kind() {
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => unavailable(detail),
        _ if transient_server || e.is_timeout() || e.is_connection_dropped() => unavailable(detail),
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => corrupt(what, detail),
        _ => rejected(detail),
    }
}

fn unavailable(detail: String) -> PortError {
    PortError::Unavailable {
        service: SERVICE,
        detail,
    }
}

fn rejected(detail: String) -> PortError {
    PortError::Rejected {
        service: SERVICE,
        detail,
    }
}

fn corrupt(what: impl Into<String>, detail: String) -> PortError {
    PortError::Corrupt {
        service: SERVICE,
        what: what.into(),
        detail,
    }
}

fn bytes(v: Value) -> Result<Vec<u8>, String> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => Err(format!("expected a string, got {other:?}")),
    }
}

fn text(v: Value) -> Result<String, String> {
    String::from_utf8(bytes(v)?).map_err(|_| "expected UTF-8 text".to_owned())
}

fn int(v: Value) -> Result<i64, String> {
    match v {
        Value::Int(i) => Ok(i),
        other => text(other)?
            .parse()
            .map_err(|e| format!("expected an integer: {e}")),
    }
}

fn array(v: Value) -> Result<Vec<Value>, String> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(format!("expected an array, got {other:?}")),
    }
}

fn hash_map(v: Value) -> Result<HashMap<Vec<u8>, Vec<u8>>, String> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Map(pairs) => pairs,
        other => {
            let mut items = array(other)?.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((k, v));
            }
            pairs
        }
    };
    pairs
        .into_iter()
        .map(|(k, v)| Ok((bytes(k)?, bytes(v)?)))
        .collect()
}
