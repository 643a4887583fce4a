//! The agent loop: register, consume the zone's Ready topic, run up to `capacity` attempts at
//! once, report each one, heartbeat, and drain on shutdown. The one loop every agent runs — the
//! deployed binary over Kafka, `strata dev` and the tests over the in-memory bus — written
//! against the ports of [`crate::ports`]; only the processor differs.
//!
//! One loop owns all state (the attempts in flight, the offset tracker, the lease); attempts run
//! as tasks that report back, and the heartbeat call runs beside the loop so a slow control plane
//! never stalls consumption. What a Ready record comes to is decided by
//! [`Releases`] (stale, duplicate, superseding), when its offset may be stored by
//! [`OffsetTracker`]: both pure.
//!
//! Guarantees:
//! - a Ready's offset is stored only after its final result was delivered (or the attempt was
//!   abandoned or handed back), and only when every record before it on its partition is done
//!   too ([`OffsetTracker`]): a crash re-delivers, never loses;
//! - a Ready reaches the processor only if the control plane signed it (the lease's Ready verify
//!   key); any other is counted, logged (rate-limited) and its offset stored, never run;
//! - results carry the attempt, its dispatch epoch, the agent id and its lease epoch, signed with
//!   the lease's key; after the lease is lost, running attempts are dropped without a result and
//!   the agent registers again (with a new key);
//! - on shutdown the agent stops fetching, lets in-flight attempts finish within the grace period,
//!   hands the rest back as retryable `DRAINED` failures, commits, and deregisters.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use strata_proto::signing::ResultKey;
use strata_proto::v1::{InFlightAttempt, ObjectReady, ObjectResult};
use strata_runtime::log_limit::LogLimiter;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::admin::Health;
use crate::admission::{Admission, Key, Releases};
use crate::metrics::{Metrics, ReadyVerdict};
use crate::offsets::OffsetTracker;
use crate::ports::{Delivery, Leases, ReadySource as _, ResultSink, Subscription, Transport};
use crate::processor::{Outcome, Processor};
use crate::registry::{Beat, Lease, Registration, RegistryError};
use crate::results::{self, CurrentKey, Ending, Who, timestamp};
use crate::stopped;

/// How long a consumer may go without an assignment, or without records while some wait for
/// it, before it is replaced ([`Agent::watchdog`]).
const STUCK_AFTER: Duration = Duration::from_secs(30);
/// How long spans still queued at exit may take to be exported.
#[cfg(feature = "runtime")]
const TRACES_FLUSH: Duration = Duration::from_secs(5);

/// How the agent is run.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// What it registers as.
    pub registration: Registration,
    /// How long in-flight attempts may still run once the drain started.
    pub drain_grace: Duration,
}

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The control plane cannot be used (bad endpoint, registration refused).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The transport's clients could not be created or subscribed.
    #[error("{0}")]
    Transport(String),
}

/// An attempt this agent holds.
#[derive(Debug)]
struct Held {
    ready: Arc<ObjectReady>,
    partition: i32,
    offset: i64,
    /// The consumer the record came from (see `Agent::incarnation`).
    incarnation: u64,
    started_at: Arc<OnceLock<DateTime<Utc>>>,
    who: Who,
    abort: AbortHandle,
    /// The `traceparent` its result records carry (see [`attempt`]).
    traceparent: String,
}

/// What an attempt task reports when it ends.
#[derive(Debug)]
struct Done {
    key: Key,
    dispatch_epoch: u64,
    partition: i32,
    offset: i64,
    incarnation: u64,
}

