//! Worker agents as users run them: the real `strata-worker-agent` binary (child processes,
//! [`strata_tests::worker_agent::WorkerAgent`]) against the real `strata-control-plane` binary,
//! the real broker and Redis, with `--require-agent-lease` on (results are only accepted from an
//! agent holding a live lease for the object's zone).
//!
//! What is checked is what an operator sees: the batch's outcome and each object's state, attempt
//! and agent (`GetObject`), the agents' exit codes, their `/metrics` and `/health` answers, and
//! what their processors did. Faults are placed by progress, never by sleeping; every wait is
//! bounded; durations are printed, never asserted.
//!
//! Needs both binaries built (`cargo nextest run --workspace`, what `./tests/run.sh` runs, builds
//! them; or `cargo build -p strata-control-plane -p strata-worker-agent`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use strata_proto::v1::{self as pb};
use strata_tests::control_plane::ControlPlane;
use strata_tests::worker_agent::WorkerAgent;
use strata_tests::{KafkaBroker, RedisServer, within};
use tonic::transport::Channel;

/// Bound on every wait (start-ups, a batch running to its end).
const LONG: Duration = Duration::from_secs(120);
/// Leases expire 3 s after the last heartbeat (every second), so a killed agent's attempts are
/// re-released within seconds.
const CP_FLAGS: &[&str] = &[
    "--topic-partitions",
    "3",
    "--require-agent-lease",
    "true",
    "--lease-ttl-secs",
    "3",
    "--heartbeat-interval-secs",
    "1",
    "--initial-backoff-ms",
    "100",
];

/// A broker, a Redis and a control plane, and a gRPC client of it.
struct Stack {
    cp: ControlPlane,
    client: OrchestratorClient<Channel>,
    // Dropped after the control plane.
    _redis: RedisServer,
    _broker: KafkaBroker,
}

impl Stack {
    async fn start(extra_flags: &[&str]) -> anyhow::Result<Self> {
        let broker = KafkaBroker::start().await?;
        let redis = RedisServer::start().await?;
        let flags: Vec<&str> = CP_FLAGS.iter().chain(extra_flags).copied().collect();
        let cp = ControlPlane::start(&broker.bootstrap_servers(), &redis.url(), &flags).await?;
        let client = OrchestratorClient::connect(cp.endpoint()).await?;
        Ok(Self {
            cp,
            client,
            _redis: redis,
            _broker: broker,
        })
    }

    /// Starts an agent for `zone` against this control plane.
    fn agent(
        &self,
        name: &str,
        zone: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<WorkerAgent> {
        WorkerAgent::start(name, &self.cp.endpoint(), zone, args, env)
    }

    /// Submits `objects` (every one a target) and returns the batch id.
    async fn submit(
        &mut self,
        key: &str,
        objects: Vec<pb::ObjectDefinition>,
    ) -> anyhow::Result<String> {
        let request = pb::SubmitBatchRequest {
            idempotency_key: key.into(),
            input: Some(pb::BatchInput {
                source: Some(pb::batch_input::Source::Objects(pb::ObjectList { objects })),
            }),
            options: Some(pb::SubmitOptions {
                all: true,
                ..Default::default()
            }),
        };
        let response = within(LONG, "submit", self.client.submit_batch(request))
            .await??
            .into_inner();
        Ok(response.batch_id)
    }

    async fn batch(&mut self, batch_id: &str) -> anyhow::Result<pb::Batch> {
        Ok(self
            .client
            .get_batch(pb::GetBatchRequest {
                batch_id: batch_id.into(),
            })
            .await?
            .into_inner())
    }

    /// Polls until the batch is terminal (bounded by [`LONG`]).
    async fn wait_terminal(&mut self, batch_id: &str) -> anyhow::Result<pb::Batch> {
        let started = Instant::now();
        loop {
            let batch = self.batch(batch_id).await?;
            if batch.state() != pb::BatchState::Running {
                println!(
                    "batch {batch_id} {:?} after {:?}",
                    batch.state(),
                    started.elapsed()
                );
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

    async fn object(
        &mut self,
        batch_id: &str,
        object_id: &str,
    ) -> anyhow::Result<pb::ObjectStatus> {
        Ok(self
            .client
            .get_object(pb::GetObjectRequest {
                batch_id: batch_id.into(),
                object_id: object_id.into(),
            })
            .await?
            .into_inner())
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
    let mut stack = Stack::start(&[]).await?;
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
    let mut stack = Stack::start(&[]).await?;
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
