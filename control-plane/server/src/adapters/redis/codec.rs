//! Byte encodings of what the Redis store keeps: the compact [`NodeRecord`] encoding, the fields
//! of a batch hash, and the members of the sorted sets. Pure; every decoder takes bytes read from
//! Redis (outside data) and fails with a reason instead of panicking.
//!
//! # Node record (value of a `batch:{id}:nodes` hash field)
//!
//! ```text
//! tag        1 byte   bits 0-3: state (0 PENDING, 1 READY, 2 RUNNING, 3 RETRY_WAIT, 4 LOADED,
//!                     5 SKIPPED_FRESH, 6 DEAD, 7 UPSTREAM_FAILED, 8 CANCELLED)
//!                     bit 4: last_error present, bit 5: dead_reason present,
//!                     bit 6: retry_due present, bit 7: failure kind present (records written
//!                     before kinds were kept have it clear)
//! attempt    LEB128 varint (u32)
//! run_start  LEB128 varint (u32)
//! epoch      LEB128 varint (u64)
//! [reason]   1 byte (0 permanent, 1 retries_exhausted, 2 preflight, 3 coalesced_failed)
//! [kind]     1 byte (0 processor, 1 timeout, 2 agent_lost, 3 drained, 4 invalid_input,
//!                     5 preflight, 6 coalesced)
//! [due]      zigzag LEB128 seconds since the epoch, then LEB128 nanoseconds (exact round trip)
//! [error]    the rest: UTF-8 bytes of last_error
//! ```
//!
//! A released record without an error takes 4-8 bytes (a JSON encoding takes ~120).

use std::collections::HashMap;

use chrono::DateTime;
use strata_core::ObjectDef;
use strata_core::machine::{BatchState, DeadReason, FailureKind, NodeRecord, NodeState};
use strata_core::submission::BatchOptions;

use crate::ports::{BatchHead, MAX_TRAIL, NodeTrail, StoredBatch, StoredTransition};

const HAS_ERROR: u8 = 1 << 4;
const HAS_REASON: u8 = 1 << 5;
const HAS_DUE: u8 = 1 << 6;
const HAS_KIND: u8 = 1 << 7;
const STATE_MASK: u8 = 0x0f;

/// Appends the compact encoding of `r` to `out`.
pub(crate) fn encode_record(r: &NodeRecord, out: &mut Vec<u8>) {
    let mut tag = state_code(r.state);
    if r.last_error.is_some() {
        tag |= HAS_ERROR;
    }
    if r.dead_reason.is_some() {
        tag |= HAS_REASON;
    }
    if r.retry_due.is_some() {
        tag |= HAS_DUE;
    }
    if r.last_failure.is_some() {
        tag |= HAS_KIND;
    }
    out.push(tag);
    put_varint(out, u64::from(r.attempt));
    put_varint(out, u64::from(r.run_start));
    put_varint(out, r.dispatch_epoch);
    if let Some(reason) = r.dead_reason {
        out.push(reason_code(reason));
    }
    if let Some(kind) = r.last_failure {
        out.push(kind_code(kind));
    }
    if let Some(due) = r.retry_due {
        put_varint(out, zigzag(due.timestamp()));
        put_varint(out, u64::from(due.timestamp_subsec_nanos()));
    }
    if let Some(e) = &r.last_error {
        out.extend_from_slice(e.as_bytes());
    }
}

/// Encodes a node's trail: the transition count, then per transition from, to (state codes),
/// attempt and time (ms, zigzag varint), then the agent id (the rest; absent = none).
pub(crate) fn encode_trail(t: &NodeTrail, out: &mut Vec<u8>) {
    put_varint(out, t.transitions.len() as u64);
    for x in &t.transitions {
        out.push(state_code(x.from));
        out.push(state_code(x.to));
        put_varint(out, u64::from(x.attempt));
        put_varint(out, zigzag(x.at_ms));
    }
    if let Some(agent) = &t.agent {
        out.extend_from_slice(agent.as_bytes());
    }
}