/// Runs the agent until `shutdown` resolves (then drains) or the control plane asks it to drain:
/// its lease from `leases`, its Ready records and results over `transport`, each Ready processed
/// by `processor`. Returns `Ok` after a clean drain and deregistration, or when stopped before it
/// registered.
pub async fn run<P: Processor, L: Leases, T: Transport>(
    options: AgentOptions,
    leases: L,
    transport: T,
    processor: Arc<P>,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });
    metrics
        .capacity
        .set(i64::from(options.registration.capacity));
    let Some(lease) = leases
        .register(
            &options.registration,
            &mut Box::pin(stopped(stop_rx.clone())),
        )
        .await?
    else {
        info!("stopped before registering");
        return Ok(());
    };
    metrics.registrations.inc();
    metrics.registered.set(1);
    health.registered.store(true, Ordering::Relaxed);

    let longest_stall = lease.execution_timeout + options.drain_grace;
    let source = transport
        .subscribe(Subscription {
            lease: &lease,
            incarnation: 0,
            longest_stall,
            health: &health,
            metrics: &metrics,
        })
        .map_err(AgentError::Transport)?;
    let sink = transport.sink(&lease).map_err(AgentError::Transport)?;
    info!(group = %lease.consumer_group, topic = %lease.ready_topic, via = %transport.describe(&lease), "consuming");

    let current_key = watch::Sender::new((lease.epoch, lease.result_key.clone()));
    let mut agent = Agent {
        zone: options.registration.zone.clone(),
        capacity: options.registration.capacity as usize,
        registration: options.registration,
        leases,
        topics_generation: lease.topics_generation,
        lease,
        source,
        incarnation: 0,
        consumer_since: Instant::now(),
        last_record_at: Instant::now(),
        transport,
        longest_stall,
        sink,
        processor,
        metrics,
        health,
        held: HashMap::new(),
        releases: Releases::default(),
        offsets: OffsetTracker::default(),
        tasks: JoinSet::new(),
        heartbeat: None,
        stop: stop_rx,
        rejections_log: LogLimiter::default(),
        current_key,
    };
    let reason = agent.serve().await;
    agent.drain(options.drain_grace, reason).await;
    let Agent { source, health, .. } = agent;
    health.consuming.store(false, Ordering::Relaxed);
    source.close().await;
    Ok(())
}

/// Runs an agent as the binary does, from its command-line `args`, with `processor`: exports
/// traces when the environment names an OTLP endpoint ([`crate::telemetry`]; flushed before returning),
/// serves the admin port on `--admin-addr`, registers with the labels given plus
/// `processor=<label>`, and runs until `shutdown` resolves (then drains). For custom agents (see
/// the `custom_agent` example).
#[cfg(feature = "runtime")]
pub async fn run_from_args<P: Processor>(
    args: &crate::config::AgentArgs,
    processor: P,
    processor_label: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use crate::telemetry;
    let traces = telemetry::install_from_env(telemetry::SERVICE_NAME)
        .map_err(|e| anyhow::anyhow!("traces: {e}"))?;
    if let Some(t) = &traces {
        info!(endpoint = %t.endpoint(), "exporting traces over OTLP");
    }
    let served = serve_from_args(args, processor, processor_label, shutdown).await;
    if let Some(t) = traces {
        t.shutdown(TRACES_FLUSH).await;
    }
    served
}

#[cfg(feature = "runtime")]
async fn serve_from_args<P: Processor>(
    args: &crate::config::AgentArgs,
    processor: P,
    processor_label: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Metrics::new(&args.zone);
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (--admin-addr): {e}", args.admin_addr))?;
    info!(addr = %listener.local_addr()?, "admin port serving /metrics and /health");
    tokio::spawn(crate::admin::serve(
        listener,
        crate::admin::router(health.clone(), metrics.clone()),
    ));
    let options = AgentOptions {
        registration: Registration {
            zone: args.zone.clone(),
            capacity: args.concurrency,
            hostname: args.hostname(),
            labels: args
                .labels
                .iter()
                .cloned()
                .chain([("processor".to_owned(), processor_label.to_owned())])
                .collect(),
        },
        drain_grace: args.drain_grace(),
    };
    let transport = crate::kafka_ports::KafkaTransport {
        brokers: args.kafka_brokers.clone(),
        properties: args
            .kafka_client_properties()
            .map_err(|e| anyhow::anyhow!("kafka: {e}"))?,
        zone: args.zone.clone(),
    };
    let registry =
        crate::registry::Registry::new(&args.control_plane, args.control_plane_security()?)?;
    run(
        options,
        registry,
        transport,
        Arc::new(processor),
        metrics,
        health,
        shutdown,
    )
    .await?;
    Ok(())
}

