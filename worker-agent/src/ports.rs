//! The agent loop's ports: where Ready records come from ([`Transport`] → [`ReadySource`]),
//! where results go ([`ResultSink`]), and who grants the lease ([`Leases`]). [`crate::agent::run`]
//! is written against these only; the implementations are Kafka (`kafka_ports`, the deployed
//! agent), the in-memory bus ([`crate::memory`]: `strata dev` and component tests) and the
//! control plane's gRPC registry ([`Registry`]) or a [`FixedLease`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use strata_proto::v1::{HeartbeatResponse, InFlightAttempt, ObjectReady, ObjectResult};
use tokio::sync::watch;

use crate::admin::Health;
use crate::metrics::Metrics;
use crate::registry::{Beat, Lease, Registration, Registry, RegistryError};

/// One record taken from the Ready topic.
#[derive(Debug)]
pub struct Delivery {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The Ready, or why it could not be decoded.
    pub ready: Result<ObjectReady, String>,
}

/// A consumer of a zone's Ready topic in the zone's consumer group.
pub trait ReadySource: Send + 'static {
    /// The next record (an error is the transport's: logged, counted, tried again).
    /// Cancel-safe: a record is taken only when this returns it.
    fn recv(&mut self) -> impl Future<Output = Result<Delivery, String>> + Send;

    /// Records that `offset` of `partition` and every record before it are done.
    fn store(&mut self, partition: i32, offset: i64) -> Result<(), String>;

    /// Commits what was stored (at the end of a drain).
    fn commit(&mut self) -> Result<(), String>;

    /// Leaves the group (bounded).
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// Where results are published. Clones share it.
pub trait ResultSink: Clone + Send + Sync + 'static {
    /// Sends `result` keyed by `batch_id` (with the attempt's `traceparent`, if any) once; `Ok`
    /// when it is delivered.
    fn send(
        &self,
        batch_id: &str,
        traceparent: &str,
        result: &ObjectResult,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Starts afresh (the broker lost its producer state, as when it lost its topics).
    fn renew(&self, _why: &str) {}
}

/// What a source is created with.
#[derive(Debug, Clone, Copy)]
pub struct Subscription<'a> {
    /// The lease (topic and group).
    pub lease: &'a Lease,
    /// Which source of the agent this is: 0, then one more each time it subscribes again.
    pub incarnation: u64,
    /// The longest the agent may go without fetching (at capacity: execution timeout + drain).
    pub longest_stall: Duration,
    /// Where the source records that it is consuming.
    pub health: &'a Arc<Health>,
    /// Where it records its assignment and lag.
    pub metrics: &'a Metrics,
}

/// Creates the agent's Ready sources and its result sink, once it holds a lease.
pub trait Transport: Send + 'static {
    /// Its Ready source.
    type Source: ReadySource;
    /// Its result sink.
    type Sink: ResultSink;

    /// A source subscribed to the lease's Ready topic in its group.
    fn subscribe(&self, to: Subscription<'_>) -> Result<Self::Source, String>;

    /// The sink of the lease's results topic.
    fn sink(&self, lease: &Lease) -> Result<Self::Sink, String>;

    /// Where it connects, for the logs.
    fn describe(&self, lease: &Lease) -> String;
}

/// Grants and keeps the agent's lease.
pub trait Leases: Clone + Send + Sync + 'static {
    /// Registers, until `stop` resolves (`Ok(None)`).
    fn register(
        &self,
        me: &Registration,
        stop: &mut (impl Future<Output = ()> + Unpin + Send),
    ) -> impl Future<Output = Result<Option<Lease>, RegistryError>> + Send;

    /// One heartbeat.
    fn heartbeat(
        &self,
        lease: &Lease,
        in_flight: Vec<InFlightAttempt>,
        draining: bool,
    ) -> impl Future<Output = Beat> + Send;

    /// Ends the lease; how many attempts the control plane handed back.
    fn deregister(
        &self,
        lease: &Lease,
        reason: &str,
    ) -> impl Future<Output = Result<u32, String>> + Send;
}

impl Leases for Registry {
    async fn register(
        &self,
        me: &Registration,
        stop: &mut (impl Future<Output = ()> + Unpin + Send),
    ) -> Result<Option<Lease>, RegistryError> {
        Registry::register(self, me, stop).await
    }

    async fn heartbeat(
        &self,
        lease: &Lease,
        in_flight: Vec<InFlightAttempt>,
        draining: bool,
    ) -> Beat {
        Registry::heartbeat(self, lease, in_flight, draining).await
    }

    async fn deregister(&self, lease: &Lease, reason: &str) -> Result<u32, String> {
        Registry::deregister(self, lease, reason).await
    }
}

/// A lease given up front, for an agent of a control plane that does not verify results
/// (`--verify-results false`; its results carry lease epoch 0 and no signature, and its Ready
/// records are not verified): registering returns it, heartbeats renew it, nothing is handed
/// back. Used by component and end-to-end tests that drive the control plane without registry.
#[derive(Debug, Clone)]
pub struct FixedLease(pub Arc<Lease>);

