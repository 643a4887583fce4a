//! Kafka data plane (in progress).
