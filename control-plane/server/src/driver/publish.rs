//! Publishing: Ready records handed to the producer beside the driver, their delivery reports,
//! redelivery, status changes in order, and topics watched and re-created.

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_core::Zone;
use strata_core::machine::{Effect, NodeState};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Driver;
use super::STATUS_BACKLOG;
use super::step::Step;
use crate::ports::{DataPlane, PortError, StateStore};
use crate::records::{ReadyRecord, StatusChange};

impl<D: DataPlane, S: StateStore> Driver<D, S> {
    /// Hands a step's Ready records to the producer and moves on: the delivery reports are
    /// awaited beside the driver (at most [`PUBLISHING_STEPS`] steps at once) and come back as a
    /// [`Published`] report. `consumed_at`: when the results that released them were consumed
    /// (release latency, measured when the records are handed to the producer).
    pub(super) async fn publish_ready(
        &mut self,
        ready: Vec<ReadyRecord>,
        consumed_at: Option<Instant>,
    ) {
        let Ok(permit) = self.publishing.clone().acquire_owned().await else {
            return;
        };
        let data = self.data.clone();
        let signer = self
            .state
            .ready_signer
            .clone()
            .expect("the Ready signing key is loaded at start-up");
        let zones = self.settings.zones.clone();
        let report = self.published_tx.clone();
        tokio::spawn(async move {
            let latency = consumed_at.map(|t| t.elapsed());
            let result = data.publish_ready(&ready, &signer).await;
            let failed = match result {
                Ok(()) => None,
                Err(e) => {
                    // Make sure the topics exist before the records are tried again (the
                    // configured zones' only: submissions of other zones are refused).
                    if let Err(e) = data.ensure_topics(&zones).await {
                        warn!(error = %e, "topics not ensured");
                    }
                    Some(e)
                }
            };
            drop(permit);
            let _ = report.send(Published {
                ready,
                latency,
                failed,
            });
        });
    }

    /// A delivery report of [`Driver::publish_ready`].
    pub(super) fn published(&mut self, report: Published) {
        let n = report.ready.len() as u64;
        if let Some(latency) = report.latency {
            self.state.counters.release_latency.record_n(latency, n);
            self.settings
                .metrics
                .release_latency(latency.as_secs_f64(), n);
        }
        match report.failed {
            None => {
                self.state.counters.ready_published += n;
                for r in &report.ready {
                    self.settings
                        .metrics
                        .ready_published(r.object.zone.as_str(), 1);
                }
                self.redeliver_backoff = Duration::ZERO;
            }
            Some(e) => {
                self.settings.metrics.port_error("kafka", "publish ready");
                self.redeliver_backoff = (self.redeliver_backoff * 2)
                    .max(self.settings.tick)
                    .min(Duration::from_secs(5));
                self.redeliver_at = tokio::time::Instant::now() + self.redeliver_backoff;
                warn!(error = %e, records = n, retry_in = ?self.redeliver_backoff, "ready records not delivered; publishing them again");
                // Those still READY with the same attempt: the rest moved on meanwhile.
                let still_ready = |r: &ReadyRecord| {
                    self.state.batches.get(&r.batch_id).is_some_and(|rt| {
                        rt.node_of
                            .get(&r.object.id)
                            .and_then(|n| rt.machine.record(*n))
                            .is_some_and(|rec| {
                                rec.state == NodeState::Ready
                                    && rec.attempt == r.attempt
                                    && rec.dispatch_epoch == r.dispatch_epoch
                            })
                    })
                };
                let again: Vec<ReadyRecord> = report
                    .ready
                    .into_iter()
                    .filter(|r| still_ready(r))
                    .collect();
                self.undelivered.extend(again);
            }
        }
    }

    /// The broker had lost topics (they were just created again): every Ready in flight is
    /// gone with them, so every READY object of every running batch is published again, with
    /// the same attempt and dispatch epoch.
    pub(super) async fn topics_recreated(
        &mut self,
        created: usize,
    ) -> Option<mpsc::Receiver<crate::ports::ResultRecord>> {
        warn!(
            created,
            "the broker had lost topics; subscribing to the results again and publishing every READY object again"
        );
        let fresh = match self.data.resubscribe_results().await {
            Ok(fresh) => fresh,
            Err(e) => {
                warn!(error = %e, "results not subscribed again");
                None
            }
        };
        self.state.topics_created();
        // Everything undelivered is READY and published below.
        self.undelivered.clear();
        let running: Vec<String> = self
            .state
            .batches
            .iter()
            .filter(|(_, rt)| !rt.machine.is_terminal())
            .map(|(id, _)| id.clone())
            .collect();
        let mut step = Step::default();
        for batch_id in running {
            let rt = &self.state.batches[&batch_id];
            let effects: Vec<Effect> = rt
                .machine
                .nodes_in(NodeState::Ready)
                .filter_map(|node| {
                    let r = rt.machine.record(node)?;
                    Some(Effect::PublishReady {
                        node,
                        attempt: r.attempt,
                        dispatch_epoch: r.dispatch_epoch,
                    })
                })
                .collect();
            self.absorb(&mut step, &batch_id, effects, true);
        }
        self.deliver(&mut step);
        if let Err(e) = self.flush(step).await {
            warn!(error = %e, "re-publishing after the topics were lost failed");
        }
        fresh
    }
}

/// What a background delivery of one step's Ready records reports back.
#[derive(Debug)]
pub(super) struct Published {
    /// The records.
    pub(super) ready: Vec<ReadyRecord>,
    /// Release latency of the step (when the results were consumed → handed to the producer).
    pub(super) latency: Option<Duration>,
    /// Why they were not (all) delivered.
    pub(super) failed: Option<PortError>,
}

/// A task producing status changes in the order it receives them (best effort: failures are
/// logged). It ends when the sender is dropped and what it was handed is produced.
pub(super) fn publish_status_in_order<D: DataPlane>(
    data: Arc<D>,
) -> (mpsc::Sender<Vec<StatusChange>>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Vec<StatusChange>>(STATUS_BACKLOG);
    let task = tokio::spawn(async move {
        while let Some(mut changes) = rx.recv().await {
            // Whatever else is queued goes in the same produce call.
            while let Ok(more) = rx.try_recv() {
                changes.extend(more);
            }
            if let Err(e) = data.publish_status(changes).await {
                debug!(error = %e, "status changes not produced");
            }
        }
    });
    (tx, task)
}

/// Checks the topics every `every` (the first check after one period) and reports how many had
/// to be created again. Runs beside the driver so that a slow or absent broker never stalls it.
pub(super) fn watch_topics<D: DataPlane>(
    data: Arc<D>,
    zones: Vec<Zone>,
    every: Duration,
    lost: mpsc::Sender<usize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            match data.ensure_topics(&zones).await {
                Ok(0) => {}
                Ok(created) => {
                    if lost.send(created).await.is_err() {
                        return;
                    }
                }
                Err(e) => debug!(error = %e, "topic check failed"),
            }
        }
    })
}
