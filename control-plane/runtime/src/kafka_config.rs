//! Kafka client configuration: one function per role (producer, group consumer, admin client),
//! each the settings every client shares, then the role's, then the caller's extra properties
//! (security, tuning) — applied once, last, so they win.
//!
//! Works with any Kafka-protocol broker; nothing here relies on a test broker's quirks.

use std::fmt;
use std::time::Duration;

use rdkafka::config::ClientConfig;

use crate::kafka_logs;
use crate::kafka_security::is_secret_property;

/// Bound on one record's delivery (`message.timeout.ms`): a send resolves, delivered or failed,
/// within about this long.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a process's clients connect, and with what.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// `bootstrap.servers`: comma-separated `host:port`.
    pub bootstrap_servers: String,
    /// Client properties passed to every client, e.g. `security.protocol`, `sasl.*`, `ssl.*`,
    /// or tuning such as `message.timeout.ms`. Applied after the role's own settings.
    pub extra: Vec<(String, String)>,
    /// Client id prefix: each client is `<client_id>-<role>`.
    pub client_id: String,
}

impl fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("extra", &masked(&self.extra))
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// `extra` as it may be shown: the values of secret-looking keys (passwords, keys, tokens,
/// JAAS configurations) masked.
pub fn masked(extra: &[(String, String)]) -> Vec<(&str, &str)> {
    extra
        .iter()
        .map(|(k, v)| {
            let shown = if is_secret_property(k) {
                "***"
            } else {
                v.as_str()
            };
            (k.as_str(), shown)
        })
        .collect()
}

/// Client properties Strata sets itself and that extra properties (`--kafka-property`) may not
/// change: the delivery and offset guarantees of the control plane and the agents depend on them
/// (which broker and group, idempotent `acks=all` production, offsets stored only after the work
/// is durable, where a new group starts, no topic created by accident).
pub const PROTECTED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "allow.auto.create.topics",
];

/// Refuses `extra` properties that would override a [`PROTECTED_PROPERTIES`] one, naming it.
pub fn check_extra(extra: &[(String, String)]) -> Result<(), String> {
    match extra
        .iter()
        .find(|(k, _)| PROTECTED_PROPERTIES.contains(&k.trim()))
    {
        Some((key, _)) => Err(format!(
            "Kafka property {} is set by Strata and may not be overridden (its delivery and \
             offset guarantees depend on it)",
            key.trim()
        )),
        None => Ok(()),
    }
}

/// A client of `role`: the settings every client shares (bootstrap servers, client id, no topic
/// auto-creation — topics are created explicitly, as on a broker with auto-creation off —
/// reconnects within 2 s of a broker coming back, librdkafka's log threshold), then `role_settings`,
/// then `extra`.
fn client(
    settings: &ClientSettings,
    role: &str,
    role_settings: impl FnOnce(&mut ClientConfig),
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.bootstrap_servers)
        .set("client.id", format!("{}-{role}", settings.client_id))
        .set("allow.auto.create.topics", "false")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "2000")
        .set("socket.connection.setup.timeout.ms", "10000")
        .set_log_level(kafka_logs::threshold());
    role_settings(&mut config);
    for (key, value) in &settings.extra {
        config.set(key.trim(), value);
    }
    config
}

/// A producer (client `<client_id>-producer`): idempotent (no duplicates or reordering from
/// internal retries), `acks=all`, 5 ms linger (batches what is sent together), and every
/// record's fate known within [`DELIVERY_TIMEOUT`]. A topic unknown to the broker fails its
/// records after at most 5 s (`topic.metadata.propagation.max.ms`, default 30 s, longer than the
/// delivery timeout, which would report a missing topic as a bare timeout).
pub fn producer(settings: &ClientSettings) -> ClientConfig {
    client(settings, "producer", |config| {
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .set("topic.metadata.propagation.max.ms", "5000");
    })
}

/// A consumer in `group` (client `<client_id>-<role>`): joins in about 3 s (6 s session, 500 ms
/// heartbeats; the librdkafka default of 45 s takes ~23 s), low-latency fetches (10 ms), reads
/// from the earliest record when the group has no offset, stores offsets only when the
/// application says (`enable.auto.offset.store=false`: after its work is durable), auto-commits
/// them every second, cooperative-sticky assignment (a joining member does not stop the others).
/// `tune` adds the caller's own settings (before `extra`).
pub fn consumer(
    settings: &ClientSettings,
    role: &str,
    group: &str,
    tune: impl FnOnce(&mut ClientConfig),
) -> ClientConfig {
    client(settings, role, |config| {
        config
            .set("group.id", group)
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("fetch.wait.max.ms", "10")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky");
        tune(config);
    })
}

/// An admin client (client `<client_id>-admin`): topic creation, metadata.
pub fn admin(settings: &ClientSettings) -> ClientConfig {
    client(settings, "admin", |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &[(&str, &str)]) -> ClientSettings {
        ClientSettings {
            bootstrap_servers: "127.0.0.1:9092".into(),
            extra: extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            client_id: "strata-x".into(),
        }
    }

    #[test]
    fn extra_properties_are_applied_last() {
        let s = settings(&[
            ("message.timeout.ms", "30000"),
            (" fetch.wait.max.ms", "50"),
        ]);
        let p = producer(&s);
        assert_eq!(p.get("message.timeout.ms"), Some("30000"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("client.id"), Some("strata-x-producer"));
        let c = consumer(&s, "results", "g", |c| {
            c.set("fetch.wait.max.ms", "20");
        });
        assert_eq!(c.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(c.get("group.id"), Some("g"));
        assert_eq!(c.get("client.id"), Some("strata-x-results"));
        assert_eq!(admin(&s).get("client.id"), Some("strata-x-admin"));
    }

    #[test]
    fn secrets_are_masked() {
        let s = settings(&[("sasl.password", "hunter2"), ("sasl.username", "me")]);
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("me"),
            "{shown}"
        );
    }
}
