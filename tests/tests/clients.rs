//! The API as users call it without Rust: the README's grpcurl calls and the Python client
//! (`clients/python`), against the real `strata-control-plane` binary, the real broker and Redis,
//! and one real `strata-worker-agent` (simulate processor) per zone.
//!
//! - grpcurl: every ```sh block of the README section "Calling the API with grpcurl and Python"
//!   that starts with `grpcurl` is run as written (by `bash`, from the repository root, with
//!   `$STRATA_ENDPOINT`, `$BATCH` and `$OBJECT` set), so the documentation and this suite cannot
//!   drift: a block this suite does not know fails it.
//! - Python: the checked-in stubs must be what `clients/python/generate.sh` writes now, byte for
//!   byte; the README's `python clients/python/submit_and_watch.py …` line is run as written, and
//!   its exit code and per-zone summary are checked against `GetBatch`.
//!
//! Tools: `STRATA_GRPCURL_BIN` and `STRATA_PYTHON` (exported by `./tests/run.sh`; default: the
//! ones in `.tools/venv`, which it provisions; see `strata_tests::client_tools`). Needs both Strata binaries built (`cargo build -p
//! strata-control-plane -p strata-worker-agent`, or `cargo nextest run --workspace`). Every wait
//! is bounded; nothing sleeps to synchronise.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use strata_proto::v1::{self as pb};
use strata_tests::client_tools::{Ran, python_bin, sh, tools_on_path};
use strata_tests::control_plane::ControlPlane;
use strata_tests::worker_agent::WorkerAgent;
use strata_tests::{RedisServer, TestBroker, free_port, temp_dir, within, workspace_root};
use tonic::transport::Channel;

/// Bound on every wait (start-ups, a batch running to its end, one client command).
const LONG: Duration = Duration::from_secs(120);
/// Leases expire 3 s after the last heartbeat (every second).
const CP_FLAGS: &[&str] = &[
    "--topic-partitions",
    "2",
    "--verify-results",
    "true",
    "--lease-ttl-secs",
    "3",
    "--heartbeat-interval-secs",
    "1",
    "--initial-backoff-ms",
    "100",
];
const ZONES: [&str; 3] = ["raw", "standardized", "application"];
const SIMULATE: &[&str] = &["--processor", "simulate", "--simulate-duration-ms", "20"];
/// The sample's ids (`clients/samples/catalogue.json`).
const SAMPLE_IDS: [&str; 11] = [
    "1001", "1002", "1003", "1004", "2001", "2002", "2003", "2004", "3001", "3002", "3003",
];
/// The failing agent (standardized zone) fails ids ending in this permanently: in the sample only
/// 2004, whose child 3002 then becomes UPSTREAM_FAILED.
const FAIL_SUFFIX: &str = "04";
const FAILING_OBJECT: &str = "2004";
/// The README section whose blocks are run.
const SECTION: &str = "## Calling the API with grpcurl and Python";

// ---------------------------------------------------------------------------------------------
// The stack: broker, Redis, control plane, one agent per zone.

struct Stack {
    // Dropped first: the agents, then the control plane, then Redis and the broker.
    agents: BTreeMap<&'static str, WorkerAgent>,
    cp: ControlPlane,
    client: OrchestratorClient<Channel>,
    _redis: RedisServer,
    _broker: TestBroker,
}

impl Stack {
    /// Everything started and every agent ready; the `standardized` agent fails ids ending in
    /// [`FAIL_SUFFIX`] when `failing`.
    async fn start(failing: bool) -> anyhow::Result<Self> {
        let broker = TestBroker::start().await?;
        let redis = RedisServer::start().await?;
        let cp = ControlPlane::start_on(&broker, &redis.url(), CP_FLAGS, &[]).await?;
        let client = OrchestratorClient::connect(cp.endpoint()).await?;
        let mut stack = Self {
            agents: BTreeMap::new(),
            cp,
            client,
            _redis: redis,
            _broker: broker,
        };
        for zone in ZONES {
            stack
                .start_agent(zone, failing && zone == "standardized")
                .await?;
        }
        Ok(stack)
    }

    /// (Re)starts the agent of `zone` and waits until it is ready.
    async fn start_agent(&mut self, zone: &'static str, failing: bool) -> anyhow::Result<()> {
        let mut args = SIMULATE.to_vec();
        if failing {
            args.extend(["--simulate-fail-suffix", FAIL_SUFFIX]);
        }
        let name = format!("{zone}{}", if failing { "-failing" } else { "" });
        let mut agent = WorkerAgent::start(&name, &self.cp.endpoint(), zone, &args, &[])?;
        agent.wait_ready(LONG).await?;
        self.agents.insert(zone, agent);
        Ok(())
    }

