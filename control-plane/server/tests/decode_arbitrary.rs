//! The control plane's decoders of outside bytes against arbitrary and corrupted input: results
//! records from Kafka (`decode_result`), the Redis store's node records, batch hashes, cursors and
//! sorted-set members, page tokens given back by callers, submitted object definitions, and
//! `traceparent` headers. Each answers a value or an error with a reason, and never panics (a
//! panic fails the property); what decodes re-encodes to itself. A bounded run of what the
//! targets under `fuzz/` do without end.

#![cfg(all(feature = "kafka", feature = "redis"))]

use std::collections::HashMap;

use chrono::DateTime;
use proptest::prelude::*;
use prost::Message;
use strata_control_plane::adapters::kafka::decode_result;
use strata_control_plane::convert::{self, object_defs};
use strata_control_plane::fuzzing::{
    BATCH_HASH_FIELDS, decode_batch_hash, decode_cursor, decode_objects, decode_record,
    decode_token, encode_cursor, encode_record, encode_token, parse_dead_member,
    parse_retry_member, parse_score, retry_member,
};
use strata_core::machine::{DeadReason, FailureKind, NodeRecord, NodeState};
use strata_core::submission::BatchOptions;
use strata_core::{ObjectDef, ObjectId, Zone};
use strata_proto::kafka as wire;
use strata_proto::v1 as pb;
use strata_runtime::otlp::{parse_traceparent, traceparent};

#[path = "../../core/tests/mutate/mod.rs"]
mod mutate;

const CASES: u32 = 512;

/// Protobuf bytes worth inserting: tags of the first fields with each wire type, lengths, varints.
const PROTO_TOKENS: &[&str] = &[
    "\u{8}",
    "\u{a}",
    "\u{12}",
    "\u{1a}",
    "\u{22}\u{7f}",
    "\u{7f}",
    "\u{0}",
];

/// Text tokens for the `:`-separated and hex encodings.
const TEXT_TOKENS: &[&str] = &[
    ":", "::", "\n", "0a", "ff", "+1", "-1", "1e400", "NaN", "é", "00-",
];

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..256)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[0-9a-f:+\\-.\\n eE]{0,40}"]
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    prop::option::of(
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
}

/// A results record as an agent writes one (any field values).
fn object_result() -> impl Strategy<Value = pb::ObjectResult> {
    use pb::object_result::Result as R;
    let ids = (
        "[a-z0-9-]{0,12}",
        "[0-9]{1,6}",
        "[a-z]{0,8}",
        any::<u32>(),
        any::<u64>(),
    );
    let started = (ids, timestamp()).prop_map(|((b, o, z, attempt, epoch), at)| {
        R::Started(pb::ObjectStarted {
            batch_id: b,
            object_id: o,
            zone: z,
            attempt,
            dispatch_epoch: epoch,
            started_at: at,
            ..Default::default()
        })
    });
    let loaded = (
        ids,
        timestamp(),
        prop::collection::hash_map(".{0,4}", ".{0,4}", 0..3),
    )
        .prop_map(|((b, o, z, attempt, epoch), at, info)| {
            R::Loaded(pb::ObjectLoaded {
                batch_id: b,
                object_id: o,
                zone: z,
                attempt,
                dispatch_epoch: epoch,
                finished_at: at,
                info,
                ..Default::default()
            })
        });
    let failed = (ids, any::<bool>(), ".{0,20}", any::<i32>()).prop_map(
        |((b, o, z, attempt, epoch), retryable, error, reason)| {
            R::Failed(pb::ObjectFailed {
                batch_id: b,
                object_id: o,
                zone: z,
                attempt,
                dispatch_epoch: epoch,
                retryable,
                error,
                reason,
                ..Default::default()
            })
        },
    );
    prop::option::of(prop_oneof![started, loaded, failed])
        .prop_map(|result| pb::ObjectResult { result })
}

fn type_header() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        4 => Just(Some(wire::TYPE_OBJECT_RESULT.as_bytes().to_vec())),
        1 => Just(None),
        1 => Just(Some(wire::TYPE_OBJECT_READY.as_bytes().to_vec())),
        1 => bytes().prop_map(Some),
    ]
}

fn check_result(header: Option<&[u8]>, payload: Option<&[u8]>) -> Result<(), TestCaseError> {
    match decode_result(header, payload) {
        Ok(r) => {
            // Exactly what the protobuf message says, as a report.
            let message = pb::ObjectResult::decode(payload.unwrap_or_default());
            prop_assert_eq!(message.ok().and_then(convert::agent_report), Some(r));
        }
        Err(reason) => prop_assert!(!reason.is_empty()),
    }
    Ok(())
}

