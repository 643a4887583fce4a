//! The Kafka [`DataPlane`]: Ready records out to `<prefix>.ready.<zone>`, results in from
//! `<prefix>.results`, dead letters and status changes out to `<prefix>.dlq` / `<prefix>.status`
//! (`docs/design.md#topics-and-records`). Works with any Kafka-protocol broker; nothing here relies on the test broker's
//! quirks (see `docs/brokers.md`).
//!
//! What it guarantees:
//! - **Produce = delivered.** One idempotent producer (`acks=all`); every publish awaits each
//!   record's delivery report, bounded by `message.timeout.ms` ([`DELIVERY_TIMEOUT`]). Producing
//!   to a missing topic "succeeds" locally and fails only in the report: such a failure is
//!   [`PortError::Unavailable`] naming the topic, so the driver can `ensure_topics` and retry
//!   (which also refreshes the producer's metadata). A producer that hit a fatal error (e.g. an
//!   out-of-order sequence after the broker lost its producer state) or whose deliveries timed
//!   out (it may be looping on an unknown producer id) is replaced by a fresh one at once
//!   ([`strata_runtime::producer`]).
//! - **Offsets only after durability.** The results consumer runs with
//!   `enable.auto.offset.store=false`; [`DataPlane::store_positions`] stores `offset + 1` of the
//!   highest position per partition and auto-commit (every second, and on close or revocation)
//!   writes them. Delivery is at least once.
//! - **No poison-pill loops.** A record that cannot be decoded (wrong or missing `strata-type`
//!   header, bad protobuf, empty `result` oneof) is handed to the driver as `Err(reason)` with its
//!   position, like any other record, so it is counted, logged and its offset stored.
//! - **Nothing blocks an async worker.** Producing, consuming and admin calls are asynchronous in
//!   librdkafka; the blocking parts (destroying a client, closing the consumer, which leaves the
//!   group and commits) run on threads of their own ([`KafkaDataPlane::close`] awaits them).
//!   librdkafka's callbacks only log (routed to `tracing`, rate-limited).
//!
//! Client settings come from [`kafka_config`] (one function per role, `extra` applied last);
//! the names ([`ready_topic`], …) and [`results_consumer_config`] are public so that the test
//! harness and tools build the same names and settings. Depends on nothing but the port
//! types, the wire crate and whether traces are exported ([`strata_runtime::otlp::enabled`]: a
//! result's `traceparent` header is read only then).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use strata_core::Zone;
use strata_proto::kafka as wire;
use strata_proto::signing::ReadySigner;
use strata_proto::v1::ObjectResult;
use strata_runtime::detached::{Detached, NotDestroyed};
use strata_runtime::kafka_config::{self, ClientSettings};
use strata_runtime::kafka_logs::{self, LogLimiter, Logged};
use strata_runtime::producer::{DeliveryFailures, ProducerSlot};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, trace, warn};

use crate::convert;
use crate::ports::{DataPlane, PortError, PortResult, Position, ResultRecord};
use crate::records::{AgentReport, DeadLetterRecord, ReadyRecord, StatusChange};

const SERVICE: &str = "kafka";

/// Default consumer group of the control plane on the results topic.
pub const DEFAULT_CONSUMER_GROUP: &str = "strata-control-plane";
/// Bound on one record's delivery (`message.timeout.ms`): a publish resolves, delivered or
/// failed, within about this long (plus [`DELIVERY_MARGIN`] as a backstop).
pub use strata_runtime::kafka_config::DELIVERY_TIMEOUT;
/// Extra wait for a delivery report past [`DELIVERY_TIMEOUT`] before a publish gives up on it.
pub const DELIVERY_MARGIN: Duration = Duration::from_secs(5);
/// Bound on one admin request (topic creation).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Capacity of the results channel: the consumer task waits (and stops fetching) when the
/// driver is this many records behind. Equal to the driver's records per step.
pub const RESULTS_CHANNEL_CAPACITY: usize = 4096;
/// Bound on [`KafkaDataPlane::close`] (leaving the group, committing stored offsets).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);
/// How recent a client error must be for a failed readiness check to quote it. librdkafka
/// reports a failing connection again when it reconnects, but suppresses identical errors for a
/// while.
const LAST_ERROR_RELEVANCE: Duration = Duration::from_secs(300);
/// Pause after a consumer error before polling again.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_millis(100);

// The topic names are contract: the wire crate builds them.
pub use strata_proto::kafka::{dlq_topic, ready_topic, results_topic, status_topic};

/// Every topic the control plane needs for `zones`: one ready topic per zone, then results,
/// dead letters and status. Sorted by zone, without duplicates.
pub fn all_topics(prefix: &str, zones: &[Zone]) -> Vec<String> {
    let mut zones: Vec<&str> = zones.iter().map(Zone::as_str).collect();
    zones.sort_unstable();
    zones.dedup();
    let mut topics: Vec<String> = zones.iter().map(|z| ready_topic(prefix, z)).collect();
    topics.extend([
        results_topic(prefix),
        dlq_topic(prefix),
        status_topic(prefix),
    ]);
    topics
}

