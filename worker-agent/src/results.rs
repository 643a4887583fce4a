//! The results an agent reports for one attempt, built from the Ready and the agent's lease, and
//! signed with the lease's key. Pure: times are arguments. Shared by the agent runtime and by in-process agents (dev mode).

use std::time::Duration;

use chrono::{DateTime, Utc};
use strata_proto::kafka::{MAX_RESULT_ERROR_BYTES, truncated};
use strata_proto::signing::ResultKey;
use strata_proto::v1::{
    FailureReason, ObjectFailed, ObjectLoaded, ObjectReady, ObjectResult, ObjectStarted,
    object_result,
};

use crate::processor::Outcome;

/// The lease an attempt runs under: echoed in every result, and the key that signs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// The agent id from registration.
    pub agent_id: String,
    /// The lease epoch from registration.
    pub lease_epoch: u64,
    /// The lease's result signing key (none: results go unsigned).
    pub result_key: Option<ResultKey>,
}

/// The lease epoch an agent holds now and that lease's newest result key (a heartbeat may
/// hand out a new one while an attempt runs).
pub type CurrentKey = (u64, Option<ResultKey>);

impl Who {
    /// `self` with its lease's newest key: an attempt of an older lease keeps the key it had.
    pub fn rekeyed(&self, current: &CurrentKey) -> Who {
        let mut who = self.clone();
        if current.0 == who.lease_epoch {
            who.result_key = current.1.clone();
        }
        who
    }

    /// `result` signed with the lease's key, if it has one.
    fn seal(&self, mut result: ObjectResult) -> ObjectResult {
        if let Some(key) = &self.result_key {
            key.sign(&mut result);
        }
        result
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The processor answered.
    Processed(Outcome),
    /// The processor panicked.
    Panicked,
    /// The processor was still running at the execution timeout.
    TimedOut(Duration),
}

/// `ObjectStarted` for `ready`, started at `at`.
pub fn started(ready: &ObjectReady, who: &Who, at: DateTime<Utc>) -> ObjectResult {
    who.seal(ObjectResult {
        result: Some(object_result::Result::Started(ObjectStarted {
            batch_id: ready.batch_id.clone(),
            object_id: ready.object_id.clone(),
            zone: ready.zone.clone(),
            attempt: ready.attempt,
            dispatch_epoch: ready.dispatch_epoch,
            agent_id: who.agent_id.clone(),
            agent_lease_epoch: who.lease_epoch,
            started_at: Some(timestamp(at)),
            signature: Vec::new(),
        })),
    })
}

/// The final result of an attempt started at `start` and ended at `end` after `elapsed`
/// (monotonic), with its metrics label (`loaded`, `failed_retryable`, `failed_permanent`,
/// `timeout`).
pub fn finished(
    ready: &ObjectReady,
    who: &Who,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    elapsed: Duration,
    ending: Ending,
) -> (ObjectResult, &'static str) {
    let duration = prost_types::Duration::try_from(elapsed).ok();
    let (result, label) = match ending {
        Ending::Processed(Outcome::Loaded { info }) => (
            object_result::Result::Loaded(ObjectLoaded {
                batch_id: ready.batch_id.clone(),
                object_id: ready.object_id.clone(),
                zone: ready.zone.clone(),
                attempt: ready.attempt,
                dispatch_epoch: ready.dispatch_epoch,
                agent_id: who.agent_id.clone(),
                agent_lease_epoch: who.lease_epoch,
                started_at: Some(timestamp(start)),
                finished_at: Some(timestamp(end)),
                duration,
                info: if info.is_empty() {
                    Default::default()
                } else {
                    [("info".to_owned(), info)].into_iter().collect()
                },
                signature: Vec::new(),
            }),
            "loaded",
        ),
        Ending::Processed(Outcome::Failed { retryable, error }) => (
            object_result::Result::Failed(failed(
                ready,
                who,
                Some(start),
                end,
                duration,
                retryable,
                error,
                FailureReason::Processor,
            )),
            if retryable {
                "failed_retryable"
            } else {
                "failed_permanent"
            },
        ),
        Ending::Panicked => (
            object_result::Result::Failed(failed(
                ready,
                who,
                Some(start),
                end,
                duration,
                false,
                "the processor panicked".into(),
                FailureReason::Processor,
            )),
            "failed_permanent",
        ),
        Ending::TimedOut(limit) => (
            object_result::Result::Failed(failed(
                ready,
                who,
                Some(start),
                end,
                duration,
                true,
                format!(
                    "execution timeout: still running after {} s",
                    limit.as_secs_f64()
                ),
                FailureReason::Timeout,
            )),
            "timeout",
        ),
    };
    (
        who.seal(ObjectResult {
            result: Some(result),
        }),
        label,
    )
}

/// A retryable `DRAINED` failure for an attempt handed back unfinished (`start` = when its
/// processor started, if it did).
pub fn handed_back(
    ready: &ObjectReady,
    who: &Who,
    start: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    error: String,
) -> ObjectResult {
    let duration = start
        .and_then(|t| (now - t).to_std().ok())
        .and_then(|d| prost_types::Duration::try_from(d).ok());
    who.seal(ObjectResult {
        result: Some(object_result::Result::Failed(failed(
            ready,
            who,
            start,
            now,
            duration,
            true,
            error,
            FailureReason::Drained,
        ))),
    })
}

#[allow(clippy::too_many_arguments)]
fn failed(
    ready: &ObjectReady,
    who: &Who,
    start: Option<DateTime<Utc>>,
    end: DateTime<Utc>,
    duration: Option<prost_types::Duration>,
    retryable: bool,
    error: String,
    reason: FailureReason,
) -> ObjectFailed {
    ObjectFailed {
        batch_id: ready.batch_id.clone(),
        object_id: ready.object_id.clone(),
        zone: ready.zone.clone(),
        attempt: ready.attempt,
        dispatch_epoch: ready.dispatch_epoch,
        agent_id: who.agent_id.clone(),
        agent_lease_epoch: who.lease_epoch,
        started_at: start.map(timestamp),
        finished_at: Some(timestamp(end)),
        duration,
        retryable,
        error: truncated(error, MAX_RESULT_ERROR_BYTES),
        reason: reason as i32,
        signature: Vec::new(),
    }
}

/// A protobuf timestamp.
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> ObjectReady {
        ObjectReady {
            batch_id: "b-1".into(),
            object_id: "1001".into(),
            zone: "raw".into(),
            attempt: 2,
            dispatch_epoch: 7,
            ..Default::default()
        }
    }

