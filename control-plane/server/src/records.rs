//! The records the driver exchanges with the data plane, as domain values: a Ready it releases,
//! a dead letter, a status change, and an agent's report read from the results topic. Only the
//! adapters turn them into protobuf or back ([`crate::convert`] holds those conversions).

use std::time::Duration;

use chrono::{DateTime, Utc};
use strata_core::machine::{BatchState, Event, FailureKind, NodeState};
use strata_core::model::NodeIx;
use strata_core::{ObjectDef, Zone};

/// One released attempt of an object, for its zone's Ready topic.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadyRecord {
    /// The batch.
    pub batch_id: String,
    /// The object, as the batch defines it (its id and zone among the rest).
    pub object: ObjectDef,
    /// The attempt released.
    pub attempt: u32,
    /// Attempts the object's retry policy allows.
    pub max_attempts: u32,
    /// The dispatch epoch of this release.
    pub dispatch_epoch: u64,
    /// When it was released.
    pub released_at: DateTime<Utc>,
    /// How long the attempt may run.
    pub execution_timeout: Duration,
    /// The W3C `traceparent` of the release span (only while traces are exported).
    pub traceparent: Option<String>,
}

/// An object that died, for the dead-letter topic and the dead-letter index.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRecord {
    /// The batch.
    pub batch_id: String,
    /// The object, as the batch defines it.
    pub object: ObjectDef,
    /// Attempts made in its last run.
    pub attempts: u32,
    /// Its last error (empty when it never ran and no rule named one).
    pub last_error: String,
    /// The kind of that error.
    pub kind: FailureKind,
    /// When it died.
    pub dead_at: DateTime<Utc>,
    /// The agent that reported its last result (empty if none did).
    pub last_agent_id: String,
}

/// An object's state change, for the status topic's external consumers.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    /// The batch.
    pub batch_id: String,
    /// The object's id.
    pub object_id: String,
    /// Its zone.
    pub zone: Zone,
    /// The state it left.
    pub from: NodeState,
    /// The state it entered.
    pub to: NodeState,
    /// The batch's state after the change.
    pub batch_state: BatchState,
    /// The attempt the change belongs to.
    pub attempt: u32,
    /// When.
    pub at: DateTime<Utc>,
}

/// What an agent reported about one attempt, as read from the results topic.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentReport {
    /// The batch.
    pub batch_id: String,
    /// The object's id, as the agent sent it (looked up in the batch by the driver).
    pub object_id: String,
    /// The reporting agent.
    pub agent_id: String,
    /// The attempt from the Ready.
    pub attempt: u32,
    /// The dispatch epoch from the Ready.
    pub dispatch_epoch: u64,
    /// What happened.
    pub outcome: ReportOutcome,
    /// Its signature and what it covers, checked before the report is applied.
    pub seal: ReportSeal,
}

/// A report's signature (`strata_proto::signing`): the lease it claims, the canonical text the
/// signature covers, and the signature (empty: unsigned).
#[derive(Clone, PartialEq, Default)]
pub struct ReportSeal {
    /// The agent's lease epoch, as sent.
    pub lease_epoch: u64,
    /// The canonical text of the report.
    pub signed_text: Vec<u8>,
    /// The HMAC-SHA256 tag, as sent.
    pub signature: Vec<u8>,
}

impl std::fmt::Debug for ReportSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportSeal")
            .field("lease_epoch", &self.lease_epoch)
            .field("signed", &!self.signature.is_empty())
            .finish_non_exhaustive()
    }
}

/// The outcome an [`AgentReport`] carries.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportOutcome {
    /// The agent started the attempt.
    Started,
    /// The attempt loaded the object; `processed` is the processor's run time, if reported.
    Loaded {
        /// The processor's run time.
        processed: Option<Duration>,
    },
    /// The attempt failed.
    Failed {
        /// The processor's run time.
        processed: Option<Duration>,
        /// Whether the agent classified it as retryable.
        retryable: bool,
        /// The error.
        error: String,
        /// Its kind (processor, timeout, invalid input).
        kind: FailureKind,
    },
}

impl ReportOutcome {
    /// The outcome's label in metrics (`started`, `loaded`, `failed`).
    pub fn label(&self) -> &'static str {
        match self {
            ReportOutcome::Started => "started",
            ReportOutcome::Loaded { .. } => "loaded",
            ReportOutcome::Failed { .. } => "failed",
        }
    }

    /// The processor's run time it reports.
    pub fn processed(&self) -> Option<Duration> {
        match self {
            ReportOutcome::Started => None,
            ReportOutcome::Loaded { processed } | ReportOutcome::Failed { processed, .. } => {
                *processed
            }
        }
    }
}

impl AgentReport {
    /// The machine event this report is for `node` (the object's index in its batch).
    pub fn into_event(self, node: NodeIx) -> Event {
        let (attempt, dispatch_epoch) = (self.attempt, self.dispatch_epoch);
        match self.outcome {
            ReportOutcome::Started => Event::Started {
                node,
                attempt,
                dispatch_epoch,
            },
            ReportOutcome::Loaded { .. } => Event::Loaded {
                node,
                attempt,
                dispatch_epoch,
            },
            ReportOutcome::Failed {
                retryable,
                error,
                kind,
                ..
            } => Event::Failed {
                node,
                attempt,
                dispatch_epoch,
                retryable,
                error,
                kind,
            },
        }
    }
}
