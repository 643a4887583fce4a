//! Request validation in one place: required fields, ids, zones, idempotency keys, inputs,
//! durations and submit options, each refused with INVALID_ARGUMENT naming what is wrong.

use std::collections::BTreeMap;

use strata_core::catalogue::{CatalogueError, Problem, ProblemKind};
use strata_core::limits::ObjectLimits;
use strata_core::submission::{BatchOptions, RetryRequest};
use strata_core::{ObjectDef, ObjectId, Zone};
use strata_proto::v1::{self as pb, batch_input};

use super::ServiceSettings;
use crate::convert;
use crate::error::ServiceError;
/// The input of a submission.
pub(super) enum Input {
    Objects(Vec<pb::ObjectDefinition>),
    Document(Vec<u8>),
}

pub(super) fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, ServiceError> {
    if value.trim().is_empty() {
        Err(ServiceError::InvalidArgument(format!(
            "{field} is required"
        )))
    } else {
        Ok(value)
    }
}

pub(super) fn object_id(token: &str) -> Result<ObjectId, ServiceError> {
    ObjectId::parse(token)
        .map_err(|e| ServiceError::InvalidArgument(format!("object id {token:?}: {e}")))
}

pub(super) fn optional_zone(token: &str) -> Result<Option<Zone>, ServiceError> {
    if token.is_empty() {
        return Ok(None);
    }
    Zone::parse(token)
        .map(Some)
        .ok_or_else(|| ServiceError::InvalidArgument(format!("zone {token:?} is not a zone name")))
}

/// The idempotency key as stored: `key` checked, then scoped to the submitting principal
/// ([`strata_core::submission::scoped_idempotency_key`]).
pub(super) fn idempotency_key(key: &str, scope: Option<&str>) -> Result<String, ServiceError> {
    if key.trim().is_empty() {
        return Err(ServiceError::InvalidArgument(
            "idempotency_key is required (e.g. a UUID per logical submission)".into(),
        ));
    }
    if key.len() > 128 {
        return Err(ServiceError::InvalidArgument(format!(
            "idempotency_key is {} bytes long; at most 128 are allowed",
            key.len()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(ServiceError::InvalidArgument(format!(
            "idempotency_key {key:?} holds a control character; use printable text (e.g. a UUID)"
        )));
    }
    Ok(strata_core::submission::scoped_idempotency_key(scope, key))
}

pub(super) fn input_of(input: Option<pb::BatchInput>) -> Result<Input, ServiceError> {
    match input.and_then(|i| i.source) {
        Some(batch_input::Source::Objects(list)) => Ok(Input::Objects(list.objects)),
        Some(batch_input::Source::Catalogue(doc)) => Ok(Input::Document(doc.content)),
        None => Err(ServiceError::InvalidArgument(
            "input is required: set objects or catalogue".into(),
        )),
    }
}

pub(super) fn duration_arg(
    field: &str,
    d: &prost_types::Duration,
) -> Result<std::time::Duration, ServiceError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ServiceError::InvalidArgument(format!(
            "retry_policy.{field} must not be negative"
        )));
    }
    Ok(convert::from_duration(d))
}

