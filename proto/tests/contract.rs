//! Contract tests of `strata.v1`: the services expose exactly the agreed RPCs with the agreed
//! streaming shapes, every element of the package is documented, the Kafka payloads keep their
//! field numbers, and the Kafka payloads round-trip through encode/decode.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::{Message, Name};
use prost_types::source_code_info::Location;
use prost_types::{
    DescriptorProto, Duration, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet,
    Timestamp,
};
use strata_proto::v1::{
    self, ObjectDefinition, ObjectFailed, ObjectLoaded, ObjectReady, ObjectResult, ObjectStarted,
    TraceContext, object_result,
};
use strata_proto::{FILE_DESCRIPTOR_SET, kafka};

const PACKAGE: &str = "strata.v1";

// Field numbers of descriptor.proto, used in `SourceCodeInfo` paths.
const FILE_MESSAGE_TYPE: i32 = 4;
const FILE_ENUM_TYPE: i32 = 5;
const FILE_SERVICE: i32 = 6;
const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED_TYPE: i32 = 3;
const MESSAGE_ENUM_TYPE: i32 = 4;
const MESSAGE_ONEOF_DECL: i32 = 8;
const ENUM_VALUE: i32 = 2;
const SERVICE_METHOD: i32 = 2;

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("FILE_DESCRIPTOR_SET decodes")
}

fn package_files(set: &FileDescriptorSet) -> Vec<&FileDescriptorProto> {
    let files: Vec<_> = set.file.iter().filter(|f| f.package() == PACKAGE).collect();
    assert!(!files.is_empty(), "no file of package {PACKAGE} in the set");
    files
}

/// `(method, client streaming, server streaming)` of a service, sorted by method name.
fn methods(set: &FileDescriptorSet, service: &str) -> Vec<(String, bool, bool)> {
    let found: Vec<_> = package_files(set)
        .into_iter()
        .flat_map(|f| &f.service)
        .filter(|s| s.name() == service)
        .collect();
    assert_eq!(found.len(), 1, "service {PACKAGE}.{service} defined once");
    let mut out: Vec<_> = found[0]
        .method
        .iter()
        .map(|m| {
            (
                m.name().to_string(),
                m.client_streaming(),
                m.server_streaming(),
            )
        })
        .collect();
    out.sort();
    out
}

fn sorted(expected: &[(&str, bool, bool)]) -> Vec<(String, bool, bool)> {
    let mut v: Vec<_> = expected
        .iter()
        .map(|&(n, c, s)| (n.to_string(), c, s))
        .collect();
    v.sort();
    v
}

#[test]
fn orchestrator_has_exactly_the_agreed_rpcs_and_streaming_shapes() {
    let set = descriptor_set();
    let expected = sorted(&[
        ("SubmitBatch", false, false),
        ("SubmitBatchStream", true, false),
        ("PlanBatch", false, false),
        ("GetPlan", false, false),
        ("GetBatch", false, false),
        ("ListBatches", false, false),
        ("WatchBatch", false, true),
        ("GetObject", false, false),
        ("CancelBatch", false, false),
        ("ListRetries", false, false),
        ("GetRetry", false, false),
        ("RetryNow", false, false),
        ("ListDeadLetters", false, false),
        ("ReplayDeadLetters", false, false),
    ]);
    assert_eq!(methods(&set, "Orchestrator"), expected);
}

#[test]
fn agent_registry_has_exactly_the_agreed_rpcs() {
    let set = descriptor_set();
    let expected = sorted(&[
        ("RegisterAgent", false, false),
        ("Heartbeat", false, false),
        ("Deregister", false, false),
        ("ListAgents", false, false),
    ]);
    assert_eq!(methods(&set, "AgentRegistry"), expected);
}

