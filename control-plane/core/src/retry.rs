//! The retry policy: how many attempts an object gets and how long to wait between them
//! (exponential backoff with a cap and full jitter).
//!
//! Pure arithmetic. It owns no state and must not read a clock or a random number generator:
//! the caller passes the attempt number and a uniform random `unit` in `[0, 1)`, so every delay
//! is reproducible in tests. It must not depend on the state machine, the planner or any I/O.
//!
//! # Attempt numbering
//!
//! Attempts are numbered from **1** (the first run of an object is attempt 1). The delay that
//! follows failed attempt `k` has the ceiling `min(max_backoff, initial_backoff ·
//! multiplier^(k-1))`: with the defaults, the wait after attempt 1 is drawn from `[0, 1 s]`,
//! after attempt 2 from `[0, 2 s]`, after attempt 3 from `[0, 4 s]`, …, never more than 5 min.
//! Attempt `0` is treated like attempt 1.
//!
//! Attempt `k` may be followed by another one only if `k < max_attempts`: an object never runs
//! more than `max_attempts` times (per run; see [`crate::machine`] for replays).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How an object is retried after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Total attempts allowed, the first one included (≥ 1). `1` means "never retry".
    pub max_attempts: u32,
    /// Ceiling of the delay after the first failed attempt.
    pub initial_backoff: Duration,
    /// Growth of the ceiling from one failed attempt to the next (finite, ≥ 1).
    pub multiplier: f64,
    /// Cap of the ceiling (≥ `initial_backoff`).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 3 attempts, 1 s × 2, capped at 5 min (`docs/design.md#retries`).
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Why a [`RetryPolicy`] is not usable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetryPolicyError {
    /// `max_attempts` is 0: an object could never run.
    #[error("retry policy: max_attempts must be at least 1, got 0")]
    ZeroMaxAttempts,
    /// `multiplier` is NaN or infinite.
    #[error("retry policy: multiplier must be a finite number, got {0}")]
    MultiplierNotFinite(f64),
    /// `multiplier` is below 1: delays would shrink.
    #[error("retry policy: multiplier must be at least 1, got {0}")]
    MultiplierBelowOne(f64),
    /// `initial_backoff` is larger than `max_backoff`.
    #[error("retry policy: initial_backoff ({initial:?}) is larger than max_backoff ({max:?})")]
    InitialAboveMax {
        /// The configured initial backoff.
        initial: Duration,
        /// The configured cap.
        max: Duration,
    },
}

impl RetryPolicy {
    /// Checks the policy; every other method assumes it passed (and stays total if it did not:
    /// no panic, no NaN, no overflow).
    pub fn validate(&self) -> Result<(), RetryPolicyError> {
        if self.max_attempts == 0 {
            return Err(RetryPolicyError::ZeroMaxAttempts);
        }
        if !self.multiplier.is_finite() {
            return Err(RetryPolicyError::MultiplierNotFinite(self.multiplier));
        }
        if self.multiplier < 1.0 {
            return Err(RetryPolicyError::MultiplierBelowOne(self.multiplier));
        }
        if self.initial_backoff > self.max_backoff {
            return Err(RetryPolicyError::InitialAboveMax {
                initial: self.initial_backoff,
                max: self.max_backoff,
            });
        }
        Ok(())
    }

    /// The largest delay that may follow failed attempt `failed_attempt` (numbered from 1):
    /// `min(max_backoff, initial_backoff · multiplier^(failed_attempt - 1))`.
    ///
    /// Saturating: huge attempt numbers give `max_backoff`, never an overflow or a NaN.
    /// Non-decreasing in `failed_attempt` for a valid policy.
    pub fn ceiling(&self, failed_attempt: u32) -> Duration {
        let cap = self.max_backoff;
        let base = self.initial_backoff.min(cap);
        if base.is_zero() {
            return Duration::ZERO;
        }
        let exponent = failed_attempt.saturating_sub(1);
        // A multiplier of 1 (or an invalid one below 1 or NaN) never grows the delay.
        if exponent == 0 || self.multiplier.is_nan() || self.multiplier <= 1.0 {
            return base;
        }
        let factor = self.multiplier.powf(f64::from(exponent));
        let nanos = base.as_nanos() as f64 * factor;
        let cap_nanos = cap.as_nanos();
        if !nanos.is_finite() || nanos >= cap_nanos as f64 {
            return cap;
        }
        // `nanos` is finite and below the cap here, so the conversion cannot saturate.
        duration_from_nanos((nanos as u128).min(cap_nanos))
    }

