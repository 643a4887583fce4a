//! The decoders of outside bytes that are private to their modules, reachable for the fuzz
//! targets (`fuzz/`) and the arbitrary-input tests (`tests/decode_arbitrary.rs`). Not an API:
//! thin forwards, hidden from the docs; the decoders themselves stay where they are.
//!
//! The public ones are used from where they live: `adapters::kafka::decode_result`,
//! `convert::object_defs` (`traceparent` headers are read by `strata_runtime::otlp::parse_traceparent`).

#[cfg(feature = "redis")]
pub use redis::*;

/// The Redis store's byte encodings (`adapters::redis::codec`).
#[cfg(feature = "redis")]
mod redis {
    use std::collections::HashMap;

    use strata_core::ObjectDef;
    use strata_core::machine::NodeRecord;

    use crate::adapters::redis::codec;
    use crate::ports::{BatchHead, StoredBatch};

    /// The field names of a stored batch's hash, as [`decode_batch_hash`] reads them.
    pub const BATCH_HASH_FIELDS: [&str; 8] = [
        codec::field::ID,
        codec::field::IDEMPOTENCY_KEY,
        codec::field::CONTENT_HASH,
        codec::field::CREATED_AT_MS,
        codec::field::OPTIONS,
        codec::field::STATE,
        codec::field::NEXT_EPOCH,
        codec::field::FINISHED_AT_MS,
    ];

    /// Appends the compact encoding of a node record.
    pub fn encode_record(r: &NodeRecord, out: &mut Vec<u8>) {
        codec::encode_record(r, out);
    }

    /// Decodes a node record (a value of a `batch:{id}:nodes` hash).
    pub fn decode_record(bytes: &[u8]) -> Result<NodeRecord, String> {
        codec::decode_record(bytes)
    }

    /// Rebuilds a batch's definition and head from its hash fields.
    pub fn decode_batch_hash(
        fields: &HashMap<Vec<u8>, Vec<u8>>,
    ) -> Result<(StoredBatch, BatchHead), String> {
        codec::decode_batch_hash(fields)
    }

    /// Decodes a batch's stored objects.
    pub fn decode_objects(bytes: &[u8]) -> Result<Vec<ObjectDef>, String> {
        codec::decode_objects(bytes)
    }

    /// A list cursor from its score and member.
    pub fn encode_cursor(score: &str, member: &str) -> String {
        codec::encode_cursor(score, member)
    }

    /// Splits a list cursor (given back by a caller).
    pub fn decode_cursor(cursor: &str) -> Result<(String, String), String> {
        codec::decode_cursor(cursor)
    }

    /// The member of a retry in the `retries` sorted set.
    pub fn retry_member(batch_id: &str, node: u32, attempt: u32) -> String {
        codec::retry_member(batch_id, node, attempt)
    }

    /// Splits a retry member.
    pub fn parse_retry_member(member: &str) -> Result<(String, u32, u32), String> {
        codec::parse_retry_member(member)
    }

    /// Splits a dead-letter member.
    pub fn parse_dead_member(member: &str) -> Result<(String, u32), String> {
        codec::parse_dead_member(member)
    }

    /// A sorted-set score as Redis prints it.
    pub fn parse_score(raw: &str) -> Result<i64, String> {
        codec::parse_score(raw)
    }
}

/// An opaque page token for `filters` and `position` (`service::wire`).
pub fn encode_token(filters: &str, position: &str) -> String {
    crate::service::wire::encode_token(filters, position)
}

/// The position of a page token (given back by a caller), checked against the filters.
pub fn decode_token(
    token: &str,
    filters: &str,
) -> Result<Option<String>, crate::error::ServiceError> {
    crate::service::wire::decode_token(token, filters)
}
