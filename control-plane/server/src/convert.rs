//! Proto ↔ domain conversion, in one place: states, times, object definitions, the data plane's
//! records ([`crate::records`]) and the validation of incoming object definitions (every
//! problem named, as the catalogue reader does).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use strata_core::catalogue::{Problem, ProblemKind};
use strata_core::machine::{BatchState, FailureKind, NodeState};
use strata_core::{ObjectDef, ObjectId, Zone};
use strata_proto::signing::{self, ReadySigner};
use strata_proto::v1::{self as pb, object_result};

use crate::records::{
    AgentReport, DeadLetterRecord, ReadyRecord, ReportOutcome, ReportSeal, StatusChange,
};

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

/// A failure kind on the wire (a coalesced failure is the processor's failure of the attempt
/// it coalesced onto).
pub fn failure_reason(kind: FailureKind) -> pb::FailureReason {
    match kind {
        FailureKind::Processor | FailureKind::Coalesced => pb::FailureReason::Processor,
        FailureKind::Timeout => pb::FailureReason::Timeout,
        FailureKind::AgentLost => pb::FailureReason::AgentLost,
        FailureKind::Drained => pb::FailureReason::Drained,
        FailureKind::InvalidInput => pb::FailureReason::InvalidInput,
        FailureKind::Preflight => pb::FailureReason::Preflight,
    }
}

/// A failure reason from the wire as a kind (unset or unknown: a processor failure, as the
/// contract says).
pub fn failure_kind(reason: i32) -> FailureKind {
    match pb::FailureReason::try_from(reason) {
        Ok(pb::FailureReason::Timeout) => FailureKind::Timeout,
        Ok(pb::FailureReason::AgentLost) => FailureKind::AgentLost,
        Ok(pb::FailureReason::Drained) => FailureKind::Drained,
        Ok(pb::FailureReason::InvalidInput) => FailureKind::InvalidInput,
        Ok(pb::FailureReason::Preflight) => FailureKind::Preflight,
        Ok(pb::FailureReason::Processor | pb::FailureReason::Unspecified) | Err(_) => {
            FailureKind::Processor
        }
    }
}

/// A Ready as its protobuf message, signed by `signer`.
pub fn ready_message(r: &ReadyRecord, signer: &ReadySigner) -> pb::ObjectReady {
    let mut ready = pb::ObjectReady {
        batch_id: r.batch_id.clone(),
        object_id: r.object.id.to_string(),
        zone: r.object.zone.to_string(),
        attempt: r.attempt,
        max_attempts: r.max_attempts,
        dispatch_epoch: r.dispatch_epoch,
        object: Some(object_definition(&r.object)),
        released_at: Some(timestamp(r.released_at)),
        execution_timeout: Some(duration(r.execution_timeout)),
        trace: r.traceparent.as_ref().map(|tp| pb::TraceContext {
            traceparent: tp.clone(),
            tracestate: String::new(),
        }),
        signature: Vec::new(),
    };
    signer.sign(&mut ready);
    ready
}

/// A dead letter as its protobuf message (`blocked_descendant_count` is filled by readers that
/// know the batch).
pub fn dead_letter_message(l: &DeadLetterRecord) -> pb::DeadLetter {
    pb::DeadLetter {
        batch_id: l.batch_id.clone(),
        object_id: l.object.id.to_string(),
        zone: l.object.zone.to_string(),
        attempts: l.attempts,
        error_fingerprint: fingerprint(&l.last_error),
        last_error: l.last_error.clone(),
        reason: failure_reason(l.kind) as i32,
        dead_at: Some(timestamp(l.dead_at)),
        object: Some(object_definition(&l.object)),
        last_agent_id: l.last_agent_id.clone(),
        blocked_descendant_count: 0,
    }
}

/// A stored dead-letter message read back as a record; the error says what is missing or bad.
pub fn dead_letter_record(l: pb::DeadLetter) -> Result<DeadLetterRecord, String> {
    let object = l.object.ok_or("no object definition")?;
    let object = object_defs(vec![object])
        .map_err(|problems| {
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        })?
        .pop()
        .ok_or("no object definition")?;
    Ok(DeadLetterRecord {
        batch_id: l.batch_id,
        object,
        attempts: l.attempts,
        last_error: l.last_error,
        kind: failure_kind(l.reason),
        dead_at: l
            .dead_at
            .as_ref()
            .and_then(from_timestamp)
            .ok_or("no dead_at time")?,
        last_agent_id: l.last_agent_id,
    })
}

