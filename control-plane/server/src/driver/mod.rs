//! The driver: the one owner of every running batch's state machine.
//!
//! It receives commands (submit, cancel, retry-now, replay, agent leases) and reads from the gRPC
//! service through a cheap-clone [`Handle`] (reads wait while results do: a flood of queries
//! cannot delay results), results from the data plane, and due retries from the store; feeds them
//! to the pure [`BatchMachine`]s; and performs the effects in a fixed order per step:
//!
//! 1. persist every changed node record, batch head, scheduled retry, dead letter and load time
//!    in **one** store round trip;
//! 2. hand the Ready records to the producer; their delivery reports are awaited beside the
//!    driver (at most 16 steps in flight) — records not delivered are published again, topics
//!    re-created, for as long as their object is READY;
//! 3. produce dead letters (delivery awaited); hand status changes to the in-order status task;
//! 4. store the consumed results' offsets (the state change they caused is durable now);
//! 5. tell watchers (one message per batch and step).
//!
//! A READY object is therefore durable in the store before its Ready is produced, and stays
//! READY until an agent reports on it; after a restart, or when the broker lost its topics, every
//! READY object is published again with the same attempt and dispatch epoch.
//!
//! Results are drained in groups, so one store round trip covers many of them. A restarted driver
//! reloads every active batch from the store, plans it again (planning is deterministic), restores
//! its machine and redoes what [`BatchMachine::resume`] says.
//!
//! One module per job:
//! - `run_loop`: the loop itself; `handle`: the handle and its commands;
//! - `submit`, `restore`, `intake` (results), `verify` (their signatures and leases), `timers`
//!   (deadlines, leases, due retries);
//! - `effects`: the effect interpreter; `step`: performing a step in order;
//! - `publish`: Ready delivery and redelivery, status changes, topic checks;
//! - `agents`: registration, heartbeats, deregistration; `clock`: the time of day it reads;
//!   `health`: what readiness learns without asking the loop; `deadlines`: the execution
//!   deadlines of the attempts running; `state`, `settings`, `error`: the
//!   types.
//!
//! A step whose state cannot be persisted is never skipped: the driver retries it (backoff up to
//! 5 s) for as long as it takes, taking no other work meanwhile (no result consumed, no offset
//! stored, nothing released), and readiness says so ([`DriverHealth`]); memory is never ahead
//! of the store. Only a shutdown ends the wait (the step is then lost from memory only: a
//! restart resumes from the store and the results' stored offsets).

mod agents;
mod clock;
mod deadlines;
mod effects;
mod error;
mod handle;
mod health;
mod intake;
mod publish;
mod rebuild;
mod restore;
mod run_loop;
mod settings;
mod state;
mod step;
mod submit;
mod timers;
mod verify;

pub use agents::{Granted, HeartbeatReply, Renewal};
pub use clock::{Clock, SystemClock, TokioClock};
pub use error::DriverError;
pub use handle::{Handle, SubmitOutcome};
pub use health::{DriverHealth, Stall};
pub use rebuild::{RebuildError, for_reads};
pub use settings::DriverSettings;
pub use state::{
    BatchRuntime, Coalesced, DriverCounters, DriverState, TransitionRecord, WatchEvent, WatchStep,
    to_millis,
};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_core::agents::Registry;
use strata_core::coalesce::Coalescer;
use tokio::sync::mpsc;

use crate::ports::{DataPlane, StateStore};
use crate::records::{DeadLetterRecord, ReadyRecord, StatusChange};
use handle::Command;
use publish::Published;
use strata_core::model::NodeIx;

/// How many results one step takes at most. Smaller steps release sooner (a result waits for
/// its whole step and the step's Redis write); 256 measured p99 33 ms against 330 ms at 4,096,
/// for ≈ 0.008 Redis round trips per object (docs/benchmarks.md).
const MAX_RESULTS_PER_STEP: usize = 256;
/// Steps whose Ready records may be in delivery at once.
const PUBLISHING_STEPS: usize = 16;
/// Steps of status changes the status task may fall behind before changes are dropped.
const STATUS_BACKLOG: usize = 256;

