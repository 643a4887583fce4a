//! Rate-limited logging: a recurring condition (a refused record, a client error) is logged at
//! most once per [`LOG_INTERVAL`] per key, with the number of repeats suppressed meanwhile.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Minimum interval between two log lines about the same recurring condition.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Logs a recurring condition at most once per [`LOG_INTERVAL`] per key, with the number of
/// suppressed repeats.
#[derive(Debug, Default)]
pub struct LogLimiter {
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl LogLimiter {
    /// `Some(suppressed since the last line)` when a line for `key` should be logged now.
    pub fn admit(&self, key: &str) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if seen.len() > 256 {
            seen.retain(|_, (at, _)| now.duration_since(*at) < LOG_INTERVAL);
        }
        match seen.get_mut(key) {
            Some((at, suppressed)) if now.duration_since(*at) < LOG_INTERVAL => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = std::mem::take(suppressed);
                *at = now;
                Some(n)
            }
            None => {
                seen.insert(key.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}
