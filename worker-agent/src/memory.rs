//! The agent's ports over the in-memory bus ([`strata_bus`]): a zone's Ready topic consumed in a
//! consumer group, results published to the results topic. What `strata dev` and the component
//! tests run the agent on; the topics are the control plane's in-memory data plane's.

use std::sync::atomic::Ordering;

use strata_bus::{Consumer, Topic};
use strata_proto::v1::{ObjectReady, ObjectResult};

use crate::ports::{Delivery, ReadySource, ResultSink, Subscription, Transport};
use crate::registry::Lease;

/// One zone's Ready topic and the results topic, on the bus.
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    /// The zone's Ready topic.
    pub ready: Topic<ObjectReady>,
    /// The results topic.
    pub results: Topic<ObjectResult>,
}

/// A member of the lease's consumer group on the zone's Ready topic.
#[derive(Debug)]
pub struct MemorySource(Consumer<ObjectReady>);

impl ReadySource for MemorySource {
    async fn recv(&mut self) -> Result<Delivery, String> {
        let r = self.0.recv().await;
        Ok(Delivery {
            partition: r.partition,
            offset: r.offset,
            ready: Ok(r.value),
        })
    }

    fn store(&mut self, partition: i32, offset: i64) -> Result<(), String> {
        self.0.store(partition, offset).map_err(|e| e.to_string())
    }

    fn commit(&mut self) -> Result<(), String> {
        // Stored offsets are committed at once.
        Ok(())
    }

    async fn close(self) {}
}

/// Publishes results to the results topic, keyed by batch id; delivered when published.
#[derive(Debug, Clone)]
pub struct MemorySink(Topic<ObjectResult>);

impl ResultSink for MemorySink {
    async fn send(
        &self,
        batch_id: &str,
        _traceparent: &str,
        result: &ObjectResult,
    ) -> Result<(), String> {
        self.0.publish(batch_id.as_bytes(), result.clone());
        Ok(())
    }
}

impl Transport for MemoryTransport {
    type Source = MemorySource;
    type Sink = MemorySink;

    fn subscribe(&self, to: Subscription<'_>) -> Result<MemorySource, String> {
        let consumer = self.ready.subscribe(&to.lease.consumer_group);
        to.metrics
            .assigned_partitions
            .set(consumer.assigned() as i64);
        to.health.consuming.store(true, Ordering::Relaxed);
        Ok(MemorySource(consumer))
    }

    fn sink(&self, _lease: &Lease) -> Result<MemorySink, String> {
        Ok(MemorySink(self.results.clone()))
    }

    fn describe(&self, _lease: &Lease) -> String {
        "in memory".into()
    }
}
