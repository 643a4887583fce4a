//! The agent's Kafka clients: a consumer of the zone's Ready topic in the zone's group, and an
//! idempotent producer of results whose every send awaits its delivery report.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use strata_proto::kafka as wire;
use strata_proto::v1::{ObjectReady, ObjectResult};
use strata_runtime::kafka_config::{self, ClientSettings, DELIVERY_TIMEOUT};
use strata_runtime::kafka_logs::{self, Logged};
use strata_runtime::producer::{DeliveryFailures, ProducerSlot};
use tracing::{info, warn};

use crate::admin::Health;
use crate::metrics::Metrics;

/// How often librdkafka reports the consumer's statistics (its lag).
const STATISTICS_INTERVAL_MS: &str = "5000";

/// Where the agent's clients connect, and with what (client ids `strata-agent-<zone>-<role>`).
pub type KafkaSettings = ClientSettings;

/// The Ready consumer's configuration: a [`kafka_config::consumer`] in the zone's `group`, which
/// also reports the consumer's statistics (its lag) every 5 s; `max.poll.interval.ms` covers an
/// agent at capacity that stops fetching for up to `longest_stall` (its attempts are bounded by
/// the execution timeout and the drain).
pub fn consumer_config(
    settings: &KafkaSettings,
    group: &str,
    longest_stall: Duration,
) -> ClientConfig {
    let poll_interval = (longest_stall + Duration::from_secs(60)).max(Duration::from_secs(300));
    kafka_config::consumer(settings, "consumer", group, |config| {
        config
            // Consumer lag per partition, for the `consumer_lag` gauge.
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
            .set(
                "max.poll.interval.ms",
                poll_interval.as_millis().min(i32::MAX as u128).to_string(),
            );
    })
}

/// Marks the agent as consuming once the group gave it an assignment (an empty one counts: the
/// group is joined, there are just more agents than partitions).
#[derive(Debug)]
pub struct GroupContext {
    /// Where "consuming" is recorded.
    pub health: Arc<Health>,
    /// Where the assignment's size is recorded.
    pub metrics: Metrics,
    /// Which consumer of the agent this is (0, then one more each time the agent subscribes
    /// again), for the logs.
    pub incarnation: u64,
}

impl GroupContext {
    /// The client name in log lines: `consumer-<incarnation>`.
    fn client_name(&self) -> String {
        format!("consumer-{}", self.incarnation)
    }
}

impl ClientContext for GroupContext {
    /// librdkafka's log lines and errors, routed like every client's.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        kafka_logs::log(&self.client_name(), level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kafka_logs::client_error(&self.client_name(), &error, reason);
    }

    /// The lag of the partitions this consumer fetches (`fetch_state` active), summed; -1 while
    /// none is known.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lags = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.fetch_state == "active" && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag);
        let (mut total, mut known) = (0, false);
        for lag in lags {
            total += lag;
            known = true;
        }
        self.metrics
            .consumer_lag
            .set(if known { total } else { -1 });
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Ok(assigned) = consumer.assignment() {
            self.metrics
                .assigned_partitions
                .set(assigned.count() as i64);
        }
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(
                    partitions = tpl.count(),
                    consumer = self.incarnation,
                    "ready partitions assigned"
                );
                self.health.consuming.store(true, Ordering::Relaxed);
            }
            Rebalance::Revoke(tpl) => info!(
                partitions = tpl.count(),
                consumer = self.incarnation,
                "ready partitions revoked"
            ),
            Rebalance::Error(e) => {
                warn!(error = %e, consumer = self.incarnation, "consumer group rebalance failed")
            }
        }
    }
}

/// The agent's Ready consumer.
pub type ReadyConsumer = StreamConsumer<GroupContext>;

/// Decodes a Ready record: the `strata-type` header (when present) must name `ObjectReady`, the
/// value must decode. The error says why not.
pub fn decode_ready(
    headers: Option<&rdkafka::message::BorrowedHeaders>,
    payload: Option<&[u8]>,
) -> Result<ObjectReady, String> {
    if let Some(t) = headers.and_then(|h| {
        h.iter()
            .find(|h| h.key == wire::HEADER_TYPE)
            .and_then(|h| h.value)
    }) && t != wire::TYPE_OBJECT_READY.as_bytes()
    {
        return Err(format!(
            "{} header is {:?}, not {}",
            wire::HEADER_TYPE,
            String::from_utf8_lossy(t),
            wire::TYPE_OBJECT_READY
        ));
    }
    let payload = payload.ok_or("empty record")?;
    ObjectReady::decode(payload).map_err(|e| format!("not an ObjectReady: {e}"))
}

/// Publishes results; every send waits for the broker's acknowledgement. A producer that cannot
/// deliver any more is replaced right after the failed send ([`strata_runtime::producer`]).
#[derive(Clone)]
pub struct ResultPublisher {
    producer: Arc<ProducerSlot<Logged>>,
    settings: Arc<KafkaSettings>,
    topic: Arc<str>,
}

impl std::fmt::Debug for ResultPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultPublisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ResultPublisher {
    /// A publisher to `topic`.
    pub fn new(settings: &KafkaSettings, topic: &str) -> rdkafka::error::KafkaResult<Self> {
        let producer = create_producer(settings)?;
        Ok(Self {
            producer: Arc::new(ProducerSlot::new("results producer", producer)),
            settings: Arc::new(settings.clone()),
            topic: topic.into(),
        })
    }

    /// Replaces the producer now (a new producer id): the broker lost its producer state, as
    /// when it lost its topics. An idempotent producer it no longer knows may see its records
    /// acknowledged and never stored (seen against Tansu).
    pub fn renew(&self, why: &str) {
        self.producer.renew(why, || create_producer(&self.settings));
    }

    /// Sends `result` keyed by `batch_id` (with the attempt's `traceparent`, if any) once.
    pub async fn send(
        &self,
        batch_id: &str,
        traceparent: &str,
        result: &ObjectResult,
    ) -> Result<(), String> {
        let payload = result.encode_to_vec();
        let mut headers = OwnedHeaders::new_with_capacity(2).insert(Header {
            key: wire::HEADER_TYPE,
            value: Some(wire::TYPE_OBJECT_RESULT),
        });
        if !traceparent.is_empty() {
            headers = headers.insert(Header {
                key: wire::HEADER_TRACEPARENT,
                value: Some(traceparent),
            });
        }
        let record = FutureRecord::to(&self.topic)
            .key(batch_id)
            .payload(&payload)
            .headers(headers);
        let producer = self.producer.current();
        match producer.send(record, DELIVERY_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err((e, _)) => {
                let mut failures = DeliveryFailures::default();
                failures.note(&e);
                self.producer
                    .replace_if_failed(&producer, failures, || create_producer(&self.settings));
                Err(e.to_string())
            }
        }
    }
}

fn create_producer(settings: &KafkaSettings) -> KafkaResult<FutureProducer<Logged>> {
    kafka_config::producer(settings).create_with_context(Logged("producer"))
}
