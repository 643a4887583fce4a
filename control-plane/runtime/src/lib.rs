//! # strata-runtime
//!
//! The process runtime both Strata binaries (the control plane and the worker agent) share around
//! their own logic, one module per job. What is contract (topic and consumer-group names, record
//! headers) lives in the wire crate, not here; the pure core never depends on this crate.

pub mod admin;
pub mod detached;
pub mod executor;
#[cfg(feature = "kafka")]
pub mod kafka_config;
#[cfg(feature = "kafka")]
pub mod kafka_logs;
pub mod logs;
#[cfg(feature = "otlp")]
pub mod otlp;
#[cfg(feature = "kafka")]
pub mod producer;
pub mod shutdown;