/// Decodes a trail written by [`encode_trail`].
pub(crate) fn decode_trail(bytes: &[u8]) -> Result<NodeTrail, String> {
    let mut r = Reader { bytes, pos: 0 };
    let n = r.varint("transition count")?;
    if n > MAX_TRAIL as u64 {
        return Err(format!("{n} transitions, at most {MAX_TRAIL} are kept"));
    }
    let mut transitions = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let from = state_of(r.byte("from")?)?;
        let to = state_of(r.byte("to")?)?;
        let attempt = u32::try_from(r.varint("attempt")?).map_err(|_| "attempt out of range")?;
        let at_ms = unzigzag(r.varint("at")?);
        transitions.push(StoredTransition {
            from,
            to,
            attempt,
            at_ms,
        });
    }
    let rest = &bytes[r.pos..];
    let agent = if rest.is_empty() {
        None
    } else {
        Some(
            std::str::from_utf8(rest)
                .map_err(|e| format!("agent id is not UTF-8: {e}"))?
                .to_owned(),
        )
    };
    Ok(NodeTrail { transitions, agent })
}

/// Decodes a record written by [`encode_record`].
pub(crate) fn decode_record(bytes: &[u8]) -> Result<NodeRecord, String> {
    let mut r = Reader { bytes, pos: 0 };
    let tag = r.byte("tag")?;
    let state = state_of(tag & STATE_MASK)?;
    let attempt = u32::try_from(r.varint("attempt")?).map_err(|_| "attempt out of range")?;
    let run_start = u32::try_from(r.varint("run_start")?).map_err(|_| "run_start out of range")?;
    let dispatch_epoch = r.varint("dispatch_epoch")?;
    let dead_reason = if tag & HAS_REASON != 0 {
        Some(reason_of(r.byte("dead_reason")?)?)
    } else {
        None
    };
    let last_failure = if tag & HAS_KIND != 0 {
        Some(kind_of(r.byte("failure kind")?)?)
    } else {
        None
    };
    let retry_due = if tag & HAS_DUE != 0 {
        let secs = unzigzag(r.varint("retry_due seconds")?);
        let nanos = u32::try_from(r.varint("retry_due nanoseconds")?)
            .map_err(|_| "retry_due nanoseconds out of range")?;
        Some(
            DateTime::from_timestamp(secs, nanos)
                .ok_or_else(|| format!("retry_due out of range ({secs} s, {nanos} ns)"))?,
        )
    } else {
        None
    };
    let rest = &bytes[r.pos..];
    let last_error = if tag & HAS_ERROR != 0 {
        Some(
            std::str::from_utf8(rest)
                .map_err(|e| format!("last_error is not UTF-8: {e}"))?
                .to_owned(),
        )
    } else if !rest.is_empty() {
        return Err(format!("{} trailing byte(s)", rest.len()));
    } else {
        None
    };
    Ok(NodeRecord {
        state,
        attempt,
        run_start,
        dispatch_epoch,
        last_error,
        last_failure,
        dead_reason,
        retry_due,
    })
}

const KINDS: [FailureKind; 7] = [
    FailureKind::Processor,
    FailureKind::Timeout,
    FailureKind::AgentLost,
    FailureKind::Drained,
    FailureKind::InvalidInput,
    FailureKind::Preflight,
    FailureKind::Coalesced,
];

fn kind_code(kind: FailureKind) -> u8 {
    KINDS.iter().position(|k| *k == kind).unwrap_or(0) as u8
}

fn kind_of(code: u8) -> Result<FailureKind, String> {
    KINDS
        .get(usize::from(code))
        .copied()
        .ok_or_else(|| format!("unknown failure kind {code}"))
}

fn state_code(s: NodeState) -> u8 {
    match s {
        NodeState::Pending => 0,
        NodeState::Ready => 1,
        NodeState::Running => 2,
        NodeState::RetryWait => 3,
        NodeState::Loaded => 4,
        NodeState::SkippedFresh => 5,
        NodeState::Dead => 6,
        NodeState::UpstreamFailed => 7,
        NodeState::Cancelled => 8,
    }
}

