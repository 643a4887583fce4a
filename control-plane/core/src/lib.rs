//! # strata-core
//!
//! The pure heart of Strata: reading catalogues ([`catalogue`]), planning a batch ([`planner`]),
//! the per-object state machine ([`machine`]), the retry policy ([`retry`]) and freshness
//! ([`freshness`]). It takes events and time as arguments and returns what should happen as data.
//!
//! This crate must not depend on tokio, tonic, rdkafka, redis or anything else that performs I/O;
//! the test command checks that with `cargo tree`. Drivers in the control plane and the worker
//! agent own the I/O.

pub mod agents;
pub mod catalogue;
pub mod coalesce;
pub mod dedup;
pub mod freshness;
pub mod graph;
pub mod limits;
pub mod machine;
pub mod model;
pub mod planner;
pub mod preflight;
pub mod retry;
pub mod submission;
pub mod synth;

pub use model::{Attributes, Dag, NodeIx, ObjectDef, ObjectId, Zone};
