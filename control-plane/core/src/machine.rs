//! The per-batch object state machine: events in, effects out.
//!
//! [`BatchMachine`] owns the execution state of one batch over a planned [`Dag`] (nodes `0..n`):
//! the state of every object, its attempts, its fencing token, its last error, and the batch's
//! own state. Drivers feed it [`Event`]s (agent results, retry timers, user commands) together
//! with the current time and a uniform random number, and get back [`Effect`]s to perform
//! (publish a Ready, schedule a retry, produce a dead letter, publish a status change) plus an
//! [`Outcome`] that says whether the event was applied or ignored (and why, so it can be counted).
//!
//! It must not depend on tokio, Kafka, Redis, gRPC or the clock: no I/O, no channels, no
//! `Utc::now()`, no random generator. The same inputs always give the same outputs.
//!
//! # States
//!
//! Object: `PENDING → READY → RUNNING → LOADED`; a failed attempt goes `RETRY_WAIT → READY …` until
//! the attempts of the run are exhausted (or the failure is permanent) → `DEAD`; also
//! `SKIPPED_FRESH` (satisfied without running), `UPSTREAM_FAILED` (some ancestor is `DEAD`) and
//! `CANCELLED`. Batch: `RUNNING → SUCCEEDED | FAILED | CANCELLED`; `FAILED` means every object is
//! terminal and at least one is `DEAD` or `UPSTREAM_FAILED`. A [`Event::Replay`] may reopen a
//! `FAILED` batch ([`Effect::BatchReopened`]); `SUCCEEDED` and `CANCELLED` are final.
//!
//! # Guarantees (checked by the property tests in `tests/machine_*.rs`)
//!
//! - A node is released ([`Effect::PublishReady`]) only when every parent is `LOADED` or
//!   `SKIPPED_FRESH`, and the `Transition`s that made them so come earlier in the effect list.
//! - Driven to quiescence, every node ends in exactly one terminal state and the batch ends
//!   `SUCCEEDED` or `FAILED` accordingly ([`Effect::BatchFinished`] once).
//! - An ignored event changes nothing and emits nothing.
//! - A run never has more than `max_attempts` attempts.
//!
//! # Attempts and fencing
//!
//! Every release increments the node's attempt number (attempts count from 1) and takes the next
//! value of a per-batch monotone **dispatch epoch** (from 1), both carried by the Ready. A result
//! is applied only if its `(attempt, dispatch_epoch)` is the node's current pair and the node's
//! state accepts it; anything else is [`Outcome::Ignored`]. The first outcome of an attempt wins:
//! a `Loaded` that arrives after the attempt was declared lost is ignored as [`IgnoreReason::Late`].
//!
//! Attempt numbers never go back within a batch, so `(batch, object, attempt)` identifies one
//! release: a [`Event::Replay`] starts a new *run* with a fresh budget of `max_attempts` attempts
//! but keeps counting (a node that died at attempt 3 is replayed as attempt 4). The retry policy
//! sees run-relative attempt numbers ([`NodeRecord::run_attempts`]).
//!
//! # Cost
//!
//! The machine keeps, per node, the number of parents not yet satisfied and the number of parents
//! that are `DEAD`/`UPSTREAM_FAILED`, so a result costs O(children of the node) plus the nodes it
//! changes; failure and replay propagation walk descendants with an explicit stack (a
//! 100,000-deep chain does not touch the call stack). Only [`Event::Cancel`] and
//! [`BatchMachine::resume`] scan every node.
//!
//! # Restart recovery
//!
//! The driver persists the [`NodeRecord`]s changed by each step (every [`Effect::Transition`]
//! names one; persist the step's records atomically, before acting on its other effects). After a
//! restart, [`BatchMachine::restore`] rebuilds the machine from the records without emitting
//! anything; [`BatchMachine::resume`] then returns what the driver must redo:
//!
//! - `READY` nodes: their Ready may never have been produced, so it is re-published with the same
//!   `(attempt, dispatch_epoch)` — agents de-duplicate on that pair, and a second result for it is
//!   a counted duplicate.
//! - `PENDING` nodes whose parents are all satisfied (a release lost between persisting the
//!   parent's `LOADED` and the child's `READY`) are released now, with a new epoch.
//! - `RETRY_WAIT` nodes: their retry is scheduled again at the persisted due time.
//! - `RUNNING` nodes: nothing is re-published (an agent started them); the driver re-arms their
//!   execution timeout and agent-lease checks, which end in `Loaded`/`Failed`/`AttemptLost`.
//! - A partly persisted cancel is completed; a terminal batch repeats `BatchFinished`.
//!
//! Epochs restart above the highest persisted one; a driver that may lose unpersisted releases can
//! also persist [`BatchMachine::next_epoch`] and pass it to [`BatchMachine::raise_epoch_floor`].

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{Dag, NodeIx};
use crate::retry::{NodePolicies, RetryPolicy, RetryPolicyError};

/// The state of one object in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    /// Waiting for its parents.
    Pending,
    /// Released: a Ready is (being) published to its zone.
    Ready,
    /// An agent reported that it started the current attempt.
    Running,
    /// The current attempt failed; the next one is scheduled.
    RetryWait,
    /// Loaded by this batch (or by another batch it coalesced onto). Terminal.
    Loaded,
    /// Satisfied without running: fresh. Terminal.
    SkippedFresh,
    /// Failed for good (dead-lettered). Terminal unless replayed.
    Dead,
    /// An ancestor is `DEAD`. Terminal unless that ancestor is replayed.
    UpstreamFailed,
    /// The batch was cancelled before the object finished. Terminal.
    Cancelled,
}

impl NodeState {
    /// Every state, in declaration order (the index order of [`StateCounts`]).
    pub const ALL: [NodeState; 9] = [
        NodeState::Pending,
        NodeState::Ready,
        NodeState::Running,
        NodeState::RetryWait,
        NodeState::Loaded,
        NodeState::SkippedFresh,
        NodeState::Dead,
        NodeState::UpstreamFailed,
        NodeState::Cancelled,
    ];

