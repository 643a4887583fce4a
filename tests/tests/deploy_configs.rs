//! The observability configs in `deploy/observability` (Prometheus scrape config, alert rules and
//! their promtool unit tests, the Grafana dashboard) pass `deploy/observability/check.sh`, and
//! that check really fails on the mistakes it is there for: a metric that does not exist, a
//! PromQL syntax error, an alert that no longer fires as its unit test says, a label value the
//! code never sets, a duplicated panel id, a panel without the datasource.
//!
//! Needs promtool (`STRATA_PROMTOOL_BIN`, else on the `PATH`): `./tests/run.sh` provisions it
//! (Debian's `prometheus` package, through `deploy/local/provision.sh promtool`). No build of
//! the binaries: the metric names are read from the sources that declare them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::Value;
use strata_tests::{temp_dir, within, workspace_root};

/// Bound on one run of check.sh (three promtool runs and a Python script: about a second).
const CHECK_LIMIT: Duration = Duration::from_secs(120);

struct Check {
    ok: bool,
    output: String,
}

/// Runs check.sh on `dir` (metrics from this repository's sources).
async fn check(dir: &Path) -> anyhow::Result<Check> {
    let root = workspace_root();
    let mut command = tokio::process::Command::new("bash");
    command
        .arg(root.join("deploy/observability/check.sh"))
        .arg("--dir")
        .arg(dir)
        .arg("--root")
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = within(
        CHECK_LIMIT,
        "deploy/observability/check.sh",
        command.output(),
    )
    .await??;
    Ok(Check {
        ok: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

fn observability_dir() -> PathBuf {
    workspace_root().join("deploy/observability")
}

/// A copy of deploy/observability to break.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Replaces the first `from` in `file` (relative to `dir`) by `to`; fails when `from` is not
/// there (the mutation would test nothing).
fn replace_in(dir: &Path, file: &str, from: &str, to: &str) -> anyhow::Result<()> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path)?;
    ensure!(text.contains(from), "{file} has no {from:?} to break");
    std::fs::write(&path, text.replacen(from, to, 1))?;
    Ok(())
}

const DASHBOARD: &str = "grafana/strata-dashboard.json";

fn edit_dashboard(dir: &Path, edit: impl FnOnce(&mut Vec<Value>)) -> anyhow::Result<()> {
    let path = dir.join(DASHBOARD);
    let mut dash: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let panels = dash["panels"]
        .as_array_mut()
        .context("the dashboard has a panels array")?;
    edit(panels);
    std::fs::write(&path, serde_json::to_string_pretty(&dash)?)?;
    Ok(())
}

/// The first non-row panel.
fn first_graph(panels: &mut [Value]) -> &mut Value {
    panels
        .iter_mut()
        .find(|p| p["type"] != "row")
        .expect("the dashboard has a panel")
}

#[tokio::test]
async fn observability_configs_pass_the_check() -> anyhow::Result<()> {
    let run = check(&observability_dir()).await?;
    ensure!(
        run.ok,
        "deploy/observability/check.sh failed:\n{}",
        run.output
    );
    for step in [
        "ok    promtool check config prometheus.yml",
        "ok    promtool check rules alerts.yml",
        "ok    promtool test rules alerts.test.yml",
        "ok    metric names",
    ] {
        ensure!(run.output.contains(step), "no {step:?} in:\n{}", run.output);
    }
    Ok(())
}

#[tokio::test]
async fn the_check_fails_on_broken_configs() -> anyhow::Result<()> {
    type Break = Box<dyn Fn(&Path) -> anyhow::Result<()>>;
    // (what is broken, how, what the check must say)
    let cases: Vec<(&str, Break, &str)> = vec![
        (
            "a misspelt metric in an alert",
            Box::new(|d| {
                replace_in(
                    d,
                    "alerts.yml",
                    "increase(strata_dead_letters_total[15m])",
                    "increase(strata_dead_letter_total[15m])",
                )
            }),
            "unknown metric strata_dead_letter_total",
        ),
        (
            "a label the metric does not have",
            Box::new(|d| {
                replace_in(
                    d,
                    "alerts.yml",
                    "strata_objects{state=\"READY\"}",
                    "strata_objects{status=\"READY\"}",
                )
            }),
            "strata_objects has no label status",
        ),
        (
            "a state the code never sets",
            Box::new(|d| {
                replace_in(
                    d,
                    "alerts.yml",
                    "strata_objects{state=\"READY\"}",
                    "strata_objects{state=\"QUEUED\"}",
                )
            }),
            "no such state in the Rust sources",
        ),
        (
            "a PromQL syntax error",
            Box::new(|d| {
                replace_in(
                    d,
                    "alerts.yml",
                    "sum by (zone, op) (increase(strata_agent_kafka_errors_total[5m])) > 0",
                    "sum by (zone, op) (increase(strata_agent_kafka_errors_total[5m]) > 0",
                )
            }),
            "FAIL  promtool check rules alerts.yml",
        ),
        (
            "an alert that no longer fires as its unit test expects",
            Box::new(|d| {
                replace_in(
                    d,
                    "alerts.yml",
                    "(strata_agent_consumer_lag >= 0) > 100",
                    "(strata_agent_consumer_lag >= 0) > 1000",
                )
            }),
            "FAIL  promtool test rules alerts.test.yml",
        ),
        (
            "a misspelt metric in the dashboard",
            Box::new(|d| {
                replace_in(
                    d,
                    DASHBOARD,
                    "sum by (zone) (strata_agents_live{",
                    "sum by (zone) (strata_agent_live{",
                )
            }),
            "unknown metric strata_agent_live",
        ),
        (
            "an unknown PromQL function in the dashboard",
            Box::new(|d| replace_in(d, DASHBOARD, "(rate(strata_", "(rat(strata_")),
            "unknown PromQL function rat()",
        ),
        (
            "two dashboard panels with one id",
            Box::new(|d| {
                edit_dashboard(d, |panels| {
                    let id = panels[0]["id"].clone();
                    first_graph(panels)["id"] = id;
                })
            }),
            "also used by panel",
        ),
        (
            "a dashboard panel without its datasource",
            Box::new(|d| {
                edit_dashboard(d, |panels| {
                    first_graph(panels)
                        .as_object_mut()
                        .expect("a panel is an object")
                        .remove("datasource");
                })
            }),
            "datasource must be",
        ),
        (
            "a dashboard that is not JSON",
            Box::new(|d| replace_in(d, DASHBOARD, "\"panels\": [", "\"panels\": [[")),
            "not valid JSON",
        ),
    ];
    let tmp = temp_dir("deploy-configs")?;
    let mut failures = Vec::new();
    for (i, (what, break_it, expected)) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("case-{i}"));
        copy_dir(&observability_dir(), &dir)?;
        break_it(&dir).with_context(|| format!("breaking: {what}"))?;
        let run = check(&dir).await?;
        if run.ok {
            failures.push(format!("{what}: check.sh passed:\n{}", run.output));
        } else if !run.output.contains(expected) {
            failures.push(format!(
                "{what}: check.sh failed without saying {expected:?}:\n{}",
                run.output
            ));
        }
    }
    ensure!(
        failures.is_empty(),
        "check.sh missed {} of {} broken configs:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    Ok(())
}