/// How to reach the broker and what to create there.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `bootstrap.servers`: comma-separated `host:port`.
    pub bootstrap_servers: String,
    /// Prefix of every topic name (default `strata`).
    pub topic_prefix: String,
    /// Partitions of topics created by [`DataPlane::ensure_topics`].
    pub partitions: i32,
    /// Replication factor of created topics; `-1` = the broker's `default.replication.factor`
    /// (Kafka 2.4+). More than the cluster's brokers is refused by
    /// [`DataPlane::ensure_topics`] (a permanent error: the control plane does not start).
    pub replication_factor: i32,
    /// `min.insync.replicas` of created topics (`None`: the broker's default).
    pub min_insync_replicas: Option<i32>,
    /// Consumer group on the results topic (default [`DEFAULT_CONSUMER_GROUP`]).
    pub consumer_group: String,
    /// Client properties passed to every client (producer, consumer, admin), e.g.
    /// `security.protocol`, `sasl.*`, `ssl.*`, or tuning such as `message.timeout.ms`. Applied
    /// after the adapter's own settings; [`strata_runtime::kafka_config::PROTECTED_PROPERTIES`] are refused.
    pub extra: Vec<(String, String)>,
}

impl KafkaSettings {
    /// Settings for `bootstrap_servers` with the defaults: prefix `strata`, 3 partitions,
    /// replication factor 1, group [`DEFAULT_CONSUMER_GROUP`], no extra properties.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            topic_prefix: wire::DEFAULT_TOPIC_PREFIX.to_owned(),
            partitions: 3,
            replication_factor: 1,
            min_insync_replicas: None,
            consumer_group: DEFAULT_CONSUMER_GROUP.to_owned(),
            extra: Vec::new(),
        }
    }

    /// Checks what librdkafka would not: non-empty names, sensible counts, no protected
    /// property in `extra`.
    pub fn validate(&self) -> PortResult<()> {
        let reject = |detail: String| {
            Err(PortError::Rejected {
                service: SERVICE,
                detail,
            })
        };
        if self.bootstrap_servers.trim().is_empty() {
            return reject("bootstrap servers must not be empty".into());
        }
        if self.topic_prefix.is_empty()
            || !self
                .topic_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return reject(format!(
                "topic prefix {:?} must be non-empty [A-Za-z0-9._-]",
                self.topic_prefix
            ));
        }
        if self.consumer_group.trim().is_empty() {
            return reject("consumer group must not be empty".into());
        }
        if self.partitions < 1 {
            return reject(format!(
                "partitions must be at least 1, not {}",
                self.partitions
            ));
        }
        if self.replication_factor < 1 && self.replication_factor != -1 {
            return reject(format!(
                "replication factor must be at least 1 (or -1 for the broker default), not {}",
                self.replication_factor
            ));
        }
        if let Some(n) = self.min_insync_replicas
            && (n < 1 || (self.replication_factor > 0 && n > self.replication_factor))
        {
            return reject(format!(
                "min.insync.replicas must be between 1 and the replication factor ({}), not {n}",
                self.replication_factor
            ));
        }
        strata_runtime::kafka_config::check_extra(&self.extra).or_else(reject)
    }
}

impl KafkaSettings {
    /// What every client of the control plane connects with (client ids
    /// `strata-control-plane-<role>`).
    pub fn clients(&self) -> ClientSettings {
        ClientSettings {
            bootstrap_servers: self.bootstrap_servers.clone(),
            extra: self.extra.clone(),
            client_id: "strata-control-plane".into(),
        }
    }
}

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("min_insync_replicas", &self.min_insync_replicas)
            .field("consumer_group", &self.consumer_group)
            .field("extra", &kafka_config::masked(&self.extra))
            .finish()
    }
}

/// The results consumer's configuration: a [`kafka_config::consumer`] in the configured group.
pub fn results_consumer_config(settings: &KafkaSettings) -> ClientConfig {
    kafka_config::consumer(
        &settings.clients(),
        "results",
        &settings.consumer_group,
        |_| {},
    )
}

/// Decodes one results record: the `strata-type` header must be `strata.v1.ObjectResult`, the
/// value a protobuf `ObjectResult` with its `result` set. The error says why not.
pub fn decode_result(
    type_header: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<AgentReport, String> {
    match type_header {
        None => return Err(format!("no {} header", wire::HEADER_TYPE)),
        Some(t) if t != wire::TYPE_OBJECT_RESULT.as_bytes() => {
            return Err(format!(
                "{} header is {:?}, not {}",
                wire::HEADER_TYPE,
                String::from_utf8_lossy(t),
                wire::TYPE_OBJECT_RESULT
            ));
        }
        Some(_) => {}
    }
    let payload = payload.unwrap_or_default();
    if payload.is_empty() {
        return Err("empty value".into());
    }
    let result =
        ObjectResult::decode(payload).map_err(|e| format!("value is not an ObjectResult: {e}"))?;
    convert::agent_report(result).ok_or_else(|| "ObjectResult with no outcome set".into())
}

/// The value of the first header named `name`, if any.
fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .map(|h| h.value.unwrap_or_default())
}