    /// The wire / metrics label (`"PENDING"`, `"RETRY_WAIT"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Pending => "PENDING",
            NodeState::Ready => "READY",
            NodeState::Running => "RUNNING",
            NodeState::RetryWait => "RETRY_WAIT",
            NodeState::Loaded => "LOADED",
            NodeState::SkippedFresh => "SKIPPED_FRESH",
            NodeState::Dead => "DEAD",
            NodeState::UpstreamFailed => "UPSTREAM_FAILED",
            NodeState::Cancelled => "CANCELLED",
        }
    }

    /// `LOADED`, `SKIPPED_FRESH`, `DEAD`, `UPSTREAM_FAILED` or `CANCELLED`.
    pub fn is_terminal(self) -> bool {
        !self.is_active()
    }

    /// `PENDING`, `READY`, `RUNNING` or `RETRY_WAIT`: the batch is not done while one remains.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            NodeState::Pending | NodeState::Ready | NodeState::Running | NodeState::RetryWait
        )
    }

    /// `LOADED` or `SKIPPED_FRESH`: children may run.
    pub fn is_satisfied(self) -> bool {
        matches!(self, NodeState::Loaded | NodeState::SkippedFresh)
    }

    /// `DEAD` or `UPSTREAM_FAILED`: children cannot run.
    pub fn is_failed(self) -> bool {
        matches!(self, NodeState::Dead | NodeState::UpstreamFailed)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BatchState {
    /// Some object is still `PENDING`, `READY`, `RUNNING` or `RETRY_WAIT`.
    Running,
    /// Every object is `LOADED` or `SKIPPED_FRESH`.
    Succeeded,
    /// Every object is terminal and at least one is `DEAD` or `UPSTREAM_FAILED`.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl BatchState {
    /// The wire / metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Running => "RUNNING",
            BatchState::Succeeded => "SUCCEEDED",
            BatchState::Failed => "FAILED",
            BatchState::Cancelled => "CANCELLED",
        }
    }

    /// Anything but `RUNNING`.
    pub fn is_terminal(self) -> bool {
        self != BatchState::Running
    }
}

impl fmt::Display for BatchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the planner decided for an object before the batch starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitialDisposition {
    /// Run it when its parents are satisfied.
    Run,
    /// Fresh (or an external dependency already satisfied): `SKIPPED_FRESH` at once.
    SkippedFresh,
    /// Rejected by a preflight rule: `DEAD` (reason `preflight`) at once, descendants
    /// `UPSTREAM_FAILED`. `reason` becomes the object's last error.
    PreflightRejected {
        /// Which rule rejected it, for the dead letter.
        reason: String,
    },
}

/// Why an object is `DEAD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    /// The agent classified the failure as permanent.
    Permanent,
    /// Every attempt of the run failed (retryable failures or lost attempts).
    RetriesExhausted,
    /// Rejected by a preflight rule before dispatch.
    Preflight,
    /// It coalesced onto an attempt of another batch, and that attempt's object failed.
    CoalescedFailed,
}

impl DeadReason {
    /// The wire / metrics label (`"permanent"`, `"retries_exhausted"`, `"preflight"`,
    /// `"coalesced_failed"`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Permanent => "permanent",
            DeadReason::RetriesExhausted => "retries_exhausted",
            DeadReason::Preflight => "preflight",
            DeadReason::CoalescedFailed => "coalesced_failed",
        }
    }
}

impl fmt::Display for DeadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of failure an object's last error was: data on its record, so that no reader has to
/// guess it from the error's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The processor ran and reported a failure.
    Processor,
    /// The attempt exceeded its zone's execution timeout (reported by the agent, or decided by
    /// the driver when no result arrived in time).
    Timeout,
    /// The agent holding the attempt lost its lease before reporting a result.
    AgentLost,
    /// The agent deregistered (drained) while holding the attempt.
    Drained,
    /// The agent could not understand the Ready it received.
    InvalidInput,
    /// A preflight rule rejected the object before dispatch.
    Preflight,
    /// The attempt of another batch this object coalesced onto failed.
    Coalesced,
}

impl FailureKind {
    /// The wire / metrics label (`"processor"`, `"timeout"`, `"agent_lost"`, `"drained"`,
    /// `"invalid_input"`, `"preflight"`, `"coalesced"`).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Processor => "processor",
            FailureKind::Timeout => "timeout",
            FailureKind::AgentLost => "agent_lost",
            FailureKind::Drained => "drained",
            FailureKind::InvalidInput => "invalid_input",
            FailureKind::Preflight => "preflight",
            FailureKind::Coalesced => "coalesced",
        }
    }
}

impl From<LossReason> for FailureKind {
    fn from(reason: LossReason) -> Self {
        match reason {
            LossReason::AgentLost => FailureKind::AgentLost,
            LossReason::Timeout => FailureKind::Timeout,
            LossReason::Drained => FailureKind::Drained,
        }
    }
}

/// Why an attempt was declared lost by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossReason {
    /// The agent running it missed its heartbeats and its lease expired.
    AgentLost,
    /// It exceeded its zone's execution timeout.
    Timeout,
    /// Its agent deregistered (drained) while still holding it.
    Drained,
}

