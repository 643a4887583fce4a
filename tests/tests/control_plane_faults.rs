//! Fault suite: the real `strata-control-plane` binary (a child process,
//! [`strata_tests::control_plane::ControlPlane`]) on the real broker and Redis, with one real
//! `strata-worker-agent` per zone (child processes, [`strata_tests::worker_agent::WorkerAgent`],
//! `--processor exec`), driving a layered batch of 300 objects. No Kafka client runs in the test
//! process itself: the agents' clients live and die with the agents' processes.
//!
//! 1. The control plane is `kill -9`ed mid-batch and started again on the same port, while the
//!    agents keep running: the batch completes from the state in Redis, under the same batch id
//!    and idempotency key.
//! 2. The broker (Tansu, whatever `STRATA_TEST_BROKER` says: the test relies on its in-memory
//!    engine) is restarted mid-batch (every topic, record and offset gone) while the agents keep
//!    running: the topics come back, the Ready records that were in
//!    flight are published again, and the batch completes. The control plane and the agents run
//!    under a supervisor that restarts whichever process exits, because against Tansu a
//!    librdkafka consumer often dies there (SIGSEGV; see the test); every such exit is printed.
//! 3. Redis stops answering (`SIGSTOP`) mid-batch for longer than two of the store's call
//!    timeouts: the control plane takes no result it cannot persist and readiness says it is
//!    stalled; once Redis answers, the batch goes on where it stopped.
//!
//! The agents' processor is a `/bin/sh` script ([`SCRIPT`]) that appends `start` and `done` lines
//! (nanosecond timestamp, object, attempt, agent) to a log shared by all agents. The tests check,
//! from that log rather than timing, that no object started before each of its parents was done,
//! that nothing got a second attempt, and that nothing LOADED before the fault ran again. Faults
//! are placed by progress (objects started), never by sleeping: the script waits at a gate
//! (a file) once a given number of objects have started, until the test opens it. Every wait is
//! bounded; durations are printed, never asserted.
//!
//! Needs both binaries built (`cargo build -p strata-control-plane -p strata-worker-agent`, or
//! `./tests/run.sh`, whose `--workspace` run builds them); see [`strata_tests::control_plane`].

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use strata_proto::v1::{self as pb};
use strata_tests::control_plane::{ControlPlane, control_plane_binary};
use strata_tests::process::ServerProcess;
use strata_tests::worker_agent::WorkerAgent;
use strata_tests::{KafkaBroker, RedisServer, TestBroker, within};
use tempfile::TempDir;
use tonic::transport::Channel;

const ZONES: [&str; 3] = ["raw", "standardized", "application"];
/// Objects per layer: every raw object is a parent of some standardized one, every standardized
/// one of some application one, so the whole catalogue is planned.
const RAW: usize = 120;
const STANDARDIZED: usize = 120;
const APPLICATION: usize = 60;
const TOTAL: usize = RAW + STANDARDIZED + APPLICATION;
/// Bound on every wait (start-ups, a batch running to its end, a restart).
const LONG: Duration = Duration::from_secs(120);
/// Flags of the control plane under test (besides the broker, Redis and gRPC address). Results
/// are only accepted from agents holding a live lease (the default). Agents heartbeat every
/// second; a lease lives 30 s without one, far longer than the control plane is down in the
/// kill -9 test, so no lease may expire because of the fault. An attempt that outlives the
/// 20 s execution timeout comes back as a second attempt: the tests rule that out, and a short
/// timeout makes such a failure show within the test's bounds instead of an hour later.
const CP_FLAGS: &[&str] = &[
    "--topic-partitions",
    "2",
    "--lease-ttl-secs",
    "30",
    "--heartbeat-interval-secs",
    "1",
    "--execution-timeout-secs",
    "20",
];
/// Concurrency of each agent.
const AGENT_CONCURRENCY: &str = "4";

// ------------------------------------------------------------------------------------------------
// The catalogue

/// A layered catalogue of [`TOTAL`] objects and its edges (child → parents).
struct Catalogue {
    objects: Vec<pb::ObjectDefinition>,
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

/// Raw `1000…` (no parents), standardized `2000…` (1–3 raw parents), application `3000…` (2–6
/// standardized parents). The same every time.
fn catalogue() -> Catalogue {
    let mut rng = SplitMix(0x5eed_fa17);
    let raw: Vec<String> = (0..RAW).map(|k| (1000 + k).to_string()).collect();
    let standardized: Vec<String> = (0..STANDARDIZED).map(|k| (2000 + k).to_string()).collect();
    let application: Vec<String> = (0..APPLICATION).map(|k| (3000 + k).to_string()).collect();
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
            name: format!("fault-suite object {id}"),
            zone: zone_of(id).into(),
            parents: ps.clone(),
            ..Default::default()
        })
        .collect();
    Catalogue { objects, parents }
}

// ------------------------------------------------------------------------------------------------
// gRPC helpers

