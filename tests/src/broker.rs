//! "A broker" for a test: Apache Kafka by default, Tansu with `STRATA_TEST_BROKER=tansu`.
//!
//! Suites ask for a [`TestBroker`] and get, by [`BrokerKind::from_env`]:
//!
//! - **Apache Kafka** (the default): the one broker of the whole test run when
//!   `$STRATA_TEST_KAFKA_BOOTSTRAP` names it (`./tests/run.sh` starts it once before the tests,
//!   with `strata-test-broker`, and stops it after them), else a private [`ApacheKafka`] node for
//!   this test (2-7 s to start: the fallback for `cargo nextest run` by hand).
//! - **Tansu** (`STRATA_TEST_BROKER=tansu`): a private [`KafkaBroker`] per test, as before (it
//!   starts in ~100 ms).
//!
//! nextest runs every test in a process of its own, so a broker shared "per test binary" would
//! still be one per test; a broker shared across processes has to outlive them, hence one per run,
//! owned by `run.sh`. Tests are isolated on it by **name, not by broker**: every [`TestBroker`]
//! has a namespace of its own ([`TestBroker::topic_prefix`], unique per test process and
//! handle), which is the topic prefix of its control planes and agents, and the prefix of every
//! consumer group the test uses ([`TestBroker::group`], [`TestBroker::consumer_config`],
//! [`TestBroker::control_plane_flags`]). Tests that kill or restart their broker ask for a
//! private one ([`TestBroker::start_private`]) or, when they rely on Tansu losing everything on
//! restart, for a [`KafkaBroker`] by name.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use rdkafka::config::ClientConfig;

use crate::kafka::{self, KafkaBroker};
use crate::{ApacheKafka, within};

/// Env var choosing the broker: `apache-kafka` (default) or `tansu`.
pub const TEST_BROKER_ENV: &str = "STRATA_TEST_BROKER";
/// Env var naming the Apache Kafka broker shared by every test of a run (`host:port`).
pub const SHARED_KAFKA_ENV: &str = "STRATA_TEST_KAFKA_BOOTSTRAP";

/// Bound on starting a private broker (an Apache Kafka node takes 2-7 s on 2 cores).
const START_LIMIT: std::time::Duration = std::time::Duration::from_secs(90);

/// Which broker implementation a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Apache Kafka 4.1 (KRaft), [`ApacheKafka`].
    ApacheKafka,
    /// Tansu (`memory://`), [`KafkaBroker`].
    Tansu,
}

impl BrokerKind {
    /// `$STRATA_TEST_BROKER`: unset, empty, `apache-kafka` or `kafka` → Apache Kafka; `tansu` →
    /// Tansu; anything else is an error.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var(TEST_BROKER_ENV).unwrap_or_default().as_str() {
            "" | "apache-kafka" | "kafka" => Ok(Self::ApacheKafka),
            "tansu" => Ok(Self::Tansu),
            other => bail!("{TEST_BROKER_ENV}={other}: expected apache-kafka (default) or tansu"),
        }
    }
}

#[derive(Debug)]
enum Running {
    /// The run's shared Apache Kafka (not ours to stop).
    Shared,
    Apache(ApacheKafka),
    Tansu(KafkaBroker),
}

/// A broker for one test, with the test's own namespace on it. A private broker is killed when
/// this drops; the shared one is left running.
#[derive(Debug)]
pub struct TestBroker {
    kind: BrokerKind,
    bootstrap: String,
    namespace: String,
    running: Running,
}

impl TestBroker {
    /// The broker of [`BrokerKind::from_env`]: the shared Apache Kafka if the run has one, else
    /// a private broker.
    pub async fn start() -> anyhow::Result<Self> {
        let kind = BrokerKind::from_env()?;
        if kind == BrokerKind::ApacheKafka
            && let Some(bootstrap) = std::env::var(SHARED_KAFKA_ENV)
                .ok()
                .filter(|v| !v.trim().is_empty())
        {
            return Ok(Self {
                kind,
                bootstrap: bootstrap.trim().to_owned(),
                namespace: namespace(),
                running: Running::Shared,
            });
        }
        Self::start_private_kind(kind).await
    }

    /// A private broker of [`BrokerKind::from_env`] for a test that kills or restarts it.
    pub async fn start_private() -> anyhow::Result<Self> {
        Self::start_private_kind(BrokerKind::from_env()?).await
    }

