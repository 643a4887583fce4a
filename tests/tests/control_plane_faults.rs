//! Fault suite: the real `strata-control-plane` binary (a child process,
//! [`strata_tests::control_plane::ControlPlane`]) on the real broker and Redis, with one minimal
//! agent per zone in this process, driving a layered batch of 300 objects.
//!
//! 1. The control plane is `kill -9`ed mid-batch and started again on the same port: the batch
//!    completes from the state in Redis, under the same batch id and idempotency key.
//! 2. The broker is restarted on its in-memory engine mid-batch (every topic, record and offset
//!    gone): the topics come back, the Ready records that were in flight are published again, and
//!    the batch completes. The control plane runs under a supervisor that restarts it whenever it
//!    exits, because against Tansu it often does exit there (SIGSEGV inside librdkafka; see the
//!    test); when it lives through the restart, it recovers by itself.
//!
//! Both check, from the agents' logs rather than timing, that no object was handed to an agent
//! before its parents were answered Loaded, that nothing got a second attempt, and that nothing
//! LOADED before the fault ran again. Faults are placed by progress (objects handled), never by
//! sleeping; every wait is bounded; durations are printed, never asserted.
//!
//! Needs the binary built (`cargo build -p strata-control-plane --bin strata-control-plane`, or
//! `./tests/run.sh`, whose `--workspace` run builds it); see [`strata_tests::control_plane`].

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use strata_control_plane::adapters::kafka::all_topics;
use strata_core::Zone;
use strata_proto::kafka::DEFAULT_TOPIC_PREFIX;
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use strata_proto::v1::{self as pb};
use strata_tests::agent::{Answer, Behaviour, Handled, TestAgent};
use strata_tests::control_plane::{ControlPlane, control_plane_binary};
use strata_tests::process::ServerProcess;
use strata_tests::{KafkaBroker, RedisServer, blocking, within};
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
/// Flags of the control plane under test (besides the broker, Redis and gRPC address).
/// The in-process test agents do not register, so results are accepted without a lease.
const CP_FLAGS: &[&str] = &["--topic-partitions", "2", "--require-agent-lease", "false"];

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

