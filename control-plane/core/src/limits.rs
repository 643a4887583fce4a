//! Bounds on one submitted object: its name, its parents, its attributes and its whole size.
//!
//! Every object becomes a Ready record on its zone's Kafka topic, so an object larger than the
//! broker's message limit could never be delivered and would be retried forever. It is refused at
//! submission instead, with every other object over a bound, each named with the field, the size
//! found and the limit ([`ProblemKind::OverLimit`]). The checks are linear in the objects' size.

use crate::catalogue::{Problem, ProblemKind};
use crate::model::ObjectDef;

/// The bounds on one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLimits {
    /// Longest name, in bytes.
    pub name_bytes: usize,
    /// Most parents (after de-duplication).
    pub parents: usize,
    /// Most attributes.
    pub attributes: usize,
    /// Longest attribute key, in bytes.
    pub attribute_key_bytes: usize,
    /// Longest attribute value, in bytes.
    pub attribute_value_bytes: usize,
    /// Largest object as sent in a Ready record ([`wire_bytes`]).
    pub object_bytes: usize,
}

/// Largest object by default: half of Kafka's default message limit (1 MiB), leaving room for the
/// Ready record's other fields (ids, epochs, timeout, trace context, its 64-byte signature) and
/// the record's headers.
pub const DEFAULT_OBJECT_BYTES: usize = 512 * 1024;

impl Default for ObjectLimits {
    fn default() -> Self {
        Self {
            name_bytes: 1024,
            parents: 10_000,
            attributes: 1_000,
            attribute_key_bytes: 256,
            attribute_value_bytes: 64 * 1024,
            object_bytes: DEFAULT_OBJECT_BYTES,
        }
    }
}

/// The size of `object` as sent in a Ready record, in bytes: every string with its protobuf
/// framing (a tag and a length of at most a few bytes each, counted as 4 per field), so never
/// below the encoded size by more than a few bytes per field.
pub fn wire_bytes(object: &ObjectDef) -> usize {
    const FIELD: usize = 4;
    let text = |s: &str| s.len() + FIELD;
    text(object.id.as_str())
        + text(&object.name)
        + text(object.zone.as_str())
        + object
            .parents
            .iter()
            .map(|p| text(p.as_str()))
            .sum::<usize>()
        + object.frequency.as_deref().map_or(0, text)
        + object
            .attributes
            .iter()
            .map(|(k, v)| text(k) + text(v) + FIELD)
            .sum::<usize>()
        // enabled, priority, layer, last-loaded time
        + 4 * 12
}

/// Every bound `objects` break, in order (empty when none).
pub fn check(objects: &[ObjectDef], limits: &ObjectLimits) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (index, object) in objects.iter().enumerate() {
        let mut over = |field: &str, token: String, message: String| {
            problems.push(Problem {
                index: Some(index),
                object_id: Some(object.id.to_string()),
                field: field.to_owned(),
                token,
                kind: ProblemKind::OverLimit,
                message,
            });
        };
        for (field, found, limit, unit) in [
            (
                "name",
                object.name.len(),
                limits.name_bytes,
                "bytes of name",
            ),
            ("parents", object.parents.len(), limits.parents, "parents"),
            (
                "attributes",
                object.attributes.len(),
                limits.attributes,
                "attributes",
            ),
        ] {
            if found > limit {
                over(
                    field,
                    String::new(),
                    format!("{found} {unit}, more than the limit of {limit}"),
                );
            }
        }
        if let Some((key, _)) = object
            .attributes
            .iter()
            .find(|(k, _)| k.len() > limits.attribute_key_bytes)
        {
            over(
                "attributes",
                shortened(key),
                format!(
                    "an attribute key of {} bytes, more than the limit of {}",
                    key.len(),
                    limits.attribute_key_bytes
                ),
            );
        }
        if let Some((key, value)) = object
            .attributes
            .iter()
            .find(|(_, v)| v.len() > limits.attribute_value_bytes)
        {
            over(
                "attributes",
                shortened(key),
                format!(
                    "attribute {} holds {} bytes, more than the limit of {}",
                    shortened(key),
                    value.len(),
                    limits.attribute_value_bytes
                ),
            );
        }
        let size = wire_bytes(object);
        if size > limits.object_bytes {
            over(
                "object",
                String::new(),
                format!(
                    "the object is {size} bytes as a Ready record, more than the limit of {} \
                     (the broker could not deliver it)",
                    limits.object_bytes
                ),
            );
        }
    }
    problems
}

