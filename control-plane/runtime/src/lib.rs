//! Strata's process runtime: what the control plane and the worker agent both need around their
//! own logic, one module per job.
//!
//! - `kafka_config`: Kafka client configuration, one function per role (feature `kafka`).
//! - `kafka_logs`: librdkafka log routing into `tracing` (feature `kafka`).
//! - `kafka_security`: SASL/TLS settings of the Kafka clients, the password as a `Secret`.
//! - `log_limit`: a recurring log line at most once per interval per key.
//! - `producer`: producer-replacement rules (feature `kafka`).
//! - `detached`: drop on a thread, for handles whose destruction blocks.
//! - `otlp`: OTLP install and the `traceparent` header (feature `otlp`).
//! - `admin`: the admin HTTP server (`/metrics`, `/health/*`).
//! - `logs`: tracing init (`STRATA_LOG`).
//! - `executor`: the Tokio runtime a binary runs on.
//! - `shutdown`: the shutdown signal.
//!
//! What is contract (topic and consumer-group names, record headers) lives in the wire crate, not
//! here; the pure core never depends on this crate.

pub mod admin;
pub mod detached;
pub mod executor;
#[cfg(feature = "kafka")]
pub mod kafka_config;
#[cfg(feature = "kafka")]
pub mod kafka_logs;
pub mod kafka_security;
pub mod log_limit;
pub mod logs;
#[cfg(feature = "otlp")]
pub mod otlp;
#[cfg(feature = "kafka")]
pub mod producer;
pub mod shutdown;
