//! librdkafka log routing: the client library's log lines and errors go to `tracing` (target
//! `librdkafka`), each recurring warning at most once per [`LOG_INTERVAL`] per client.
//!
//! librdkafka's threshold follows what the `tracing` subscriber wants of target `librdkafka`
//! ([`threshold`]): warnings and errors by default, `Info` lines at `debug`, `Debug` lines (with
//! a `debug` client property) at `trace`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, error, trace, warn};

/// Minimum interval between two log lines about the same recurring condition.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// librdkafka's own log threshold (`ClientConfig::set_log_level`), from what the `tracing`
/// subscriber wants of target `librdkafka`.
pub fn threshold() -> RDKafkaLogLevel {
    if tracing::enabled!(target: "librdkafka", tracing::Level::TRACE) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(target: "librdkafka", tracing::Level::DEBUG) {
        RDKafkaLogLevel::Info
    } else {
        RDKafkaLogLevel::Warning
    }
}

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

/// [`LogLimiter::admit`] on the process's limiter of client lines, keyed by client and `key`.
pub fn admit(client: &str, key: &str) -> Option<u64> {
    static LIMITER: OnceLock<LogLimiter> = OnceLock::new();
    LIMITER
        .get_or_init(LogLimiter::default)
        .admit(&format!("{client}/{key}"))
}

/// Routes one librdkafka log line of `client` (`ClientContext::log`).
pub fn log(client: &str, level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error
        | RDKafkaLogLevel::Warning => {
            if let Some(suppressed) = admit(client, facility) {
                warn!(target: "librdkafka", client, facility, suppressed, "{message}");
            }
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            debug!(target: "librdkafka", client, facility, "{message}");
        }
        RDKafkaLogLevel::Debug => {
            trace!(target: "librdkafka", client, facility, "{message}");
        }
    }
}

/// Routes one client error of `client` (`ClientContext::error`): a fatal one always, others
/// rate-limited by error code.
pub fn client_error(client: &str, error: &KafkaError, reason: &str) {
    let code = error.rdkafka_error_code();
    if code == Some(RDKafkaErrorCode::Fatal) {
        error!(client, %error, reason, "kafka client hit a fatal error");
        return;
    }
    if let Some(suppressed) = admit(client, &format!("error:{code:?}")) {
        warn!(client, %error, reason, suppressed, "kafka client error");
    }
}

/// The context of a client that only logs: its lines and errors routed as above, under the
/// client name it holds.
#[derive(Debug, Clone, Copy)]
pub struct Logged(pub &'static str);

impl ClientContext for Logged {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log(self.0, level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(self.0, &error, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_suppresses_repeats() {
        let limiter = LogLimiter::default();
        assert_eq!(limiter.admit("a"), Some(0));
        assert_eq!(limiter.admit("a"), None);
        assert_eq!(limiter.admit("a"), None);
        assert_eq!(limiter.admit("b"), Some(0));
    }
}