async fn connect(cp: &ControlPlane) -> anyhow::Result<OrchestratorClient<Channel>> {
    Ok(within(
        LONG,
        "connect a gRPC client",
        OrchestratorClient::connect(cp.endpoint()),
    )
    .await??)
}

async fn submit(
    client: &mut OrchestratorClient<Channel>,
    key: &str,
    catalogue: &Catalogue,
) -> anyhow::Result<pb::SubmitBatchResponse> {
    let request = pb::SubmitBatchRequest {
        idempotency_key: key.into(),
        input: Some(pb::BatchInput {
            source: Some(pb::batch_input::Source::Objects(pb::ObjectList {
                objects: catalogue.objects.clone(),
            })),
        }),
        options: Some(pb::SubmitOptions {
            all: true,
            ..Default::default()
        }),
    };
    Ok(within(LONG, "submit", client.submit_batch(request))
        .await??
        .into_inner())
}

async fn get_batch(
    client: &mut OrchestratorClient<Channel>,
    batch_id: &str,
) -> anyhow::Result<pb::Batch> {
    let request = pb::GetBatchRequest {
        batch_id: batch_id.into(),
    };
    Ok(within(LONG, "GetBatch", client.get_batch(request))
        .await??
        .into_inner())
}

/// Objects per state, over all zones.
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

/// The batch succeeded with every object LOADED at its first attempt, per `GetBatch` counts and
/// per `GetObject` of each object; except the objects of `lost` (their first attempt may have died
/// with the agent process running it: lost work, `docs/design.md#lost-work`), LOADED at their first or second.
async fn assert_all_loaded_at_first_attempt(
    client: &mut OrchestratorClient<Channel>,
    batch: &pb::Batch,
    catalogue: &Catalogue,
    lost: &BTreeSet<String>,
) -> anyhow::Result<()> {
    ensure!(
        batch.state() == pb::BatchState::Succeeded,
        "batch ended {:?} with {:?}",
        batch.state(),
        counts(batch)
    );
    ensure!(
        counts(batch) == BTreeMap::from([(pb::ObjectState::Loaded.as_str_name(), TOTAL as u32)]),
        "counts {:?}",
        counts(batch)
    );
    for id in catalogue.parents.keys() {
        let request = pb::GetObjectRequest {
            batch_id: batch.batch_id.clone(),
            object_id: id.clone(),
        };
        let object = within(LONG, "GetObject", client.get_object(request))
            .await??
            .into_inner();
        let most = if lost.contains(id) { 2 } else { 1 };
        ensure!(
            object.state() == pb::ObjectState::Loaded && (1..=most).contains(&object.attempt),
            "object {id} is {:?} at attempt {}",
            object.state(),
            object.attempt
        );
    }
    Ok(())
}

/// Which of `ids` the control plane reports LOADED (`GetObject`).
async fn loaded_among(
    client: &mut OrchestratorClient<Channel>,
    batch_id: &str,
    ids: impl IntoIterator<Item = String>,
) -> anyhow::Result<BTreeSet<String>> {
    let mut loaded = BTreeSet::new();
    for id in ids {
        let request = pb::GetObjectRequest {
            batch_id: batch_id.into(),
            object_id: id.clone(),
        };
        let object = within(LONG, "GetObject", client.get_object(request))
            .await??
            .into_inner();
        if object.state() == pb::ObjectState::Loaded {
            loaded.insert(id);
        }
    }
    Ok(loaded)
}

