//! Every metric the agent exports, in one registry (served on the admin port's `/metrics`).
//! Labels are bounded: zone and outcome, never ids.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Why a Ready record was not processed, or that it was (`accepted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyVerdict {
    /// Taken for processing.
    Accepted,
    /// For another zone than the agent's.
    OtherZone,
    /// An older release of an object this agent has seen a newer release of.
    Stale,
    /// The same attempt is already in flight here (a redelivery).
    Duplicate,
    /// Not an `ObjectReady` (wrong type header or bad protobuf).
    Undecodable,
    /// Not signed by the control plane (unsigned or a bad signature; by reason in
    /// `ready_rejected_total`).
    Rejected,
}

impl ReadyVerdict {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::OtherZone => "other_zone",
            Self::Stale => "stale",
            Self::Duplicate => "duplicate",
            Self::Undecodable => "undecodable",
            Self::Rejected => "rejected",
        }
    }
}

/// The agent's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Ready records consumed, by verdict.
    pub readies: IntCounterVec,
    /// Ready records not run because they are not the control plane's, by reason: `unsigned`,
    /// `bad_signature`.
    pub ready_rejected: IntCounterVec,
    /// Results published (delivered), by outcome: `started`, `loaded`, `failed_retryable`,
    /// `failed_permanent`, `timeout`, `drained`.
    pub results: IntCounterVec,
    /// Attempts dropped without a result because the control plane abandoned them or the lease
    /// was lost.
    pub abandoned: prometheus::IntCounter,
    /// Attempts in flight.
    pub in_flight: IntGauge,
    /// Partitions of the Ready topic assigned to this agent by its consumer group.
    pub assigned_partitions: IntGauge,
    /// The agent's capacity.
    pub capacity: IntGauge,
    /// Records of the zone's Ready topic not yet consumed by this agent (its partitions).
    pub consumer_lag: IntGauge,
    /// 1 while the agent holds a lease.
    pub registered: IntGauge,
    /// Registrations made (more than one = the lease was lost and renewed).
    pub registrations: prometheus::IntCounter,
    /// Result signing keys the control plane rotated at a heartbeat.
    pub result_key_rotations: prometheus::IntCounter,
    /// Ready consumers replaced because the control plane created the topics again.
    pub resubscriptions: prometheus::IntCounter,
    /// Heartbeats that failed, by kind: `unavailable` (no answer) or `lease_lost`.
    pub heartbeat_failures: IntCounterVec,
    /// Kafka errors: `consume`, `deliver`, `store_offset`, `subscribe`.
    pub kafka_errors: IntCounterVec,
    /// Processor run time per attempt, by outcome.
    pub processing_seconds: prometheus::HistogramVec,
    /// Time from the control plane's release to the agent taking the record.
    pub pickup_seconds: Histogram,
}

impl Metrics {
    /// The metrics, registered in a new registry with constant label `zone`.
    pub fn new(zone: &str) -> Self {
        let registry = Registry::new_custom(
            Some("strata_agent".into()),
            Some([("zone".to_owned(), zone.to_owned())].into_iter().collect()),
        )
        .expect("static registry settings are valid");
        let readies = IntCounterVec::new(
            Opts::new("readies_total", "Ready records consumed, by verdict."),
            &["verdict"],
        )
        .expect("valid");
        let results = IntCounterVec::new(
            Opts::new(
                "results_total",
                "Results delivered to the broker, by outcome.",
            ),
            &["outcome"],
        )
        .expect("valid");
        let abandoned = prometheus::IntCounter::new(
            "abandoned_total",
            "Attempts dropped without a result: abandoned by the control plane or lease lost.",
        )
        .expect("valid");
        let in_flight = IntGauge::new("in_flight", "Attempts in flight.").expect("valid");
        let assigned_partitions = IntGauge::new(
            "assigned_partitions",
            "Partitions of the zone's Ready topic assigned to this agent.",
        )
        .expect("valid");
        let capacity = IntGauge::new("capacity", "Most attempts run at once.").expect("valid");
        let consumer_lag = IntGauge::new(
            "consumer_lag",
            "Records of the zone's Ready topic not yet consumed by this agent, over its \
             partitions (librdkafka statistics, every 5 s; -1 until known).",
        )
        .expect("valid");
        consumer_lag.set(-1);
        let registered =
            IntGauge::new("registered", "1 while the agent holds a lease.").expect("valid");
        let registrations = prometheus::IntCounter::new(
            "registrations_total",
            "Registrations with the control plane.",
        )
        .expect("valid");
        let result_key_rotations = prometheus::IntCounter::new(
            "result_key_rotations_total",
            "Result signing keys the control plane handed out at a heartbeat (rotations).",
        )
        .expect("valid");
        let resubscriptions = prometheus::IntCounter::new(
            "resubscriptions_total",
            "Ready consumers replaced because the control plane created the topics again.",
        )
        .expect("valid");
        let ready_rejected = IntCounterVec::new(
            Opts::new(
                "ready_rejected_total",
                "Ready records not run because the control plane did not sign them, by reason \
                 (unsigned, bad_signature).",
            ),
            &["reason"],
        )
        .expect("valid");
        let heartbeat_failures = IntCounterVec::new(
            Opts::new("heartbeat_failures_total", "Failed heartbeats, by kind."),
            &["kind"],
        )
        .expect("valid");
        let kafka_errors = IntCounterVec::new(
            Opts::new("kafka_errors_total", "Kafka errors, by operation."),
            &["op"],
        )
        .expect("valid");
        let processing_seconds = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "processing_seconds",
                "Processor run time per attempt, by outcome.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                1800.0,
            ]),
            &["outcome"],
        )
        .expect("valid");
        let pickup_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "pickup_seconds",
                "Time from the control plane's release of an attempt to this agent taking it.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
            ]),
        )
        .expect("valid");
        for c in [
            Box::new(readies.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(ready_rejected.clone()),
            Box::new(results.clone()),
            Box::new(abandoned.clone()),
            Box::new(in_flight.clone()),
            Box::new(assigned_partitions.clone()),
            Box::new(capacity.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(registered.clone()),
            Box::new(registrations.clone()),
            Box::new(result_key_rotations.clone()),
            Box::new(resubscriptions.clone()),
            Box::new(heartbeat_failures.clone()),
            Box::new(kafka_errors.clone()),
            Box::new(processing_seconds.clone()),
            Box::new(pickup_seconds.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            readies,
            ready_rejected,
            results,
            abandoned,
            in_flight,
            assigned_partitions,
            capacity,
            consumer_lag,
            registered,
            registrations,
            result_key_rotations,
            resubscriptions,
            heartbeat_failures,
            kafka_errors,
            processing_seconds,
            pickup_seconds,
        }
    }

    /// Counts a Ready verdict.
    pub fn ready(&self, verdict: ReadyVerdict) {
        self.readies.with_label_values(&[verdict.as_str()]).inc();
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}
