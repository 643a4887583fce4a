//! Proto ↔ domain conversion, in one place: states, times, object definitions, and the
//! validation of incoming object definitions (every problem named, as the catalogue reader does).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use strata_core::catalogue::{Problem, ProblemKind};
use strata_core::machine::{BatchState, DeadReason, NodeState};
use strata_core::{ObjectDef, ObjectId, Zone};
use strata_proto::v1 as pb;

/// Object state to proto.
pub fn object_state(s: NodeState) -> pb::ObjectState {
    match s {
        NodeState::Pending => pb::ObjectState::Pending,
        NodeState::Ready => pb::ObjectState::Ready,
        NodeState::Running => pb::ObjectState::Running,
        NodeState::RetryWait => pb::ObjectState::RetryWait,
        NodeState::Loaded => pb::ObjectState::Loaded,
        NodeState::SkippedFresh => pb::ObjectState::SkippedFresh,
        NodeState::Dead => pb::ObjectState::Dead,
        NodeState::UpstreamFailed => pb::ObjectState::UpstreamFailed,
        NodeState::Cancelled => pb::ObjectState::Cancelled,
    }
}

/// Batch state to proto.
pub fn batch_state(s: BatchState) -> pb::BatchState {
    match s {
        BatchState::Running => pb::BatchState::Running,
        BatchState::Succeeded => pb::BatchState::Succeeded,
        BatchState::Failed => pb::BatchState::Failed,
        BatchState::Cancelled => pb::BatchState::Cancelled,
    }
}

/// Why an object died, as a failure reason.
pub fn failure_reason(r: DeadReason) -> pb::FailureReason {
    match r {
        DeadReason::Preflight => pb::FailureReason::Preflight,
        DeadReason::Permanent | DeadReason::RetriesExhausted | DeadReason::CoalescedFailed => {
            pb::FailureReason::Processor
        }
    }
}

/// A time to proto.
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A proto time to a time.
pub fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
}

/// A duration to proto.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A proto duration to a duration (negative → zero).
pub fn from_duration(d: &prost_types::Duration) -> Duration {
    if d.seconds < 0 || d.nanos < 0 {
        Duration::ZERO
    } else {
        Duration::new(d.seconds as u64, d.nanos as u32)
    }
}

/// A stable fingerprint of an error message: digits replaced, so that "timeout after 31s" and
/// "timeout after 29s" group together.
pub fn fingerprint(error: &str) -> String {
    let normalised: String = error
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    let d = Sha256::digest(normalised.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// An object definition to proto.
pub fn object_definition(o: &ObjectDef) -> pb::ObjectDefinition {
    pb::ObjectDefinition {
        id: o.id.to_string(),
        name: o.name.to_string(),
        zone: o.zone.to_string(),
        parents: o.parents.iter().map(ToString::to_string).collect(),
        frequency: o.frequency.as_deref().unwrap_or_default().to_owned(),
        last_loaded_at: o.last_loaded_at.map(timestamp),
        enabled: Some(o.enabled),
        priority: o.priority,
        attributes: o
            .attributes
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    }
}

/// Validates proto object definitions into domain objects, naming every bad token.
pub fn object_defs(defs: Vec<pb::ObjectDefinition>) -> Result<Vec<ObjectDef>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut out = Vec::with_capacity(defs.len());
    for (index, d) in defs.into_iter().enumerate() {
        let before = problems.len();
        let mut problem = |field: &str, token: &str, kind: ProblemKind, message: &str| {
            problems.push(Problem {
                index: Some(index),
                object_id: (!d.id.is_empty()).then(|| d.id.clone()),
                field: field.to_owned(),
                token: token.to_owned(),
                kind,
                message: message.to_owned(),
            });
        };
        let id = match ObjectId::parse(&d.id) {
            Ok(id) => Some(id),
            Err(e) => {
                let kind = if d.id.trim().is_empty() {
                    ProblemKind::MissingId
                } else {
                    ProblemKind::InvalidId
                };
                problem("id", &d.id, kind, &e.to_string());
                None
            }
        };
        let mut parents: Vec<ObjectId> = Vec::with_capacity(d.parents.len());
        for p in &d.parents {
            match ObjectId::parse(p) {
                Ok(p) if !parents.contains(&p) => parents.push(p),
                Ok(_) => {}
                Err(e) => problem("parents", p, ProblemKind::InvalidParent, &e.to_string()),
            }
        }
        let layer = id.as_ref().and_then(ObjectId::numeric_layer);
        let zone = if d.zone.trim().is_empty() {
            let z = layer.and_then(Zone::default_for_layer);
            if z.is_none() {
                problem(
                    "zone",
                    "",
                    ProblemKind::InvalidZone,
                    "no zone given and none can be inferred from the id",
                );
            }
            z
        } else {
            let z = Zone::parse(&d.zone);
            if z.is_none() {
                problem("zone", &d.zone, ProblemKind::InvalidZone, "not a zone name");
            }
            z
        };
        let frequency = if d.frequency.trim().is_empty() {
            None
        } else {
            match strata_core::freshness::Frequency::parse(&d.frequency) {
                Ok(_) => Some(d.frequency.trim().into()),
                Err(e) => {
                    problem(
                        "frequency",
                        &d.frequency,
                        ProblemKind::InvalidFrequency,
                        &e.to_string(),
                    );
                    None
                }
            }
        };
        if problems.len() != before {
            continue;
        }
        let (Some(id), Some(zone)) = (id, zone) else {
            continue;
        };
        out.push(ObjectDef {
            layer: layer.or_else(|| zone.default_layer()),
            id,
            name: d.name.into(),
            zone,
            parents,
            frequency,
            last_loaded_at: d.last_loaded_at.as_ref().and_then(from_timestamp),
            enabled: d.enabled.unwrap_or(true),
            priority: d.priority,
            attributes: d.attributes.into_iter().collect(),
        });
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}