// ------------------------------------------------------------------------------------------------
// librdkafka callbacks: logging only, rate-limited (the producer and admin client: `Logged`).

/// The results consumer's context: its client lines routed like every client's, its rebalances
/// and failed commits logged.
#[derive(Debug)]
struct ResultsContext;

const RESULTS_CLIENT: &str = "results";

impl ClientContext for ResultsContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        kafka_logs::log(RESULTS_CLIENT, level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kafka_logs::client_error(RESULTS_CLIENT, &error, reason);
    }
}

impl ConsumerContext for ResultsContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let client = RESULTS_CLIENT;
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(client, partitions = ?partitions_of(tpl), "results partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                info!(client, partitions = ?partitions_of(tpl), "results partitions revoked");
            }
            Rebalance::Error(e) => {
                warn!(client, error = %e, "results consumer rebalance failed");
            }
        }
    }

    fn commit_callback(&self, result: Result<(), KafkaError>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {}
            // An auto-commit with nothing new stored.
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
            Err(e) => {
                if let Some(suppressed) = kafka_logs::admit(RESULTS_CLIENT, "commit") {
                    warn!(client = RESULTS_CLIENT, error = %e, suppressed, "offset commit failed");
                }
            }
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

// ------------------------------------------------------------------------------------------------
// The adapter.

type Producer = FutureProducer<Logged>;
type ResultsConsumer = StreamConsumer<ResultsContext>;

/// The running results consumer.
struct Subscription {
    consumer: Arc<Detached<ResultsConsumer>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The Kafka data plane. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct KafkaDataPlane {
    settings: KafkaSettings,
    results_topic: String,
    dlq_topic: String,
    status_topic: String,
    producer: ProducerSlot<Logged>,
    admin: Detached<AdminClient<Logged>>,
    subscription: Mutex<Option<Subscription>>,
}

impl fmt::Debug for KafkaDataPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaDataPlane")
            .field("settings", &self.settings)
            .field("subscribed", &self.lock_subscription().is_some())
            .finish_non_exhaustive()
    }
}

/// One record to produce.
struct Outgoing {
    topic: String,
    key: String,
    value: Vec<u8>,
    kind: &'static str,
    traceparent: String,
    tracestate: String,
}

impl Outgoing {
    fn headers(&self) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(3).insert(Header {
            key: wire::HEADER_TYPE,
            value: Some(self.kind),
        });
        if !self.traceparent.is_empty() {
            headers = headers.insert(Header {
                key: wire::HEADER_TRACEPARENT,
                value: Some(&self.traceparent),
            });
        }
        if !self.tracestate.is_empty() {
            headers = headers.insert(Header {
                key: wire::HEADER_TRACESTATE,
                value: Some(&self.tracestate),
            });
        }
        headers
    }
}

/// Why records were not delivered, per topic.
#[derive(Default)]
struct Failures {
    /// topic → (records failed, first error, any permanent error)
    by_topic: BTreeMap<String, (usize, String, bool)>,
    /// What the failures say about the producer (whether it must be replaced).
    delivery: DeliveryFailures,
}

impl Failures {
    fn add(&mut self, topic: &str, error: &KafkaError) {
        self.delivery.note(error);
        self.add_text(
            topic,
            error.to_string(),
            error
                .rdkafka_error_code()
                .is_some_and(is_permanent_produce_error),
        );
    }

    fn add_text(&mut self, topic: &str, error: String, permanent: bool) {
        let entry = self
            .by_topic
            .entry(topic.to_owned())
            .or_insert_with(|| (0, error, false));
        entry.0 += 1;
        entry.2 |= permanent;
    }

    fn into_error(self, total: usize) -> Option<PortError> {
        if self.by_topic.is_empty() {
            return None;
        }
        let permanent = self.by_topic.values().any(|(_, _, p)| *p);
        let failed: usize = self.by_topic.values().map(|(n, _, _)| n).sum();
        let parts: Vec<String> = self
            .by_topic
            .iter()
            .map(|(topic, (n, first, _))| format!("{n} to {topic} ({first})"))
            .collect();
        let detail = format!(
            "{failed} of {total} records not delivered: {}",
            parts.join("; ")
        );
        Some(if permanent {
            PortError::Rejected {
                service: SERVICE,
                detail,
            }
        } else {
            PortError::Unavailable {
                service: SERVICE,
                detail,
            }
        })
    }
}

/// Delivery errors that retrying the same record cannot fix. Everything else (timeouts, unknown
/// topic or partition, broker down, fenced or fatal producer, …) is retryable.
fn is_permanent_produce_error(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidRecord
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidRequiredAcks
            | C::InvalidArgument
            | C::Authentication
            | C::UnsupportedSASLMechanism
            | C::SaslAuthenticationFailed
    )
}

