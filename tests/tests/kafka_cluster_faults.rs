//! Fault suite on a three-broker Apache Kafka cluster ([`KafkaCluster`], KRaft): the real
//! `strata-control-plane` binary with its topics replicated three times
//! (`--topic-replication-factor 3 --topic-min-insync-replicas 2`), a real Redis, and one real
//! `strata-worker-agent` process per zone running a `/bin/sh` processor that logs every
//! execution. Each test drives a layered batch of [`TOTAL`] objects (raw → standardized →
//! application) and breaks the cluster mid-batch:
//!
//! 1. `kill -9` of the broker leading the batch's results partition (it leads Ready partitions
//!    too), restarted from its disks once a survivor leads the partition;
//! 2. that broker frozen (`SIGSTOP`) for longer than its session timeout
//!    (`broker.session.timeout.ms`, 3 s in the fixture), then continued (`SIGCONT`);
//! 3. a rolling restart of all three brokers (controlled shutdown, start from its disks, full ISR
//!    again before the next);
//! 4. the whole cluster `kill -9`ed at once and started again from its disks.
//!
//! What each test checks after the batch ([`Rig::finish`]):
//! - the batch SUCCEEDED, every object LOADED at attempt 1 (no result was lost: a lost result
//!   would leave the object RUNNING until its execution timeout, then retry it);
//! - no object LOADED twice: the batch's `WatchBatch` stream, followed from the submission to the
//!   end without a resync, has exactly one transition to LOADED per object, and none at another
//!   attempt than 1 (`GetObject` costs ~37 ms on a 5,000-object batch with the debug build: 3
//!   minutes for all of them);
//! - every execution is accounted for, from the processor's log: every object ran and finished,
//!   an execution that never finished is one its agent abandoned (at most as many as the agents
//!   logged), no child started before its parents finished (file order of the log), only
//!   attempt 1 ran,
//!   and an object ran more than once (at-least-once) only if its attempt was in flight at the
//!   fault: released before the fault was over and LOADED no earlier than [`COMMIT_SLACK`]
//!   before it began (a Ready whose offset the agent had not committed yet). The count is
//!   printed;
//! - no offset ran ahead of the state it belongs to, sampled every [`PROBE_EVERY`] through the
//!   whole batch by [`OffsetProbe`] (Kafka clients of the test's own, on a thread of their own):
//!   every Ready record below an agent group's committed offset has its `ObjectLoaded` in the
//!   results topic (the agent commits a Ready only after its result is acknowledged), and every
//!   `ObjectLoaded` below the control plane's committed offset on the results topic was applied
//!   before that offset was read (its LOADED transition's time, stamped by the control plane's
//!   step before the Redis write, is earlier than the read; same machine, same clock). After
//!   the batch, every committed offset equals its partition's end offset (nothing left behind,
//!   nothing beyond the log);
//! - the time to recover is printed: from the fault to the end of the longest pause in LOADED
//!   transitions (the control plane's history timestamps) that follows it.
//!
//! Every wait is bounded; durations and counts are printed (a `SUMMARY` line per test), never
//! asserted. Needs both binaries built (`cargo build --workspace --bins`) and
//! `STRATA_KAFKA_LIBS`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use strata_proto::kafka as topics;
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use strata_proto::v1::{self as pb};
use strata_tests::control_plane::ControlPlane;
use strata_tests::kafka::consumer_config;
use strata_tests::worker_agent::{WorkerAgent, http_get};
use strata_tests::{KafkaCluster, RedisServer, within};
use tempfile::TempDir;
use tonic::transport::Channel;

const ZONES: [&str; 3] = ["raw", "standardized", "application"];
/// Objects per layer: every raw object is a parent of some standardized one, every standardized
/// one of some application one.
const RAW: usize = 2000;
const STANDARDIZED: usize = 2000;
const APPLICATION: usize = 1000;
const TOTAL: usize = RAW + STANDARDIZED + APPLICATION;
/// Partitions of every topic: each of the three brokers leads one partition of each.
const PARTITIONS: &str = "3";
/// Bound on each start-up and on the batch running to its end after the fault.
const LONG: Duration = Duration::from_secs(150);
/// Bound on the cluster getting back to full replication after a node came back.
const REPLICATED: Duration = Duration::from_secs(60);
/// How long before the fault a LOADED object may still be run again: its Ready's offset may not
/// be committed yet (the agent stores it after the result is delivered and commits every
/// second, `auto.commit.interval.ms`).
const COMMIT_SLACK: Duration = Duration::from_secs(3);
/// How often the offset probe samples the committed offsets.
const PROBE_EVERY: Duration = Duration::from_millis(300);
/// Concurrency of each agent.
const AGENT_CONCURRENCY: &str = "8";
/// Each execution sleeps this long (seconds, `sleep(1)`), so that the batch lasts long enough
/// for the faults to land mid-batch with attempts in flight: about 30 s undisturbed (measured,
/// three JVMs on 2 cores).
const EXEC_SLEEP: &str = "0.03";

// ------------------------------------------------------------------------------------------------
// The catalogue

struct Catalogue {
    objects: Vec<pb::ObjectDefinition>,
    /// child → parents
    parents: BTreeMap<String, Vec<String>>,
}

/// splitmix64: deterministic parent picks.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// Raw `10000…` (no parents), standardized `20000…` (1–3 raw parents), application `30000…`
/// (2–6 standardized parents). The same every time.
fn catalogue() -> Catalogue {
    let mut rng = SplitMix(0x5eed_c1a5);
    let raw: Vec<String> = (0..RAW).map(|k| (10_000 + k).to_string()).collect();
    let standardized: Vec<String> = (0..STANDARDIZED)
        .map(|k| (20_000 + k).to_string())
        .collect();
    let application: Vec<String> = (0..APPLICATION).map(|k| (30_000 + k).to_string()).collect();
    let mut parents: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in &raw {
        parents.insert(id.clone(), Vec::new());
    }
    for (k, id) in standardized.iter().enumerate() {
        let mut ps = BTreeSet::from([raw[k % RAW].clone()]);
        for _ in 0..rng.below(3) {
            ps.insert(raw[rng.below(RAW)].clone());
        }
        parents.insert(id.clone(), ps.into_iter().collect());
    }
    for (k, id) in application.iter().enumerate() {
        let mut ps = BTreeSet::from([
            standardized[(2 * k) % STANDARDIZED].clone(),
            standardized[(2 * k + 1) % STANDARDIZED].clone(),
        ]);
        for _ in 0..rng.below(5) {
            ps.insert(standardized[rng.below(STANDARDIZED)].clone());
        }
        parents.insert(id.clone(), ps.into_iter().collect());
    }
    let zone_of = |id: &str| match id.as_bytes()[0] {
        b'1' => ZONES[0],
        b'2' => ZONES[1],
        _ => ZONES[2],
    };
    let objects = parents
        .iter()
        .map(|(id, ps)| pb::ObjectDefinition {
            id: id.clone(),
            name: format!("cluster-fault object {id}"),
            zone: zone_of(id).into(),
            parents: ps.clone(),
            ..Default::default()
        })
        .collect();
    Catalogue { objects, parents }
}