    /// The delay after failed attempt `failed_attempt`, with full jitter: `unit · ceiling`, where
    /// `unit` is a uniform random number in `[0, 1)` supplied by the caller. The result is always
    /// within `[0, ceiling(failed_attempt)]`; a `unit` outside `[0, 1]` is clamped and NaN is
    /// read as 0.
    pub fn backoff(&self, failed_attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(failed_attempt);
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let ceiling_nanos = ceiling.as_nanos();
        let nanos = (ceiling_nanos as f64 * unit).floor();
        // `as` saturates; `min` keeps float rounding from ever exceeding the ceiling.
        duration_from_nanos((nanos as u128).min(ceiling_nanos))
    }

    /// Whether failed attempt `failed_attempt` (numbered from 1) is followed by another one:
    /// only for a retryable failure and while `failed_attempt < max_attempts`.
    pub fn should_retry(&self, failed_attempt: u32, retryable: bool) -> bool {
        retryable && failed_attempt < self.max_attempts
    }
}

fn duration_from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 10^9 and fits a u32.
    let sub = (nanos % NANOS_PER_SEC) as u32;
    Duration::new(secs, sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.initial_backoff, Duration::from_secs(1));
        assert_eq!(p.multiplier, 2.0);
        assert_eq!(p.max_backoff, Duration::from_secs(300));
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn ceiling_doubles_from_the_first_failed_attempt_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(0), Duration::from_secs(1));
        assert_eq!(p.ceiling(1), Duration::from_secs(1));
        assert_eq!(p.ceiling(2), Duration::from_secs(2));
        assert_eq!(p.ceiling(3), Duration::from_secs(4));
        assert_eq!(p.ceiling(9), Duration::from_secs(256));
        assert_eq!(p.ceiling(10), Duration::from_secs(300));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn backoff_scales_the_ceiling_by_the_unit() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, 0.5), Duration::from_secs(2));
        assert_eq!(p.backoff(3, 1.0), Duration::from_secs(4));
        assert_eq!(p.backoff(3, 7.0), Duration::from_secs(4));
        assert_eq!(p.backoff(3, -1.0), Duration::ZERO);
        assert_eq!(p.backoff(3, f64::NAN), Duration::ZERO);
    }

    #[test]
    fn should_retry_stops_at_max_attempts_and_on_permanent_failures() {
        let p = RetryPolicy::default();
        assert!(p.should_retry(1, true));
        assert!(p.should_retry(2, true));
        assert!(!p.should_retry(3, true));
        assert!(!p.should_retry(1, false));
        let once = RetryPolicy {
            max_attempts: 1,
            ..p
        };
        assert!(!once.should_retry(1, true));
    }

    #[test]
    fn validate_names_each_problem() {
        let p = RetryPolicy::default();
        let zero = RetryPolicy {
            max_attempts: 0,
            ..p
        };
        assert_eq!(zero.validate(), Err(RetryPolicyError::ZeroMaxAttempts));
        let shrink = RetryPolicy {
            multiplier: 0.5,
            ..p
        };
        assert_eq!(
            shrink.validate(),
            Err(RetryPolicyError::MultiplierBelowOne(0.5))
        );
        let nan = RetryPolicy {
            multiplier: f64::NAN,
            ..p
        };
        assert!(matches!(
            nan.validate(),
            Err(RetryPolicyError::MultiplierNotFinite(_))
        ));
        let inverted = RetryPolicy {
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(1),
            ..p
        };
        assert!(matches!(
            inverted.validate(),
            Err(RetryPolicyError::InitialAboveMax { .. })
        ));
        assert!(inverted.validate().unwrap_err().to_string().contains("10s"));
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let p = RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: Duration::MAX,
            multiplier: 1e300,
            max_backoff: Duration::MAX,
        };
        assert_eq!(p.ceiling(u32::MAX), Duration::MAX);
        assert!(p.backoff(u32::MAX, 0.999_999) <= Duration::MAX);
        let zero = RetryPolicy {
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            ..RetryPolicy::default()
        };
        assert_eq!(zero.ceiling(u32::MAX), Duration::ZERO);
        assert_eq!(zero.backoff(u32::MAX, 0.9), Duration::ZERO);
    }
}

/// The retry policy of every node of a batch: one policy for all, or a few distinct ones (a
/// batch's zones may differ) and each node's index into them.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePolicies {
    table: Vec<RetryPolicy>,
    /// Index into `table` per node; empty when `table` has one policy for every node.
    class: Vec<u8>,
}

