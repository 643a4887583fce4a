//! Whether a Ready record starts an attempt: stale, duplicate, or superseding the attempt held
//! for its object. Pure (the agent's loop asks, then acts); beside [`crate::offsets`], which says
//! when a record's offset may be stored.

use std::collections::HashMap;

/// Entries kept in the "newest release seen" memory before it is cleared.
pub const MAX_SEEN: usize = 100_000;

/// An object of a batch: what at most one attempt runs for at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The batch.
    pub batch_id: String,
    /// The object.
    pub object_id: String,
}

/// What to do with a Ready record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Start an attempt.
    Start,
    /// Start an attempt, abandoning the one held for the object (a newer release supersedes it:
    /// its result would be stale).
    Supersede,
    /// Skip it: a newer release of the object was seen.
    Stale,
    /// Skip it: the same release is in flight here (a redelivery).
    Duplicate,
}

/// The newest dispatch epoch seen per object.
#[derive(Debug, Default, Clone)]
pub struct Releases {
    newest: HashMap<Key, u64>,
}

impl Releases {
    /// Decides for a release of `key` at `epoch`, `held` being the epoch of the attempt this
    /// agent holds for it (if any); remembers the release when it starts.
    pub fn admit(&mut self, key: &Key, epoch: u64, held: Option<u64>) -> Admission {
        if self.newest.get(key).is_some_and(|&e| e > epoch) {
            return Admission::Stale;
        }
        let admission = match held {
            Some(h) if h == epoch => return Admission::Duplicate,
            Some(_) => Admission::Supersede,
            None => Admission::Start,
        };
        if self.newest.len() >= MAX_SEEN {
            self.newest.clear();
        }
        self.newest.insert(key.clone(), epoch);
        admission
    }

    /// Objects remembered.
    pub fn len(&self) -> usize {
        self.newest.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.newest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Key {
        Key {
            batch_id: "b".into(),
            object_id: id.into(),
        }
    }

    #[test]
    fn a_first_release_starts_and_an_older_one_is_stale() {
        let mut r = Releases::default();
        assert_eq!(r.admit(&key("1"), 3, None), Admission::Start);
        assert_eq!(r.admit(&key("1"), 2, None), Admission::Stale);
        assert_eq!(
            r.admit(&key("2"), 1, None),
            Admission::Start,
            "objects are independent"
        );
        assert_eq!(
            r.admit(&key("1"), 3, None),
            Admission::Start,
            "the same release again once it finished: run again (its result is fenced)"
        );
    }

    #[test]
    fn a_redelivery_in_flight_is_a_duplicate_and_a_newer_release_supersedes() {
        let mut r = Releases::default();
        assert_eq!(r.admit(&key("1"), 4, None), Admission::Start);
        assert_eq!(r.admit(&key("1"), 4, Some(4)), Admission::Duplicate);
        assert_eq!(r.admit(&key("1"), 5, Some(4)), Admission::Supersede);
        assert_eq!(
            r.admit(&key("1"), 4, Some(5)),
            Admission::Stale,
            "older than the one held"
        );
    }

    #[test]
    fn the_memory_is_bounded() {
        let mut r = Releases::default();
        for i in 0..MAX_SEEN + 1 {
            r.admit(&key(&i.to_string()), 1, None);
        }
        assert_eq!(r.len(), 1, "cleared when full, then the newest remembered");
    }
}
