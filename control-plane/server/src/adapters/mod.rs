//! Implementations of the [`ports`](crate::ports) traits: Kafka and Redis for real deployments,
//! in-memory ones for dev mode and component tests.

pub mod kafka;
pub mod memory;
pub mod redis;