    /// A private broker of `kind`.
    pub async fn start_private_kind(kind: BrokerKind) -> anyhow::Result<Self> {
        let running = match kind {
            BrokerKind::ApacheKafka => Running::Apache(
                within(START_LIMIT, "start apache kafka", ApacheKafka::start()).await??,
            ),
            BrokerKind::Tansu => {
                Running::Tansu(within(START_LIMIT, "start tansu", KafkaBroker::start()).await??)
            }
        };
        let bootstrap = match &running {
            Running::Apache(b) => b.bootstrap(),
            Running::Tansu(b) => b.bootstrap_servers(),
            Running::Shared => unreachable!("a private broker"),
        };
        Ok(Self {
            kind,
            bootstrap,
            namespace: namespace(),
            running,
        })
    }

    /// Which broker this is.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// A private broker's process id (`None` for the shared one, or after [`Self::kill`]).
    pub fn pid(&self) -> Option<u32> {
        match &self.running {
            Running::Apache(b) => b.pid(),
            Running::Tansu(b) => b.pid(),
            Running::Shared => None,
        }
    }

    /// Whether it is the run's shared broker (other tests' topics and groups are on it too).
    pub fn is_shared(&self) -> bool {
        matches!(self.running, Running::Shared)
    }

    /// `host:port`, for `bootstrap.servers` and `--kafka-brokers`.
    pub fn bootstrap_servers(&self) -> String {
        self.bootstrap.clone()
    }

    /// This test's topic prefix (`strata-<unique>`): topics are `<prefix>.<name>`, as the
    /// control plane's `--topic-prefix`.
    pub fn topic_prefix(&self) -> &str {
        &self.namespace
    }

    /// `<prefix>.<name>`: a topic (or consumer group) of this test's own.
    pub fn group(&self, name: &str) -> String {
        format!("{}.{name}", self.namespace)
    }

    /// The control plane's flags that put it in this test's namespace: `--topic-prefix` and
    /// `--consumer-group` (`<prefix>.control-plane`). Its agents get the prefix with their lease.
    pub fn control_plane_flags(&self) -> Vec<String> {
        vec![
            "--topic-prefix".into(),
            self.namespace.clone(),
            "--consumer-group".into(),
            self.group("control-plane"),
        ]
    }

    /// Creates `topics` (full names; "already exists" is fine) with `partitions` partitions and
    /// waits until metadata lists them.
    pub async fn create_topics(&self, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
        kafka::create_topics(&self.bootstrap, topics, partitions).await
    }

    /// Every topic the broker lists now (on the shared broker: other tests' too).
    pub async fn topic_names(&self) -> anyhow::Result<Vec<String>> {
        kafka::topic_names(&self.bootstrap).await
    }

    /// [`kafka::producer_config`] for this broker.
    pub fn producer_config(&self) -> ClientConfig {
        kafka::producer_config(&self.bootstrap)
    }

    /// [`kafka::consumer_config`] for this broker in the group [`Self::group`]`(name)`.
    pub fn consumer_config(&self, name: &str) -> ClientConfig {
        kafka::consumer_config(&self.bootstrap, &self.group(name))
    }

    /// `SIGKILL` to a private broker; clients see connection refused until
    /// [`Self::start_again`].
    pub fn kill(&mut self) -> anyhow::Result<()> {
        match &mut self.running {
            Running::Apache(b) => b.kill(),
            Running::Tansu(b) => b.kill(),
            Running::Shared => bail!("the shared broker is not this test's to kill"),
        }
        Ok(())
    }

    /// Starts a private broker again on the same port. Apache Kafka restarts from its disks
    /// (topics, records and committed offsets kept); Tansu comes back empty.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        match &mut self.running {
            Running::Apache(b) => within(START_LIMIT, "restart apache kafka", b.restart())
                .await?
                .context("restart apache kafka"),
            Running::Tansu(b) => within(START_LIMIT, "restart tansu", b.start_again())
                .await?
                .context("restart tansu"),
            Running::Shared => bail!("the shared broker is not this test's to restart"),
        }
    }
}

/// `strata-<pid>-<time><n>` in hex: unique per process (pid), per run of a pid (start time) and
/// per handle (counter). A valid topic-name prefix and group id.
fn namespace() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "strata-{:x}-{:x}{n}",
        std::process::id(),
        (nanos / 1_000) & 0xff_ffff_ffff
    )
}
