//! # strata-bus
//!
//! An in-memory topic that behaves like a Kafka topic, so that what runs on it runs unchanged on
//! Kafka: records are appended to partitions and keep their offsets; consumers join a consumer
//! group, are assigned disjoint partitions, read from the group's position and store offsets
//! once a record is done; a member that leaves hands its partitions to the others, which read
//! again from the last stored offset (at-least-once). A slow consumer only falls behind: nothing
//! is ever dropped. Records every group has stored are freed.
//!
//! Dev mode (`strata dev`) and the component tests carry Ready records and results over it: the
//! control plane's in-memory data plane publishes and consumes through it, and the worker agent
//! implements its ports over it.
//!
//! Why a crate of its own: both the control plane (its in-memory data plane) and the worker agent
//! (its in-memory ports) use it, and neither should depend on the other; the pure core
//! (`strata-core`) does no I/O and has no business with an asynchronous transport. It knows
//! nothing of Strata's records (a topic is generic over its record type).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// A record taken from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<T> {
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// The record.
    pub value: T,
}

/// Why an offset was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The partition is not (or no longer) assigned to this consumer: a rebalance gave it to
    /// another member, which reads again from the last stored offset.
    NotAssigned(i32),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotAssigned(p) => write!(f, "partition {p} is not assigned to this consumer"),
        }
    }
}

impl std::error::Error for StoreError {}

/// An in-memory topic; clones share it.
pub struct Topic<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Topic<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Topic<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.shared.lock();
        f.debug_struct("Topic")
            .field("partitions", &s.partitions.len())
            .field("groups", &s.groups.len())
            .finish_non_exhaustive()
    }
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Woken on every publish and rebalance.
    changed: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct State<T> {
    partitions: Vec<Log<T>>,
    groups: HashMap<String, Group>,
    next_member: u64,
}

/// One partition: the records from offset `base` on.
struct Log<T> {
    base: i64,
    records: VecDeque<T>,
}

impl<T> Log<T> {
    fn end(&self) -> i64 {
        self.base + self.records.len() as i64
    }
}

struct Group {
    /// Per partition: the next offset to read after a rebalance (the last stored one + 1).
    committed: Vec<i64>,
    /// Per partition: the next offset to hand out.
    position: Vec<i64>,
    /// Member ids, in joining order; partition `p` belongs to `members[p % len]`.
    members: Vec<u64>,
}

impl Group {
    fn owner(&self, partition: usize) -> Option<u64> {
        (!self.members.is_empty()).then(|| self.members[partition % self.members.len()])
    }

    /// Every member reads again from the stored offsets (an eager rebalance).
    fn rebalance(&mut self) {
        self.position.clone_from(&self.committed);
    }
}

impl<T: Clone + Send + 'static> Topic<T> {
    /// A topic of `partitions` partitions (at least one).
    pub fn new(partitions: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    partitions: (0..partitions.max(1))
                        .map(|_| Log {
                            base: 0,
                            records: VecDeque::new(),
                        })
                        .collect(),
                    groups: HashMap::new(),
                    next_member: 0,
                }),
                changed: Notify::new(),
            }),
        }
    }

    /// Appends `value` to the partition of `key`; returns where it went.
    pub fn publish(&self, key: &[u8], value: T) -> (i32, i64) {
        let at = {
            let mut s = self.shared.lock();
            let n = s.partitions.len();
            let partition = if n == 1 {
                0
            } else {
                (xxhash_rust::xxh3::xxh3_64(key) % n as u64) as usize
            };
            let log = &mut s.partitions[partition];
            log.records.push_back(value);
            (partition as i32, log.end() - 1)
        };
        self.shared.changed.notify_waiters();
        at
    }

    /// Joins consumer group `group`. A new group starts at the oldest record kept (Kafka's
    /// `auto.offset.reset=earliest`); an existing one at its stored offsets.
    pub fn subscribe(&self, group: &str) -> Consumer<T> {
        let member = {
            let mut s = self.shared.lock();
            let member = s.next_member;
            s.next_member += 1;
            let bases: Vec<i64> = s.partitions.iter().map(|p| p.base).collect();
            let g = s.groups.entry(group.to_owned()).or_insert_with(|| Group {
                committed: bases.clone(),
                position: bases,
                members: Vec::new(),
            });
            g.members.push(member);
            g.rebalance();
            member
        };
        self.shared.changed.notify_waiters();
        Consumer {
            shared: self.shared.clone(),
            group: group.to_owned(),
            member,
            next_partition: 0,
        }
    }

    /// Records published and not yet stored by `group`, over every partition (all of them for a
    /// group that does not exist).
    pub fn lag(&self, group: &str) -> i64 {
        let s = self.shared.lock();
        s.partitions
            .iter()
            .enumerate()
            .map(|(p, log)| log.end() - s.groups.get(group).map_or(log.base, |g| g.committed[p]))
            .sum()
    }

    /// Records held in memory (not yet stored by every group), over every partition.
    pub fn retained(&self) -> usize {
        self.shared
            .lock()
            .partitions
            .iter()
            .map(|p| p.records.len())
            .sum()
    }
}

/// A member of a consumer group of a [`Topic`]; leaves the group when dropped.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    group: String,
    member: u64,
    /// Where the next fetch starts looking (round robin over the assigned partitions).
    next_partition: usize,
}

impl<T> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.group)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