#[test]
fn generated_service_names_match_the_descriptor() {
    let set = descriptor_set();
    let services: BTreeSet<String> = package_files(&set)
        .into_iter()
        .flat_map(|f| &f.service)
        .map(|s| format!("{PACKAGE}.{}", s.name()))
        .collect();
    let generated: BTreeSet<String> = [
        v1::orchestrator_server::SERVICE_NAME,
        v1::agent_registry_server::SERVICE_NAME,
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    assert_eq!(services, generated);
}

#[test]
fn descriptor_set_carries_the_well_known_imports_for_reflection() {
    let set = descriptor_set();
    let names: BTreeSet<&str> = set.file.iter().map(|f| f.name()).collect();
    for needed in [
        "google/protobuf/timestamp.proto",
        "google/protobuf/duration.proto",
    ] {
        assert!(names.contains(needed), "{needed} missing from {names:?}");
    }
    // Every import of every file is in the set, so a reflection client can resolve all types.
    for file in &set.file {
        for dep in &file.dependency {
            assert!(
                names.contains(dep.as_str()),
                "{} imports {dep}, absent from the set",
                file.name()
            );
        }
    }
}

/// Walks every element of a file and records, for each one without a leading doc comment, a
/// description of it; returns how many elements were checked.
struct DocWalker<'a> {
    comments: HashMap<Vec<i32>, &'a Location>,
    missing: Vec<String>,
    checked: usize,
}

impl<'a> DocWalker<'a> {
    fn new(file: &'a FileDescriptorProto) -> Self {
        let info = file
            .source_code_info
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no source_code_info", file.name()));
        let comments = info.location.iter().map(|l| (l.path.clone(), l)).collect();
        Self {
            comments,
            missing: Vec::new(),
            checked: 0,
        }
    }

    fn check(&mut self, path: &[i32], what: &str) {
        self.checked += 1;
        let documented = self
            .comments
            .get(path)
            .and_then(|l| l.leading_comments.as_deref())
            .is_some_and(|c| !c.trim().is_empty());
        if !documented {
            self.missing.push(what.to_string());
        }
    }

    fn message(&mut self, msg: &DescriptorProto, path: &[i32], scope: &str) {
        if msg.options.as_ref().is_some_and(|o| o.map_entry()) {
            return; // synthetic entry type of a `map<,>` field: no source of its own
        }
        let name = format!("{scope}.{}", msg.name());
        self.check(path, &format!("message {name}"));
        for (i, field) in msg.field.iter().enumerate() {
            let p = [path, &[MESSAGE_FIELD, i as i32]].concat();
            self.check(&p, &format!("field {name}.{}", field.name()));
        }
        for (i, oneof) in msg.oneof_decl.iter().enumerate() {
            // The synthetic oneof of a proto3 `optional` field has no source of its own.
            let synthetic = msg
                .field
                .iter()
                .filter(|f| f.oneof_index == Some(i as i32))
                .all(|f| f.proto3_optional());
            if !synthetic {
                let p = [path, &[MESSAGE_ONEOF_DECL, i as i32]].concat();
                self.check(&p, &format!("oneof {name}.{}", oneof.name()));
            }
        }
        for (i, nested) in msg.nested_type.iter().enumerate() {
            let p = [path, &[MESSAGE_NESTED_TYPE, i as i32]].concat();
            self.message(nested, &p, &name);
        }
        for (i, e) in msg.enum_type.iter().enumerate() {
            let p = [path, &[MESSAGE_ENUM_TYPE, i as i32]].concat();
            self.enumeration(e, &p, &name);
        }
    }

    fn enumeration(&mut self, e: &EnumDescriptorProto, path: &[i32], scope: &str) {
        let name = format!("{scope}.{}", e.name());
        self.check(path, &format!("enum {name}"));
        for (i, value) in e.value.iter().enumerate() {
            let p = [path, &[ENUM_VALUE, i as i32]].concat();
            self.check(&p, &format!("enum value {name}.{}", value.name()));
        }
    }