/// The driver task. Build with [`Driver::new`], run with [`Driver::run`].
#[derive(Debug)]
pub struct Driver<D, S> {
    data: Arc<D>,
    store: Arc<S>,
    settings: DriverSettings,
    state: DriverState,
    commands: mpsc::Receiver<Command>,
    /// Reads from the handle: served after results ([`Handle`]).
    queries: mpsc::Receiver<handle::ReadFn>,
    /// Ready records not yet delivered (the broker was down or a topic was missing).
    undelivered: Vec<ReadyRecord>,
    /// When the undelivered records are tried next, and the wait after a failure (doubling from
    /// the tick to 5 s, reset by a delivery).
    redeliver_at: tokio::time::Instant,
    redeliver_backoff: Duration,
    /// Steps whose Ready records are being delivered beside the driver (at most
    /// [`PUBLISHING_STEPS`] at once: a slow broker slows the driver down instead of piling up).
    publishing: Arc<tokio::sync::Semaphore>,
    /// Reports of those deliveries, back to the driver.
    published_tx: mpsc::UnboundedSender<Published>,
    published_rx: Option<mpsc::UnboundedReceiver<Published>>,
    /// Status changes for the status topic, produced in order by a task of their own (best
    /// effort: dropped and counted when it falls [`STATUS_BACKLOG`] steps behind).
    status_tx: Option<mpsc::Sender<Vec<StatusChange>>>,
    /// Execution deadlines of RUNNING attempts (one per running attempt).
    deadlines: deadlines::Deadlines,
    /// Dead letters the broker did not take yet (produced again at each tick).
    unsent_dead: Vec<(NodeIx, DeadLetterRecord)>,
    rng: u64,
    /// One warning per rejection reason per interval.
    rejections_log: strata_runtime::log_limit::LogLimiter,
    /// Spans, when traces are exported (`None` otherwise: nothing traced, nothing formatted).
    traces: Option<crate::telemetry::DriverTraces>,
    /// What readiness reads without asking the loop.
    health: Arc<DriverHealth>,
    /// True once shutdown began (ends a stalled step's wait).
    stopping: tokio::sync::watch::Sender<bool>,
}

impl<D: DataPlane, S: StateStore> Driver<D, S> {
    /// A driver and the handle to reach it.
    pub fn new(data: Arc<D>, store: Arc<S>, settings: DriverSettings) -> (Self, Handle) {
        let lease_ttl = settings.lease_ttl;
        let (tx, commands) = mpsc::channel(1024);
        let (queries_tx, queries) = mpsc::channel(1024);
        let (published_tx, published_rx) = mpsc::unbounded_channel();
        let seed = settings.seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
        });
        let clock = settings.clock.clone();
        let health = Arc::new(DriverHealth::default());
        let result_key_rotation = settings.result_key_rotation;
        (
            Self {
                data,
                store,
                settings,
                state: DriverState {
                    batches: HashMap::new(),
                    counters: DriverCounters::default(),
                    coalescer: Coalescer::default(),
                    agents: Registry::new(lease_ttl),
                    topics_generation: 0,
                    ready_signer: None,
                    result_key_rotation,
                    clock,
                },
                commands,
                queries,
                undelivered: Vec::new(),
                redeliver_at: tokio::time::Instant::now(),
                redeliver_backoff: Duration::ZERO,
                deadlines: deadlines::Deadlines::default(),
                unsent_dead: Vec::new(),
                publishing: Arc::new(tokio::sync::Semaphore::new(PUBLISHING_STEPS)),
                published_tx,
                published_rx: Some(published_rx),
                status_tx: None,
                rng: seed | 1,
                rejections_log: Default::default(),
                traces: crate::telemetry::DriverTraces::from_installed(),
                health: health.clone(),
                stopping: tokio::sync::watch::Sender::new(false),
            },
            Handle {
                tx,
                queries: queries_tx,
                health,
            },
        )
    }
}