/// Topic-creation errors that retrying cannot fix.
fn is_permanent_admin_error(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::InvalidTopic
            | C::InvalidPartitions
            | C::InvalidReplicationFactor
            | C::InvalidReplicaAssignment
            | C::InvalidConfig
            | C::PolicyViolation
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidRequest
            | C::Authentication
            | C::SaslAuthenticationFailed
    )
}

/// `detail`, followed by what the clients last reported when that is recent: a request that timed
/// out says why the broker did not answer (e.g. `…; the clients last reported: authentication
/// failed: …`).
fn with_last_error(detail: String) -> String {
    match kafka_logs::last_error(LAST_ERROR_RELEVANCE) {
        Some(last) => format!("{detail}; the clients last reported: {}", last.explain()),
        None => detail,
    }
}

fn unavailable(detail: String) -> PortError {
    PortError::Unavailable {
        service: SERVICE,
        detail,
    }
}

fn rejected(detail: String) -> PortError {
    PortError::Rejected {
        service: SERVICE,
        detail,
    }
}

fn create_producer(settings: &KafkaSettings) -> PortResult<Producer> {
    kafka_config::producer(&settings.clients())
        .create_with_context(Logged("producer"))
        .map_err(|e| {
            rejected(format!(
                "create producer for {}: {e}",
                settings.bootstrap_servers
            ))
        })
}