    fn file(&mut self, file: &FileDescriptorProto) {
        for (i, msg) in file.message_type.iter().enumerate() {
            self.message(msg, &[FILE_MESSAGE_TYPE, i as i32], PACKAGE);
        }
        for (i, e) in file.enum_type.iter().enumerate() {
            self.enumeration(e, &[FILE_ENUM_TYPE, i as i32], PACKAGE);
        }
        for (i, svc) in file.service.iter().enumerate() {
            let path = [FILE_SERVICE, i as i32];
            let name = format!("{PACKAGE}.{}", svc.name());
            self.check(&path, &format!("service {name}"));
            for (j, m) in svc.method.iter().enumerate() {
                let p = [&path[..], &[SERVICE_METHOD, j as i32]].concat();
                self.check(&p, &format!("rpc {name}.{}", m.name()));
            }
        }
    }
}

#[test]
fn every_element_of_the_package_has_a_doc_comment() {
    let set = descriptor_set();
    let mut missing = Vec::new();
    let mut checked = 0;
    for file in package_files(&set) {
        let mut walker = DocWalker::new(file);
        walker.file(file);
        checked += walker.checked;
        missing.extend(
            walker
                .missing
                .into_iter()
                .map(|m| format!("{}: {m}", file.name())),
        );
    }
    assert!(
        missing.is_empty(),
        "{} undocumented element(s):\n{}",
        missing.len(),
        missing.join("\n")
    );
    // Guard against a walk that checks nothing (e.g. a path constant gone wrong).
    assert!(checked > 300, "only {checked} elements checked");
}

#[test]
fn source_info_keeps_the_comment_text() {
    let set = descriptor_set();
    let events = package_files(&set)
        .into_iter()
        .find(|f| f.name() == "strata/v1/events.proto")
        .expect("events.proto in the set");
    let ready = events
        .message_type
        .iter()
        .position(|m| m.name() == "ObjectReady")
        .expect("ObjectReady in events.proto") as i32;
    let epoch = events.message_type[ready as usize]
        .field
        .iter()
        .position(|f| f.name() == "dispatch_epoch")
        .expect("ObjectReady.dispatch_epoch") as i32;
    let path = vec![FILE_MESSAGE_TYPE, ready, MESSAGE_FIELD, epoch];
    let comment = events
        .source_code_info
        .as_ref()
        .and_then(|i| i.location.iter().find(|l| l.path == path))
        .and_then(|l| l.leading_comments.clone())
        .unwrap_or_default();
    assert!(comment.contains("Fencing token"), "got {comment:?}");
}

fn screaming_snake(pascal: &str) -> String {
    let mut out = String::new();
    for (i, c) in pascal.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn check_enum_style(e: &EnumDescriptorProto, scope: &str, problems: &mut Vec<String>) {
    let prefix = format!("{}_", screaming_snake(e.name()));
    for value in &e.value {
        if !value.name().starts_with(&prefix) {
            problems.push(format!(
                "{scope}.{}.{}: not prefixed {prefix}",
                e.name(),
                value.name()
            ));
        }
    }
    match e.value.iter().find(|v| v.number() == 0) {
        Some(zero) if zero.name() == format!("{prefix}UNSPECIFIED") => {}
        _ => problems.push(format!(
            "{scope}.{}: zero value must be {prefix}UNSPECIFIED",
            e.name()
        )),
    }
}

fn check_message_style(msg: &DescriptorProto, scope: &str, problems: &mut Vec<String>) {
    let name = format!("{scope}.{}", msg.name());
    for field in &msg.field {
        let ok = field
            .name()
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            problems.push(format!(
                "{name}.{}: field not lower_snake_case",
                field.name()
            ));
        }
    }
    for nested in &msg.nested_type {
        check_message_style(nested, &name, problems);
    }
    for e in &msg.enum_type {
        check_enum_style(e, &name, problems);
    }
}

