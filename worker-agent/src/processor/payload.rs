//! The JSON document the built-in `exec` and `http` processors hand to user code: see
//! [`ready_json`].

use chrono::{DateTime, SecondsFormat};
use serde_json::{Map, Value, json};
use strata_proto::v1::ObjectReady;

/// The JSON document describing `ready`: what `exec` writes on the command's stdin (followed by
/// a newline) and what `http` POSTs.
///
/// Users write scripts against these key names; they are stable (new keys may be added, none
/// is renamed or removed):
///
/// ```json
/// {
///   "batch_id": "b-1",
///   "object_id": "1001",
///   "zone": "raw",
///   "attempt": 1,
///   "max_attempts": 3,
///   "dispatch_epoch": 7,
///   "released_at": "2025-01-02T03:04:05.123Z",
///   "execution_timeout_ms": 60000,
///   "object": {
///     "id": "1001",
///     "name": "customers",
///     "zone": "raw",
///     "parents": ["1000"],
///     "frequency": "@hourly",
///     "last_loaded_at": null,
///     "attributes": { "dataset": "crm" }
///   }
/// }
/// ```
///
/// - `batch_id`, `object_id`, `zone`: strings, as in the Ready record.
/// - `attempt` (from 1), `max_attempts`, `dispatch_epoch`: numbers. Results are matched on
///   `attempt` and `dispatch_epoch` by the agent; user code does not echo them.
/// - `released_at`: when the control plane released this attempt, RFC 3339 in UTC, or `null`.
/// - `execution_timeout_ms`: the attempt's execution timeout in milliseconds, or `null` when the
///   zone's default applies.
/// - `object`: the object definition. `name` is `""` when unnamed; `parents` is `[]` for a root;
///   `frequency` is the cron expression or `null` when the object has none; `last_loaded_at` is
///   RFC 3339 in UTC or `null`; `attributes` is an object of strings (`{}` when none), keys
///   sorted. When the Ready carries no definition, `object` still has every key, with `id` and
///   `zone` taken from the Ready.
pub fn ready_json(ready: &ObjectReady) -> Value {
    let object = match &ready.object {
        Some(def) => {
            let attributes: Map<String, Value> = def
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            json!({
                "id": def.id,
                "name": def.name,
                "zone": def.zone,
                "parents": def.parents,
                "frequency": non_empty(&def.frequency),
                "last_loaded_at": def.last_loaded_at.as_ref().and_then(rfc3339),
                "attributes": attributes,
            })
        }
        None => json!({
            "id": ready.object_id,
            "name": "",
            "zone": ready.zone,
            "parents": [],
            "frequency": null,
            "last_loaded_at": null,
            "attributes": {},
        }),
    };
    json!({
        "batch_id": ready.batch_id,
        "object_id": ready.object_id,
        "zone": ready.zone,
        "attempt": ready.attempt,
        "max_attempts": ready.max_attempts,
        "dispatch_epoch": ready.dispatch_epoch,
        "released_at": ready.released_at.as_ref().and_then(rfc3339),
        "execution_timeout_ms": ready.execution_timeout.as_ref().map(millis),
        "object": object,
    })
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// RFC 3339 in UTC (`Z`), with as many fractional digits as needed; `None` when out of range.
fn rfc3339(ts: &prost_types::Timestamp) -> Option<String> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn millis(d: &prost_types::Duration) -> i64 {
    d.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(d.nanos / 1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::v1::ObjectDefinition;

    #[test]
    fn every_key_is_present_with_its_documented_shape() {
        let ready = ObjectReady {
            batch_id: "b-1".into(),
            object_id: "1001".into(),
            zone: "raw".into(),
            attempt: 2,
            max_attempts: 3,
            dispatch_epoch: 7,
            object: Some(ObjectDefinition {
                id: "1001".into(),
                name: "customers".into(),
                zone: "raw".into(),
                parents: vec!["1000".into(), "999".into()],
                frequency: String::new(),
                last_loaded_at: Some(prost_types::Timestamp {
                    seconds: 1_735_787_045,
                    nanos: 0,
                }),
                attributes: [("dataset".to_string(), "crm".to_string())].into(),
                ..Default::default()
            }),
            released_at: Some(prost_types::Timestamp {
                seconds: 1_735_787_045,
                nanos: 123_000_000,
            }),
            execution_timeout: Some(prost_types::Duration {
                seconds: 60,
                nanos: 500_000_000,
            }),
            ..Default::default()
        };
        assert_eq!(
            ready_json(&ready),
            json!({
                "batch_id": "b-1",
                "object_id": "1001",
                "zone": "raw",
                "attempt": 2,
                "max_attempts": 3,
                "dispatch_epoch": 7,
                "released_at": "2025-01-02T03:04:05.123Z",
                "execution_timeout_ms": 60_500,
                "object": {
                    "id": "1001",
                    "name": "customers",
                    "zone": "raw",
                    "parents": ["1000", "999"],
                    "frequency": null,
                    "last_loaded_at": "2025-01-02T03:04:05Z",
                    "attributes": {"dataset": "crm"},
                },
            })
        );
    }

    #[test]
    fn unset_fields_are_null_and_a_missing_definition_keeps_every_key() {
        let ready = ObjectReady {
            batch_id: "b-1".into(),
            object_id: "7".into(),
            zone: "raw".into(),
            attempt: 1,
            ..Default::default()
        };
        let v = ready_json(&ready);
        assert_eq!(v["released_at"], Value::Null);
        assert_eq!(v["execution_timeout_ms"], Value::Null);
        assert_eq!(
            v["object"],
            json!({
                "id": "7", "name": "", "zone": "raw", "parents": [], "frequency": null,
                "last_loaded_at": null, "attributes": {},
            })
        );
        let with_frequency = ObjectReady {
            object: Some(ObjectDefinition {
                frequency: "@hourly".into(),
                ..Default::default()
            }),
            ..ready
        };
        assert_eq!(
            ready_json(&with_frequency)["object"]["frequency"],
            "@hourly"
        );
    }
}