impl LossReason {
    /// The wire / metrics label (`"agent_lost"`, `"timeout"`, `"drained"`).
    pub fn as_str(self) -> &'static str {
        match self {
            LossReason::AgentLost => "agent_lost",
            LossReason::Timeout => "timeout",
            LossReason::Drained => "drained",
        }
    }
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An input of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An agent started an attempt.
    Started {
        /// The object.
        node: NodeIx,
        /// The attempt number from the Ready.
        attempt: u32,
        /// The dispatch epoch from the Ready.
        dispatch_epoch: u64,
    },
    /// An attempt loaded the object.
    Loaded {
        /// The object.
        node: NodeIx,
        /// The attempt number from the Ready.
        attempt: u32,
        /// The dispatch epoch from the Ready.
        dispatch_epoch: u64,
    },
    /// An attempt failed.
    Failed {
        /// The object.
        node: NodeIx,
        /// The attempt number from the Ready.
        attempt: u32,
        /// The dispatch epoch from the Ready.
        dispatch_epoch: u64,
        /// The agent's classification: retryable, or permanent (`DEAD` at once).
        retryable: bool,
        /// The error, kept as the object's last error.
        error: String,
        /// What kind of failure the agent reported (processor, timeout, invalid input).
        kind: FailureKind,
    },
    /// The driver gave up on an attempt (agent lease expired, execution timeout). Counts as a
    /// retryable failure.
    AttemptLost {
        /// The object.
        node: NodeIx,
        /// The attempt that was lost.
        attempt: u32,
        /// Its dispatch epoch.
        dispatch_epoch: u64,
        /// Why.
        reason: LossReason,
    },
    /// A retry scheduled by [`Effect::ScheduleRetry`] is due.
    RetryDue {
        /// The object.
        node: NodeIx,
        /// The attempt the retry releases (as in the `ScheduleRetry`).
        attempt: u32,
    },
    /// A user asked to run a `RETRY_WAIT` object now instead of at its due time.
    RetryNow {
        /// The object.
        node: NodeIx,
    },
    /// A user cancelled the batch.
    Cancel,
    /// A user asked to re-run these `DEAD` objects with a fresh budget of attempts; their
    /// `UPSTREAM_FAILED` descendants go back to `PENDING` (unless another ancestor is still dead).
    /// Listed nodes that are not `DEAD` are skipped.
    Replay {
        /// The objects to replay.
        nodes: Vec<NodeIx>,
    },
    /// The object was released here but the driver coalesced it onto an attempt already in
    /// flight in another batch; this is that attempt's outcome.
    CoalescedOutcome {
        /// The object.
        node: NodeIx,
        /// The attempt of *this* batch's release that was coalesced.
        attempt: u32,
        /// Its dispatch epoch.
        dispatch_epoch: u64,
        /// Loaded (`LOADED` here too) or failed (`DEAD`, reason `coalesced_failed`).
        loaded: bool,
        /// The other batch's error, if it failed.
        error: Option<String>,
    },
}

/// An output of the machine: something the driver must do or publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Produce a Ready for this object to its zone's topic (or coalesce it onto an attempt in
    /// flight elsewhere and later deliver [`Event::CoalescedOutcome`]).
    PublishReady {
        /// The object.
        node: NodeIx,
        /// Attempt number (from 1, never reused within the batch).
        attempt: u32,
        /// Fencing token: results must carry it back.
        dispatch_epoch: u64,
    },
    /// Deliver [`Event::RetryDue`]`{node, attempt}` at `due_at`.
    ScheduleRetry {
        /// The object.
        node: NodeIx,
        /// The attempt the retry will release.
        attempt: u32,
        /// When.
        due_at: DateTime<Utc>,
    },
    /// Produce a dead letter.
    DeadLetter {
        /// The object.
        node: NodeIx,
        /// Its last attempt number (0 if it never ran).
        attempt: u32,
        /// Attempts made in its last run.
        attempts: u32,
        /// Its last error.
        last_error: Option<String>,
        /// Why it is dead.
        reason: DeadReason,
    },
    /// An object changed state: persist its record, publish a status change, update metrics.
    Transition {
        /// The object.
        node: NodeIx,
        /// Previous state.
        from: NodeState,
        /// New state.
        to: NodeState,
        /// Its attempt number after the change.
        attempt: u32,
    },
    /// The batch reached a terminal state.
    BatchFinished {
        /// `SUCCEEDED`, `FAILED` or `CANCELLED`.
        state: BatchState,
    },
    /// A replay turned a `FAILED` batch back to `RUNNING`.
    BatchReopened,
}

/// Why an event was ignored. Drivers count these (bounded label: [`IgnoreReason::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IgnoreReason {
    /// The node index is not in the batch.
    UnknownNode,
    /// The event names an attempt or dispatch epoch that is not the node's current one (an older
    /// attempt, a retry already taken, or one never issued).
    Stale,
    /// The current attempt's outcome of this kind was already applied.
    Duplicate,
    /// The current attempt already ended differently (e.g. `Loaded` after it was declared lost,
    /// `Started` after its outcome) or the node was cancelled.
    Late,
    /// A command that does not apply in the current state (retry-now of an object not waiting,
    /// replay with nothing dead, cancel of a finished batch).
    NotApplicable,
}

impl IgnoreReason {
    /// The metrics label (`"unknown_node"`, `"stale"`, `"duplicate"`, `"late"`,
    /// `"not_applicable"`).
    pub fn as_str(self) -> &'static str {
        match self {
            IgnoreReason::UnknownNode => "unknown_node",
            IgnoreReason::Stale => "stale",
            IgnoreReason::Duplicate => "duplicate",
            IgnoreReason::Late => "late",
            IgnoreReason::NotApplicable => "not_applicable",
        }
    }
}

impl fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the machine did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The state changed; effects were emitted.
    Applied,
    /// Nothing changed and nothing was emitted.
    Ignored(IgnoreReason),
}

impl Outcome {
    /// True for [`Outcome::Applied`].
    pub fn is_applied(self) -> bool {
        self == Outcome::Applied
    }
}

/// The execution record of one object: what the machine keeps, and what the driver persists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Current state.
    pub state: NodeState,
    /// The number of its last released attempt (0 = never released). Never decreases.
    pub attempt: u32,
    /// The attempt number before its current run started (0, or the last attempt before the
    /// latest replay). `attempt - run_start` attempts were made in the current run.
    pub run_start: u32,
    /// The dispatch epoch of its last release (0 = never released).
    pub dispatch_epoch: u64,
    /// Its last error (a failure, a lost attempt, a preflight rejection).
    pub last_error: Option<String>,
    /// The kind of its last error (set with it; `None` in records written before kinds were
    /// kept, read as a processor failure).
    pub last_failure: Option<FailureKind>,
    /// Why it is `DEAD` (only set in that state).
    pub dead_reason: Option<DeadReason>,
    /// When its next attempt is due (only set in `RETRY_WAIT`).
    pub retry_due: Option<DateTime<Utc>>,
}

