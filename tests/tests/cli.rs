//! The `strata` CLI as users run it: the real binary against the real control plane binary, real
//! worker agents, the real broker and Redis — and `strata dev` exactly as the README's quick start
//! says. Assertions are on exit codes, what is printed, and the JSON of `--output json` parsed
//! back.
//!
//! Needs the binaries built (`cargo nextest run --workspace`, what `./tests/run.sh` runs, builds
//! them).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::Value;
use strata_proto::v1 as pb;
use strata_tests::stack::{STACK_WAIT, Stack, count};
use strata_tests::worker_agent::WorkerAgent;
use strata_tests::{free_port, within, workspace_binary, workspace_root};

const SAMPLE: &str = "clients/samples/catalogue.json";
const BAD_SAMPLE: &str = "clients/samples/catalogue_unknown_parents.json";
const ZONES: [&str; 3] = ["raw", "standardized", "application"];

/// One finished run of the CLI.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| {
            format!(
                "stdout is not JSON:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

fn cli() -> anyhow::Result<tokio::process::Command> {
    let mut command =
        tokio::process::Command::new(workspace_binary("strata", "strata-cli", "STRATA_CLI_BIN")?);
    command
        .current_dir(workspace_root())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    Ok(command)
}

/// Runs `strata <args>` from the workspace root (bounded) and collects its output.
async fn strata(args: &[&str]) -> anyhow::Result<Run> {
    let out = within(
        STACK_WAIT,
        &format!("strata {}", args.join(" ")),
        cli()?.args(args).output(),
    )
    .await??;
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!(
        "$ strata {}\n  -> exit {}\n{}{}",
        args.join(" "),
        run.code,
        run.stdout,
        run.stderr
    );
    Ok(run)
}

/// Number of records of a sample catalogue.
fn sample_size(path: &str) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(workspace_root().join(path))?;
    let value: Value = serde_json::from_str(&text)?;
    value
        .as_array()
        .map(Vec::len)
        .context("the sample is a JSON array")
}

/// One simulated agent per zone; `raw_args` are added to the raw agent's flags.
async fn agents(stack: &Stack, raw_args: &[&str]) -> anyhow::Result<Vec<WorkerAgent>> {
    let mut out = Vec::new();
    for zone in ZONES {
        let mut args = vec!["--simulate-duration-ms", "10"];
        if zone == "raw" {
            args.extend(raw_args);
        }
        let mut agent = stack.agent(zone, zone, &args, &[])?;
        agent.wait_ready(STACK_WAIT).await?;
        out.push(agent);
    }
    Ok(out)
}

