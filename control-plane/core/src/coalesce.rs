//! Cross-batch dedup (`docs/design.md#coalescing`): an object id already in flight for one batch is not run again
//! for another; the later batch *coalesces* onto the running attempt and is released by its
//! outcome — if it defines the object the same way ([`definition_digest`]). A release whose
//! definition differs waits too (two runs of one object never overlap), and is released to run
//! its own definition when the owner's run ends.
//!
//! The [`Coalescer`] is the index a driver keeps over every batch it owns: per object id, the
//! batch and node whose attempts are running it (the *owner*), and the releases of other batches
//! waiting for its outcome (*waiters*, each a [`Ticket`] naming the attempt and dispatch epoch
//! its own machine issued, so the outcome is fenced like any result).
//!
//! The driver calls [`Coalescer::claim`] for every `PublishReady` effect: [`Claim::Run`] means
//! produce the Ready, [`Claim::Wait`] means do not — the ticket is parked on the owner. It calls
//! [`Coalescer::settle`] whenever a node leaves its in-flight states (`LOADED`, `DEAD`,
//! `CANCELLED`, ...): settling an owner returns a [`Delivery`] per waiter — the outcome to feed
//! to the waiter's machine as `Event::CoalescedOutcome`, or, if the owner gave up without an
//! outcome (its batch was cancelled), the waiter to release again (the first one to claim becomes
//! the new owner). Settling a waiter withdraws its ticket.
//!
//! An owner stays the owner through its retries (`RETRY_WAIT → READY` claims again and is told
//! to run); it settles only when its run ends. Pure data, no I/O; generic over the batch key.

use std::hash::Hash;

use rustc_hash::FxHashMap;

use crate::model::{NodeIx, ObjectDef, ObjectId};

/// A release of one object in one batch: what its machine issued with `PublishReady`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket<B> {
    /// The batch.
    pub batch: B,
    /// The node in that batch's plan.
    pub node: NodeIx,
    /// The attempt of the release.
    pub attempt: u32,
    /// Its dispatch epoch.
    pub dispatch_epoch: u64,
}

/// What to do with a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim<B> {
    /// Nobody else runs this object: produce the Ready (this release is the owner now).
    Run,
    /// Another batch's attempt is in flight: do not produce; wait for it to end.
    Wait {
        /// The owner's batch.
        onto: B,
        /// True when both define the object the same way: the waiter takes the owner's
        /// outcome. False: the waiter is released to run its own definition afterwards.
        shares_outcome: bool,
    },
}

/// How an owner's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Loaded: the waiters are loaded too.
    Loaded,
    /// Dead: the waiters die with reason `coalesced_failed` and this error.
    Failed {
        /// The owner's last error.
        error: Option<String>,
    },
    /// Ended without an outcome (cancelled): the waiters must be released again.
    Abandoned,
}

/// What a settlement asks of the driver, per waiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery<B> {
    /// Feed `Event::CoalescedOutcome` to the waiter's batch.
    Outcome {
        /// The waiting release.
        waiter: Ticket<B>,
        /// Loaded or failed.
        loaded: bool,
        /// The owner's error when it failed.
        error: Option<String>,
    },
    /// Release the waiter again ([`Coalescer::claim`] decides whether it runs or waits).
    Rerelease(Ticket<B>),
}

#[derive(Debug, Clone)]
struct Owner<B> {
    batch: B,
    node: NodeIx,
    /// The owner's [`definition_digest`].
    definition: Digest,
    /// Waiting releases, and whether each defines the object as the owner does (then it takes
    /// the owner's outcome; else it runs its own once the owner's run ends).
    waiters: Vec<(Ticket<B>, bool)>,
}

/// A digest of how an object is defined ([`definition_digest`]).
pub type Digest = [u8; 16];

