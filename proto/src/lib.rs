//! # strata-proto
//!
//! The `strata.v1` wire contract, generated from `proto/strata/v1/*.proto`: the gRPC services
//! `Orchestrator` (user-facing) and `AgentRegistry` (worker agents), their messages, and the
//! protobuf payloads of the Kafka data plane (`ObjectReady`, `ObjectResult`, `DeadLetter`,
//! `StatusChanged`). The `.proto` files are the documentation of record: every message, field,
//! enum value, service and RPC has a doc comment there, carried into the generated rustdoc and
//! into [`FILE_DESCRIPTOR_SET`] (for gRPC server reflection).
//!
//! This crate is **wire only**: generated code, a few constants that are part of the contract,
//! and the signatures of the signed records ([`signing`]: the canonical text each covers, signed
//! and verified in one place for both sides). No domain logic, no validation, no proto ↔ domain
//! conversion (that lives in one module of the crate that owns the domain types). It depends only
//! on prost, prost-types, tonic, tonic-prost and the signatures' pure-Rust crypto (sha2, hmac,
//! ed25519-dalek), and must never depend on the core crate, tokio runtime features, rdkafka,
//! redis or configuration types, so that changing any of them does not recompile every client.
//!
//! Code generation uses protox (pure Rust) in `build.rs`; no system `protoc` is needed.

/// Generated messages, enums, clients (`orchestrator_client`, `agent_registry_client`) and
/// servers (`orchestrator_server`, `agent_registry_server`) of package `strata.v1`.
///
/// Every message implements `prost::Name`: `full_name()` is the Kafka `strata-type` header value
/// and `type_url()` the `google.protobuf.Any` type URL (e.g. of a `BatchRejection` error detail).
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("strata.v1");
}

pub mod signing;

/// The encoded `google.protobuf.FileDescriptorSet` of package `strata.v1`, with the imported
/// well-known types (`google/protobuf/timestamp.proto`, `duration.proto`) and source info
/// (comments). Register it with `tonic_reflection::server::Builder::
/// register_encoded_file_descriptor_set` so that `grpcurl list` works without proto files.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/strata_v1_descriptor.bin"));

/// The Kafka side of the contract (`docs/design.md#topics-and-records`): topic names, record header names and the values of
/// the `strata-type` header.
pub mod kafka {
    /// Default topic prefix. Topic names are `<prefix>.<name>`, with `<name>` one of the
    /// `*_TOPIC` values below (and `.<zone>` appended for the ready topics).
    pub const DEFAULT_TOPIC_PREFIX: &str = "strata";
    /// Ready topics, one per zone: `<prefix>.ready.<zone>` (e.g. `strata.ready.raw`); key =
    /// object id; value = `ObjectReady`.
    pub const READY_TOPIC: &str = "ready";
    /// Results topic `<prefix>.results`; key = batch id; value = `ObjectResult`.
    pub const RESULTS_TOPIC: &str = "results";
    /// Dead-letter topic `<prefix>.dlq`; key = object id; value = `DeadLetter`.
    pub const DLQ_TOPIC: &str = "dlq";
    /// Status topic `<prefix>.status`; key = batch id; value = `StatusChanged`.
    pub const STATUS_TOPIC: &str = "status";

    /// Longest `ObjectFailed.error` in bytes: an agent cuts a longer one before signing it, and
    /// the control plane cuts what it receives to the same length before keeping it.
    pub const MAX_RESULT_ERROR_BYTES: usize = 4096;
    /// Longest agent id a result may name, in bytes (the control plane's ids are far shorter);
    /// a longer one is cut, so it names no lease.
    pub const MAX_AGENT_ID_BYTES: usize = 128;

    /// `text` cut to at most `max` bytes on a character boundary, ending with `…` when cut.
    pub fn truncated(mut text: String, max: usize) -> String {
        if text.len() <= max {
            return text;
        }
        let mut end = max.saturating_sub('…'.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
        text
    }

    /// `<prefix>.ready.<zone>`: where the Ready records of `zone` go.
    pub fn ready_topic(prefix: &str, zone: &str) -> String {
        format!("{prefix}.{READY_TOPIC}.{zone}")
    }

    /// `<prefix>.results`: where agents publish `ObjectResult` records.
    pub fn results_topic(prefix: &str) -> String {
        format!("{prefix}.{RESULTS_TOPIC}")
    }

    /// `<prefix>.dlq`: dead letters.
    pub fn dlq_topic(prefix: &str) -> String {
        format!("{prefix}.{DLQ_TOPIC}")
    }

    /// `<prefix>.status`: status changes for external consumers.
    pub fn status_topic(prefix: &str) -> String {
        format!("{prefix}.{STATUS_TOPIC}")
    }

    /// `<prefix>.agents.<zone>`: the consumer group of `zone`'s agents on its ready topic (the
    /// `AgentRegistry` hands it out with the lease).
    pub fn agent_group(prefix: &str, zone: &str) -> String {
        format!("{prefix}.agents.{zone}")
    }

    /// Header naming the record value's message type (one of the `TYPE_*` values).
    pub const HEADER_TYPE: &str = "strata-type";
    /// W3C trace-context header.
    pub const HEADER_TRACEPARENT: &str = "traceparent";
    /// W3C trace-state header (only when non-empty).
    pub const HEADER_TRACESTATE: &str = "tracestate";

    /// `strata-type` of records on the ready topics.
    pub const TYPE_OBJECT_READY: &str = "strata.v1.ObjectReady";
    /// `strata-type` of records on the results topic.
    pub const TYPE_OBJECT_RESULT: &str = "strata.v1.ObjectResult";
    /// `strata-type` of records on the dead-letter topic.
    pub const TYPE_DEAD_LETTER: &str = "strata.v1.DeadLetter";
    /// `strata-type` of records on the status topic.
    pub const TYPE_STATUS_CHANGED: &str = "strata.v1.StatusChanged";

    /// First line of the canonical text that result signatures cover (see `ObjectResult`).
    pub const RESULT_SIGNATURE_DOMAIN: &str = "strata.v1.result";
    /// First line of the canonical text that Ready signatures cover (see `ObjectReady`).
    pub const READY_SIGNATURE_DOMAIN: &str = "strata.v1.ready";
}

/// Default maximum size of one gRPC message, in bytes: 16 MiB (about 60,000 objects in one unary
/// `SubmitBatch`), above the gRPC default of 4 MiB. Requests above the server's configured limit
/// are `RESOURCE_EXHAUSTED`; batches beyond it are sent with `SubmitBatchStream`, each chunk below
/// it.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
