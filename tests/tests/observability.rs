//! Observability of the real stack (`docs/design.md#observability`): the control plane's `/metrics` agree with what a
//! batch did, and its readiness (HTTP and `grpc.health.v1`) follows Redis going away and coming
//! back. Real broker, real Redis, the real control-plane and agent binaries.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use strata_proto::v1::{self as pb};
use strata_tests::stack::{STACK_WAIT, Stack, count};
use strata_tests::within;
use strata_tests::worker_agent::{WorkerAgent, metric_value};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const ZONES: [&str; 3] = ["raw", "standardized", "application"];

/// The agents' processor: 1002 fails with the temp-fail code on its first attempt, 2003 fails
/// for good; everything else loads.
const SCRIPT: &str = r#"#!/bin/sh
cat >/dev/null
case "$STRATA_OBJECT_ID" in
  1002) [ "$STRATA_ATTEMPT" = 1 ] && { echo "warehouse busy" >&2; exit 75; } ;;
  2003) echo "schema mismatch" >&2; exit 3 ;;
esac
echo "loaded $STRATA_OBJECT_ID"
"#;

fn object(id: &str, parents: &[&str]) -> pb::ObjectDefinition {
    pb::ObjectDefinition {
        id: id.into(),
        parents: parents.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    }
}

/// Raw 1001–1004; standardized 2001 (1001, 1002), 2002 (1003), 2003 (1004); application 3001
/// (2001, 2002), 3002 (2003).
fn catalogue() -> Vec<pb::ObjectDefinition> {
    vec![
        object("1001", &[]),
        object("1002", &[]),
        object("1003", &[]),
        object("1004", &[]),
        object("2001", &["1001", "1002"]),
        object("2002", &["1003"]),
        object("2003", &["1004"]),
        object("3001", &["2001", "2002"]),
        object("3002", &["2003"]),
    ]
}

async fn agents(stack: &Stack, script: &std::path::Path) -> anyhow::Result<Vec<WorkerAgent>> {
    let mut agents = Vec::new();
    for zone in ZONES {
        let mut agent = stack.agent(
            zone,
            zone,
            &[
                "--processor",
                "exec",
                "--exec-command",
                &script.display().to_string(),
            ],
            &[],
        )?;
        agent.wait_ready(STACK_WAIT).await?;
        agents.push(agent);
    }
    Ok(agents)
}

fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    labels
        .iter()
        .map(|l| metric_value(text, &format!("{name}{{{l}}}")))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_match_what_the_batch_did() -> anyhow::Result<()> {
    let mut stack = Stack::start(&["--max-attempts", "3", "--initial-backoff-ms", "50"]).await?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("load.sh");
    std::fs::write(&script, SCRIPT)?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let _agents = agents(&stack, &script).await?;

    let batch_id = stack.submit("observability-metrics", catalogue()).await?;
    let batch = stack.wait_terminal(&batch_id).await?;
    ensure!(
        batch.state() == pb::BatchState::Failed
            && count(&batch, pb::ObjectState::Loaded) == 7
            && count(&batch, pb::ObjectState::Dead) == 1
            && count(&batch, pb::ObjectState::UpstreamFailed) == 1,
        "the batch ended {:?} with {:?}",
        batch.state(),
        batch.counts
    );
    // What the batch says it did: one dispatch per attempt of every object that ran.
    let mut attempts = 0;
    for o in catalogue() {
        let status = stack.object(&batch_id, &o.id).await?;
        attempts += status.attempt;
    }
    ensure!(
        attempts == 9,
        "attempts {attempts} (1002 twice, 3002 never)"
    );

    let (code, text) = stack.admin_get("/metrics").await?;
    ensure!(code == 200, "/metrics answered {code}");
    let zones: Vec<String> = ZONES.iter().map(|z| format!("zone=\"{z}\"")).collect();
    let zones: Vec<&str> = zones.iter().map(String::as_str).collect();
    let checks: Vec<(&str, f64, f64)> = vec![
        (
            "Ready published = dispatches",
            sum(&text, "strata_ready_published_total", &zones),
            f64::from(attempts),
        ),
        (
            "results started",
            metric_value(&text, r#"strata_results_total{outcome="started"}"#),
            9.0,
        ),
        (
            "results loaded",
            metric_value(&text, r#"strata_results_total{outcome="loaded"}"#),
            7.0,
        ),
        (
            "results failed (1002 once, 2003)",
            metric_value(&text, r#"strata_results_total{outcome="failed"}"#),
            2.0,
        ),
        (
            "retries scheduled in raw",
            metric_value(&text, r#"strata_retries_scheduled_total{zone="raw"}"#),
            1.0,
        ),
        (
            "dead letters in standardized",
            metric_value(&text, r#"strata_dead_letters_total{zone="standardized"}"#),
            1.0,
        ),
        (
            "objects loaded, counted by the end-to-end histogram",
            sum(&text, "strata_object_latency_seconds_count", &zones),
            7.0,
        ),
        (
            "processing durations reported (loaded and failed results)",
            sum(&text, "strata_processing_seconds_count", &zones),
            9.0,
        ),
        (
            "releases caused by a result (2001, 2002, 2003, 3001)",
            metric_value(&text, "strata_release_latency_seconds_count"),
            4.0,
        ),
        (
            "raw objects LOADED",
            metric_value(&text, r#"strata_objects{state="LOADED",zone="raw"}"#),
            4.0,
        ),
        (
            "standardized objects DEAD",
            metric_value(&text, r#"strata_objects{state="DEAD",zone="standardized"}"#),
            1.0,
        ),
        (
            "application objects UPSTREAM_FAILED",
            metric_value(
                &text,
                r#"strata_objects{state="UPSTREAM_FAILED",zone="application"}"#,
            ),
            1.0,
        ),
        (
            "failed batches",
            metric_value(&text, r#"strata_batches{state="FAILED"}"#),
            1.0,
        ),
        ("live agents", sum(&text, "strata_agents_live", &zones), 3.0),
    ];
    let wrong: Vec<String> = checks
        .iter()
        .filter(|(_, got, want)| (got - want).abs() > f64::EPSILON)
        .map(|(what, got, want)| format!("{what}: {got}, expected {want}"))
        .collect();
    ensure!(wrong.is_empty(), "{wrong:#?}\n/metrics:\n{text}");
    // Ids never become labels.
    ensure!(
        !text.contains("1001") && !text.contains(&batch_id),
        "an id appears in /metrics:\n{text}"
    );
    Ok(())
}

async fn grpc_health(stack: &Stack) -> anyhow::Result<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(stack.endpoint())?
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);
    let status = client
        .check(HealthCheckRequest {
            service: "strata.v1.Orchestrator".into(),
        })
        .await?
        .into_inner()
        .status();
    Ok(status)
}

/// Polls readiness until `want` (bounded); returns the last body.
async fn wait_readiness(stack: &Stack, want: u16, grpc: ServingStatus) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        let (code, body) = stack.admin_get("/health/readiness").await?;
        let health = grpc_health(stack).await?;
        if code == want && health == grpc {
            return Ok(body);
        }
        ensure!(
            started.elapsed() < STACK_WAIT,
            "readiness {code} {body}, gRPC health {health:?}; wanted {want} and {grpc:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_follows_redis_away_and_back_and_a_redis_that_lost_its_state()
-> anyhow::Result<()> {
    let mut stack = Stack::start(&[]).await?;
    let (code, body) = stack.admin_get("/health/liveness").await?;
    ensure!(
        code == 200 && body.contains("alive"),
        "liveness {code} {body}"
    );
    let body = wait_readiness(&stack, 200, ServingStatus::Serving).await?;
    let ready: serde_json::Value = serde_json::from_str(&body).context("readiness JSON")?;
    ensure!(ready["status"] == "ready", "{ready}");
    // It says how the gRPC port is reached and who may call: here anyone, in plaintext.
    ensure!(ready["transport"] == "plaintext", "{ready}");
    ensure!(
        ready["authentication"]
            .as_str()
            .is_some_and(|a| a.starts_with("none (--insecure)")),
        "{ready}"
    );
    ensure!(
        ready["zones_without_agents"]
            .as_array()
            .is_some_and(|z| z.len() == 3),
        "no agent runs yet: {ready}"
    );

    // Redis away (frozen: it keeps its data), then back.
    stack.redis.freeze()?;
    let body = within(
        STACK_WAIT,
        "readiness to fail",
        wait_readiness(&stack, 503, ServingStatus::NotServing),
    )
    .await??;
    let down: serde_json::Value = serde_json::from_str(&body)?;
    let reasons = down["reasons"].to_string();
    ensure!(
        down["status"] == "not ready" && reasons.contains("redis") && !reasons.contains("kafka"),
        "{down}"
    );
    let (code, _) = stack.admin_get("/health/liveness").await?;
    ensure!(code == 200, "liveness while Redis is down: {code}");
    stack.redis.thaw()?;
    wait_readiness(&stack, 200, ServingStatus::Serving).await?;

    // Redis back without its data (killed, started again without persistence): never ready
    // again, and says why.
    within(STACK_WAIT, "restart redis", stack.redis.start_again()).await??;
    let body = within(STACK_WAIT, "readiness to report the lost state", async {
        loop {
            let body = wait_readiness(&stack, 503, ServingStatus::NotServing).await?;
            if body.contains("lost the state") {
                return anyhow::Ok(body);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await??;
    ensure!(body.contains("generation"), "{body}");
    let (_, metrics) = stack.admin_get("/metrics").await?;
    ensure!(
        metrics.lines().any(|l| l == "strata_redis_state_lost 1"),
        "strata_redis_state_lost:\n{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_report_their_consumer_lag() -> anyhow::Result<()> {
    let mut stack = Stack::start(&[]).await?;
    // One slow raw agent taking one object at a time: the zone's Ready records wait for it.
    let mut agent = stack.agent(
        "raw",
        "raw",
        &[
            "--processor",
            "simulate",
            "--simulate-duration-ms",
            "250",
            "--concurrency",
            "1",
        ],
        &[],
    )?;
    agent.wait_ready(STACK_WAIT).await?;
    let sample = r#"strata_agent_consumer_lag{zone="raw"}"#;
    let objects: Vec<pb::ObjectDefinition> = (1000..1040)
        .map(|id| object(&id.to_string(), &[]))
        .collect();
    let batch_id = stack.submit("observability-lag", objects).await?;
    // librdkafka reports every 5 s; 40 objects take 10 s.
    let mut lags = Vec::new();
    let started = Instant::now();
    loop {
        lags.push(agent.metric(sample).await?);
        let batch = stack.batch(&batch_id).await?;
        if batch.state() != pb::BatchState::Running {
            break;
        }
        ensure!(
            started.elapsed() < STACK_WAIT,
            "batch still running: {batch:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure!(
        lags.iter().any(|&l| l > 0.0),
        "no lag seen while 40 records waited for one slow agent: {lags:?}"
    );
    // Once everything is consumed, the next report says so.
    let started = Instant::now();
    while agent.metric(sample).await? != 0.0 {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "lag not back to 0: {}",
            agent.metric(sample).await?
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