#[test]
fn names_follow_the_protobuf_style_guide() {
    let set = descriptor_set();
    let mut problems = Vec::new();
    for file in package_files(&set) {
        for msg in &file.message_type {
            check_message_style(msg, PACKAGE, &mut problems);
        }
        for e in &file.enum_type {
            check_enum_style(e, PACKAGE, &mut problems);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The Kafka payloads cross process versions during a rolling upgrade: their field numbers are
/// frozen. Add fields with new numbers; never renumber, retype or reuse one.
#[test]
fn kafka_payload_field_numbers_are_frozen() {
    let pinned: BTreeMap<&str, &str> = [
        (
            "ObjectReady",
            "batch_id=1 object_id=2 zone=3 attempt=4 max_attempts=5 dispatch_epoch=6 object=7 \
             released_at=8 execution_timeout=9 trace=10 signature=11",
        ),
        (
            "ObjectStarted",
            "batch_id=1 object_id=2 zone=3 attempt=4 dispatch_epoch=5 agent_id=6 \
             agent_lease_epoch=7 started_at=8 signature=9",
        ),
        (
            "ObjectLoaded",
            "batch_id=1 object_id=2 zone=3 attempt=4 dispatch_epoch=5 agent_id=6 \
             agent_lease_epoch=7 started_at=8 finished_at=9 duration=10 info=11 signature=12",
        ),
        (
            "ObjectFailed",
            "batch_id=1 object_id=2 zone=3 attempt=4 dispatch_epoch=5 agent_id=6 \
             agent_lease_epoch=7 started_at=8 finished_at=9 duration=10 retryable=11 error=12 \
             reason=13 signature=14",
        ),
        ("ObjectResult", "started=1 loaded=2 failed=3"),
        (
            "DeadLetter",
            "batch_id=1 object_id=2 zone=3 attempts=4 last_error=5 error_fingerprint=6 reason=7 \
             dead_at=8 object=9 last_agent_id=10 blocked_descendant_count=11",
        ),
        (
            "StatusChanged",
            "batch_id=1 object_id=2 zone=3 from_state=4 to_state=5 batch_state=6 \
             previous_batch_state=7 attempt=8 at=9 reason=10",
        ),
        (
            "ObjectDefinition",
            "id=1 name=2 zone=3 parents=4 frequency=5 last_loaded_at=6 enabled=7 priority=8 \
             attributes=9",
        ),
        ("TraceContext", "traceparent=1 tracestate=2"),
    ]
    .into_iter()
    .collect();
    let set = descriptor_set();
    let actual: BTreeMap<&str, String> = package_files(&set)
        .into_iter()
        .flat_map(|f| &f.message_type)
        .filter(|m| pinned.contains_key(m.name()))
        .map(|m| {
            let fields: Vec<String> = m
                .field
                .iter()
                .map(|f| format!("{}={}", f.name(), f.number()))
                .collect();
            (m.name(), fields.join(" "))
        })
        .collect();
    for (message, expected) in &pinned {
        let expected: String = expected.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(
            actual.get(message).map(String::as_str),
            Some(expected.as_str()),
            "wire layout of {message} changed"
        );
    }
}

#[test]
fn kafka_type_headers_are_the_payload_full_names() {
    assert_eq!(kafka::TYPE_OBJECT_READY, ObjectReady::full_name());
    assert_eq!(kafka::TYPE_OBJECT_RESULT, ObjectResult::full_name());
    assert_eq!(kafka::TYPE_DEAD_LETTER, v1::DeadLetter::full_name());
    assert_eq!(kafka::TYPE_STATUS_CHANGED, v1::StatusChanged::full_name());
    assert_eq!(
        v1::BatchRejection::type_url(),
        "type.googleapis.com/strata.v1.BatchRejection"
    );
}

fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos })
}

fn dur(seconds: i64, nanos: i32) -> Option<Duration> {
    Some(Duration { seconds, nanos })
}

fn definition(enabled: Option<bool>) -> ObjectDefinition {
    ObjectDefinition {
        id: "2001".into(),
        name: "customers standardized".into(),
        zone: "standardized".into(),
        parents: vec!["1001".into(), "1002".into()],
        frequency: "0 * * * *".into(),
        last_loaded_at: ts(1_714_557_600, 0),
        enabled,
        priority: -3,
        attributes: [("dataset".to_string(), "crm".to_string())]
            .into_iter()
            .collect(),
    }
}