    #[test]
    fn results_echo_the_attempt_and_the_lease_and_are_signed_with_its_key() {
        let key = ResultKey::from_slice(&[4; 32]).expect("32 bytes");
        let who = Who {
            agent_id: "agent-raw-1".into(),
            lease_epoch: 3,
            result_key: Some(key.clone()),
        };
        let t = Utc::now();
        let (r, label) = finished(
            &ready(),
            &who,
            t,
            t,
            Duration::from_millis(5),
            Ending::TimedOut(Duration::from_secs(2)),
        );
        assert_eq!(label, "timeout");
        let Some(object_result::Result::Failed(f)) = r.result else {
            panic!("a failure")
        };
        assert_eq!(
            (f.attempt, f.dispatch_epoch, f.agent_lease_epoch),
            (2, 7, 3)
        );
        assert!(f.retryable && f.reason == FailureReason::Timeout as i32);
        assert!(f.error.contains("after 2 s"), "{}", f.error);
        let signed = ObjectResult {
            result: Some(object_result::Result::Failed(f)),
        };
        let (signature, _) = strata_proto::signing::result_seal(&signed).expect("an outcome");
        let text = strata_proto::signing::result_signed_text(&signed).expect("an outcome");
        assert!(key.verify(&text, signature), "signed with the lease's key");
        let Some(object_result::Result::Started(s)) = started(&ready(), &who, t).result else {
            panic!("started")
        };
        assert_eq!(s.agent_id, "agent-raw-1");
        assert_eq!(s.signature.len(), 32);
        let unsigned = Who {
            result_key: None,
            ..who
        };
        let Some(object_result::Result::Started(s)) = started(&ready(), &unsigned, t).result else {
            panic!("started")
        };
        assert!(s.signature.is_empty(), "no key, no signature");
    }

    #[test]
    fn errors_are_cut_on_a_character_boundary() {
        assert_eq!(truncated("short".into(), 10), "short");
        let cut = truncated("é".repeat(3000), MAX_RESULT_ERROR_BYTES);
        assert!(
            cut.len() <= MAX_RESULT_ERROR_BYTES && cut.ends_with('…'),
            "{}",
            cut.len()
        );
    }
}