impl NodeRecord {
    /// A never-released node: what a store returns for a node it has no record of.
    pub fn pending() -> Self {
        Self {
            state: NodeState::Pending,
            attempt: 0,
            run_start: 0,
            dispatch_epoch: 0,
            last_error: None,
            last_failure: None,
            dead_reason: None,
            retry_due: None,
        }
    }

    /// Records a failure: its kind and its error, always together.
    fn fail(&mut self, kind: FailureKind, error: String) {
        self.last_failure = Some(kind);
        self.last_error = Some(error);
    }

    /// Attempts made in the current run (what the retry policy counts).
    pub fn run_attempts(&self) -> u32 {
        self.attempt.saturating_sub(self.run_start)
    }
}

/// How many nodes are in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateCounts([u32; 9]);

impl StateCounts {
    /// Nodes in `state`.
    pub fn get(&self, state: NodeState) -> u32 {
        self.0[state.index()]
    }

    /// `(state, count)` for every state, zero counts included.
    pub fn iter(&self) -> impl Iterator<Item = (NodeState, u32)> + '_ {
        NodeState::ALL.iter().map(|&s| (s, self.get(s)))
    }

    /// Nodes in an active state (`PENDING`, `READY`, `RUNNING`, `RETRY_WAIT`).
    pub fn active(&self) -> u32 {
        NodeState::ALL
            .iter()
            .filter(|s| s.is_active())
            .map(|&s| self.get(s))
            .sum()
    }

    /// Nodes `DEAD` or `UPSTREAM_FAILED`.
    pub fn failed(&self) -> u32 {
        self.get(NodeState::Dead) + self.get(NodeState::UpstreamFailed)
    }

    /// All nodes.
    pub fn total(&self) -> u32 {
        self.0.iter().sum()
    }

    fn moved(&mut self, from: NodeState, to: NodeState) {
        self.0[from.index()] -= 1;
        self.0[to.index()] += 1;
    }
}

/// Why a machine could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MachineError {
    /// The retry policy is invalid.
    #[error(transparent)]
    Policy(#[from] RetryPolicyError),
    /// The per-node input does not have one entry per DAG node.
    #[error("the batch has {dag} node(s) but {given} per-node entries were given")]
    LengthMismatch {
        /// Nodes in the DAG.
        dag: usize,
        /// Entries given.
        given: usize,
    },
    /// The per-node retry policies do not cover the DAG's nodes.
    #[error("the batch has {dag} node(s) but retry policies for {given}")]
    PoliciesMismatch {
        /// Nodes in the DAG.
        dag: usize,
        /// Nodes with a policy class.
        given: usize,
    },
    /// The DAG has more nodes than a [`NodeIx`] can address.
    #[error("the batch has {0} nodes, more than the state machine supports")]
    TooLarge(usize),
    /// A restored record contradicts the graph or itself.
    #[error("cannot restore node {node} in state {state}: {problem}")]
    Inconsistent {
        /// The node.
        node: NodeIx,
        /// Its persisted state.
        state: NodeState,
        /// What is wrong.
        problem: &'static str,
    },
}

/// The mutable part of the machine, split from the graph so that the graph can be read while
/// the state is written.
#[derive(Debug, Clone, PartialEq)]
struct Inner {
    nodes: Vec<NodeRecord>,
    /// Per node: parent edges whose parent is not `LOADED`/`SKIPPED_FRESH`.
    unsatisfied: Vec<u32>,
    /// Per node: parent edges whose parent is `DEAD`/`UPSTREAM_FAILED`.
    failed_parents: Vec<u32>,
    counts: StateCounts,
    next_epoch: u64,
    batch: BatchState,
}

/// The state machine of one batch. See the [module documentation](self).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchMachine {
    dag: Dag,
    policies: NodePolicies,
    inner: Inner,
}

impl BatchMachine {
    /// Starts a batch: applies the initial dispositions (`SKIPPED_FRESH`; preflight rejections
    /// `DEAD` with their dead letters and `UPSTREAM_FAILED` descendants) and releases every node
    /// whose parents are all satisfied. Pushes the resulting effects to `out`, ending with
    /// [`Effect::BatchFinished`] if nothing is left to run.
    ///
    /// `init` has one entry per DAG node. Releases are emitted in node order; a driver that
    /// honours priorities sorts the `PublishReady`s of one step.
    pub fn start(
        dag: Dag,
        init: Vec<InitialDisposition>,
        policies: impl Into<NodePolicies>,
        out: &mut Vec<Effect>,
    ) -> Result<Self, MachineError> {
        let policies = policies.into();
        policies.validate()?;
        let n = dag.len();
        check_size(n)?;
        check_policies(&policies, n)?;
        if init.len() != n {
            return Err(MachineError::LengthMismatch {
                dag: n,
                given: init.len(),
            });
        }
        let mut counts = StateCounts::default();
        counts.0[NodeState::Pending.index()] = n as u32;
        let unsatisfied = (0..n as NodeIx)
            .map(|i| dag.parents(i).len() as u32)
            .collect();
        let mut machine = Self {
            inner: Inner {
                nodes: vec![NodeRecord::pending(); n],
                unsatisfied,
                failed_parents: vec![0; n],
                counts,
                next_epoch: 1,
                batch: BatchState::Running,
            },
            dag,
            policies,
        };
        let Self { dag, inner, .. } = &mut machine;

        let mut dead_roots = Vec::new();
        for (i, disposition) in init.into_iter().enumerate() {
            let i = i as NodeIx;
            match disposition {
                InitialDisposition::Run => {}
                InitialDisposition::SkippedFresh => {
                    inner.set_state(i, NodeState::SkippedFresh, out);
                    for &c in dag.children(i) {
                        inner.unsatisfied[c as usize] -= 1;
                    }
                }
                InitialDisposition::PreflightRejected { reason } => {
                    inner.nodes[i as usize].fail(FailureKind::Preflight, reason);
                    inner.mark_dead(i, DeadReason::Preflight, out);
                    dead_roots.push(i);
                }
            }
        }
        // All preflight rejections are DEAD before any propagates, so a rejected node below
        // another one stays DEAD (with its own dead letter) rather than UPSTREAM_FAILED.
        inner.propagate_failure(dag, dead_roots, out);
        for i in 0..n as NodeIx {
            if inner.state(i) == NodeState::Pending && inner.unsatisfied[i as usize] == 0 {
                inner.release(i, out);
            }
        }
        inner.settle(out);
        Ok(machine)
    }

