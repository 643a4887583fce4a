//! The real `strata-control-plane` binary as a child process, for fault suites that must
//! `kill -9` it and start it again on the same port.
//!
//! The binary is `$STRATA_CONTROL_PLANE_BIN` if set, else the one cargo built beside the running
//! test: a test executable is `<target>/<profile>/deps/<test>-<hash>`, the workspace's binaries
//! are `<target>/<profile>/<name>`. `cargo nextest run --workspace` (what `./tests/run.sh` runs)
//! builds them; `-p strata-tests` alone does not, so build it first
//! (`cargo build -p strata-control-plane --bin strata-control-plane`). The target dir may be
//! shared with other checkouts, which build the same name there: build it from this checkout right
//! before running, or point `STRATA_CONTROL_PLANE_BIN` at the one to test.
//!
//! It is configured by flags only, from an empty environment (nothing `STRATA_*` of the caller's
//! leaks in, only `PATH`, the log level and what [`ControlPlane::start_with_env`] adds): gRPC on
//! `127.0.0.1:<free port>`, the given broker and Redis, plus any extra flags.
//! [`ControlPlane::start`] returns once gRPC answers a `GetBatch` (which the driver serves, so
//! after the restart recovery has reloaded every active batch). Logs (`STRATA_LOG`, default
//! `info`) go to `control-plane.log` in its temp dir.
//!
//! [`ControlPlane::start_tls_on`] serves gRPC over TLS ([`GrpcTls`]: `--tls-cert`, `--tls-key`,
//! and `--tls-client-ca` for mutual TLS); its [`ControlPlane::endpoint`] is then `https://…`
//! and [`ControlPlane::tls`] holds the CA a client trusts.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use nix::sys::signal::Signal;
use strata_client::{ClientOptions, Security, Token};
use strata_proto::v1::GetBatchRequest;
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use tempfile::TempDir;

use crate::certs::CertFiles;
use crate::process::ServerProcess;
use crate::{TestBroker, free_port, temp_dir, workspace_binary};

/// Env var naming the `strata-control-plane` binary to run.
pub const CONTROL_PLANE_BIN_ENV: &str = "STRATA_CONTROL_PLANE_BIN";
/// Passed to the control plane as `STRATA_LOG` if set (default `info`).
pub const CONTROL_PLANE_LOG_ENV: &str = "STRATA_TEST_CONTROL_PLANE_LOG";

/// How long a (re)start may take before it is an error. A restart rejoins the results consumer
/// group and reloads every active batch; it is normally done in a second or two.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one readiness probe call.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Fresh ports tried when the first one was taken between [`free_port`] and the bind.
const PORT_ATTEMPTS: usize = 3;
/// The batch id the readiness probe asks for (answered `NOT_FOUND`).
const PROBE_BATCH_ID: &str = "strata-tests-readiness-probe";

/// The TLS of a control plane's gRPC port.
#[derive(Debug, Clone)]
pub struct GrpcTls {
    /// The CA that signed [`Self::server`]: what clients trust (`--ca`).
    pub ca: PathBuf,
    /// The server's certificate and key (`--tls-cert`, `--tls-key`).
    pub server: CertFiles,
    /// The CA of client certificates (`--tls-client-ca`: mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl GrpcTls {
    fn flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--tls-cert".to_owned(),
            self.server.cert.display().to_string(),
            "--tls-key".to_owned(),
            self.server.key.display().to_string(),
        ];
        if let Some(ca) = &self.client_ca {
            flags.extend(["--tls-client-ca".to_owned(), ca.display().to_string()]);
        }
        flags
    }
}

/// The auth file of a control plane that authenticates callers (`--auth-file`): tokens are
/// added with the binary's own `new-token` command, so only their hashes are in the file. The
/// readiness probe calls with a `read` token of its own.
#[derive(Debug)]
pub struct AuthFile {
    path: PathBuf,
    probe_token: String,
    _dir: TempDir,
}

impl AuthFile {
    /// A new auth file holding only the probe's token.
    pub fn create() -> anyhow::Result<Self> {
        let dir = temp_dir("auth-file")?;
        let path = dir.path().join("auth.toml");
        let probe_token = new_token(&path, "strata-tests-probe", &["read"])?;
        Ok(Self {
            path,
            probe_token,
            _dir: dir,
        })
    }

