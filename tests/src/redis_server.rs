//! A private `redis-server` per test: loopback only, no persistence, free port, own temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

use crate::process::ServerProcess;
use crate::{free_port, on_path, resolve_binary, temp_dir};

/// Env var naming the `redis-server` binary (`./tests/run.sh` exports it).
pub const REDIS_SERVER_BIN_ENV: &str = "STRATA_REDIS_SERVER_BIN";

/// How long a start may take before it is an error (measured: ~10 ms).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Fresh ports tried when the first one was taken between [`free_port`] and the bind.
const PORT_ATTEMPTS: usize = 3;

/// A running (or deliberately stopped) `redis-server` on `127.0.0.1:port()`.
///
/// Started with `--save "" --appendonly no`: nothing survives [`RedisServer::stop`]. The process
/// is killed when this drops.
#[derive(Debug)]
pub struct RedisServer {
    bin: PathBuf,
    port: u16,
    /// TLS only (a self-signed certificate made with the `openssl` command in its dir).
    tls: bool,
    /// The one ACL user (name, password) when the default user is off.
    acl: Option<(String, String)>,
    process: Option<ServerProcess>,
    // Declared last: dropped after the process is dead.
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server on a free port and waits (bounded) until it answers `PING`.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(false, None).await
    }

    /// Like [`RedisServer::start`], but it speaks TLS only, with a self-signed certificate made
    /// by the `openssl` command; [`RedisServer::url`] is then `rediss://…/#insecure` (clients do
    /// not verify the certificate).
    pub async fn start_tls() -> anyhow::Result<Self> {
        Self::start_with(true, None).await
    }

    /// Like [`RedisServer::start_tls`], with the default user off and one ACL user, `user` with
    /// `password`, allowed every key and command: [`RedisServer::url`] then carries them.
    pub async fn start_secured(user: &str, password: &str) -> anyhow::Result<Self> {
        Self::start_with(true, Some((user.to_owned(), password.to_owned()))).await
    }

    async fn start_with(tls: bool, acl: Option<(String, String)>) -> anyhow::Result<Self> {
        let bin = redis_server_binary()?;
        let dir = temp_dir("redis")?;
        if tls {
            self_signed_certificate(dir.path())?;
        }
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            match spawn_ready(&bin, port, dir.path(), tls, acl.as_ref()).await {
                Ok(process) => {
                    return Ok(Self {
                        bin,
                        port,
                        tls,
                        acl,
                        process: Some(process),
                        dir,
                    });
                }
                Err(e) if format!("{e:#}").contains("Address already in use") => {
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// The port it listens on (stable across [`RedisServer::stop`] / [`RedisServer::start_again`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/` (`rediss://127.0.0.1:PORT/#insecure` over TLS), with the ACL
    /// user's name and password when it has one.
    pub fn url(&self) -> String {
        url(self.port, self.tls, self.acl.as_ref())
    }

    /// [`RedisServer::url`] without `#insecure`: a client verifies the server's certificate
    /// (against [`RedisServer::ca_file`], e.g. through OpenSSL's `SSL_CERT_FILE`).
    pub fn verified_url(&self) -> String {
        self.url().trim_end_matches("#insecure").to_owned()
    }

    /// The self-signed certificate of a TLS server (for `127.0.0.1`): its own CA.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// The server's temp dir (holds `redis.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server process is up (started and not stopped).
    pub fn is_running(&mut self) -> bool {
        match self.process.as_mut() {
            Some(p) => matches!(p.exit_status(), Ok(None)),
            None => false,
        }
    }

    /// A new multiplexed connection (bounded connect).
    pub async fn connection(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        connect(&self.url(), Duration::from_secs(5)).await
    }

    /// Kills the server (`SIGKILL`); the port refuses connections until [`Self::start_again`].
    /// All data is lost.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// `SIGSTOP`: the server keeps its data and its connections but answers nothing (every
    /// call times out) until [`Self::thaw`], as a Redis on a paused VM or across a partition.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.process
            .as_ref()
            .context("redis-server is not running")?
            .signal(nix::sys::signal::Signal::SIGSTOP)
    }

    /// `SIGCONT` after [`Self::freeze`]: the server answers again, the calls it received
    /// meanwhile first.
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.process
            .as_ref()
            .context("redis-server is not running")?
            .signal(nix::sys::signal::Signal::SIGCONT)
    }

    /// Starts a new server on the same port after [`Self::stop`] and waits until it answers.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.process = Some(
            spawn_ready(
                &self.bin,
                self.port,
                self.dir.path(),
                self.tls,
                self.acl.as_ref(),
            )
            .await?,
        );
        Ok(())
    }
}

