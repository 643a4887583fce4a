//! The seed's `simulate` processor (`docs/design.md#agents-and-processors`): a per-zone sleep, then an outcome decided by the
//! object id and a reproducible draw.

use std::collections::BTreeMap;
use std::time::Duration;

use strata_proto::v1::ObjectReady;

use super::{Outcome, Processor};

/// The seed's behaviour: every object takes its zone's duration, and fails if its id ends with
/// one of `fail_suffixes` (permanently) or, with probability `fail_rate`, retryably. The rate
/// is drawn from a hash of (batch, object, attempt), so runs are reproducible.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Simulate {
    /// Processing time per zone.
    pub durations: BTreeMap<String, Duration>,
    /// Processing time of zones not in `durations`.
    pub default_duration: Duration,
    /// Ids ending with one of these fail permanently.
    pub fail_suffixes: Vec<String>,
    /// Probability in `[0, 1]` of a retryable failure.
    pub fail_rate: f64,
}

impl Simulate {
    /// What this processor answers for `ready`, without waiting.
    pub fn decide(&self, ready: &ObjectReady) -> Outcome {
        if let Some(suffix) = self
            .fail_suffixes
            .iter()
            .find(|s| !s.is_empty() && ready.object_id.ends_with(s.as_str()))
        {
            return Outcome::Failed {
                retryable: false,
                error: format!(
                    "simulated permanent failure: object {} ends with {suffix:?}",
                    ready.object_id
                ),
            };
        }
        let key = format!("{}/{}/{}", ready.batch_id, ready.object_id, ready.attempt);
        let draw = xxhash_rust::xxh3::xxh3_64(key.as_bytes()) as f64 / u64::MAX as f64;
        if draw < self.fail_rate {
            return Outcome::Failed {
                retryable: true,
                error: format!(
                    "simulated transient failure of attempt {} (rate {})",
                    ready.attempt, self.fail_rate
                ),
            };
        }
        Outcome::Loaded {
            info: "simulated".into(),
        }
    }

    fn duration(&self, zone: &str) -> Duration {
        self.durations
            .get(zone)
            .copied()
            .unwrap_or(self.default_duration)
    }
}

impl Processor for Simulate {
    async fn process(&self, ready: &ObjectReady) -> Outcome {
        let d = self.duration(&ready.zone);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        self.decide(ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(id: &str, attempt: u32) -> ObjectReady {
        ObjectReady {
            batch_id: "b-1".into(),
            object_id: id.into(),
            zone: "raw".into(),
            attempt,
            ..Default::default()
        }
    }

    #[test]
    fn suffixes_fail_permanently_and_the_rate_is_reproducible() {
        let p = Simulate {
            fail_suffixes: vec!["13".into()],
            fail_rate: 0.5,
            ..Simulate::default()
        };
        assert!(matches!(
            p.decide(&ready("1013", 1)),
            Outcome::Failed {
                retryable: false,
                ..
            }
        ));
        let outcomes: Vec<bool> = (1..=400)
            .map(|a| matches!(p.decide(&ready("1001", a)), Outcome::Loaded { .. }))
            .collect();
        let loaded = outcomes.iter().filter(|l| **l).count();
        assert!((140..=260).contains(&loaded), "about half of 400: {loaded}");
        let again: Vec<bool> = (1..=400)
            .map(|a| matches!(p.decide(&ready("1001", a)), Outcome::Loaded { .. }))
            .collect();
        assert_eq!(outcomes, again);
        let never = Simulate::default();
        assert!(matches!(
            never.decide(&ready("1013", 1)),
            Outcome::Loaded { .. }
        ));
    }
}