// ------------------------------------------------------------------------------------------------
// The processor and its log

/// The processor of every agent (`--processor exec`): appends `start <object> <attempt>
/// <agent>` to `$FAULT_LOG`, waits while the file `$FAULT_HOLD` exists (a zone held, see
/// [`Rig::start_holding`]), sleeps `$FAULT_SLEEP` s, appends `done …` and exits 0 (the agent
/// publishes Loaded after the exit). `O_APPEND` writes of a short line are atomic, so the log's
/// line order is the order in which the lines were written, across agents.
const SCRIPT: &str = r#"#!/bin/sh
echo "start $STRATA_OBJECT_ID $STRATA_ATTEMPT $AGENT_NAME" >> "$FAULT_LOG"
while [ -e "$FAULT_HOLD" ]; do sleep 0.05; done
sleep "$FAULT_SLEEP"
echo "done $STRATA_OBJECT_ID $STRATA_ATTEMPT $AGENT_NAME" >> "$FAULT_LOG"
exit 0
"#;

struct Work {
    script: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

impl Work {
    fn new() -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = strata_tests::temp_dir("cluster-faults-work")?;
        let script = dir.path().join("load.sh");
        std::fs::write(&script, SCRIPT)?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        let log = dir.path().join("events.log");
        std::fs::write(&log, "")?;
        Ok(Self { script, log, dir })
    }

    /// The file whose existence holds every execution of `zone` after its `start` line.
    fn hold_file(&self, zone: &str) -> PathBuf {
        self.dir.path().join(format!("hold-{zone}"))
    }

    /// `(done, object, attempt, agent)` of every line so far, in file order.
    fn events(&self) -> anyhow::Result<Vec<(bool, String, u32, String)>> {
        let text = std::fs::read_to_string(&self.log)
            .with_context(|| format!("read {}", self.log.display()))?;
        text.lines()
            .map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                let [kind, object, attempt, agent] = f[..] else {
                    bail!("malformed log line {line:?}");
                };
                let done = match kind {
                    "start" => false,
                    "done" => true,
                    _ => bail!("malformed log line {line:?}"),
                };
                Ok((done, object.to_owned(), attempt.parse()?, agent.to_owned()))
            })
            .collect()
    }
}

// ------------------------------------------------------------------------------------------------
// The offset probe

/// What the probe thread hands the test: `ObjectLoaded` records `(object, attempt)` below the
/// control plane's committed offset on the results topic, and when that offset was read: the
/// state change each caused must have happened before then.
type Committed = (SystemTime, Vec<(String, u32)>);

/// What the probe found, when it stopped.
#[derive(Debug, Default)]
struct ProbeReport {
    samples: usize,
    /// Samples that could not fetch the offsets or read the topics within their bounds (the
    /// cluster was down or electing).
    skipped: usize,
    /// Ready records checked below the agents' committed offsets.
    readies_checked: usize,
    /// Ready records below an agent group's committed offset whose result was not in the
    /// results topic.
    violations: Vec<String>,
    /// After the batch: `(partition, committed, end)` for every partition of the results topic
    /// (the control plane's group) and of the Ready topics (the agents' groups).
    last: Vec<(String, i64, i64)>,
}

/// A thread sampling, every [`PROBE_EVERY`], the committed offsets of the control plane's group
/// on the results topic and of each zone's agent group on its Ready topic, reading both topics
/// from the beginning with assign-only consumers (no group of their own, nothing committed).
struct OffsetProbe {
    stop: Arc<AtomicBool>,
    committed: tokio::sync::mpsc::UnboundedReceiver<Committed>,
    report: Option<tokio::sync::oneshot::Receiver<anyhow::Result<ProbeReport>>>,
}

impl OffsetProbe {
    fn start(bootstrap: String, prefix: String) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, committed) = tokio::sync::mpsc::unbounded_channel();
        let (report_tx, report) = tokio::sync::oneshot::channel();
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("offset probe".into())
            .spawn(move || {
                let _ = report_tx.send(probe_loop(&bootstrap, &prefix, &flag, &tx));
            })?;
        Ok(Self {
            stop,
            committed,
            report: Some(report),
        })
    }

    /// Stops sampling; the probe then waits (bounded) until every committed offset equals its
    /// partition's end offset and reports.
    async fn finish(&mut self) -> anyhow::Result<ProbeReport> {
        self.stop.store(true, Ordering::Relaxed);
        let report = self.report.take().context("finished twice")?;
        within(Duration::from_secs(60), "the offset probe's report", report)
            .await?
            .context("the offset probe thread died")?
    }
}

impl Drop for OffsetProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn committed_of(
    consumer: &BaseConsumer,
    parts: &[(String, i32)],
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let mut tpl = TopicPartitionList::new();
    for (topic, p) in parts {
        tpl.add_partition(topic, *p);
    }
    let got = consumer.committed_offsets(tpl, Duration::from_secs(3))?;
    let mut out = BTreeMap::new();
    for e in got.elements() {
        let offset = match e.offset() {
            Offset::Offset(n) => n,
            _ => 0,
        };
        out.insert((e.topic().to_owned(), e.partition()), offset);
    }
    Ok(out)
}

/// Reads `consumer` (assigned to `parts`) until each partition's position reaches `upto`, at
/// most 3 s; `f` gets every record. True if all were reached.
fn read_until(
    consumer: &BaseConsumer,
    position: &mut BTreeMap<(String, i32), i64>,
    upto: &BTreeMap<(String, i32), i64>,
    mut f: impl FnMut(&str, i32, i64, Option<&str>, &[u8]),
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if upto
            .iter()
            .all(|(k, want)| position.get(k).copied().unwrap_or(0) >= *want)
        {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        match consumer.poll(Duration::from_millis(100)) {
            None | Some(Err(_)) => {}
            Some(Ok(m)) => {
                let kind = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == topics::HEADER_TYPE)
                        .and_then(|h| h.value)
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .map(str::to_owned)
                });
                f(
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    kind.as_deref(),
                    m.payload().unwrap_or_default(),
                );
                position.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
            }
        }
    }
}

