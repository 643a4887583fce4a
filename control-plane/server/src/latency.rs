//! A fixed-size latency histogram (log-linear buckets, ≤ 3.2% relative error) for the driver's
//! own measurements, such as release latency: the time from a result being consumed to its
//! children's Ready records being handed to the producer. Constant memory however long the
//! process runs; quantiles are read back as bucket upper bounds.

use std::time::Duration;

/// Sub-buckets per power of two: the relative width of a bucket is `1 / SUB`.
const SUB: u64 = 32;
/// Powers of two covered above the linear range (values up to 2^(5+POWERS) µs ≈ 37 hours).
const POWERS: usize = 32;
const BUCKETS: usize = SUB as usize * (POWERS + 1);

/// Counts of durations in microsecond buckets.
#[derive(Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Box<[u64]>,
    total: u64,
    max_us: u64,
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.total)
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .field("max", &self.max())
            .finish()
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max_us: 0,
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    // us >= 32: the power p >= 5 selects the group, the next 5 bits the sub-bucket.
    let p = 63 - us.leading_zeros() as u64;
    let sub = (us >> (p - 5)) - SUB;
    let group = (p - 4) as usize;
    (group * SUB as usize + sub as usize).min(BUCKETS - 1)
}

/// The largest value (µs) that falls into bucket `b`.
fn upper_bound_of(b: usize) -> u64 {
    let b = b as u64;
    if b < SUB {
        return b;
    }
    let group = b / SUB;
    let sub = b % SUB;
    let p = group + 4;
    ((SUB + sub + 1) << (p - 5)) - 1
}

impl LatencyHistogram {
    /// Records one duration `n` times (a step that released `n` objects together).
    pub fn record_n(&mut self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(us)] += n;
        self.total += n;
        self.max_us = self.max_us.max(us);
    }

    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        self.record_n(d, 1);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest duration recorded.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us)
    }

    /// The `q`-quantile (`0.0..=1.0`) as its bucket's upper bound (never above the maximum);
    /// zero when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_micros(upper_bound_of(b).min(self.max_us));
            }
        }
        self.max()
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for us in (0..200_000u64).chain([1 << 20, (1 << 33) + 7, u64::MAX / 2]) {
            let b = bucket_of(us);
            assert!(b >= last || us > 200_000, "bucket order at {us}");
            last = b;
            let ub = upper_bound_of(b);
            assert!(
                ub >= us || b == BUCKETS - 1,
                "{us} above its bucket bound {ub}"
            );
            if us >= SUB && b < BUCKETS - 1 {
                assert!(
                    (ub - us) as f64 / us as f64 <= 1.0 / SUB as f64,
                    "{us} → {ub}"
                );
            }
        }
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), Duration::ZERO);
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        h.record_n(Duration::from_millis(50), 10);
        assert_eq!(h.count(), 1010);
        let p50 = h.quantile(0.5).as_micros() as f64;
        assert!((505.0..=505.0 * 1.032).contains(&p50), "p50 {p50}");
        assert_eq!(h.quantile(1.0), Duration::from_millis(50));
        let p99 = h.quantile(0.99).as_micros();
        assert!(p99 >= 1000, "p99 {p99} includes the slow tail");
        let mut merged = LatencyHistogram::default();
        merged.merge(&h);
        merged.merge(&h);
        assert_eq!(merged.count(), 2020);
        assert_eq!(merged.quantile(0.5), h.quantile(0.5));
    }
}
