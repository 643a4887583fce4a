//! Apache Kafka itself, per test: one node ([`ApacheKafka`]) or a cluster of several
//! ([`KafkaCluster`]), in KRaft combined mode (each process is broker and controller), on free
//! loopback ports, from its own temp dir, killed when its handle drops.
//!
//! The broker is Apache Kafka 4.1.1 from Maven Central, pinned by `deploy/local/kafka/pom.xml`;
//! `$STRATA_KAFKA_LIBS` names the directory of its jars (`./tests/run.sh` provisions it and
//! exports the variable, as `STRATA_TANSU_BIN` for Tansu). Nothing is skipped when it is unset:
//! starting fails and says how to provision it. `java` is `$JAVA_HOME/bin/java`, else the first
//! on `PATH` (Java 17+).
//!
//! What one node is, in its dir `node-<id>/`: `server.properties` (written here), `data/` (the
//! log dir and the KRaft metadata log, formatted once by Kafka's own `kafka.tools.StorageTool`),
//! `log4j2.properties`, and the process's output in `kafka.log` (`format.log` for the format).
//! Each node runs `java -Xmx512m -Xms128m <start-time flags> -cp 'libs/*' kafka.Kafka
//! server.properties` (the flags: `JVM_OPTIONS`). The controller quorum is static
//! (`controller.quorum.voters`: every node); the cluster id is fixed. A restart
//! ([`KafkaCluster::restart`]) starts the node again from the same dirs and ports.
//!
//! Sized to the cluster: internal topics (offsets, transactions, share state) and
//! `default.replication.factor` replicate to every node; `min.insync.replicas` is 2 (1 for one
//! node); `unclean.leader.election.enable=false`; consumer groups rebalance without the initial
//! delay (`group.initial.rebalance.delay.ms=0`). A broker's session times out after 3 s
//! (`broker.session.timeout.ms`, heartbeats every 500 ms): that bounds both how long a killed
//! leader keeps its partitions and how long a node restarted after `SIGKILL` waits until the
//! controller lets its new incarnation register.
//!
//! Logs: every node's `kafka.log` tail is in the error of a failed start. The temp dir is kept
//! with `STRATA_TEST_KEEP_DIRS=1` ([`crate::temp_dir`]), and also when the handle drops while the
//! test panics (its path is printed).
//!
//! Clients: [`crate::kafka::producer_config`] and [`crate::kafka::consumer_config`] with
//! [`KafkaCluster::bootstrap_servers`] give the settings Strata uses against any broker.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use strata_runtime::kafka_config::{self, ClientSettings};
use tempfile::TempDir;

use crate::kafka_sasl::SaslListener;
use crate::process::ServerProcess;
use crate::{free_port, on_path, temp_dir};

/// Env var naming the directory of Apache Kafka's jars (`./tests/run.sh` exports it).
pub const KAFKA_LIBS_ENV: &str = "STRATA_KAFKA_LIBS";

/// Every cluster's id (`kafka-storage format --cluster-id`): the URL-safe base64 of the 16 bytes
/// `strata-tests-kfk`. Clusters never share a dir, so one id is enough.
const CLUSTER_ID: &str = "c3RyYXRhLXRlc3RzLWtmaw";
/// The JVM of every broker and of the storage tool: a bounded heap, and tuned for start time on
/// 2 cores rather than throughput: the C1 compiler only (`TieredStopAtLevel=1`) and the serial
/// GC. Measured: three nodes ready in 6-8 s with them, 13-16 s without (the JVMs' C2 compiler
/// threads competing for the cores).
const JVM_OPTIONS: &[&str] = &[
    "-Xmx512m",
    "-Xms128m",
    "-XX:TieredStopAtLevel=1",
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
];
/// Partitions of `__consumer_offsets` and `__transaction_state` (Kafka's default is 50: more
/// replicas to create on a group's first use, for nothing a test needs).
const INTERNAL_TOPIC_PARTITIONS: u32 = 5;
/// How long a (re)start may take, JVM start and controller election included (measured on 2
/// cores: 2-3 s for one node, 6-8 s for three, storage format included).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the storage tool may take to format a node's dirs (measured: 1-2 s; 4 s for three at
/// once).
const FORMAT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on each admin/metadata request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Fresh ports (and a fresh dir) tried when a port was taken between [`free_port`] and the bind.
const START_ATTEMPTS: usize = 3;