    /// Rebuilds a machine from persisted records (one per DAG node, as returned by
    /// [`BatchMachine::records`]). Recomputes the per-node parent counters, the counts and the
    /// batch state; emits nothing. Call [`BatchMachine::resume`] next.
    ///
    /// Rejects records that contradict the graph (a released node with an unsatisfied parent, an
    /// `UPSTREAM_FAILED` node without a failed parent, …): they mean a step was persisted only in
    /// part.
    pub fn restore(
        dag: Dag,
        nodes: Vec<NodeRecord>,
        policies: impl Into<NodePolicies>,
    ) -> Result<Self, MachineError> {
        let policies = policies.into();
        policies.validate()?;
        let n = dag.len();
        check_size(n)?;
        check_policies(&policies, n)?;
        if nodes.len() != n {
            return Err(MachineError::LengthMismatch {
                dag: n,
                given: nodes.len(),
            });
        }
        let mut counts = StateCounts::default();
        let mut unsatisfied = vec![0u32; n];
        let mut failed_parents = vec![0u32; n];
        let mut max_epoch = 0;
        for (i, rec) in nodes.iter().enumerate() {
            counts.0[rec.state.index()] += 1;
            max_epoch = max_epoch.max(rec.dispatch_epoch);
            for &p in dag.parents(i as NodeIx) {
                let ps = nodes[p as usize].state;
                if !ps.is_satisfied() {
                    unsatisfied[i] += 1;
                }
                if ps.is_failed() {
                    failed_parents[i] += 1;
                }
            }
        }
        for (i, rec) in nodes.iter().enumerate() {
            let problem = match rec.state {
                NodeState::Ready
                | NodeState::Running
                | NodeState::RetryWait
                | NodeState::Loaded
                    if unsatisfied[i] > 0 =>
                {
                    Some("a parent is not LOADED or SKIPPED_FRESH")
                }
                NodeState::Ready
                | NodeState::Running
                | NodeState::RetryWait
                | NodeState::Loaded
                    if rec.attempt == 0 || rec.dispatch_epoch == 0 =>
                {
                    Some("it was never released (attempt or dispatch epoch 0)")
                }
                NodeState::Pending if failed_parents[i] > 0 => {
                    Some("a parent is DEAD or UPSTREAM_FAILED")
                }
                NodeState::UpstreamFailed if failed_parents[i] == 0 => {
                    Some("no parent is DEAD or UPSTREAM_FAILED")
                }
                NodeState::Dead if rec.dead_reason.is_none() => Some("no dead reason"),
                _ if rec.run_start > rec.attempt => Some("run_start is above attempt"),
                _ => None,
            };
            if let Some(problem) = problem {
                return Err(MachineError::Inconsistent {
                    node: i as NodeIx,
                    state: rec.state,
                    problem,
                });
            }
        }
        let batch = if counts.get(NodeState::Cancelled) > 0 {
            BatchState::Cancelled
        } else if counts.active() > 0 {
            BatchState::Running
        } else if counts.failed() > 0 {
            BatchState::Failed
        } else {
            BatchState::Succeeded
        };
        Ok(Self {
            dag,
            policies,
            inner: Inner {
                nodes,
                unsatisfied,
                failed_parents,
                counts,
                next_epoch: max_epoch + 1,
                batch,
            },
        })
    }

    /// After [`BatchMachine::restore`]: the effects the driver must perform again (see the
    /// module documentation, "Restart recovery"). `now` is the due time of a waiting retry whose
    /// due time was not persisted. Scans every node.
    pub fn resume(&mut self, now: DateTime<Utc>, out: &mut Vec<Effect>) {
        let Self { dag, inner, .. } = self;
        if inner.batch == BatchState::Cancelled {
            inner.cancel_active(out);
            out.push(Effect::BatchFinished {
                state: BatchState::Cancelled,
            });
            return;
        }
        for i in 0..dag.len() as NodeIx {
            let rec = &mut inner.nodes[i as usize];
            match rec.state {
                NodeState::Pending if inner.unsatisfied[i as usize] == 0 => inner.release(i, out),
                NodeState::Ready => out.push(Effect::PublishReady {
                    node: i,
                    attempt: rec.attempt,
                    dispatch_epoch: rec.dispatch_epoch,
                }),
                NodeState::RetryWait => {
                    let due_at = *rec.retry_due.get_or_insert(now);
                    out.push(Effect::ScheduleRetry {
                        node: i,
                        attempt: rec.attempt.saturating_add(1),
                        due_at,
                    });
                }
                _ => {}
            }
        }
        if inner.batch.is_terminal() {
            out.push(Effect::BatchFinished { state: inner.batch });
        } else {
            inner.settle(out);
        }
    }