/// The options of a submission: targets parsed, the retry policy overridden field by field over
/// `default` and validated, labels checked.
pub(super) fn batch_options(
    options: Option<pb::SubmitOptions>,
    settings: &ServiceSettings,
) -> Result<BatchOptions, ServiceError> {
    let o = options.unwrap_or_default();
    if o.all && !o.targets.is_empty() {
        return Err(ServiceError::InvalidArgument(
            "options.all and options.targets are exclusive: set one".into(),
        ));
    }
    let targets = o
        .targets
        .iter()
        .map(|t| {
            ObjectId::parse(t)
                .map_err(|e| ServiceError::InvalidArgument(format!("target {t:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut request = RetryRequest::default();
    if let Some(p) = &o.retry_policy {
        request.max_attempts = (p.max_attempts != 0).then_some(p.max_attempts);
        if let Some(d) = &p.initial_backoff {
            request.initial_backoff = Some(duration_arg("initial_backoff", d)?);
        }
        request.multiplier = (p.multiplier != 0.0).then_some(p.multiplier);
        if let Some(d) = &p.max_backoff {
            request.max_backoff = Some(duration_arg("max_backoff", d)?);
        }
    }
    if o.max_attempts != 0 {
        request.max_attempts = Some(o.max_attempts);
    }
    let retry = request.apply(settings.retry);
    retry
        .validate()
        .map_err(|e| ServiceError::InvalidArgument(e.to_string()))?;
    let mut zone_retry = BTreeMap::new();
    for (zone, default) in &settings.zone_retry {
        let policy = request.apply(*default);
        policy
            .validate()
            .map_err(|e| ServiceError::InvalidArgument(format!("in zone {zone}: {e}")))?;
        if policy != retry {
            zone_retry.insert(zone.clone(), policy);
        }
    }
    for (k, v) in &o.labels {
        if k.is_empty() || k.len() > 63 {
            return Err(ServiceError::InvalidArgument(format!(
                "label key {k:?} must be 1 to 63 bytes long"
            )));
        }
        if v.len() > 256 {
            return Err(ServiceError::InvalidArgument(format!(
                "label {k:?} has a value of {} bytes; at most 256 are allowed",
                v.len()
            )));
        }
    }
    Ok(BatchOptions {
        targets,
        all: o.all,
        force: o.force,
        allow_external_parents: o.allow_external_parents,
        retry_request: request,
        retry,
        zone_retry,
        labels: o.labels.into_iter().collect(),
    })
}

pub(super) fn state_name(state: i32) -> &'static str {
    pb::ObjectState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("OBJECT_STATE_"))
        .unwrap_or("UNKNOWN")
}

/// Refuses objects whose zone is not configured: no agent could run them, and no topic is ever
/// created from what a submitter wrote. Every such object is named (INVALID_ARGUMENT with the
/// batch's problems).
pub(super) fn configured_zones(objects: &[ObjectDef], zones: &[Zone]) -> Result<(), ServiceError> {
    let configured = || {
        zones
            .iter()
            .map(Zone::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let problems: Vec<Problem> = objects
        .iter()
        .enumerate()
        .filter(|(_, o)| !zones.contains(&o.zone))
        .map(|(index, o)| Problem {
            index: Some(index),
            object_id: Some(o.id.to_string()),
            field: "zone".into(),
            token: o.zone.to_string(),
            kind: ProblemKind::InvalidZone,
            message: format!(
                "zone {} is not configured on this control plane (configured: {})",
                o.zone,
                configured()
            ),
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CatalogueError { problems }.into())
    }
}

/// Refuses objects over a bound of `limits` (their name, parents, attributes, or their size as a
/// Ready record, which the broker could not deliver). Every such object is named with the size
/// found and the limit (INVALID_ARGUMENT with the batch's problems).
pub(super) fn within_limits(
    objects: &[ObjectDef],
    limits: &ObjectLimits,
) -> Result<(), ServiceError> {
    let problems = strata_core::limits::check(objects, limits);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CatalogueError { problems }.into())
    }
}

/// Most live agent leases one principal may hold (not applied in insecure mode, where every
/// agent is the same anonymous principal).
pub(super) const MAX_LEASES_PER_PRINCIPAL: usize = 256;
/// Most attempts one agent may run at once, and report in one heartbeat.
pub(super) const MAX_AGENT_CAPACITY: u32 = 10_000;
/// Longest agent hostname and version, in bytes.
const MAX_HOSTNAME_BYTES: usize = 253;
const MAX_VERSION_BYTES: usize = 64;
/// Most labels of an agent, and the longest key and value.
const MAX_LABELS: usize = 32;
const MAX_LABEL_KEY_BYTES: usize = 63;
const MAX_LABEL_VALUE_BYTES: usize = 256;
/// Longest reason (cancel, deregister) kept, in bytes; a longer one is cut.
pub(super) const MAX_REASON_BYTES: usize = 512;

/// The bounds of a registration: capacity, hostname, version and labels.
pub(super) fn registration(req: &pb::RegisterAgentRequest) -> Result<(), ServiceError> {
    if req.capacity == 0 || req.capacity > MAX_AGENT_CAPACITY {
        return Err(ServiceError::InvalidArgument(format!(
            "capacity {} is out of range: 1 to {MAX_AGENT_CAPACITY} (the agent's processor \
             concurrency)",
            req.capacity
        )));
    }
    let text = |field: &str, value: &str, max: usize| -> Result<(), ServiceError> {
        if value.len() > max {
            return Err(ServiceError::InvalidArgument(format!(
                "{field} is {} bytes long; at most {max} are allowed",
                value.len()
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(ServiceError::InvalidArgument(format!(
                "{field} {value:?} holds control characters"
            )));
        }
        Ok(())
    };
    text("hostname", &req.hostname, MAX_HOSTNAME_BYTES)?;
    text("version", &req.version, MAX_VERSION_BYTES)?;
    if req.labels.len() > MAX_LABELS {
        return Err(ServiceError::InvalidArgument(format!(
            "{} labels; at most {MAX_LABELS} are allowed",
            req.labels.len()
        )));
    }
    for (k, v) in &req.labels {
        text("label key", k, MAX_LABEL_KEY_BYTES)?;
        text(&format!("label {k:?}"), v, MAX_LABEL_VALUE_BYTES)?;
    }
    Ok(())
}

/// The bound of a heartbeat: the attempts it reports.
pub(super) fn heartbeat(req: &pb::HeartbeatRequest) -> Result<(), ServiceError> {
    if req.in_flight.len() > MAX_AGENT_CAPACITY as usize {
        return Err(ServiceError::InvalidArgument(format!(
            "the heartbeat reports {} attempts in flight; at most {MAX_AGENT_CAPACITY} are allowed",
            req.in_flight.len()
        )));
    }
    Ok(())
}

/// A reason as kept: at most [`MAX_REASON_BYTES`] (cut at a character boundary, marked with
/// `…`), control characters replaced by spaces so that it logs on one line.
pub(super) fn reason(reason: String) -> String {
    let mut out: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_REASON_BYTES {
        let mut cut = MAX_REASON_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use strata_core::limits::wire_bytes;

    use super::*;

    /// The size the limits measure is never below what the Ready record carries.
    #[test]
    fn an_objects_measured_size_covers_its_encoded_definition() {
        let mut objects = vec![
            convert::object_defs(vec![pb::ObjectDefinition {
                id: "1001".into(),
                ..Default::default()
            }])
            .expect("valid"),
        ];
        let mut big = pb::ObjectDefinition {
            id: "3001".into(),
            name: "n".repeat(300),
            zone: "application".into(),
            parents: (0..200).map(|i| (2000 + i).to_string()).collect(),
            frequency: "0 0 * * *".into(),
            priority: -7,
            enabled: Some(false),
            last_loaded_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            ..Default::default()
        };
        for i in 0..300 {
            big.attributes.insert(format!("key{i}"), "v".repeat(i * 7));
        }
        objects.push(convert::object_defs(vec![big]).expect("valid"));
        for object in objects.into_iter().flatten() {
            let encoded = convert::object_definition(&object).encoded_len();
            assert!(
                wire_bytes(&object) >= encoded,
                "{}: measured {} < encoded {encoded}",
                object.id,
                wire_bytes(&object)
            );
        }
    }
}
