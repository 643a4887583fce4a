//! The effect interpreter: events fed to a batch's machine, and its effects turned into the
//! step's writes, records, notifications and coalescer deliveries.

use strata_core::coalesce::{Claim, Delivery, Settlement, Ticket, definition_digest};
use strata_core::machine::{
    BatchState, DeadReason, Effect, Event, FailureKind, IgnoreReason, NodeState, Outcome,
};
use tracing::{debug, info};

use super::Driver;
use super::settings::execution_timeout;
use super::state::WatchEvent;
use super::state::in_flight;
use super::state::{Coalesced, TransitionRecord};
use super::step::Step;
use crate::ports::{DataPlane, RetryEntry, StateStore, StoredDeadLetter};
use crate::records::{DeadLetterRecord, ReadyRecord, StatusChange};

impl<D: DataPlane, S: StateStore> Driver<D, S> {
    /// Feeds one event to a batch's machine and absorbs its effects into the step, then tells
    /// the batches whose releases waited on what this event settled.
    pub(super) fn handle(&mut self, step: &mut Step, batch_id: &str, event: Event) -> Outcome {
        let outcome = self.handle_one(step, batch_id, event);
        self.deliver(step);
        outcome
    }

    /// Performs the step's pending deliveries (and those they cause) to waiting batches.
    pub(super) fn deliver(&mut self, step: &mut Step) {
        while let Some(delivery) = step.deliveries.pop() {
            match delivery {
                Delivery::Outcome {
                    waiter,
                    loaded,
                    error,
                } => {
                    let event = Event::CoalescedOutcome {
                        node: waiter.node,
                        attempt: waiter.attempt,
                        dispatch_epoch: waiter.dispatch_epoch,
                        loaded,
                        error,
                    };
                    self.handle_one(step, &waiter.batch, event);
                }
                Delivery::Rerelease(waiter) => {
                    let still_waiting = self.state.batches.get(&waiter.batch).is_some_and(|rt| {
                        rt.machine.record(waiter.node).is_some_and(|r| {
                            r.state == NodeState::Ready
                                && r.attempt == waiter.attempt
                                && r.dispatch_epoch == waiter.dispatch_epoch
                        })
                    });
                    if still_waiting {
                        let effect = Effect::PublishReady {
                            node: waiter.node,
                            attempt: waiter.attempt,
                            dispatch_epoch: waiter.dispatch_epoch,
                        };
                        self.absorb(step, &waiter.batch, vec![effect], false);
                    }
                }
            }
        }
    }

    pub(super) fn handle_one(&mut self, step: &mut Step, batch_id: &str, event: Event) -> Outcome {
        let jitter = self.jitter();
        let now = self.state.now();
        let Some(rt) = self.state.batches.get_mut(batch_id) else {
            return Outcome::Ignored(IgnoreReason::UnknownNode);
        };
        let mut effects = Vec::new();
        let outcome = rt.machine.handle(event, now, jitter, &mut effects);
        match outcome {
            Outcome::Applied => self.state.counters.applied += 1,
            Outcome::Ignored(reason) => {
                *self
                    .state
                    .counters
                    .ignored
                    .entry(reason.as_str())
                    .or_default() += 1;
                self.settings.metrics.result_ignored(reason.as_str());
            }
        }
        self.absorb(step, batch_id, effects, false);
        outcome
    }

