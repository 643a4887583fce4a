//! librdkafka log routing: the client library's log lines and errors go to `tracing` (target
//! `librdkafka`), each recurring warning at most once per [`LOG_INTERVAL`] per client.
//!
//! librdkafka's threshold follows what the `tracing` subscriber wants of target `librdkafka`
//! ([`threshold`]): warnings and errors by default, `Info` lines at `debug`, `Debug` lines (with
//! a `debug` client property) at `trace`.
//!
//! The last client error of the process is kept ([`last_error`]; error events, and the
//! connection failures librdkafka only logs): a readiness check that gets no answer from the
//! broker says why the clients think so (refused credentials, a certificate not trusted, a
//! connection closed by the broker) instead of a bare timeout.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, error, trace, warn};

pub use crate::log_limit::{LOG_INTERVAL, LogLimiter};

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
            if facility == "FAIL" {
                record_failure(message);
            }
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

/// A client error as a client reported it, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedError {
    /// When it was reported.
    pub at: Instant,
    /// librdkafka's code, if any.
    pub code: Option<RDKafkaErrorCode>,
    /// librdkafka's text (never holds a password: librdkafka does not print them).
    pub reason: String,
}

impl ReportedError {
    /// Whether the broker refused the client's credentials.
    pub fn is_authentication(&self) -> bool {
        matches!(
            self.code,
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
        )
    }

    /// What it means, for people: `authentication failed: …`, `TLS failed: …`, else the text.
    pub fn explain(&self) -> String {
        if self.is_authentication() {
            format!("authentication failed: {}", self.reason)
        } else if self.code == Some(RDKafkaErrorCode::SSL) {
            format!("TLS failed: {}", self.reason)
        } else {
            self.reason.clone()
        }
    }
}

static LAST_ERROR: Mutex<Option<ReportedError>> = Mutex::new(None);

/// The last error any client of this process reported, if within `within` of now.
pub fn last_error(within: Duration) -> Option<ReportedError> {
    LAST_ERROR
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .filter(|e| e.at.elapsed() <= within)
}

/// Records `error` as the process's last client error ([`last_error`]).
pub fn record_error(code: Option<RDKafkaErrorCode>, reason: &str) {
    *LAST_ERROR.lock().unwrap_or_else(|e| e.into_inner()) = Some(ReportedError {
        at: Instant::now(),
        code,
        reason: reason.to_owned(),
    });
}

/// Records a connection failure librdkafka logged (facility `FAIL`, e.g. `Disconnected: SSL
/// connection closed by peer`, which no error event reports) as the last error, its
/// `[thrd:…]: ` prefix dropped, classified by its text as the error event would be.
fn record_failure(message: &str) {
    let text = message
        .strip_prefix("[thrd:")
        .and_then(|rest| rest.split_once("]: "))
        .map_or(message, |(_, text)| text);
    let code = if text.contains("SASL authentication error") {
        Some(RDKafkaErrorCode::Authentication)
    } else if text.contains("SSL handshake failed") {
        Some(RDKafkaErrorCode::SSL)
    } else {
        None
    };
    record_error(code, text);
}

/// Routes one client error of `client` (`ClientContext::error`): a fatal one always, others
/// rate-limited by error code. Each is kept as the last error ([`last_error`]), but for the
/// summary "all brokers are down".
pub fn client_error(client: &str, error: &KafkaError, reason: &str) {
    let code = error.rdkafka_error_code();
    // "n/n brokers are down" follows each broker's own error and says nothing of why.
    if code != Some(RDKafkaErrorCode::AllBrokersDown) {
        record_error(code, reason);
    }
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
    fn the_last_error_is_kept_and_explained() {
        record_error(
            Some(RDKafkaErrorCode::Authentication),
            "SASL authentication error: x",
        );
        let e = last_error(Duration::from_secs(60)).expect("just recorded");
        assert_eq!(
            e.explain(),
            "authentication failed: SASL authentication error: x"
        );
        assert!(last_error(Duration::ZERO).is_none_or(|e| e.at.elapsed().is_zero()));
        record_error(Some(RDKafkaErrorCode::SSL), "certificate verify failed");
        assert_eq!(
            last_error(Duration::from_secs(60)).unwrap().explain(),
            "TLS failed: certificate verify failed"
        );
        log(
            "test",
            RDKafkaLogLevel::Warning,
            "FAIL",
            "[thrd:sasl_ssl://h:1/bootstrap]: sasl_ssl://h:1/bootstrap: SASL authentication error: \
             invalid credentials",
        );
        assert_eq!(
            last_error(Duration::from_secs(60)).unwrap().explain(),
            "authentication failed: sasl_ssl://h:1/bootstrap: SASL authentication error: invalid \
             credentials"
        );
        log(
            "test",
            RDKafkaLogLevel::Warning,
            "FAIL",
            "[thrd:ssl://h:1/bootstrap]: ssl://h:1/bootstrap: Disconnected: SSL connection closed",
        );
        assert_eq!(
            last_error(Duration::from_secs(60)).unwrap().explain(),
            "ssl://h:1/bootstrap: Disconnected: SSL connection closed"
        );
    }

    #[test]
    fn the_limiter_suppresses_repeats() {
        let limiter = LogLimiter::default();
        assert_eq!(limiter.admit("a"), Some(0));
        assert_eq!(limiter.admit("a"), None);
        assert_eq!(limiter.admit("a"), None);
        assert_eq!(limiter.admit("b"), Some(0));
    }
}
