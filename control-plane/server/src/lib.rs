//! # strata-control-plane
//!
//! The control plane: the `strata.v1.Orchestrator` gRPC service, the driver that owns every
//! running batch's state machine and performs its effects, and the adapters to Kafka (data plane)
//! and Redis (state) behind the narrow traits of [`ports`], each with an in-memory twin for dev
//! mode and component tests.
//!
//! The planning and state-machine logic lives in `strata-core` (pure); this crate is I/O and
//! wiring only.

pub mod adapters;
pub mod admin;
pub mod auth;
pub mod config;
pub mod convert;
pub mod driver;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod latency;
pub mod metrics;
pub mod ports;
pub mod quota;
pub mod records;
pub mod run;
pub mod service;
pub mod telemetry;
pub mod tls;