fn state_of(code: u8) -> Result<NodeState, String> {
    Ok(match code {
        0 => NodeState::Pending,
        1 => NodeState::Ready,
        2 => NodeState::Running,
        3 => NodeState::RetryWait,
        4 => NodeState::Loaded,
        5 => NodeState::SkippedFresh,
        6 => NodeState::Dead,
        7 => NodeState::UpstreamFailed,
        8 => NodeState::Cancelled,
        other => return Err(format!("unknown state code {other}")),
    })
}

fn reason_code(r: DeadReason) -> u8 {
    match r {
        DeadReason::Permanent => 0,
        DeadReason::RetriesExhausted => 1,
        DeadReason::Preflight => 2,
        DeadReason::CoalescedFailed => 3,
    }
}

fn reason_of(code: u8) -> Result<DeadReason, String> {
    Ok(match code {
        0 => DeadReason::Permanent,
        1 => DeadReason::RetriesExhausted,
        2 => DeadReason::Preflight,
        3 => DeadReason::CoalescedFailed,
        other => return Err(format!("unknown dead reason code {other}")),
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self, what: &str) -> Result<u8, String> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| format!("truncated before {what}"))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self, what: &str) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte(what)?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(format!("{what} overflows 64 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("{what} overflows 64 bits"))
    }
}

/// Field names of the `batch:{id}` hash.
pub(crate) mod field {
    pub(crate) const ID: &str = "id";
    pub(crate) const IDEMPOTENCY_KEY: &str = "idem";
    pub(crate) const CONTENT_HASH: &str = "hash";
    pub(crate) const CREATED_AT_MS: &str = "created_at_ms";
    pub(crate) const OPTIONS: &str = "options";
    pub(crate) const STATE: &str = "state";
    pub(crate) const NEXT_EPOCH: &str = "next_epoch";
    pub(crate) const FINISHED_AT_MS: &str = "finished_at_ms";
    pub(crate) const LAYOUT: &str = "layout";
}

/// Rebuilds a batch's definition (without its objects) and head from its hash fields.
pub(crate) fn decode_batch_hash(
    fields: &HashMap<Vec<u8>, Vec<u8>>,
) -> Result<(StoredBatch, BatchHead), String> {
    let text = |name: &str| -> Result<String, String> {
        let raw = fields
            .get(name.as_bytes())
            .ok_or_else(|| format!("field {name} missing"))?;
        String::from_utf8(raw.clone()).map_err(|_| format!("field {name} is not UTF-8"))
    };
    let int = |name: &str| -> Result<i64, String> {
        text(name)?
            .parse::<i64>()
            .map_err(|e| format!("field {name}: {e}"))
    };
    let options = serde_json::from_slice(
        fields
            .get(field::OPTIONS.as_bytes())
            .ok_or("field options missing")?,
    )
    .map_err(|e| format!("field options: {e}"))?;
    let next_epoch = text(field::NEXT_EPOCH)?
        .parse::<u64>()
        .map_err(|e| format!("field next_epoch: {e}"))?;
    let finished_at_ms = if fields.contains_key(field::FINISHED_AT_MS.as_bytes()) {
        Some(int(field::FINISHED_AT_MS)?)
    } else {
        None
    };
    let state = text(field::STATE)?;
    Ok((
        StoredBatch {
            batch_id: text(field::ID)?,
            idempotency_key: text(field::IDEMPOTENCY_KEY)?,
            content_hash: text(field::CONTENT_HASH)?,
            created_at_ms: int(field::CREATED_AT_MS)?,
            options,
            layout_hash: if fields.contains_key(field::LAYOUT.as_bytes()) {
                text(field::LAYOUT)?
            } else {
                String::new()
            },
        },
        BatchHead {
            state: batch_state_of(&state)
                .ok_or_else(|| format!("field state: unknown batch state {state:?}"))?,
            next_epoch,
            finished_at_ms,
        },
    ))
}

/// The value of a batch hash's `options` field.
pub(crate) fn encode_options(options: &BatchOptions) -> Result<Vec<u8>, String> {
    serde_json::to_vec(options).map_err(|e| format!("options: {e}"))
}

/// The value of a batch's `objects` key: the submitted objects, JSON-encoded.
pub(crate) fn encode_objects(objects: &[ObjectDef]) -> Result<Vec<u8>, String> {
    serde_json::to_vec(objects).map_err(|e| format!("objects: {e}"))
}