/// The `redis-server` binary: `$STRATA_REDIS_SERVER_BIN`, else the first on `PATH`, else
/// `/usr/bin/redis-server`.
pub fn redis_server_binary() -> anyhow::Result<PathBuf> {
    resolve_binary(
        REDIS_SERVER_BIN_ENV,
        on_path("redis-server")
            .into_iter()
            .chain([PathBuf::from("/usr/bin/redis-server")]),
        "redis-server",
    )
}

fn url(port: u16, tls: bool, acl: Option<&(String, String)>) -> String {
    let credentials = acl.map_or_else(String::new, |(user, password)| {
        format!("{user}:{password}@")
    });
    if tls {
        format!("rediss://{credentials}127.0.0.1:{port}/#insecure")
    } else {
        format!("redis://{credentials}127.0.0.1:{port}/")
    }
}

/// Writes `cert.pem` and `key.pem` (self-signed, one day) into `dir` with the `openssl` command.
fn self_signed_certificate(dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .current_dir(dir)
        .output()
        .context("run openssl (Debian package openssl) to make a test certificate")?;
    if !out.status.success() {
        bail!(
            "openssl req failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Spawns `redis-server` on `port` in `dir` and waits (bounded) until it answers `PING`.
async fn spawn_ready(
    bin: &Path,
    port: u16,
    dir: &Path,
    tls: bool,
    acl: Option<&(String, String)>,
) -> anyhow::Result<ServerProcess> {
    let port_arg = port.to_string();
    let mut command = Command::new(bin);
    if tls {
        command
            .args([
                "--port",
                "0",
                "--tls-port",
                &port_arg,
                "--bind",
                "127.0.0.1",
            ])
            .args(["--tls-cert-file", "cert.pem", "--tls-key-file", "key.pem"])
            .args(["--tls-ca-cert-file", "cert.pem", "--tls-auth-clients", "no"]);
    } else {
        command.args(["--port", &port_arg, "--bind", "127.0.0.1"]);
    }
    if let Some((user, password)) = acl {
        // One argument per word: redis-server joins an option's arguments into one config line.
        command
            .args(["--user", "default", "off", "--user", user, "on"])
            .arg(format!(">{password}"))
            .args(["~*", "&*", "+@all"]);
    }
    command
        .args(["--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--logfile", ""])
        .arg("--dir")
        .arg(dir)
        .current_dir(dir);
    let mut process = ServerProcess::spawn("redis-server", command, &dir.join("redis.log"))?;
    let url = url(port, tls, acl);
    let started = Instant::now();
    loop {
        if let Some(status) = process.exit_status()? {
            bail!(
                "redis-server on port {port} exited during start ({status}); log tail:\n{}",
                process.log_tail()
            );
        }
        if let Ok(mut con) = connect(&url, Duration::from_millis(500)).await {
            let pong = tokio::time::timeout(
                Duration::from_millis(500),
                redis::cmd("PING").query_async::<String>(&mut con),
            )
            .await;
            if matches!(pong, Ok(Ok(ref p)) if p == "PONG") {
                return Ok(process);
            }
        }
        if started.elapsed() > START_TIMEOUT {
            bail!(
                "redis-server on port {port} did not answer PING within {START_TIMEOUT:?}; \
                 log tail:\n{}",
                process.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connect(url: &str, limit: Duration) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).with_context(|| format!("redis url {url}"))?;
    tokio::time::timeout(limit, client.get_multiplexed_async_connection())
        .await
        .with_context(|| format!("connect to {url}: timed out after {limit:?}"))?
        .with_context(|| format!("connect to {url}"))
}