fn assigned(bootstrap: &str, parts: &[(String, i32)]) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = consumer_config(bootstrap, "strata-tests-probe-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for (topic, p) in parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

fn group_client(bootstrap: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    // Never subscribes: it only fetches the group's committed offsets (no join, no commit).
    Ok(consumer_config(bootstrap, group)
        .set("enable.auto.commit", "false")
        .create()?)
}

/// A record of interest: `(offset, object, attempt)`.
type Record = (i64, String, u32);

fn probe_loop(
    bootstrap: &str,
    prefix: &str,
    stop: &AtomicBool,
    tx: &tokio::sync::mpsc::UnboundedSender<Committed>,
) -> anyhow::Result<ProbeReport> {
    let n: i32 = PARTITIONS.parse()?;
    let results = topics::results_topic(prefix);
    let result_parts: Vec<(String, i32)> = (0..n).map(|p| (results.clone(), p)).collect();
    let ready_parts: BTreeMap<&str, Vec<(String, i32)>> = ZONES
        .iter()
        .map(|z| {
            let t = topics::ready_topic(prefix, z);
            (*z, (0..n).map(|p| (t.clone(), p)).collect())
        })
        .collect();
    let all_ready: Vec<(String, i32)> = ready_parts.values().flatten().cloned().collect();
    let cp_group = group_client(bootstrap, &format!("{prefix}.control-plane"))?;
    let agent_groups: Vec<(&str, BaseConsumer)> = ZONES
        .iter()
        .map(|z| {
            Ok((
                *z,
                group_client(bootstrap, &topics::agent_group(prefix, z))?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let results_reader = assigned(bootstrap, &result_parts)?;
    let ready_reader = assigned(bootstrap, &all_ready)?;

    let mut report = ProbeReport::default();
    let mut results_pos = BTreeMap::new();
    let mut ready_pos = BTreeMap::new();
    // Every (object, attempt) with an ObjectLoaded in the results topic so far.
    let mut loaded: BTreeSet<(String, u32)> = BTreeSet::new();
    // ObjectLoaded records per results partition: (offset, object, attempt), not yet handed over.
    let mut loaded_records: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    // Ready records per partition not yet checked: (offset, object, attempt).
    let mut readies: BTreeMap<(String, i32), Vec<Record>> = BTreeMap::new();
    let mut final_deadline: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) && final_deadline.is_none() {
            final_deadline = Some(Instant::now() + Duration::from_secs(30));
        }
        report.samples += 1;
        // 1. The committed offsets (t1).
        let sampled = (|| {
            let cp = committed_of(&cp_group, &result_parts)?;
            let cp_read_at = SystemTime::now();
            let mut agents = BTreeMap::new();
            for (zone, client) in &agent_groups {
                agents.extend(committed_of(client, &ready_parts[zone])?);
            }
            anyhow::Ok((cp, cp_read_at, agents))
        })();
        let Ok((cp_committed, cp_read_at, agent_committed)) = sampled else {
            report.skipped += 1;
            std::thread::sleep(PROBE_EVERY);
            continue;
        };
        // 2. The Ready records below the agents' committed offsets.
        let readies_read = read_until(
            &ready_reader,
            &mut ready_pos,
            &agent_committed,
            |topic, p, offset, kind, payload| {
                if kind == Some(topics::TYPE_OBJECT_READY)
                    && let Ok(r) = pb::ObjectReady::decode(payload)
                {
                    readies.entry((topic.to_owned(), p)).or_default().push((
                        offset,
                        r.object_id,
                        r.attempt,
                    ));
                }
            },
        )?;
        // 3. The results topic up to its high watermark now (t2 > t1): every result acknowledged
        // before t2 (acks=all) is below it.
        let mut ends = BTreeMap::new();
        let mut watermarks_ok = true;
        for (topic, p) in &result_parts {
            match results_reader.fetch_watermarks(topic, *p, Duration::from_secs(3)) {
                Ok((_, high)) => {
                    ends.insert((topic.clone(), *p), high);
                }
                Err(_) => watermarks_ok = false,
            }
        }
        let results_read = watermarks_ok
            && read_until(
                &results_reader,
                &mut results_pos,
                &ends,
                |_, p, offset, kind, payload| {
                    if kind == Some(topics::TYPE_OBJECT_RESULT)
                        && let Ok(r) = pb::ObjectResult::decode(payload)
                        && let Some(pb::object_result::Result::Loaded(l)) = r.result
                    {
                        loaded.insert((l.object_id.clone(), l.attempt));
                        loaded_records
                            .entry(p)
                            .or_default()
                            .push((offset, l.object_id, l.attempt));
                    }
                },
            )?;
        if !(readies_read && results_read) {
            report.skipped += 1;
            std::thread::sleep(PROBE_EVERY);
            continue;
        }
        // 4. Every Ready below an agent group's committed offset has its result.
        for (part, records) in &mut readies {
            let upto = agent_committed.get(part).copied().unwrap_or(0);
            let (below, above): (Vec<_>, Vec<_>) =
                records.drain(..).partition(|(offset, _, _)| *offset < upto);
            *records = above;
            for (offset, object, attempt) in below {
                report.readies_checked += 1;
                if !loaded.contains(&(object.clone(), attempt)) {
                    report.violations.push(format!(
                        "{}-{} offset {offset} (object {object} attempt {attempt}) is below the \
                         agents' committed offset {upto}, and no ObjectLoaded of it is in the \
                         results topic",
                        part.0, part.1
                    ));
                }
            }
        }
        // 5. The ObjectLoaded records below the control plane's committed offset, for the test to
        // check against the state.
        let mut handed = Vec::new();
        for (p, records) in &mut loaded_records {
            let upto = cp_committed
                .get(&(results.clone(), *p))
                .copied()
                .unwrap_or(0);
            let (below, above): (Vec<_>, Vec<_>) =
                records.drain(..).partition(|(offset, _, _)| *offset < upto);
            *records = above;
            handed.extend(below.into_iter().map(|(_, o, a)| (o, a)));
        }
        if !handed.is_empty() {
            let _ = tx.send((cp_read_at, handed));
        }
        if let Some(deadline) = final_deadline {
            // After the batch: every group has committed up to its partitions' ends.
            let mut last = Vec::new();
            for (topic, p) in result_parts.iter().chain(&all_ready) {
                let end = results_reader
                    .fetch_watermarks(topic, *p, Duration::from_secs(3))
                    .map(|(_, high)| high)
                    .unwrap_or(-1);
                let committed = cp_committed
                    .get(&(topic.clone(), *p))
                    .or_else(|| agent_committed.get(&(topic.clone(), *p)))
                    .copied()
                    .unwrap_or(-1);
                last.push((format!("{topic}-{p}"), committed, end));
            }
            let caught_up = last.iter().all(|(_, c, e)| c == e);
            report.last = last;
            if caught_up || Instant::now() > deadline {
                break;
            }
        }
        std::thread::sleep(PROBE_EVERY);
    }
    // Nothing borrowed from the consumers is alive; they joined no group: quick to drop.
    drop((results_reader, ready_reader, cp_group, agent_groups));
    Ok(report)
}

// ------------------------------------------------------------------------------------------------
// The watch

/// Every change of one batch as `WatchBatch` streams it.
#[derive(Debug, Default)]
struct Watched {
    /// `(state, attempt)` of each object in the first snapshot (taken right after the
    /// submission).
    snapshot: BTreeMap<String, (pb::ObjectState, u32)>,
    /// Each object's changes after it: `(to, attempt, at)`, in stream order.
    changes: BTreeMap<String, Vec<(pb::ObjectState, u32, SystemTime)>>,
    /// Resyncs (the watcher fell behind and missed changes).
    resyncs: u64,
    /// The batch reached a terminal state (the stream's last message).
    ended: bool,
    /// The stream failed before the end.
    error: Option<String>,
}

/// Streams `WatchBatch` of `batch_id` into a [`Watched`] on a task of its own, until the batch is
/// terminal or the stream fails.
fn watch(mut client: OrchestratorClient<Channel>, batch_id: String) -> Arc<Mutex<Watched>> {
    use pb::watch_batch_response::Event;
    let watched = Arc::new(Mutex::new(Watched::default()));
    let out = watched.clone();
    tokio::spawn(async move {
        let run = async {
            let mut stream = client
                .watch_batch(pb::WatchBatchRequest { batch_id })
                .await?
                .into_inner();
            let mut seen_change = false;
            while let Some(message) = stream.message().await? {
                let mut w = out
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match message.event {
                    Some(Event::Snapshot(part)) if !seen_change => {
                        for o in part.objects {
                            let state = o.state();
                            w.snapshot.insert(o.object_id, (state, o.attempt));
                        }
                    }
                    Some(Event::Snapshot(_)) | None => {}
                    Some(Event::ObjectChanged(c)) => {
                        seen_change = true;
                        let at =
                            c.at.as_ref()
                                .map(|t| {
                                    UNIX_EPOCH
                                        + Duration::new(
                                            u64::try_from(t.seconds).unwrap_or(0),
                                            u32::try_from(t.nanos).unwrap_or(0),
                                        )
                                })
                                .context("a change without a time")?;
                        let to = c.to_state();
                        w.changes
                            .entry(c.object_id)
                            .or_default()
                            .push((to, c.attempt, at));
                    }
                    Some(Event::Resync(_)) => w.resyncs += 1,
                    Some(Event::BatchChanged(b)) => {
                        if b.to_state() != pb::BatchState::Running {
                            w.ended = true;
                            return anyhow::Ok(());
                        }
                    }
                }
            }
            bail!("the stream ended before the batch did")
        };
        if let Err(e) = run.await {
            let mut w = watched_lock(&out);
            w.error = Some(format!("{e:#}"));
            w.ended = true;
        }
    });
    watched
}

fn watched_lock(w: &Mutex<Watched>) -> std::sync::MutexGuard<'_, Watched> {
    w.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ------------------------------------------------------------------------------------------------
// The rig

/// One fault and when it happened (wall clock, to compare with the control plane's history).
struct Fault {
    what: String,
    at: SystemTime,
    healed: SystemTime,
}

struct Rig {
    name: &'static str,
    t0: Instant,
    probe: OffsetProbe,
    agents: Vec<WorkerAgent>,
    client: OrchestratorClient<Channel>,
    cp: ControlPlane,
    _redis: RedisServer,
    cluster: KafkaCluster,
    work: Work,
    catalogue: Catalogue,
    prefix: String,
    batch_id: String,
    faults: Vec<Fault>,
    /// Every change of the batch, as `WatchBatch` streamed it from the submission on.
    watched: Arc<Mutex<Watched>>,
    submitted_at: Instant,
    submitted_sys: SystemTime,
}

impl Rig {
    /// Starts everything and submits the batch; each execution sleeps `exec_sleep` seconds.
    async fn start(name: &'static str, exec_sleep: &str) -> anyhow::Result<Self> {
        Self::start_holding(name, exec_sleep, None).await
    }

    /// [`Rig::start`], with every execution of zone `held` (if any) held after it started,
    /// until [`Rig::release`]: the batch cannot end before then, however slowly the faults
    /// between go.
    async fn start_holding(
        name: &'static str,
        exec_sleep: &str,
        held: Option<&str>,
    ) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let catalogue = catalogue();
        let cluster = within(LONG, "start a 3-broker cluster", KafkaCluster::start(3)).await??;
        eprintln!("[{name}] cluster of 3 ready after {:?}", t0.elapsed());
        let redis = within(LONG, "start redis", RedisServer::start()).await??;
        let prefix = format!("strata-{name}");
        let group = format!("{prefix}.control-plane");
        let flags = [
            "--topic-prefix",
            &prefix,
            "--consumer-group",
            &group,
            "--topic-partitions",
            PARTITIONS,
            "--topic-replication-factor",
            "3",
            "--topic-min-insync-replicas",
            "2",
            // Heartbeats go to the control plane (gRPC), not through the cluster: leases never
            // expire because of a broker fault.
            "--lease-ttl-secs",
            "30",
            "--heartbeat-interval-secs",
            "1",
            // Far beyond any fault here: an attempt that comes back as attempt 2 lost a result.
            "--execution-timeout-secs",
            "300",
        ];
        let cp = within(
            LONG,
            "start the control plane",
            ControlPlane::start(&cluster.bootstrap_servers(), &redis.url(), &flags),
        )
        .await??;
        let client = within(LONG, "connect", OrchestratorClient::connect(cp.endpoint())).await??;
        let work = Work::new()?;
        if let Some(zone) = held {
            std::fs::write(work.hold_file(zone), "")?;
        }
        let mut agents = Vec::new();
        for zone in ZONES {
            let agent_name = format!("{zone}-1");
            let script = work.script.display().to_string();
            let log = work.log.display().to_string();
            let hold = work.hold_file(zone).display().to_string();
            agents.push(WorkerAgent::start(
                &agent_name,
                &cp.endpoint(),
                zone,
                &[
                    "--processor",
                    "exec",
                    "--exec-command",
                    &script,
                    "--concurrency",
                    AGENT_CONCURRENCY,
                    "--exec-pass-env",
                    "AGENT_NAME,FAULT_LOG,FAULT_SLEEP,FAULT_HOLD",
                ],
                &[
                    ("AGENT_NAME", agent_name.as_str()),
                    ("FAULT_LOG", log.as_str()),
                    ("FAULT_SLEEP", exec_sleep),
                    ("FAULT_HOLD", hold.as_str()),
                ],
            )?);
        }
        for a in &mut agents {
            a.wait_ready(LONG).await?;
        }
        let probe = OffsetProbe::start(cluster.bootstrap_servers(), prefix.clone())?;
        let mut rig = Self {
            name,
            t0,
            probe,
            agents,
            client,
            cp,
            _redis: redis,
            cluster,
            work,
            catalogue,
            prefix,
            batch_id: String::new(),
            faults: Vec::new(),
            watched: Arc::default(),
            submitted_at: Instant::now(),
            submitted_sys: SystemTime::now(),
        };
        let request = pb::SubmitBatchRequest {
            idempotency_key: format!("cluster-faults-{name}"),
            input: Some(pb::BatchInput {
                source: Some(pb::batch_input::Source::Objects(pb::ObjectList {
                    objects: rig.catalogue.objects.clone(),
                })),
            }),
            options: Some(pb::SubmitOptions {
                all: true,
                ..Default::default()
            }),
        };
        let submitted = within(LONG, "submit", rig.client.submit_batch(request))
            .await??
            .into_inner();
        ensure!(submitted.created, "{submitted:?}");
        let planned = submitted.summary.as_ref().map_or(0, |s| s.object_count);
        ensure!(planned == TOTAL as u32, "planned {planned} objects");
        rig.batch_id = submitted.batch_id;
        rig.submitted_at = Instant::now();
        rig.submitted_sys = SystemTime::now();
        rig.watched = watch(rig.client.clone(), rig.batch_id.clone());
        eprintln!(
            "[{name}] batch {} of {TOTAL} submitted after {:?}",
            rig.batch_id,
            t0.elapsed()
        );
        Ok(rig)
    }

    /// Lets the held executions ([`Rig::start_holding`]) go on.
    fn release(&self, zone: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.work.hold_file(zone))
            .with_context(|| format!("release the {zone} zone's executions"))
    }

    fn results_topic(&self) -> String {
        topics::results_topic(&self.prefix)
    }

    /// Every topic of the control plane and the offsets topic: what must be fully replicated
    /// again after a node came back.
    fn all_topics(&self) -> Vec<String> {
        let mut out = vec![
            self.results_topic(),
            topics::dlq_topic(&self.prefix),
            topics::status_topic(&self.prefix),
            "__consumer_offsets".to_owned(),
        ];
        out.extend(ZONES.iter().map(|z| topics::ready_topic(&self.prefix, z)));
        out
    }

    async fn wait_fully_replicated(&self) -> anyhow::Result<()> {
        let all = self.all_topics();
        let names: Vec<&str> = all.iter().map(String::as_str).collect();
        self.cluster.wait_fully_replicated(&names, REPLICATED).await
    }

    async fn batch(&mut self) -> anyhow::Result<pb::Batch> {
        let request = pb::GetBatchRequest {
            batch_id: self.batch_id.clone(),
        };
        Ok(within(LONG, "GetBatch", self.client.get_batch(request))
            .await??
            .into_inner())
    }

    /// Fails if an agent or the control plane exited: nothing here should make one exit.
    fn assert_alive(&mut self) -> anyhow::Result<()> {
        for a in &mut self.agents {
            if let Some(status) = a.exit_status()? {
                bail!(
                    "agent {} exited ({status}); log tail:\n{}",
                    a.name(),
                    a.log_tail()
                );
            }
        }
        if let Some(status) = self.cp.exit_status()? {
            bail!(
                "the control plane exited ({status}); log tail:\n{}",
                self.cp.log_tail()
            );
        }
        Ok(())
    }

    /// Polls (bounded) until `done` holds for the batch; checks the probe's records meanwhile.
    async fn wait_batch(
        &mut self,
        what: &str,
        limit: Duration,
        done: impl Fn(&pb::Batch) -> bool,
    ) -> anyhow::Result<pb::Batch> {
        let started = Instant::now();
        let mut shown = Instant::now();
        loop {
            self.assert_alive()?;
            if shown.elapsed() > Duration::from_secs(10) {
                shown = Instant::now();
                let now_counts = self.batch().await.map(|b| counts(&b));
                eprintln!(
                    "[{}] +{:.1}s: {now_counts:?}",
                    self.name,
                    self.submitted_at.elapsed().as_secs_f64(),
                );
            }
            // A GetBatch may fail while the control plane is busy with the broker: retried.
            match tokio::time::timeout(Duration::from_secs(10), self.batch()).await {
                Ok(Ok(batch)) if done(&batch) => return Ok(batch),
                Ok(Ok(batch)) if started.elapsed() > limit => bail!(
                    "[{}] timed out after {limit:?} waiting for {what}: {:?}\ncontrol plane log \
                     tail:\n{}\n{}",
                    self.name,
                    counts(&batch),
                    self.cp.log_tail(),
                    self.agent_tails()
                ),
                _ if started.elapsed() > limit => {
                    bail!(
                        "[{}] timed out after {limit:?} waiting for {what}",
                        self.name
                    )
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until at least `n` objects are LOADED; returns the batch then.
    async fn wait_loaded(&mut self, n: usize) -> anyhow::Result<pb::Batch> {
        let batch = self
            .wait_batch(&format!("{n} objects LOADED"), LONG, |b| {
                count(b, pb::ObjectState::Loaded) >= n as u32
            })
            .await?;
        ensure!(
            batch.state() == pb::BatchState::Running,
            "the fault would not land mid-batch: {:?}",
            counts(&batch)
        );
        eprintln!(
            "[{}] {} LOADED at {:?} after the submission: {:?}",
            self.name,
            count(&batch, pb::ObjectState::Loaded),
            self.submitted_at.elapsed(),
            counts(&batch)
        );
        Ok(batch)
    }

    fn agent_tails(&self) -> String {
        self.agents
            .iter()
            .map(|a| format!("agent {} log tail:\n{}", a.name(), a.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The partition of the results topic the batch's results go to (key = batch id): the one
    /// with records.
    async fn batch_results_partition(&self) -> anyhow::Result<i32> {
        let topic = self.results_topic();
        let bootstrap = self.cluster.bootstrap_servers();
        let n: i32 = PARTITIONS.parse()?;
        strata_tests::blocking(Duration::from_secs(30), "results watermarks", move || {
            let consumer: BaseConsumer = consumer_config(&bootstrap, "strata-tests-watermarks")
                .create()
                .context("create consumer")?;
            let mut with_records = Vec::new();
            for p in 0..n {
                let (_, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
                if high > 0 {
                    with_records.push(p);
                }
            }
            drop(consumer);
            match with_records[..] {
                [p] => Ok(p),
                _ => bail!("expected one results partition with records, got {with_records:?}"),
            }
        })
        .await?
    }

    /// The node leading the batch's results partition, and the Ready partitions it leads.
    async fn results_leader(&self) -> anyhow::Result<(usize, Vec<String>)> {
        let partition = self.batch_results_partition().await?;
        let leader = self
            .cluster
            .leader_of(&self.results_topic(), partition)
            .await?;
        let mut ready_led = Vec::new();
        for zone in ZONES {
            let topic = topics::ready_topic(&self.prefix, zone);
            for p in self.cluster.partitions(&topic).await? {
                if p.leader == Some(leader) {
                    ready_led.push(format!("{topic}-{}", p.partition));
                }
            }
        }
        eprintln!(
            "[{}] node {leader} leads {}-{partition} (the batch's results) and {ready_led:?}",
            self.name,
            self.results_topic()
        );
        Ok((leader, ready_led))
    }

    /// After the batch: every check of the module's doc. Prints the `SUMMARY` line.
    async fn finish(mut self) -> anyhow::Result<()> {
        let done = self
            .wait_batch("the batch to end", LONG, |b| {
                b.state() != pb::BatchState::Running
            })
            .await?;
        let batch_time = self.submitted_at.elapsed();
        ensure!(
            done.state() == pb::BatchState::Succeeded
                && count(&done, pb::ObjectState::Loaded) == TOTAL as u32,
            "[{}] the batch ended {:?} with {:?}",
            self.name,
            done.state(),
            counts(&done)
        );
        // Every change the watch saw: one LOADED per object, at attempt 1; their times.
        within(Duration::from_secs(30), "the watch to end", async {
            while !self
                .watched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .ended
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await?;
        let watched = std::mem::take(
            &mut *self
                .watched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        ensure!(
            watched.resyncs == 0 && watched.error.is_none(),
            "[{}] the watch missed changes: {} resync(s), error {:?}",
            self.name,
            watched.resyncs,
            watched.error
        );
        let mut loaded_at: BTreeMap<String, SystemTime> = BTreeMap::new();
        let mut released_at: BTreeMap<String, SystemTime> = BTreeMap::new();
        let mut problems = Vec::new();
        for id in self.catalogue.parents.keys() {
            let changes = watched
                .changes
                .get(id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let snapshot = watched.snapshot.get(id).copied();
            let loads: Vec<&(pb::ObjectState, u32, SystemTime)> = changes
                .iter()
                .filter(|(to, _, _)| *to == pb::ObjectState::Loaded)
                .collect();
            let loaded_in_snapshot = snapshot.is_some_and(|(s, _)| s == pb::ObjectState::Loaded);
            let attempts: BTreeSet<u32> = changes.iter().map(|(_, a, _)| *a).collect();
            if loads.len() != 1 || loaded_in_snapshot || attempts != BTreeSet::from([1]) {
                problems.push(format!(
                    "{id}: first seen {snapshot:?}, then {changes:?} ({} LOADED)",
                    loads.len()
                ));
                continue;
            }
            loaded_at.insert(id.clone(), loads[0].2);
            let released = changes
                .iter()
                .find(|(to, _, _)| *to == pb::ObjectState::Ready)
                .map(|c| c.2)
                // Released before the first snapshot: at the submission.
                .unwrap_or(self.submitted_sys);
            released_at.insert(id.clone(), released);
        }
        ensure!(
            problems.is_empty(),
            "[{}] {} object(s) not LOADED exactly once at attempt 1: {:#?}",
            self.name,
            problems.len(),
            &problems[..problems.len().min(20)]
        );

        // The executions, from the processor's log.
        let events = self.work.events()?;
        let mut done_at: BTreeMap<&str, usize> = BTreeMap::new();
        let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
        let (mut starts, mut dones) = (0, 0);
        for (i, (done, object, attempt, agent)) in events.iter().enumerate() {
            let parents = self
                .catalogue
                .parents
                .get(object)
                .with_context(|| format!("agent {agent} ran unknown object {object}"))?;
            ensure!(
                *attempt == 1,
                "{object} ran (by {agent}) for attempt {attempt}: it was released again"
            );
            if *done {
                dones += 1;
                done_at.entry(object).or_insert(i);
                continue;
            }
            starts += 1;
            *runs.entry(object).or_default() += 1;
            for p in parents {
                ensure!(
                    done_at.get(p.as_str()).is_some_and(|&d| d < i),
                    "{object} started (by {agent}) before its parent {p} was done"
                );
            }
        }
        ensure!(
            done_at.len() == TOTAL && runs.len() == TOTAL,
            "{} of {TOTAL} objects ran, {} finished",
            runs.len(),
            done_at.len()
        );
        // An execution without its `done` line was killed by its agent: the control plane's
        // heartbeat reply abandons an attempt it no longer waits for (here: a redelivered Ready
        // of an object LOADED meanwhile). Only a repeated execution may end so.
        let mut finished: BTreeMap<&str, usize> = BTreeMap::new();
        for (done, object, _, _) in &events {
            if *done {
                *finished.entry(object).or_default() += 1;
            }
        }
        let abandoned: Vec<String> = runs
            .iter()
            .filter(|(o, n)| finished.get(*o).copied().unwrap_or(0) < **n)
            .map(|(o, n)| format!("{o} ({n} runs, {} finished)", finished[o]))
            .collect();

        // A second execution is allowed for an attempt in flight at the fault(s): released before
        // the last fault was healed, LOADED no earlier than COMMIT_SLACK before the first.
        let window_start = self.faults.iter().map(|f| f.at).min().context("no fault")?;
        let window_end = self
            .faults
            .iter()
            .map(|f| f.healed)
            .max()
            .context("no fault")?;
        let mut in_flight = Vec::new();
        let mut not_in_flight = Vec::new();
        for (object, n) in runs.iter().filter(|(_, n)| **n > 1) {
            let released = released_at.get(*object).copied();
            let loaded = loaded_at[*object];
            let was_in_flight =
                released.is_some_and(|r| r <= window_end) && loaded + COMMIT_SLACK >= window_start;
            let line = format!(
                "{object} ×{n} (released {}, LOADED {} relative to the first fault)",
                rel(released, window_start),
                rel(Some(loaded), window_start)
            );
            if was_in_flight {
                in_flight.push(line);
            } else {
                not_in_flight.push(line);
            }
        }
        let duplicates = starts - TOTAL;
        let agents_abandoned = self
            .agents
            .iter()
            .map(|a| a.log().matches("attempt abandoned").count())
            .sum::<usize>();
        eprintln!(
            "[{}] {starts} executions for {TOTAL} objects: {duplicates} duplicate(s), of {} \
             object(s) in flight at the fault; {} execution(s) killed unfinished ({} \
             'attempt abandoned' in the agents' logs): {abandoned:?}; the duplicates: \
             {in_flight:?}",
            self.name,
            in_flight.len(),
            starts - dones,
            agents_abandoned
        );
        ensure!(
            starts - dones <= agents_abandoned,
            "{starts} executions started, {dones} finished, and the agents abandoned only \
             {agents_abandoned} attempt(s): an execution is unaccounted for"
        );
        ensure!(
            not_in_flight.is_empty(),
            "[{}] objects run more than once whose attempt was not in flight at the fault: \
             {not_in_flight:?}",
            self.name
        );

        // Offsets. Every ObjectLoaded below the control plane's committed offset when it was read
        // at t1 was applied before t1 (its LOADED transition is stamped when the control plane's
        // step ran, before the Redis write, before its offset is stored).
        let report = self.probe.finish().await?;
        let (mut applied_checked, mut applied_violations) = (0, Vec::new());
        while let Ok((read_at, records)) = self.probe.committed.try_recv() {
            for (object, attempt) in records {
                applied_checked += 1;
                let loaded = loaded_at.get(&object).copied();
                if attempt == 1 && loaded.is_none_or(|l| l > read_at) {
                    applied_violations.push(format!(
                        "ObjectLoaded of {object} attempt {attempt} was below the control plane's \
                         committed offset read at {read_at:?}, LOADED at {loaded:?}"
                    ));
                }
            }
        }
        eprintln!(
            "[{}] offset probe: {} samples ({} skipped while the cluster could not answer), {} \
             Ready records below the agents' committed offsets all with their result, {} \
             ObjectLoaded records below the control plane's committed offset all applied; after \
             the batch (partition, committed, end): {:?}",
            self.name,
            report.samples,
            report.skipped,
            report.readies_checked,
            applied_checked,
            report.last
        );
        ensure!(
            report.violations.is_empty() && applied_violations.is_empty(),
            "offsets ahead of their state: {:#?} {:#?}",
            report.violations,
            applied_violations
        );
        ensure!(
            !report.last.is_empty() && report.last.iter().all(|(_, c, e)| c == e),
            "committed offsets not at the partitions' ends 30 s after the batch: {:?}",
            report.last
        );
        ensure!(
            report.readies_checked >= TOTAL && applied_checked >= TOTAL,
            "the probe checked too little: {} readies, {} results",
            report.readies_checked,
            applied_checked
        );

        // Recovery: per fault, the longest pause in LOADED transitions from the fault until the
        // next fault (or 60 s).
        let mut times: Vec<SystemTime> = loaded_at.values().copied().collect();
        times.sort();
        let mut recoveries = Vec::new();
        for (k, f) in self.faults.iter().enumerate() {
            let until = self
                .faults
                .get(k + 1)
                .map_or(f.healed + Duration::from_secs(60), |next| next.at);
            let (first, resumed, pause) = recovery(&times, f.at, until);
            let line = format!(
                "{}: down {:?}; first LOADED after the fault +{:?}; longest pause {:?}, progress \
                 resumed +{:?} after the fault",
                f.what,
                f.healed.duration_since(f.at).unwrap_or_default(),
                first,
                pause,
                resumed
            );
            eprintln!("[{}] recovery: {line}", self.name);
            recoveries.push(format!("{:.1}s", resumed.as_secs_f64()));
        }
        let ignored = match http_get(self.cp.admin_port(), "/metrics").await {
            Ok((200, body)) => body
                .lines()
                .filter(|l| l.starts_with("strata_results_ignored_total"))
                .map(|l| l.replace("strata_results_ignored_total", ""))
                .collect::<Vec<_>>()
                .join(" "),
            other => format!("(metrics: {other:?})"),
        };
        eprintln!(
            "[{}] SUMMARY: succeeded, {TOTAL} LOADED once each; {starts} executions, {duplicates} \
             duplicate(s) (in flight at the fault); recovery {}; batch {:.1}s; test {:.1}s; \
             results the control plane ignored: {ignored}",
            self.name,
            recoveries.join(", "),
            batch_time.as_secs_f64(),
            self.t0.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

fn counts(batch: &pb::Batch) -> BTreeMap<&'static str, u32> {
    let mut out = BTreeMap::new();
    for c in &batch.counts {
        *out.entry(c.state().as_str_name()).or_default() += c.count;
    }
    out
}

fn count(batch: &pb::Batch, state: pb::ObjectState) -> u32 {
    counts(batch).get(state.as_str_name()).copied().unwrap_or(0)
}

/// `t` relative to `origin`, signed, for messages.
fn rel(t: Option<SystemTime>, origin: SystemTime) -> String {
    match t {
        None => "never".into(),
        Some(t) => match t.duration_since(origin) {
            Ok(d) => format!("+{:.2}s", d.as_secs_f64()),
            Err(e) => format!("-{:.2}s", e.duration().as_secs_f64()),
        },
    }
}

/// Over the sorted LOADED times in `(fault, until]`: the first one after the fault, the end of
/// the longest pause (counted from the fault itself), and that pause; all relative to the fault.
fn recovery(
    times: &[SystemTime],
    fault: SystemTime,
    until: SystemTime,
) -> (Duration, Duration, Duration) {
    let after: Vec<SystemTime> = times
        .iter()
        .copied()
        .filter(|&t| t > fault && t <= until)
        .collect();
    let since = |t: SystemTime| t.duration_since(fault).unwrap_or_default();
    let Some(&first) = after.first() else {
        return (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    };
    let (mut resumed, mut pause) = (first, since(first));
    for w in after.windows(2) {
        let gap = w[1].duration_since(w[0]).unwrap_or_default();
        if gap > pause {
            (resumed, pause) = (w[1], gap);
        }
    }
    (since(first), since(resumed), pause)
}

fn now() -> SystemTime {
    SystemTime::now()
}

// ------------------------------------------------------------------------------------------------
// 1. kill -9 of the leader

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_survives_kill_9_of_the_leader_of_its_results_and_ready_partitions()
-> anyhow::Result<()> {
    let mut rig = Rig::start("kill-leader", EXEC_SLEEP).await?;
    rig.wait_loaded(TOTAL / 4).await?;
    let (victim, ready_led) = rig.results_leader().await?;
    ensure!(
        !ready_led.is_empty(),
        "node {victim} leads no Ready partition"
    );
    let partition = rig.batch_results_partition().await?;
    let at = now();
    let t = Instant::now();
    rig.cluster.kill9(victim);
    let results = rig.results_topic();
    let moved = within(
        LONG,
        "a survivor to lead the results partition",
        rig.cluster
            .wait_for_partition(&results, partition, REPLICATED, |p| {
                p.leader.is_some_and(|l| l != victim)
            }),
    )
    .await??;
    eprintln!(
        "[{}] node {victim} killed; {results}-{partition} led by {:?} (ISR {:?}) after {:?}",
        rig.name,
        moved.leader,
        moved.isr,
        t.elapsed()
    );
    // Restarted later: once the batch went on for a while without it.
    let loaded = count(&rig.batch().await?, pb::ObjectState::Loaded) as usize;
    rig.wait_loaded(loaded + 500).await?;
    within(LONG, "restart the killed node", rig.cluster.restart(victim)).await??;
    let healed = now();
    rig.wait_fully_replicated().await?;
    eprintln!(
        "[{}] node {victim} restarted after {:?} down, full ISR again after {:?}",
        rig.name,
        healed.duration_since(at).unwrap_or_default(),
        t.elapsed()
    );
    rig.faults.push(Fault {
        what: format!(
            "kill -9 of node {victim} (leader of the results partition and {ready_led:?})"
        ),
        at,
        healed,
    });
    rig.finish().await
}

// ------------------------------------------------------------------------------------------------
// 2. a frozen broker

/// How long the broker stays frozen: beyond its session timeout (3 s in the fixture), so the
/// controller fences it and moves its leadership.
const FROZEN: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_survives_a_broker_frozen_beyond_its_session_timeout() -> anyhow::Result<()> {
    let mut rig = Rig::start("sigstop", EXEC_SLEEP).await?;
    rig.wait_loaded(TOTAL / 4).await?;
    let (victim, ready_led) = rig.results_leader().await?;
    let partition = rig.batch_results_partition().await?;
    let at = now();
    rig.cluster.stop(victim)?;
    let results = rig.results_topic();
    let moved = within(
        LONG,
        "a survivor to lead the results partition",
        rig.cluster
            .wait_for_partition(&results, partition, REPLICATED, |p| {
                p.leader.is_some_and(|l| l != victim)
            }),
    )
    .await??;
    eprintln!(
        "[{}] node {victim} frozen (SIGSTOP); {results}-{partition} led by {:?} after {:?}",
        rig.name,
        moved.leader,
        now().duration_since(at).unwrap_or_default()
    );
    let left = FROZEN.saturating_sub(now().duration_since(at).unwrap_or_default());
    tokio::time::sleep(left).await;
    rig.cluster.resume(victim)?;
    let healed = now();
    rig.wait_fully_replicated().await?;
    eprintln!(
        "[{}] node {victim} continued (SIGCONT) after {:?}; full ISR again after {:?}",
        rig.name,
        healed.duration_since(at).unwrap_or_default(),
        now().duration_since(at).unwrap_or_default()
    );
    rig.faults.push(Fault {
        what: format!(
            "SIGSTOP of node {victim} for {FROZEN:?} (leader of the results partition and \
             {ready_led:?})"
        ),
        at,
        healed,
    });
    rig.finish().await
}

// ------------------------------------------------------------------------------------------------
// 3. a rolling restart

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_survives_a_rolling_restart_of_every_broker() -> anyhow::Result<()> {
    // The application zone's executions wait until every broker has been restarted: the
    // restarts land mid-batch however long each takes, with those attempts in flight.
    let mut rig = Rig::start_holding("rolling", EXEC_SLEEP, Some("application")).await?;
    rig.wait_loaded(TOTAL / 8).await?;
    let (leader, _) = rig.results_leader().await?;
    // The results partition's leader last: the others first, as an operator would.
    let order: Vec<usize> = (0..rig.cluster.size())
        .filter(|&n| n != leader)
        .chain([leader])
        .collect();
    for node in order {
        let at = now();
        within(
            LONG,
            "a controlled shutdown",
            rig.cluster.shutdown(node, Duration::from_secs(60)),
        )
        .await??;
        let down = now().duration_since(at).unwrap_or_default();
        within(LONG, "restart the node", rig.cluster.restart(node)).await??;
        let healed = now();
        rig.wait_fully_replicated().await?;
        let batch = rig.batch().await?;
        eprintln!(
            "[{}] node {node}: shut down in {down:?}, back after {:?}, full ISR after {:?}; {:?}",
            rig.name,
            healed.duration_since(at).unwrap_or_default(),
            now().duration_since(at).unwrap_or_default(),
            counts(&batch)
        );
        ensure!(
            batch.state() == pb::BatchState::Running,
            "the batch ended before node {node}'s restart, with the application zone held: {:?}",
            counts(&batch)
        );
        rig.faults.push(Fault {
            what: format!("restart of node {node}"),
            at,
            healed,
        });
    }
    rig.release("application")?;
    rig.finish().await
}

// ------------------------------------------------------------------------------------------------
// 4. the whole cluster down

/// How long every node stays dead before the restart.
const ALL_DOWN: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_survives_the_whole_cluster_killed_and_restarted_from_its_disks()
-> anyhow::Result<()> {
    let mut rig = Rig::start("all-down", EXEC_SLEEP).await?;
    rig.wait_loaded(TOTAL / 4).await?;
    let at = now();
    rig.cluster.kill9_all();
    tokio::time::sleep(ALL_DOWN).await;
    within(LONG, "restart every node", rig.cluster.restart_all()).await??;
    let healed = now();
    rig.wait_fully_replicated().await?;
    eprintln!(
        "[{}] every node killed; restarted and ready after {:?}, full ISR after {:?}",
        rig.name,
        healed.duration_since(at).unwrap_or_default(),
        now().duration_since(at).unwrap_or_default()
    );
    rig.faults.push(Fault {
        what: format!("kill -9 of all three nodes, restarted after {ALL_DOWN:?}"),
        at,
        healed,
    });
    rig.finish().await
}