    /// Applies one event at time `now`. `jitter` is a uniform random number in `[0, 1)` for the
    /// backoff of a retry this event may schedule (at most one per event). Effects are pushed to
    /// `out`; an ignored event pushes nothing and changes nothing.
    pub fn handle(
        &mut self,
        event: Event,
        now: DateTime<Utc>,
        jitter: f64,
        out: &mut Vec<Effect>,
    ) -> Outcome {
        let result = match event {
            Event::Started {
                node,
                attempt,
                dispatch_epoch,
            } => self.started(node, attempt, dispatch_epoch, out),
            Event::Loaded {
                node,
                attempt,
                dispatch_epoch,
            } => self.loaded(node, attempt, dispatch_epoch, out),
            Event::Failed {
                node,
                attempt,
                dispatch_epoch,
                retryable,
                error,
                kind,
            } => self.failed(
                node,
                attempt,
                dispatch_epoch,
                retryable,
                (kind, error),
                now,
                jitter,
                out,
            ),
            Event::AttemptLost {
                node,
                attempt,
                dispatch_epoch,
                reason,
            } => self.failed(
                node,
                attempt,
                dispatch_epoch,
                true,
                (reason.into(), format!("attempt {attempt} lost: {reason}")),
                now,
                jitter,
                out,
            ),
            Event::CoalescedOutcome {
                node,
                attempt,
                dispatch_epoch,
                loaded,
                error,
            } => self.coalesced(node, attempt, dispatch_epoch, loaded, error, out),
            Event::RetryDue { node, attempt } => self.retry_due(node, attempt, out),
            Event::RetryNow { node } => self.retry_now(node, out),
            Event::Cancel => self.cancel(out),
            Event::Replay { nodes } => self.replay(&nodes, out),
        };
        match result {
            Ok(()) => {
                self.inner.settle(out);
                Outcome::Applied
            }
            Err(reason) => Outcome::Ignored(reason),
        }
    }

    // ----- events -----

    /// Checks that `(attempt, epoch)` is the node's current release.
    fn current(&self, node: NodeIx, attempt: u32, epoch: u64) -> Result<NodeState, IgnoreReason> {
        let rec = self
            .inner
            .nodes
            .get(node as usize)
            .ok_or(IgnoreReason::UnknownNode)?;
        if epoch == 0 || rec.dispatch_epoch != epoch || rec.attempt != attempt {
            return Err(IgnoreReason::Stale);
        }
        Ok(rec.state)
    }

    fn started(
        &mut self,
        node: NodeIx,
        attempt: u32,
        epoch: u64,
        out: &mut Vec<Effect>,
    ) -> Result<(), IgnoreReason> {
        match self.current(node, attempt, epoch)? {
            NodeState::Ready => {
                self.inner.set_state(node, NodeState::Running, out);
                Ok(())
            }
            NodeState::Running => Err(IgnoreReason::Duplicate),
            _ => Err(IgnoreReason::Late),
        }
    }

