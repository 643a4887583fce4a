//! The control plane's Prometheus metrics (`docs/design.md#observability`): every name is declared here, in one
//! registry per process, with the `strata_` prefix and bounded labels only (zone, state, outcome,
//! reason, operation — never a batch or object id).
//!
//! Everything is updated where things happen (the driver): counters and histograms as events
//! occur, the objects and batches by state as they move (a scrape costs the number of series,
//! not the number of objects), and the live agents per zone from the registry at each scrape.

use std::sync::Arc;

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Buckets of the release latency (result consumed → child Ready handed to the producer).
const RELEASE_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Buckets of durations that follow the processors: an object's processing, and its whole life
/// in a batch.
const LONG_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
];

/// Every metric of the control plane. Cheap to clone (shared handles).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    objects: IntGaugeVec,
    batches: IntGaugeVec,
    agents_live: IntGaugeVec,
    ready_published: IntCounterVec,
    results: IntCounterVec,
    results_ignored: IntCounterVec,
    results_rejected: IntCounterVec,
    retries_scheduled: IntCounterVec,
    dead_letters: IntCounterVec,
    kafka_errors: IntCounterVec,
    redis_errors: IntCounterVec,
    tls_handshake_failures: IntCounterVec,
    driver_stalled: IntGauge,
    redis_state_lost: IntGauge,
    batches_not_restored: IntCounterVec,
    release_latency: Histogram,
    object_latency: HistogramVec,
    processing: HistogramVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn histogram(name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric")
}

