//! The handle the gRPC service and the admin port reach the driver through, and the commands it
//! sends.

use std::sync::Arc;
use strata_core::machine::{Event, Outcome};

use tokio::sync::{mpsc, oneshot};

use strata_core::Zone;
use strata_core::agents::{LeaseError, Registration};

use super::agents::{HeartbeatReply, Renewal};
use super::error::DriverError;
use super::health::DriverHealth;
use super::state::DriverState;
use strata_core::submission::PreparedBatch;

pub(super) type ReadFn = Box<dyn FnOnce(&DriverState) + Send>;
/// A change to the driver's state; events it pushes (batch, event) are applied in the same step.
pub(super) type MutateFn = Box<dyn FnOnce(&mut DriverState, &mut Vec<(String, Event)>) + Send>;

pub(super) enum Command {
    Submit(
        Box<PreparedBatch>,
        oneshot::Sender<Result<SubmitOutcome, DriverError>>,
    ),
    Event {
        batch_id: String,
        event: Event,
        reply: oneshot::Sender<Result<Outcome, DriverError>>,
    },
    Mutate(MutateFn, oneshot::Sender<Result<(), DriverError>>),
    Adopt(String, oneshot::Sender<Result<bool, DriverError>>),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Submit(..) => "Submit",
            Command::Event { .. } => "Event",
            Command::Mutate(..) => "Mutate",
            Command::Adopt(..) => "Adopt",
        })
    }
}

/// What a submission became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitOutcome {
    /// Batch id.
    pub batch_id: String,
    /// False when an identical earlier submission was found.
    pub created: bool,
}

/// A cheap-clone handle to the driver.
#[derive(Debug, Clone)]
pub struct Handle {
    pub(super) tx: mpsc::Sender<Command>,
    /// Reads, served after results when both wait (a flood of queries must not delay results).
    pub(super) queries: mpsc::Sender<ReadFn>,
    /// What the driver says about itself without a query.
    pub(super) health: Arc<DriverHealth>,
}

impl Handle {
    /// Makes sure the driver holds `batch_id`: a finished batch that left memory is taken back
    /// from the store (to replay its dead objects, say). False when the store does not have it
    /// finished either.
    pub async fn adopt(&self, batch_id: String) -> Result<bool, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Adopt(batch_id, reply)).await?;
        rx.await.map_err(|_| DriverError::ShuttingDown)?
    }

    /// Whether a step is stalled and when the loop last turned, read without asking the loop.
    pub fn health(&self) -> &DriverHealth {
        &self.health
    }

    /// Submits a prepared batch; resolves once it is durable and its first objects released.
    pub async fn submit(&self, prepared: PreparedBatch) -> Result<SubmitOutcome, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Submit(Box::new(prepared), reply))
            .await?;
        rx.await.map_err(|_| DriverError::ShuttingDown)?
    }

    /// Feeds a user event (cancel, retry-now, replay) to a batch's machine; resolves once its
    /// effects are durable.
    pub async fn event(&self, batch_id: &str, event: Event) -> Result<Outcome, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Event {
            batch_id: batch_id.to_owned(),
            event,
            reply,
        })
        .await?;
        rx.await.map_err(|_| DriverError::ShuttingDown)?
    }

    /// Registers an agent for `zone`; returns its lease with the topics' generation and the
    /// Ready verify key.
    pub async fn register_agent(
        &self,
        zone: Zone,
        registration: Registration,
        nonce: u64,
        max_leases: Option<usize>,
    ) -> Result<Result<super::Granted, LeaseError>, DriverError> {
        self.mutate(move |s, _| s.register_agent(zone, registration, nonce, max_leases, s.now()))
            .await
    }

    /// Renews an agent's lease for `principal` (the one that registered it); the reply names
    /// the attempts it should abandon, and the lease's new result key when `rotate_keys` and
    /// the key is due.
    pub async fn heartbeat(
        &self,
        agent_id: String,
        epoch: u64,
        principal: String,
        renewal: Renewal,
    ) -> Result<Result<HeartbeatReply, LeaseError>, DriverError> {
        self.mutate(move |s, _| s.heartbeat(&agent_id, epoch, &principal, renewal, s.now()))
            .await
    }

    /// Ends an agent's lease; the attempts it held are handed back (reason `drained`) in the
    /// same step. Returns how many.
    pub async fn deregister(
        &self,
        agent_id: String,
        epoch: u64,
        principal: String,
    ) -> Result<Result<u32, LeaseError>, DriverError> {
        self.mutate(move |s, events| {
            let lost = s.deregister(&agent_id, epoch, &principal, s.now())?;
            let n = lost.len() as u32;
            events.extend(lost);
            Ok(n)
        })
        .await
    }

    /// Runs `f` on the driver's state, between two steps, and returns its result.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&DriverState) -> T + Send + 'static,
    ) -> Result<T, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.queries
            .send(Box::new(move |s| {
                let _ = reply.send(f(s));
            }))
            .await
            .map_err(|_| DriverError::ShuttingDown)?;
        rx.await.map_err(|_| DriverError::ShuttingDown)
    }

    /// Runs `f` on the driver's state between two steps; the events it pushes are applied in one
    /// step, and this resolves once their effects are durable.
    async fn mutate<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DriverState, &mut Vec<(String, Event)>) -> T + Send + 'static,
    ) -> Result<T, DriverError> {
        let (out_tx, out_rx) = oneshot::channel();
        let (reply, rx) = oneshot::channel();
        self.send(Command::Mutate(
            Box::new(move |s, events| {
                let _ = out_tx.send(f(s, events));
            }),
            reply,
        ))
        .await?;
        rx.await.map_err(|_| DriverError::ShuttingDown)??;
        out_rx.await.map_err(|_| DriverError::ShuttingDown)
    }

    /// Reads sent and not yet served by the driver.
    pub fn queries_waiting(&self) -> usize {
        self.queries.max_capacity() - self.queries.capacity()
    }

    async fn send(&self, cmd: Command) -> Result<(), DriverError> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| DriverError::ShuttingDown)
    }
}
