//! The real `strata-worker-agent` binary as a child process: started against a control plane,
//! probed through its admin port, stopped with `SIGTERM` (drain) or `kill -9`.
//!
//! The binary is `$STRATA_WORKER_AGENT_BIN` if set, else the one cargo built beside the running
//! test (see [`crate::workspace_binary`]). It runs from an empty environment (only `PATH`, the
//! `STRATA_LOG` level and what the test passes), with its admin port on a free loopback port and
//! its log in `agent.log` in its temp dir.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::process::ServerProcess;
use crate::{free_port, temp_dir, workspace_binary};

/// Env var naming the `strata-worker-agent` binary to run.
pub const WORKER_AGENT_BIN_ENV: &str = "STRATA_WORKER_AGENT_BIN";
/// Passed to the agent as `STRATA_LOG` if set (default `info`).
pub const WORKER_AGENT_LOG_ENV: &str = "STRATA_TEST_AGENT_LOG";

/// A running (or stopped) `strata-worker-agent`, killed when this drops.
#[derive(Debug)]
pub struct WorkerAgent {
    name: String,
    process: ServerProcess,
    admin_port: u16,
    // Declared last: dropped after the process is dead.
    dir: TempDir,
}

impl WorkerAgent {
    /// Starts an agent named `name` (a label for logs) for `zone` against the control plane at
    /// `endpoint`, with `extra_args` (any of its flags) and `env` added to its environment. Does
    /// not wait: see [`Self::wait_ready`].
    pub fn start(
        name: &str,
        endpoint: &str,
        zone: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let bin = worker_agent_binary()?;
        let dir = temp_dir(&format!("agent-{name}"))?;
        let admin_port = free_port()?;
        let mut command = Command::new(&bin);
        command
            .args(["--zone", zone, "--control-plane", endpoint])
            .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .args(["--hostname", name])
            .args(extra_args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NO_COLOR", "1")
            .env(
                "STRATA_LOG",
                std::env::var(WORKER_AGENT_LOG_ENV).unwrap_or_else(|_| "info".into()),
            );
        for (k, v) in env {
            command.env(k, v);
        }
        let process = ServerProcess::spawn(
            &format!("strata-worker-agent {name}"),
            command,
            &dir.path().join("agent.log"),
        )?;
        Ok(Self {
            name: name.to_owned(),
            process,
            admin_port,
            dir,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its temp dir (the working directory of the agent and its processors).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The last few KB of its log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// `GET path` on the admin port: `(status, body)`.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.admin_port, path).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = self.admin_get("/metrics").await?;
        if status != 200 {
            bail!("{}: /metrics answered {status}: {body}", self.name);
        }
        Ok(body)
    }

    /// The value of the sample `name_with_labels` (e.g. `strata_agent_readies_total{verdict="accepted",zone="raw"}`)
    /// in `/metrics`; 0 when absent.
    pub async fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        Ok(metric_value(&self.metrics().await?, sample))
    }

    /// Waits (bounded by `limit`) until `/health/readiness` answers 200; fails with the last
    /// answer and the log tail, or at once if the process exits.
    pub async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.process.exit_status()? {
                bail!(
                    "{} exited ({status}) before it was ready; log tail:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            let last = match self.admin_get("/health/readiness").await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("{code} {body}"),
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() > limit {
                bail!(
                    "{} not ready within {limit:?} (last answer: {last}); log tail:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends `SIGTERM` (the agent drains).
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.process.terminate()
    }

    /// `SIGKILL`, reaped.
    pub fn kill_9(&mut self) {
        self.process.kill();
    }

    /// `Some(status)` once it exited.
    pub fn exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.process.exit_status()
    }

    /// Waits (bounded) for it to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.process.exit_status()? {
                return Ok(status);
            }
            if started.elapsed() > limit {
                bail!(
                    "{} did not exit within {limit:?}; log tail:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The agent binary: `$STRATA_WORKER_AGENT_BIN`, else `strata-worker-agent` beside the running
/// test executable.
pub fn worker_agent_binary() -> anyhow::Result<PathBuf> {
    workspace_binary(
        "strata-worker-agent",
        "strata-worker-agent",
        WORKER_AGENT_BIN_ENV,
    )
}

/// A plain HTTP/1.1 `GET http://127.0.0.1:port/path` (bounded to 5 s): `(status, body)`.
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let call = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .context("no HTTP answer within 5 s")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of one sample line of a Prometheus text exposition; 0 when absent.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}