/// A status change as its protobuf message.
pub fn status_message(c: &StatusChange) -> pb::StatusChanged {
    pb::StatusChanged {
        batch_id: c.batch_id.clone(),
        object_id: c.object_id.clone(),
        zone: c.zone.to_string(),
        from_state: object_state(c.from) as i32,
        to_state: object_state(c.to) as i32,
        batch_state: batch_state(c.batch_state) as i32,
        previous_batch_state: 0,
        attempt: c.attempt,
        at: Some(timestamp(c.at)),
        reason: String::new(),
    }
}

/// An agent's result message as a report, with its seal; `None` when it carries no outcome. The
/// seal is taken from the message as sent; then the agent id and the error are cut to their
/// bounds (`MAX_AGENT_ID_BYTES`, `MAX_RESULT_ERROR_BYTES`), so a record near the broker's size
/// limit keeps kilobytes, not a megabyte, in the state and the logs.
pub fn agent_report(result: pb::ObjectResult) -> Option<AgentReport> {
    use strata_proto::kafka::{MAX_AGENT_ID_BYTES, MAX_RESULT_ERROR_BYTES, truncated};
    let agent = |id: String| truncated(id, MAX_AGENT_ID_BYTES);
    let processed = |d: Option<prost_types::Duration>| d.and_then(|d| Duration::try_from(d).ok());
    let seal = {
        let (signature, lease_epoch) = signing::result_seal(&result)?;
        ReportSeal {
            lease_epoch,
            signature: signature.to_vec(),
            signed_text: signing::result_signed_text(&result)?,
        }
    };
    Some(match result.result? {
        object_result::Result::Started(s) => AgentReport {
            batch_id: s.batch_id,
            object_id: s.object_id,
            agent_id: agent(s.agent_id),
            attempt: s.attempt,
            dispatch_epoch: s.dispatch_epoch,
            outcome: ReportOutcome::Started,
            seal,
        },
        object_result::Result::Loaded(l) => AgentReport {
            batch_id: l.batch_id,
            object_id: l.object_id,
            agent_id: agent(l.agent_id),
            attempt: l.attempt,
            dispatch_epoch: l.dispatch_epoch,
            outcome: ReportOutcome::Loaded {
                processed: processed(l.duration),
            },
            seal,
        },
        object_result::Result::Failed(f) => AgentReport {
            batch_id: f.batch_id,
            object_id: f.object_id,
            agent_id: agent(f.agent_id),
            attempt: f.attempt,
            dispatch_epoch: f.dispatch_epoch,
            outcome: ReportOutcome::Failed {
                processed: processed(f.duration),
                retryable: f.retryable,
                error: truncated(f.error, MAX_RESULT_ERROR_BYTES),
                kind: failure_kind(f.reason),
            },
            seal,
        },
    })
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
                Ok(p) => parents.push(p),
                Err(e) => problem("parents", p, ProblemKind::InvalidParent, &e.to_string()),
            }
        }
        strata_core::dedup::dedup_in_order(&mut parents);
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

#[cfg(test)]
mod tests {
    use strata_proto::kafka::{MAX_AGENT_ID_BYTES, MAX_RESULT_ERROR_BYTES};
    use strata_proto::signing::{ResultKey, result_signed_text};

    use super::*;
    use crate::records::ReportOutcome;

    /// A result near the broker's size limit: its error and agent id are cut to their bounds,
    /// and the seal still covers what was sent (verification is over the record as signed).
    #[test]
    fn a_reports_agent_id_and_error_are_bounded_after_its_seal_is_taken() {
        let mut result = pb::ObjectResult {
            result: Some(object_result::Result::Failed(pb::ObjectFailed {
                batch_id: "b-1".into(),
                object_id: "1001".into(),
                zone: "raw".into(),
                agent_id: "a".repeat(10_000),
                error: "line\n".repeat(200_000),
                ..Default::default()
            })),
        };
        let key = ResultKey::from_slice(&[3; 32]).expect("a key");
        key.sign(&mut result);
        let sent = result_signed_text(&result).expect("an outcome");
        let report = agent_report(result).expect("a report");
        assert!(
            report.agent_id.len() <= MAX_AGENT_ID_BYTES,
            "{}",
            report.agent_id.len()
        );
        let ReportOutcome::Failed { error, .. } = &report.outcome else {
            panic!("failed")
        };
        assert!(error.len() <= MAX_RESULT_ERROR_BYTES && error.ends_with('…'));
        assert_eq!(report.seal.signed_text, sent);
        assert!(key.verify(&report.seal.signed_text, &report.seal.signature));
    }
}
