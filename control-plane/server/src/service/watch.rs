//! `WatchBatch`: a snapshot (in parts), then every change, until the batch is terminal.
//!
//! A watcher holds at most one part of the snapshot and one burst of changes, never a copy of
//! the batch: its memory does not grow with the batch's size. The first part, the batch and the
//! subscription to the batch's broadcast channel are taken in one [`Handle::read`], between two
//! driver steps; each later part is read when the one before it has been handed to the stream,
//! and shows the objects as they are then. Every broadcast message is one numbered driver step
//! ([`WatchStep`]), and every read says the number of the last step it shows, so a change is sent
//! only if its part was read before it: a client that applies the changes to the snapshot it
//! received holds every object's current state, each change following on from the state it
//! holds.
//!
//! Each watcher runs in its own task with its own broadcast receiver: a slow watcher only lags
//! its own receiver (the driver's `send` never waits) and, once it has fallen
//! `DriverSettings::watch_capacity` steps behind, gets a `Resync` and a fresh snapshot instead of
//! the events it missed.
//!
//! Events are taken in bursts; the details the broadcast does not carry (id, zone, agent, error,
//! next attempt time, the batch after a batch change) are read from the driver once per burst.

use std::collections::HashMap;
use std::ops::Range;
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
use crate::driver::{BatchRuntime, Handle, WatchEvent, WatchStep};
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

/// Per node: id, zone, state, attempt.
type PartNodes = Vec<(ObjectId, Zone, NodeState, u32)>;

/// The batch and its first part as of one read, and the receiver of every step after it.
#[derive(Debug)]
pub(super) struct Snapshot {
    batch: pb::Batch,
    terminal: bool,
    /// Objects in the batch.
    size: usize,
    first: PartNodes,
    /// The last step the read shows.
    seq: u64,
    rx: broadcast::Receiver<WatchStep>,
}

/// Which step each sent part of a snapshot shows: a change of a node is news only if it comes
/// after the step its part showed.
struct Shown {
    part: usize,
    /// Per part, in order.
    seqs: Vec<u64>,
    /// The latest of `seqs`: every later step is news for every node.
    last: u64,
}

impl Shown {
    fn is_news(&self, seq: u64, node: NodeIx) -> bool {
        seq > self.last
            || self
                .seqs
                .get(node as usize / self.part)
                .is_none_or(|&shown| seq > shown)
    }
}

/// The nodes `range` of `rt`.
fn part_of(rt: &BatchRuntime, range: Range<usize>) -> PartNodes {
    let records = rt.machine().records();
    let end = range.end.min(records.len());
    records[range.start.min(end)..end]
        .iter()
        .zip(range.start..)
        .map(|(rec, node)| {
            let o = rt.object(node as NodeIx);
            (o.id.clone(), o.zone.clone(), rec.state, rec.attempt)
        })
        .collect()
}

impl Watcher {
    fn cancel_reason(&self) -> Option<String> {
        self.cancel_reasons
            .lock()
            .ok()
            .and_then(|m| m.get(&self.batch_id).cloned())
    }

    /// The batch, its first part and the subscription, atomically. `None` = the driver does not
    /// hold the batch.
    pub(super) async fn snapshot(&self) -> Result<Option<Snapshot>, ServiceError> {
        let batch_id = self.batch_id.clone();
        let reason = self.cancel_reason();
        let part = self.part_objects.max(1);
        let snap = self
            .handle
            .read(move |s| {
                let rt = s.batch(&batch_id)?;
                Some(Snapshot {
                    batch: wire::batch_of(rt, reason.as_deref()),
                    terminal: rt.machine().is_terminal(),
                    size: rt.machine().records().len(),
                    first: part_of(rt, 0..part),
                    seq: rt.watch_seq(),
                    rx: rt.subscribe(),
                })
            })
            .await?;
        Ok(snap)
    }