const LOG4J2_PROPERTIES: &str = "\
# Written by strata-tests: everything to stdout, which is appended to kafka.log in this dir.
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
";

/// One node (broker + controller) of a [`KafkaCluster`].
#[derive(Debug)]
struct Node {
    /// Its `node.id`, also its index in the cluster.
    id: usize,
    /// The client listener (`PLAINTEXT`).
    port: u16,
    /// The controller listener (`CONTROLLER`), in `controller.quorum.voters`.
    controller_port: u16,
    /// `node-<id>/` in the cluster's temp dir.
    dir: PathBuf,
    /// `None` after [`KafkaCluster::kill9`].
    process: Option<ServerProcess>,
    /// `SIGSTOP`ped by [`KafkaCluster::stop`] and not resumed yet.
    stopped: bool,
    /// Its SASL_SSL listener, when started with one ([`ApacheKafka::start_sasl`]).
    sasl: Option<SaslListener>,
}

/// A partition as the cluster's metadata shows it, node ids being [`KafkaCluster`] node indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: i32,
    /// `None` while the partition has no leader.
    pub leader: Option<usize>,
    pub replicas: Vec<usize>,
    pub isr: Vec<usize>,
}

/// What one metadata response said.
#[derive(Debug, Clone)]
struct MetadataView {
    /// `(node id, port)` of every broker the response lists (registered and not fenced).
    brokers: Vec<(i32, i32)>,
    /// `(topic, partitions)` of every topic without an error.
    topics: Vec<(String, Vec<PartitionInfo>)>,
}

/// Apache Kafka nodes in KRaft combined mode on loopback, one controller quorum of all of them.
/// Every process is killed when this drops.
#[derive(Debug)]
pub struct KafkaCluster {
    java: PathBuf,
    libs: PathBuf,
    nodes: Vec<Node>,
    // Dropped after the processes are dead (`Drop` kills them first).
    dir: TempDir,
}