/// Decodes what [`encode_objects`] wrote.
pub(crate) fn decode_objects(bytes: &[u8]) -> Result<Vec<ObjectDef>, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("objects: {e}"))
}

/// A batch state from its stored label (`BatchState::as_str`).
pub(crate) fn batch_state_of(label: &str) -> Option<BatchState> {
    [
        BatchState::Running,
        BatchState::Succeeded,
        BatchState::Failed,
        BatchState::Cancelled,
    ]
    .into_iter()
    .find(|s| s.as_str() == label)
}

/// `{batch}:{node}:{attempt}`: the member of a retry in the `retries` sorted set.
pub(crate) fn retry_member(batch_id: &str, node: u32, attempt: u32) -> String {
    format!("{batch_id}:{node}:{attempt}")
}

/// Splits a retry member (the batch id may itself contain `:`; the numbers come last).
pub(crate) fn parse_retry_member(member: &str) -> Result<(String, u32, u32), String> {
    let mut parts = member.rsplitn(3, ':');
    let (Some(attempt), Some(node), Some(batch)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("retry member {member:?} is not batch:node:attempt"));
    };
    let node = node
        .parse()
        .map_err(|e| format!("retry member {member:?}: node: {e}"))?;
    let attempt = attempt
        .parse()
        .map_err(|e| format!("retry member {member:?}: attempt: {e}"))?;
    Ok((batch.to_owned(), node, attempt))
}

/// `{batch}:{node}`: the member of a dead letter in the global `dlq` sorted set.
pub(crate) fn parse_dead_member(member: &str) -> Result<(String, u32), String> {
    let (batch, node) = member
        .rsplit_once(':')
        .ok_or_else(|| format!("dead-letter member {member:?} is not batch:node"))?;
    let node = node
        .parse()
        .map_err(|e| format!("dead-letter member {member:?}: node: {e}"))?;
    Ok((batch.to_owned(), node))
}

/// A sorted-set score as Redis prints it (`1700000000000`, or in exponent form for huge values).
pub(crate) fn parse_score(raw: &str) -> Result<i64, String> {
    raw.parse::<i64>().or_else(|_| {
        raw.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| f as i64)
            .ok_or_else(|| format!("score {raw:?} is not a number"))
    })
}

/// A list cursor: the score and member of the last entry of the previous page.
pub(crate) fn encode_cursor(score: &str, member: &str) -> String {
    format!("{score}:{member}")
}

