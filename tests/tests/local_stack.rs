//! `deploy/local/stack.sh` as the README tells users to run it: `up --detach` starts the real
//! broker (its default, Apache Kafka), Redis, control plane and one agent per zone; the `strata` CLI submits the sample
//! catalogue to the endpoint it printed and watches it to success; `down` stops everything, and
//! no process it started is left. `down` runs even when a check fails (and, if the test panics,
//! from a drop guard).
//!
//! The script gets the binaries cargo built beside this test (`STRATA_BIN_DIR`, so it builds
//! nothing), the broker's jars and Redis the harness uses (`STRATA_KAFKA_LIBS`,
//! `STRATA_REDIS_SERVER_BIN`, so it provisions nothing), free ports, and a temp run dir. Needs
//! the binaries built (`cargo nextest run --workspace`, what `./tests/run.sh` runs, builds them;
//! or `cargo build -p strata-control-plane -p strata-worker-agent -p strata-cli`).

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;
use strata_tests::apache_kafka::kafka_libs;
use strata_tests::control_plane::control_plane_binary;
use strata_tests::redis_server::redis_server_binary;
use strata_tests::worker_agent::worker_agent_binary;
use strata_tests::{free_port, temp_dir, within, workspace_binary, workspace_root};
use tempfile::TempDir;

const SAMPLE: &str = "clients/samples/catalogue.json";
const ZONES: [&str; 3] = ["raw", "standardized", "application"];
const COMPONENTS: [&str; 6] = [
    "redis",
    "broker",
    "control-plane",
    "agent-raw",
    "agent-standardized",
    "agent-application",
];
/// Bound on one run of the script or the CLI (the script bounds its own waits too).
const RUN_LIMIT: Duration = Duration::from_secs(180);
/// Fresh ports tried when one was taken between choosing and binding it.
const PORT_ATTEMPTS: usize = 3;

/// One finished run of a command.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(what: &str, mut command: tokio::process::Command) -> anyhow::Result<Run> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = within(RUN_LIMIT, what, command.output()).await??;
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!(
        "$ {what}\n  -> exit {}\n{}{}",
        run.code, run.stdout, run.stderr
    );
    Ok(run)
}

/// `n` consecutive ports on 127.0.0.1 that were free a moment ago.
fn free_ports(n: u16) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let first = free_port()?;
        if first > u16::MAX - n {
            continue;
        }
        if (1..n).all(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, first + i)).is_ok()) {
            return Ok(first);
        }
    }
    bail!("no {n} consecutive free ports found")
}

/// `deploy/local/stack.sh` with its own run dir, ports and binaries; `down` on drop unless done.
#[derive(Debug)]
struct LocalStack {
    script: PathBuf,
    env: Vec<(String, String)>,
    run_dir: PathBuf,
    down_done: bool,
    // Declared last: removed after the drop guard ran `down`.
    dir: TempDir,
}

impl LocalStack {
    fn new() -> anyhow::Result<Self> {
        let dir = temp_dir("local-stack")?;
        // STRATA_BIN_DIR must hold all three binaries: link the resolved ones into one dir.
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir(&bin_dir)?;
        for (name, path) in [
            ("strata-control-plane", control_plane_binary()?),
            ("strata-worker-agent", worker_agent_binary()?),
            (
                "strata",
                workspace_binary("strata", "strata-cli", "STRATA_CLI_BIN")?,
            ),
        ] {
            std::os::unix::fs::symlink(&path, bin_dir.join(name))
                .with_context(|| format!("link {}", path.display()))?;
        }
        let run_dir = dir.path().join("run");
        let mut env = vec![
            ("STRATA_BIN_DIR".to_owned(), path_string(&bin_dir)?),
            ("STRATA_STACK_DIR".to_owned(), path_string(&run_dir)?),
            ("STRATA_KAFKA_LIBS".to_owned(), path_string(&kafka_libs()?)?),
            (
                "STRATA_REDIS_SERVER_BIN".to_owned(),
                path_string(&redis_server_binary()?)?,
            ),
            (
                "STRATA_AGENT_ARGS".to_owned(),
                "--simulate-duration-ms 10".to_owned(),
            ),
            ("STRATA_STACK_WAIT_SECS".to_owned(), "90".to_owned()),
            ("STRATA_STACK_STOP_SECS".to_owned(), "30".to_owned()),
        ];
        for var in ["PATH", "HOME", "JAVA_HOME"] {
            if let Ok(value) = std::env::var(var) {
                env.push((var.to_owned(), value));
            }
        }
        Ok(Self {
            script: workspace_root().join("deploy/local/stack.sh"),
            env,
            run_dir,
            down_done: false,
            dir,
        })
    }

