//! Worker agents as users run them: the real `strata-worker-agent` binary (child processes,
//! [`strata_tests::worker_agent::WorkerAgent`]) against the real `strata-control-plane` binary,
//! the real broker and Redis, with `--verify-results` on (results are only accepted signed by an
//! agent holding a live lease for the object's zone).
//!
//! What is checked is what an operator sees: the batch's outcome and each object's state, attempt
//! and agent (`GetObject`), the agents' exit codes, their `/metrics` and `/health` answers, and
//! what their processors did. Faults are placed by progress, never by sleeping; every wait is
//! bounded; durations are printed, never asserted.
//!
//! Checked here:
//! - three agents in one zone share its group's work, each object runs once;
//! - `SIGTERM` while busy: the agent drains, hands back what is still running, exits 0;
//! - `kill -9` in the middle of an object: once the lease expires the attempt is declared lost
//!   (`agent_lost`) and another agent loads it at the next attempt; the killed agent's attempt
//!   (possibly redelivered to the survivor by the group) never counts;
//! - an agent started before the control plane is not ready (not registered) until the control
//!   plane is up, then registers and works;
//! - `exec` with a real script: last stdout line as the result's info, exit 75 retried, any other
//!   code DEAD with stderr in `last_error`, the object's JSON on stdin;
//! - `http` against a local server: 2xx loads, 5xx is retried, 4xx is DEAD, the object's JSON
//!   is the request body;
//! - a result signed by a live lease of another zone for an object of this one is rejected
//!   (`wrong_zone`, logged), and the object is loaded by an agent of its zone.
//! - result keys rotating at heartbeats: 6 s objects load at attempt 1 across a rotation,
//!   nothing rejected; a result signed with a key rotated away longer ago than the interval is
//!   `old_key`, the same result with the new key is applied.
//!
//! Needs both binaries built (`cargo nextest run --workspace`, what `./tests/run.sh` runs, builds
//! them; or `cargo build -p strata-control-plane -p strata-worker-agent`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use strata_proto::v1::agent_registry_client::AgentRegistryClient;
use strata_proto::v1::{self as pb};
use strata_tests::stack::Stack;
use strata_tests::within;
use strata_tests::worker_agent::WorkerAgent;

/// Bound on every wait (start-ups, a batch running to its end).
const LONG: Duration = Duration::from_secs(120);
/// Leases expire 3 s after the last heartbeat (every second), so a killed agent's attempts are
/// re-released within seconds.
const CP_FLAGS: &[&str] = &[
    "--topic-partitions",
    "3",
    "--verify-results",
    "true",
    "--lease-ttl-secs",
    "3",
    "--heartbeat-interval-secs",
    "1",
    "--initial-backoff-ms",
    "100",
];

/// The shared [`Stack`] with this suite's control-plane flags ([`CP_FLAGS`], then `extra`).
async fn start(extra: &[&str]) -> anyhow::Result<Stack> {
    let flags: Vec<&str> = CP_FLAGS.iter().chain(extra).copied().collect();
    Stack::start(&flags).await
}

/// What this suite asks of a [`Stack`] beyond the shared helpers.
trait AgentStack {
    async fn wait_object(
        &mut self,
        batch_id: &str,
        object_id: &str,
        what: &str,
        done: impl Fn(&pb::ObjectStatus) -> bool,
    ) -> anyhow::Result<pb::ObjectStatus>;
    async fn agent_info(&self, name: &str) -> anyhow::Result<pb::AgentInfo>;
    fn cp_log(&self) -> String;
}