impl Metrics {
    /// A new registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("strata".into()), None).expect("valid prefix");
        let inner = Inner {
            objects: gauge(
                "objects",
                "Objects of the batches this control plane holds in memory (running ones, and \
                 finished ones for --finished-retention-secs), by zone and state.",
                &["zone", "state"],
            ),
            batches: gauge(
                "batches",
                "Batches this control plane holds in memory, by state (finished ones for \
                 --finished-retention-secs).",
                &["state"],
            ),
            agents_live: gauge(
                "agents_live",
                "Worker agents holding a live lease, by zone (draining ones included).",
                &["zone"],
            ),
            ready_published: counter(
                "ready_published_total",
                "Ready records delivered to the broker, by zone.",
                &["zone"],
            ),
            results: counter(
                "results_total",
                "Result records consumed, by outcome (started, loaded, failed, undecodable).",
                &["outcome"],
            ),
            results_ignored: counter(
                "results_ignored_total",
                "Results that changed nothing, by reason (duplicates, stale attempts, unknown \
                 batch, ...).",
                &["reason"],
            ),
            results_rejected: counter(
                "results_rejected_total",
                "Results rejected before they could change anything, by reason: unsigned, \
                 bad_signature, old_key, unknown_lease, old_lease, wrong_zone.",
                &["reason"],
            ),
            retries_scheduled: counter(
                "retries_scheduled_total",
                "Retries scheduled after a retryable failure, by zone.",
                &["zone"],
            ),
            dead_letters: counter(
                "dead_letters_total",
                "Objects dead-lettered, by zone.",
                &["zone"],
            ),
            kafka_errors: counter(
                "kafka_errors_total",
                "Failed Kafka operations (each failed try), by operation.",
                &["op"],
            ),
            redis_errors: counter(
                "redis_errors_total",
                "Failed Redis operations (each failed try), by operation.",
                &["op"],
            ),
            tls_handshake_failures: counter(
                "grpc_tls_handshake_failures_total",
                "Connections to the gRPC port whose TLS handshake failed (a plaintext or \
                 untrusting client, a refused client certificate), by reason (error, timeout).",
                &["reason"],
            ),
            driver_stalled: IntGauge::new(
                "driver_stalled",
                "1 while the driver waits for a state write (Redis) it retries until it \
                 succeeds: no result is taken and nothing is released meanwhile.",
            )
            .expect("valid metric"),
            redis_state_lost: IntGauge::new(
                "redis_state_lost",
                "1 once Redis was found without the state this control plane wrote (its \
                 generation marker missing or changed: a restart without persistence, FLUSHALL, \
                 eviction); nothing more is written until the control plane is restarted.",
            )
            .expect("valid metric"),
            batches_not_restored: counter(
                "batches_not_restored_total",
                "Active batches in Redis a starting control plane refused to restore, by reason: \
                 no_plan (their objects no longer plan), layout_changed (they plan to another \
                 node layout than their stored records), inconsistent (records the state \
                 machine rejects).",
                &["reason"],
            ),
            release_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "release_latency_seconds",
                    "A result consumed until the Ready records it released are handed to the \
                     producer (one sample per released Ready; the state write is inside it).",
                )
                .buckets(RELEASE_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            object_latency: histogram(
                "object_latency_seconds",
                "Submission of its batch until an object is LOADED, by zone.",
                LONG_BUCKETS,
                &["zone"],
            ),
            processing: histogram(
                "processing_seconds",
                "Processor run time of an attempt as its agent reported it, by zone.",
                LONG_BUCKETS,
                &["zone"],
            ),
            registry,
        };
        for c in [
            Box::new(inner.objects.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(inner.batches.clone()),
            Box::new(inner.agents_live.clone()),
            Box::new(inner.ready_published.clone()),
            Box::new(inner.results.clone()),
            Box::new(inner.results_ignored.clone()),
            Box::new(inner.results_rejected.clone()),
            Box::new(inner.retries_scheduled.clone()),
            Box::new(inner.dead_letters.clone()),
            Box::new(inner.kafka_errors.clone()),
            Box::new(inner.redis_errors.clone()),
            Box::new(inner.tls_handshake_failures.clone()),
            Box::new(inner.driver_stalled.clone()),
            Box::new(inner.redis_state_lost.clone()),
            Box::new(inner.batches_not_restored.clone()),
            Box::new(inner.release_latency.clone()),
            Box::new(inner.object_latency.clone()),
            Box::new(inner.processing.clone()),
        ] {
            inner.registry.register(c).expect("metric names are unique");
        }
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Creates the per-zone counters at 0 for `zones`, so that the first event of a zone is an
    /// increase Prometheus can see (`increase()` ignores a series that starts above 0).
    pub fn init_zones(&self, zones: &[strata_core::Zone]) {
        for zone in zones {
            let z = [zone.as_str()];
            self.inner.ready_published.with_label_values(&z);
            self.inner.retries_scheduled.with_label_values(&z);
            self.inner.dead_letters.with_label_values(&z);
        }
    }

    /// A TLS handshake on the gRPC port failed (`error`) or did not finish in time (`timeout`).
    pub fn tls_handshake_failed(&self, reason: &str) {
        self.inner
            .tls_handshake_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// Ready records of `zone` delivered.
    pub fn ready_published(&self, zone: &str, n: u64) {
        self.inner
            .ready_published
            .with_label_values(&[zone])
            .inc_by(n);
    }

    /// A result record consumed (`started`, `loaded`, `failed`, `undecodable`).
    pub fn result(&self, outcome: &str) {
        self.inner.results.with_label_values(&[outcome]).inc();
    }

    /// A result rejected before the machine saw it (`driver/verify.rs`).
    pub fn result_rejected(&self, reason: &str) {
        self.inner
            .results_rejected
            .with_label_values(&[reason])
            .inc();
    }

    /// A result that changed nothing.
    pub fn result_ignored(&self, reason: &str) {
        self.inner
            .results_ignored
            .with_label_values(&[reason])
            .inc();
    }

    /// A retry scheduled in `zone`.
    pub fn retry_scheduled(&self, zone: &str) {
        self.inner
            .retries_scheduled
            .with_label_values(&[zone])
            .inc();
    }

    /// An object of `zone` dead-lettered.
    pub fn dead_letter(&self, zone: &str) {
        self.inner.dead_letters.with_label_values(&[zone]).inc();
    }

    /// Whether the driver waits for a state write.
    pub fn set_driver_stalled(&self, stalled: bool) {
        self.inner.driver_stalled.set(i64::from(stalled));
    }

    /// A stored batch was not restored, for `reason`.
    pub fn batch_not_restored(&self, reason: &str) {
        self.inner
            .batches_not_restored
            .with_label_values(&[reason])
            .inc();
    }

    /// Redis was found without the state this process wrote.
    pub fn redis_state_lost(&self) {
        self.inner.redis_state_lost.set(1);
    }

    /// A failed try of an operation on `service` (`kafka` or `redis`).
    pub fn port_error(&self, service: &str, op: &str) {
        let counter = if service == "redis" {
            &self.inner.redis_errors
        } else {
            &self.inner.kafka_errors
        };
        counter.with_label_values(&[op]).inc();
    }

    /// `n` releases that took `seconds` each.
    pub fn release_latency(&self, seconds: f64, n: u64) {
        for _ in 0..n {
            self.inner.release_latency.observe(seconds);
        }
    }

    /// An object of `zone` loaded `seconds` after its batch was submitted.
    pub fn object_loaded(&self, zone: &str, seconds: f64) {
        self.inner
            .object_latency
            .with_label_values(&[zone])
            .observe(seconds);
    }

    /// An attempt of `zone` whose processor ran `seconds`.
    pub fn processed(&self, zone: &str, seconds: f64) {
        self.inner
            .processing
            .with_label_values(&[zone])
            .observe(seconds);
    }

    /// `n` objects of `zone` entered the driver in `state` (a batch installed).
    pub fn objects_entered(&self, zone: &str, state: &str, n: i64) {
        self.inner.objects.with_label_values(&[zone, state]).add(n);
    }

    /// An object of `zone` moved from one state to another.
    pub fn object_moved(&self, zone: &str, from: &str, to: &str) {
        self.inner.objects.with_label_values(&[zone, from]).dec();
        self.inner.objects.with_label_values(&[zone, to]).inc();
    }

    /// A batch entered the driver in `state`.
    pub fn batch_entered(&self, state: &str) {
        self.inner.batches.with_label_values(&[state]).inc();
    }

    /// A batch in `state` left memory.
    pub fn batch_left(&self, state: &str) {
        self.inner.batches.with_label_values(&[state]).dec();
    }

    /// A batch moved from one state to another.
    pub fn batch_moved(&self, from: &str, to: &str) {
        self.inner.batches.with_label_values(&[from]).dec();
        self.inner.batches.with_label_values(&[to]).inc();
    }

    /// Sets the live agents per zone: one zone per live agent in `live` (each of `zones` is
    /// listed, 0 when none is live).
    pub fn set_agents_live<'a>(
        &self,
        zones: &[strata_core::Zone],
        live: impl IntoIterator<Item = &'a strata_core::Zone>,
    ) {
        let gauge = &self.inner.agents_live;
        gauge.reset();
        for zone in zones {
            gauge.with_label_values(&[zone.as_str()]).set(0);
        }
        for zone in live {
            gauge.with_label_values(&[zone.as_str()]).inc();
        }
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.inner.registry.gather(), &mut out)
            .expect("the text encoding into memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}