    /// Turns machine effects into writes, records and notifications.
    pub(super) fn absorb(
        &mut self,
        step: &mut Step,
        batch_id: &str,
        effects: Vec<Effect>,
        resumed: bool,
    ) {
        let now = self.state.now();
        let Some(rt) = self.state.batches.get_mut(batch_id) else {
            return;
        };
        step.heads.insert(batch_id.to_owned(), ());
        for effect in effects {
            match effect {
                Effect::Transition {
                    node,
                    from,
                    to,
                    attempt,
                } => {
                    if to == NodeState::Loaded && !resumed {
                        let waited = (now - rt.created_at).to_std().unwrap_or_default();
                        self.settings.metrics.object_loaded(
                            rt.plan.object(&rt.objects, node).zone.as_str(),
                            waited.as_secs_f64(),
                        );
                    }
                    self.settings.metrics.object_moved(
                        rt.plan.object(&rt.objects, node).zone.as_str(),
                        from.as_str(),
                        to.as_str(),
                    );
                    step.changed
                        .entry(batch_id.to_owned())
                        .or_default()
                        .push(node);
                    if in_flight(from) && !in_flight(to) {
                        let settlement = match to {
                            NodeState::Loaded => Settlement::Loaded,
                            NodeState::Dead => Settlement::Failed {
                                error: rt.machine.last_error(node).map(str::to_owned),
                            },
                            _ => Settlement::Abandoned,
                        };
                        let id = &rt.plan.object(&rt.objects, node).id;
                        step.deliveries.extend(self.state.coalescer.settle(
                            id,
                            &rt.batch_id,
                            node,
                            settlement,
                        ));
                    }
                    if to == NodeState::Loaded {
                        let id = rt.plan.object(&rt.objects, node).id.to_string();
                        step.write.loaded.push((id, now.timestamp_millis()));
                    }
                    if to == NodeState::Running {
                        let zone = &rt.plan.object(&rt.objects, node).zone;
                        let epoch = rt.machine.record(node).map_or(0, |r| r.dispatch_epoch);
                        self.deadlines.arm(
                            batch_id,
                            node,
                            (attempt, epoch),
                            tokio::time::Instant::now() + execution_timeout(&self.settings, zone),
                        );
                    } else if from == NodeState::Running {
                        self.deadlines.disarm(batch_id, node);
                    }
                    if let Some(t) = &mut self.traces {
                        t.transition(batch_id, node, from, to, rt.machine.last_error(node));
                    }
                    rt.history.entry(node).or_default().push(TransitionRecord {
                        from,
                        to,
                        attempt,
                        at: now,
                    });
                    let o = rt.plan.object(&rt.objects, node);
                    step.status.push(StatusChange {
                        batch_id: batch_id.to_owned(),
                        object_id: o.id.to_string(),
                        zone: o.zone.clone(),
                        from,
                        to,
                        batch_state: rt.machine.batch_state(),
                        attempt,
                        at: now,
                    });
                    step.watch.push((
                        batch_id.to_owned(),
                        WatchEvent::Object {
                            node,
                            from,
                            to,
                            attempt,
                            at: now,
                        },
                    ));
                }
                Effect::PublishReady {
                    node,
                    attempt,
                    dispatch_epoch,
                } => {
                    let o = rt.plan.object(&rt.objects, node);
                    let ticket = Ticket {
                        batch: rt.batch_id.clone(),
                        node,
                        attempt,
                        dispatch_epoch,
                    };
                    match self
                        .state
                        .coalescer
                        .claim(&o.id, definition_digest(o), ticket)
                    {
                        Claim::Run => {
                            rt.coalesced_onto.remove(&node);
                        }
                        Claim::Wait {
                            onto,
                            shares_outcome,
                        } => {
                            debug!(%batch_id, object = %o.id, %onto, shares_outcome, "waits on another batch's attempt");
                            rt.coalesced_onto.insert(
                                node,
                                Coalesced {
                                    onto,
                                    shares_outcome,
                                },
                            );
                            continue;
                        }
                    }
                    step.ready.push(ReadyRecord {
                        batch_id: batch_id.to_owned(),
                        object: o.clone(),
                        attempt,
                        max_attempts: rt.machine.policy(node).max_attempts,
                        dispatch_epoch,
                        released_at: now,
                        execution_timeout: execution_timeout(&self.settings, &o.zone),
                        traceparent: self.traces.as_mut().map(|t| {
                            let (id, zone) = (o.id.as_str(), o.zone.as_str());
                            t.released(batch_id, node, id, zone, attempt, dispatch_epoch)
                        }),
                    });
                }
                Effect::ScheduleRetry {
                    node,
                    attempt,
                    due_at,
                } => {
                    if !resumed {
                        let zone = &rt.plan.object(&rt.objects, node).zone;
                        self.settings.metrics.retry_scheduled(zone.as_str());
                    }
                    step.write.schedule.push(RetryEntry {
                        batch_id: batch_id.to_owned(),
                        node,
                        attempt,
                        due_ms: due_at.timestamp_millis(),
                    });
                }
                Effect::DeadLetter {
                    node,
                    attempt: _,
                    attempts,
                    last_error,
                    reason,
                } => {
                    let o = rt.plan.object(&rt.objects, node);
                    let kind = rt
                        .machine
                        .record(node)
                        .and_then(|r| r.last_failure)
                        .unwrap_or(match reason {
                            DeadReason::Preflight => FailureKind::Preflight,
                            _ => FailureKind::Processor,
                        });
                    let letter = DeadLetterRecord {
                        batch_id: batch_id.to_owned(),
                        object: o.clone(),
                        attempts,
                        last_error: last_error.unwrap_or_default(),
                        kind,
                        dead_at: now,
                        last_agent_id: rt.last_agent.get(&node).cloned().unwrap_or_default(),
                    };
                    // A resumed batch stored its dead letters before the restart (with its
                    // records, in one write); those not yet produced are in the store's outbox,
                    // which the restart produces.
                    if !resumed {
                        self.settings.metrics.dead_letter(o.zone.as_str());
                        step.dead.push((node, letter.clone()));
                        step.write.dead_letters.push(StoredDeadLetter {
                            batch_id: batch_id.to_owned(),
                            node,
                            letter,
                            dead_at_ms: now.timestamp_millis(),
                        });
                    }
                }
                Effect::BatchFinished { state } => {
                    self.settings
                        .metrics
                        .batch_moved(BatchState::Running.as_str(), state.as_str());
                    rt.finished_at = Some(now);
                    step.finished.push(batch_id.to_owned());
                    info!(%batch_id, state = %state, "batch finished");
                    step.watch.push((
                        batch_id.to_owned(),
                        WatchEvent::Batch {
                            from: BatchState::Running,
                            to: state,
                            at: now,
                        },
                    ));
                }
                Effect::BatchReopened => {
                    self.settings
                        .metrics
                        .batch_moved(BatchState::Failed.as_str(), BatchState::Running.as_str());
                    rt.finished_at = None;
                    step.watch.push((
                        batch_id.to_owned(),
                        WatchEvent::Batch {
                            from: BatchState::Failed,
                            to: BatchState::Running,
                            at: now,
                        },
                    ));
                }
            }
        }
    }

    pub(super) fn jitter(&mut self) -> f64 {
        // splitmix64: jitter needs no cryptographic quality.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}