/// What an object's run depends on, digested: its id, name, zone, parents, frequency, whether
/// it is enabled, priority and attributes (not its last load time, which decides whether it
/// runs, not how). Two batches share a run of an object only when these are equal.
pub fn definition_digest(o: &ObjectDef) -> Digest {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(o.id.as_str().as_bytes());
    field(o.name.as_bytes());
    field(o.zone.as_str().as_bytes());
    field(&(o.parents.len() as u64).to_le_bytes());
    for p in &o.parents {
        field(p.as_str().as_bytes());
    }
    field(o.frequency.as_deref().unwrap_or("").as_bytes());
    field(&[u8::from(o.enabled)]);
    field(&o.priority.to_le_bytes());
    field(&(o.attributes.len() as u64).to_le_bytes());
    for (k, v) in o.attributes.iter() {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    let full = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// The in-flight index. See the module documentation.
#[derive(Debug, Clone)]
pub struct Coalescer<B> {
    owners: FxHashMap<ObjectId, Owner<B>>,
    waiting: usize,
}

impl<B> Default for Coalescer<B> {
    fn default() -> Self {
        Self {
            owners: FxHashMap::default(),
            waiting: 0,
        }
    }
}

impl<B: Clone + Eq + Hash> Coalescer<B> {
    /// Decides a release of object `id` defined as `definition` digests. The owner's own
    /// retries run; another batch's release waits while an owner exists (taking its outcome if
    /// it defines the object the same way, else to run its own after it); otherwise the release
    /// becomes the owner.
    pub fn claim(&mut self, id: &ObjectId, definition: Digest, ticket: Ticket<B>) -> Claim<B> {
        match self.owners.get_mut(id) {
            Some(owner) if owner.batch == ticket.batch && owner.node == ticket.node => Claim::Run,
            Some(owner) => {
                let onto = owner.batch.clone();
                let shares_outcome = owner.definition == definition;
                // A release that waits again (a restart re-issued it) replaces its old ticket.
                let before = owner.waiters.len();
                owner
                    .waiters
                    .retain(|(w, _)| !(w.batch == ticket.batch && w.node == ticket.node));
                self.waiting -= before - owner.waiters.len();
                owner.waiters.push((ticket, shares_outcome));
                self.waiting += 1;
                Claim::Wait {
                    onto,
                    shares_outcome,
                }
            }
            None => {
                self.owners.insert(
                    id.clone(),
                    Owner {
                        batch: ticket.batch,
                        node: ticket.node,
                        definition,
                        waiters: Vec::new(),
                    },
                );
                Claim::Run
            }
        }
    }

    /// Records an attempt known to be in flight without a release (`RUNNING` or `RETRY_WAIT`
    /// after a restart) as the owner of `id`, unless another owner exists. True if it is the
    /// owner afterwards.
    pub fn adopt(&mut self, id: &ObjectId, definition: Digest, batch: B, node: NodeIx) -> bool {
        let owner = self.owners.entry(id.clone()).or_insert_with(|| Owner {
            batch: batch.clone(),
            node,
            definition,
            waiters: Vec::new(),
        });
        owner.batch == batch && owner.node == node
    }

    /// The node `(batch, node)` holding object `id` left its in-flight states. If it owns `id`,
    /// the ownership ends and every waiter gets a [`Delivery`]; if it waits on `id`, its ticket
    /// is withdrawn; otherwise nothing happens.
    pub fn settle(
        &mut self,
        id: &ObjectId,
        batch: &B,
        node: NodeIx,
        settlement: Settlement,
    ) -> Vec<Delivery<B>> {
        let Some(owner) = self.owners.get_mut(id) else {
            return Vec::new();
        };
        if owner.batch != *batch || owner.node != node {
            let before = owner.waiters.len();
            owner
                .waiters
                .retain(|(w, _)| !(w.batch == *batch && w.node == node));
            self.waiting -= before - owner.waiters.len();
            return Vec::new();
        }
        let owner = self.owners.remove(id).expect("present");
        self.waiting -= owner.waiters.len();
        owner
            .waiters
            .into_iter()
            .map(|(waiter, shares_outcome)| match &settlement {
                // Another definition: the owner's outcome is not its own; it runs now.
                _ if !shares_outcome => Delivery::Rerelease(waiter),
                Settlement::Loaded => Delivery::Outcome {
                    waiter,
                    loaded: true,
                    error: None,
                },
                Settlement::Failed { error } => Delivery::Outcome {
                    waiter,
                    loaded: false,
                    error: error.clone(),
                },
                Settlement::Abandoned => Delivery::Rerelease(waiter),
            })
            .collect()
    }

    /// The batch whose attempt runs `id`, if any.
    pub fn owner(&self, id: &ObjectId) -> Option<&B> {
        self.owners.get(id).map(|o| &o.batch)
    }

    /// Every object in flight with its owning batch.
    pub fn owners(&self) -> impl Iterator<Item = (&ObjectId, &B)> + '_ {
        self.owners.iter().map(|(id, o)| (id, &o.batch))
    }

    /// How many objects are in flight.
    pub fn in_flight(&self) -> usize {
        self.owners.len()
    }

    /// How many releases wait on another batch's attempt.
    pub fn waiting(&self) -> usize {
        self.waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One definition, shared by every release of these tests unless said otherwise.
    const SAME: Digest = [0; 16];

    fn id(s: &str) -> ObjectId {
        ObjectId::parse(s).expect("valid id")
    }

    fn ticket(batch: &'static str, node: NodeIx, attempt: u32) -> Ticket<&'static str> {
        Ticket {
            batch,
            node,
            attempt,
            dispatch_epoch: u64::from(attempt) * 10,
        }
    }

    #[test]
    fn the_first_release_runs_and_later_batches_wait_for_its_outcome() {
        let mut c = Coalescer::default();
        assert_eq!(c.claim(&id("1001"), SAME, ticket("a", 0, 1)), Claim::Run);
        assert_eq!(
            c.claim(&id("1001"), SAME, ticket("b", 3, 1)),
            Claim::Wait {
                onto: "a",
                shares_outcome: true
            }
        );
        assert_eq!(
            c.claim(&id("1001"), SAME, ticket("c", 7, 2)),
            Claim::Wait {
                onto: "a",
                shares_outcome: true
            }
        );
        assert_eq!((c.in_flight(), c.waiting()), (1, 2));
        // The owner's retry runs again; it stays the owner.
        assert_eq!(c.claim(&id("1001"), SAME, ticket("a", 0, 2)), Claim::Run);
        assert_eq!(c.owner(&id("1001")), Some(&"a"));
        let d = c.settle(&id("1001"), &"a", 0, Settlement::Loaded);
        assert_eq!(
            d,
            vec![
                Delivery::Outcome {
                    waiter: ticket("b", 3, 1),
                    loaded: true,
                    error: None
                },
                Delivery::Outcome {
                    waiter: ticket("c", 7, 2),
                    loaded: true,
                    error: None
                },
            ]
        );
        assert_eq!((c.in_flight(), c.waiting()), (0, 0));
        // With the owner gone, the next release runs.
        assert_eq!(c.claim(&id("1001"), SAME, ticket("b", 3, 2)), Claim::Run);
    }

    #[test]
    fn a_failed_owner_fails_its_waiters_with_its_error() {
        let mut c = Coalescer::default();
        c.claim(&id("2001"), SAME, ticket("a", 1, 1));
        c.claim(&id("2001"), SAME, ticket("b", 1, 1));
        let d = c.settle(
            &id("2001"),
            &"a",
            1,
            Settlement::Failed {
                error: Some("boom".into()),
            },
        );
        assert_eq!(
            d,
            vec![Delivery::Outcome {
                waiter: ticket("b", 1, 1),
                loaded: false,
                error: Some("boom".into())
            }]
        );
    }

    #[test]
    fn an_abandoned_owner_hands_its_waiters_back_for_release() {
        let mut c = Coalescer::default();
        c.claim(&id("2001"), SAME, ticket("a", 1, 1));
        c.claim(&id("2001"), SAME, ticket("b", 2, 1));
        c.claim(&id("2001"), SAME, ticket("c", 3, 1));
        let d = c.settle(&id("2001"), &"a", 1, Settlement::Abandoned);
        assert_eq!(
            d,
            vec![
                Delivery::Rerelease(ticket("b", 2, 1)),
                Delivery::Rerelease(ticket("c", 3, 1))
            ]
        );
        // The driver releases them again, in order: b runs, c waits on b.
        assert_eq!(c.claim(&id("2001"), SAME, ticket("b", 2, 1)), Claim::Run);
        assert_eq!(
            c.claim(&id("2001"), SAME, ticket("c", 3, 1)),
            Claim::Wait {
                onto: "b",
                shares_outcome: true
            }
        );
    }

    #[test]
    fn settling_a_waiter_withdraws_it_and_strangers_change_nothing() {
        let mut c = Coalescer::default();
        c.claim(&id("3001"), SAME, ticket("a", 0, 1));
        c.claim(&id("3001"), SAME, ticket("b", 0, 1));
        assert!(
            c.settle(&id("3001"), &"b", 0, Settlement::Abandoned)
                .is_empty()
        );
        assert_eq!(c.waiting(), 0);
        assert!(
            c.settle(&id("9999"), &"a", 0, Settlement::Loaded)
                .is_empty()
        );
        assert!(
            c.settle(&id("3001"), &"z", 5, Settlement::Loaded)
                .is_empty()
        );
        assert_eq!(c.owner(&id("3001")), Some(&"a"));
        assert!(
            c.settle(&id("3001"), &"a", 0, Settlement::Loaded)
                .is_empty()
        );
    }

    #[test]
    fn a_waiter_released_again_keeps_one_ticket() {
        let mut c = Coalescer::default();
        c.claim(&id("1"), SAME, ticket("a", 0, 1));
        c.claim(&id("1"), SAME, ticket("b", 0, 1));
        c.claim(&id("1"), SAME, ticket("b", 0, 1));
        assert_eq!(c.waiting(), 1);
        assert_eq!(c.settle(&id("1"), &"a", 0, Settlement::Loaded).len(), 1);
    }

    #[test]
    fn adopted_attempts_own_their_object_after_a_restart() {
        let mut c = Coalescer::default();
        assert!(c.adopt(&id("1"), SAME, "a", 4));
        assert!(!c.adopt(&id("1"), SAME, "b", 4));
        assert_eq!(
            c.claim(&id("1"), SAME, ticket("b", 4, 1)),
            Claim::Wait {
                onto: "a",
                shares_outcome: true
            }
        );
        let d = c.settle(&id("1"), &"a", 4, Settlement::Abandoned);
        assert_eq!(d, vec![Delivery::Rerelease(ticket("b", 4, 1))]);
        assert_eq!((c.in_flight(), c.waiting()), (0, 0));
    }

    #[test]
    fn a_release_defining_the_object_otherwise_waits_then_runs_its_own() {
        let mut c = Coalescer::default();
        let other: Digest = [1; 16];
        assert_eq!(c.claim(&id("1001"), SAME, ticket("a", 0, 1)), Claim::Run);
        assert_eq!(
            c.claim(&id("1001"), other, ticket("b", 3, 1)),
            Claim::Wait {
                onto: "a",
                shares_outcome: false
            }
        );
        assert_eq!(
            c.claim(&id("1001"), SAME, ticket("c", 5, 1)),
            Claim::Wait {
                onto: "a",
                shares_outcome: true
            }
        );
        let delivered = c.settle(&id("1001"), &"a", 0, Settlement::Loaded);
        assert_eq!(
            delivered,
            vec![
                Delivery::Rerelease(ticket("b", 3, 1)),
                Delivery::Outcome {
                    waiter: ticket("c", 5, 1),
                    loaded: true,
                    error: None
                },
            ]
        );
    }

    #[test]
    fn the_definition_digest_ignores_the_last_load_time_only() {
        let base = ObjectDef {
            id: id("1001"),
            name: "orders".into(),
            zone: crate::Zone::parse("raw").expect("zone"),
            layer: Some(1),
            parents: Vec::new(),
            frequency: None,
            last_loaded_at: None,
            enabled: true,
            priority: 0,
            attributes: crate::model::Attributes::new(),
        };
        let d = definition_digest(&base);
        let loaded = ObjectDef {
            last_loaded_at: chrono::DateTime::from_timestamp(1, 0),
            ..base.clone()
        };
        assert_eq!(definition_digest(&loaded), d);
        let mut attrs = base.clone();
        attrs.attributes.insert("path", "/data/a");
        assert_ne!(definition_digest(&attrs), d);
        let renamed = ObjectDef {
            name: "orders2".into(),
            ..base.clone()
        };
        assert_ne!(definition_digest(&renamed), d);
        let disabled = ObjectDef {
            enabled: false,
            ..base
        };
        assert_ne!(definition_digest(&disabled), d);
    }
}