impl AgentStack for Stack {
    /// Polls `GetObject` until `done` holds (bounded by [`LONG`]) and returns that status.
    async fn wait_object(
        &mut self,
        batch_id: &str,
        object_id: &str,
        what: &str,
        done: impl Fn(&pb::ObjectStatus) -> bool,
    ) -> anyhow::Result<pb::ObjectStatus> {
        let started = Instant::now();
        loop {
            let status = self.object(batch_id, object_id).await?;
            if done(&status) {
                return Ok(status);
            }
            ensure!(
                started.elapsed() < LONG,
                "{object_id} not {what} after {LONG:?}: {status:?}; control plane log:\n{}",
                self.cp.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The newest registration of the agent started as `name` (its `--hostname`), live or not,
    /// as `ListAgents` shows it.
    async fn agent_info(&self, name: &str) -> anyhow::Result<pb::AgentInfo> {
        let mut registry = AgentRegistryClient::connect(self.cp.endpoint()).await?;
        let agents = within(
            LONG,
            "ListAgents",
            registry.list_agents(pb::ListAgentsRequest {
                zone: String::new(),
                include_inactive: true,
            }),
        )
        .await??
        .into_inner()
        .agents;
        agents
            .iter()
            .filter(|a| a.hostname == name)
            .max_by_key(|a| a.lease_epoch)
            .cloned()
            .with_context(|| format!("ListAgents does not list {name}: {agents:?}"))
    }

    /// The control plane's whole log (every run).
    fn cp_log(&self) -> String {
        std::fs::read_to_string(self.cp.dir().join("control-plane.log")).unwrap_or_default()
    }
}

/// `n` raw objects without parents: `1000`, `1001`, …
fn raw_objects(n: usize) -> Vec<pb::ObjectDefinition> {
    (0..n)
        .map(|k| pb::ObjectDefinition {
            id: (1000 + k).to_string(),
            name: format!("agent-suite object {}", 1000 + k),
            zone: "raw".into(),
            ..Default::default()
        })
        .collect()
}

/// Objects without parents in `zone`, one per id.
fn objects(zone: &str, ids: &[&str]) -> Vec<pb::ObjectDefinition> {
    ids.iter()
        .map(|id| pb::ObjectDefinition {
            id: (*id).into(),
            name: format!("agent-suite object {id}"),
            zone: zone.into(),
            ..Default::default()
        })
        .collect()
}

/// Writes the shell script `body` to `dir/name` and returns the agent flags that run it with
/// the `exec` processor (through `sh`, so the script needs no exec bit), passing it the agent's
/// `AGENT_NAME`, `RUNS` and `WORK` (the variables the scripts here read; nothing else of the
/// agent's environment reaches them).
fn exec_script(dir: &Path, name: &str, body: &str) -> anyhow::Result<Vec<String>> {
    let path = dir.join(name);
    std::fs::write(&path, body).with_context(|| format!("write {}", path.display()))?;
    let path = path.to_str().context("temp path is not UTF-8")?;
    // `--exec-arg` splits on commas.
    ensure!(!path.contains(','), "{path} has a comma");
    Ok([
        "--processor",
        "exec",
        "--exec-command",
        "sh",
        "--exec-arg",
        path,
        "--exec-pass-env",
        "AGENT_NAME,RUNS,WORK",
    ]
    .map(String::from)
    .to_vec())
}

/// The lines of `path` (none while it does not exist yet).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Waits until every agent is ready and the group has given each at least one partition.
async fn wait_spread(agents: &mut [WorkerAgent]) -> anyhow::Result<()> {
    for a in agents.iter_mut() {
        a.wait_ready(LONG).await?;
    }
    within(LONG, "every agent to own a partition", async {
        loop {
            let mut all = true;
            for a in agents.iter() {
                all &= a
                    .metric(&gauge("strata_agent_assigned_partitions", "raw"))
                    .await?
                    >= 1.0;
            }
            if all {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await?
}

/// A sample name with only the `zone` label.
fn gauge(name: &str, zone: &str) -> String {
    format!("{name}{{zone=\"{zone}\"}}")
}

/// A sample name with one more label besides `zone`.
fn labelled(name: &str, label: &str, value: &str, zone: &str) -> String {
    format!("{name}{{{label}=\"{value}\",zone=\"{zone}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_agents_in_one_group_share_the_work_and_each_object_runs_once() -> anyhow::Result<()>
{
    let mut stack = start(&[]).await?;
    let sim = [
        "--processor",
        "simulate",
        "--simulate-duration-ms",
        "20",
        "--concurrency",
        "2",
    ];
    let mut agents = vec![
        stack.agent("a1", "raw", &sim, &[])?,
        stack.agent("a2", "raw", &sim, &[])?,
        stack.agent("a3", "raw", &sim, &[])?,
    ];
    wait_spread(&mut agents).await?;

    let objects = raw_objects(90);
    let batch_id = stack.submit("three-agents", objects.clone()).await?;
    let batch = stack.wait_terminal(&batch_id).await?;
    ensure!(batch.state() == pb::BatchState::Succeeded, "{batch:?}");

    // Every object LOADED at its first attempt, by one of the three agents.
    let mut by_agent: BTreeMap<String, usize> = BTreeMap::new();
    for o in &objects {
        let status = stack.object(&batch_id, &o.id).await?;
        ensure!(
            status.state() == pb::ObjectState::Loaded && status.attempt == 1,
            "{} is {:?} at attempt {}",
            o.id,
            status.state(),
            status.attempt
        );
        *by_agent.entry(status.agent_id).or_default() += 1;
    }
    println!("objects per agent id: {by_agent:?}");
    ensure!(
        by_agent.len() == 3,
        "the work went to {} agents: {by_agent:?}",
        by_agent.len()
    );

    // Each agent says the same in its metrics: what it loaded adds up to the batch, exactly once.
    let mut loaded = 0.0;
    for a in &agents {
        let n = a
            .metric(&labelled(
                "strata_agent_results_total",
                "outcome",
                "loaded",
                "raw",
            ))
            .await?;
        ensure!(n >= 1.0, "{} loaded nothing", a.name());
        loaded += n;
    }
    ensure!(
        loaded == objects.len() as f64,
        "loaded {loaded} results for {} objects",
        objects.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_while_busy_drains_without_losing_work_and_exits_0() -> anyhow::Result<()> {
    let mut stack = start(&[]).await?;
    // A slow agent stopped while busy, with a grace period far shorter than its work.
    let mut slow = stack.agent(
        "slow",
        "raw",
        &[
            "--simulate-duration-ms",
            "60000",
            "--concurrency",
            "4",
            "--drain-grace-secs",
            "1",
        ],
        &[],
    )?;
    slow.wait_ready(LONG).await?;
    let objects = raw_objects(8);
    let batch_id = stack.submit("drain", objects.clone()).await?;
    within(LONG, "the slow agent to be busy", async {
        while slow.metric(&gauge("strata_agent_in_flight", "raw")).await? < 4.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(())
    })
    .await??;

    slow.terminate()?;
    let status = slow.wait_exit(Duration::from_secs(30)).await?;
    let log = slow.log();
    ensure!(
        status.success(),
        "the drained agent exited with {status}; log:\n{log}"
    );
    ensure!(
        log.contains("handing the attempts still running back"),
        "log:\n{log}"
    );
    ensure!(log.contains("deregistered; drained"), "log:\n{log}");

    // A second agent joins the group after the drain: it starts from the offsets the drained
    // agent committed, so it sees the 4 hand-backs' new releases and the 4 objects nobody had
    // taken, and never the 4 attempts that were handed back.
    let mut quick = stack.agent("quick", "raw", &["--simulate-duration-ms", "10"], &[])?;
    quick.wait_ready(LONG).await?;
    let batch = stack.wait_terminal(&batch_id).await?;
    ensure!(batch.state() == pb::BatchState::Succeeded, "{batch:?}");
    let mut handed_back = 0;
    for o in &objects {
        let status = stack.object(&batch_id, &o.id).await?;
        ensure!(
            status.state() == pb::ObjectState::Loaded,
            "{} is {:?}",
            o.id,
            status.state()
        );
        match status.attempt {
            1 => {}
            2 => {
                handed_back += 1;
                ensure!(
                    status.last_error.contains("drained"),
                    "{} was retried without a drained attempt: {:?}",
                    o.id,
                    status
                );
            }
            n => anyhow::bail!("{} ran {n} attempts", o.id),
        }
    }
    ensure!(
        handed_back == 4,
        "{handed_back} objects handed back, not the 4 in flight"
    );
    let loaded = quick
        .metric(&labelled(
            "strata_agent_results_total",
            "outcome",
            "loaded",
            "raw",
        ))
        .await?;
    ensure!(
        loaded == objects.len() as f64,
        "the second agent loaded {loaded} times for {} objects: the drained offsets were not committed",
        objects.len()
    );
    Ok(())
}

/// The exec processor of the kill -9 test: records every run as `agent object attempt` in
/// `$RUNS` and loads at once, except object 1001 on agent `a`, which hangs until that agent is
/// gone (exec runs the script in a process group of its own, which a kill -9 of the agent does
/// not reach, so it watches its parent instead).
const KILL_SCRIPT: &str = r#"echo "$AGENT_NAME $STRATA_OBJECT_ID $STRATA_ATTEMPT" >> "$RUNS"
if [ "$AGENT_NAME" = a ] && [ "$STRATA_OBJECT_ID" = 1001 ]; then
  while kill -0 "$PPID" 2>/dev/null; do sleep 0.1; done
  exit 1
fi
echo "loaded $STRATA_OBJECT_ID"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_object_its_attempt_is_lost_and_another_agent_loads_it() -> anyhow::Result<()> {
    let mut stack = start(&[]).await?;
    let work = strata_tests::temp_dir("kill-9-work")?;
    let runs = work.path().join("runs");
    let runs_env = runs.to_str().context("temp path is not UTF-8")?;
    let exec = exec_script(work.path(), "load.sh", KILL_SCRIPT)?;
    let exec: Vec<&str> = exec.iter().map(String::as_str).collect();
    let mut a = stack.agent(
        "a",
        "raw",
        &exec,
        &[("AGENT_NAME", "a"), ("RUNS", runs_env)],
    )?;
    a.wait_ready(LONG).await?;
    let a_id = stack.agent_info("a").await?.agent_id;

    // a, alone in the group, takes all four objects: it loads three and hangs on 1001.
    let objects = raw_objects(4);
    let batch_id = stack.submit("kill-9", objects.clone()).await?;
    within(LONG, "a to load three objects and start 1001", async {
        loop {
            let loaded = a
                .metric(&labelled(
                    "strata_agent_results_total",
                    "outcome",
                    "loaded",
                    "raw",
                ))
                .await?;
            if loaded >= 3.0 && lines(&runs).iter().any(|l| l == "a 1001 1") {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    a.kill_9();
    let killed = Instant::now();

    // Its lease runs out: the control plane declares the attempt lost and releases another.
    let released = stack
        .wait_object(&batch_id, "1001", "released again", |s| s.attempt >= 2)
        .await?;
    println!(
        "attempt {} of 1001 released {:?} after the kill -9 ({:?}, last error {:?})",
        released.attempt,
        killed.elapsed(),
        released.state(),
        released.last_error
    );
    ensure!(released.last_error.contains("agent_lost"), "{released:?}");

    // A second agent joins the group (once a's membership has timed out it owns every
    // partition, and may be handed a's attempt 1 again: its result must not count) and
    // loads it.
    let mut b = stack.agent(
        "b",
        "raw",
        &exec,
        &[("AGENT_NAME", "b"), ("RUNS", runs_env)],
    )?;
    b.wait_ready(LONG).await?;
    let batch = stack.wait_terminal(&batch_id).await?;
    let runs = lines(&runs);
    println!("runs (agent object attempt): {runs:?}");
    ensure!(batch.state() == pb::BatchState::Succeeded, "{batch:?}");
    let b_id = stack.agent_info("b").await?.agent_id;

    let status = stack.object(&batch_id, "1001").await?;
    println!("1001: {:?}", status.history);
    ensure!(
        status.state() == pb::ObjectState::Loaded
            && status.attempt >= 2
            && status.agent_id == b_id
            && status.last_error.contains("agent_lost"),
        "1001 should be LOADED by b ({b_id}) after a ({a_id}) was lost: {status:?}"
    );
    // The history says attempt 1 failed and was retried (why is in last_error).
    ensure!(
        status
            .history
            .iter()
            .any(|t| t.from_state() == pb::ObjectState::Running
                && t.to_state() == pb::ObjectState::RetryWait
                && t.attempt == 1),
        "attempt 1 not retried in the history: {:?}",
        status.history
    );
    let loads: Vec<_> = status
        .history
        .iter()
        .filter(|t| t.to_state() == pb::ObjectState::Loaded)
        .collect();
    ensure!(
        loads.len() == 1 && loads[0].attempt == status.attempt,
        "1001 loaded other than once, at its last attempt: {:?}",
        status.history
    );
    ensure!(
        runs.iter().filter(|l| l.starts_with("a 1001 ")).count() == 1
            && runs.contains(&format!("b 1001 {}", status.attempt)),
        "runs: {runs:?}"
    );

    // What a finished before it died stands.
    for o in objects.iter().filter(|o| o.id != "1001") {
        let s = stack.object(&batch_id, &o.id).await?;
        ensure!(
            s.state() == pb::ObjectState::Loaded && s.attempt == 1 && s.agent_id == a_id,
            "{} should be LOADED at attempt 1 by a: {s:?}",
            o.id
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_started_before_the_control_plane_registers_once_it_is_up() -> anyhow::Result<()> {
    let mut stack = start(&[]).await?;
    // Nothing listens on the control plane's port until it is started again: the first run
    // only chose the port (an agent never touches Kafka before it registers).
    stack.cp.kill_9();
    let mut agent = stack.agent("early", "raw", &["--simulate-duration-ms", "10"], &[])?;
    within(LONG, "the agent to try registering twice", async {
        while !agent
            .log()
            .lines()
            .any(|l| l.contains("control plane not answering") && l.contains("attempts=2"))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    let (code, body) = agent.admin_get("/health/readiness").await?;
    ensure!(
        code == 503 && body.contains("not registered with the control plane"),
        "readiness before the control plane is up: {code} {body}"
    );
    ensure!(
        agent
            .metric(&gauge("strata_agent_registered", "raw"))
            .await?
            == 0.0,
        "registered before the control plane is up"
    );

    let started = Instant::now();
    stack.cp.start_again().await?;
    agent.wait_ready(LONG).await?;
    println!(
        "agent ready {:?} after the control plane was started",
        started.elapsed()
    );
    let (code, body) = agent.admin_get("/health/readiness").await?;
    ensure!(code == 200, "readiness: {code} {body}");
    ensure!(
        agent
            .metric("strata_agent_registrations_total{zone=\"raw\"}")
            .await?
            == 1.0,
        "registered more than once"
    );

    let objects = raw_objects(3);
    let batch_id = stack.submit("early-agent", objects.clone()).await?;
    let batch = stack.wait_terminal(&batch_id).await?;
    ensure!(batch.state() == pb::BatchState::Succeeded, "{batch:?}");
    let id = stack.agent_info("early").await?.agent_id;
    for o in &objects {
        let s = stack.object(&batch_id, &o.id).await?;
        ensure!(
            s.state() == pb::ObjectState::Loaded && s.attempt == 1 && s.agent_id == id,
            "{} should be LOADED by the early agent: {s:?}",
            o.id
        );
    }
    Ok(())
}

/// The exec processor of the exec test: keeps its stdin in `$WORK`, then 2000 loads (two lines
/// on stdout), 2001 fails with the temp-fail code on its first attempt and loads on the next,
/// anything else fails permanently with a message on stderr.
const EXEC_SCRIPT: &str = r#"cat > "$WORK/stdin-$STRATA_OBJECT_ID-$STRATA_ATTEMPT.json"
case "$STRATA_OBJECT_ID" in
2000)
  echo "connecting to the warehouse"
  echo "rows=42"
  ;;
2001)
  if [ "$STRATA_ATTEMPT" = 1 ]; then
    echo "warehouse busy, try later" >&2
    exit 75
  fi
  echo "rows=7"
  ;;
*)
  echo "table orders_v2 does not exist" >&2
  exit 3
  ;;
esac
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_success_temp_failure_and_permanent_failure_as_an_operator_sees_them()
-> anyhow::Result<()> {
    let mut stack = start(&[]).await?;
    let work = strata_tests::temp_dir("exec-work")?;
    let work_env = work.path().to_str().context("temp path is not UTF-8")?;
    let exec = exec_script(work.path(), "load.sh", EXEC_SCRIPT)?;
    let exec: Vec<&str> = exec.iter().map(String::as_str).collect();
    let mut agent = stack.agent("exec", "raw", &exec, &[("WORK", work_env)])?;
    agent.wait_ready(LONG).await?;

    let batch_id = stack
        .submit("exec", objects("raw", &["2000", "2001", "2002"]))
        .await?;
    let batch = stack.wait_terminal(&batch_id).await?;
    ensure!(batch.state() == pb::BatchState::Failed, "{batch:?}");

    let loaded = stack.object(&batch_id, "2000").await?;
    ensure!(
        loaded.state() == pb::ObjectState::Loaded
            && loaded.attempt == 1
            && loaded.last_error.is_empty(),
        "2000: {loaded:?}"
    );
    let retried = stack.object(&batch_id, "2001").await?;
    ensure!(
        retried.state() == pb::ObjectState::Loaded
            && retried.attempt == 2
            && retried
                .last_error
                .contains("exit code 75: warehouse busy, try later"),
        "2001: {retried:?}"
    );
    let dead = stack.object(&batch_id, "2002").await?;
    ensure!(
        dead.state() == pb::ObjectState::Dead
            && dead.attempt == 1
            && dead
                .last_error
                .contains("exit code 3: table orders_v2 does not exist"),
        "2002: {dead:?}"
    );

    // Each run got its object on stdin; nothing else ran (the permanent failure was not
    // retried).
    let mut inputs: Vec<String> = std::fs::read_dir(work.path())?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("stdin-"))
        .collect();
    inputs.sort();
    ensure!(
        inputs
            == [
                "stdin-2000-1.json",
                "stdin-2001-1.json",
                "stdin-2001-2.json",
                "stdin-2002-1.json"
            ],
        "runs: {inputs:?}"
    );
    for name in &inputs {
        let (id, attempt) = name
            .trim_start_matches("stdin-")
            .trim_end_matches(".json")
            .split_once('-')
            .context("file name")?;
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(work.path().join(name))?)
                .with_context(|| format!("{name} is not JSON"))?;
        ensure!(
            json["object_id"] == id
                && json["object"]["id"] == id
                && json["batch_id"] == batch_id.as_str()
                && json["zone"] == "raw"
                && json["attempt"] == attempt.parse::<u64>()?,
            "{name}: {json}"
        );
    }

    // The last stdout line is the result's info (the control plane does not keep it: read it
    // on the results topic).
    let infos = loaded_infos(&stack, &batch_id, 2).await?;
    ensure!(
        infos.get("2000").map(String::as_str) == Some("rows=42")
            && infos.get("2001").map(String::as_str) == Some("rows=7"),
        "infos on the results topic: {infos:?}"
    );

    for (outcome, n) in [
        ("loaded", 2.0),
        ("failed_retryable", 1.0),
        ("failed_permanent", 1.0),
    ] {
        let got = agent
            .metric(&labelled(
                "strata_agent_results_total",
                "outcome",
                outcome,
                "raw",
            ))
            .await?;
        ensure!(got == n, "{outcome}: {got} results, not {n}");
    }
    Ok(())
}

/// The `info` of the first `n` `ObjectLoaded` results of `batch_id` on the results topic, by
/// object id (read from the beginning in a group of the test's own).
async fn loaded_infos(
    stack: &Stack,
    batch_id: &str,
    n: usize,
) -> anyhow::Result<BTreeMap<String, String>> {
    let consumer: StreamConsumer = stack
        .broker
        .consumer_config("agent-suite-results-reader")
        .create()?;
    let topic = format!(
        "{}.{}",
        stack.broker.topic_prefix(),
        strata_proto::kafka::RESULTS_TOPIC
    );
    consumer.subscribe(&[&topic])?;
    let infos = within(LONG, "the loaded results on the results topic", async {
        let mut infos = BTreeMap::new();
        while infos.len() < n {
            let msg = consumer.recv().await?;
            let result = pb::ObjectResult::decode(msg.payload().unwrap_or_default())?;
            if let Some(pb::object_result::Result::Loaded(l)) = result.result
                && l.batch_id == batch_id
            {
                infos.insert(l.object_id, l.info.get("info").cloned().unwrap_or_default());
            }
        }
        anyhow::Ok(infos)
    })
    .await??;
    strata_tests::kafka::close_consumer(consumer).await?;
    Ok(infos)
}

/// One request the test's HTTP server received.
#[derive(Debug, Clone)]
struct Received {
    object_id: String,
    attempt: String,
    body: String,
}

type Seen = Arc<Mutex<Vec<Received>>>;

/// A minimal HTTP/1.1 server on a free loopback port (one request per connection, as the tests
/// crate has no HTTP server dependency): answers each request with `answer(object id, how many
/// requests for that object came before)` and records it. Stops with the test's runtime.
async fn http_server(
    answer: fn(&str, usize) -> (u16, &'static str),
) -> anyhow::Result<(u16, Seen)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_one(stream, answer, log).await {
                    eprintln!("test HTTP server: {e:#}");
                }
            });
        }
    });
    Ok((port, seen))
}

async fn serve_one(
    mut stream: tokio::net::TcpStream,
    answer: fn(&str, usize) -> (u16, &'static str),
    seen: Seen,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let length: usize = header("content-length")
        .parse()
        .with_context(|| format!("no content-length in {head:?}"))?;
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "body cut short");
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = Received {
        object_id: header("x-strata-object-id"),
        attempt: header("x-strata-attempt"),
        body: String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned(),
    };
    let (status, text) = {
        let mut seen = seen.lock().expect("not poisoned");
        let before = seen
            .iter()
            .filter(|r| r.object_id == request.object_id)
            .count();
        let answer = answer(&request.object_id, before);
        seen.push(request);
        answer
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        503 => "Service Unavailable",
        _ => "Whatever",
    };
    stream
        .write_all(
            format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{text}",
                text.len()
            )
            .as_bytes(),
        )
        .await?;
    stream.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_2xx_loads_5xx_is_retried_and_4xx_is_dead() -> anyhow::Result<()> {
    let mut stack = start(&[]).await?;
    let (port, seen) = http_server(|object_id, before| match (object_id, before) {
        ("4000", _) => (200, "rows=5\n"),
        ("4001", 0) => (503, "warehouse busy"),
        ("4001", _) => (200, "rows=6\n"),
        _ => (400, "unknown table orders_v2"),
    })
    .await?;
    let url = format!("http://127.0.0.1:{port}/load");
    let mut agent = stack.agent(
        "http",
        "raw",
        &["--processor", "http", "--http-url", &url],
        &[],
    )?;
    agent.wait_ready(LONG).await?;

    let batch_id = stack
        .submit("http", objects("raw", &["4000", "4001", "4002"]))
        .await?;
    let batch = stack.wait_terminal(&batch_id).await?;
    ensure!(batch.state() == pb::BatchState::Failed, "{batch:?}");

    let loaded = stack.object(&batch_id, "4000").await?;
    ensure!(
        loaded.state() == pb::ObjectState::Loaded && loaded.attempt == 1,
        "4000: {loaded:?}"
    );
    let retried = stack.object(&batch_id, "4001").await?;
    ensure!(
        retried.state() == pb::ObjectState::Loaded
            && retried.attempt == 2
            && retried.last_error.contains("HTTP 503"),
        "4001: {retried:?}"
    );
    let dead = stack.object(&batch_id, "4002").await?;
    ensure!(
        dead.state() == pb::ObjectState::Dead
            && dead.attempt == 1
            && dead.last_error.contains("HTTP 400")
            && dead.last_error.contains("unknown table orders_v2"),
        "4002: {dead:?}"
    );

    // The server got each attempt once, with the object's JSON.
    let seen = seen.lock().expect("not poisoned").clone();
    let mut asked: Vec<(String, String)> = seen
        .iter()
        .map(|r| (r.object_id.clone(), r.attempt.clone()))
        .collect();
    asked.sort();
    ensure!(
        asked
            == [("4000", "1"), ("4001", "1"), ("4001", "2"), ("4002", "1")]
                .map(|(o, a)| (o.to_owned(), a.to_owned())),
        "requests (object, attempt): {asked:?}"
    );
    for r in &seen {
        let json: serde_json::Value = serde_json::from_str(&r.body)
            .with_context(|| format!("request body is not JSON: {r:?}"))?;
        ensure!(
            json["object_id"] == r.object_id.as_str()
                && json["object"]["id"] == r.object_id.as_str()
                && json["batch_id"] == batch_id.as_str()
                && json["attempt"] == r.attempt.parse::<u64>()?,
            "request {r:?}"
        );
    }
    Ok(())
}

/// Produces `result` to the stack's results topic, keyed by `batch_id`, as anyone who can
/// write to the topic could.
async fn produce_result(
    stack: &Stack,
    batch_id: &str,
    result: &pb::ObjectResult,
) -> anyhow::Result<()> {
    let producer: FutureProducer = stack.broker.producer_config().create()?;
    let topic = format!(
        "{}.{}",
        stack.broker.topic_prefix(),
        strata_proto::kafka::RESULTS_TOPIC
    );
    let payload = result.encode_to_vec();
    let record = FutureRecord::to(&topic)
        .key(batch_id)
        .payload(&payload)
        .headers(OwnedHeaders::new().insert(Header {
            key: strata_proto::kafka::HEADER_TYPE,
            value: Some(strata_proto::kafka::TYPE_OBJECT_RESULT),
        }));
    within(LONG, "produce a result", producer.send(record, LONG))
        .await?
        .map_err(|(e, _)| e)?;
    Ok(())
}

/// What the control plane logs when it drops a result that fails verification.
const REJECTED: &str = "result rejected";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_forged_by_an_agent_of_another_zone_is_rejected() -> anyhow::Result<()> {
    let mut stack = start(&[]).await?;
    let mut raw = stack.agent("raw-agent", "raw", &["--simulate-duration-ms", "10"], &[])?;
    raw.wait_ready(LONG).await?;

    // The raw object loads; the application one is released and waits: no agent of its zone.
    let mut batch_objects = objects("raw", &["1000"]);
    batch_objects.extend(objects("application", &["3000"]));
    let batch_id = stack.submit("forged", batch_objects).await?;
    stack
        .wait_object(&batch_id, "1000", "LOADED", |s| {
            s.state() == pb::ObjectState::Loaded
        })
        .await?;
    let ready = stack
        .wait_object(&batch_id, "3000", "released", |s| {
            s.state() == pb::ObjectState::Ready && s.attempt >= 1
        })
        .await?;

    // A live lease of zone raw whose key the test holds (the control plane is `--insecure`, so
    // it hands the key out over plaintext): an agent of raw gone rogue. Registered
    // just before it forges: the lease lives 3 s without heartbeats.
    let raw_lease = AgentRegistryClient::connect(stack.cp.endpoint())
        .await?
        .register_agent(pb::RegisterAgentRequest {
            zone: "raw".into(),
            capacity: 1,
            hostname: "rogue".into(),
            ..Default::default()
        })
        .await?
        .into_inner();

    // The raw lease's identity on a result for the application object, right in every other
    // respect (attempt, dispatch epoch, the live lease epoch) and signed with the lease's key.
    let mut forged = pb::ObjectResult {
        result: Some(pb::object_result::Result::Loaded(pb::ObjectLoaded {
            batch_id: batch_id.clone(),
            object_id: "3000".into(),
            zone: "application".into(),
            attempt: ready.attempt,
            dispatch_epoch: ready.dispatch_epoch,
            agent_id: raw_lease.agent_id.clone(),
            agent_lease_epoch: raw_lease.lease_epoch,
            ..Default::default()
        })),
    };
    strata_proto::signing::ResultKey::from_slice(&raw_lease.result_signing_key)
        .context("a result key")?
        .sign(&mut forged);
    produce_result(&stack, &batch_id, &forged).await?;
    let sent = Instant::now();

    let rejection = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains(REJECTED)
                    && l.contains("reason=\"wrong_zone\"")
                    && l.contains("object_id=\"3000\"")
                    && l.contains(&raw_lease.agent_id)
            })
            .count()
    };
    within(
        LONG,
        "the control plane to reject the forged result",
        async {
            while rejection(&stack.cp_log()) == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await?;
    println!("forged result rejected within {:?}", sent.elapsed());
    let after = stack.object(&batch_id, "3000").await?;
    ensure!(
        after.state() == pb::ObjectState::Ready
            && after.attempt == ready.attempt
            && after.dispatch_epoch == ready.dispatch_epoch
            && after.agent_id != raw_lease.agent_id,
        "the forged result moved 3000: {after:?}"
    );
    ensure!(
        stack.batch(&batch_id).await?.state() == pb::BatchState::Running,
        "the batch ended on a forged result"
    );

    // An agent of the right zone loads it.
    let mut app = stack.agent(
        "app-agent",
        "application",
        &["--simulate-duration-ms", "10"],
        &[],
    )?;
    app.wait_ready(LONG).await?;
    let batch = stack.wait_terminal(&batch_id).await?;
    ensure!(batch.state() == pb::BatchState::Succeeded, "{batch:?}");
    let app_id = stack.agent_info("app-agent").await?.agent_id;
    let status = stack.object(&batch_id, "3000").await?;
    ensure!(
        status.state() == pb::ObjectState::Loaded
            && status.attempt == ready.attempt
            && status.agent_id == app_id,
        "3000 should be LOADED by the application agent {app_id}: {status:?}"
    );
    ensure!(
        rejection(&stack.cp_log()) == 1,
        "rejections:\n{}",
        stack.cp_log()
    );
    ensure!(
        raw.metric(&labelled(
            "strata_agent_readies_total",
            "verdict",
            "accepted",
            "raw"
        ))
        .await?
            == 1.0,
        "the raw agent took more than its one object"
    );
    Ok(())
}

/// Keys rotate at heartbeats (`--result-key-rotation-secs 1`, a heartbeat a second): objects
/// that take 6 s each run across a rotation (one comes at least every other heartbeat; the
/// rotations counted between "all RUNNING" and "all LOADED" prove one fell inside the attempts)
/// and load at their first attempt, no result rejected (an attempt signs its result with the
/// newest key). A lease whose key was rotated
/// away and whose grace is over has its old key's results rejected as `old_key`, and the same
/// result signed with the new key is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn result_keys_rotate_at_heartbeats_and_a_rotated_away_key_signs_nothing()
-> anyhow::Result<()> {
    let mut stack = start(&["--result-key-rotation-secs", "1"]).await?;
    let mut raw = stack.agent(
        "raw-agent",
        "raw",
        &["--simulate-duration-ms", "6000", "--concurrency", "4"],
        &[],
    )?;
    raw.wait_ready(LONG).await?;
    let mut batch_objects = objects("raw", &["1000", "1001", "1002", "1003"]);
    batch_objects.extend(objects("application", &["3000"]));
    let batch_id = stack.submit("rotation", batch_objects).await?;
    let rotations_metric = gauge("strata_agent_result_key_rotations_total", "raw");
    for id in ["1000", "1001", "1002", "1003"] {
        stack
            .wait_object(&batch_id, id, "RUNNING", |s| {
                s.state() == pb::ObjectState::Running
            })
            .await?;
    }
    let before = raw.metric(&rotations_metric).await?;
    for id in ["1000", "1001", "1002", "1003"] {
        let s = stack
            .wait_object(&batch_id, id, "LOADED", |s| {
                s.state() == pb::ObjectState::Loaded
            })
            .await?;
        ensure!(
            s.attempt == 1,
            "{id} loaded at attempt {}: {s:?}",
            s.attempt
        );
    }
    let rotations = raw.metric(&rotations_metric).await? - before;
    ensure!(
        rotations >= 1.0,
        "the agent's key rotated {rotations} times while all four objects ran"
    );
    let rejected = |metrics: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with("strata_results_rejected_total"))
            .map(|l| {
                l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    let (_, metrics) = stack.admin_get("/metrics").await?;
    ensure!(rejected(&metrics) == 0.0, "results rejected:\n{metrics}");
    println!("agent key rotations while 4 objects of 6 s ran: {rotations}");

    // A lease of zone application whose key the test holds (the control plane is `--insecure`):
    // registered (key 0), renewed until a heartbeat hands out key 1, then left alone past the
    // grace (1 s) and within its TTL (3 s): key 0 is the previous key, too old.
    let ready = stack
        .wait_object(&batch_id, "3000", "released", |s| {
            s.state() == pb::ObjectState::Ready && s.attempt >= 1
        })
        .await?;
    let mut registry = AgentRegistryClient::connect(stack.cp.endpoint()).await?;
    let lease = registry
        .register_agent(pb::RegisterAgentRequest {
            zone: "application".into(),
            capacity: 1,
            hostname: "rotating".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let key0 = lease.result_signing_key.clone();
    let key1 = within(LONG, "a heartbeat that rotates the key", async {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let r = registry
                .heartbeat(pb::HeartbeatRequest {
                    agent_id: lease.agent_id.clone(),
                    lease_epoch: lease.lease_epoch,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if !r.result_signing_key.is_empty() {
                return anyhow::Ok(r.result_signing_key);
            }
        }
    })
    .await??;
    ensure!(key1 != key0 && key1.len() == 32, "a new 32-byte key");
    let rotated = Instant::now();
    let loaded = |key: &[u8]| -> anyhow::Result<pb::ObjectResult> {
        let mut result = pb::ObjectResult {
            result: Some(pb::object_result::Result::Loaded(pb::ObjectLoaded {
                batch_id: batch_id.clone(),
                object_id: "3000".into(),
                zone: "application".into(),
                attempt: ready.attempt,
                dispatch_epoch: ready.dispatch_epoch,
                agent_id: lease.agent_id.clone(),
                agent_lease_epoch: lease.lease_epoch,
                ..Default::default()
            })),
        };
        strata_proto::signing::ResultKey::from_slice(key)
            .context("a result key")?
            .sign(&mut result);
        Ok(result)
    };
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(rotated.elapsed())).await;
    produce_result(&stack, &batch_id, &loaded(&key0)?).await?;
    let old_key = |log: &str| {
        log.lines()
            .filter(|l| l.contains(REJECTED) && l.contains("reason=\"old_key\""))
            .count()
    };
    within(
        LONG,
        "the control plane to reject the old key's result",
        async {
            while old_key(&stack.cp_log()) == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await?;
    let after = stack.object(&batch_id, "3000").await?;
    ensure!(
        after.state() == pb::ObjectState::Ready,
        "a result signed with a rotated-away key moved 3000: {after:?}"
    );
    produce_result(&stack, &batch_id, &loaded(&key1)?).await?;
    let status = stack
        .wait_object(&batch_id, "3000", "LOADED", |s| {
            s.state() == pb::ObjectState::Loaded
        })
        .await?;
    ensure!(status.agent_id == lease.agent_id, "{status:?}");
    let batch = stack.wait_terminal(&batch_id).await?;
    ensure!(batch.state() == pb::BatchState::Succeeded, "{batch:?}");
    Ok(())
}
