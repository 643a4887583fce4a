//! Request validation in one place: required fields, ids, zones, idempotency keys, inputs,
//! durations and submit options, each refused with INVALID_ARGUMENT naming what is wrong.

use std::collections::BTreeMap;

use strata_core::catalogue::{CatalogueError, Problem, ProblemKind};
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

pub(super) fn idempotency_key(key: &str) -> Result<String, ServiceError> {
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
    Ok(key.to_owned())
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
