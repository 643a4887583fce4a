//! `WatchBatch`: a snapshot (in parts), then every change, until the batch is terminal.
//!
//! The snapshot and the subscription to the batch's broadcast channel are taken in one
//! [`Handle::read`], between two driver steps, so no change falls between them. Each watcher runs
//! in its own task with its own broadcast receiver: a slow watcher only lags its own receiver
//! (the driver's `send` never waits) and, once it has fallen `DriverSettings::watch_capacity`
//! steps behind (one message per driver step with all of the batch's changes in it), gets a
//! `Resync` and a fresh snapshot instead of the events it missed.
//!
//! Events are taken in bursts; the details the broadcast does not carry (agent, error, next
//! attempt time, the batch after a batch change) are read from the driver once per burst.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use strata_core::machine::{NodeRecord, NodeState};
use strata_core::model::NodeIx;
use strata_core::{ObjectId, Zone};
use strata_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;
use tracing::debug;

use super::OrchestratorService;
use super::validate::required;
use super::wire;
use crate::convert;
use crate::driver::{Handle, WatchEvent};
use crate::error::ServiceError;
use crate::ports::StateStore;
use tokio_stream::wrappers::ReceiverStream;
use tracing::instrument;

/// Most events handled per burst.
const BURST: usize = 1024;

/// What one watcher needs.
#[derive(Debug)]
pub(super) struct Watcher {
    pub(super) handle: Handle,
    pub(super) batch_id: String,
    pub(super) part_objects: usize,
    pub(super) cancel_reasons: Arc<Mutex<HashMap<String, String>>>,
    pub(super) closing: watch::Receiver<bool>,
}

/// A consistent picture of a batch and the receiver of every change after it.
#[derive(Debug)]
pub(super) struct Snapshot {
    batch: pb::Batch,
    terminal: bool,
    /// Per node: id, zone, state, attempt.
    nodes: Vec<(ObjectId, Zone, NodeState, u32)>,
    rx: broadcast::Receiver<Arc<[WatchEvent]>>,
}

impl Watcher {
    fn cancel_reason(&self) -> Option<String> {
        self.cancel_reasons
            .lock()
            .ok()
            .and_then(|m| m.get(&self.batch_id).cloned())
    }

    /// Snapshot + subscription, atomically. `None` = the driver does not hold the batch.
    pub(super) async fn snapshot(&self) -> Result<Option<Snapshot>, ServiceError> {
        let batch_id = self.batch_id.clone();
        let reason = self.cancel_reason();
        let snap = self
            .handle
            .read(move |s| {
                let rt = s.batch(&batch_id)?;
                let rx = rt.subscribe();
                let nodes = rt
                    .machine()
                    .records()
                    .iter()
                    .enumerate()
                    .map(|(node, rec)| {
                        let o = rt.object(node as NodeIx);
                        (o.id.clone(), o.zone.clone(), rec.state, rec.attempt)
                    })
                    .collect();
                Some(Snapshot {
                    batch: wire::batch_of(rt, reason.as_deref()),
                    terminal: rt.machine().is_terminal(),
                    nodes,
                    rx,
                })
            })
            .await?;
        Ok(snap)
    }

    /// Streams `first` and then the changes, until the batch is terminal, the client goes away,
    /// or the server shuts down.
    pub(super) async fn run(
        mut self,
        first: Snapshot,
        tx: mpsc::Sender<Result<pb::WatchBatchResponse, Status>>,
    ) {
        let mut out = Out {
            tx,
            sequence: 0,
            closing: self.closing.clone(),
        };
        let ids: Vec<(ObjectId, Zone)> = first
            .nodes
            .iter()
            .map(|(id, zone, ..)| (id.clone(), zone.clone()))
            .collect();
        let mut snap = first;
        loop {
            let Snapshot {
                batch,
                terminal,
                nodes,
                rx,
            } = snap;
            if !out.snapshot(batch, &nodes, self.part_objects).await || terminal {
                return;
            }
            drop(nodes);
            match self.follow(rx, &ids, &mut out).await {
                Follow::Done => return,
                Follow::Resync(dropped) => {
                    if !out
                        .send(pb::watch_batch_response::Event::Resync(pb::Resync {
                            dropped_events: dropped,
                        }))
                        .await
                    {
                        return;
                    }
                    snap = match self.snapshot().await {
                        Ok(Some(s)) => s,
                        Ok(None) => {
                            out.fail(ServiceError::BatchNotFound(self.batch_id.clone()))
                                .await;
                            return;
                        }
                        Err(e) => {
                            out.fail(e).await;
                            return;
                        }
                    };
                }
            }
        }
    }

