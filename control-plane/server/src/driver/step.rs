//! A step: the effects of one group of events, performed in order (persist → publish → dead
//! letters → status → offsets → watch).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use strata_core::coalesce::Delivery;
use strata_core::model::NodeIx;
use tracing::{debug, info, warn};

use super::Driver;
use super::error::DriverError;
use super::health::Stall;
use super::state::head_of;
use super::state::{WatchEvent, WatchStep};
use crate::metrics::Metrics;
use crate::ports::{
    BatchWrite, DataPlane, MAX_TRAIL, NodeTrail, PortError, Position, StateStore, StepWrite,
    StoredTransition,
};
use crate::records::{DeadLetterRecord, ReadyRecord, StatusChange};

/// Nodes whose trails one write stores.
const TRAILS_PER_WRITE: NodeIx = 10_000;

/// Per-step accumulation of effects.
#[derive(Default)]
pub(super) struct Step {
    pub(super) write: StepWrite,
    pub(super) ready: Vec<ReadyRecord>,
    /// Dead letters to produce, with their node.
    pub(super) dead: Vec<(NodeIx, DeadLetterRecord)>,
    pub(super) status: Vec<StatusChange>,
    pub(super) watch: Vec<(String, WatchEvent)>,
    /// Changed nodes per batch (deduplicated at flush).
    pub(super) changed: BTreeMap<String, Vec<NodeIx>>,
    pub(super) heads: BTreeMap<String, ()>,
    pub(super) positions: Vec<Position>,
    /// When the results that drove this step were consumed (release latency).
    pub(super) consumed_at: Option<Instant>,
    /// Settled in-flight objects' waiters, still to be told.
    pub(super) deliveries: Vec<Delivery<String>>,
    /// Batches that finished in this step: their nodes' trails are stored with it.
    pub(super) finished: Vec<String>,
}

impl<D: DataPlane, S: StateStore> Driver<D, S> {
    /// Performs a step: persist, publish, commit, notify.
    pub(super) async fn flush(&mut self, mut step: Step) -> Result<(), DriverError> {
        for (batch_id, ()) in std::mem::take(&mut step.heads) {
            let Some(rt) = self.state.batches.get(&batch_id) else {
                continue;
            };
            let mut nodes = step.changed.remove(&batch_id).unwrap_or_default();
            nodes.sort_unstable();
            nodes.dedup();
            step.write.batches.push(BatchWrite {
                head: head_of(&rt.machine, rt.finished_at),
                nodes: nodes
                    .into_iter()
                    .filter_map(|n| rt.machine.record(n).map(|r| (n, r.clone())))
                    .collect(),
                batch_id,
            });
        }
        let write = std::mem::take(&mut step.write);
        if !write.batches.is_empty()
            || !write.schedule.is_empty()
            || !write.dead_letters.is_empty()
            || !write.loaded.is_empty()
        {
            let store = self.store.clone();
            self.persist("persist step", || store.apply(&write)).await?;
        }
        for batch_id in std::mem::take(&mut step.finished) {
            self.save_trails(&batch_id).await?;
        }
        if let Some(changes) = self.state.agents.take_changes() {
            let store = self.store.clone();
            if let Err(e) = self
                .persist("persist agent leases", || store.save_agents(&changes))
                .await
            {
                self.state.agents.mark_unsaved(&changes);
                return Err(e);
            }
        }
        if !step.ready.is_empty() {
            let mut ready = std::mem::take(&mut step.ready);
            // Higher priority first among the objects released together.
            ready.sort_by_key(|r| std::cmp::Reverse(r.object.priority));
            self.publish_ready(ready, step.consumed_at).await;
        }
        if !step.dead.is_empty() {
            let dead = std::mem::take(&mut step.dead);
            self.produce_dead_letters(dead).await;
        }
        if !step.status.is_empty()
            && let Some(tx) = &self.status_tx
            && tx.try_send(std::mem::take(&mut step.status)).is_err()
        {
            self.state.counters.status_dropped += 1;
            debug!("status changes dropped: the status topic's producer is behind");
        }
        if !step.positions.is_empty()
            && let Err(e) = self.data.store_positions(&step.positions)
        {
            warn!(error = %e, "result offsets not stored");
        }
        let mut by_batch: BTreeMap<String, Vec<WatchEvent>> = BTreeMap::new();
        for (batch_id, ev) in step.watch {
            by_batch.entry(batch_id).or_default().push(ev);
        }
        for (batch_id, events) in by_batch {
            if let Some(rt) = self.state.batches.get_mut(&batch_id) {
                rt.watch_seq += 1;
                let _ = rt.watch.send(WatchStep {
                    seq: rt.watch_seq,
                    events: events.into(),
                });
            }
        }
        Ok(())
    }
}

