//! # strata-worker-agent
//!
//! What users deploy per zone (DESIGN §1, §8): an agent registers with the control plane's
//! `AgentRegistry`, consumes its zone's Ready topic in the zone's consumer group, runs a
//! [`processor::Processor`] for each object, reports `ObjectStarted` then `ObjectLoaded` or
//! `ObjectFailed`, and stores a Ready's offset only once its result is delivered
//! ([`offsets::OffsetTracker`]).
//!
//! Built so far: the processor contract with the seed's `simulate` behaviour, and the offset
//! tracker. The agent process itself (registration, consumption, heartbeats, drain) is next.

pub mod offsets;
pub mod processor;