    async fn follow(
        &mut self,
        mut rx: broadcast::Receiver<Arc<[WatchEvent]>>,
        ids: &[(ObjectId, Zone)],
        out: &mut Out,
    ) -> Follow {
        loop {
            let first = tokio::select! {
                r = rx.recv() => r,
                () = closed(&mut out.closing) => {
                    out.fail(ServiceError::ShuttingDown).await;
                    return Follow::Done;
                }
                () = out.tx.closed() => return Follow::Done,
            };
            let mut burst = match first {
                Ok(events) => events.to_vec(),
                Err(broadcast::error::RecvError::Lagged(n)) => return Follow::Resync(n),
                Err(broadcast::error::RecvError::Closed) => {
                    // The driver dropped the batch: it stopped.
                    out.fail(ServiceError::ShuttingDown).await;
                    return Follow::Done;
                }
            };
            while burst.len() < BURST {
                match rx.try_recv() {
                    Ok(events) => burst.extend(events.iter().cloned()),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => return Follow::Resync(n),
                    Err(_) => break,
                }
            }
            let details = match self.details(&burst).await {
                Ok(d) => d,
                Err(e) => {
                    out.fail(e).await;
                    return Follow::Done;
                }
            };
            for (ev, detail) in burst.into_iter().zip(details) {
                let (event, last) = match (ev, detail) {
                    (
                        WatchEvent::Object {
                            node,
                            from,
                            to,
                            attempt,
                            at,
                        },
                        Detail::Object { agent, record },
                    ) => {
                        let Some((id, zone)) = ids.get(node as usize) else {
                            continue;
                        };
                        // The record may have moved on since; only what belongs to this attempt
                        // and state is reported.
                        let rec = record.filter(|r| r.attempt == attempt && r.state == to);
                        let error = match to {
                            NodeState::RetryWait | NodeState::Dead => rec
                                .as_ref()
                                .and_then(|r| r.last_error.clone())
                                .unwrap_or_default(),
                            _ => String::new(),
                        };
                        let involves_agent =
                            matches!(
                                to,
                                NodeState::Running
                                    | NodeState::Loaded
                                    | NodeState::RetryWait
                                    | NodeState::Dead
                            ) && matches!(from, NodeState::Ready | NodeState::Running);
                        (
                            pb::watch_batch_response::Event::ObjectChanged(
                                pb::ObjectStateChanged {
                                    object_id: id.to_string(),
                                    zone: zone.to_string(),
                                    from_state: convert::object_state(from) as i32,
                                    to_state: convert::object_state(to) as i32,
                                    attempt,
                                    at: Some(convert::timestamp(at)),
                                    reason: wire::detailed_reason(from, to, rec.as_ref()),
                                    agent_id: if involves_agent {
                                        agent.unwrap_or_default()
                                    } else {
                                        String::new()
                                    },
                                    next_attempt_at: rec
                                        .as_ref()
                                        .filter(|r| r.state == NodeState::RetryWait)
                                        .and_then(|r| r.retry_due)
                                        .map(convert::timestamp),
                                    error,
                                },
                            ),
                            false,
                        )
                    }
                    (WatchEvent::Batch { from, to, at }, Detail::Batch(batch)) => (
                        pb::watch_batch_response::Event::BatchChanged(pb::BatchStateChanged {
                            from_state: convert::batch_state(from) as i32,
                            to_state: convert::batch_state(to) as i32,
                            at: Some(convert::timestamp(at)),
                            batch: batch.map(|b| *b),
                        }),
                        to.is_terminal(),
                    ),
                    _ => continue,
                };
                if !out.send(event).await {
                    return Follow::Done;
                }
                if last {
                    debug!(batch_id = %self.batch_id, "watched batch is terminal; stream ends");
                    return Follow::Done;
                }
            }
        }
    }

    /// What the broadcast events of a burst do not carry, read from the driver at once.
    async fn details(&self, burst: &[WatchEvent]) -> Result<Vec<Detail>, ServiceError> {
        let batch_id = self.batch_id.clone();
        let reason = self.cancel_reason();
        let wanted: Vec<Option<NodeIx>> = burst
            .iter()
            .map(|ev| match ev {
                WatchEvent::Object { node, .. } => Some(*node),
                WatchEvent::Batch { .. } => None,
            })
            .collect();
        let details = self
            .handle
            .read(move |s| {
                let rt = s.batch(&batch_id);
                wanted
                    .into_iter()
                    .map(|w| match (w, rt) {
                        (Some(node), Some(rt)) => Detail::Object {
                            agent: rt.last_agent(node).map(str::to_owned),
                            record: rt.machine().record(node).cloned(),
                        },
                        (Some(_), None) => Detail::Object {
                            agent: None,
                            record: None,
                        },
                        (None, rt) => Detail::Batch(
                            rt.map(|rt| Box::new(wire::batch_of(rt, reason.as_deref()))),
                        ),
                    })
                    .collect()
            })
            .await?;
        Ok(details)
    }
}