impl KafkaDataPlane {
    /// How many brokers the cluster's metadata lists (asked within `limit`).
    async fn brokers(&self, limit: Duration) -> PortResult<usize> {
        let producer = self.producer()?;
        let answered = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, limit)
                .map(|m| m.brokers().len())
        })
        .await
        .map_err(|e| unavailable(format!("metadata request task: {e}")))?;
        match answered {
            Ok(0) => Err(unavailable("the broker's metadata lists no broker".into())),
            Ok(n) => Ok(n),
            Err(e) => Err(unavailable(format!(
                "no metadata from the broker within {limit:?}: {e}"
            ))),
        }
    }

    /// Refuses a replication factor above the cluster's brokers: topics could not be created
    /// (a permanent error, so that the control plane stops with this message instead of
    /// retrying for ever).
    async fn check_replication(&self) -> PortResult<()> {
        let wanted = self.settings.replication_factor;
        if wanted <= 1 {
            return Ok(());
        }
        let brokers = self.brokers(ADMIN_TIMEOUT).await?;
        if usize::try_from(wanted).is_ok_and(|w| w > brokers) {
            return Err(rejected(format!(
                "topic replication factor {wanted} needs at least {wanted} brokers; the cluster at {} has {brokers}",
                self.settings.bootstrap_servers
            )));
        }
        Ok(())
    }
    /// Validates `settings` and creates the producer and admin clients. No network round trip
    /// happens here (librdkafka connects in the background): an unreachable broker shows in the
    /// first [`DataPlane::ensure_topics`] as [`PortError::Unavailable`]. A configuration
    /// librdkafka refuses (unknown property, SASL/SSL not compiled in) is
    /// [`PortError::Rejected`].
    pub fn connect(settings: KafkaSettings) -> PortResult<Self> {
        settings.validate()?;
        let producer = create_producer(&settings)?;
        let admin: AdminClient<Logged> = kafka_config::admin(&settings.clients())
            .create_with_context(Logged("admin"))
            .map_err(|e| {
                rejected(format!(
                    "create admin client for {}: {e}",
                    settings.bootstrap_servers
                ))
            })?;
        let prefix = &settings.topic_prefix;
        Ok(Self {
            results_topic: results_topic(prefix),
            dlq_topic: dlq_topic(prefix),
            status_topic: status_topic(prefix),
            producer: ProducerSlot::new("kafka producer", producer),
            admin: Detached::new(admin),
            subscription: Mutex::new(None),
            settings,
        })
    }

    /// The settings it was created with.
    pub fn settings(&self) -> &KafkaSettings {
        &self.settings
    }

    /// Stops the results consumer, waits (at most [`CLOSE_TIMEOUT`]) until it has committed its
    /// stored offsets and left the group, so that another member takes its partitions at once
    /// and resumes after the last stored offset. Idempotent; the data plane can still produce
    /// afterwards. Call it at shutdown, after the driver stopped; merely dropping the data plane
    /// does the same in the background, unawaited.
    pub async fn close(&self) {
        let Some(sub) = self.lock_subscription().take() else {
            return;
        };
        let _ = sub.stop.send(());
        if tokio::time::timeout(CLOSE_TIMEOUT, sub.task).await.is_err() {
            warn!("results consumer task did not stop within {CLOSE_TIMEOUT:?}");
        }
        // Someone storing positions right now holds it too: their drop closes it in the background.
        let Ok(consumer) = Arc::try_unwrap(sub.consumer) else {
            return;
        };
        match consumer.destroy(CLOSE_TIMEOUT).await {
            Ok(elapsed) => debug!(?elapsed, "results consumer closed"),
            Err(NotDestroyed::NoThread(e)) => {
                warn!(error = %e, "no thread to close the results consumer on");
            }
            Err(NotDestroyed::TimedOut) => {
                warn!("results consumer did not close within {CLOSE_TIMEOUT:?}");
            }
        }
    }

    fn lock_subscription(&self) -> std::sync::MutexGuard<'_, Option<Subscription>> {
        self.subscription.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current producer; one that hit a fatal error is replaced by a new one first.
    fn producer(&self) -> PortResult<Arc<Detached<Producer>>> {
        self.producer.usable(|| create_producer(&self.settings))
    }

    /// Produces `records`, then awaits every delivery report (bounded); fails naming each
    /// topic with undelivered records.
    async fn produce(&self, records: Vec<Outgoing>) -> PortResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let producer = self.producer()?;
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT + DELIVERY_MARGIN;
        let mut pending: std::collections::VecDeque<(usize, DeliveryFuture)> =
            std::collections::VecDeque::with_capacity(records.len());
        let mut failures = Failures::default();
        for (i, record) in records.iter().enumerate() {
            loop {
                let future_record = FutureRecord::to(&record.topic)
                    .key(&record.key)
                    .payload(&record.value)
                    .headers(record.headers());
                match producer.send_result(future_record) {
                    Ok(delivery) => {
                        pending.push_back((i, delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                        if tokio::time::Instant::now() < deadline =>
                    {
                        // The local queue is full: wait for the oldest report to make room.
                        if let Some((j, delivery)) = pending.pop_front() {
                            await_delivery(&records[j], delivery, deadline, &mut failures).await;
                        } else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    Err((e, _)) => {
                        failures.add(&record.topic, &e);
                        break;
                    }
                }
            }
        }
        for (j, delivery) in pending {
            await_delivery(&records[j], delivery, deadline, &mut failures).await;
        }
        let total = records.len();
        let delivery = failures.delivery;
        match failures.into_error(total) {
            None => {
                trace!(records = total, elapsed = ?started.elapsed(), "records delivered");
                Ok(())
            }
            Some(e) => {
                // Replaced now rather than on the next call (see `strata_runtime::producer`).
                self.producer
                    .replace_if_failed(&producer, delivery, || create_producer(&self.settings));
                Err(e)
            }
        }
    }
}

impl KafkaDataPlane {
    /// Waits (at most [`ADMIN_TIMEOUT`]) until the producer's own metadata lists every topic of
    /// `names`. This refreshes what the producer believes: once it saw a topic missing it fails
    /// records for it at once (`Local: Unknown topic`) until its next periodic refresh, minutes
    /// later; and on a cluster, a new topic takes a moment to reach every broker.
    async fn await_producer_metadata(&self, names: Vec<String>) -> PortResult<()> {
        let producer = self.producer()?;
        let waited = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + ADMIN_TIMEOUT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let missing: Vec<String> = match producer
                    .client()
                    .fetch_metadata(None, left.min(Duration::from_secs(5)))
                {
                    Ok(metadata) => names
                        .iter()
                        .filter(|name| {
                            !metadata.topics().iter().any(|t| {
                                t.name() == name.as_str()
                                    && t.error().is_none()
                                    && !t.partitions().is_empty()
                            })
                        })
                        .cloned()
                        .collect(),
                    Err(e) => vec![format!("(metadata request failed: {e})")],
                };
                if missing.is_empty() {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(missing);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .map_err(|e| unavailable(format!("metadata wait failed: {e}")))?;
        waited.map_err(|missing| {
            unavailable(format!(
                "topics created but not listed in metadata within {ADMIN_TIMEOUT:?}: {}",
                missing.join(", ")
            ))
        })
    }
}

async fn await_delivery(
    record: &Outgoing,
    delivery: DeliveryFuture,
    deadline: tokio::time::Instant,
    failures: &mut Failures,
) {
    match tokio::time::timeout_at(deadline, delivery).await {
        Ok(Ok(Ok(_))) => {}
        Ok(Ok(Err((e, _message)))) => failures.add(&record.topic, &e),
        Ok(Err(_canceled)) => {
            failures.add_text(
                &record.topic,
                "producer closed before delivery".into(),
                false,
            );
        }
        Err(_elapsed) => {
            failures.delivery.timed_out = true;
            failures.add_text(
                &record.topic,
                format!(
                    "no delivery report within {:?}",
                    DELIVERY_TIMEOUT + DELIVERY_MARGIN
                ),
                false,
            );
        }
    }
}

impl DataPlane for KafkaDataPlane {
    async fn ensure_topics(&self, zones: &[Zone]) -> PortResult<usize> {
        self.check_replication().await?;
        let names = all_topics(&self.settings.topic_prefix, zones);
        let min_insync = self.settings.min_insync_replicas.map(|n| n.to_string());
        let new_topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|name| {
                let topic = NewTopic::new(
                    name,
                    self.settings.partitions,
                    TopicReplication::Fixed(self.settings.replication_factor),
                );
                match &min_insync {
                    Some(n) => topic.set("min.insync.replicas", n),
                    None => topic,
                }
            })
            .collect();
        let options = AdminOptions::new()
            .request_timeout(Some(ADMIN_TIMEOUT))
            .operation_timeout(Some(ADMIN_TIMEOUT));
        let results = tokio::time::timeout(
            ADMIN_TIMEOUT + DELIVERY_MARGIN,
            self.admin.create_topics(&new_topics, &options),
        )
        .await
        .map_err(|_| {
            unavailable(with_last_error(format!(
                "create topics {names:?}: no answer within {:?}",
                ADMIN_TIMEOUT + DELIVERY_MARGIN
            )))
        })?
        .map_err(|e| unavailable(with_last_error(format!("create topics {names:?}: {e}"))))?;
        let mut created = Vec::new();
        let mut errors = Vec::new();
        let mut permanent = false;
        for result in results {
            match result {
                Ok(name) => created.push(name),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    permanent |= is_permanent_admin_error(code);
                    errors.push(format!("{name}: {code}"));
                }
            }
        }
        if !created.is_empty() {
            info!(topics = ?created, partitions = self.settings.partitions, "kafka topics created");
        }
        if !errors.is_empty() {
            let detail = format!("create topics: {}", errors.join("; "));
            return Err(if permanent {
                rejected(detail)
            } else {
                unavailable(detail)
            });
        }
        self.await_producer_metadata(names).await?;
        Ok(created.len())
    }

    async fn publish_ready(&self, ready: &[ReadyRecord], signer: &ReadySigner) -> PortResult<()> {
        let prefix = &self.settings.topic_prefix;
        let records = ready
            .iter()
            .map(|r| Outgoing {
                topic: ready_topic(prefix, r.object.zone.as_str()),
                key: r.object.id.to_string(),
                value: convert::ready_message(r, signer).encode_to_vec(),
                kind: wire::TYPE_OBJECT_READY,
                traceparent: r.traceparent.clone().unwrap_or_default(),
                tracestate: String::new(),
            })
            .collect();
        self.produce(records).await
    }

    async fn publish_dead_letters(&self, letters: Vec<DeadLetterRecord>) -> PortResult<()> {
        let records = letters
            .iter()
            .map(|l| Outgoing {
                topic: self.dlq_topic.clone(),
                key: l.object.id.to_string(),
                value: convert::dead_letter_message(l).encode_to_vec(),
                kind: wire::TYPE_DEAD_LETTER,
                traceparent: String::new(),
                tracestate: String::new(),
            })
            .collect();
        self.produce(records).await
    }

    async fn publish_status(&self, changes: Vec<StatusChange>) -> PortResult<()> {
        let records = changes
            .iter()
            .map(|c| Outgoing {
                topic: self.status_topic.clone(),
                key: c.batch_id.clone(),
                value: convert::status_message(c).encode_to_vec(),
                kind: wire::TYPE_STATUS_CHANGED,
                traceparent: String::new(),
                tracestate: String::new(),
            })
            .collect();
        self.produce(records).await
    }

    async fn resubscribe_results(&self) -> PortResult<Option<mpsc::Receiver<ResultRecord>>> {
        // A broker that lost its topics lost its producer ids too: an idempotent producer it no
        // longer knows may see records acknowledged and never stored (seen against Tansu).
        self.producer.renew("the broker lost its topics", || {
            create_producer(&self.settings)
        });
        self.close().await;
        self.subscribe_results().map(Some)
    }

    fn subscribe_results(&self) -> PortResult<mpsc::Receiver<ResultRecord>> {
        let mut slot = self.lock_subscription();
        if slot.is_some() {
            return Err(rejected("results topic already subscribed".into()));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| rejected("subscribe_results needs a tokio runtime".into()))?;
        // The stream consumer spawns its wake-up task on the current runtime.
        let _entered = runtime.enter();
        let consumer: ResultsConsumer = results_consumer_config(&self.settings)
            .create_with_context(ResultsContext)
            .map_err(|e| {
                rejected(format!(
                    "create results consumer in group {}: {e}",
                    self.settings.consumer_group
                ))
            })?;
        consumer
            .subscribe(&[&self.results_topic])
            .map_err(|e| rejected(format!("subscribe to {}: {e}", self.results_topic)))?;
        let consumer = Arc::new(Detached::new(consumer));
        let (tx, rx) = mpsc::channel(RESULTS_CHANNEL_CAPACITY);
        let (stop, stopped) = oneshot::channel();
        let task = runtime.spawn(consume_results(
            Arc::clone(&consumer),
            self.results_topic.clone(),
            tx,
            stopped,
        ));
        info!(
            topic = %self.results_topic,
            group = %self.settings.consumer_group,
            "consuming results"
        );
        *slot = Some(Subscription {
            consumer,
            stop,
            task,
        });
        Ok(rx)
    }

    /// The broker answers a metadata request; if not, the error says what the clients last
    /// reported (refused credentials, an untrusted certificate, a refused connection) when that
    /// was recent.
    async fn ping(&self, limit: Duration) -> PortResult<()> {
        self.brokers(limit).await.map(|_| ()).map_err(|e| {
            match (kafka_logs::last_error(LAST_ERROR_RELEVANCE), e) {
                (Some(last), _) if last.is_authentication() => unavailable(last.explain()),
                (_, PortError::Unavailable { detail, .. }) => unavailable(with_last_error(detail)),
                (_, e) => e,
            }
        })
    }

    fn store_positions(&self, positions: &[Position]) -> PortResult<()> {
        let mut highest: BTreeMap<i32, i64> = BTreeMap::new();
        for p in positions {
            let offset = highest.entry(p.partition).or_insert(p.offset);
            *offset = (*offset).max(p.offset);
        }
        if highest.is_empty() {
            return Ok(());
        }
        let consumer = self
            .lock_subscription()
            .as_ref()
            .map(|s| Arc::clone(&s.consumer))
            .ok_or_else(|| rejected("store positions: results topic not subscribed".into()))?;
        let topic = &self.results_topic;
        let mut tpl = TopicPartitionList::with_capacity(highest.len());
        for (&partition, &offset) in &highest {
            // Kafka's committed offset is the next record to read.
            tpl.add_partition_offset(topic, partition, Offset::Offset(offset + 1))
                .map_err(|e| rejected(format!("store {topic}[{partition}]@{offset}: {e}")))?;
        }
        let stored = consumer.store_offsets(&tpl);
        let not_stored: Vec<String> = tpl
            .elements()
            .iter()
            .filter_map(|e| {
                e.error()
                    .err()
                    .map(|err| format!("{topic}[{}]: {err}", e.partition()))
            })
            .collect();
        drop(tpl);
        drop(consumer);
        match stored {
            Ok(()) if not_stored.is_empty() => Ok(()),
            Ok(()) => Err(rejected(format!(
                "offsets not stored (partition no longer assigned? its records will be \
                 delivered again): {}",
                not_stored.join("; ")
            ))),
            Err(e) => Err(rejected(format!(
                "store offsets {highest:?} on {topic} (partitions no longer assigned? their \
                 records will be delivered again): {e}"
            ))),
        }
    }
}

/// Reads the results topic until told to stop or the driver drops its receiver: each record is
/// decoded (or its decoding error kept) and sent on with its position, waiting while the channel
/// is full. Consumer errors are logged, rate-limited, and reading goes on.
async fn consume_results(
    consumer: Arc<Detached<ResultsConsumer>>,
    topic: String,
    tx: mpsc::Sender<ResultRecord>,
    mut stop: oneshot::Receiver<()>,
) {
    let limiter = LogLimiter::default();
    loop {
        let received = tokio::select! {
            biased;
            _ = &mut stop => break,
            received = consumer.recv() => received,
        };
        let record = match received {
            Ok(message) => {
                let position = Position {
                    partition: message.partition(),
                    offset: message.offset(),
                };
                let result = decode_result(header(&message, wire::HEADER_TYPE), message.payload())
                    .map_err(|reason| {
                        format!(
                            "{topic}[{}]@{}: {reason}",
                            position.partition, position.offset
                        )
                    });
                // The agent's span of the attempt, only while traces are exported.
                let traceparent = strata_runtime::otlp::enabled()
                    .then(|| header(&message, wire::HEADER_TRACEPARENT))
                    .flatten()
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .map(str::to_owned);
                // Never hold a message while waiting: the consumer cannot close while one lives.
                drop(message);
                ResultRecord {
                    result,
                    position,
                    traceparent,
                }
            }
            Err(e) => {
                let key = format!("{:?}", e.rdkafka_error_code());
                if let Some(suppressed) = limiter.admit(&key) {
                    warn!(%topic, error = %e, suppressed, "results consumer error; still consuming");
                }
                tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    () = tokio::time::sleep(CONSUMER_ERROR_PAUSE) => continue,
                }
            }
        };
        tokio::select! {
            biased;
            _ = &mut stop => break,
            sent = tx.send(record) => if sent.is_err() {
                debug!(%topic, "results receiver dropped; consumer stops");
                break;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use strata_proto::v1::{ObjectLoaded, object_result};

    use super::*;

    fn loaded() -> ObjectResult {
        ObjectResult {
            result: Some(object_result::Result::Loaded(ObjectLoaded {
                batch_id: "b1".into(),
                object_id: "42".into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn topic_names_follow_the_contract() {
        assert_eq!(ready_topic("strata", "raw"), "strata.ready.raw");
        assert_eq!(results_topic("strata"), "strata.results");
        assert_eq!(dlq_topic("strata"), "strata.dlq");
        assert_eq!(status_topic("x"), "x.status");
        let zones = [
            Zone::parse("raw").unwrap(),
            Zone::parse("application").unwrap(),
            Zone::parse("1-Raw").unwrap(),
        ];
        assert_eq!(
            all_topics("strata", &zones),
            [
                "strata.ready.application",
                "strata.ready.raw",
                "strata.results",
                "strata.dlq",
                "strata.status"
            ]
        );
    }

    #[test]
    fn a_valid_result_decodes() {
        let bytes = loaded().encode_to_vec();
        let decoded = decode_result(Some(wire::TYPE_OBJECT_RESULT.as_bytes()), Some(&bytes));
        assert_eq!(
            decoded,
            Ok(AgentReport {
                batch_id: "b1".into(),
                object_id: "42".into(),
                agent_id: String::new(),
                attempt: 0,
                dispatch_epoch: 0,
                outcome: crate::records::ReportOutcome::Loaded { processed: None },
                seal: crate::records::ReportSeal {
                    signed_text: strata_proto::signing::result_signed_text(&loaded())
                        .expect("an outcome"),
                    ..Default::default()
                },
            })
        );
    }

    #[test]
    fn undecodable_records_say_why() {
        let ok_type = Some(wire::TYPE_OBJECT_RESULT.as_bytes());
        let bytes = loaded().encode_to_vec();
        type Case<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, &'a str);
        let cases: [Case<'_>; 5] = [
            (None, Some(&bytes), "no strata-type header"),
            (
                Some(b"strata.v1.ObjectReady"),
                Some(&bytes),
                "not strata.v1.ObjectResult",
            ),
            (ok_type, None, "empty value"),
            (ok_type, Some(b"\xff\xff\xff"), "not an ObjectResult"),
            (
                ok_type,
                Some(&ObjectResult { result: None }.encode_to_vec()[..]),
                "empty value",
            ),
        ];
        for (header, payload, want) in cases {
            let err = decode_result(header, payload).unwrap_err();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        // A non-empty value whose oneof is unset (an unknown field only).
        let unknown_field = [0x78, 0x01]; // field 15, varint 1
        let err = decode_result(ok_type, Some(&unknown_field)).unwrap_err();
        assert!(err.contains("no outcome"), "{err}");
    }

    #[test]
    fn protected_properties_are_refused_and_secrets_masked() {
        let mut settings = KafkaSettings::new("127.0.0.1:9092");
        assert!(settings.validate().is_ok());
        settings.extra = vec![("enable.auto.offset.store".into(), "true".into())];
        let err = settings.validate().unwrap_err();
        assert!(!err.retryable());
        assert!(
            err.to_string().contains("enable.auto.offset.store"),
            "{err}"
        );
        settings.extra = vec![("sasl.password".into(), "hunter2".into())];
        assert!(settings.validate().is_ok());
        assert!(!format!("{settings:?}").contains("hunter2"));
        settings.partitions = 0;
        assert!(settings.validate().is_err());
    }

    #[test]
    fn extra_properties_win_over_role_defaults() {
        let mut settings = KafkaSettings::new("127.0.0.1:9092");
        settings.extra = vec![("message.timeout.ms".into(), "30000".into())];
        let config = kafka_config::producer(&settings.clients());
        assert_eq!(config.get("message.timeout.ms"), Some("30000"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        let consumer = results_consumer_config(&settings);
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(consumer.get("group.id"), Some(DEFAULT_CONSUMER_GROUP));
    }

    #[test]
    fn permanent_delivery_errors_are_rejections() {
        let mut failures = Failures::default();
        failures.add(
            "strata.ready.raw",
            &KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition),
        );
        let err = failures.into_error(2).unwrap();
        assert!(err.retryable());
        assert!(err.to_string().contains("1 of 2 records"), "{err}");
        assert!(err.to_string().contains("strata.ready.raw"), "{err}");
        let mut failures = Failures::default();
        failures.add(
            "strata.dlq",
            &KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
        );
        assert!(!failures.into_error(1).unwrap().retryable());
    }

    #[test]
    fn a_fenced_producer_is_recognised_as_such() {
        let mut failures = Failures::default();
        failures.add(
            "strata.ready.raw",
            &KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        );
        assert!(failures.delivery.timed_out && !failures.delivery.fenced);
        failures.add(
            "strata.ready.raw",
            &KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced),
        );
        assert!(failures.delivery.fenced);
        assert!(failures.into_error(2).unwrap().retryable());
    }

    #[tokio::test]
    async fn sasl_ssl_settings_are_accepted_by_the_client_library() {
        // Client creation validates every property: without TLS support compiled in, librdkafka
        // refuses `security.protocol=SASL_SSL` here.
        let settings = KafkaSettings {
            extra: vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "PLAIN".into()),
                ("sasl.username".into(), "strata".into()),
                ("sasl.password".into(), "secret".into()),
            ],
            ..KafkaSettings::new("127.0.0.1:1")
        };
        let data = KafkaDataPlane::connect(settings).expect("SASL_SSL client");
        data.close().await;
    }
}