struct Agent<P, L, T: Transport> {
    zone: String,
    capacity: usize,
    registration: Registration,
    leases: L,
    lease: Lease,
    /// The newest non-zero topics generation the control plane sent.
    topics_generation: u64,
    source: T::Source,
    /// Bumped whenever the consumer is replaced: offsets of records taken from an earlier one
    /// belong to topics that no longer exist and are never stored.
    incarnation: u64,
    /// When the current consumer subscribed, and when it last handed over a record.
    consumer_since: Instant,
    last_record_at: Instant,
    transport: T,
    longest_stall: Duration,
    sink: T::Sink,
    processor: Arc<P>,
    metrics: Metrics,
    health: Arc<Health>,
    held: HashMap<Key, Held>,
    /// The newest release seen per object: an older one arriving later is stale.
    releases: Releases,
    offsets: OffsetTracker,
    tasks: JoinSet<Done>,
    heartbeat: Option<JoinHandle<Beat>>,
    stop: watch::Receiver<bool>,
    /// One warning per Ready rejection reason per interval.
    rejections_log: LogLimiter,
    /// The lease and its newest result key, for the attempts in flight to sign their results
    /// with.
    current_key: watch::Sender<CurrentKey>,
}

impl<P: Processor, L: Leases, T: Transport> Agent<P, L, T> {
    /// Consumes and processes until shutdown or a drain request; returns why it stopped.
    async fn serve(&mut self) -> &'static str {
        let mut tick = tokio::time::interval(self.lease.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watchdog = tokio::time::interval(Duration::from_secs(5));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = std::pin::pin!(stopped(self.stop.clone()));
        loop {
            tokio::select! {
                biased;
                () = &mut stop => return "shutdown",
                Some(done) = self.tasks.join_next() => {
                    if let Ok(done) = done {
                        self.finished(done);
                    }
                }
                beat = poll_heartbeat(&mut self.heartbeat) => {
                    if self.beat_answered(beat).await {
                        return "the control plane asked for a drain";
                    }
                }
                _ = tick.tick() => self.send_heartbeat(false),
                _ = watchdog.tick() => self.watchdog(),
                msg = self.source.recv(), if self.held.len() < self.capacity => match msg {
                    Ok(Delivery { partition, offset, ready }) => {
                        self.last_record_at = Instant::now();
                        self.received(partition, offset, ready);
                    }
                    Err(e) => {
                        self.metrics.kafka_errors.with_label_values(&["consume"]).inc();
                        warn!(error = %e, "consuming the ready topic failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
    }

    /// One Ready record: skipped (counted, its offset done at once) or started.
    fn received(&mut self, partition: i32, offset: i64, ready: Result<ObjectReady, String>) {
        let ready = match ready {
            Ok(r) => r,
            Err(e) => {
                warn!(partition, offset, error = %e, "undecodable ready record skipped");
                return self.skip(partition, offset, ReadyVerdict::Undecodable);
            }
        };
        if let Some(key) = &self.lease.ready_key
            && let Err(rejection) = key.verify(&ready)
        {
            let reason = rejection.as_str();
            self.metrics
                .ready_rejected
                .with_label_values(&[reason])
                .inc();
            if let Some(suppressed) = self.rejections_log.admit(reason) {
                warn!(reason, partition, offset, batch_id = ?ready.batch_id, object_id = ?ready.object_id, suppressed, "ready record not signed by the control plane skipped (at most one line per reason per 10 s)");
            }
            return self.skip(partition, offset, ReadyVerdict::Rejected);
        }
        if ready.zone != self.zone {
            warn!(partition, offset, object_id = %ready.object_id, zone = %ready.zone, "ready record for another zone skipped");
            return self.skip(partition, offset, ReadyVerdict::OtherZone);
        }
        let key = Key {
            batch_id: ready.batch_id.clone(),
            object_id: ready.object_id.clone(),
        };
        let held = self.held.get(&key).map(|h| h.ready.dispatch_epoch);
        match self.releases.admit(&key, ready.dispatch_epoch, held) {
            Admission::Start => {}
            Admission::Stale => {
                debug!(object_id = %key.object_id, epoch = ready.dispatch_epoch, "stale release skipped");
                return self.skip(partition, offset, ReadyVerdict::Stale);
            }
            Admission::Duplicate => {
                debug!(object_id = %key.object_id, "redelivered ready of an attempt in flight skipped");
                return self.skip(partition, offset, ReadyVerdict::Duplicate);
            }
            Admission::Supersede => self.abandon(&key, "superseded by a newer release"),
        }
        self.metrics.ready(ReadyVerdict::Accepted);
        if let Some(released) = ready
            .released_at
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        {
            let waited = (Utc::now() - released).to_std().unwrap_or_default();
            self.metrics.pickup_seconds.observe(waited.as_secs_f64());
        }
        self.offsets.taken(partition, offset);
        let ready = Arc::new(ready);
        let started_at = Arc::new(OnceLock::new());
        let who = Who {
            agent_id: self.lease.agent_id.clone(),
            lease_epoch: self.lease.epoch,
            result_key: self.lease.result_key.clone(),
        };
        let timeout = ready
            .execution_timeout
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(self.lease.execution_timeout);
        let (span, traceparent) = process_span(&ready, &who.agent_id);
        let abort = self.tasks.spawn(attempt(
            self.processor.clone(),
            ready.clone(),
            (who.clone(), self.current_key.subscribe()),
            self.sink.clone(),
            started_at.clone(),
            timeout,
            self.metrics.clone(),
            (span, traceparent.clone()),
            Done {
                key: key.clone(),
                dispatch_epoch: ready.dispatch_epoch,
                partition,
                offset,
                incarnation: self.incarnation,
            },
        ));
        self.held.insert(
            key,
            Held {
                ready,
                partition,
                offset,
                incarnation: self.incarnation,
                started_at,
                who,
                abort,
                traceparent,
            },
        );
        self.metrics.in_flight.set(self.held.len() as i64);
    }

    fn skip(&mut self, partition: i32, offset: i64, verdict: ReadyVerdict) {
        self.metrics.ready(verdict);
        if let Some(store) = self.offsets.skipped(partition, offset) {
            self.store_offset(partition, store);
        }
    }

    /// An attempt task ended (its result delivered).
    fn finished(&mut self, done: Done) {
        if self
            .held
            .get(&done.key)
            .is_some_and(|h| h.ready.dispatch_epoch == done.dispatch_epoch)
        {
            if self.held.len() == self.capacity {
                // A slot frees now: the watchdog counts the wait for records from here.
                self.last_record_at = Instant::now();
            }
            self.held.remove(&done.key);
            self.metrics.in_flight.set(self.held.len() as i64);
        }
        self.offset_done(done.partition, done.offset, done.incarnation);
    }

    fn offset_done(&mut self, partition: i32, offset: i64, incarnation: u64) {
        if incarnation != self.incarnation {
            return;
        }
        if let Some(store) = self.offsets.done(partition, offset) {
            self.store_offset(partition, store);
        }
    }

    fn store_offset(&mut self, partition: i32, offset: i64) {
        if let Err(e) = self.source.store(partition, offset) {
            // Expected after a rebalance took the partition away: its new owner reads again
            // from the last commit, and the control plane fences the duplicate results.
            self.metrics
                .kafka_errors
                .with_label_values(&["store_offset"])
                .inc();
            debug!(partition, offset, error = %e, "offset not stored");
        }
    }

    /// Stops an attempt without a result (its result would be ignored).
    fn abandon(&mut self, key: &Key, why: &str) {
        if let Some(h) = self.held.remove(key) {
            h.abort.abort();
            self.metrics.abandoned.inc();
            self.metrics.in_flight.set(self.held.len() as i64);
            info!(batch_id = %key.batch_id, object_id = %key.object_id, attempt = h.ready.attempt, why, "attempt abandoned");
            self.offset_done(h.partition, h.offset, h.incarnation);
        }
    }

    fn in_flight(&self) -> Vec<InFlightAttempt> {
        self.held
            .iter()
            .filter(|(_, h)| h.who.lease_epoch == self.lease.epoch)
            .map(|(k, h)| InFlightAttempt {
                batch_id: k.batch_id.clone(),
                object_id: k.object_id.clone(),
                attempt: h.ready.attempt,
                dispatch_epoch: h.ready.dispatch_epoch,
                started_at: h.started_at.get().map(|t| timestamp(*t)),
            })
            .collect()
    }

    /// Starts a heartbeat call beside the loop, unless one is still running.
    fn send_heartbeat(&mut self, draining: bool) {
        if self.heartbeat.is_some() {
            return;
        }
        let (leases, lease, in_flight) =
            (self.leases.clone(), self.lease.clone(), self.in_flight());
        self.heartbeat = Some(tokio::spawn(async move {
            leases.heartbeat(&lease, in_flight, draining).await
        }));
    }

    /// Handles a heartbeat's answer; true when the control plane asks for a drain.
    async fn beat_answered(&mut self, beat: Beat) -> bool {
        match beat {
            Beat::Renewed(r) => {
                for a in r.abandon {
                    let key = Key {
                        batch_id: a.batch_id,
                        object_id: a.object_id,
                    };
                    if self.held.get(&key).is_some_and(|h| {
                        h.ready.attempt == a.attempt && h.ready.dispatch_epoch == a.dispatch_epoch
                    }) {
                        self.abandon(&key, "the control plane no longer waits for it");
                    }
                }
                if let Some(d) = r
                    .heartbeat_interval
                    .and_then(|d| Duration::try_from(d).ok())
                    && !d.is_zero()
                {
                    self.lease.heartbeat_interval = d;
                }
                self.follow_topics(r.topics_generation);
                if !r.result_signing_key.is_empty() {
                    self.rotate_key(&r.result_signing_key);
                }
                r.drain
            }
            Beat::Unavailable(e) => {
                self.metrics
                    .heartbeat_failures
                    .with_label_values(&["unavailable"])
                    .inc();
                warn!(error = %e, "heartbeat not answered; the lease may expire");
                false
            }
            Beat::LeaseLost(e) => {
                self.metrics
                    .heartbeat_failures
                    .with_label_values(&["lease_lost"])
                    .inc();
                warn!(agent_id = %self.lease.agent_id, error = %e, "lease lost: dropping the attempts in flight and registering again");
                self.health.registered.store(false, Ordering::Relaxed);
                self.metrics.registered.set(0);
                let keys: Vec<Key> = self.held.keys().cloned().collect();
                for k in keys {
                    self.abandon(&k, "lease lost");
                }
                let mut stop = Box::pin(stopped(self.stop.clone()));
                match self.leases.register(&self.registration, &mut stop).await {
                    Ok(Some(lease)) => {
                        self.follow_topics(lease.topics_generation);
                        self.lease = Lease {
                            // The transport's clients stay as they are.
                            ready_topic: self.lease.ready_topic.clone(),
                            results_topic: self.lease.results_topic.clone(),
                            ..lease
                        };
                        self.current_key
                            .send_replace((self.lease.epoch, self.lease.result_key.clone()));
                        self.metrics.registrations.inc();
                        self.metrics.registered.set(1);
                        self.health.registered.store(true, Ordering::Relaxed);
                    }
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "registering again failed"),
                }
                false
            }
        }
    }

    /// Signs every result from now on with the lease's new key `bytes` (a heartbeat rotated
    /// it); the attempts in flight sign their final results with it too.
    fn rotate_key(&mut self, bytes: &[u8]) {
        let Some(key) = ResultKey::from_slice(bytes) else {
            warn!(
                len = bytes.len(),
                "the heartbeat's new result key is not 32 bytes: keeping the current one"
            );
            return;
        };
        self.lease.result_key = Some(key.clone());
        self.current_key.send_replace((self.lease.epoch, Some(key)));
        self.metrics.result_key_rotations.inc();
        debug!(agent_id = %self.lease.agent_id, "result signing key rotated");
    }

    /// Follows the control plane's topics generation: when it changed, the control plane
    /// created the topics again (the broker had lost them) and a consumer subscribed before
    /// would follow the old ones for ever, so it is replaced. Attempts in flight go on; their
    /// records' offsets, in topics that no longer exist, are never stored.
    fn follow_topics(&mut self, generation: u64) {
        if generation == 0 || generation == self.topics_generation {
            return;
        }
        let known = std::mem::replace(&mut self.topics_generation, generation);
        if known == 0 {
            return;
        }
        // The broker that lost its topics lost its producer ids too.
        self.sink
            .renew("the control plane created the topics again");
        if !self.replace_consumer("the control plane created the topics again") {
            // Tried again at the next heartbeat.
            self.topics_generation = known;
        }
    }

    /// Replaces the Ready consumer with a new one subscribed to the same topic (`why` is logged);
    /// false if it could not be created. Attempts in flight go on; offsets of records taken from
    /// the old consumer are never stored (the new one reads again from the last commit, and
    /// records of attempts still held are skipped as duplicates).
    fn replace_consumer(&mut self, why: &str) -> bool {
        warn!(topic = %self.lease.ready_topic, why, "subscribing again");
        match self.transport.subscribe(Subscription {
            lease: &self.lease,
            incarnation: self.incarnation + 1,
            longest_stall: self.longest_stall,
            health: &self.health,
            metrics: &self.metrics,
        }) {
            Ok(fresh) => {
                self.health.consuming.store(false, Ordering::Relaxed);
                self.metrics.assigned_partitions.set(0);
                self.metrics.consumer_lag.set(-1);
                let old = std::mem::replace(&mut self.source, fresh);
                self.incarnation += 1;
                self.consumer_since = Instant::now();
                self.offsets = OffsetTracker::default();
                self.metrics.resubscriptions.inc();
                let closing = self.incarnation - 1;
                tokio::spawn(async move {
                    old.close().await;
                    info!(consumer = closing, "replaced ready consumer closed");
                });
                true
            }
            Err(e) => {
                self.metrics
                    .kafka_errors
                    .with_label_values(&["subscribe"])
                    .inc();
                warn!(error = %e, "subscribing again failed");
                false
            }
        }
    }

    /// Replaces a consumer that is stuck: no assignment [`STUCK_AFTER`] after it subscribed, or
    /// records waiting (lag) while the agent has room and none arrived for [`STUCK_AFTER`].
    /// Seen against a broker that restarted empty: a consumer group that never assigns the new
    /// member, a fetcher that never gets the re-created topic's records.
    fn watchdog(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.consumer_since) < STUCK_AFTER {
            return;
        }
        if !self.health.consuming.load(Ordering::Relaxed) {
            self.replace_consumer("no partitions assigned since the consumer subscribed");
        } else if self.metrics.consumer_lag.get() > 0
            && self.held.len() < self.capacity
            && now.duration_since(self.last_record_at) >= STUCK_AFTER
        {
            self.replace_consumer("records wait for this agent but none arrived");
        }
    }

    /// Stops fetching; lets in-flight attempts finish within `grace`; hands the rest back;
    /// commits; deregisters.
    async fn drain(&mut self, grace: Duration, reason: &str) {
        self.health.draining.store(true, Ordering::Relaxed);
        info!(
            reason,
            in_flight = self.held.len(),
            grace_secs = grace.as_secs_f64(),
            "draining"
        );
        // Tell the control plane at once, then keep the lease alive while attempts finish.
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        self.send_heartbeat(true);
        let deadline = tokio::time::Instant::now() + grace;
        let mut tick = tokio::time::interval(self.lease.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.held.is_empty() {
            tokio::select! {
                biased;
                Some(done) = self.tasks.join_next() => {
                    if let Ok(done) = done {
                        self.finished(done);
                    }
                }
                () = tokio::time::sleep_until(deadline) => break,
                beat = poll_heartbeat(&mut self.heartbeat) => {
                    let _ = self.beat_answered(beat).await;
                }
                _ = tick.tick() => self.send_heartbeat(true),
            }
        }
        let left: Vec<(Key, Held)> = self.held.drain().collect();
        self.metrics.in_flight.set(0);
        if !left.is_empty() {
            warn!(
                count = left.len(),
                "grace period over: handing the attempts still running back as retryable"
            );
        }
        let mut hand_backs = Vec::new();
        for (_, h) in &left {
            h.abort.abort();
            let result = results::handed_back(
                &h.ready,
                &h.who.rekeyed(&self.current_key.borrow()),
                h.started_at.get().copied(),
                Utc::now(),
                format!(
                    "agent {} drained ({reason}): attempt handed back after the {} s grace period",
                    h.who.agent_id,
                    grace.as_secs()
                ),
            );
            let sink = self.sink.clone();
            let metrics = self.metrics.clone();
            let (batch_id, traceparent) = (h.ready.batch_id.clone(), h.traceparent.clone());
            hand_backs.push(async move {
                // Bounded: if it cannot be delivered, deregistration hands it back anyway.
                for _ in 0..3 {
                    match sink.send(&batch_id, &traceparent, &result).await {
                        Ok(()) => {
                            metrics.results.with_label_values(&["drained"]).inc();
                            return;
                        }
                        Err(e) => {
                            metrics.kafka_errors.with_label_values(&["deliver"]).inc();
                            warn!(error = %e, "hand-back not delivered");
                        }
                    }
                }
            });
        }
        futures::future::join_all(hand_backs).await;
        for (_, h) in &left {
            self.offset_done(h.partition, h.offset, h.incarnation);
        }
        self.tasks.abort_all();
        if let Err(e) = self.source.commit() {
            // Nothing stored since the last auto-commit, or the broker is gone: the records
            // are delivered again to the group, and results of finished ones are ignored.
            debug!(error = %e, "final commit");
        }
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        match self.leases.deregister(&self.lease, reason).await {
            Ok(n) => info!(
                agent_id = %self.lease.agent_id,
                handed_back_by_control_plane = n,
                "deregistered; drained"
            ),
            Err(e) => {
                warn!(error = %e, "deregistration failed: the lease expires on its own")
            }
        }
        self.health.registered.store(false, Ordering::Relaxed);
        self.metrics.registered.set(0);
    }
}

/// The running heartbeat's answer; pending while none runs.
async fn poll_heartbeat(heartbeat: &mut Option<JoinHandle<Beat>>) -> Beat {
    let Some(h) = heartbeat.as_mut() else {
        return std::future::pending().await;
    };
    let beat = h
        .await
        .unwrap_or_else(|e| Beat::Unavailable(format!("heartbeat task: {e}")));
    *heartbeat = None;
    beat
}

/// One attempt: `ObjectStarted` (delivered while the processor runs), the processor under the
/// execution timeout, then `ObjectLoaded` or `ObjectFailed`, delivered before it returns. Both
/// records carry `traceparent`; the `process` span, if any, ends after the final delivery (or as
/// `abandoned` when the task is aborted).
#[allow(clippy::too_many_arguments)]
async fn attempt<P: Processor, S: ResultSink>(
    processor: Arc<P>,
    ready: Arc<ObjectReady>,
    (who, current_key): (Who, watch::Receiver<CurrentKey>),
    publisher: S,
    started_at: Arc<OnceLock<DateTime<Utc>>>,
    timeout: Duration,
    metrics: Metrics,
    (span, traceparent): (Option<Span>, String),
    done: Done,
) -> Done {
    let start = Utc::now();
    let _ = started_at.set(start);
    let started = results::started(&ready, &who, start);
    let clock = Instant::now();
    let run = async {
        match tokio::time::timeout(
            timeout,
            std::panic::AssertUnwindSafe(processor.process(&ready)).catch_unwind(),
        )
        .await
        {
            Ok(Ok(outcome)) => Ending::Processed(outcome),
            Ok(Err(_)) => Ending::Panicked,
            Err(_) => Ending::TimedOut(timeout),
        }
    };
    let ((), ending) = tokio::join!(
        deliver(
            &publisher,
            &ready.batch_id,
            &traceparent,
            &started,
            "started",
            &metrics
        ),
        run
    );
    let elapsed = clock.elapsed();
    let who = who.rekeyed(&current_key.borrow());
    if let Ending::Processed(Outcome::Failed { retryable, error }) = &ending {
        // The processor's own words (an `exec` program's stderr tail, up to 4 KiB; the result
        // carries them to the control plane): at debug, so a batch failing everywhere does not
        // flood the log. The log writer escapes their control characters: one line.
        debug!(batch_id = %ready.batch_id, object_id = %ready.object_id, attempt = ready.attempt, retryable, %error, "attempt failed");
    }
    let (result, label) = results::finished(&ready, &who, start, Utc::now(), elapsed, ending);
    metrics
        .processing_seconds
        .with_label_values(&[label])
        .observe(elapsed.as_secs_f64());
    deliver(
        &publisher,
        &ready.batch_id,
        &traceparent,
        &result,
        label,
        &metrics,
    )
    .await;
    if let Some(span) = span {
        span.end(label);
    }
    done
}

/// Sends `result` until the broker acknowledges it (backing off; the task is aborted if the
/// attempt is abandoned meanwhile).
async fn deliver(
    publisher: &impl ResultSink,
    batch_id: &str,
    traceparent: &str,
    result: &ObjectResult,
    label: &str,
    metrics: &Metrics,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match publisher.send(batch_id, traceparent, result).await {
            Ok(()) => {
                metrics.results.with_label_values(&[label]).inc();
                return;
            }
            Err(e) => {
                metrics.kafka_errors.with_label_values(&["deliver"]).inc();
                warn!(%batch_id, error = %e, "result not delivered; sending it again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn traceparent_of(ready: &ObjectReady) -> String {
    ready
        .trace
        .as_ref()
        .map(|t| t.traceparent.clone())
        .unwrap_or_default()
}

#[cfg(feature = "runtime")]
type Span = crate::telemetry::ProcessSpan;

/// Without the runtime, no traces are exported.
#[cfg(not(feature = "runtime"))]
#[derive(Debug)]
struct Span;

#[cfg(not(feature = "runtime"))]
impl Span {
    fn end(self, _outcome: &'static str) {}
}

/// The attempt's `process` span, if traces are exported, and the `traceparent` its results
/// carry: the span's context, else the Ready's.
#[cfg(feature = "runtime")]
fn process_span(ready: &ObjectReady, agent_id: &str) -> (Option<Span>, String) {
    let span = crate::telemetry::tracer().map(|t| Span::start(t, ready, agent_id));
    let traceparent = span
        .as_ref()
        .map_or_else(|| traceparent_of(ready), |s| s.traceparent().to_owned());
    (span, traceparent)
}

#[cfg(not(feature = "runtime"))]
fn process_span(ready: &ObjectReady, _agent_id: &str) -> (Option<Span>, String) {
    (None, traceparent_of(ready))
}
