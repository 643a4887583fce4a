//! Output: `--output json` prints the API's messages in the proto3 JSON mapping (the same shape
//! grpcurl prints), through the descriptor set the server also serves by reflection; text output
//! is for people.

use std::sync::OnceLock;

use chrono::{DateTime, Local, Utc};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use strata_proto::v1 as pb;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Readable text (progress bars on a terminal).
    Text,
    /// JSON (proto3 JSON mapping); `watch` prints one JSON object per event.
    Json,
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(strata_proto::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes")
    })
}

/// `message` in the proto3 JSON mapping (enum names, RFC 3339 timestamps, camelCase fields as
/// protoc's JSON printer and grpcurl write them).
pub fn to_json<M: prost::Message + prost::Name>(message: &M) -> serde_json::Value {
    let descriptor = pool()
        .get_message_by_name(&M::full_name())
        .expect("every strata.v1 message is in the descriptor set");
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .expect("a message re-decodes with its own descriptor");
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::new(&mut out);
    dynamic
        .serialize_with_options(&mut serializer, &SerializeOptions::new())
        .expect("serialising into memory cannot fail");
    serde_json::from_slice(&out).expect("valid JSON")
}

/// Prints `message` as pretty JSON.
pub fn print_json<M: prost::Message + prost::Name>(message: &M) {
    println!(
        "{}",
        serde_json::to_string_pretty(&to_json(message)).expect("JSON values print")
    );
}

/// `LOADED` for `OBJECT_STATE_LOADED`.
pub fn object_state(state: pb::ObjectState) -> &'static str {
    state
        .as_str_name()
        .strip_prefix("OBJECT_STATE_")
        .unwrap_or("?")
}

/// `SUCCEEDED` for `BATCH_STATE_SUCCEEDED`.
pub fn batch_state(state: pb::BatchState) -> &'static str {
    state
        .as_str_name()
        .strip_prefix("BATCH_STATE_")
        .unwrap_or("?")
}

/// A timestamp in local time, `-` when unset.
pub fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| {
            t.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S%.3f")
                .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

/// A protobuf duration as seconds (`1.250 s`), `-` when unset.
pub fn duration(d: Option<&prost_types::Duration>) -> String {
    d.map(|d| format!("{:.3} s", d.seconds as f64 + f64::from(d.nanos) / 1e9))
        .unwrap_or_else(|| "-".into())
}

/// Left-aligned columns for a header and rows.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

/// Prints a list reply: as JSON, else `empty` when it has no item, else a table of `header` with
/// one `row` per item.
pub fn print_list<M: prost::Message + prost::Name, T>(
    output: Output,
    reply: &M,
    items: &[T],
    empty: &str,
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) {
    if output == Output::Json {
        print_json(reply);
    } else if items.is_empty() {
        println!("{empty}");
    } else {
        let rows: Vec<Vec<String>> = items.iter().map(row).collect();
        println!("{}", table(header, &rows));
    }
}

/// The plan summary in a few lines.
pub fn summary(s: &pb::PlanSummary) -> String {
    let mut zones: Vec<(&String, &u32)> = s.objects_per_zone.iter().collect();
    zones.sort();
    let per_zone = zones
        .iter()
        .map(|(z, n)| format!("{z} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = vec![
        format!(
            "{} objects planned ({} targets) in {} waves; per zone: {per_zone}",
            s.object_count, s.target_count, s.wave_count
        ),
        format!(
            "critical path ({}): {}",
            duration(s.critical_path_cost.as_ref()),
            s.critical_path.join(" → ")
        ),
    ];
    let mut extra = Vec::new();
    if s.skipped_fresh_count > 0 {
        extra.push(format!("{} fresh (skipped)", s.skipped_fresh_count));
    }
    if s.coalesced_count > 0 {
        extra.push(format!(
            "{} coalesced onto other batches",
            s.coalesced_count
        ));
    }
    if s.preflight_rejected_count > 0 {
        extra.push(format!(
            "{} rejected by preflight",
            s.preflight_rejected_count
        ));
    }
    if s.excluded_count > 0 {
        extra.push(format!("{} outside the targets' closure", s.excluded_count));
    }
    if s.shared_ancestor_count > 0 {
        extra.push(format!("{} shared ancestors", s.shared_ancestor_count));
    }
    if !s.external_parents.is_empty() {
        extra.push(format!(
            "external parents: {}",
            s.external_parents.join(", ")
        ));
    }
    if !extra.is_empty() {
        out.push(extra.join("; "));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_the_proto3_mapping() {
        let batch = pb::Batch {
            batch_id: "b-1".into(),
            state: pb::BatchState::Succeeded as i32,
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        };
        let json = to_json(&batch);
        assert_eq!(json["batchId"], "b-1");
        assert_eq!(json["state"], "BATCH_STATE_SUCCEEDED");
        assert_eq!(json["createdAt"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["zone", "n"],
            &[
                vec!["raw".into(), "10".into()],
                vec!["application".into(), "2".into()],
            ],
        );
        assert_eq!(t, "zone         n\nraw          10\napplication  2");
    }
}