/// At most the first 64 bytes of `s` (on a character boundary), for naming a long token.
fn shortened(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_owned();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectId, Zone};

    fn object(id: &str) -> ObjectDef {
        ObjectDef {
            id: ObjectId::parse(id).expect("id"),
            name: "an object".into(),
            zone: Zone::parse("raw").expect("zone"),
            layer: Some(1),
            parents: Vec::new(),
            frequency: None,
            last_loaded_at: None,
            enabled: true,
            priority: 0,
            attributes: Default::default(),
        }
    }

    #[test]
    fn objects_within_the_limits_pass() {
        let mut o = object("1001");
        o.attributes.insert("command", "load.sh");
        o.parents = vec![ObjectId::parse("1000").unwrap()];
        assert!(check(&[o], &ObjectLimits::default()).is_empty());
    }

    #[test]
    fn each_bound_is_named_with_the_object_the_size_and_the_limit() {
        let limits = ObjectLimits {
            name_bytes: 10,
            parents: 2,
            attributes: 2,
            attribute_key_bytes: 4,
            attribute_value_bytes: 16,
            object_bytes: 10_000,
        };
        let mut long_name = object("1001");
        long_name.name = "a name of twenty bytes".into();
        let mut many_parents = object("1002");
        many_parents.parents = ["1", "2", "3"]
            .iter()
            .map(|p| ObjectId::parse(p).unwrap())
            .collect();
        let mut many_attributes = object("1003");
        for k in ["a", "b", "c"] {
            many_attributes.attributes.insert(k, "v");
        }
        let mut long_key = object("1004");
        long_key.attributes.insert("longkey", "v");
        let mut long_value = object("1005");
        long_value.attributes.insert("cmd", "x".repeat(17));
        let mut huge = object("1006");
        huge.name = "".into();
        huge.attributes.insert("a", "x".repeat(16));
        let big = ObjectLimits {
            object_bytes: 80,
            ..limits
        };
        let problems = check(
            &[
                long_name,
                many_parents,
                many_attributes,
                long_key,
                long_value,
                object("1007"),
            ],
            &limits,
        );
        let seen: Vec<(&str, &str, usize)> = problems
            .iter()
            .map(|p| {
                assert_eq!(p.kind, ProblemKind::OverLimit);
                (
                    p.object_id.as_deref().unwrap(),
                    p.field.as_str(),
                    p.index.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("1001", "name", 0),
                ("1002", "parents", 1),
                ("1003", "attributes", 2),
                ("1004", "attributes", 3),
                ("1005", "attributes", 4),
            ]
        );
        assert!(
            problems[0].message.contains("22 bytes") && problems[0].message.contains("limit of 10")
        );
        assert!(problems[1].message.contains("3 parents"));
        assert!(problems[3].token == "longkey" && problems[3].message.contains("7 bytes"));
        assert!(problems[4].token == "cmd" && problems[4].message.contains("17 bytes"));
        let problems = check(&[huge.clone()], &big);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "object");
        assert!(
            problems[0]
                .message
                .contains(&format!("{} bytes", wire_bytes(&huge))),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn the_size_counts_every_string() {
        let plain = wire_bytes(&object("1001"));
        let mut o = object("1001");
        o.attributes.insert("k", "x".repeat(1000));
        o.parents = vec![ObjectId::parse("1000").unwrap()];
        assert!(wire_bytes(&o) >= plain + 1001 + 4, "{}", wire_bytes(&o));
    }

    #[test]
    fn long_tokens_are_shortened_on_a_character_boundary() {
        let key = "é".repeat(40);
        let s = shortened(&key);
        assert!(s.ends_with('…') && s.len() <= 64 + '…'.len_utf8(), "{s}");
        assert_eq!(shortened("short"), "short");
    }
}
