//! Property tests of the retry policy: bounds of the jittered backoff, monotone ceilings, and the
//! attempt budget.

use std::time::Duration;

use proptest::prelude::*;
use strata_core::retry::RetryPolicy;

/// Valid policies with a ×2 multiplier: base up to 10 s, cap from base up to 1 h.
fn doubling_policy() -> impl Strategy<Value = RetryPolicy> {
    (1u32..=10, 0u64..=10_000, 0u64..=3_600_000).prop_map(|(max_attempts, base_ms, extra_ms)| {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(base_ms),
            multiplier: 2.0,
            max_backoff: Duration::from_millis(base_ms + extra_ms),
        }
    })
}

/// Valid policies with any multiplier in [1, 10].
fn any_policy() -> impl Strategy<Value = RetryPolicy> {
    (doubling_policy(), 1.0f64..=10.0).prop_map(|(p, multiplier)| RetryPolicy { multiplier, ..p })
}

/// `min(cap, base · 2^exponent)` in exact integer arithmetic.
fn doubling_bound(p: &RetryPolicy, exponent: u32) -> Duration {
    let base = p.initial_backoff.as_nanos();
    let cap = p.max_backoff.as_nanos();
    let bound = if base == 0 {
        0
    } else if exponent >= 64 {
        cap
    } else {
        base.saturating_mul(1u128 << exponent).min(cap)
    };
    Duration::from_nanos(u64::try_from(bound).unwrap())
}

fn unit() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => 0.0f64..1.0,
        1 => Just(0.0),
        1 => Just(1.0 - f64::EPSILON),
        1 => any::<f64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn backoff_stays_within_zero_and_the_doubling_bound(
        p in doubling_policy(),
        attempt in prop_oneof![0u32..80, any::<u32>()],
        u in unit(),
    ) {
        prop_assert_eq!(p.validate(), Ok(()));
        let d = p.backoff(attempt, u);
        // The brief's bound: min(cap, base · 2^attempt).
        prop_assert!(d <= doubling_bound(&p, attempt), "{d:?} above bound for attempt {attempt}");
        // The documented, tighter one: the delay after failed attempt k uses 2^(k-1).
        let ceiling = doubling_bound(&p, attempt.saturating_sub(1));
        prop_assert_eq!(p.ceiling(attempt), ceiling);
        prop_assert!(d <= ceiling);
    }

    #[test]
    fn ceiling_is_monotone_and_capped(p in any_policy(), a in any::<u32>(), b in any::<u32>()) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(p.ceiling(lo) <= p.ceiling(hi), "ceiling({lo}) > ceiling({hi})");
        prop_assert!(p.ceiling(hi) <= p.max_backoff);
        prop_assert!(p.ceiling(lo) >= p.initial_backoff.min(p.max_backoff) || lo == 0);
    }

    #[test]
    fn ceiling_is_monotone_step_by_step(p in any_policy(), start in 0u32..200) {
        let mut prev = p.ceiling(start);
        for k in start + 1..start + 64 {
            let c = p.ceiling(k);
            prop_assert!(prev <= c, "ceiling({}) = {prev:?} > ceiling({k}) = {c:?}", k - 1);
            prev = c;
        }
    }

    #[test]
    fn backoff_grows_with_the_unit(p in any_policy(), attempt in 0u32..100, a in 0.0f64..1.0, b in 0.0f64..1.0) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(p.backoff(attempt, lo) <= p.backoff(attempt, hi));
    }

    #[test]
    fn a_run_never_exceeds_max_attempts(
        p in any_policy(),
        outcomes in proptest::collection::vec(any::<bool>(), 0..32),
    ) {
        // Each failed attempt is retryable or not; count how many attempts run.
        let mut attempts = 1u32;
        for retryable in outcomes {
            if !p.should_retry(attempts, retryable) {
                break;
            }
            attempts += 1;
        }
        prop_assert!(attempts <= p.max_attempts);
        // With only retryable failures exactly max_attempts attempts run.
        let mut all = 1u32;
        while p.should_retry(all, true) {
            all += 1;
        }
        prop_assert_eq!(all, p.max_attempts);
    }
}

#[test]
fn default_delays_follow_one_two_four_seconds() {
    let p = RetryPolicy::default();
    let ceilings: Vec<u64> = (1..=10).map(|k| p.ceiling(k).as_secs()).collect();
    assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
    assert_eq!(p.backoff(2, 0.25), Duration::from_millis(500));
}
