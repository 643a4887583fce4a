//! The agent's decoders of outside bytes against arbitrary and corrupted input: Ready records from
//! Kafka (`decode_ready`, with any `strata-type` header). The `traceparent` it carries is parsed by
//! `strata_runtime::otlp`, fuzzed in the control plane's `tests/decode_arbitrary.rs`.
//! Each answers a value or an error with a reason, and never panics (a panic fails the property);
//! what decodes re-encodes to itself. A bounded run of what `fuzz/fuzz_targets/ready.rs` does
//! without end.

#![cfg(feature = "runtime")]

use proptest::prelude::*;
use prost::Message;
use rdkafka::message::{Header, OwnedHeaders};
use strata_proto::kafka as wire;
use strata_proto::v1 as pb;
use strata_worker_agent::kafka::decode_ready;

#[path = "../../control-plane/core/tests/mutate/mod.rs"]
mod mutate;

const CASES: u32 = 512;

/// Protobuf bytes worth inserting: tags of the first fields with each wire type, lengths, varints.
const PROTO_TOKENS: &[&str] = &[
    "\u{8}",
    "\u{a}",
    "\u{12}",
    "\u{3a}",
    "\u{52}\u{7f}",
    "\u{7f}",
    "\u{0}",
];

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..256)
}

/// A Ready as the control plane writes one (any field values).
fn ready() -> impl Strategy<Value = pb::ObjectReady> {
    (
        ("[a-z0-9-]{0,12}", "[0-9]{1,6}", "[a-z]{0,8}"),
        (any::<u32>(), any::<u32>(), any::<u64>()),
        prop::option::of(("[0-9]{1,4}", prop::collection::vec("[0-9]{1,4}", 0..3))),
        prop::option::of((any::<i64>(), any::<i32>())),
        prop::option::of(".{0,60}"),
    )
        .prop_map(
            |((b, o, z), (attempt, max_attempts, epoch), object, timeout, trace)| pb::ObjectReady {
                batch_id: b,
                object_id: o,
                zone: z,
                attempt,
                max_attempts,
                dispatch_epoch: epoch,
                object: object.map(|(id, parents)| pb::ObjectDefinition {
                    id,
                    parents,
                    ..Default::default()
                }),
                execution_timeout: timeout
                    .map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
                trace: trace.map(|traceparent| pb::TraceContext {
                    traceparent,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
}

/// A record's headers, if it has any: (key, value) in order.
type Headers = Option<Vec<(String, Option<Vec<u8>>)>>;

/// Headers of a Ready record: none, the right type, another type, or anything.
fn headers() -> impl Strategy<Value = Headers> {
    let value = prop_oneof![
        4 => Just(Some(wire::TYPE_OBJECT_READY.as_bytes().to_vec())),
        1 => Just(Some(wire::TYPE_OBJECT_RESULT.as_bytes().to_vec())),
        1 => Just(None),
        1 => bytes().prop_map(Some),
    ];
    let key = prop_oneof![4 => Just(wire::HEADER_TYPE.to_owned()), 1 => ".{0,8}"];
    prop::option::of(prop::collection::vec((key, value), 0..3))
}

fn check_ready(headers: &Headers, payload: Option<&[u8]>) -> Result<(), TestCaseError> {
    let owned = headers.as_ref().map(|hs| {
        hs.iter().fold(OwnedHeaders::new(), |acc, (key, value)| {
            acc.insert(Header {
                key,
                value: value.as_deref(),
            })
        })
    });
    match decode_ready(owned.as_ref().map(OwnedHeaders::as_borrowed), payload) {
        Ok(r) => prop_assert_eq!(pb::ObjectReady::decode(r.encode_to_vec().as_slice()), Ok(r)),
        Err(reason) => prop_assert!(!reason.is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn ready_records_of_arbitrary_bytes(headers in headers(), payload in prop::option::of(bytes())) {
        check_ready(&headers, payload.as_deref())?;
    }

    #[test]
    fn ready_records_corrupted(headers in headers(), ready in ready(), edits in mutate::edits(PROTO_TOKENS)) {
        let mut payload = ready.encode_to_vec();
        check_ready(&headers, Some(&payload))?;
        mutate::apply(&mut payload, &edits);
        check_ready(&headers, Some(&payload))?;
    }
}
