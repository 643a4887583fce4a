//! Which offset of a partition may be stored: records are processed concurrently and finish in
//! any order, but an offset may only be stored once every record before it is done (storing
//! offset `n` tells the group that everything below `n + 1` is processed). Pure.

use std::collections::{BTreeMap, BTreeSet};

/// Tracks records taken and done, per partition.
#[derive(Debug, Default, Clone)]
pub struct OffsetTracker {
    partitions: BTreeMap<i32, Partition>,
}

#[derive(Debug, Default, Clone)]
struct Partition {
    /// Taken and not yet done.
    open: BTreeSet<i64>,
    /// Done, but behind an open record.
    done: BTreeSet<i64>,
}

impl OffsetTracker {
    /// A record was taken from `partition` at `offset` (in increasing order per partition).
    pub fn taken(&mut self, partition: i32, offset: i64) {
        self.partitions
            .entry(partition)
            .or_default()
            .open
            .insert(offset);
    }

    /// The record is done. Returns the offset to store now for its partition, if the done
    /// records now form a longer prefix (the highest offset with nothing open before it).
    pub fn done(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        if !p.open.remove(&offset) {
            return None;
        }
        p.done.insert(offset);
        let first_open = p.open.first().copied();
        let mut store = None;
        while let Some(&d) = p.done.first() {
            if first_open.is_some_and(|o| o < d) {
                break;
            }
            p.done.pop_first();
            store = Some(d);
        }
        store
    }

    /// A record was skipped (not processed): taken and done at once, unless the same offset is
    /// still open (a redelivery of a record in flight), which is left alone. Returns the offset
    /// to store now, like [`OffsetTracker::done`].
    pub fn skipped(&mut self, partition: i32, offset: i64) -> Option<i64> {
        if self
            .partitions
            .get(&partition)
            .is_some_and(|p| p.open.contains(&offset))
        {
            return None;
        }
        self.taken(partition, offset);
        self.done(partition, offset)
    }

    /// Records taken and not done, over every partition.
    pub fn open(&self) -> usize {
        self.partitions.values().map(|p| p.open.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_is_stored_only_when_everything_before_it_is_done() {
        let mut t = OffsetTracker::default();
        for o in 10..14 {
            t.taken(0, o);
        }
        t.taken(1, 5);
        assert_eq!(t.done(0, 12), None, "10 and 11 are still open");
        assert_eq!(t.done(0, 11), None);
        assert_eq!(t.done(1, 5), Some(5), "partitions are independent");
        assert_eq!(t.done(0, 10), Some(12), "10, 11, 12 done: store 12");
        assert_eq!(t.open(), 1);
        assert_eq!(t.done(0, 13), Some(13));
        assert_eq!(t.done(0, 13), None, "done twice");
        assert_eq!(t.done(7, 1), None, "never taken");
        assert_eq!(t.open(), 0);
    }

    #[test]
    fn a_skipped_record_counts_as_done_unless_it_is_in_flight() {
        let mut t = OffsetTracker::default();
        t.taken(0, 1);
        assert_eq!(t.skipped(0, 1), None, "redelivery of the open record 1");
        assert_eq!(t.skipped(0, 2), None, "1 is still open");
        assert_eq!(t.done(0, 1), Some(2));
        assert_eq!(t.skipped(0, 3), Some(3));
    }
}