impl<D: DataPlane, S: StateStore> Driver<D, S> {
    /// Stores the trail (latest transitions, last agent) of every node of a finished batch
    /// that has one, [`TRAILS_PER_WRITE`] nodes per write: what reads of the batch need once it
    /// has left memory.
    async fn save_trails(&self, batch_id: &str) -> Result<(), DriverError> {
        let Some(rt) = self.state.batches.get(batch_id) else {
            return Ok(());
        };
        let n = rt.machine.records().len() as NodeIx;
        let mut node = 0;
        while node < n {
            let end = (node + TRAILS_PER_WRITE).min(n);
            let trails: Vec<(u32, NodeTrail)> = (node..end)
                .filter_map(|node| {
                    let history = rt.history(node);
                    let agent = rt.last_agent(node);
                    (!history.is_empty() || agent.is_some()).then(|| {
                        let keep = &history[history.len().saturating_sub(MAX_TRAIL)..];
                        (
                            node,
                            NodeTrail {
                                transitions: keep
                                    .iter()
                                    .map(|t| StoredTransition {
                                        from: t.from,
                                        to: t.to,
                                        attempt: t.attempt,
                                        at_ms: t.at.timestamp_millis(),
                                    })
                                    .collect(),
                                agent: agent.map(str::to_owned),
                            },
                        )
                    })
                })
                .collect();
            let store = self.store.clone();
            self.persist("persist trails", || store.save_trails(batch_id, &trails))
                .await?;
            node = end;
        }
        Ok(())
    }

    /// Produces dead letters to the dead-letter topic and takes them out of the store's outbox;
    /// those the broker did not take are kept to be produced again at the next tick (and stay
    /// in the outbox, which a restart produces).
    pub(super) async fn produce_dead_letters(&mut self, dead: Vec<(NodeIx, DeadLetterRecord)>) {
        let sent: Vec<(String, u32)> = dead
            .iter()
            .map(|(node, l)| (l.batch_id.clone(), *node))
            .collect();
        let letters: Vec<DeadLetterRecord> = dead.iter().map(|(_, l)| l.clone()).collect();
        match self.data.publish_dead_letters(letters).await {
            Ok(()) => {
                let store = self.store.clone();
                if let Err(e) = retry_port(&self.settings.metrics, "dead letters sent", || {
                    store.dead_letters_sent(&sent)
                })
                .await
                {
                    // Produced again at the next restart: at least once.
                    warn!(error = %e, "dead letters produced but still in the store's outbox");
                }
            }
            Err(e) => {
                self.settings
                    .metrics
                    .port_error("kafka", "publish dead letters");
                warn!(error = %e, count = dead.len(), "dead letters not produced yet; produced again at the next tick");
                self.unsent_dead.extend(dead);
            }
        }
    }

    /// Runs a state write until it succeeds, however long that takes: a step is never applied
    /// in memory alone. Every failed try is counted; while it fails, [`DriverHealth`] holds the
    /// stall for readiness and `strata_driver_stalled` is 1, with a warning at the first failure
    /// and then every 20 tries. Only shutdown ends the wait (`ShuttingDown`).
    ///
    /// [`DriverHealth`]: super::health::DriverHealth
    async fn persist<F, Fut>(&self, what: &'static str, mut call: F) -> Result<(), DriverError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), PortError>>,
    {
        let mut delay = Duration::from_millis(50);
        let mut stopping = self.stopping.subscribe();
        let mut stall: Option<Stall> = None;
        let started = Instant::now();
        loop {
            match call().await {
                Ok(()) => {
                    if let Some(s) = stall {
                        self.health.set_stall(None);
                        self.settings.metrics.set_driver_stalled(false);
                        info!(
                            what,
                            tries = s.tries,
                            stalled_secs = s.since.elapsed().as_secs(),
                            "state write succeeded; the driver goes on where it stopped"
                        );
                    }
                    return Ok(());
                }
                Err(e) => {
                    self.settings.metrics.port_error(e.service(), what);
                    if matches!(e, PortError::StateLost { .. }) {
                        self.settings.metrics.redis_state_lost();
                    }
                    let s = stall.get_or_insert_with(|| Stall {
                        what,
                        since: started,
                        tries: 0,
                        error: String::new(),
                    });
                    s.tries += 1;
                    s.error = e.to_string();
                    if s.tries % 20 == 1 {
                        warn!(error = %e, tries = s.tries, "{what} failed; the driver takes no other work until it succeeds");
                    }
                    self.health.set_stall(Some(s.clone()));
                    self.settings.metrics.set_driver_stalled(true);
                }
            }
            if *stopping.borrow() {
                self.health.set_stall(None);
                return Err(DriverError::ShuttingDown);
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stopping.wait_for(|s| *s) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// Retries a store or broker call while it fails with a retryable error (bounded backoff, about
/// a minute in all); a non-retryable error is returned at once.
pub(super) async fn retry_port<T, F, Fut>(
    metrics: &Metrics,
    what: &str,
    mut call: F,
) -> Result<T, PortError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, PortError>>,
{
    let mut delay = Duration::from_millis(50);
    let mut tries = 0;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if e.retryable() && tries < 20 => {
                metrics.port_error(e.service(), what);
                tries += 1;
                warn!(error = %e, tries, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                metrics.port_error(e.service(), what);
                return Err(e);
            }
        }
    }
}