/// Polls `GetBatch` until the batch is terminal (bounded by [`LONG`]).
async fn wait_terminal(
    client: &mut OrchestratorClient<Channel>,
    batch_id: &str,
) -> anyhow::Result<pb::Batch> {
    within(LONG, "the batch to reach a terminal state", async {
        loop {
            let batch = get_batch(client, batch_id).await?;
            if batch.state() != pb::BatchState::Running {
                return anyhow::Ok(batch);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await?
}

/// The batch succeeded with every object LOADED at its first attempt, per `GetBatch` counts and
/// per `GetObject` of each object.
async fn assert_all_loaded_at_first_attempt(
    client: &mut OrchestratorClient<Channel>,
    batch: &pb::Batch,
    catalogue: &Catalogue,
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
        ensure!(
            object.state() == pb::ObjectState::Loaded && object.attempt == 1,
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

/// Fails if any of `done` (objects LOADED before the fault) was handed to an agent more than
/// once: recovery resumes a batch, it does not run finished work again.
fn assert_not_run_again(log: &[Handled], done: &BTreeSet<String>) -> anyhow::Result<()> {
    let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
    for h in log.iter().filter(|h| done.contains(&h.object_id)) {
        *runs.entry(h.object_id.as_str()).or_default() += 1;
    }
    let again: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(
        again.is_empty(),
        "objects LOADED before the fault were handed out again (object, times): {again:?}"
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Agents and what their logs must show

fn spawn_agents(
    broker: &KafkaBroker,
    generation: &str,
    behaviour: &Behaviour,
) -> anyhow::Result<Vec<TestAgent>> {
    ZONES
        .iter()
        .map(|zone| {
            TestAgent::spawn(
                &broker.bootstrap_servers(),
                DEFAULT_TOPIC_PREFIX,
                zone,
                &format!("fault-agent-{zone}-{generation}"),
                behaviour.clone(),
            )
        })
        .collect()
}

fn handled(agents: &[TestAgent]) -> Vec<Handled> {
    agents.iter().flat_map(TestAgent::handled).collect()
}

/// Checks the agents' logs (all generations of agents, in handling order), not timing:
/// - every object of the catalogue was answered Loaded;
/// - no object was handed to an agent before each of its parents had been answered Loaded;
/// - every Ready handed out was attempt 1 (nothing was retried).
///
/// Returns how many deliveries were duplicates (an object handed out again after a Loaded or
/// unanswered delivery of the same attempt): allowed, delivery is at least once.
fn check_logs(mut log: Vec<Handled>, catalogue: &Catalogue) -> anyhow::Result<usize> {
    log.sort_by_key(|h| h.at);
    let mut loaded: BTreeSet<&str> = BTreeSet::new();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut duplicates = 0;
    for h in &log {
        let parents = catalogue
            .parents
            .get(&h.object_id)
            .with_context(|| format!("agent handled unknown object {}", h.object_id))?;
        for p in parents {
            ensure!(
                loaded.contains(p.as_str()),
                "{} handed to an agent before its parent {p} was answered Loaded",
                h.object_id
            );
        }
        ensure!(
            h.attempt == 1,
            "{} handed out for attempt {}: it was released again",
            h.object_id,
            h.attempt
        );
        if !seen.insert(h.object_id.as_str()) {
            duplicates += 1;
        }
        if h.answer == Answer::Load {
            loaded.insert(h.object_id.as_str());
        }
    }
    ensure!(
        loaded.len() == TOTAL,
        "{} of {TOTAL} objects answered Loaded",
        loaded.len()
    );
    Ok(duplicates)
}

/// Blocks the agents' handling threads once `limit` Ready records have been handled, until
/// opened: the fault happens while they wait, at a point chosen by progress.
#[derive(Debug, Default)]
struct Gate {
    calls: AtomicUsize,
    open: AtomicBool,
}

impl Gate {
    fn behaviour(self: &Arc<Self>, limit: usize) -> Behaviour {
        let gate = self.clone();
        Arc::new(move |_ready: &pb::ObjectReady| {
            let n = gate.calls.fetch_add(1, Ordering::SeqCst) + 1;
            // A plain blocking wait: the behaviour is synchronous (the test runtime has enough
            // worker threads for one blocked agent per zone).
            while n > limit && !gate.open.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(2));
            }
            Answer::Load
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// Opens the gate when the test ends however it ends, so no worker thread stays blocked.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

// ------------------------------------------------------------------------------------------------
// 1. kill -9 of the control plane

/// Ready records handled before the control plane is killed (of [`TOTAL`]).
const KILL_AFTER: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn a_control_plane_killed_mid_batch_finishes_it_after_a_restart() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let catalogue = catalogue();
    let redis = within(LONG, "start redis", RedisServer::start()).await??;
    let broker = within(LONG, "start broker", KafkaBroker::start()).await??;
    let mut cp = within(
        LONG,
        "start the control plane",
        ControlPlane::start(&broker.bootstrap_servers(), &redis.url(), CP_FLAGS),
    )
    .await??;
    let mut client = connect(&cp).await?;
    let gate = Arc::new(Gate::default());
    let _open = OpenOnDrop(gate.clone());
    let agents = spawn_agents(&broker, "1", &gate.behaviour(KILL_AFTER))?;

    let submitted = submit(&mut client, "faults-kill-9", &catalogue).await?;
    ensure!(submitted.created, "{submitted:?}");
    let planned = submitted.summary.as_ref().map_or(0, |s| s.object_count);
    ensure!(planned == TOTAL as u32, "planned {planned} objects");
    let batch_id = submitted.batch_id;

    // The fault: once the agents have handled KILL_AFTER Ready records (the next ones wait at
    // the gate), kill -9, while results of the last ones may still be unconsumed.
    within(LONG, "agents to handle the first objects", async {
        while gate.calls() <= KILL_AFTER {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    let handed_out: BTreeSet<String> = handled(&agents).into_iter().map(|h| h.object_id).collect();
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
        "killed after {} handled; the control plane had {:?}",
        gate.calls(),
        counts(&before)
    );

    // The agents go on while it is down; their results wait in the results topic.
    gate.open();
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

    let done = wait_terminal(&mut client, &batch_id).await?;
    assert_all_loaded_at_first_attempt(&mut client, &done, &catalogue).await?;
    // After the restart, READY objects are published again with the same attempt and dispatch
    // epoch (their Ready may never have been produced), and results whose offsets were not yet
    // committed are read again: an agent may get the same attempt twice (at-least-once), and the
    // control plane counts the second result as a duplicate. What must not happen is a second
    // attempt, or a child before its parents.
    let log = handled(&agents);
    assert_not_run_again(&log, &loaded_before)?;
    let deliveries = log.len();
    let duplicates = check_logs(log, &catalogue)?;
    eprintln!(
        "batch {batch_id} succeeded; {deliveries} deliveries, {duplicates} duplicate(s); test \
         took {:?}",
        t0.elapsed()
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// 2. the broker loses everything

/// Ready records answered Loaded before the broker restart; the agents consume later ones without
/// answering, so they are in flight (READY) when the broker loses them.
const RESTART_AFTER: usize = 100;

/// Answers Loaded to the first `limit` Ready records, then consumes the rest without answering
/// (an agent that took them and died before publishing anything).
#[derive(Debug, Default)]
struct Pause {
    calls: AtomicUsize,
}

impl Pause {
    fn behaviour(self: &Arc<Self>, limit: usize) -> Behaviour {
        let pause = self.clone();
        Arc::new(move |_ready: &pb::ObjectReady| {
            if pause.calls.fetch_add(1, Ordering::SeqCst) < limit {
                Answer::Load
            } else {
                Answer::Nothing
            }
        })
    }
}

/// Waits until no member is left in the agents' consumer groups: their consumers are closed (a
/// dropped [`TestAgent`] closes its consumer on a runtime thread, some time after the drop).
async fn wait_agents_left(broker: &KafkaBroker) -> anyhow::Result<()> {
    let config = broker.consumer_config("fault-suite-group-probe");
    blocking(
        LONG,
        "the agents to leave their consumer groups",
        move || {
            let probe: BaseConsumer = config.create()?;
            loop {
                let mut members = 0;
                for zone in ZONES {
                    let group = format!("{DEFAULT_TOPIC_PREFIX}.agents.{zone}");
                    let list = probe.fetch_group_list(Some(&group), Duration::from_secs(5))?;
                    members += list
                        .groups()
                        .iter()
                        .map(|g| g.members().len())
                        .sum::<usize>();
                }
                if members == 0 {
                    return anyhow::Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        },
    )
    .await?
}

/// What a process supervisor (systemd `Restart=on-failure`, a Kubernetes pod) does: if the
/// control plane has exited, start it again (same flags, same port) and say so. True if it did.
async fn restart_if_exited(cp: &mut ControlPlane, exits: &mut Vec<String>) -> anyhow::Result<bool> {
    let Some(status) = cp.exit_status()? else {
        return Ok(false);
    };
    let how = match status.signal() {
        Some(signal) => format!("killed by signal {signal}"),
        None => format!("{status}"),
    };
    eprintln!(
        "SUPERVISOR: the control plane exited ({how}); restarting it. Its log ended with:\n{}",
        cp.log_tail()
    );
    exits.push(how);
    within(LONG, "restart the control plane", cp.start_again()).await??;
    Ok(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn a_batch_completes_after_the_broker_lost_every_topic_mid_batch() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let catalogue = catalogue();
    let redis = within(LONG, "start redis", RedisServer::start()).await??;
    let mut broker = within(LONG, "start broker", KafkaBroker::start()).await??;
    let mut cp = within(
        LONG,
        "start the control plane",
        ControlPlane::start(&broker.bootstrap_servers(), &redis.url(), CP_FLAGS),
    )
    .await??;
    let mut client = connect(&cp).await?;
    let pause = Arc::new(Pause::default());
    let agents = spawn_agents(&broker, "1", &pause.behaviour(RESTART_AFTER))?;
    let submitted = submit(&mut client, "faults-broker-restart", &catalogue).await?;
    ensure!(submitted.created, "{submitted:?}");
    let batch_id = submitted.batch_id;

    // The fault point, by progress: RESTART_AFTER objects answered Loaded and every one of those
    // results applied (nothing RUNNING), later Ready records taken and left unanswered. Nothing
    // may be RUNNING when the broker loses the results topic: an object whose Loaded vanished
    // stays RUNNING until its execution timeout (an hour by default) and is then retried as a
    // second attempt, which this test rules out.
    let (before, loaded_before): (pb::Batch, BTreeSet<String>) =
        within(LONG, "the first objects to be loaded", async {
            loop {
                let loads: Vec<Handled> = handled(&agents)
                    .into_iter()
                    .filter(|h| h.answer == Answer::Load)
                    .collect();
                let answered: BTreeSet<&str> = loads.iter().map(|h| h.object_id.as_str()).collect();
                let logged_loads = loads.len();
                if logged_loads >= RESTART_AFTER {
                    let batch = get_batch(&mut client, &batch_id).await?;
                    if count(&batch, pb::ObjectState::Loaded) == answered.len() as u32
                        && count(&batch, pb::ObjectState::Running) == 0
                    {
                        let answered = answered.into_iter().map(str::to_owned).collect();
                        return anyhow::Ok((batch, answered));
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

    // The agents' clients cannot live through the restart: a librdkafka 2.12 consumer that is
    // fetching when Tansu comes back empty crashes its process (SIGSEGV; see
    // `a_broker_that_lost_everything_is_usable_after_ensure_topics` in kafka_data_plane.rs), and
    // their idempotent producers are fenced. So they stop first, and new ones start afterwards,
    // as restarted agent processes would.
    let mut log = handled(&agents);
    drop(agents);
    wait_agents_left(&broker).await?;
    within(LONG, "restart the broker", broker.restart()).await??;
    eprintln!(
        "broker restarted empty after {:?}; the control plane had {:?}",
        t0.elapsed(),
        counts(&before)
    );

    // The control plane's own results consumer is live through the restart. Measured here: its
    // process usually dies of that same librdkafka crash (SIGSEGV) within a second, not always.
    // Nothing in this test assumes either: a supervisor restarts it whenever it has exited, and
    // the test waits for what must happen either way. Restarted, it recreates the topics at
    // start-up and publishes the Ready records of every READY object again (restart recovery).
    // Alive, its topic check (every 5 s) finds the topics gone, creates them and publishes the
    // same records again, replacing its producer, which the broker fenced.
    let mut exits = Vec::new();
    let topics = all_topics(
        DEFAULT_TOPIC_PREFIX,
        &ZONES.map(|z| Zone::parse(z).expect("zone")),
    );
    within(LONG, "the control plane's topics to exist again", async {
        loop {
            restart_if_exited(&mut cp, &mut exits).await?;
            let listed = broker.topic_names().await?;
            if topics.iter().all(|t| listed.contains(t)) {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    let agents = spawn_agents(
        &broker,
        "2",
        &(Arc::new(|_: &pb::ObjectReady| Answer::Load) as Behaviour),
    )?;
    let mut client = connect(&cp).await?;
    let done = within(LONG, "the batch to reach a terminal state", async {
        loop {
            if restart_if_exited(&mut cp, &mut exits).await? {
                client = connect(&cp).await?;
            }
            match get_batch(&mut client, &batch_id).await {
                Ok(batch) if batch.state() != pb::BatchState::Running => return anyhow::Ok(batch),
                Ok(_) => {}
                // Unanswered because it died just now: restarted on the next turn.
                Err(_) if cp.exit_status()?.is_some() => {}
                Err(e) => return Err(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await??;
    assert_all_loaded_at_first_attempt(&mut client, &done, &catalogue).await?;
    // The objects that were in flight were handed out again (same attempt) and answered then;
    // those loaded before were not.
    log.extend(handled(&agents));
    assert_not_run_again(&log, &loaded_before)?;
    let redeliveries = check_logs(log, &catalogue)?;
    let again = submit(&mut client, "faults-broker-restart", &catalogue).await?;
    ensure!(
        again.batch_id == batch_id && !again.created,
        "resubmission gave {again:?}, not the existing batch {batch_id}"
    );
    eprintln!(
        "batch {batch_id} succeeded; {redeliveries} object(s) handed out again; control plane \
         exits the supervisor restarted: {exits:?}; test took {:?}",
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