impl FixedLease {
    /// Agent `agent_id` on `ready_topic` in `consumer_group`, publishing to `results_topic`,
    /// with the default execution timeout (one hour; a Ready's own timeout wins).
    pub fn new(
        agent_id: &str,
        ready_topic: &str,
        consumer_group: &str,
        results_topic: &str,
    ) -> Self {
        Self(Arc::new(Lease {
            agent_id: agent_id.to_owned(),
            epoch: 0,
            heartbeat_interval: Duration::from_secs(3600),
            ttl: Duration::from_secs(3600),
            ready_topic: ready_topic.to_owned(),
            results_topic: results_topic.to_owned(),
            consumer_group: consumer_group.to_owned(),
            bootstrap_servers: Vec::new(),
            execution_timeout: Duration::from_secs(3600),
            topics_generation: 0,
            result_key: None,
            ready_key: None,
        }))
    }
}

impl Leases for FixedLease {
    async fn register(
        &self,
        _me: &Registration,
        _stop: &mut (impl Future<Output = ()> + Unpin + Send),
    ) -> Result<Option<Lease>, RegistryError> {
        Ok(Some((*self.0).clone()))
    }

    async fn heartbeat(
        &self,
        _lease: &Lease,
        _in_flight: Vec<InFlightAttempt>,
        _draining: bool,
    ) -> Beat {
        Beat::Renewed(HeartbeatResponse::default())
    }

    async fn deregister(&self, _lease: &Lease, _reason: &str) -> Result<u32, String> {
        Ok(0)
    }
}

/// A source that hands records over only while `open` is true (records wait in the topic
/// meanwhile): for tests that decide when work may proceed.
#[derive(Debug)]
pub struct Gated<S> {
    source: S,
    open: watch::Receiver<bool>,
}

impl<S> Gated<S> {
    /// `source`, handing records over while `open` is true.
    pub fn new(source: S, open: watch::Receiver<bool>) -> Self {
        Self { source, open }
    }
}

impl<S: ReadySource> ReadySource for Gated<S> {
    async fn recv(&mut self) -> Result<Delivery, String> {
        let open = self.open.wait_for(|o| *o).await.is_ok();
        if !open {
            // The gate is gone: closed for good.
            return std::future::pending().await;
        }
        self.source.recv().await
    }

    fn store(&mut self, partition: i32, offset: i64) -> Result<(), String> {
        self.source.store(partition, offset)
    }

    fn commit(&mut self) -> Result<(), String> {
        self.source.commit()
    }

    async fn close(self) {
        self.source.close().await;
    }
}

/// A transport whose sources are [`Gated`] by `open`.
#[derive(Debug)]
pub struct GatedTransport<T> {
    /// The transport.
    pub inner: T,
    /// The gate.
    pub open: watch::Receiver<bool>,
}

impl<T: Transport> Transport for GatedTransport<T> {
    type Source = Gated<T::Source>;
    type Sink = T::Sink;

    fn subscribe(&self, to: Subscription<'_>) -> Result<Self::Source, String> {
        Ok(Gated::new(self.inner.subscribe(to)?, self.open.clone()))
    }

    fn sink(&self, lease: &Lease) -> Result<Self::Sink, String> {
        self.inner.sink(lease)
    }

    fn describe(&self, lease: &Lease) -> String {
        self.inner.describe(lease)
    }
}

/// Attempts whose final result is withheld: (batch, object, attempt).
pub type Withheld = Arc<std::sync::Mutex<std::collections::HashSet<(String, String, u32)>>>;

/// A transport whose sink withholds the final result (`ObjectLoaded` or `ObjectFailed`) of the
/// attempts in `withheld`, and delivers everything else: an agent that dies after `Started`, or
/// whose result is lost, as the tests simulate it.
#[derive(Debug)]
pub struct WithholdingTransport<T> {
    /// The transport.
    pub inner: T,
    /// The attempts whose final result is not sent.
    pub withheld: Withheld,
}

impl<T: Transport> Transport for WithholdingTransport<T> {
    type Source = T::Source;
    type Sink = Withholding<T::Sink>;

    fn subscribe(&self, to: Subscription<'_>) -> Result<Self::Source, String> {
        self.inner.subscribe(to)
    }

    fn sink(&self, lease: &Lease) -> Result<Self::Sink, String> {
        Ok(Withholding {
            inner: self.inner.sink(lease)?,
            withheld: self.withheld.clone(),
        })
    }

    fn describe(&self, lease: &Lease) -> String {
        self.inner.describe(lease)
    }
}

/// The sink of a [`WithholdingTransport`].
#[derive(Debug, Clone)]
pub struct Withholding<S> {
    inner: S,
    withheld: Withheld,
}

impl<S: ResultSink> ResultSink for Withholding<S> {
    async fn send(
        &self,
        batch_id: &str,
        traceparent: &str,
        result: &ObjectResult,
    ) -> Result<(), String> {
        use strata_proto::v1::object_result::Result as R;
        let last = match &result.result {
            Some(R::Loaded(l)) => Some((&l.object_id, l.attempt)),
            Some(R::Failed(f)) => Some((&f.object_id, f.attempt)),
            _ => None,
        };
        if let Some((object_id, attempt)) = last
            && self
                .withheld
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&(batch_id.to_owned(), object_id.clone(), attempt))
        {
            return Ok(());
        }
        self.inner.send(batch_id, traceparent, result).await
    }

    fn renew(&self, why: &str) {
        self.inner.renew(why);
    }
}