    /// The script with `args`, from an empty environment plus ours, run from the temp dir (not
    /// the repository: the script works from any directory).
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.script);
        command
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    async fn script(&self, args: &[&str]) -> anyhow::Result<Run> {
        run(&format!("stack.sh {}", args.join(" ")), self.command(args)).await
    }

    /// `up --detach` on free ports (new ones if a port was taken in between); returns the
    /// what it printed to export for the CLI (`STRATA_ENDPOINT`, `STRATA_CA`,
    /// `STRATA_TOKEN_FILE`).
    async fn up(&mut self) -> anyhow::Result<Exports> {
        for attempt in 1..=PORT_ATTEMPTS {
            let admin = free_ports(3)?;
            let mut ports = vec![admin, admin + 1, admin + 2];
            let mut named = Vec::new();
            for var in [
                "STRATA_GRPC_PORT",
                "STRATA_ADMIN_PORT",
                "STRATA_KAFKA_PORT",
                "STRATA_KAFKA_CONTROLLER_PORT",
                "STRATA_REDIS_PORT",
            ] {
                let port = loop {
                    let p = free_port()?;
                    if !ports.contains(&p) {
                        break p;
                    }
                };
                ports.push(port);
                named.push((var.to_owned(), port.to_string()));
            }
            named.push(("STRATA_AGENT_ADMIN_PORT".to_owned(), admin.to_string()));
            self.env.retain(|(k, _)| !named.iter().any(|(n, _)| n == k));
            self.env.extend(named);
            let up = self.script(&["up", "--detach"]).await?;
            if up.code == 0 {
                let exports: Exports = up
                    .stdout
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix("export "))
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                for var in ["STRATA_ENDPOINT", "STRATA_CA", "STRATA_TOKEN_FILE"] {
                    ensure!(
                        exports.iter().any(|(k, _)| k == var),
                        "no {var} printed:\n{}",
                        up.stdout
                    );
                }
                return Ok(exports);
            }
            let taken = up.stderr.contains("is taken") || up.stderr.contains("in use");
            if !taken || attempt == PORT_ATTEMPTS {
                bail!("stack.sh up --detach: exit {}\n{}", up.code, up.stderr);
            }
        }
        bail!("stack.sh up --detach: no free ports after {PORT_ATTEMPTS} attempts")
    }

    /// `(component, pid, start time)` of every pid file in the run dir.
    fn recorded_pids(&self) -> anyhow::Result<Vec<(String, u32, String)>> {
        let mut out = Vec::new();
        let pids = self.run_dir.join("pids");
        let Ok(entries) = std::fs::read_dir(&pids) else {
            return Ok(out);
        };
        for entry in entries {
            let path = entry?.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".pid"))
            else {
                continue;
            };
            let text = std::fs::read_to_string(&path)?;
            let mut fields = text.split_whitespace();
            let pid = fields.next().context("pid")?.parse()?;
            let start = fields.next().unwrap_or_default().to_owned();
            out.push((name.to_owned(), pid, start));
        }
        out.sort();
        Ok(out)
    }

    async fn down(&mut self) -> anyhow::Result<Run> {
        self.down_done = true;
        self.script(&["down"]).await
    }
}