fn node_record() -> impl Strategy<Value = NodeRecord> {
    let reason = prop::sample::select(
        &[
            DeadReason::Permanent,
            DeadReason::RetriesExhausted,
            DeadReason::Preflight,
            DeadReason::CoalescedFailed,
        ][..],
    );
    let kind = prop::sample::select(
        &[
            FailureKind::Processor,
            FailureKind::Timeout,
            FailureKind::AgentLost,
            FailureKind::Drained,
            FailureKind::InvalidInput,
            FailureKind::Preflight,
            FailureKind::Coalesced,
        ][..],
    );
    let due = (-100_000_000_000i64..100_000_000_000, 0u32..1_000_000_000)
        .prop_map(|(s, n)| DateTime::from_timestamp(s, n).expect("in range"));
    (
        prop::sample::select(&NodeState::ALL[..]),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        prop::option::of(".{0,12}"),
        prop::option::of(kind),
        prop::option::of(reason),
        prop::option::of(due),
    )
        .prop_map(
            |(
                state,
                attempt,
                run_start,
                dispatch_epoch,
                last_error,
                last_failure,
                dead_reason,
                retry_due,
            )| {
                NodeRecord {
                    state,
                    attempt,
                    run_start,
                    dispatch_epoch,
                    last_error,
                    last_failure,
                    dead_reason,
                    retry_due,
                }
            },
        )
}

fn encoded(r: &NodeRecord) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record(r, &mut out);
    out
}

fn check_record(bytes: &[u8]) -> Result<(), TestCaseError> {
    match decode_record(bytes) {
        Ok(r) => prop_assert_eq!(decode_record(&encoded(&r)), Ok(r)),
        Err(reason) => prop_assert!(!reason.is_empty()),
    }
    Ok(())
}

/// The hash of a stored batch, each field valid or not, some missing, some foreign.
fn batch_hash() -> impl Strategy<Value = HashMap<Vec<u8>, Vec<u8>>> {
    let valid: [BoxedStrategy<String>; 8] = [
        "[a-z0-9-]{1,12}".boxed(),
        ".{0,8}".boxed(),
        "[0-9a-f]{8}".boxed(),
        any::<i64>().prop_map(|n| n.to_string()).boxed(),
        Just(serde_json::to_string(&BatchOptions::default()).expect("options encode")).boxed(),
        prop::sample::select(&["RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"][..])
            .prop_map(str::to_owned)
            .boxed(),
        any::<u64>().prop_map(|n| n.to_string()).boxed(),
        any::<i64>().prop_map(|n| n.to_string()).boxed(),
    ];
    let fields = valid.into_iter().zip(BATCH_HASH_FIELDS).map(|(value, name)| {
        let value = prop_oneof![
            6 => value.prop_map(String::into_bytes),
            1 => (text(), mutate::edits(TEXT_TOKENS)).prop_map(|(t, e)| mutate::apply_str(&t, &e).into_bytes()),
            1 => bytes(),
        ];
        prop::option::weighted(0.9, value).prop_map(move |v| (name, v))
    });
    let fields: Vec<_> = fields.collect();
    (fields, prop::option::of((".{0,8}", bytes()))).prop_map(|(fields, foreign)| {
        let mut map: HashMap<Vec<u8>, Vec<u8>> = fields
            .into_iter()
            .filter_map(|(name, v)| Some((name.as_bytes().to_vec(), v?)))
            .collect();
        if let Some((k, v)) = foreign {
            map.insert(k.into_bytes(), v);
        }
        map
    })
}

/// A submitted object definition: fields valid, almost valid, or anything.
fn object_definition() -> impl Strategy<Value = pb::ObjectDefinition> {
    let id = prop_oneof![
        "[1-3][0-9]{0,3}",
        "[a-z][a-z0-9._:-]{0,8}",
        ".{0,6}",
        "[0-9]{129}"
    ];
    (
        id.clone(),
        prop::sample::select(&["", "raw", "1-Raw", "x_1", "Bad Zone", "é"][..]),
        prop::collection::vec(id, 0..3),
        prop::sample::select(&["", "0 * * * *", "@daily", "* * *", "61 * * * *"][..]),
        timestamp(),
        prop::option::of(any::<bool>()),
        any::<i32>(),
    )
        .prop_map(
            |(id, zone, parents, frequency, last_loaded_at, enabled, priority)| {
                pb::ObjectDefinition {
                    id,
                    zone: zone.to_owned(),
                    parents,
                    frequency: frequency.to_owned(),
                    last_loaded_at,
                    enabled,
                    priority,
                    ..Default::default()
                }
            },
        )
}

fn check_objects(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(list) = pb::ObjectList::decode(bytes) else {
        return Ok(()); // tonic answers INVALID_ARGUMENT before the service sees it
    };
    match object_defs(list.objects) {
        Ok(defs) => {
            for d in defs {
                prop_assert_eq!(ObjectId::parse(d.id.as_str()), Ok(d.id.clone()));
                prop_assert_eq!(Zone::parse(d.zone.as_str()), Some(d.zone.clone()));
            }
        }
        Err(problems) => {
            prop_assert!(!problems.is_empty());
            prop_assert!(
                problems.iter().all(|p| !p.message.is_empty()),
                "{:?}",
                problems
            );
        }
    }
    Ok(())
}