impl KafkaCluster {
    /// Starts `size` nodes (1 to 9) and waits (bounded) until every node's metadata lists every
    /// broker. Internal topics and new topics replicate to all of them.
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        Self::start_with(size, false).await
    }

    /// [`Self::start`], each node with a SASL_SSL listener too when `sasl`
    /// ([`crate::kafka_sasl`]).
    async fn start_with(size: usize, sasl: bool) -> anyhow::Result<Self> {
        ensure!(
            (1..=9).contains(&size),
            "a cluster has 1 to 9 nodes, not {size}"
        );
        let java = java_binary()?;
        let libs = kafka_libs()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&java, &libs, size, sasl).await {
                Ok(cluster) => return Ok(cluster),
                Err(e) if is_addr_in_use(&format!("{e:#}")) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("apache kafka did not start")))
    }

    async fn start_once(java: &Path, libs: &Path, size: usize, sasl: bool) -> anyhow::Result<Self> {
        let dir = temp_dir(if size == 1 {
            "apache-kafka"
        } else {
            "kafka-cluster"
        })?;
        let ports = distinct_free_ports(if sasl { 3 * size } else { 2 * size })?;
        let nodes = (0..size)
            .map(|id| {
                let node_dir = dir.path().join(format!("node-{id}"));
                let sasl = sasl
                    .then(|| SaslListener::create(&node_dir.join("sasl"), ports[2 * size + id]))
                    .transpose()?;
                Ok(Node {
                    id,
                    port: ports[2 * id],
                    controller_port: ports[2 * id + 1],
                    dir: node_dir,
                    process: None,
                    stopped: false,
                    sasl,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let mut cluster = Self {
            java: java.to_owned(),
            libs: libs.to_owned(),
            nodes,
            dir,
        };
        for node in &cluster.nodes {
            std::fs::create_dir_all(&node.dir)
                .with_context(|| format!("create {}", node.dir.display()))?;
            std::fs::write(
                node.dir.join("server.properties"),
                cluster.server_properties(node),
            )?;
            std::fs::write(node.dir.join("log4j2.properties"), LOG4J2_PROPERTIES)?;
        }
        cluster.format().await?;
        for id in 0..size {
            cluster.spawn(id)?;
        }
        let all: Vec<usize> = (0..size).collect();
        cluster.wait_ready(&all, &all).await?;
        Ok(cluster)
    }

    /// How many nodes it has (killed ones included).
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// `127.0.0.1:PORT` of node `node`'s client listener (stable across restarts).
    pub fn bootstrap(&self, node: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[node].port)
    }

    /// Every node's `127.0.0.1:PORT`, comma-separated, for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        (0..self.nodes.len())
            .map(|n| self.bootstrap(n))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `node`'s client port.
    pub fn port(&self, node: usize) -> u16 {
        self.nodes[node].port
    }

    /// Node `node`'s process id (also its process group), `None` after [`Self::kill9`].
    pub fn pid(&self, node: usize) -> Option<u32> {
        self.nodes[node].process.as_ref().map(ServerProcess::pid)
    }

    /// The cluster's temp dir (one `node-<id>/` per node).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node `node`'s output (`kafka.log`; every run of it, appended).
    pub fn log_path(&self, node: usize) -> PathBuf {
        self.nodes[node].dir.join("kafka.log")
    }

    /// `SIGKILL` to node `node`'s process group, reaped before this returns. Idempotent.
    pub fn kill9(&mut self, node: usize) {
        if let Some(mut process) = self.nodes[node].process.take() {
            process.kill();
        }
        self.nodes[node].stopped = false;
    }

    /// `SIGSTOP` to node `node`'s process group: it stops answering (and heart-beating) with
    /// its sockets open, like a process that hangs. [`Self::resume`] continues it.
    pub fn stop(&mut self, node: usize) -> anyhow::Result<()> {
        self.signal(node, Signal::SIGSTOP)?;
        self.nodes[node].stopped = true;
        Ok(())
    }

    /// `SIGCONT` to node `node`'s process group (after [`Self::stop`]).
    pub fn resume(&mut self, node: usize) -> anyhow::Result<()> {
        self.signal(node, Signal::SIGCONT)?;
        self.nodes[node].stopped = false;
        Ok(())
    }

    fn signal(&self, node: usize, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .pid(node)
            .with_context(|| format!("kafka node {node} is not running"))?;
        killpg(Pid::from_raw(i32::try_from(pid)?), signal)
            .with_context(|| format!("{signal} to kafka node {node} (pid {pid})"))?;
        Ok(())
    }

    /// Kills node `node` (`SIGKILL`, if it runs), starts it again from its dirs on its ports and
    /// waits (bounded) until its own metadata lists it: registered with the controller and
    /// unfenced. Needs a controller quorum (a majority of nodes running).
    pub async fn restart(&mut self, node: usize) -> anyhow::Result<()> {
        self.kill9(node);
        self.spawn(node)?;
        self.wait_ready(&[node], &[node]).await
    }

    /// `SIGTERM` to node `node` (a controlled shutdown: it hands its partitions' leadership to
    /// the others and leaves the quorum cleanly) and waits (bounded by `limit`) for it to exit;
    /// `SIGKILL` if it has not by then. [`Self::restart`] starts it again. Idempotent.
    pub async fn shutdown(&mut self, node: usize, limit: Duration) -> anyhow::Result<()> {
        if self.nodes[node].process.is_none() {
            return Ok(());
        }
        if self.nodes[node].stopped {
            self.resume(node)?;
        }
        let process = self.nodes[node].process.as_mut().expect("checked above");
        process.terminate()?;
        let started = Instant::now();
        while process.exit_status()?.is_none() {
            if started.elapsed() > limit {
                let tail = process.log_tail();
                self.kill9(node);
                bail!(
                    "kafka node {node} did not exit within {limit:?} of SIGTERM (killed); log tail:\n{tail}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill9(node); // reaped already: drops the handle
        Ok(())
    }

    /// `SIGKILL` to every node, each reaped before this returns (the whole cluster down at once,
    /// as a power cut of every machine). Idempotent; [`Self::restart_all`] starts them again.
    pub fn kill9_all(&mut self) {
        for node in 0..self.nodes.len() {
            self.kill9(node);
        }
    }

    /// Starts every node that is not running (after [`Self::kill9_all`] or [`Self::kill9`])
    /// again from its dirs on its ports, all at once (a controller quorum needs a majority), and
    /// waits (bounded) until every node's metadata lists every node.
    pub async fn restart_all(&mut self) -> anyhow::Result<()> {
        for node in 0..self.nodes.len() {
            if self.nodes[node].process.is_none() {
                self.spawn(node)?;
            }
        }
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.wait_ready(&all, &all).await
    }

    /// Polls (every 100 ms, at most `limit`) until every partition of each of `topics` has a
    /// leader and every node in its ISR: the cluster is back to full replication (after a node
    /// restarted). Metadata errors in between count as "not yet".
    pub async fn wait_fully_replicated(
        &self,
        topics: &[&str],
        limit: Duration,
    ) -> anyhow::Result<()> {
        let size = self.nodes.len();
        let started = Instant::now();
        loop {
            let mut lagging = Vec::new();
            for topic in topics {
                match self.partitions(topic).await {
                    Ok(partitions) if !partitions.is_empty() => lagging.extend(
                        partitions
                            .into_iter()
                            .filter(|p| p.leader.is_none() || p.isr.len() < size)
                            .map(|p| format!("{topic}-{}: {p:?}", p.partition)),
                    ),
                    Ok(_) => lagging.push(format!("{topic}: not listed")),
                    Err(e) => lagging.push(format!("{topic}: {e:#}")),
                }
            }
            if lagging.is_empty() {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("not fully replicated within {limit:?}: {lagging:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates `topic` with `partitions` partitions replicated to every node ("already exists"
    /// is fine) and waits until every partition has a leader and its full ISR.
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        let bootstrap = self.live_bootstrap()?;
        let replication = i32::try_from(self.nodes.len())?;
        let admin: AdminClient<DefaultClientContext> = admin_config(&bootstrap)
            .create()
            .context("create kafka admin client")?;
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        let options = AdminOptions::new()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .operation_timeout(Some(REQUEST_TIMEOUT));
        let results = tokio::time::timeout(
            REQUEST_TIMEOUT + Duration::from_secs(5),
            admin.create_topics([&new_topic], &options),
        )
        .await
        .with_context(|| format!("create topic {topic} on {bootstrap}: timed out"))?
        .with_context(|| format!("create topic {topic} on {bootstrap}"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => bail!("create topic {name} on {bootstrap}: {code}"),
            }
        }
        let size = self.nodes.len();
        let started = Instant::now();
        loop {
            let listed = self.partitions(topic).await.unwrap_or_default();
            if listed.len() == usize::try_from(partitions)?
                && listed
                    .iter()
                    .all(|p| p.leader.is_some() && p.isr.len() == size)
            {
                return Ok(());
            }
            if started.elapsed() > REQUEST_TIMEOUT {
                bail!(
                    "topic {topic} not listed with {partitions} led, fully replicated partitions \
                     {REQUEST_TIMEOUT:?} after creation; metadata: {listed:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `topic`'s partitions as the metadata of a running node lists them now (empty if it does
    /// not list the topic).
    pub async fn partitions(&self, topic: &str) -> anyhow::Result<Vec<PartitionInfo>> {
        let view = self.metadata(Some(topic)).await?;
        Ok(view
            .topics
            .into_iter()
            .find(|(name, _)| name == topic)
            .map(|(_, partitions)| partitions)
            .unwrap_or_default())
    }

    /// The node that leads `topic`'s `partition` now; an error while it has none.
    pub async fn leader_of(&self, topic: &str, partition: i32) -> anyhow::Result<usize> {
        let partitions = self.partitions(topic).await?;
        partitions
            .iter()
            .find(|p| p.partition == partition)
            .with_context(|| format!("{topic} has no partition {partition}: {partitions:?}"))?
            .leader
            .with_context(|| format!("{topic}-{partition} has no leader now"))
    }

    /// Polls (every 100 ms, at most `limit`) until `topic`'s `partition` satisfies `done`;
    /// returns it then. Metadata errors in between count as "not yet".
    pub async fn wait_for_partition(
        &self,
        topic: &str,
        partition: i32,
        limit: Duration,
        done: impl Fn(&PartitionInfo) -> bool,
    ) -> anyhow::Result<PartitionInfo> {
        let started = Instant::now();
        loop {
            let last = match self.partitions(topic).await {
                Ok(partitions) => match partitions.into_iter().find(|p| p.partition == partition) {
                    Some(p) if done(&p) => return Ok(p),
                    Some(p) => format!("{p:?}"),
                    None => format!("{topic} lists no partition {partition}"),
                },
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() > limit {
                bail!("{topic}-{partition} not as expected within {limit:?}; last: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Bootstraps of the nodes that run and are not stopped.
    fn live_bootstrap(&self) -> anyhow::Result<String> {
        let live: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.process.is_some() && !n.stopped)
            .map(|n| self.bootstrap(n.id))
            .collect();
        ensure!(!live.is_empty(), "no kafka node is running");
        Ok(live.join(","))
    }

    /// One metadata response from a running node (all topics, or just `topic`).
    async fn metadata(&self, topic: Option<&str>) -> anyhow::Result<MetadataView> {
        fetch_metadata(&self.live_bootstrap()?, topic).await
    }

    /// `server.properties` of `node`, for this cluster's size.
    fn server_properties(&self, node: &Node) -> String {
        let size = self.nodes.len();
        let min_isr = size.min(2);
        let voters = self
            .nodes
            .iter()
            .map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port))
            .collect::<Vec<_>>()
            .join(",");
        let (id, port, controller) = (node.id, node.port, node.controller_port);
        let data = node.dir.join("data");
        // The SASL_SSL listener, if any, beside the others (`kafka_sasl`).
        let (sasl_listener, sasl_protocol) =
            node.sasl.as_ref().map_or_else(Default::default, |s| {
                (
                    format!(",{}", s.listener_entry()),
                    format!(",{0}:{0}", crate::kafka_sasl::LISTENER),
                )
            });
        let mut text = String::from("# Written by strata-tests (tests/src/apache_kafka.rs).\n");
        for line in [
            "process.roles=broker,controller".to_owned(),
            format!("node.id={id}"),
            format!("controller.quorum.voters={voters}"),
            format!(
                "listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}{sasl_listener}"
            ),
            format!(
                "advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}{sasl_listener}"
            ),
            "controller.listener.names=CONTROLLER".to_owned(),
            "inter.broker.listener.name=PLAINTEXT".to_owned(),
            format!(
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT{sasl_protocol}"
            ),
            format!("log.dirs={}", data.display()),
            "num.partitions=1".to_owned(),
            // As on Tansu: a topic exists only once created (Strata's clients never ask for
            // auto-creation either: `allow.auto.create.topics=false`).
            "auto.create.topics.enable=false".to_owned(),
            format!("default.replication.factor={size}"),
            format!("min.insync.replicas={min_isr}"),
            "unclean.leader.election.enable=false".to_owned(),
            format!("offsets.topic.replication.factor={size}"),
            format!("offsets.topic.num.partitions={INTERNAL_TOPIC_PARTITIONS}"),
            format!("transaction.state.log.replication.factor={size}"),
            format!("transaction.state.log.min.isr={min_isr}"),
            format!("transaction.state.log.num.partitions={INTERNAL_TOPIC_PARTITIONS}"),
            format!("share.coordinator.state.topic.replication.factor={size}"),
            format!("share.coordinator.state.topic.min.isr={min_isr}"),
            "group.initial.rebalance.delay.ms=0".to_owned(),
            "broker.heartbeat.interval.ms=500".to_owned(),
            "broker.session.timeout.ms=3000".to_owned(),
            "num.network.threads=2".to_owned(),
            "num.io.threads=4".to_owned(),
            "num.recovery.threads.per.data.dir=1".to_owned(),
        ] {
            let _ = writeln!(text, "{line}");
        }
        if let Some(sasl) = &node.sasl {
            text.push_str(&sasl.server_properties());
        }
        text
    }

    /// `java <JVM_OPTIONS> -cp 'libs/*' <main> <args>` in node `node`'s dir, logging with its
    /// `log4j2.properties`.
    fn java_command(&self, node: &Node, main: &str) -> Command {
        let mut command = Command::new(&self.java);
        command
            .args(JVM_OPTIONS)
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                node.dir.join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", self.libs.display()))
            .arg(main)
            .current_dir(&node.dir);
        command
    }

    /// Formats every node's dirs with Kafka's storage tool, all at once, and waits (bounded).
    async fn format(&self) -> anyhow::Result<()> {
        let mut running = Vec::new();
        for node in &self.nodes {
            let mut command = self.java_command(node, "kafka.tools.StorageTool");
            command
                .args(["format", "--cluster-id", CLUSTER_ID, "--config"])
                .arg(node.dir.join("server.properties"));
            if let Some(sasl) = &node.sasl {
                command.args(sasl.format_args());
            }
            let name = format!("kafka storage format, node {}", node.id);
            running.push((
                name.clone(),
                ServerProcess::spawn(&name, command, &node.dir.join("format.log"))?,
            ));
        }
        let started = Instant::now();
        while !running.is_empty() {
            let mut still = Vec::new();
            for (name, mut process) in running {
                match process.exit_status()? {
                    Some(status) if status.success() => {}
                    Some(status) => bail!(
                        "{name} failed ({status}); log tail:\n{}",
                        process.log_tail()
                    ),
                    None if started.elapsed() > FORMAT_TIMEOUT => bail!(
                        "{name} did not finish within {FORMAT_TIMEOUT:?}; log tail:\n{}",
                        process.log_tail()
                    ),
                    None => still.push((name, process)),
                }
            }
            running = still;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Starts node `id`'s broker process (not waiting for it).
    fn spawn(&mut self, id: usize) -> anyhow::Result<()> {
        let node = &self.nodes[id];
        let mut command = self.java_command(node, "kafka.Kafka");
        command.arg(node.dir.join("server.properties"));
        let process = ServerProcess::spawn(
            &format!("kafka node {id}"),
            command,
            &node.dir.join("kafka.log"),
        )?;
        let node = &mut self.nodes[id];
        node.process = Some(process);
        node.stopped = false;
        Ok(())
    }

    /// Waits (bounded by [`START_TIMEOUT`]) until the metadata of each of `nodes` lists every
    /// broker of `listed`; fails early, with the log tail, when one of `nodes` exits.
    async fn wait_ready(&mut self, nodes: &[usize], listed: &[usize]) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut pending: Vec<usize> = nodes.to_vec();
        let mut last_error = String::from("not tried yet");
        while !pending.is_empty() {
            for &id in nodes {
                let node = &mut self.nodes[id];
                let process = node
                    .process
                    .as_mut()
                    .with_context(|| format!("kafka node {id} is not running"))?;
                if let Some(status) = process.exit_status()? {
                    bail!(
                        "kafka node {id} (port {}, controller port {}) exited during start \
                         ({status}); log tail:\n{}",
                        node.port,
                        node.controller_port,
                        process.log_tail()
                    );
                }
            }
            let mut still = Vec::new();
            for id in pending {
                let port = self.nodes[id].port;
                // A cheap TCP probe first: librdkafka backs off between failed connects.
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_err()
                {
                    still.push(id);
                    continue;
                }
                match fetch_metadata(&self.bootstrap(id), None).await {
                    Ok(view) => {
                        let missing: Vec<usize> = listed
                            .iter()
                            .copied()
                            .filter(|&want| {
                                !view.brokers.iter().any(|&(broker, broker_port)| {
                                    usize::try_from(broker) == Ok(want)
                                        && broker_port == i32::from(self.nodes[want].port)
                                })
                            })
                            .collect();
                        if !missing.is_empty() {
                            last_error = format!(
                                "node {id} lists brokers {:?}, not yet {missing:?}",
                                view.brokers
                            );
                            still.push(id);
                        }
                    }
                    Err(e) => {
                        last_error = format!("{e:#}");
                        still.push(id);
                    }
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if started.elapsed() > START_TIMEOUT {
                let mut tails = String::new();
                for &id in &pending {
                    if let Some(process) = &self.nodes[id].process {
                        let _ = write!(tails, "\n--- kafka node {id}:\n{}", process.log_tail());
                    }
                }
                bail!(
                    "kafka nodes {pending:?} not ready within {START_TIMEOUT:?} (last: \
                     {last_error}); dir {}; log tails:{tails}",
                    self.dir.path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut process) = node.process.take() {
                process.kill();
            }
        }
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "the test panicked: keeping the kafka dir {}",
                self.dir.path().display()
            );
        }
    }
}

/// One Apache Kafka node (a [`KafkaCluster`] of one): a broker and its own controller, killed
/// when this drops.
#[derive(Debug)]
pub struct ApacheKafka {
    cluster: KafkaCluster,
}

impl ApacheKafka {
    /// Starts a node on free ports and waits (bounded) until it answers a metadata request that
    /// lists it.
    pub async fn start() -> anyhow::Result<Self> {
        Ok(Self {
            cluster: KafkaCluster::start(1).await?,
        })
    }

    /// [`Self::start`] with a SASL_SSL listener (SCRAM-SHA-512, a certificate the harness
    /// made) beside the `PLAINTEXT` one: [`Self::sasl`] says where and with what
    /// ([`crate::kafka_sasl`]).
    pub async fn start_sasl() -> anyhow::Result<Self> {
        Ok(Self {
            cluster: KafkaCluster::start_with(1, true).await?,
        })
    }

    /// The SASL_SSL listener, if started with [`Self::start_sasl`].
    pub fn sasl(&self) -> Option<&SaslListener> {
        self.cluster.nodes[0].sasl.as_ref()
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers` (stable across restarts).
    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap(0)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.cluster.port(0)
    }

    /// The process id, `None` after [`Self::kill`].
    pub fn pid(&self) -> Option<u32> {
        self.cluster.pid(0)
    }

    /// The temp dir (the node's dirs are in `node-0/`).
    pub fn dir(&self) -> &Path {
        self.cluster.dir()
    }

    /// The broker's output (`kafka.log`).
    pub fn log_path(&self) -> PathBuf {
        self.cluster.log_path(0)
    }

    /// `SIGKILL`; clients see connection refused until [`Self::restart`]. Idempotent.
    pub fn kill(&mut self) {
        self.cluster.kill9(0);
    }

    /// Kills it (if it runs) and starts it again from the same dirs and port: topics, records
    /// and committed offsets are kept (what reached the log before a `SIGKILL` is in the page
    /// cache). Waits until it is registered again (about the broker session timeout, 3 s).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.cluster.restart(0).await
    }

    /// Creates `topic` with `partitions` partitions ("already exists" is fine) and waits until
    /// each has a leader.
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        self.cluster.create_topic(topic, partitions).await
    }

    /// The [`KafkaCluster`] of this one node (metadata queries, signals).
    pub fn cluster(&mut self) -> &mut KafkaCluster {
        &mut self.cluster
    }
}

/// The jars directory: `$STRATA_KAFKA_LIBS`, which must hold the broker.
pub fn kafka_libs() -> anyhow::Result<PathBuf> {
    let Some(value) = std::env::var_os(KAFKA_LIBS_ENV).filter(|v| !v.is_empty()) else {
        bail!(
            "{KAFKA_LIBS_ENV} is not set: it names the directory of Apache Kafka's jars. Run \
             ./tests/run.sh, which provisions them (deploy/local/kafka/pom.xml) and exports it, or \
             `eval \"$(deploy/local/provision.sh kafka)\"` (tests that need real services are \
             never skipped)"
        );
    };
    let dir = PathBuf::from(value);
    let has_broker = std::fs::read_dir(&dir)
        .with_context(|| format!("{KAFKA_LIBS_ENV}={}: cannot list it", dir.display()))?
        .filter_map(Result::ok)
        .any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("kafka_2.13-") && name.ends_with(".jar")
        });
    ensure!(
        has_broker,
        "{KAFKA_LIBS_ENV}={} holds no kafka_2.13-*.jar; run ./tests/run.sh, which provisions it",
        dir.display()
    );
    Ok(dir)
}

/// `$JAVA_HOME/bin/java`, else the first `java` on `PATH`.
fn java_binary() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("JAVA_HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join("bin/java"));
    home.into_iter()
        .chain(on_path("java"))
        .find(|p| p.is_file())
        .context(
            "java not found ($JAVA_HOME/bin/java or on PATH): run ./tests/run.sh, which installs \
             Java 17 (deploy/local/provision.sh, package group java)",
        )
}

/// `count` distinct ports that were free a moment ago.
fn distinct_free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let mut ports: Vec<u16> = Vec::with_capacity(count);
    let mut tries = 0;
    while ports.len() < count {
        tries += 1;
        ensure!(
            tries <= count * 10,
            "no {count} distinct free ports after {tries} tries"
        );
        let port = free_port()?;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

fn is_addr_in_use(text: &str) -> bool {
    text.contains("Address already in use")
}

/// An admin client's configuration (topic creation, metadata), as Strata's admin clients with
/// a shorter connection setup bound.
fn admin_config(bootstrap_servers: &str) -> ClientConfig {
    kafka_config::admin(&ClientSettings {
        bootstrap_servers: bootstrap_servers.to_owned(),
        extra: vec![("socket.connection.setup.timeout.ms".into(), "5000".into())],
        client_id: "strata-tests".into(),
    })
}

/// One metadata request to `bootstrap` (all topics, or `topic`), its blocking librdkafka call on
/// a thread of its own, bounded.
async fn fetch_metadata(bootstrap: &str, topic: Option<&str>) -> anyhow::Result<MetadataView> {
    let config = admin_config(bootstrap);
    let bootstrap = bootstrap.to_owned();
    let topic = topic.map(str::to_owned);
    crate::blocking(REQUEST_TIMEOUT * 2, "fetch metadata", move || {
        let admin: AdminClient<DefaultClientContext> =
            config.create().context("create kafka admin client")?;
        let metadata = admin
            .inner()
            .fetch_metadata(topic.as_deref(), REQUEST_TIMEOUT)
            .with_context(|| format!("fetch metadata from {bootstrap}"))?;
        let node = |id: i32| usize::try_from(id).ok();
        Ok(MetadataView {
            brokers: metadata
                .brokers()
                .iter()
                .map(|b| (b.id(), b.port()))
                .collect(),
            topics: metadata
                .topics()
                .iter()
                .filter(|t| t.error().is_none())
                .map(|t| {
                    let partitions = t
                        .partitions()
                        .iter()
                        .map(|p| PartitionInfo {
                            partition: p.id(),
                            leader: node(p.leader()),
                            replicas: p.replicas().iter().copied().filter_map(node).collect(),
                            isr: p.isr().iter().copied().filter_map(node).collect(),
                        })
                        .collect();
                    (t.name().to_owned(), partitions)
                })
                .collect(),
        })
    })
    .await?
}
