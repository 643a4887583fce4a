//! Implementations of the [`ports`](crate::ports) traits: Kafka and Redis for real deployments,
//! in-memory ones for dev mode and component tests.

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