    /// Adds a token for principal `name` with `roles` (`strata-control-plane new-token`) and
    /// returns it. A running control plane sees it after [`ControlPlane::hangup`].
    pub fn add_token(&self, name: &str, roles: &[&str]) -> anyhow::Result<String> {
        new_token(&self.path, name, roles)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Runs `strata-control-plane --auth-file PATH new-token --name NAME --role …`: the token it
/// prints.
fn new_token(path: &Path, name: &str, roles: &[&str]) -> anyhow::Result<String> {
    let mut command = Command::new(control_plane_binary()?);
    command
        .arg("--auth-file")
        .arg(path)
        .args(["new-token", "--name", name]);
    for role in roles {
        command.args(["--role", role]);
    }
    let out = command.env_clear().output().context("run new-token")?;
    ensure!(
        out.status.success(),
        "new-token failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    ensure!(!token.is_empty(), "new-token printed no token");
    Ok(token)
}

/// How a control plane's gRPC port is secured: TLS, authentication, both or neither.
#[derive(Debug, Default)]
pub struct Secured {
    /// Served over TLS.
    pub tls: Option<GrpcTls>,
    /// Callers authenticated by this auth file (otherwise `--insecure`).
    pub auth: Option<AuthFile>,
}

/// A running (or deliberately killed) `strata-control-plane`, killed when this drops.
#[derive(Debug)]
pub struct ControlPlane {
    bin: PathBuf,
    port: u16,
    admin_port: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
    tls: Option<GrpcTls>,
    auth: Option<AuthFile>,
    process: Option<ServerProcess>,
    starts: usize,
    // Declared last: dropped after the process is dead.
    dir: TempDir,
}

impl ControlPlane {
    /// Starts the binary against `kafka_brokers` and `redis_url` with `extra_args` (any of its
    /// flags, e.g. `--topic-partitions`, `--kafka-property`), on a free port, and waits until gRPC
    /// answers.
    pub async fn start(
        kafka_brokers: &str,
        redis_url: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with_env(kafka_brokers, redis_url, extra_args, &[]).await
    }

    /// [`Self::start_with_env`] on `broker`, in its namespace
    /// ([`TestBroker::control_plane_flags`]: the test's own topic prefix and consumer group).
    pub async fn start_on(
        broker: &TestBroker,
        redis_url: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let namespace = broker.control_plane_flags();
        let args: Vec<&str> = namespace
            .iter()
            .map(String::as_str)
            .chain(extra_args.iter().copied())
            .collect();
        Self::start_with_env(&broker.bootstrap_servers(), redis_url, &args, env).await
    }

    /// [`Self::start_on`] serving gRPC over `tls`; the readiness probe trusts `tls.ca`.
    pub async fn start_tls_on(
        broker: &TestBroker,
        redis_url: &str,
        tls: GrpcTls,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let secured = Secured {
            tls: Some(tls),
            auth: None,
        };
        Self::start_secured_on(broker, redis_url, secured, extra_args).await
    }

    /// [`Self::start_on`] with its gRPC port `secured` (TLS and/or an auth file).
    pub async fn start_secured_on(
        broker: &TestBroker,
        redis_url: &str,
        secured: Secured,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let namespace = broker.control_plane_flags();
        let args: Vec<&str> = namespace
            .iter()
            .map(String::as_str)
            .chain(extra_args.iter().copied())
            .collect();
        Self::launch(&broker.bootstrap_servers(), redis_url, &args, &[], secured).await
    }

    /// [`Self::start`] with `env` added to the process's environment (every run, restarts too).
    pub async fn start_with_env(
        kafka_brokers: &str,
        redis_url: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::launch(
            kafka_brokers,
            redis_url,
            extra_args,
            env,
            Secured::default(),
        )
        .await
    }

    async fn launch(
        kafka_brokers: &str,
        redis_url: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
        secured: Secured,
    ) -> anyhow::Result<Self> {
        let Secured { tls, auth } = secured;
        let bin = control_plane_binary()?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let dir = temp_dir("control-plane")?;
        let mut args: Vec<String> = vec![
            "--kafka-brokers".into(),
            kafka_brokers.into(),
            "--redis-url".into(),
            redis_url.into(),
        ];
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        args.extend(tls.iter().flat_map(GrpcTls::flags));
        if let Some(auth) = &auth {
            args.extend(["--auth-file".to_owned(), auth.path.display().to_string()]);
        }
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let admin_port = free_port()?;
            let mut args = args.clone();
            args.extend(["--admin-addr".to_owned(), format!("127.0.0.1:{admin_port}")]);
            let probe = Probe::of(tls.as_ref(), auth.as_ref());
            match spawn_ready(&bin, port, &args, &env, dir.path(), 1, &probe).await {
                Ok(process) => {
                    return Ok(Self {
                        bin,
                        port,
                        admin_port,
                        args,
                        env,
                        tls,
                        auth,
                        process: Some(process),
                        starts: 1,
                        dir,
                    });
                }
                Err(e) if format!("{e:#}").contains("Address already in use") => {
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("strata-control-plane did not start")))
    }

    /// Starts the binary like [`Self::start_with_env`] but returns at once, without waiting for
    /// gRPC: for a control plane that is not expected to become ready (e.g. one the broker
    /// refuses). Its admin port is [`Self::admin_port`]; [`Self::exit_status`] says whether it
    /// exited.
    pub fn spawn_unready(
        kafka_brokers: &str,
        redis_url: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let bin = control_plane_binary()?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let dir = temp_dir("control-plane")?;
        let (port, admin_port) = (free_port()?, free_port()?);
        let mut args: Vec<String> = vec![
            "--kafka-brokers".into(),
            kafka_brokers.into(),
            "--redis-url".into(),
            redis_url.into(),
        ];
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        args.extend(["--admin-addr".to_owned(), format!("127.0.0.1:{admin_port}")]);
        let process = ServerProcess::spawn(
            "strata-control-plane (run 1)",
            command(&bin, port, &args, &env, dir.path()),
            &dir.path().join("control-plane.log"),
        )?;
        Ok(Self {
            bin,
            port,
            admin_port,
            args,
            env,
            tls: None,
            auth: None,
            process: Some(process),
            starts: 1,
            dir,
        })
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS), for a gRPC client (stable across
    /// restarts).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Its gRPC TLS, if it serves TLS.
    pub fn tls(&self) -> Option<&GrpcTls> {
        self.tls.as_ref()
    }

    /// Its auth file, if it authenticates callers.
    pub fn auth(&self) -> Option<&AuthFile> {
        self.auth.as_ref()
    }

    /// `SIGHUP`: the control plane reads its TLS files again.
    pub fn hangup(&self) -> anyhow::Result<()> {
        match self.process.as_ref() {
            Some(p) => p.signal(Signal::SIGHUP),
            None => bail!("the control plane is not running"),
        }
    }

    /// The gRPC port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP admin port (`/metrics`, `/health/...`; stable across restarts).
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The pid of the running process, if any.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    /// A `/proc/<pid>/status` memory field of the running process (`VmRSS`, `VmHWM`, …), in
    /// bytes.
    pub fn memory(&self, field: &str) -> anyhow::Result<u64> {
        let pid = self.pid().context("the control plane runs")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .with_context(|| format!("no {field} in /proc/{pid}/status"))?
            .trim()
            .trim_end_matches(" kB")
            .parse()?;
        Ok(kb * 1024)
    }

    /// Resets the process's peak resident set (`VmHWM`) to its current one.
    pub fn reset_peak_memory(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("the control plane runs")?;
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
            .context("resetting VmHWM (/proc/<pid>/clear_refs)")
    }

    /// Its temp dir (holds `control-plane.log`, every run appended).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How many times the process was started.
    pub fn starts(&self) -> usize {
        self.starts
    }

    /// `Some(status)` if the process has exited on its own (or was killed); `None` while it runs.
    pub fn exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.process.as_mut() {
            Some(p) => p.exit_status(),
            None => bail!("the control plane was not started again after kill_9"),
        }
    }

    /// The last few KB of the current run's log.
    pub fn log_tail(&self) -> String {
        self.process
            .as_ref()
            .map(ServerProcess::log_tail)
            .unwrap_or_else(|| "(not running)".into())
    }

    /// `SIGTERM` (the shutdown path runs: the server and the driver stop, offsets are committed,
    /// spans flushed); see [`Self::wait_exit`].
    pub fn terminate(&self) -> anyhow::Result<()> {
        match self.process.as_ref() {
            Some(p) => p.terminate(),
            None => bail!("the control plane is not running"),
        }
    }

    /// Waits (bounded by `limit`) for the process to exit; the error shows the log tail.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit_status()? {
                return Ok(status);
            }
            if started.elapsed() > limit {
                bail!(
                    "strata-control-plane did not exit within {limit:?}; log tail:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `SIGKILL` (no shutdown path runs: no offset commit, no leaving the consumer group), and
    /// reaped. Returns how it ended: `None` if it had already exited by itself before.
    pub fn kill_9(&mut self) -> Option<ExitStatus> {
        let mut process = self.process.take()?;
        let exited_before = process.exit_status().ok().flatten();
        process.kill();
        match exited_before {
            Some(_) => None,
            None => process.exit_status().ok().flatten(),
        }
    }

    /// Starts the binary again on the same port with the same flags (after [`Self::kill_9`], or
    /// after it exited) and waits until gRPC answers.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.kill_9();
        self.starts += 1;
        self.process = Some(
            spawn_ready(
                &self.bin,
                self.port,
                &self.args,
                &self.env,
                self.dir.path(),
                self.starts,
                &Probe::of(self.tls.as_ref(), self.auth.as_ref()),
            )
            .await?,
        );
        Ok(())
    }
}

/// The control-plane binary: `$STRATA_CONTROL_PLANE_BIN`, else `strata-control-plane` beside
/// the running test executable (see [`workspace_binary`]).
pub fn control_plane_binary() -> anyhow::Result<PathBuf> {
    workspace_binary(
        "strata-control-plane",
        "strata-control-plane",
        CONTROL_PLANE_BIN_ENV,
    )
}

/// `strata-control-plane --print-config` with `args` and `env` (nothing else in its
/// environment): its stdout, or an error with its stderr.
pub fn print_config(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let out = Command::new(control_plane_binary()?)
        .arg("--print-config")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()?;
    ensure!(
        out.status.success(),
        "--print-config failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Spawns the binary on `port` and waits (bounded) until a `GetBatch` for an unknown id is
/// answered `NOT_FOUND` (or the process exits, which is an error with its log tail). With `tls`,
/// the probe speaks TLS and trusts its CA.
async fn spawn_ready(
    bin: &Path,
    port: u16,
    args: &[String],
    env: &[(String, String)],
    dir: &Path,
    run: usize,
    probe_with: &Probe,
) -> anyhow::Result<ServerProcess> {
    let addr = format!("127.0.0.1:{port}");
    let mut process = ServerProcess::spawn(
        &format!("strata-control-plane (run {run})"),
        command(bin, port, args, env, dir),
        &dir.join("control-plane.log"),
    )?;
    let scheme = if probe_with.ca.is_some() {
        "https"
    } else {
        "http"
    };
    let endpoint = format!("{scheme}://{addr}");
    let started = Instant::now();
    loop {
        if let Some(status) = process.exit_status()? {
            bail!(
                "strata-control-plane on {addr} exited during start ({status}); log tail:\n{}",
                process.log_tail()
            );
        }
        let last_error = match probe(&endpoint, probe_with).await {
            Ok(()) => return Ok(process),
            Err(e) => format!("{e:#}"),
        };
        if started.elapsed() > START_TIMEOUT {
            bail!(
                "strata-control-plane on {addr} did not answer gRPC within {START_TIMEOUT:?} \
                 (last error: {last_error}); log tail:\n{}",
                process.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The command line of a run on `port`: from an empty environment but `PATH`, the log level and
/// `env`; `--insecure` unless `args` configure authentication.
fn command(
    bin: &Path,
    port: u16,
    args: &[String],
    env: &[(String, String)],
    dir: &Path,
) -> Command {
    let mut command = Command::new(bin);
    command
        .arg("--grpc-addr")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        // Open to every caller on loopback unless the test brings an auth file (the binary
        // refuses to start with neither).
        .args(
            (!args.iter().any(|a| a == "--auth-file" || a == "--insecure")).then_some("--insecure"),
        )
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .env(
            "STRATA_LOG",
            std::env::var(CONTROL_PLANE_LOG_ENV).unwrap_or_else(|_| "info".into()),
        )
        .envs(env.iter().map(|(k, v)| (k, v)));
    command
}

/// What the readiness probe presents: the CA it trusts (TLS) and its `read` token (an auth file).
#[derive(Debug, Default)]
struct Probe {
    ca: Option<PathBuf>,
    token: Option<String>,
}

impl Probe {
    fn of(tls: Option<&GrpcTls>, auth: Option<&AuthFile>) -> Self {
        Self {
            ca: tls.map(|t| t.ca.clone()),
            token: auth.map(|a| a.probe_token.clone()),
        }
    }
}

/// Ok once `GetBatch` for an unknown batch is answered with `NOT_FOUND`: the server is up and its
/// driver serves reads. Over TLS when `ca` (the CA to trust) is given.
async fn probe(endpoint: &str, with: &Probe) -> anyhow::Result<()> {
    let token = match &with.token {
        Some(t) => Some(Token::new(t, "the harness's auth file")?),
        None => None,
    };
    let options = ClientOptions {
        security: Security {
            ca: with.ca.clone(),
            token,
            ..Security::default()
        },
        ..ClientOptions::default()
    };
    let (_, channel) = strata_client::channel::connect(endpoint, &options)?;
    let call = async {
        let mut client = OrchestratorClient::new(channel);
        let answer = client
            .get_batch(GetBatchRequest {
                batch_id: PROBE_BATCH_ID.into(),
            })
            .await;
        match answer {
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => bail!("GetBatch answered {status}"),
            Ok(_) => bail!("GetBatch found the probe batch {PROBE_BATCH_ID}"),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, call)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {PROBE_TIMEOUT:?}"))?
}