    /// Stops the agent of `zone` (SIGTERM: it drains and deregisters) and waits for its exit.
    async fn stop_agent(&mut self, zone: &str) -> anyhow::Result<()> {
        let mut agent = self.agents.remove(zone).context("no such agent")?;
        agent.terminate()?;
        let status = agent.wait_exit(LONG).await?;
        ensure!(status.success(), "{} exited with {status}", agent.name());
        Ok(())
    }

    /// `host:port`, as grpcurl and the Python client take it.
    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.cp.port())
    }

    async fn batch(&mut self, batch_id: &str) -> anyhow::Result<pb::Batch> {
        let request = pb::GetBatchRequest {
            batch_id: batch_id.into(),
        };
        Ok(within(LONG, "GetBatch", self.client.get_batch(request))
            .await??
            .into_inner())
    }

    /// Polls `GetBatch` until the batch is terminal (bounded by [`LONG`]).
    async fn wait_terminal(&mut self, batch_id: &str) -> anyhow::Result<pb::Batch> {
        let started = Instant::now();
        loop {
            let batch = self.batch(batch_id).await?;
            if batch.state() != pb::BatchState::Running {
                return Ok(batch);
            }
            ensure!(
                started.elapsed() < LONG,
                "batch {batch_id} still running after {LONG:?}: {:?}; control plane log:\n{}",
                batch.counts,
                self.cp.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tools and commands.

/// Every JSON value grpcurl printed (one per message; a stream prints several).
fn json_messages(stdout: &str) -> anyhow::Result<Vec<Value>> {
    serde_json::Deserializer::from_str(stdout)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("grpcurl printed something else than JSON:\n{stdout}"))
}

fn one_message(ran: &Ran) -> anyhow::Result<Value> {
    let mut messages = json_messages(&ran.stdout)?;
    ensure!(messages.len() == 1, "expected one message: {ran}");
    Ok(messages.remove(0))
}

/// The README section's ```sh blocks, in order.
fn readme_blocks() -> anyhow::Result<Vec<String>> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md"))?;
    let start = readme
        .find(SECTION)
        .with_context(|| format!("README.md has no section {SECTION:?}"))?;
    let rest = &readme[start + SECTION.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(lines), "```") => {
                blocks.push(lines.join("\n"));
                current = None;
            }
            (Some(lines), _) => lines.push(line),
            (None, _) => {}
        }
    }
    ensure!(current.is_none(), "README section: unclosed ```sh block");
    Ok(blocks)
}

/// The documented grpcurl calls, each found by what it does.
#[derive(Debug)]
struct GrpcurlDocs {
    list: String,
    plan: String,
    submit: String,
    watch: String,
    get_object: String,
    list_retries: String,
    replay: String,
    submit_bad: String,
}

impl GrpcurlDocs {
    fn from_readme() -> anyhow::Result<Self> {
        let mut found: BTreeMap<&str, String> = BTreeMap::new();
        for block in readme_blocks()?
            .into_iter()
            .filter(|b| b.starts_with("grpcurl"))
        {
            let first = block.lines().next().unwrap_or_default();
            let key = if first.ends_with(" list") {
                "list"
            } else if first.contains("/PlanBatch") {
                "plan"
            } else if first.contains("/SubmitBatch")
                && block.contains("clients/samples/catalogue.json")
            {
                "submit"
            } else if first.contains("/SubmitBatch")
                && block.contains("clients/samples/catalogue_unknown_parents.json")
            {
                "submit_bad"
            } else if first.contains("/WatchBatch") {
                "watch"
            } else if first.contains("/GetObject") {
                "get_object"
            } else if first.contains("/ListRetries") {
                "list_retries"
            } else if first.contains("/ReplayDeadLetters") {
                "replay"
            } else {
                bail!("README grpcurl block this suite does not check (add it here):\n{block}");
            };
            ensure!(
                found.insert(key, block).is_none(),
                "README: two grpcurl blocks for {key}"
            );
        }
        let mut take = |key: &str| {
            found
                .remove(key)
                .with_context(|| format!("README section {SECTION:?} lost its grpcurl {key} call"))
        };
        Ok(Self {
            list: take("list")?,
            plan: take("plan")?,
            submit: take("submit")?,
            watch: take("watch")?,
            get_object: take("get_object")?,
            list_retries: take("list_retries")?,
            replay: take("replay")?,
            submit_bad: take("submit_bad")?,
        })
    }
}