#[test]
fn object_ready_round_trips() {
    let ready = ObjectReady {
        batch_id: "b-01HZX".into(),
        object_id: "2001".into(),
        zone: "standardized".into(),
        attempt: 2,
        max_attempts: 3,
        dispatch_epoch: u64::MAX - 7,
        object: Some(definition(Some(false))),
        released_at: ts(1_714_561_200, 123_000_000),
        execution_timeout: dur(300, 0),
        trace: Some(TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: "vendor=x".into(),
        }),
        signature: vec![0x5a; 64],
    };
    let bytes = ready.encode_to_vec();
    let back = ObjectReady::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(back, ready);
    // `enabled` has explicit presence: false survives, and unset stays distinguishable from it.
    assert_eq!(back.object.as_ref().and_then(|o| o.enabled), Some(false));
    let unset =
        ObjectDefinition::decode(definition(None).encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(unset.enabled, None);
}

#[test]
fn object_result_round_trips_every_outcome() {
    let started = ObjectStarted {
        batch_id: "b1".into(),
        object_id: "1001".into(),
        zone: "raw".into(),
        attempt: 1,
        dispatch_epoch: 9,
        agent_id: "agent-raw-1".into(),
        agent_lease_epoch: 42,
        started_at: ts(1_714_561_201, 0),
        signature: vec![0xAB; 32],
    };
    let loaded = ObjectLoaded {
        batch_id: "b1".into(),
        object_id: "1001".into(),
        zone: "raw".into(),
        attempt: 1,
        dispatch_epoch: 9,
        agent_id: "agent-raw-1".into(),
        agent_lease_epoch: 42,
        started_at: ts(1_714_561_201, 0),
        finished_at: ts(1_714_561_203, 500_000_000),
        duration: dur(2, 500_000_000),
        info: [("rows".to_string(), "1200".to_string())]
            .into_iter()
            .collect(),
        signature: vec![0xCD; 32],
    };
    let failed = ObjectFailed {
        batch_id: "b1".into(),
        object_id: "1001".into(),
        zone: "raw".into(),
        attempt: 3,
        dispatch_epoch: 11,
        agent_id: "agent-raw-2".into(),
        agent_lease_epoch: 43,
        started_at: None,
        finished_at: ts(1_714_561_300, 0),
        duration: None,
        retryable: true,
        error: "connection reset".into(),
        reason: v1::FailureReason::Timeout as i32,
        signature: vec![0xEF; 32],
    };
    let outcomes = [
        object_result::Result::Started(started),
        object_result::Result::Loaded(loaded),
        object_result::Result::Failed(failed),
    ];
    for outcome in outcomes {
        let result = ObjectResult {
            result: Some(outcome),
        };
        let back = ObjectResult::decode(result.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(back, result);
    }
    let Some(object_result::Result::Failed(f)) = ObjectResult::decode(
        ObjectResult {
            result: Some(object_result::Result::Failed(ObjectFailed {
                reason: v1::FailureReason::AgentLost as i32,
                ..Default::default()
            })),
        }
        .encode_to_vec()
        .as_slice(),
    )
    .expect("decodes")
    .result
    else {
        panic!("the failed variant was not preserved");
    };
    assert_eq!(f.reason(), v1::FailureReason::AgentLost);
}

#[test]
fn an_empty_object_result_decodes_with_no_outcome() {
    // A record with no outcome set must be detectable (the consumer parks it as malformed).
    let back = ObjectResult::decode(&[][..]).expect("decodes");
    assert!(back.result.is_none());
}

#[test]
fn kafka_topic_and_group_names_follow_the_contract() {
    assert_eq!(kafka::ready_topic("strata", "raw"), "strata.ready.raw");
    assert_eq!(kafka::results_topic("strata"), "strata.results");
    assert_eq!(kafka::dlq_topic("strata"), "strata.dlq");
    assert_eq!(kafka::status_topic("x"), "x.status");
    assert_eq!(kafka::agent_group("strata", "raw"), "strata.agents.raw");
}
