//! Execution deadlines of RUNNING attempts: at most one per node of a batch, armed when the
//! attempt starts and dropped as soon as it leaves RUNNING (loaded, failed, lost, cancelled), so
//! the driver holds one entry per attempt actually running, not one per attempt started within
//! the execution timeout.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use strata_core::model::NodeIx;
use tokio::time::Instant;

/// A running attempt's identity: (attempt, dispatch epoch).
type Attempt = (u32, u64);
/// A deadline's place in time order: (when, arming order).
type Slot = (Instant, u64);
/// A node of a batch.
type NodeKey = (Arc<str>, NodeIx);

/// The deadlines, by time and by node.
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    /// Slot → node: the earliest first.
    by_time: BTreeMap<Slot, NodeKey>,
    /// Node → its slot in `by_time` and the attempt it is for.
    by_node: HashMap<NodeKey, (Slot, Attempt)>,
    armed: u64,
}

/// A deadline that came up: the attempt of `node` in `batch_id` outlived its timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Due {
    pub(super) batch_id: Arc<str>,
    pub(super) node: NodeIx,
    pub(super) attempt: u32,
    pub(super) dispatch_epoch: u64,
}

impl Deadlines {
    /// Arms `at` for the attempt now running on `node` (replacing an earlier one of the node).
    pub(super) fn arm(
        &mut self,
        batch_id: &str,
        node: NodeIx,
        (attempt, dispatch_epoch): Attempt,
        at: Instant,
    ) {
        self.disarm(batch_id, node);
        let batch: Arc<str> = batch_id.into();
        self.armed += 1;
        let slot = (at, self.armed);
        self.by_time.insert(slot, (batch.clone(), node));
        self.by_node
            .insert((batch, node), (slot, (attempt, dispatch_epoch)));
    }

    /// Drops the deadline of `node`, if any (its attempt left RUNNING).
    pub(super) fn disarm(&mut self, batch_id: &str, node: NodeIx) {
        if let Some((slot, _)) = self.by_node.remove(&(Arc::from(batch_id), node)) {
            self.by_time.remove(&slot);
        }
    }

    /// Removes and returns every deadline at or before `now`, earliest first.
    pub(super) fn due(&mut self, now: Instant) -> Vec<Due> {
        let mut out = Vec::new();
        while let Some(entry) = self.by_time.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (batch_id, node) = entry.remove();
            if let Some((_, (attempt, dispatch_epoch))) =
                self.by_node.remove(&(batch_id.clone(), node))
            {
                out.push(Due {
                    batch_id,
                    node,
                    attempt,
                    dispatch_epoch,
                });
            }
        }
        out
    }

    /// How many are armed.
    pub(super) fn len(&self) -> usize {
        self.by_node.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_deadline_comes_up_once_unless_its_attempt_ended_or_started_again() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut d = Deadlines::default();
        d.arm("b-1", 0, (1, 1), at(10));
        d.arm("b-1", 1, (1, 2), at(5));
        d.arm("b-2", 0, (1, 3), at(7));
        assert_eq!(d.len(), 3);
        // Node 1 of b-1 ended before its deadline: dropped at once.
        d.disarm("b-1", 1);
        assert_eq!(d.len(), 2);
        // Node 0 of b-1 started again (attempt 2): one entry, the new one.
        d.arm("b-1", 0, (2, 4), at(20));
        assert_eq!(d.len(), 2);
        assert!(d.due(at(6)).is_empty());
        let due = d.due(at(20));
        let got: Vec<(&str, NodeIx, u32, u64)> = due
            .iter()
            .map(|x| (&*x.batch_id, x.node, x.attempt, x.dispatch_epoch))
            .collect();
        assert_eq!(got, vec![("b-2", 0, 1, 3), ("b-1", 0, 2, 4)]);
        assert_eq!(d.len(), 0);
        assert!(d.by_time.is_empty());
        // Disarming what is not armed is nothing.
        d.disarm("b-9", 3);
        assert_eq!(d.len(), 0);
    }
}