impl Drop for LocalStack {
    /// A test that panicked still stops the stack: `down`, then SIGKILL for anything left.
    fn drop(&mut self) {
        if self.down_done {
            return;
        }
        let recorded = self.recorded_pids().unwrap_or_default();
        let mut command = std::process::Command::new(&self.script);
        command
            .arg("down")
            .current_dir(self.dir.path())
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if let Ok(mut child) = command.spawn() {
            let started = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && started.elapsed() < RUN_LIMIT {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for (_, pid, start) in recorded {
            if alive(pid, &start) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn path_string(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Whether `pid` still runs as the process that started at `start` (field 22 of
/// `/proc/<pid>/stat`; a zombie or a reused pid is not it).
fn alive(pid: u32, start: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    !matches!(fields.first(), Some(&"Z") | Some(&"X")) && fields.get(19) == Some(&start)
}

/// What `up` prints to export: `(variable, value)`.
type Exports = Vec<(String, String)>;

/// `strata <args>` from the repository root, from an empty environment but `exports`.
async fn strata(args: &[&str], exports: &Exports) -> anyhow::Result<Run> {
    let mut command =
        tokio::process::Command::new(workspace_binary("strata", "strata-cli", "STRATA_CLI_BIN")?);
    command
        .args(args)
        .current_dir(workspace_root())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .envs(exports.iter().map(|(k, v)| (k, v)));
    run(&format!("strata {}", args.join(" ")), command).await
}

/// Number of records of the sample catalogue.
fn sample_size() -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(workspace_root().join(SAMPLE))?;
    let value: Value = serde_json::from_str(&text)?;
    value
        .as_array()
        .map(Vec::len)
        .context("the sample is a JSON array")
}

/// Everything between `up` and `down`.
async fn use_the_stack(stack: &LocalStack, exports: &Exports) -> anyhow::Result<()> {
    // status: every component running, and a log file for each.
    let status = stack.script(&["status"]).await?;
    ensure!(status.code == 0, "status while up: {status:?}");
    for name in COMPONENTS {
        ensure!(
            status
                .stdout
                .lines()
                .any(|l| l.starts_with(name) && l.contains(" running ")),
            "{name} not running:\n{}",
            status.stdout
        );
        let log = stack.run_dir.join("logs").join(format!("{name}.log"));
        ensure!(log.is_file(), "no log {}", log.display());
    }

    // Without the token it printed, the stack refuses the CLI.
    let anonymous: Exports = exports
        .iter()
        .filter(|(k, _)| k != "STRATA_TOKEN_FILE")
        .cloned()
        .collect();
    let refused = strata(&["status"], &anonymous).await?;
    ensure!(
        refused.code != 0 && refused.stderr.contains("no credentials"),
        "status without a token: {refused:?}"
    );
    // The README's submit, with what it printed (TLS endpoint, CA, operator token): every object
    // loaded, per zone.
    let run = strata(&["submit", SAMPLE, "--all", "--watch"], exports).await?;
    ensure!(run.code == 0, "exit {}: {}", run.code, run.stderr);
    ensure!(run.stdout.contains("SUCCEEDED"), "{}", run.stdout);
    let rows: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cells| cells.len() >= 3)
        .collect();
    let header = rows
        .iter()
        .find(|cells| cells[0] == "zone" && cells[1] == "total")
        .with_context(|| format!("no per-zone summary:\n{}", run.stdout))?;
    let loaded = header
        .iter()
        .position(|c| *c == "LOADED")
        .context("a LOADED column")?;
    let total = sample_size()?;
    let mut sum = 0;
    for zone in ZONES {
        let row = rows
            .iter()
            .find(|cells| cells[0] == zone)
            .with_context(|| format!("no {zone} row:\n{}", run.stdout))?;
        ensure!(
            row[1] != "0" && row.get(loaded) == Some(&row[1]),
            "every {zone} object loaded: {row:?}"
        );
        sum += row[1].parse::<usize>()?;
    }
    let all = rows
        .iter()
        .find(|cells| cells[0] == "all")
        .context("an `all` row")?;
    ensure!(
        all[1] == total.to_string() && all.get(loaded) == Some(&all[1]) && sum == total,
        "all {total} objects loaded: {all:?}"
    );

    // One live agent per zone.
    let agents = strata(&["agents", "--output", "json"], exports).await?;
    ensure!(agents.code == 0, "{agents:?}");
    let json: Value = serde_json::from_str(&agents.stdout).context("agents JSON")?;
    let list = json["agents"].as_array().context("agents")?;
    for zone in ZONES {
        let live = list
            .iter()
            .filter(|a| a["zone"] == zone && a["state"] == "AGENT_STATE_ACTIVE")
            .count();
        ensure!(live == 1, "one live {zone} agent, not {live}: {json}");
    }
    ensure!(list.len() == ZONES.len(), "three agents: {json}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_stack_script_runs_the_sample_and_stops_everything() -> anyhow::Result<()> {
    let mut stack = LocalStack::new()?;
    let used = match stack.up().await {
        Ok(exports) => use_the_stack(&stack, &exports).await,
        Err(e) => Err(e),
    };
    // Always `down`, and check that nothing is left, whatever happened above.
    let recorded = stack.recorded_pids()?;
    let down = stack.down().await?;
    used?;
    ensure!(down.code == 0, "down: {down:?}");
    ensure!(
        recorded.len() == COMPONENTS.len(),
        "a pid file per component: {recorded:?}"
    );
    let left: Vec<_> = recorded
        .iter()
        .filter(|(_, pid, start)| alive(*pid, start))
        .collect();
    ensure!(left.is_empty(), "still running after down: {left:?}");
    ensure!(
        stack.recorded_pids()?.is_empty(),
        "pid files left after down: {:?}",
        stack.recorded_pids()?
    );
    let status = stack.script(&["status"]).await?;
    ensure!(status.code == 3, "status after down: {status:?}");
    Ok(())
}