    /// The nodes `range` as they are now, and the last step that shows. `None` = the driver no
    /// longer holds the batch.
    async fn part(&self, range: Range<usize>) -> Result<Option<(PartNodes, u64)>, ServiceError> {
        let batch_id = self.batch_id.clone();
        Ok(self
            .handle
            .read(move |s| {
                let rt = s.batch(&batch_id)?;
                Some((part_of(rt, range), rt.watch_seq()))
            })
            .await?)
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
        let mut snap = first;
        loop {
            let Some((rx, shown)) = self.send_snapshot(snap, &mut out).await else {
                return;
            };
            match self.follow(rx, &shown, &mut out).await {
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

    /// Sends `snap` part by part, reading each part after the one before it was handed to the
    /// stream. `None` once the stream is over (the batch was terminal, the client went away, or
    /// an error ended it).
    async fn send_snapshot(
        &self,
        snap: Snapshot,
        out: &mut Out,
    ) -> Option<(broadcast::Receiver<WatchStep>, Shown)> {
        let Snapshot {
            batch,
            terminal,
            size,
            first,
            seq,
            rx,
        } = snap;
        let part = self.part_objects.max(1);
        let mut shown = Shown {
            part,
            seqs: vec![seq],
            last: seq,
        };
        if !out.part(Some(batch), first, part >= size).await {
            return None;
        }
        for start in (part..size).step_by(part) {
            let (nodes, seq) = match self.part(start..start + part).await {
                Ok(Some(p)) => p,
                Ok(None) => {
                    out.fail(ServiceError::BatchNotFound(self.batch_id.clone()))
                        .await;
                    return None;
                }
                Err(e) => {
                    out.fail(e).await;
                    return None;
                }
            };
            shown.seqs.push(seq);
            shown.last = seq;
            if !out.part(None, nodes, start + part >= size).await {
                return None;
            }
        }
        (!terminal).then_some((rx, shown))
    }

    async fn follow(
        &mut self,
        mut rx: broadcast::Receiver<WatchStep>,
        shown: &Shown,
        out: &mut Out,
    ) -> Follow {
        let news = |step: WatchStep, burst: &mut Vec<WatchEvent>| {
            burst.extend(
                step.events
                    .iter()
                    .filter(|ev| match ev {
                        WatchEvent::Object { node, .. } => shown.is_news(step.seq, *node),
                        WatchEvent::Batch { .. } => true,
                    })
                    .cloned(),
            );
        };
        loop {
            let first = tokio::select! {
                r = rx.recv() => r,
                () = closed(&mut out.closing) => {
                    out.fail(ServiceError::ShuttingDown).await;
                    return Follow::Done;
                }
                () = out.tx.closed() => return Follow::Done,
            };
            let mut burst = Vec::new();
            match first {
                Ok(step) => news(step, &mut burst),
                Err(broadcast::error::RecvError::Lagged(n)) => return Follow::Resync(n),
                Err(broadcast::error::RecvError::Closed) => {
                    // The driver dropped the batch: it stopped.
                    out.fail(ServiceError::ShuttingDown).await;
                    return Follow::Done;
                }
            }
            while burst.len() < BURST {
                match rx.try_recv() {
                    Ok(step) => news(step, &mut burst),
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
                            node: _,
                            from,
                            to,
                            attempt,
                            at,
                        },
                        Detail::Object {
                            id_zone: Some((id, zone)),
                            agent,
                            record,
                        },
                    ) => {
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
                            id_zone: {
                                let o = rt.object(node);
                                Some((o.id.clone(), o.zone.clone()))
                            },
                            agent: rt.last_agent(node).map(str::to_owned),
                            record: rt.machine().record(node).cloned(),
                        },
                        (Some(_), None) => Detail::Object {
                            id_zone: None,
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
        id_zone: Option<(ObjectId, Zone)>,
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

    /// Sends one part of a snapshot (the first carries the batch); false once the client is
    /// gone.
    async fn part(&mut self, batch: Option<pb::Batch>, nodes: PartNodes, last_part: bool) -> bool {
        let objects = nodes
            .into_iter()
            .map(|(id, zone, state, attempt)| pb::ObjectSnapshot {
                object_id: id.to_string(),
                zone: zone.to_string(),
                state: convert::object_state(state) as i32,
                attempt,
            })
            .collect();
        self.send(pb::watch_batch_response::Event::Snapshot(
            pb::BatchSnapshot {
                batch,
                objects,
                last_part,
            },
        ))
        .await
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
                // A finished batch that left memory: its whole snapshot, rebuilt from the
                // store, and the end.
                if let Some(rt) = self.stored_runtime(&batch_id).await? {
                    let batch = wire::batch_of(&rt, self.cancel_reason(&batch_id).as_deref());
                    let part = self.settings.snapshot_part_objects.max(1);
                    let mut out = Out {
                        tx,
                        sequence: 0,
                        closing: self.closing.subscribe(),
                    };
                    tokio::spawn(async move {
                        let size = rt.machine().records().len();
                        let mut batch = Some(batch);
                        let mut start = 0;
                        loop {
                            let last = start + part >= size;
                            let nodes = part_of(&rt, start..start + part);
                            if !out.part(batch.take(), nodes, last).await || last {
                                return;
                            }
                            start += part;
                        }
                    });
                    return Ok(ReceiverStream::new(rx));
                }
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