/// The batch id in `batch <id> submitted` (text output).
fn batch_id_of(run: &Run) -> anyhow::Result<String> {
    run.stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("batch ")
                .and_then(|r| r.split_whitespace().next())
        })
        .map(str::to_owned)
        .with_context(|| format!("no batch id in:\n{}", run.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_runs_the_sample_to_success_in_dev_mode() -> anyhow::Result<()> {
    // The README's first command, on a free port.
    let addr = format!("127.0.0.1:{}", free_port()?);
    let run = strata(&["dev", "--addr", &addr, "--submit", SAMPLE]).await?;
    ensure!(run.code == 0, "exit {}: {}", run.code, run.stderr);
    ensure!(run.stdout.contains("SUCCEEDED"), "{}", run.stdout);
    let total = sample_size(SAMPLE)?;
    let all = run
        .stdout
        .lines()
        .find(|l| l.starts_with("all "))
        .context("a per-zone summary with an `all` row")?;
    let cells: Vec<&str> = all.split_whitespace().collect();
    ensure!(
        cells[1] == total.to_string() && cells[2] == total.to_string(),
        "every one of the {total} objects loaded: {all}"
    );
    for zone in ZONES {
        ensure!(
            run.stdout.lines().any(|l| l.starts_with(zone)),
            "no {zone} row:\n{}",
            run.stdout
        );
    }

    // The other way: dev mode serving, and `submit --watch` against it.
    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut dev = cli()?
        .args(["dev", "--addr", &addr])
        .stdout(Stdio::piped())
        .spawn()?;
    let endpoint = format!("http://{addr}");
    within(STACK_WAIT, "dev mode to serve", async {
        loop {
            if strata(&["--endpoint", &endpoint, "agents", "--output", "json"])
                .await?
                .code
                == 0
            {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await??;
    let run = strata(&[
        "--endpoint",
        &endpoint,
        "submit",
        SAMPLE,
        "--all",
        "--watch",
    ])
    .await?;
    ensure!(run.code == 0, "exit {}: {}", run.code, run.stderr);
    ensure!(run.stdout.contains("SUCCEEDED"), "{}", run.stdout);
    let agents = strata(&["--endpoint", &endpoint, "agents", "--output", "json"])
        .await?
        .json()?;
    let zones: Vec<&str> = agents["agents"]
        .as_array()
        .context("agents")?
        .iter()
        .filter_map(|a| a["zone"].as_str())
        .collect();
    ensure!(zones.len() == 3, "one dev agent per zone: {zones:?}");
    dev.start_kill()?;
    Ok(())
}

/// Objects of the generated catalogue `strata dev` runs at zero processing time: 40,000 raw
/// objects released at once, far more than 256-wide agents take (`STRATA_DEV_OBJECTS`
/// overrides it; the 200,000-object timings are in `docs/benchmarks.md`). Bounded at
/// [`DEV_WAIT`]: on a machine loaded by parallel builds and the cluster suite's three JVMs, a
/// debug 200,000-object run took more than 300 s.
const DEV_OBJECTS: usize = 100_000;
/// Bound on that run.
const DEV_WAIT: Duration = Duration::from_secs(300);

/// `strata dev` with zero processing time and 256 attempts per agent: the control plane releases
/// far faster than the agents take records, and every Ready still reaches an agent (the
/// in-memory topics drop nothing): the batch succeeds with every object loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_runs_a_generated_catalogue_at_zero_processing_time_to_success()
-> anyhow::Result<()> {
    let objects = std::env::var("STRATA_DEV_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEV_OBJECTS);
    let dir = tempfile::tempdir()?;
    let catalogue = dir.path().join("catalogue.json");
    std::fs::write(
        &catalogue,
        strata_tests::runnable_catalogue(objects, 20_251_128),
    )?;
    let catalogue = catalogue.to_str().context("a UTF-8 temporary path")?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let args = [
        "dev",
        "--addr",
        &addr,
        "--simulate-duration-ms",
        "0",
        "--concurrency",
        "256",
        "--submit",
        catalogue,
    ];
    let started = std::time::Instant::now();
    let out = within(
        DEV_WAIT,
        &format!("strata dev with {objects} objects"),
        cli()?.args(args).output(),
    )
    .await??;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!(
        "strata dev with {objects} objects: exit {:?} after {:.1} s\n{stdout}",
        out.status.code(),
        started.elapsed().as_secs_f64()
    );
    ensure!(out.status.success(), "{stdout}\n{stderr}");
    ensure!(stdout.contains("SUCCEEDED"), "{stdout}");
    let all = stdout
        .lines()
        .find(|l| l.starts_with("all "))
        .context("a per-zone summary with an `all` row")?;
    let cells: Vec<&str> = all.split_whitespace().collect();
    ensure!(
        cells[1] == objects.to_string() && cells[2] == objects.to_string(),
        "every one of the {objects} objects loaded: {all}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_submit_watch_object_and_dead_letter_replay_on_the_real_stack() -> anyhow::Result<()> {
    let mut stack = Stack::start(&["--topic-partitions", "2"]).await?;
    let endpoint = stack.endpoint();
    let e = ["--endpoint", endpoint.as_str()];
    let mut agents = agents(&stack, &["--simulate-fail-suffix", "1004"]).await?;

    // plan: readable and JSON, nothing submitted.
    let plan = strata(&[&e[..], &["plan", SAMPLE, "--all"]].concat()).await?;
    ensure!(
        plan.code == 0 && plan.stdout.contains("critical path"),
        "{plan:?}"
    );
    ensure!(plan.stdout.contains("wave 0:"), "{}", plan.stdout);
    let json = strata(&[&e[..], &["plan", SAMPLE, "--all", "--output", "json"]].concat())
        .await?
        .json()?;
    let total = sample_size(SAMPLE)?;
    ensure!(json["summary"]["objectCount"] == total, "{json}");
    ensure!(
        json["objects"].as_array().map(Vec::len) == Some(total),
        "{json}"
    );

    // submit --watch: 1004 fails for good, the batch fails, exit 1, and the summary says why.
    let run = strata(&[&e[..], &["submit", SAMPLE, "--all", "--watch"]].concat()).await?;
    ensure!(run.code == 1, "a failed batch exits 1: {run:?}");
    ensure!(run.stdout.contains("FAILED"), "{}", run.stdout);
    ensure!(run.stdout.contains("dead: 1004 (raw)"), "{}", run.stdout);
    let batch_id = batch_id_of(&run)?;

    // object and dlq list, as JSON.
    let object = strata(&[&e[..], &["object", &batch_id, "1004", "--output", "json"]].concat())
        .await?
        .json()?;
    ensure!(object["state"] == "OBJECT_STATE_DEAD", "{object}");
    ensure!(
        object["lastError"]
            .as_str()
            .is_some_and(|s| s.contains("1004")),
        "{object}"
    );
    let text = strata(&[&e[..], &["object", &batch_id, "1004"]].concat()).await?;
    ensure!(
        text.stdout.contains("state DEAD") && text.stdout.contains("history:"),
        "{}",
        text.stdout
    );
    let dlq = strata(&[&e[..], &["dlq", "list", &batch_id, "--output", "json"]].concat())
        .await?
        .json()?;
    let dead: Vec<&str> = dlq["deadLetters"]
        .as_array()
        .context("deadLetters")?
        .iter()
        .filter_map(|d| d["objectId"].as_str())
        .collect();
    ensure!(dead == ["1004"], "{dlq}");

    // Replace the failing raw agent, replay, and the batch succeeds.
    agents[0].terminate()?;
    ensure!(agents[0].wait_exit(STACK_WAIT).await?.success(), "drained");
    let mut raw = stack.agent("raw-fixed", "raw", &["--simulate-duration-ms", "10"], &[])?;
    raw.wait_ready(STACK_WAIT).await?;
    let replay = strata(&[&e[..], &["dlq", "replay", &batch_id, "--watch"]].concat()).await?;
    ensure!(replay.code == 0, "{replay:?}");
    ensure!(
        replay.stdout.contains("replayed 1 object(s): 1004"),
        "{}",
        replay.stdout
    );
    let batch = stack.batch(&batch_id).await?;
    ensure!(batch.state() == pb::BatchState::Succeeded, "{batch:?}");
    ensure!(
        count(&batch, pb::ObjectState::Loaded) as usize == total,
        "{batch:?}"
    );
    let status = strata(&[&e[..], &["status", &batch_id, "--output", "json"]].concat())
        .await?
        .json()?;
    ensure!(status["state"] == "BATCH_STATE_SUCCEEDED", "{status}");

    // A catalogue with unknown parents: exit 2, and the error names them.
    let bad = strata(&[&e[..], &["submit", BAD_SAMPLE]].concat()).await?;
    ensure!(bad.code == 2, "{bad:?}");
    for id in ["2011", "2017", "2023", "2031"] {
        ensure!(bad.stderr.contains(id), "{id} not named: {}", bad.stderr);
    }
    ensure!(
        bad.stderr.trim().lines().count() == 1,
        "one line: {}",
        bad.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_listed_and_a_cancelled_batch_watches_to_exit_1() -> anyhow::Result<()> {
    // Every raw attempt fails retryably, and the next attempt is ten minutes away.
    let mut stack = Stack::start(&[
        "--topic-partitions",
        "2",
        "--initial-backoff-ms",
        "600000",
        "--max-backoff-ms",
        "600000",
    ])
    .await?;
    let endpoint = stack.endpoint();
    let e = ["--endpoint", endpoint.as_str()];
    let _agents = agents(&stack, &["--simulate-fail-rate", "1"]).await?;
    let run = strata(
        &[
            &e[..],
            &[
                "submit",
                SAMPLE,
                "--all",
                "--idempotency-key",
                "retries-test",
            ],
        ]
        .concat(),
    )
    .await?;
    ensure!(run.code == 0, "{run:?}");
    let batch_id = batch_id_of(&run)?;
    let raw = sample_size(SAMPLE)?; // an upper bound on the raw objects
    let retries = within(STACK_WAIT, "raw objects to wait for a retry", async {
        loop {
            let json = strata(&[&e[..], &["retries", &batch_id, "--output", "json"]].concat())
                .await?
                .json()?;
            let n = json["retries"].as_array().map_or(0, Vec::len);
            let batch = stack.batch(&batch_id).await?;
            if n > 0 && n as u32 == count(&batch, pb::ObjectState::RetryWait) {
                return anyhow::Ok(json);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await??;
    for r in retries["retries"].as_array().context("retries")? {
        ensure!(r["zone"] == "raw" && r["attempt"] == 1, "{r}");
        ensure!(r["nextAttemptAt"].is_string(), "a due time: {r}");
        ensure!(
            r["objectId"].as_str().is_some_and(|id| id.starts_with('1')),
            "{r}"
        );
    }
    ensure!(retries["retries"].as_array().map_or(0, Vec::len) <= raw);
    // The same submission again is the same batch.
    let again = strata(
        &[
            &e[..],
            &[
                "submit",
                SAMPLE,
                "--all",
                "--idempotency-key",
                "retries-test",
            ],
        ]
        .concat(),
    )
    .await?;
    ensure!(
        batch_id_of(&again)? == batch_id && again.stdout.contains("already submitted"),
        "{again:?}"
    );

    let cancel = strata(&[&e[..], &["cancel", &batch_id]].concat()).await?;
    ensure!(
        cancel.code == 0 && cancel.stdout.contains("CANCELLED"),
        "{cancel:?}"
    );
    let watch = strata(&[&e[..], &["watch", &batch_id]].concat()).await?;
    ensure!(
        watch.code == 1,
        "a cancelled batch is not a success: {watch:?}"
    );
    ensure!(watch.stdout.contains("CANCELLED"), "{}", watch.stdout);
    stack
        .wait_state(&batch_id, pb::BatchState::Cancelled)
        .await?;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_endpoint_is_one_actionable_line_and_exit_3() -> anyhow::Result<()> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let run = strata(&["--endpoint", &addr, "status"]).await?;
    ensure!(run.code == 3, "{run:?}");
    ensure!(run.stderr.trim().lines().count() == 1, "{}", run.stderr);
    ensure!(
        run.stderr.contains(&addr) && run.stderr.contains("strata dev"),
        "{}",
        run.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalogue_beyond_the_unary_message_limit_is_submitted_in_a_stream() -> anyhow::Result<()>
{
    let mut stack = Stack::start(&[]).await?;
    let endpoint = stack.endpoint();
    // About 20 MiB of seed records, above the 16 MiB limit of a unary SubmitBatch.
    let description = "d".repeat(1200);
    let records: Vec<Value> = (0..17_000)
        .map(|i| {
            serde_json::json!({
                "IdObjet": 1000 + (i % 1000) + 10_000 * (i / 1000),
                "NomObjet": format!("raw object {i}"),
                "Zone": "raw",
                "Description": description,
            })
        })
        .collect();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("big.json");
    std::fs::write(&path, serde_json::to_vec(&records)?)?;
    let size = std::fs::metadata(&path)?.len();
    ensure!(size > 16 << 20, "the catalogue is only {size} bytes");
    let path = path.display().to_string();
    let run = strata(&["--endpoint", &endpoint, "submit", &path, "--all"]).await?;
    ensure!(run.code == 0, "exit {}: {}", run.code, run.stderr);
    let batch_id = batch_id_of(&run)?;
    let batch = stack.batch(&batch_id).await?;
    let planned: u32 = batch.counts.iter().map(|c| c.count).sum();
    ensure!(
        planned == 17_000,
        "the batch holds {planned} objects: {:?}",
        batch.counts
    );
    Ok(())
}