fn check_traceparent(value: &str) -> Result<(), TestCaseError> {
    if let Some(sc) = parse_traceparent(value) {
        prop_assert!(sc.is_valid());
        prop_assert_eq!(parse_traceparent(&traceparent(&sc)), Some(sc));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn results_records_of_arbitrary_bytes(header in type_header(), payload in prop::option::of(bytes())) {
        check_result(header.as_deref(), payload.as_deref())?;
    }

    #[test]
    fn results_records_corrupted(header in type_header(), result in object_result(), edits in mutate::edits(PROTO_TOKENS)) {
        let mut payload = result.encode_to_vec();
        check_result(header.as_deref(), Some(&payload))?;
        mutate::apply(&mut payload, &edits);
        check_result(header.as_deref(), Some(&payload))?;
    }

    #[test]
    fn node_records_round_trip(r in node_record()) {
        prop_assert_eq!(decode_record(&encoded(&r)), Ok(r));
    }

    #[test]
    fn node_records_of_arbitrary_bytes(bytes in bytes()) {
        check_record(&bytes)?;
    }

    #[test]
    fn node_records_corrupted(r in node_record(), edits in mutate::edits(PROTO_TOKENS)) {
        let mut bytes = encoded(&r);
        mutate::apply(&mut bytes, &edits);
        check_record(&bytes)?;
    }

    #[test]
    fn batch_hashes_decode_or_say_why(fields in batch_hash()) {
        match decode_batch_hash(&fields) {
            Ok((batch, head)) => {
                prop_assert_eq!(fields.get(b"id".as_slice()), Some(&batch.batch_id.into_bytes()));
                prop_assert_eq!(
                    fields.get(b"state".as_slice()),
                    Some(&head.state.as_str().as_bytes().to_vec())
                );
            }
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
    }

    #[test]
    fn stored_objects_decode_or_say_why(raw in bytes()) {
        match decode_objects(&raw) {
            Ok(objects) => prop_assert_eq!(serde_json::from_slice::<Vec<ObjectDef>>(&raw).ok(), Some(objects)),
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
    }

    #[test]
    fn cursors_and_members_split_or_say_why(
        score in prop_oneof![any::<i64>().prop_map(|n| n.to_string()), text()],
        member in text(),
        node in any::<u32>(),
        attempt in any::<u32>(),
        edits in mutate::edits(TEXT_TOKENS),
    ) {
        for input in [
            encode_cursor(&score, &member),
            mutate::apply_str(&encode_cursor(&score, &member), &edits),
            retry_member(&member, node, attempt),
            mutate::apply_str(&retry_member(&member, node, attempt), &edits),
            member.clone(),
        ] {
            match decode_cursor(&input) {
                Ok((s, m)) => prop_assert_eq!(encode_cursor(&s, &m), input.clone()),
                Err(reason) => prop_assert!(!reason.is_empty()),
            }
            if let Ok((b, n, a)) = parse_retry_member(&input) {
                prop_assert_eq!(parse_retry_member(&retry_member(&b, n, a)), Ok((b, n, a)));
            }
            if let Ok((b, n)) = parse_dead_member(&input) {
                prop_assert_eq!(parse_dead_member(&format!("{b}:{n}")), Ok((b, n)));
            }
            let _ = parse_score(&input);
        }
        prop_assert_eq!(
            parse_retry_member(&retry_member(&member, node, attempt)),
            Ok((member.clone(), node, attempt))
        );
    }

    #[test]
    fn page_tokens_decode_or_say_why(
        filters in text(),
        position in text(),
        token in text(),
        edits in mutate::edits(TEXT_TOKENS),
    ) {
        let valid = encode_token(&filters, &position);
        prop_assert_eq!(decode_token(&valid, &filters).ok(), Some(Some(position.clone())));
        for t in [mutate::apply_str(&valid, &edits), token] {
            match decode_token(&t, &filters) {
                Ok(Some(p)) => prop_assert_eq!(
                    decode_token(&encode_token(&filters, &p), &filters).ok(),
                    Some(Some(p))
                ),
                Ok(None) => prop_assert!(t.is_empty()),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn object_definitions_of_arbitrary_bytes(bytes in bytes()) {
        check_objects(&bytes)?;
    }

    #[test]
    fn object_definitions_generated_and_corrupted(
        objects in prop::collection::vec(object_definition(), 0..6),
        edits in mutate::edits(PROTO_TOKENS),
    ) {
        let mut bytes = pb::ObjectList { objects }.encode_to_vec();
        check_objects(&bytes)?;
        mutate::apply(&mut bytes, &edits);
        check_objects(&bytes)?;
    }

    #[test]
    fn traceparents_parse_or_not(
        value in prop_oneof![text(), "0[0-9a-f]-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.{0,4})?"],
        edits in mutate::edits(TEXT_TOKENS),
    ) {
        check_traceparent(&value)?;
        check_traceparent(&mutate::apply_str(&value, &edits))?;
    }
}