/// Resolves once the service is closing (or gone).
async fn closed(closing: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here.
    let _ = closing.wait_for(|c| *c).await.map(|_| ());
}

enum Follow {
    /// The stream is over.
    Done,
    /// The receiver lagged by this many events.
    Resync(u64),
}

enum Detail {
    Object {
        agent: Option<String>,
        record: Option<NodeRecord>,
    },
    Batch(Option<Box<pb::Batch>>),
}

/// The sending side of one stream: numbers the messages; never waits past shutdown.
struct Out {
    tx: mpsc::Sender<Result<pb::WatchBatchResponse, Status>>,
    sequence: u64,
    closing: watch::Receiver<bool>,
}

impl Out {
    /// False once the client is gone or the server is closing (a client that stopped reading
    /// must not hold up a graceful shutdown).
    async fn send(&mut self, event: pb::watch_batch_response::Event) -> bool {
        self.sequence += 1;
        let message = pb::WatchBatchResponse {
            sequence: self.sequence,
            event: Some(event),
        };
        tokio::select! {
            permit = self.tx.reserve() => match permit {
                Ok(permit) => {
                    permit.send(Ok(message));
                    true
                }
                Err(_) => false,
            },
            () = closed(&mut self.closing) => {
                let _ = self.tx.try_send(Err(Status::from(ServiceError::ShuttingDown)));
                false
            }
        }
    }

    /// Ends the stream with an error (dropped if the client is not reading and the server is
    /// closing).
    async fn fail(&mut self, e: ServiceError) {
        tokio::select! {
            _ = self.tx.send(Err(Status::from(e))) => {}
            () = closed(&mut self.closing) => {}
        }
    }

    /// Sends a snapshot in parts of `part` objects; false once the client is gone.
    async fn snapshot(
        &mut self,
        batch: pb::Batch,
        nodes: &[(ObjectId, Zone, NodeState, u32)],
        part: usize,
    ) -> bool {
        let part = part.max(1);
        let mut batch = Some(batch);
        let mut chunks = nodes.chunks(part).peekable();
        if chunks.peek().is_none() {
            return self
                .send(pb::watch_batch_response::Event::Snapshot(
                    pb::BatchSnapshot {
                        batch,
                        objects: Vec::new(),
                        last_part: true,
                    },
                ))
                .await;
        }
        while let Some(chunk) = chunks.next() {
            let objects = chunk
                .iter()
                .map(|(id, zone, state, attempt)| pb::ObjectSnapshot {
                    object_id: id.to_string(),
                    zone: zone.to_string(),
                    state: convert::object_state(*state) as i32,
                    attempt: *attempt,
                })
                .collect();
            let last_part = chunks.peek().is_none();
            if !self
                .send(pb::watch_batch_response::Event::Snapshot(
                    pb::BatchSnapshot {
                        batch: batch.take(),
                        objects,
                        last_part,
                    },
                ))
                .await
            {
                return false;
            }
        }
        true
    }
}

impl<S: StateStore> OrchestratorService<S> {
    #[instrument(skip_all, fields(batch_id = %req.batch_id))]
    pub(super) async fn do_watch(
        &self,
        req: pb::WatchBatchRequest,
    ) -> Result<ReceiverStream<Result<pb::WatchBatchResponse, Status>>, ServiceError> {
        let batch_id = required("batch_id", &req.batch_id)?.to_owned();
        let watcher = Watcher {
            handle: self.handle.clone(),
            batch_id: batch_id.clone(),
            part_objects: self.settings.snapshot_part_objects,
            cancel_reasons: self.cancel_reasons.clone(),
            closing: self.closing.subscribe(),
        };
        let (tx, rx) = mpsc::channel(16);
        match watcher.snapshot().await? {
            Some(first) => {
                tokio::spawn(watcher.run(first, tx));
            }
            None => {
                // Not driven here: a finished batch yields its snapshot and ends.
                let batch = self
                    .stored_batch(&batch_id)
                    .await?
                    .ok_or_else(|| ServiceError::BatchNotFound(batch_id.clone()))?;
                if batch.state() == pb::BatchState::Running {
                    return Err(self
                        .not_held(&batch_id, "watch it on the control plane that drives it")
                        .await);
                }
                let snapshot = pb::WatchBatchResponse {
                    sequence: 1,
                    event: Some(pb::watch_batch_response::Event::Snapshot(
                        pb::BatchSnapshot {
                            batch: Some(batch),
                            objects: Vec::new(),
                            last_part: true,
                        },
                    )),
                };
                // The channel has room: this cannot wait.
                let _ = tx.send(Ok(snapshot)).await;
            }
        }
        Ok(ReceiverStream::new(rx))
    }
}
