//! The driver's run loop: start-up, then one command, delivery report, topic loss, tick or
//! group of results at a time until shutdown.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::Driver;
use super::MAX_RESULTS_PER_STEP;
use super::error::DriverError;
use super::handle::Command;
use super::publish::publish_status_in_order;
use super::publish::watch_topics;
use super::step::Step;
use super::step::retry_port;
use crate::ports::{DataPlane, StateStore};

impl<D: DataPlane, S: StateStore> Driver<D, S> {
    /// Creates the topics, restores the active batches, then serves until `shutdown` resolves
    /// (which also cuts the start-up short: a control plane waiting for its broker or Redis stops
    /// at once).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), DriverError> {
        // Shutdown is watched beside the loop, not only between its turns: a turn stalled on a
        // state write must see it too.
        let stopping = self.stopping.clone();
        let mut stop = stopping.subscribe();
        let signal = async move {
            shutdown.await;
            stopping.send_replace(true);
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = signal => unreachable!("the signal never ends"),
            r = self.serve(&mut stop) => r,
        }
    }

    /// Start-up, then the loop, until `stop` turns true.
    async fn serve(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), DriverError> {
        let mut results = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => {
                info!("driver stopped during start-up");
                return Ok(());
            }
            started = self.start_up() => started?,
        };
        let mut tick = tokio::time::interval(self.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut published = self.published_rx.take().expect("the driver runs once");
        let (status_tx, status_task) = publish_status_in_order(self.data.clone());
        self.status_tx = Some(status_tx);
        let (lost_tx, mut lost) = mpsc::channel(4);
        let watcher = watch_topics(
            self.data.clone(),
            self.settings.zones.clone(),
            self.settings.topic_check,
            lost_tx,
        );
        loop {
            self.health.turned();
            self.state.counters.deadlines_armed = self.deadlines.len();
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => break,
                },
                // Before results: under a steady stream of results the branches below them
                // would never be polled (delivery reports hold their records until handled;
                // due retries, timeouts and lease expiry would wait for a quiet moment).
                Some(report) = published.recv() => self.published(report),
                Some(created) = lost.recv() => {
                    if let Some(fresh) = self.topics_recreated(created).await {
                        results = fresh;
                    }
                }
                _ = tick.tick() => self.tick().await,
                first = results.recv() => {
                    let Some(first) = first else { break };
                    let mut records = vec![first];
                    while records.len() < MAX_RESULTS_PER_STEP {
                        match results.try_recv() {
                            Ok(r) => records.push(r),
                            Err(_) => break,
                        }
                    }
                    self.results(records).await;
                    // Queries wait while results come, but each batch of results lets one
                    // through, so a steady stream of results cannot starve them.
                    if let Ok(query) = self.queries.try_recv() {
                        query(&self.state);
                    }
                }
                // Last: results are served before queries when both wait.
                Some(query) = self.queries.recv() => query(&self.state),
            }
        }
        watcher.abort();
        // The status task ends once it has produced what it was handed.
        self.status_tx = None;
        if tokio::time::timeout(Duration::from_secs(5), status_task)
            .await
            .is_err()
        {
            warn!("status changes still unproduced at shutdown were dropped");
        }
        info!("driver stopped");
        Ok(())
    }

    pub(super) async fn start_up(
        &mut self,
    ) -> Result<mpsc::Receiver<crate::ports::ResultRecord>, DriverError> {
        let created = retry_port(&self.settings.metrics, "ensure topics", || {
            self.data.ensure_topics(&self.settings.zones)
        })
        .await?;
        if created > 0 {
            self.state.topics_created();
        }
        let results = self.data.subscribe_results()?;
        self.restore().await?;
        Ok(results)
    }

    pub(super) async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Mutate(f, reply) => {
                let mut events = Vec::new();
                f(&mut self.state, &mut events);
                let mut step = Step::default();
                for (batch_id, event) in events {
                    self.handle(&mut step, &batch_id, event);
                }
                let _ = reply.send(self.flush(step).await);
            }
            Command::Adopt(batch_id, reply) => {
                let _ = reply.send(self.adopt(&batch_id).await);
            }
            Command::Submit(prepared, reply) => {
                let r = self.submit(*prepared).await;
                let _ = reply.send(r);
            }
            Command::Event {
                batch_id,
                event,
                reply,
            } => {
                if !self.state.batches.contains_key(&batch_id) {
                    let _ = reply.send(Err(DriverError::BatchNotFound(batch_id)));
                    return;
                }
                let mut step = Step::default();
                let outcome = self.handle(&mut step, &batch_id, event);
                let r = self.flush(step).await.map(|()| outcome);
                let _ = reply.send(r);
            }
        }
    }
}