impl<T: Clone + Send + 'static> Consumer<T> {
    /// The next record of the partitions assigned to this consumer, waiting for one.
    /// Cancel-safe: a record is handed out only when this returns.
    pub async fn recv(&mut self) -> Record<T> {
        let shared = self.shared.clone();
        loop {
            let changed = shared.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if let Some(r) = self.try_recv() {
                return r;
            }
            changed.await;
        }
    }

    /// The next record if one is waiting.
    pub fn try_recv(&mut self) -> Option<Record<T>> {
        let mut s = self.shared.lock();
        let State {
            partitions, groups, ..
        } = &mut *s;
        let g = groups.get_mut(&self.group)?;
        let n = partitions.len();
        for i in 0..n {
            let p = (self.next_partition + i) % n;
            if g.owner(p) != Some(self.member) {
                continue;
            }
            let log = &partitions[p];
            let at = g.position[p].max(log.base);
            if at < log.end() {
                let value = log.records[(at - log.base) as usize].clone();
                g.position[p] = at + 1;
                self.next_partition = (p + 1) % n;
                return Some(Record {
                    partition: p as i32,
                    offset: at,
                    value,
                });
            }
        }
        None
    }

    /// Records that `offset` of `partition` and everything before it are done (Kafka's
    /// `store_offset` with auto-commit: the group reads from `offset + 1` after a rebalance).
    /// Records every group has stored are freed.
    pub fn store(&self, partition: i32, offset: i64) -> Result<(), StoreError> {
        let mut s = self.shared.lock();
        let p = usize::try_from(partition).map_err(|_| StoreError::NotAssigned(partition))?;
        let State {
            partitions, groups, ..
        } = &mut *s;
        let g = groups
            .get_mut(&self.group)
            .filter(|g| p < partitions.len() && g.owner(p) == Some(self.member))
            .ok_or(StoreError::NotAssigned(partition))?;
        g.committed[p] = g.committed[p].max(offset + 1);
        let kept_from = groups.values().map(|g| g.committed[p]).min().unwrap_or(0);
        let log = &mut partitions[p];
        while log.base < kept_from && log.records.pop_front().is_some() {
            log.base += 1;
        }
        Ok(())
    }

    /// Partitions assigned to this consumer.
    pub fn assigned(&self) -> usize {
        let s = self.shared.lock();
        let n = s.partitions.len();
        s.groups.get(&self.group).map_or(0, |g| {
            (0..n).filter(|&p| g.owner(p) == Some(self.member)).count()
        })
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        {
            let mut s = self.shared.lock();
            if let Some(g) = s.groups.get_mut(&self.group) {
                g.members.retain(|m| *m != self.member);
                g.rebalance();
            }
        }
        self.shared.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_slow_consumer_loses_nothing() {
        let topic = Topic::new(1);
        let mut c = topic.subscribe("g");
        for i in 0..100_000u32 {
            topic.publish(b"k", i);
        }
        for i in 0..100_000u32 {
            let r = c.recv().await;
            assert_eq!((r.offset, r.value), (i64::from(i), i));
            c.store(r.partition, r.offset).expect("assigned");
        }
        assert_eq!(topic.retained(), 0, "stored by every group: freed");
        assert_eq!(topic.lag("g"), 0);
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken_by_a_publish() {
        let topic = Topic::new(2);
        let mut c = topic.subscribe("g");
        let waiting = tokio::spawn(async move { c.recv().await.value });
        tokio::time::sleep(Duration::from_millis(10)).await;
        topic.publish(b"x", 7);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(got.expect("woken").expect("task"), 7);
    }

    #[tokio::test]
    async fn groups_are_independent_and_a_new_group_starts_at_the_oldest_record_kept() {
        let topic = Topic::new(1);
        let mut a = topic.subscribe("a");
        topic.publish(b"k", 1);
        topic.publish(b"k", 2);
        let r = a.recv().await;
        a.store(r.partition, r.offset).expect("stored");
        // Group b does not exist yet: nothing is freed for it, it starts at the oldest record.
        assert_eq!(topic.retained(), 1);
        let mut b = topic.subscribe("b");
        assert_eq!(b.recv().await.value, 2);
        assert_eq!(a.recv().await.value, 2);
    }

    #[tokio::test]
    async fn a_member_that_leaves_hands_its_unstored_records_to_the_group() {
        let topic = Topic::new(1);
        let mut first = topic.subscribe("g");
        for i in 0..3 {
            topic.publish(b"k", i);
        }
        let r0 = first.recv().await;
        first.store(r0.partition, r0.offset).expect("stored");
        let _taken_not_stored = first.recv().await;
        let mut second = topic.subscribe("g");
        // Two members, one partition: it stays with the first member.
        assert_eq!((first.assigned(), second.assigned()), (1, 0));
        assert_eq!(
            second.store(0, 1),
            Err(StoreError::NotAssigned(0)),
            "only the owner stores"
        );
        drop(first);
        assert_eq!(
            second.recv().await.value,
            1,
            "read again from the stored offset"
        );
        assert_eq!(second.recv().await.value, 2);
    }

    #[tokio::test]
    async fn partitions_are_split_between_members() {
        let topic: Topic<u32> = Topic::new(4);
        let a = topic.subscribe("g");
        let b = topic.subscribe("g");
        assert_eq!((a.assigned(), b.assigned()), (2, 2));
        drop(b);
        assert_eq!(a.assigned(), 4);
    }
}