/// Objects of the catalogue not LOADED at attempt 1, with what `GetObject` says about them
/// (state, attempt, agent, last error): the detail of a failed check.
async fn not_first_attempt(
    client: &mut OrchestratorClient<Channel>,
    batch_id: &str,
    catalogue: &Catalogue,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for id in catalogue.parents.keys() {
        let request = pb::GetObjectRequest {
            batch_id: batch_id.into(),
            object_id: id.clone(),
        };
        let o = within(LONG, "GetObject", client.get_object(request))
            .await??
            .into_inner();
        if o.state() != pb::ObjectState::Loaded || o.attempt != 1 {
            out.push(format!(
                "{id}: {:?} at attempt {} (agent {:?}, last error {:?})",
                o.state(),
                o.attempt,
                o.agent_id,
                o.last_error
            ));
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// The agents' processor and its log

/// The processor of every agent (`--processor exec`). One line per event, appended to
/// `$FAULT_LOG` (`O_APPEND` writes of a short line are atomic, so lines of concurrent scripts
/// never mix): `start <ns> <object> <attempt> <agent>` first, `done <ns> <object> <attempt>
/// <agent>` just before `exit 0` (the agent publishes Loaded after the exit). In between, the
/// gate: the script whose `start` line is past the `$FAULT_LIMIT`-th `start` line of the log
/// waits while the file `$FAULT_GATE` exists (its position, not the count when it looks, so
/// that a slow early script is never held back by later ones).
const SCRIPT: &str = r#"#!/bin/sh
line="start $(date +%s%N) $STRATA_OBJECT_ID $STRATA_ATTEMPT $AGENT_NAME"
echo "$line" >> "$FAULT_LOG"
n=$(awk -v l="$line" '/^start /{n++} $0 == l {print n; exit}' "$FAULT_LOG")
while [ "${n:-0}" -gt "$FAULT_LIMIT" ] && [ -e "$FAULT_GATE" ]; do
    sleep 0.05
done
echo "done $(date +%s%N) $STRATA_OBJECT_ID $STRATA_ATTEMPT $AGENT_NAME" >> "$FAULT_LOG"
exit 0
"#;

/// The script, its log and its gate, in a temp dir of the test. Dropping it opens the gate, so
/// that no script stays blocked (a killed agent's scripts outlive it: they run in process groups
/// of their own).
struct Work {
    script: PathBuf,
    log: PathBuf,
    gate: PathBuf,
    limit: usize,
    // Declared last: removed after the gate was opened.
    _dir: TempDir,
}

impl Work {
    /// The gate closes on every object started after the first `limit`.
    fn new(limit: usize) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = strata_tests::temp_dir("faults-work")?;
        let script = dir.path().join("load.sh");
        std::fs::write(&script, SCRIPT)?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        let log = dir.path().join("events.log");
        std::fs::write(&log, "")?;
        let gate = dir.path().join("gate");
        std::fs::write(&gate, "")?;
        Ok(Self {
            script,
            log,
            gate,
            limit,
            _dir: dir,
        })
    }

    fn open_gate(&self) {
        let _ = std::fs::remove_file(&self.gate);
    }

    /// Every line of the log so far, in file order.
    fn events(&self) -> anyhow::Result<Vec<Event>> {
        let text = std::fs::read_to_string(&self.log)
            .with_context(|| format!("read {}", self.log.display()))?;
        text.lines().map(Event::parse).collect()
    }

    /// How many objects have started (with repetitions).
    fn starts(&self) -> anyhow::Result<usize> {
        Ok(self.events()?.iter().filter(|e| !e.done).count())
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        self.open_gate();
    }
}

/// One line of the script's log.
#[derive(Debug, Clone)]
struct Event {
    done: bool,
    at_ns: u128,
    object_id: String,
    attempt: u32,
    agent: String,
}

impl Event {
    fn parse(line: &str) -> anyhow::Result<Self> {
        let f: Vec<&str> = line.split(' ').collect();
        let [kind, at, object, attempt, agent] = f[..] else {
            bail!("malformed log line {line:?}");
        };
        let done = match kind {
            "start" => false,
            "done" => true,
            _ => bail!("malformed log line {line:?}"),
        };
        Ok(Self {
            done,
            at_ns: at.parse().with_context(|| format!("log line {line:?}"))?,
            object_id: object.to_owned(),
            attempt: attempt
                .parse()
                .with_context(|| format!("log line {line:?}"))?,
            agent: agent.to_owned(),
        })
    }
}

/// Fails if any of `done` (objects LOADED before the fault) was started more than once:
/// recovery resumes a batch, it does not run finished work again.
fn assert_not_run_again(log: &[Event], done: &BTreeSet<String>) -> anyhow::Result<()> {
    let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
    for e in log
        .iter()
        .filter(|e| !e.done && done.contains(&e.object_id))
    {
        *runs.entry(e.object_id.as_str()).or_default() += 1;
    }
    let again: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(
        again.is_empty(),
        "objects LOADED before the fault were started again (object, times): {again:?}"
    );
    Ok(())
}

/// Checks the script's log (every agent, in timestamp order), not timing:
/// - every object of the catalogue was done (its script exited 0);
/// - no object started before each of its parents was done;
/// - every start was attempt 1 (nothing was retried), except attempt 2 of the objects of `lost`
///   (see [`assert_all_loaded_at_first_attempt`]).
///
/// Returns how many starts were duplicates (an object started again at the same attempt):
/// allowed, delivery is at least once.
fn check_logs(
    mut log: Vec<Event>,
    catalogue: &Catalogue,
    lost: &BTreeSet<String>,
) -> anyhow::Result<usize> {
    log.sort_by_key(|e| (e.at_ns, e.done));
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut duplicates = Vec::new();
    for e in &log {
        let parents = catalogue
            .parents
            .get(&e.object_id)
            .with_context(|| format!("agent {} ran unknown object {}", e.agent, e.object_id))?;
        if e.done {
            done.insert(e.object_id.as_str());
            continue;
        }
        for p in parents {
            ensure!(
                done.contains(p.as_str()),
                "{} started (by {}) before its parent {p} was done",
                e.object_id,
                e.agent
            );
        }
        ensure!(
            e.attempt == 1 || (e.attempt == 2 && lost.contains(&e.object_id)),
            "{} started (by {}) for attempt {}: it was released again",
            e.object_id,
            e.agent,
            e.attempt
        );
        if !seen.insert(e.object_id.as_str()) && e.attempt == 1 {
            duplicates.push(format!("{}@{}", e.object_id, e.agent));
        }
    }
    ensure!(
        done.len() == TOTAL,
        "{} of {TOTAL} objects done",
        done.len()
    );
    if !duplicates.is_empty() {
        eprintln!(
            "duplicate starts (same attempt, at-least-once): {}",
            duplicates.join(" ")
        );
    }
    Ok(duplicates.len())
}

// ------------------------------------------------------------------------------------------------
// The agents

/// One `strata-worker-agent` per zone running [`SCRIPT`], and the supervisor that restarts one
/// that exited.
struct Agents {
    endpoint: String,
    agents: Vec<WorkerAgent>,
    /// How many processes were started per zone (names are `<zone>-<n>`).
    started: BTreeMap<&'static str, usize>,
    /// Exits the supervisor saw: `(agent, how, its log tail)`.
    exits: Vec<(String, String)>,
}

impl Agents {
    /// Waits (bounded) until more than `n` objects have started, the agents alive.
    async fn wait_starts(&mut self, work: &Work, n: usize) -> anyhow::Result<()> {
        within(LONG, "the agents to start the first objects", async {
            while work.starts()? <= n {
                self.assert_alive()?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        })
        .await?
    }

    /// Waits (bounded) until the batch is terminal, the agents alive; returns it.
    async fn wait_terminal(
        &mut self,
        client: &mut OrchestratorClient<Channel>,
        batch_id: &str,
    ) -> anyhow::Result<pb::Batch> {
        within(LONG, "the batch to reach a terminal state", async {
            loop {
                self.assert_alive()?;
                let batch = get_batch(client, batch_id).await?;
                if batch.state() != pb::BatchState::Running {
                    return anyhow::Ok(batch);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await?
    }

    /// Starts them and waits until each is ready (registered and consuming).
    async fn start(cp: &ControlPlane, work: &Work) -> anyhow::Result<Self> {
        let mut me = Self {
            endpoint: cp.endpoint(),
            agents: Vec::new(),
            started: BTreeMap::new(),
            exits: Vec::new(),
        };
        for zone in ZONES {
            let agent = me.spawn(zone, work)?;
            me.agents.push(agent);
        }
        for a in &mut me.agents {
            a.wait_ready(LONG).await?;
        }
        Ok(me)
    }

    /// The end of every running agent's log.
    fn log_tails(&self) -> String {
        self.agents
            .iter()
            .map(|a| format!("agent {} log tail:\n{}", a.name(), a.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn spawn(&mut self, zone: &'static str, work: &Work) -> anyhow::Result<WorkerAgent> {
        let n = self.started.entry(zone).or_default();
        *n += 1;
        let name = format!("{zone}-{n}");
        let script = work.script.display().to_string();
        let (log, gate) = (
            work.log.display().to_string(),
            work.gate.display().to_string(),
        );
        let limit = work.limit.to_string();
        WorkerAgent::start(
            &name,
            &self.endpoint,
            zone,
            &[
                "--processor",
                "exec",
                "--exec-command",
                &script,
                "--concurrency",
                AGENT_CONCURRENCY,
                "--drain-grace-secs",
                "5",
                "--exec-pass-env",
                "AGENT_NAME,FAULT_LOG,FAULT_GATE,FAULT_LIMIT",
            ],
            &[
                ("AGENT_NAME", &name),
                ("FAULT_LOG", &log),
                ("FAULT_GATE", &gate),
                ("FAULT_LIMIT", &limit),
            ],
        )
    }

    /// Fails (with its log tail) if an agent has exited: where nothing should make one exit.
    fn assert_alive(&mut self) -> anyhow::Result<()> {
        for a in &mut self.agents {
            if let Some(status) = a.exit_status()? {
                bail!(
                    "agent {} exited ({}); log tail:\n{}",
                    a.name(),
                    how(status),
                    a.log_tail()
                );
            }
        }
        Ok(())
    }

    /// What a process supervisor does: starts a new agent for the zone of each one that exited,
    /// and says so. True if it did.
    fn restart_exited(&mut self, work: &Work) -> anyhow::Result<bool> {
        let mut restarted = false;
        for (k, zone) in ZONES.into_iter().enumerate() {
            let Some(status) = self.agents[k].exit_status()? else {
                continue;
            };
            let how = how(status);
            let name = self.agents[k].name().to_owned();
            eprintln!(
                "SUPERVISOR: agent {name} exited ({how}); starting another. Its log ended \
                 with:\n{}",
                self.agents[k].log_tail()
            );
            self.exits.push((name, how));
            let agent = self.spawn(zone, work)?;
            self.agents[k] = agent;
            restarted = true;
        }
        Ok(restarted)
    }

    /// How many times each agent registered, and lost its lease, per its log.
    fn lease_story(&self) -> String {
        self.agents
            .iter()
            .map(|a| {
                let log = a.log();
                format!(
                    "{}: {} registration(s), {} lease(s) lost, {} attempt(s) abandoned",
                    a.name(),
                    log.matches("agent registered").count(),
                    log.matches("lease lost: dropping").count(),
                    log.matches("attempt abandoned").count()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn how(status: ExitStatus) -> String {
    match status.signal() {
        Some(signal) => format!("killed by signal {signal}"),
        None => format!("{status}"),
    }
}

/// Objects with a `start` line, and objects with a `done` line.
fn started_and_done(log: &[Event]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut started = BTreeSet::new();
    let mut done = BTreeSet::new();
    for e in log {
        if e.done {
            done.insert(e.object_id.clone());
        } else {
            started.insert(e.object_id.clone());
        }
    }
    (started, done)
}

/// The path of `p`, for messages.
fn shown(p: &Path) -> String {
    p.display().to_string()
}

// ------------------------------------------------------------------------------------------------
// 1. kill -9 of the control plane

/// Objects started before the control plane is killed (of [`TOTAL`]); later ones wait at the
/// gate.
const KILL_AFTER: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_killed_mid_batch_finishes_it_after_a_restart() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let catalogue = catalogue();
    let redis = within(LONG, "start redis", RedisServer::start()).await??;
    // The broker is not the fault here: the run's shared Apache Kafka (or Tansu) does.
    let broker = within(LONG, "start broker", TestBroker::start()).await??;
    let mut cp = within(
        LONG,
        "start the control plane",
        ControlPlane::start_on(&broker, &redis.url(), CP_FLAGS, &[]),
    )
    .await??;
    let mut client = connect(&cp).await?;
    let work = Work::new(KILL_AFTER)?;
    // Declared after `work`: the agents die first, then the gate opens for their scripts.
    let mut agents = within(LONG, "start the agents", Agents::start(&cp, &work)).await??;

    let submitted = submit(&mut client, "faults-kill-9", &catalogue).await?;
    ensure!(submitted.created, "{submitted:?}");
    let planned = submitted.summary.as_ref().map_or(0, |s| s.object_count);
    ensure!(planned == TOTAL as u32, "planned {planned} objects");
    let batch_id = submitted.batch_id;

    // The fault: once KILL_AFTER objects have started and the next one waits at the gate,
    // kill -9, while results of the last ones may still be unconsumed.
    agents.wait_starts(&work, KILL_AFTER).await?;
    let (handed_out, _) = started_and_done(&work.events()?);
    let loaded_before = loaded_among(&mut client, &batch_id, handed_out).await?;
    let before = get_batch(&mut client, &batch_id).await?;
    let killed = cp
        .kill_9()
        .context("the control plane had exited by itself before it was killed")?;
    ensure!(killed.signal() == Some(9), "it ended {killed:?}");
    ensure!(
        before.state() == pb::BatchState::Running
            && count(&before, pb::ObjectState::Loaded) < TOTAL as u32,
        "the kill did not land mid-batch: {:?} {:?}",
        before.state(),
        counts(&before)
    );
    eprintln!(
        "killed after {} starts; the control plane had {:?}",
        work.starts()?,
        counts(&before)
    );

    // The agents go on while it is down (their heartbeats fail, their leases are far from
    // expiring); their results wait in the results topic.
    work.open_gate();
    let t = Instant::now();
    within(LONG, "start the control plane again", cp.start_again()).await??;
    eprintln!("restarted, serving after {:?}", t.elapsed());
    let mut client = connect(&cp).await?;

    // The batch and the idempotency key survived the restart.
    let restored = get_batch(&mut client, &batch_id).await?;
    ensure!(restored.batch_id == batch_id, "{restored:?}");
    let again = submit(&mut client, "faults-kill-9", &catalogue).await?;
    ensure!(
        again.batch_id == batch_id && !again.created,
        "resubmission after the restart gave {again:?}, not the existing batch {batch_id}"
    );

    let done = agents.wait_terminal(&mut client, &batch_id).await?;
    let leases = agents.lease_story();
    eprintln!("agents: {leases}");
    let none = BTreeSet::new();
    let first = assert_all_loaded_at_first_attempt(&mut client, &done, &catalogue, &none).await;
    if let Err(e) = first {
        let detail = not_first_attempt(&mut client, &batch_id, &catalogue).await?;
        bail!(
            "{e:#}\nnot LOADED at attempt 1 ({}): {detail:#?}\nagents: {leases}\n\
             control plane log tail:\n{}",
            detail.len(),
            cp.log_tail()
        );
    }
    // After the restart, READY objects are published again with the same attempt and dispatch
    // epoch (their Ready may never have been produced), and results whose offsets were not yet
    // committed are read again: an agent may start the same attempt twice (at-least-once), and
    // the control plane counts the second result as a duplicate. What must not happen is a
    // second attempt, or a child before its parents.
    let log = work.events()?;
    assert_not_run_again(&log, &loaded_before)?;
    let starts = log.iter().filter(|e| !e.done).count();
    let duplicates =
        check_logs(log, &catalogue, &none).with_context(|| format!("log {}", shown(&work.log)))?;
    eprintln!(
        "batch {batch_id} succeeded; {starts} starts, {duplicates} duplicate(s); test took {:?}",
        t0.elapsed()
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// 2. the broker loses everything

/// Objects done before the broker restart; later ones wait at the gate (RUNNING), and the Ready
/// records behind them are in flight (READY) when the broker loses them.
const RESTART_AFTER: usize = 100;

/// What a process supervisor (systemd `Restart=on-failure`, a Kubernetes pod) does: if the
/// control plane has exited, start it again (same flags, same port) and say so. True if it did.
async fn restart_if_exited(cp: &mut ControlPlane, exits: &mut Vec<String>) -> anyhow::Result<bool> {
    let Some(status) = cp.exit_status()? else {
        return Ok(false);
    };
    let how = how(status);
    eprintln!(
        "SUPERVISOR: the control plane exited ({how}); restarting it. Its log ended with:\n{}",
        cp.log_tail()
    );
    exits.push(how);
    within(LONG, "restart the control plane", cp.start_again()).await??;
    Ok(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_completes_after_the_broker_lost_every_topic_mid_batch() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let catalogue = catalogue();
    let redis = within(LONG, "start redis", RedisServer::start()).await??;
    // Tansu on purpose, whatever STRATA_TEST_BROKER says: this fault is a broker that comes back
    // empty (its memory engine). Apache Kafka restarts from its disks and keeps everything.
    let mut broker = within(LONG, "start broker", KafkaBroker::start()).await??;
    let mut cp = within(
        LONG,
        "start the control plane",
        ControlPlane::start(&broker.bootstrap_servers(), &redis.url(), CP_FLAGS),
    )
    .await??;
    let mut client = connect(&cp).await?;
    let work = Work::new(RESTART_AFTER)?;
    let mut agents = within(LONG, "start the agents", Agents::start(&cp, &work)).await??;
    let submitted = submit(&mut client, "faults-broker-restart", &catalogue).await?;
    ensure!(submitted.created, "{submitted:?}");
    let batch_id = submitted.batch_id;

    // The fault point, by progress: RESTART_AFTER objects done and every one of those results
    // applied (LOADED), the objects waiting at the gate RUNNING (their Started applied), later
    // Ready records in flight. No result may be in the results topic unconsumed when the broker
    // loses it: an object whose Loaded vanished stays RUNNING until its execution timeout and is
    // then retried as a second attempt, which this test rules out.
    let (before, loaded_before, held_at_fault) =
        within(LONG, "the first objects to be loaded", async {
            loop {
                agents.assert_alive()?;
                let log = work.events()?;
                let (started, done) = started_and_done(&log);
                if done.len() >= RESTART_AFTER && started.len() > done.len() {
                    let batch = get_batch(&mut client, &batch_id).await?;
                    // (object, agent) of those waiting at the gate.
                    let waiting: Vec<(String, String)> = log
                        .iter()
                        .filter(|e| !e.done && !done.contains(&e.object_id))
                        .map(|e| (e.object_id.clone(), e.agent.clone()))
                        .collect();
                    if count(&batch, pb::ObjectState::Loaded) == done.len() as u32
                        && count(&batch, pb::ObjectState::Running) == waiting.len() as u32
                    {
                        return anyhow::Ok((batch, done, waiting));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await??;
    ensure!(
        count(&before, pb::ObjectState::Ready) > 0 && count(&before, pb::ObjectState::Pending) > 0,
        "the restart would not land mid-batch with work in flight: {:?}",
        counts(&before)
    );

    within(LONG, "restart the broker", broker.restart()).await??;
    eprintln!(
        "broker restarted empty after {:?}; the control plane had {:?}; waiting at the gate \
         (object, agent): {held_at_fault:?}",
        t0.elapsed(),
        counts(&before)
    );

    // The control plane's results consumer and the agents' Ready consumers are live through the
    // restart. A librdkafka 2.12 consumer that is fetching when Tansu comes back empty often
    // crashes its process (SIGSEGV; see
    // `a_broker_that_lost_everything_is_usable_after_ensure_topics` in kafka_data_plane.rs).
    // Nothing in this test assumes either way: a supervisor restarts whichever process exited,
    // and the test waits for what must happen either way. The control plane, restarted, creates
    // the topics at start-up and publishes the Ready records of every READY object again
    // (restart recovery); alive, its topic check (every 5 s) finds the topics gone, creates them
    // and publishes the same records again. The scripts waiting at the gate go on now, and their
    // agents deliver the results to the new results topic.
    work.open_gate();
    let mut cp_exits = Vec::new();
    let finished = within(LONG, "the batch to reach a terminal state", async {
        // Calls that failed in a row while the control plane seemed alive.
        let mut unanswered = 0;
        loop {
            if restart_if_exited(&mut cp, &mut cp_exits).await? {
                client = connect(&cp).await?;
            }
            agents.restart_exited(&work)?;
            match get_batch(&mut client, &batch_id).await {
                Ok(batch) if batch.state() != pb::BatchState::Running => return anyhow::Ok(batch),
                Ok(_) => unanswered = 0,
                // Unanswered because it died just now: restarted on the next turn. A process
                // dying of SIGSEGV may reset the connection a moment before it is reaped, so
                // one failed call is not yet an error.
                Err(_) if cp.exit_status()?.is_some() => {}
                Err(e) => {
                    unanswered += 1;
                    if unanswered >= 10 {
                        return Err(
                            e.context("10 calls in a row unanswered by a live control plane")
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let done = match finished {
        Ok(Ok(batch)) => batch,
        Ok(Err(e)) | Err(e) => {
            let batch = get_batch(&mut client, &batch_id).await?;
            let detail = not_first_attempt(&mut client, &batch_id, &catalogue).await?;
            bail!(
                "{e:#}\nthe batch: {:?}\nnot LOADED at attempt 1: {detail:#?}\ncontrol plane \
                 exits: {cp_exits:?}; agent exits: {:?}\ncontrol plane log tail:\n{}\n{}",
                counts(&batch),
                agents.exits,
                cp.log_tail(),
                agents.log_tails()
            );
        }
    };
    let leases = agents.lease_story();
    let agent_exits = agents.exits.clone();
    eprintln!(
        "control plane exits the supervisor restarted: {cp_exits:?}; agent exits: \
         {agent_exits:?}; agents: {leases}"
    );
    // What the agents that died held: every first attempt one of them started that was not
    // LOADED before the fault. Those were waiting at the gate when the broker went (their agent
    // may have taken more after `held_at_fault` was read, up to its concurrency); their scripts
    // outlive the agent and log `done`, but nobody publishes the result, so the attempt comes
    // back at its execution timeout (lost work: `docs/design.md#lost-work`).
    let log = work.events()?;
    let dead: BTreeSet<&str> = agent_exits.iter().map(|(name, _)| name.as_str()).collect();
    // An agent also reports `Started` while its processor starts: one that died in between
    // leaves a RUNNING attempt 1 that no script logged. So when an agent died, an object whose
    // first attempt no script ever started counts as lost with it too (a Ready lost with the
    // broker is published again with the same attempt, and would have been started).
    let started_first: BTreeSet<&str> = log
        .iter()
        .filter(|e| !e.done && e.attempt == 1)
        .map(|e| e.object_id.as_str())
        .collect();
    let lost: BTreeSet<String> = log
        .iter()
        .filter(|e| !e.done && e.attempt == 1 && dead.contains(e.agent.as_str()))
        .filter(|e| !loaded_before.contains(&e.object_id))
        .map(|e| e.object_id.clone())
        .chain(
            catalogue
                .parents
                .keys()
                .filter(|id| !dead.is_empty() && !started_first.contains(id.as_str()))
                .cloned(),
        )
        .collect();
    eprintln!(
        "attempts that died with their agent ({}), retried as attempt 2: {lost:?}",
        lost.len()
    );
    let first = assert_all_loaded_at_first_attempt(&mut client, &done, &catalogue, &lost).await;
    if let Err(e) = first {
        let detail = not_first_attempt(&mut client, &batch_id, &catalogue).await?;
        bail!(
            "{e:#}\nnot LOADED at attempt 1 ({}): {detail:#?}\ncontrol plane exits: \
             {cp_exits:?}; agent exits: {agent_exits:?}; agents: {leases}",
            detail.len()
        );
    }
    // The objects that were in flight were handed out again (same attempt) and done then; those
    // loaded before were not.
    assert_not_run_again(&log, &loaded_before)?;
    let redeliveries =
        check_logs(log, &catalogue, &lost).with_context(|| format!("log {}", shown(&work.log)))?;
    let again = submit(&mut client, "faults-broker-restart", &catalogue).await?;
    ensure!(
        again.batch_id == batch_id && !again.created,
        "resubmission gave {again:?}, not the existing batch {batch_id}"
    );
    eprintln!(
        "batch {batch_id} succeeded; {redeliveries} object(s) started again; control plane exits \
         the supervisor restarted: {cp_exits:?}; agent exits: {agent_exits:?}; test took {:?}",
        t0.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_a_control_plane_still_waiting_for_its_broker() -> anyhow::Result<()> {
    let redis = within(LONG, "start redis", RedisServer::start()).await??;
    // Nothing listens there: the driver keeps retrying the topic creation.
    let absent_broker = format!("127.0.0.1:{}", strata_tests::free_port()?);
    let dir = strata_tests::temp_dir("cp-sigterm")?;
    let mut command = std::process::Command::new(control_plane_binary()?);
    command
        .args([
            "--kafka-brokers",
            &absent_broker,
            "--redis-url",
            &redis.url(),
            "--insecure",
        ])
        .args([
            "--grpc-addr",
            &format!("127.0.0.1:{}", strata_tests::free_port()?),
        ])
        .env_clear()
        .env("STRATA_LOG", "info")
        .env("NO_COLOR", "1");
    let mut cp = ServerProcess::spawn("strata-control-plane", command, &dir.path().join("cp.log"))?;
    // Serving gRPC while the driver cannot have finished its start-up (no broker).
    within(LONG, "gRPC serving", async {
        while !cp.log_tail().contains("control plane serving gRPC") {
            ensure!(cp.exit_status()?.is_none(), "exited: {}", cp.log_tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(())
    })
    .await??;
    let asked = Instant::now();
    cp.terminate()?;
    let status = within(Duration::from_secs(30), "exit after SIGTERM", async {
        loop {
            if let Some(status) = cp.exit_status()? {
                return anyhow::Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    eprintln!("exited {status} {:?} after SIGTERM", asked.elapsed());
    ensure!(status.success(), "{status}; log:\n{}", cp.log_tail());
    ensure!(
        cp.log_tail().contains("driver stopped during start-up"),
        "{}",
        cp.log_tail()
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// 4. Redis stops answering

/// Objects started before Redis is frozen; later ones wait at the gate, and their results (and
/// those of the objects still running) come while no state can be written.
const FREEZE_AFTER: usize = 100;
/// How long Redis answers nothing: longer than two of the store's 5 s call timeouts, well within
/// the agents' lease (30 s) and the execution timeout (20 s) of the attempts started before.
const FROZEN: Duration = Duration::from_secs(11);

/// Redis frozen (`SIGSTOP`) mid-batch: the control plane takes no result it cannot persist,
/// readiness says why and `strata_driver_stalled` is 1; once Redis answers again the batch goes
/// on where it stopped: every object LOADED at its first attempt, none run again after it was
/// done, readiness back to ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_goes_on_where_it_stopped_after_redis_stopped_answering() -> anyhow::Result<()> {
    let catalogue = catalogue();
    let redis = within(LONG, "start redis", RedisServer::start()).await??;
    let broker = within(LONG, "start broker", TestBroker::start()).await??;
    let cp = within(
        LONG,
        "start the control plane",
        ControlPlane::start_on(&broker, &redis.url(), CP_FLAGS, &[]),
    )
    .await??;
    let mut client = connect(&cp).await?;
    let work = Work::new(FREEZE_AFTER)?;
    let mut agents = within(LONG, "start the agents", Agents::start(&cp, &work)).await??;
    let submitted = submit(&mut client, "faults-redis-frozen", &catalogue).await?;
    let batch_id = submitted.batch_id;
    agents.wait_starts(&work, FREEZE_AFTER).await?;
    let (handed_out, _) = started_and_done(&work.events()?);
    let loaded_before = loaded_among(&mut client, &batch_id, handed_out).await?;

    redis.freeze()?;
    let frozen = Instant::now();
    work.open_gate();
    let admin = |path: &'static str| strata_tests::worker_agent::http_get(cp.admin_port(), path);
    let body = within(LONG, "readiness to report the stalled driver", async {
        loop {
            let (code, body) = admin("/health/readiness").await?;
            if code == 503 && body.contains("driver: stalled") {
                return anyhow::Ok(body);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await??;
    ensure!(body.contains("persist"), "{body}");
    let (_, metrics) = admin("/metrics").await?;
    ensure!(
        metrics.lines().any(|l| l == "strata_driver_stalled 1"),
        "strata_driver_stalled while Redis is frozen:\n{metrics}"
    );
    eprintln!(
        "stall reported {:?} after the freeze: {body}",
        frozen.elapsed()
    );
    tokio::time::sleep(FROZEN.saturating_sub(frozen.elapsed())).await;
    redis.thaw()?;
    let thawed = Instant::now();

    let done = agents.wait_terminal(&mut client, &batch_id).await?;
    eprintln!("batch over {:?} after the thaw", thawed.elapsed());
    let none = BTreeSet::new();
    if let Err(e) = assert_all_loaded_at_first_attempt(&mut client, &done, &catalogue, &none).await
    {
        let detail = not_first_attempt(&mut client, &batch_id, &catalogue).await?;
        bail!(
            "{e:#}\nnot LOADED at attempt 1: {detail:#?}\ncontrol plane log tail:\n{}",
            cp.log_tail()
        );
    }
    let log = work.events()?;
    assert_not_run_again(&log, &loaded_before)?;
    check_logs(log, &catalogue, &none).with_context(|| format!("log {}", shown(&work.log)))?;
    let (code, body) = admin("/health/readiness").await?;
    ensure!(code == 200, "readiness after the thaw: {code} {body}");
    let (_, metrics) = admin("/metrics").await?;
    ensure!(
        metrics.lines().any(|l| l == "strata_driver_stalled 0"),
        "strata_driver_stalled after the thaw:\n{metrics}"
    );
    Ok(())
}