/// Why a [`NodePolicies`] is not usable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NodePoliciesError {
    /// More than 256 distinct policies.
    #[error("at most 256 distinct retry policies per batch, got {0}")]
    TooMany(usize),
    /// A node names a policy that does not exist.
    #[error("node {node} names retry policy {class}, but there are {count}")]
    UnknownClass {
        /// The node.
        node: usize,
        /// Its class.
        class: u8,
        /// How many policies there are.
        count: usize,
    },
    /// One of the policies is invalid.
    #[error(transparent)]
    Policy(#[from] RetryPolicyError),
}

impl From<RetryPolicy> for NodePolicies {
    fn from(policy: RetryPolicy) -> Self {
        Self {
            table: vec![policy],
            class: Vec::new(),
        }
    }
}

impl NodePolicies {
    /// Node `i` follows `table[class[i]]`. Identical policies are merged; one policy for all
    /// nodes is stored without the per-node classes.
    pub fn per_node(table: Vec<RetryPolicy>, class: Vec<u8>) -> Result<Self, NodePoliciesError> {
        if table.len() > 256 {
            return Err(NodePoliciesError::TooMany(table.len()));
        }
        if let Some((node, &c)) = class
            .iter()
            .enumerate()
            .find(|(_, c)| usize::from(**c) >= table.len())
        {
            return Err(NodePoliciesError::UnknownClass {
                node,
                class: c,
                count: table.len(),
            });
        }
        let mut merged: Vec<RetryPolicy> = Vec::new();
        let remap: Vec<u8> = table
            .iter()
            .map(|p| match merged.iter().position(|m| m == p) {
                Some(i) => i as u8,
                None => {
                    merged.push(*p);
                    (merged.len() - 1) as u8
                }
            })
            .collect();
        let used: Vec<u8> = class.iter().map(|c| remap[usize::from(*c)]).collect();
        if merged.len() <= 1 || used.iter().all(|c| *c == used[0]) {
            let only = used.first().map_or(0, |c| usize::from(*c));
            return Ok(Self::from(merged.get(only).copied().unwrap_or_default()));
        }
        Ok(Self {
            table: merged,
            class: used,
        })
    }

    /// Checks every policy (see [`RetryPolicy::validate`]).
    pub fn validate(&self) -> Result<(), RetryPolicyError> {
        self.table.iter().try_for_each(RetryPolicy::validate)
    }

    /// The policy of node `node` (the first policy for a node out of range).
    pub fn of(&self, node: usize) -> &RetryPolicy {
        let class = self.class.get(node).map_or(0, |c| usize::from(*c));
        &self.table[class]
    }

    /// Whether nodes follow more than one policy.
    pub fn is_uniform(&self) -> bool {
        self.class.is_empty()
    }

    /// How many nodes have per-node classes (0 when uniform).
    pub fn len(&self) -> usize {
        self.class.len()
    }

    /// True when uniform.
    pub fn is_empty(&self) -> bool {
        self.class.is_empty()
    }
}

#[cfg(test)]
mod node_policy_tests {
    use super::*;

    fn attempts(n: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: n,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn nodes_follow_their_class_and_equal_policies_merge() {
        let p = NodePolicies::per_node(
            vec![attempts(3), attempts(5), attempts(3)],
            vec![0, 1, 2, 1],
        )
        .expect("valid");
        assert!(!p.is_uniform());
        assert_eq!(p.len(), 4);
        assert_eq!(
            (0..4).map(|n| p.of(n).max_attempts).collect::<Vec<_>>(),
            [3, 5, 3, 5]
        );
        let same =
            NodePolicies::per_node(vec![attempts(4), attempts(4)], vec![0, 1, 1]).expect("valid");
        assert!(same.is_uniform());
        assert_eq!(same, NodePolicies::from(attempts(4)));
        assert_eq!(same.of(99).max_attempts, 4);
    }

    #[test]
    fn bad_tables_are_refused() {
        assert!(matches!(
            NodePolicies::per_node(vec![attempts(1)], vec![0, 1]),
            Err(NodePoliciesError::UnknownClass {
                node: 1,
                class: 1,
                count: 1
            })
        ));
        assert!(matches!(
            NodePolicies::per_node(vec![attempts(1); 257], vec![]),
            Err(NodePoliciesError::TooMany(257))
        ));
        let zero =
            NodePolicies::per_node(vec![attempts(1), attempts(0)], vec![0, 1]).expect("built");
        assert_eq!(zero.validate(), Err(RetryPolicyError::ZeroMaxAttempts));
    }
}
