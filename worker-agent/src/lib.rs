//! # strata-worker-agent
//!
//! What users deploy per zone (`docs/design.md#agents-and-processors`): an agent registers with the control plane's
//! `AgentRegistry` ([`registry`]), consumes its zone's Ready topic in the zone's consumer group,
//! runs a [`processor::Processor`] for each object (up to its capacity at once), reports
//! `ObjectStarted` then `ObjectLoaded` or `ObjectFailed` ([`kafka`]), stores a Ready's offset only
//! once its result is delivered ([`offsets::OffsetTracker`]), skips stale and duplicate releases
//! ([`admission::Releases`]), heartbeats, and drains on SIGTERM ([`agent`]). Its admin port
//! ([`admin`]) serves `/metrics` ([`metrics`]) and health.
//!
//! [`agent::run`] is the only agent loop: it is written against [`ports`] (a Ready source, a
//! result sink, a lease), implemented over Kafka (`kafka_ports`, the deployed agent) and over the
//! in-memory bus ([`memory`]: `strata dev`, the component tests).
//!
//! The binary (`strata-worker-agent --help`) wires the built-in processors; embed [`agent::run`]
//! with your own [`processor::Processor`] to write a custom agent in Rust.

pub mod admin;
pub mod admission;
pub mod agent;
#[cfg(feature = "runtime")]
pub mod builtin;
pub mod config;
#[cfg(feature = "runtime")]
pub mod kafka;
#[cfg(feature = "runtime")]
pub mod kafka_ports;
pub mod memory;
pub mod metrics;
pub mod offsets;
pub mod ports;
pub mod processor;
pub mod registry;
pub mod results;
#[cfg(feature = "runtime")]
pub mod telemetry;

/// Resolves once `stop` is (or becomes) true, or its sender is gone. (Holds no borrow of the
/// channel's value across an await, so futures using it stay `Send`.)
pub async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