/// Splits a cursor made by [`encode_cursor`].
pub(crate) fn decode_cursor(cursor: &str) -> Result<(String, String), String> {
    let (score, member) = cursor
        .split_once(':')
        .ok_or_else(|| format!("cursor {cursor:?} was not issued by this store"))?;
    parse_score(score).map_err(|_| format!("cursor {cursor:?} was not issued by this store"))?;
    Ok((score.to_owned(), member.to_owned()))
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    #[test]
    fn a_trail_round_trips() {
        let t = NodeTrail {
            transitions: vec![
                StoredTransition {
                    from: NodeState::Pending,
                    to: NodeState::Ready,
                    attempt: 1,
                    at_ms: 1_700_000_000_000,
                },
                StoredTransition {
                    from: NodeState::Ready,
                    to: NodeState::Running,
                    attempt: 1,
                    at_ms: -5,
                },
            ],
            agent: Some("agent-raw-1".into()),
        };
        let mut buf = Vec::new();
        encode_trail(&t, &mut buf);
        assert_eq!(decode_trail(&buf), Ok(t));
        let empty = NodeTrail::default();
        buf.clear();
        encode_trail(&empty, &mut buf);
        assert_eq!(decode_trail(&buf), Ok(empty));
        assert!(
            decode_trail(&[200, 1]).is_err(),
            "more transitions than are kept"
        );
    }

    fn record(state: NodeState) -> NodeRecord {
        NodeRecord {
            state,
            attempt: 0,
            run_start: 0,
            dispatch_epoch: 0,
            last_error: None,
            last_failure: None,
            dead_reason: None,
            retry_due: None,
        }
    }

    fn round_trip(r: &NodeRecord) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(r, &mut out);
        assert_eq!(&decode_record(&out).expect("decodes"), r, "bytes {out:?}");
        out
    }

    #[test]
    fn every_state_and_field_round_trips_exactly() {
        for state in NodeState::ALL {
            round_trip(&record(state));
        }
        let full = NodeRecord {
            state: NodeState::Dead,
            attempt: u32::MAX,
            run_start: u32::MAX - 1,
            dispatch_epoch: u64::MAX,
            last_error: Some("boom: ünïcode, \n newlines and : colons".into()),
            last_failure: Some(FailureKind::Coalesced),
            dead_reason: Some(DeadReason::CoalescedFailed),
            retry_due: Some(Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap()),
        };
        round_trip(&full);
        for reason in [
            DeadReason::Permanent,
            DeadReason::RetriesExhausted,
            DeadReason::Preflight,
            DeadReason::CoalescedFailed,
        ] {
            round_trip(&NodeRecord {
                dead_reason: Some(reason),
                ..full.clone()
            });
        }
        for kind in KINDS {
            round_trip(&NodeRecord {
                last_failure: Some(kind),
                ..full.clone()
            });
        }
        // A record written before failure kinds were kept.
        round_trip(&NodeRecord {
            last_failure: None,
            ..full.clone()
        });
        // Before the epoch, and an empty error (distinct from no error).
        round_trip(&NodeRecord {
            state: NodeState::RetryWait,
            retry_due: Some(Utc.timestamp_opt(-86_400, 1).unwrap()),
            last_error: Some(String::new()),
            ..record(NodeState::RetryWait)
        });
    }

    #[test]
    fn typical_records_are_a_few_bytes() {
        assert_eq!(round_trip(&record(NodeState::Pending)).len(), 4);
        let running = NodeRecord {
            attempt: 1,
            dispatch_epoch: 123_456,
            ..record(NodeState::Running)
        };
        assert_eq!(round_trip(&running).len(), 6);
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        let mut good = Vec::new();
        encode_record(
            &NodeRecord {
                attempt: 300,
                dispatch_epoch: 70_000,
                dead_reason: Some(DeadReason::Preflight),
                retry_due: Some(Utc.timestamp_opt(1_700_000_000, 5).unwrap()),
                ..record(NodeState::Dead)
            },
            &mut good,
        );
        for len in 0..good.len() {
            assert!(
                decode_record(&good[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode_record(&trailing).is_err());
        assert!(decode_record(&[9, 0, 0, 0]).is_err(), "unknown state");
        assert!(decode_record(&[HAS_KIND, 0, 0, 0]).is_err(), "kind missing");
        assert!(
            decode_record(&[HAS_KIND, 0, 0, 0, 7]).is_err(),
            "unknown kind"
        );
        assert!(decode_record(&[HAS_REASON | 6, 0, 0, 0, 4]).is_err());
        assert!(
            decode_record(&[HAS_ERROR | 6, 0, 0, 0, 0xff]).is_err(),
            "not UTF-8"
        );
        let overflow = [
            0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        assert!(decode_record(&overflow).is_err(), "varint overflow");
        assert!(decode_record(&[0, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0]).is_err());
    }

    #[test]
    fn members_split_from_the_right() {
        assert_eq!(
            parse_retry_member(&retry_member("b:with:colons", 7, 3)),
            Ok(("b:with:colons".into(), 7, 3))
        );
        assert!(parse_retry_member("b:7").is_err());
        assert!(parse_retry_member("b:x:3").is_err());
        assert_eq!(parse_dead_member("b:x:12"), Ok(("b:x".into(), 12)));
        assert!(parse_dead_member("nocolon").is_err());
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_rejected() {
        let c = encode_cursor("1700000000000", "b-1:4");
        assert_eq!(
            decode_cursor(&c),
            Ok(("1700000000000".into(), "b-1:4".into()))
        );
        assert!(decode_cursor("20").is_err());
        assert!(decode_cursor("x:y").is_err());
        assert_eq!(parse_score("1.7e+12"), Ok(1_700_000_000_000));
    }
}
