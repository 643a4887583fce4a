//! Harness for Strata's end-to-end and fault suites: real services on free loopback ports.
//!
//! This crate owns starting and stopping the *real* backing services the orchestrator talks to
//! in production, one private instance per test (except the run's shared Apache Kafka):
//!
//! - [`TestBroker`]: what suites ask for, "a broker": Apache Kafka by default (the run's shared
//!   broker when `./tests/run.sh` started one, else a private node), Tansu with
//!   `STRATA_TEST_BROKER=tansu`; each handle has a namespace of its own (topic prefix, consumer
//!   groups), so tests sharing a broker never see each other's records. See [`broker`].
//! - [`RedisServer`]: a `redis-server` with persistence off, on a free port, in a temp dir;
//!   can be stopped and started again on the same port (readiness-goes-503-and-back tests).
//! - [`KafkaBroker`]: the Tansu Kafka-protocol broker with its `memory://` engine, on a free
//!   port, from an empty working directory; [`KafkaBroker::restart`] loses every topic, record
//!   and committed offset (broker-restart fault tests rely on that).
//! - [`ApacheKafka`] / [`KafkaCluster`]: Apache Kafka itself (KRaft, each process broker and
//!   controller), one node or a cluster on free loopback ports, from its own dirs; a node can be
//!   killed (`SIGKILL`), stopped (`SIGSTOP`), resumed and restarted from its disks, which keep
//!   topics, records and committed offsets.
//! - [`certs::TestCa`]: a CA, server and client certificates (the `openssl` command) for the TLS
//!   tests.
//! - Client configuration with the settings `docs/brokers.md` requires
//!   ([`KafkaBroker::producer_config`], [`KafkaBroker::consumer_config`]) and idempotent topic
//!   creation ([`KafkaBroker::create_topics`]).
//!
//! Binaries come from `STRATA_REDIS_SERVER_BIN` / `STRATA_TANSU_BIN` (Apache Kafka's jars from
//! `STRATA_KAFKA_LIBS`), which `./tests/run.sh` provisions and exports. Nothing is skipped when a
//! binary is missing: the harness fails with a message that says to run `./tests/run.sh`.
//!
//! Every wait is bounded. Spawned servers are killed when their handle drops (also while a
//! test panics); see [`process`] for what happens when the test process itself dies.
//!
//! Strata's own crates it uses: the wire contract, the worker agent (its loop runs in process as
//! [`agent::TestAgent`]) and the core's catalogue generator ([`runnable_catalogue`]).

pub mod agent;
pub mod apache_kafka;
pub mod broker;
pub mod certs;
pub mod client_tools;
pub mod control_plane;
pub mod kafka;
pub mod kafka_sasl;
pub mod process;
pub mod redis_server;
pub mod stack;
pub mod worker_agent;

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

pub use apache_kafka::{ApacheKafka, KafkaCluster};
pub use broker::{BrokerKind, TestBroker};
pub use kafka::KafkaBroker;
pub use redis_server::RedisServer;

/// Set to `1` to keep every test's temp dir (server logs, working dirs) after the test.
pub const KEEP_DIRS_ENV: &str = "STRATA_TEST_KEEP_DIRS";

/// A port on 127.0.0.1 that was free a moment ago.
///
/// The kernel picks it (bind to port 0) and the listener is closed before returning, so another
/// process can take it in between; server starts retry with a new port when that happens.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A fresh temp dir for one test or one server, removed on drop.
///
/// With `STRATA_TEST_KEEP_DIRS=1` it is kept, and its path is printed (nextest shows the
/// output of failing tests).
pub fn temp_dir(label: &str) -> anyhow::Result<tempfile::TempDir> {
    let mut dir = tempfile::Builder::new()
        .prefix(&format!("strata-{label}-"))
        .tempdir()
        .context("create temp dir")?;
    if std::env::var(KEEP_DIRS_ENV).is_ok_and(|v| v == "1") {
        dir.disable_cleanup(true);
        eprintln!("keeping {label} dir {}", dir.path().display());
    }
    Ok(dir)
}

/// `fut`, or an error naming `what` once `limit` has passed. Tests wrap every await in this.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {limit:?}: {what}"))
}

/// Runs the blocking `f` (a synchronous librdkafka call, a consumer drop) on a thread of its own
/// and waits at most `limit` for it.
///
/// Unlike `tokio::task::spawn_blocking`, a call that never returns leaves only a detached
/// thread behind: the test fails with `what` instead of hanging in the runtime's shutdown, which
/// waits for every blocking-pool task.
pub async fn blocking<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("strata-tests: {what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .context("spawn thread")?;
    within(limit, what, rx)
        .await?
        .map_err(|_| anyhow::anyhow!("{what}: the thread panicked"))
}

/// The root of the cargo workspace (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Resolves a service binary: `$env_var` if set (must exist), else the first of `fallbacks`
/// that exists. Fails with a message that tells how to provision it.
pub(crate) fn resolve_binary(
    env_var: &str,
    fallbacks: impl IntoIterator<Item = PathBuf>,
    what: &str,
) -> anyhow::Result<PathBuf> {
    if let Some(value) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "{what}: {env_var}={} does not exist; run ./tests/run.sh, which installs it",
            path.display()
        );
    }
    if let Some(found) = fallbacks.into_iter().find(|p| p.is_file()) {
        return Ok(found);
    }
    bail!(
        "{what} not found: set {env_var}, or run ./tests/run.sh, which installs it and \
         exports {env_var} (tests that need real services are never skipped)"
    )
}

/// A binary of this workspace: `$env_var` if set, else `name` in the directory above the running
/// test executable's `deps/` (a test executable is `<target>/<profile>/deps/<test>-<hash>`, the
/// workspace's binaries are `<target>/<profile>/<name>`). `cargo nextest run --workspace` builds
/// them; `-p strata-tests` alone does not (build `-p <package>` first).
pub fn workspace_binary(name: &str, package: &str, env_var: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the running test executable")?;
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(&file))
        .collect();
    resolve_binary(env_var, candidates.clone(), name).with_context(|| {
        format!(
            "looked in {candidates:?}; build it with `cargo build -p {package} --bin {name}` \
             (cargo nextest run --workspace builds it)"
        )
    })
}

/// `name` looked up in each directory of `$PATH`.
pub(crate) fn on_path(name: &str) -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default()
}

/// A generated seed catalogue of `objects` objects ([`strata_core::synth`]) in which every object
/// is enabled: the generator disables ~3 % of them, which preflight would reject and whose
/// descendants would fail the batch. What the benchmark and the large dev-mode run submit.
pub fn runnable_catalogue(objects: usize, seed: u64) -> Vec<u8> {
    let doc = strata_core::synth::seed_catalogue(objects, seed);
    String::from_utf8(doc)
        .expect("the generator writes UTF-8")
        .replace("\"EtatObjet\":\"inactif\"", "\"EtatObjet\":\"actif\"")
        .into_bytes()
}