/// The README's `python clients/python/submit_and_watch.py …` line.
fn python_usage() -> anyhow::Result<String> {
    readme_blocks()?
        .iter()
        .flat_map(|b| b.lines())
        .find(|l| l.starts_with("python clients/python/submit_and_watch.py"))
        .map(str::to_owned)
        .context("README section lost its `python clients/python/submit_and_watch.py` line")
}

fn state_name(state: pb::ObjectState) -> &'static str {
    let name = state.as_str_name();
    name.strip_prefix("OBJECT_STATE_").unwrap_or(name)
}

/// The per-zone summary lines the Python client must end with, from `GetBatch`'s counts.
fn expected_summary(batch: &pb::Batch) -> Vec<String> {
    let mut zones: BTreeMap<&str, BTreeMap<&str, u32>> = BTreeMap::new();
    for c in &batch.counts {
        zones
            .entry(&c.zone)
            .or_default()
            .insert(state_name(c.state()), c.count);
    }
    let mut lines = vec!["per-zone summary:".to_owned()];
    for (zone, states) in zones {
        let states: Vec<String> = states.iter().map(|(s, n)| format!("{s}={n}")).collect();
        lines.push(format!("  {zone}: {}", states.join(" ")));
    }
    lines
}

/// Runs the README's Python line against `stack`; checks the output names the batch, ends with
/// the per-zone summary of `GetBatch`, and shows every sample object's final state.
async fn run_python_client(stack: &mut Stack) -> anyhow::Result<(Ran, pb::Batch)> {
    let tools = tools_on_path()?;
    let usage = python_usage()?;
    let address = stack.address();
    let ran = sh(&usage, tools.path(), &[("STRATA_ENDPOINT", &address)]).await?;
    println!("$ {usage}\n{ran}");
    let first = ran.stdout.lines().next().unwrap_or_default();
    let batch_id = first
        .strip_prefix("batch ")
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("the first line does not name the batch: {ran}"))?
        .to_owned();
    let batch = stack.batch(&batch_id).await?;
    ensure!(
        batch.state() != pb::BatchState::Running,
        "the client ended while the batch runs: {ran}"
    );
    let lines: Vec<&str> = ran.stdout.lines().collect();
    let expected = expected_summary(&batch);
    ensure!(
        lines.len() > expected.len() && lines[lines.len() - expected.len()..] == expected[..],
        "the output does not end with GetBatch's per-zone summary {expected:#?}: {ran}"
    );
    let state_line = format!(
        "batch {batch_id} {}",
        batch
            .state()
            .as_str_name()
            .trim_start_matches("BATCH_STATE_")
    );
    ensure!(
        lines[lines.len() - expected.len() - 1].starts_with(&state_line),
        "no `{state_line}` line before the summary: {ran}"
    );
    // Where each object ended, as the last line naming it says (snapshot or transition).
    for id in SAMPLE_IDS {
        let status = stack
            .client
            .get_object(pb::GetObjectRequest {
                batch_id: batch_id.clone(),
                object_id: id.into(),
            })
            .await?
            .into_inner();
        let last = lines
            .iter()
            .rev()
            .find(|l| l.starts_with(&format!("{id} [")))
            .with_context(|| format!("no line about {id}: {ran}"))?;
        let shown = format!(" {} (attempt", state_name(status.state()));
        ensure!(
            last.contains(&shown),
            "the last line about {id} is {last:?}, but it is {:?}",
            status.state()
        );
    }
    Ok((ran, batch))
}

// ---------------------------------------------------------------------------------------------
// Python.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_stubs_are_what_generate_sh_writes_now() -> anyhow::Result<()> {
    let tools = tools_on_path()?;
    let out = temp_dir("python-stubs")?;
    let python = python_bin()?;
    let script = format!("clients/python/generate.sh '{}'", out.path().display());
    let ran = sh(
        &script,
        tools.path(),
        &[("STRATA_PYTHON", &python.display().to_string())],
    )
    .await?;
    ensure!(ran.ok(), "generate.sh failed: {ran}");

    let checked_in = workspace_root().join("clients/python/strata");
    let fresh = files_under(&out.path().join("strata"))?;
    let committed = files_under(&checked_in)?;
    ensure!(
        fresh.keys().collect::<Vec<_>>() == committed.keys().collect::<Vec<_>>(),
        "clients/python/strata has {:?}, generate.sh writes {:?}: run clients/python/generate.sh",
        committed.keys().collect::<Vec<_>>(),
        fresh.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &fresh {
        ensure!(
            committed.get(name) == Some(bytes),
            "clients/python/strata/{name} is stale: run clients/python/generate.sh and commit"
        );
    }
    ensure!(fresh.len() >= 14, "only {} files generated", fresh.len());
    println!("{} generated files match", fresh.len());
    Ok(())
}

