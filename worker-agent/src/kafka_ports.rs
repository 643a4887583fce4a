//! The agent's ports over Kafka (the clients of [`crate::kafka`]): the zone's Ready topic
//! consumed in the zone's group, results published by an idempotent producer. What the deployed
//! agent runs on.

use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::consumer::{CommitMode, Consumer as _};
use strata_proto::v1::ObjectResult;
use tracing::warn;

use strata_runtime::detached::Detached;

use crate::kafka::{
    GroupContext, KafkaSettings, ReadyConsumer, ResultPublisher, consumer_config, decode_ready,
};
use crate::ports::{Delivery, ReadySource, ResultSink, Subscription, Transport};
use crate::registry::Lease;

/// Bound on closing the consumer at exit (librdkafka's close can hang on a broker that is gone).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Kafka clients for one zone's agent. Its `Debug` masks secret-looking properties.
#[derive(Clone)]
pub struct KafkaTransport {
    /// Bootstrap servers overriding the ones the control plane sends.
    pub brokers: Option<String>,
    /// Extra librdkafka properties.
    pub properties: Vec<(String, String)>,
    /// The zone (the clients' id is `strata-agent-<zone>`).
    pub zone: String,
}

impl std::fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("brokers", &self.brokers)
            .field(
                "properties",
                &strata_runtime::kafka_config::masked(&self.properties),
            )
            .field("zone", &self.zone)
            .finish()
    }
}

impl KafkaTransport {
    /// The client settings under `lease`: its bootstrap servers unless overridden.
    pub fn settings(&self, lease: &Lease) -> Result<KafkaSettings, String> {
        let bootstrap_servers = self
            .brokers
            .clone()
            .filter(|b| !b.is_empty())
            .or_else(|| Some(lease.bootstrap_servers.join(",")).filter(|b| !b.is_empty()))
            .ok_or(
                "no Kafka bootstrap servers: the control plane sent none; set --kafka-brokers",
            )?;
        Ok(KafkaSettings {
            bootstrap_servers,
            extra: self.properties.clone(),
            client_id: format!("strata-agent-{}", self.zone),
        })
    }
}

/// The Ready consumer, subscribed. Destroyed on a thread of its own, never on the thread that
/// drops it: closing a group consumer can take seconds, or for ever once its broker is gone, and
/// must not block a runtime worker (a task dropped at shutdown would hold up the runtime).
pub struct KafkaSource {
    consumer: Detached<ReadyConsumer>,
    topic: String,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ReadySource for KafkaSource {
    async fn recv(&mut self) -> Result<Delivery, String> {
        let m = self.consumer.recv().await.map_err(|e| e.to_string())?;
        Ok(Delivery {
            partition: m.partition(),
            offset: m.offset(),
            ready: decode_ready(m.headers(), m.payload()),
        })
    }

    fn store(&mut self, partition: i32, offset: i64) -> Result<(), String> {
        self.consumer
            .store_offset(&self.topic, partition, offset)
            .map_err(|e| e.to_string())
    }

    /// Asks for the stored offsets to be committed and returns at once. A synchronous commit
    /// blocks its thread until the broker answers — for ever once the broker is gone — and this
    /// runs on a runtime worker (measured: two in-process agents draining after their broker was
    /// killed held both workers of the test's runtime). The close that follows (on a thread of
    /// its own, bounded) waits for the commit and commits what was stored once more.
    fn commit(&mut self) -> Result<(), String> {
        self.consumer
            .commit_consumer_state(CommitMode::Async)
            .map_err(|e| e.to_string())
    }

    /// Closes the consumer (leaving the group) on a thread of its own, waiting at most
    /// [`CLOSE_TIMEOUT`].
    async fn close(self) {
        if self.consumer.destroy(CLOSE_TIMEOUT).await.is_err() {
            warn!("the Kafka consumer did not close within {CLOSE_TIMEOUT:?}; exiting anyway");
        }
    }
}

impl ResultSink for ResultPublisher {
    async fn send(
        &self,
        batch_id: &str,
        traceparent: &str,
        result: &ObjectResult,
    ) -> Result<(), String> {
        ResultPublisher::send(self, batch_id, traceparent, result).await
    }

    fn renew(&self, why: &str) {
        ResultPublisher::renew(self, why);
    }
}

impl Transport for KafkaTransport {
    type Source = KafkaSource;
    type Sink = ResultPublisher;

    /// Errors read `kafka: …`, as the agent has always reported them.
    fn subscribe(&self, to: Subscription<'_>) -> Result<KafkaSource, String> {
        self.source(to).map_err(|e| format!("kafka: {e}"))
    }

    fn sink(&self, lease: &Lease) -> Result<ResultPublisher, String> {
        let settings = self.settings(lease).map_err(|e| format!("kafka: {e}"))?;
        ResultPublisher::new(&settings, &lease.results_topic)
            .map_err(|e| format!("kafka: results producer: {e}"))
    }

    fn describe(&self, lease: &Lease) -> String {
        self.settings(lease)
            .map_or_else(|e| e, |s| format!("kafka {}", s.bootstrap_servers))
    }
}

impl KafkaTransport {
    fn source(&self, to: Subscription<'_>) -> Result<KafkaSource, String> {
        let settings = self.settings(to.lease)?;
        let consumer: ReadyConsumer =
            consumer_config(&settings, &to.lease.consumer_group, to.longest_stall)
                .create_with_context(GroupContext {
                    health: to.health.clone(),
                    metrics: to.metrics.clone(),
                    incarnation: to.incarnation,
                })
                .map_err(|e| format!("ready consumer: {e}"))?;
        consumer
            .subscribe(&[&to.lease.ready_topic])
            .map_err(|e| format!("subscribe to {}: {e}", to.lease.ready_topic))?;
        Ok(KafkaSource {
            consumer: Detached::new(consumer),
            topic: to.lease.ready_topic.clone(),
        })
    }
}