    fn loaded(
        &mut self,
        node: NodeIx,
        attempt: u32,
        epoch: u64,
        out: &mut Vec<Effect>,
    ) -> Result<(), IgnoreReason> {
        match self.current(node, attempt, epoch)? {
            NodeState::Ready | NodeState::Running => {
                self.inner.load(&self.dag, node, out);
                Ok(())
            }
            NodeState::Loaded => Err(IgnoreReason::Duplicate),
            _ => Err(IgnoreReason::Late),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn failed(
        &mut self,
        node: NodeIx,
        attempt: u32,
        epoch: u64,
        retryable: bool,
        (kind, error): (FailureKind, String),
        now: DateTime<Utc>,
        jitter: f64,
        out: &mut Vec<Effect>,
    ) -> Result<(), IgnoreReason> {
        match self.current(node, attempt, epoch)? {
            NodeState::Ready | NodeState::Running => {}
            NodeState::RetryWait | NodeState::Dead => return Err(IgnoreReason::Duplicate),
            _ => return Err(IgnoreReason::Late),
        }
        let Self {
            dag,
            policies,
            inner,
        } = self;
        let policy = policies.of(node as usize);
        let rec = &mut inner.nodes[node as usize];
        rec.fail(kind, error);
        let run_attempt = rec.run_attempts();
        if policy.should_retry(run_attempt, retryable) {
            let delay = policy.backoff(run_attempt, jitter);
            let due_at = TimeDelta::from_std(delay)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            rec.retry_due = Some(due_at);
            let next = rec.attempt.saturating_add(1);
            inner.set_state(node, NodeState::RetryWait, out);
            out.push(Effect::ScheduleRetry {
                node,
                attempt: next,
                due_at,
            });
        } else {
            let reason = if retryable {
                DeadReason::RetriesExhausted
            } else {
                DeadReason::Permanent
            };
            inner.mark_dead(node, reason, out);
            inner.propagate_failure(dag, vec![node], out);
        }
        Ok(())
    }

    fn coalesced(
        &mut self,
        node: NodeIx,
        attempt: u32,
        epoch: u64,
        loaded: bool,
        error: Option<String>,
        out: &mut Vec<Effect>,
    ) -> Result<(), IgnoreReason> {
        match self.current(node, attempt, epoch)? {
            NodeState::Ready | NodeState::Running => {}
            NodeState::Loaded if loaded => return Err(IgnoreReason::Duplicate),
            NodeState::Dead if !loaded => return Err(IgnoreReason::Duplicate),
            _ => return Err(IgnoreReason::Late),
        }
        let Self { dag, inner, .. } = self;
        if loaded {
            inner.load(dag, node, out);
        } else {
            inner.nodes[node as usize].fail(
                FailureKind::Coalesced,
                error.unwrap_or_else(|| {
                    "the attempt this object coalesced onto, in another batch, failed".to_string()
                }),
            );
            inner.mark_dead(node, DeadReason::CoalescedFailed, out);
            inner.propagate_failure(dag, vec![node], out);
        }
        Ok(())
    }

    fn retry_due(
        &mut self,
        node: NodeIx,
        attempt: u32,
        out: &mut Vec<Effect>,
    ) -> Result<(), IgnoreReason> {
        let rec = self
            .inner
            .nodes
            .get(node as usize)
            .ok_or(IgnoreReason::UnknownNode)?;
        if attempt != rec.attempt.saturating_add(1) || rec.attempt == u32::MAX {
            return Err(IgnoreReason::Stale);
        }
        if rec.state != NodeState::RetryWait {
            return Err(IgnoreReason::Late);
        }
        self.inner.release(node, out);
        Ok(())
    }

    fn retry_now(&mut self, node: NodeIx, out: &mut Vec<Effect>) -> Result<(), IgnoreReason> {
        match self.inner.nodes.get(node as usize).map(|r| r.state) {
            None => Err(IgnoreReason::UnknownNode),
            Some(NodeState::RetryWait) => {
                self.inner.release(node, out);
                Ok(())
            }
            Some(_) => Err(IgnoreReason::NotApplicable),
        }
    }

    fn cancel(&mut self, out: &mut Vec<Effect>) -> Result<(), IgnoreReason> {
        if self.inner.batch != BatchState::Running {
            return Err(IgnoreReason::NotApplicable);
        }
        self.inner.cancel_active(out);
        self.inner.batch = BatchState::Cancelled;
        out.push(Effect::BatchFinished {
            state: BatchState::Cancelled,
        });
        Ok(())
    }

    fn replay(&mut self, nodes: &[NodeIx], out: &mut Vec<Effect>) -> Result<(), IgnoreReason> {
        let Self { dag, inner, .. } = self;
        if nodes.iter().any(|&i| i as usize >= inner.nodes.len()) {
            return Err(IgnoreReason::UnknownNode);
        }
        if inner.batch == BatchState::Cancelled
            || !nodes.iter().any(|&i| inner.state(i) == NodeState::Dead)
        {
            return Err(IgnoreReason::NotApplicable);
        }
        let reopens = nodes
            .iter()
            .any(|&i| inner.state(i) == NodeState::Dead && inner.failed_parents[i as usize] == 0);
        if reopens && inner.batch == BatchState::Failed {
            inner.batch = BatchState::Running;
            out.push(Effect::BatchReopened);
        }
        for &i in nodes {
            if inner.state(i) != NodeState::Dead {
                continue;
            }
            let rec = &mut inner.nodes[i as usize];
            rec.dead_reason = None;
            rec.run_start = rec.attempt;
            if inner.failed_parents[i as usize] > 0 {
                // Another ancestor is still dead: it waits for that one's replay, and its
                // descendants stay blocked (it is still failed).
                inner.set_state(i, NodeState::UpstreamFailed, out);
                continue;
            }
            if inner.unsatisfied[i as usize] == 0 {
                inner.release(i, out);
            } else {
                inner.set_state(i, NodeState::Pending, out);
            }
            inner.propagate_recovery(dag, i, out);
        }
        Ok(())
    }

    // ----- queries -----

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.inner.nodes.len()
    }

    /// True for a batch without nodes.
    pub fn is_empty(&self) -> bool {
        self.inner.nodes.is_empty()
    }

    /// The graph.
    pub fn dag(&self) -> &Dag {
        &self.dag
    }

    /// The retry policies of the nodes.
    pub fn policies(&self) -> &NodePolicies {
        &self.policies
    }

    /// The retry policy of one node.
    pub fn policy(&self, node: NodeIx) -> &RetryPolicy {
        self.policies.of(node as usize)
    }

    /// The batch state.
    pub fn batch_state(&self) -> BatchState {
        self.inner.batch
    }

    /// True once the batch is `SUCCEEDED`, `FAILED` or `CANCELLED`.
    pub fn is_terminal(&self) -> bool {
        self.inner.batch.is_terminal()
    }

    /// The state of a node.
    pub fn state(&self, node: NodeIx) -> Option<NodeState> {
        self.inner.nodes.get(node as usize).map(|r| r.state)
    }

    /// The full record of a node: state, attempt, run start, dispatch epoch, last error, dead
    /// reason, next retry time.
    pub fn record(&self, node: NodeIx) -> Option<&NodeRecord> {
        self.inner.nodes.get(node as usize)
    }

    /// Every record, in node order: what [`BatchMachine::restore`] takes back.
    pub fn records(&self) -> &[NodeRecord] {
        &self.inner.nodes
    }

    /// Attempts made in the node's current run.
    pub fn attempts(&self, node: NodeIx) -> Option<u32> {
        self.record(node).map(NodeRecord::run_attempts)
    }

    /// The node's last error.
    pub fn last_error(&self, node: NodeIx) -> Option<&str> {
        self.record(node)?.last_error.as_deref()
    }

    /// When the node's next attempt is due, if it is in `RETRY_WAIT`.
    pub fn next_retry_at(&self, node: NodeIx) -> Option<DateTime<Utc>> {
        self.record(node)?.retry_due
    }

    /// How many nodes are in each state.
    pub fn counts(&self) -> &StateCounts {
        &self.inner.counts
    }

    /// The parents of `node` that are not `LOADED`/`SKIPPED_FRESH` (what it waits for), in
    /// parent order. Empty for an unknown node.
    pub fn blocked_on(&self, node: NodeIx) -> Vec<NodeIx> {
        if node as usize >= self.len() {
            return Vec::new();
        }
        self.dag
            .parents(node)
            .iter()
            .copied()
            .filter(|&p| !self.inner.state(p).is_satisfied())
            .collect()
    }

    /// Why `node` is `UPSTREAM_FAILED`: the `DEAD` ancestors reached through `DEAD` and
    /// `UPSTREAM_FAILED` nodes only, ascending — replaying all of them unblocks it. Empty unless
    /// the node is `UPSTREAM_FAILED`. Costs O(failed ancestors).
    pub fn failed_ancestors(&self, node: NodeIx) -> Vec<NodeIx> {
        if self.state(node) != Some(NodeState::UpstreamFailed) {
            return Vec::new();
        }
        let mut seen = rustc_hash::FxHashSet::default();
        let mut stack = vec![node];
        let mut dead = Vec::new();
        while let Some(x) = stack.pop() {
            for &p in self.dag.parents(x) {
                if !seen.insert(p) {
                    continue;
                }
                match self.inner.state(p) {
                    NodeState::Dead => {
                        dead.push(p);
                        stack.push(p);
                    }
                    NodeState::UpstreamFailed => stack.push(p),
                    _ => {}
                }
            }
        }
        dead.sort_unstable();
        dead
    }

    /// The nodes currently in `state`, ascending. Scans every node.
    pub fn nodes_in(&self, state: NodeState) -> impl Iterator<Item = NodeIx> + '_ {
        self.inner
            .nodes
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.state == state)
            .map(|(i, _)| i as NodeIx)
    }

    /// The epoch the next release will carry. A driver may persist it as a high-water mark.
    pub fn next_epoch(&self) -> u64 {
        self.inner.next_epoch
    }

    /// Makes every later release carry an epoch of at least `floor` (after a restore, when
    /// releases may have been published but not persisted).
    pub fn raise_epoch_floor(&mut self, floor: u64) {
        self.inner.next_epoch = self.inner.next_epoch.max(floor);
    }
}