/// Every file under `dir` (relative path -> bytes), without Python's byte-code caches.
fn files_under(dir: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name == "__pycache__" || name.ends_with(".pyc") {
                continue;
            }
            if path.is_dir() {
                todo.push(path);
            } else {
                let rel = path.strip_prefix(dir)?.to_string_lossy().into_owned();
                files.insert(rel, std::fs::read(&path)?);
            }
        }
    }
    Ok(files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_rpc_error_exits_2_naming_the_endpoint_and_status() -> anyhow::Result<()> {
    let tools = tools_on_path()?;
    // Nothing listens there.
    let address = format!("127.0.0.1:{}", free_port()?);
    let usage = python_usage()?;
    let ran = sh(&usage, tools.path(), &[("STRATA_ENDPOINT", &address)]).await?;
    println!("{ran}");
    ensure!(ran.code == Some(2), "expected exit 2: {ran}");
    let message: Vec<&str> = ran.stderr.lines().collect();
    ensure!(
        message.len() == 1
            && message[0].contains(&address)
            && message[0].contains("UNAVAILABLE")
            && message[0].contains("SubmitBatch"),
        "expected one line naming SubmitBatch, {address} and UNAVAILABLE: {ran}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_client_submits_the_sample_and_streams_it_to_success() -> anyhow::Result<()> {
    let mut stack = Stack::start(false).await?;
    let (ran, batch) = run_python_client(&mut stack).await?;
    ensure!(ran.ok(), "expected exit 0: {ran}");
    ensure!(batch.state() == pb::BatchState::Succeeded, "{batch:?}");
    let loaded: u32 = batch
        .counts
        .iter()
        .filter(|c| c.state() == pb::ObjectState::Loaded)
        .map(|c| c.count)
        .sum();
    ensure!(loaded == 11, "{loaded} objects loaded: {batch:?}");
    ensure!(
        ran.stdout
            .contains("plan: 11 objects in 3 waves (application 3, raw 4, standardized 4)"),
        "no plan summary: {ran}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_client_exits_1_when_the_batch_fails() -> anyhow::Result<()> {
    let mut stack = Stack::start(true).await?;
    let (ran, batch) = run_python_client(&mut stack).await?;
    ensure!(ran.code == Some(1), "expected exit 1: {ran}");
    ensure!(batch.state() == pb::BatchState::Failed, "{batch:?}");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    ensure!(
        lines.ends_with(&[
            "per-zone summary:",
            "  application: LOADED=2 UPSTREAM_FAILED=1",
            "  raw: LOADED=4",
            "  standardized: DEAD=1 LOADED=3",
        ]),
        "{ran}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// grpcurl.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readme_grpcurl_calls_work_as_documented() -> anyhow::Result<()> {
    let docs = GrpcurlDocs::from_readme()?;
    let tools = tools_on_path()?;
    // The standardized agent fails 2004 permanently: the batch ends FAILED with 2004 DEAD.
    let mut stack = Stack::start(true).await?;
    let address = stack.address();
    let endpoint = [("STRATA_ENDPOINT", address.as_str())];

    // list: both services, through reflection.
    let ran = sh(&docs.list, tools.path(), &endpoint).await?;
    println!("$ {}\n{ran}", docs.list);
    ensure!(ran.ok(), "{ran}");
    let services: Vec<&str> = ran.stdout.lines().map(str::trim).collect();
    for service in ["strata.v1.Orchestrator", "strata.v1.AgentRegistry"] {
        ensure!(services.contains(&service), "`list` lacks {service}: {ran}");
    }

    // PlanBatch: the sample's waves.
    let ran = sh(&docs.plan, tools.path(), &endpoint).await?;
    println!("$ {}\n{ran}", docs.plan);
    ensure!(ran.ok(), "{ran}");
    let plan = one_message(&ran)?;
    ensure!(plan["summary"]["waveCount"] == 3, "{ran}");
    ensure!(plan["summary"]["objectCount"] == 11, "{ran}");
    let objects = plan["objects"].as_array().context("no objects")?;
    ensure!(objects.len() == 11, "{ran}");
    let wave_of = |id: &str| {
        objects
            .iter()
            .find(|o| o["objectId"] == id)
            .map(|o| o["wave"].as_u64().unwrap_or(0))
    };
    ensure!(
        wave_of("1001") == Some(0) && wave_of("2004") == Some(1) && wave_of("3002") == Some(2),
        "unexpected waves: {ran}"
    );

    // SubmitBatch: a batch id.
    let ran = sh(&docs.submit, tools.path(), &endpoint).await?;
    println!("$ {}\n{ran}", docs.submit);
    ensure!(ran.ok(), "{ran}");
    let submitted = one_message(&ran)?;
    let batch_id = submitted["batchId"]
        .as_str()
        .filter(|id| !id.is_empty())
        .with_context(|| format!("no batchId: {ran}"))?
        .to_owned();
    ensure!(submitted["created"] == true, "{ran}");
    let env = [
        ("STRATA_ENDPOINT", address.as_str()),
        ("BATCH", batch_id.as_str()),
        ("OBJECT", FAILING_OBJECT),
    ];

    // WatchBatch: streams until the batch is terminal (FAILED: 2004 is DEAD).
    let ran = sh(&docs.watch, tools.path(), &env).await?;
    println!("$ {}\n{ran}", docs.watch);
    ensure!(ran.ok(), "{ran}");
    let messages = json_messages(&ran.stdout)?;
    ensure!(
        messages
            .first()
            .is_some_and(|m| m.get("snapshot").is_some()),
        "{ran}"
    );
    let last = messages.last().context("WatchBatch printed nothing")?;
    let final_state = last["batchChanged"]["toState"]
        .as_str()
        .or(last["snapshot"]["batch"]["state"].as_str());
    ensure!(
        final_state == Some("BATCH_STATE_FAILED"),
        "the stream did not end with the batch FAILED: {ran}"
    );
    let batch = stack.batch(&batch_id).await?;
    ensure!(batch.state() == pb::BatchState::Failed, "{batch:?}");

    // GetObject: 2004 is DEAD, with the agent's error.
    let ran = sh(&docs.get_object, tools.path(), &env).await?;
    println!("$ {}\n{ran}", docs.get_object);
    ensure!(ran.ok(), "{ran}");
    let object = one_message(&ran)?;
    ensure!(object["state"] == "OBJECT_STATE_DEAD", "{ran}");
    ensure!(object["definition"]["id"] == FAILING_OBJECT, "{ran}");
    ensure!(
        object["lastError"].as_str().is_some_and(|e| !e.is_empty()),
        "{ran}"
    );

    // ListRetries answers (nothing waits: the failure was permanent).
    let ran = sh(&docs.list_retries, tools.path(), &env).await?;
    println!("$ {}\n{ran}", docs.list_retries);
    ensure!(ran.ok(), "{ran}");
    let retries = one_message(&ran)?;
    ensure!(retries.is_object(), "{ran}");

    // The loader is fixed: a non-failing standardized agent replaces the failing one. Then
    // ReplayDeadLetters re-arms 2004 (and 3002 below it) and 2004 is loaded.
    stack.stop_agent("standardized").await?;
    stack.start_agent("standardized", false).await?;
    let ran = sh(&docs.replay, tools.path(), &env).await?;
    println!("$ {}\n{ran}", docs.replay);
    ensure!(ran.ok(), "{ran}");
    let replay = one_message(&ran)?;
    ensure!(
        replay["replayedObjectIds"] == serde_json::json!([FAILING_OBJECT]),
        "{ran}"
    );
    ensure!(replay["rearmedDescendantCount"] == 1, "{ran}");
    let started = Instant::now();
    loop {
        let ran = sh(&docs.get_object, tools.path(), &env).await?;
        ensure!(ran.ok(), "{ran}");
        let state = one_message(&ran)?["state"].clone();
        if state == "OBJECT_STATE_LOADED" {
            println!("$ {}\n{ran}", docs.get_object);
            break;
        }
        ensure!(
            started.elapsed() < LONG,
            "{FAILING_OBJECT} not LOADED {LONG:?} after the replay: {ran}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let batch = stack.wait_terminal(&batch_id).await?;
    ensure!(batch.state() == pb::BatchState::Succeeded, "{batch:?}");

    // A catalogue with unknown parents: InvalidArgument naming them.
    let ran = sh(&docs.submit_bad, tools.path(), &endpoint).await?;
    println!("$ {}\n{ran}", docs.submit_bad);
    ensure!(!ran.ok(), "the bad catalogue was accepted: {ran}");
    ensure!(ran.stderr.contains("Code: InvalidArgument"), "{ran}");
    for parent in ["2011", "2017", "2023", "2031"] {
        ensure!(
            ran.stderr.contains(parent),
            "the error does not name {parent}: {ran}"
        );
    }
    Ok(())
}