fn check_policies(policies: &NodePolicies, n: usize) -> Result<(), MachineError> {
    if !policies.is_uniform() && policies.len() != n {
        return Err(MachineError::PoliciesMismatch {
            dag: n,
            given: policies.len(),
        });
    }
    Ok(())
}

fn check_size(n: usize) -> Result<(), MachineError> {
    if n >= NodeIx::MAX as usize {
        return Err(MachineError::TooLarge(n));
    }
    Ok(())
}

impl Inner {
    fn state(&self, node: NodeIx) -> NodeState {
        self.nodes[node as usize].state
    }

    /// The one place a node changes state: counts and the `Transition` effect follow.
    fn set_state(&mut self, node: NodeIx, to: NodeState, out: &mut Vec<Effect>) {
        let rec = &mut self.nodes[node as usize];
        let from = rec.state;
        debug_assert_ne!(from, to, "node {node}: transition to the same state");
        rec.state = to;
        if to != NodeState::RetryWait {
            rec.retry_due = None;
        }
        if to != NodeState::Dead {
            rec.dead_reason = None;
        }
        let attempt = rec.attempt;
        self.counts.moved(from, to);
        out.push(Effect::Transition {
            node,
            from,
            to,
            attempt,
        });
    }

    /// `PENDING`/`RETRY_WAIT`/`DEAD` → `READY` with the next attempt and epoch.
    fn release(&mut self, node: NodeIx, out: &mut Vec<Effect>) {
        debug_assert_eq!(
            self.unsatisfied[node as usize], 0,
            "node {node} released early"
        );
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let rec = &mut self.nodes[node as usize];
        rec.attempt = rec.attempt.saturating_add(1);
        rec.dispatch_epoch = epoch;
        let attempt = rec.attempt;
        self.set_state(node, NodeState::Ready, out);
        out.push(Effect::PublishReady {
            node,
            attempt,
            dispatch_epoch: epoch,
        });
    }

    /// → `LOADED`, then releases every child whose last unsatisfied parent this was.
    fn load(&mut self, dag: &Dag, node: NodeIx, out: &mut Vec<Effect>) {
        self.set_state(node, NodeState::Loaded, out);
        for &c in dag.children(node) {
            let left = &mut self.unsatisfied[c as usize];
            *left -= 1;
            if *left == 0 && self.state(c) == NodeState::Pending {
                self.release(c, out);
            }
        }
    }

    /// → `DEAD` with a dead letter. The caller propagates the failure.
    fn mark_dead(&mut self, node: NodeIx, reason: DeadReason, out: &mut Vec<Effect>) {
        self.set_state(node, NodeState::Dead, out);
        let rec = &mut self.nodes[node as usize];
        rec.dead_reason = Some(reason);
        out.push(Effect::DeadLetter {
            node,
            attempt: rec.attempt,
            attempts: rec.run_attempts(),
            last_error: rec.last_error.clone(),
            reason,
        });
    }

    /// The `roots` just became failed: every `PENDING` descendant reached through nodes that
    /// become failed turns `UPSTREAM_FAILED`. Iterative; each node is expanded once.
    fn propagate_failure(&mut self, dag: &Dag, roots: Vec<NodeIx>, out: &mut Vec<Effect>) {
        let mut stack = roots;
        while let Some(x) = stack.pop() {
            for &c in dag.children(x) {
                let failed = &mut self.failed_parents[c as usize];
                *failed += 1;
                if *failed == 1 && self.state(c) == NodeState::Pending {
                    self.set_state(c, NodeState::UpstreamFailed, out);
                    stack.push(c);
                }
            }
        }
    }

    /// `root` stopped being failed: descendants left without a failed parent go from
    /// `UPSTREAM_FAILED` back to `PENDING`. Iterative. None of them can be released: `root` is
    /// not satisfied yet.
    fn propagate_recovery(&mut self, dag: &Dag, root: NodeIx, out: &mut Vec<Effect>) {
        let mut stack = vec![root];
        while let Some(x) = stack.pop() {
            for &c in dag.children(x) {
                let failed = &mut self.failed_parents[c as usize];
                *failed -= 1;
                if *failed == 0 && self.state(c) == NodeState::UpstreamFailed {
                    self.set_state(c, NodeState::Pending, out);
                    stack.push(c);
                }
            }
        }
    }

    fn cancel_active(&mut self, out: &mut Vec<Effect>) {
        for i in 0..self.nodes.len() as NodeIx {
            if self.state(i).is_active() {
                self.set_state(i, NodeState::Cancelled, out);
            }
        }
    }

    /// Finishes a running batch once nothing is active.
    fn settle(&mut self, out: &mut Vec<Effect>) {
        if self.batch == BatchState::Running && self.counts.active() == 0 {
            self.batch = if self.counts.failed() > 0 {
                BatchState::Failed
            } else {
                BatchState::Succeeded
            };
            out.push(Effect::BatchFinished { state: self.batch });
        }
    }
}
