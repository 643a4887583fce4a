//! The agent's command line: every flag also reads a `STRATA_*` environment variable.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use strata_client::{ClientError, IdentityFiles, Security, Token};
use strata_runtime::kafka_security::{self, Secret, SecurityArgs};

/// The built-in processors (`docs/design.md#agents-and-processors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProcessorKind {
    /// Sleeps per zone and fails by id suffix or rate (the seed's behaviour).
    Simulate,
    /// Runs a command per object: the object as JSON on stdin, `STRATA_*` in its environment.
    Exec,
    /// POSTs the object as JSON to a URL.
    Http,
}

/// `strata-worker-agent`: loads the objects of one zone.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "strata-worker-agent",
    version,
    about = "Strata worker agent: registers with the control plane for one zone, consumes the \
             zone's Ready topic in the zone's consumer group, runs a processor per object (up to \
             --concurrency at once) and reports each result. SIGTERM drains: no new work, \
             in-flight work finishes within --drain-grace-secs (the rest is handed back as \
             retryable), offsets are committed, the agent deregisters and exits 0.",
    after_help = "Examples:\n  strata-worker-agent --zone raw --processor simulate \
                  --simulate-duration-ms 50\n  strata-worker-agent --zone std --processor exec \
                  --exec-command ./load.sh --concurrency 8\n  strata-worker-agent --zone app \
                  --processor http --http-url http://loader:8080/load\n\nKafka SASL password: \
                  STRATA_KAFKA_SASL_PASSWORD (environment only) or --kafka-sasl-password-file; \
                  there is no flag for it, the control plane never sends credentials, and it is \
                  never logged.\n\nControl plane token: --control-plane-token-file or \
                  STRATA_CONTROL_PLANE_TOKEN (environment only: a flag would show it in `ps`); \
                  sent as `authorization: Bearer …`, never logged.\n\nTraces: set \
                  OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://127.0.0.1:4317) to export a `process` \
                  span per attempt over OTLP/gRPC, a child of the control plane's span named by \
                  the Ready's traceparent; OTEL_SERVICE_NAME (default strata-worker-agent) and \
                  the other standard OTEL_* variables apply."
)]
pub struct AgentArgs {
    /// The zone this agent serves (one of the control plane's zones, e.g. raw, std, app).
    #[arg(long, env = "STRATA_ZONE")]
    pub zone: String,

    /// Most objects processed at once (also the capacity registered with the control plane).
    #[arg(long, env = "STRATA_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,

    /// The control plane's gRPC endpoint (`https://` for TLS).
    #[arg(
        long,
        env = "STRATA_CONTROL_PLANE",
        default_value = "http://127.0.0.1:50051"
    )]
    pub control_plane: String,

    /// PEM file of the CA certificates that signed the control plane's certificate (TLS; default
    /// with an https:// endpoint: the system's CAs). A `host:port` endpoint is then reached over
    /// TLS.
    #[arg(long, env = "STRATA_CONTROL_PLANE_CA")]
    pub control_plane_ca: Option<PathBuf>,

    /// PEM certificate (chain) the agent presents to a control plane that verifies client
    /// certificates (mutual TLS); with --control-plane-key.
    #[arg(long, env = "STRATA_CONTROL_PLANE_CERT")]
    pub control_plane_cert: Option<PathBuf>,

    /// PEM private key of --control-plane-cert.
    #[arg(long, env = "STRATA_CONTROL_PLANE_KEY")]
    pub control_plane_key: Option<PathBuf>,

    /// File holding the bearer token sent with every call to the control plane (surrounding
    /// white space ignored). Or STRATA_CONTROL_PLANE_TOKEN (environment only, not both).
    #[arg(long, env = "STRATA_CONTROL_PLANE_TOKEN_FILE")]
    pub control_plane_token_file: Option<PathBuf>,

    /// Kafka bootstrap servers (`host:port,...`). Unset = the addresses the control plane sends
    /// at registration.
    #[arg(long, env = "STRATA_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,

    /// Extra librdkafka property for the agent's consumer and producer (`key=value`, repeatable;
    /// e.g. tuning, or security settings the dedicated flags below do not cover). Security
    /// settings are never sent by the control plane.
    #[arg(long = "kafka-property", env = "STRATA_KAFKA_PROPERTIES", hide_env_values = true, value_delimiter = ',', value_parser = parse_key_value)]
    pub kafka_properties: Vec<(String, String)>,

    /// Kafka `security.protocol`: plaintext, ssl, sasl_plaintext or sasl_ssl (default: sasl_ssl
    /// with --kafka-sasl-username, ssl with --kafka-ca alone, else plaintext).
    #[arg(long, env = "STRATA_KAFKA_SECURITY_PROTOCOL")]
    pub kafka_security_protocol: Option<String>,

    /// Kafka SASL mechanism: SCRAM-SHA-512 (the default with a user name), SCRAM-SHA-256 or
    /// PLAIN.
    #[arg(long, env = "STRATA_KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,

    /// Kafka SASL user name. Its password: STRATA_KAFKA_SASL_PASSWORD or
    /// --kafka-sasl-password-file.
    #[arg(long, env = "STRATA_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,

    /// File holding the Kafka SASL password (a trailing line break is ignored).
    #[arg(long, env = "STRATA_KAFKA_SASL_PASSWORD_FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,

    /// PEM file of the CA certificates that signed the brokers' certificates (librdkafka's
    /// `ssl.ca.location`; default: the system's CAs).
    #[arg(long, env = "STRATA_KAFKA_CA")]
    pub kafka_ca: Option<PathBuf>,

    /// The Kafka SASL password, from STRATA_KAFKA_SASL_PASSWORD only (no flag).
    #[arg(skip = kafka_security::password_from_env())]
    pub kafka_sasl_password: Option<Secret>,

    /// Address of the HTTP admin port (`/metrics`, `/health/liveness`, `/health/readiness`).
    /// Loopback by default: give a routable address (e.g. `0.0.0.0:9464`) for a scraper elsewhere.
    #[arg(long, env = "STRATA_ADMIN_ADDR", default_value = "127.0.0.1:9464")]
    pub admin_addr: SocketAddr,

    /// On SIGTERM, how long in-flight objects may still run before they are handed back.
    #[arg(long, env = "STRATA_DRAIN_GRACE_SECS", default_value_t = 30)]
    pub drain_grace_secs: u64,

    /// Host (or pod) name shown by `ListAgents`. Default: the machine's host name.
    #[arg(long, env = "STRATA_HOSTNAME")]
    pub hostname: Option<String>,

    /// Label shown by `ListAgents` (`key=value`, repeatable).
    #[arg(long = "label", env = "STRATA_LABELS", value_delimiter = ',', value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,

    /// The processor that loads each object.
    #[arg(long, env = "STRATA_PROCESSOR", value_enum, default_value_t = ProcessorKind::Simulate)]
    pub processor: ProcessorKind,

    /// simulate: processing time of every object, in milliseconds.
    #[arg(long, env = "STRATA_SIMULATE_DURATION_MS", default_value_t = 100)]
    pub simulate_duration_ms: u64,

    /// simulate: processing time of one zone (`zone=ms`, repeatable), overriding
    /// --simulate-duration-ms.
    #[arg(long = "simulate-zone-duration", env = "STRATA_SIMULATE_ZONE_DURATIONS", value_delimiter = ',', value_parser = parse_key_value)]
    pub simulate_zone_durations: Vec<(String, String)>,

    /// simulate: objects whose id ends with this fail permanently (repeatable).
    #[arg(
        long = "simulate-fail-suffix",
        env = "STRATA_SIMULATE_FAIL_SUFFIXES",
        value_delimiter = ','
    )]
    pub simulate_fail_suffixes: Vec<String>,

    /// simulate: probability in [0, 1] of a retryable failure per attempt.
    #[arg(long, env = "STRATA_SIMULATE_FAIL_RATE", default_value_t = 0.0)]
    pub simulate_fail_rate: f64,

    /// exec: the program run per object (the object as JSON on stdin).
    #[arg(long, env = "STRATA_EXEC_COMMAND")]
    pub exec_command: Option<PathBuf>,

    /// exec: an argument passed to the program (repeatable).
    #[arg(
        long = "exec-arg",
        env = "STRATA_EXEC_ARGS",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    pub exec_args: Vec<String>,

    /// exec: a variable of the agent's environment the program also gets (repeatable). Without
    /// it the program gets only PATH, HOME, USER, LOGNAME, LANG, LC_ALL, LC_CTYPE, TZ and TMPDIR
    /// of the agent's environment, and its own STRATA_* variables; STRATA_* names of the agent
    /// (its settings, token and Kafka password) are never passed.
    #[arg(
        long = "exec-pass-env",
        env = "STRATA_EXEC_PASS_ENV",
        value_delimiter = ','
    )]
    pub exec_pass_env: Vec<String>,

    /// exec: the exit code meaning "temporary failure, retry" (any other non-zero code is
    /// permanent).
    #[arg(long, env = "STRATA_EXEC_TEMP_FAIL_CODE", default_value_t = 75)]
    pub exec_temp_fail_code: i32,

    /// http: the URL each object is POSTed to as JSON.
    #[arg(long, env = "STRATA_HTTP_URL")]
    pub http_url: Option<String>,

    /// http: a request header (`name=value`, repeatable), e.g. an authorization token.
    #[arg(long = "http-header", env = "STRATA_HTTP_HEADERS", value_delimiter = ',', value_parser = parse_key_value)]
    pub http_headers: Vec<(String, String)>,
}

/// The environment variable holding the control plane's bearer token (no flag: a token on a
/// command line shows in `ps`).
pub const CONTROL_PLANE_TOKEN_ENV: &str = "STRATA_CONTROL_PLANE_TOKEN";

impl AgentArgs {
    /// How to reach the control plane: its CA, the agent's certificate, the token. The error
    /// names the flag or file, never the token.
    pub fn control_plane_security(&self) -> Result<Security, ClientError> {
        Ok(Security {
            ca: self.control_plane_ca.clone(),
            identity: IdentityFiles::pair(
                self.control_plane_cert.clone(),
                self.control_plane_key.clone(),
                "--control-plane-cert",
                "--control-plane-key",
            )?,
            token: Token::from_file_or_env(
                self.control_plane_token_file.as_deref(),
                "--control-plane-token-file",
                CONTROL_PLANE_TOKEN_ENV,
            )?,
        })
    }

    /// Every extra property of the agent's Kafka clients: the security settings' (the SASL
    /// password in clear, for the clients only), then `--kafka-property`'s, which may not override
    /// a protected property. The error names the bad or conflicting setting, never the password.
    pub fn kafka_client_properties(&self) -> Result<Vec<(String, String)>, String> {
        strata_runtime::kafka_config::check_extra(&self.kafka_properties)?;
        SecurityArgs {
            security_protocol: self.kafka_security_protocol.clone(),
            sasl_mechanism: self.kafka_sasl_mechanism.clone(),
            sasl_username: self.kafka_sasl_username.clone(),
            sasl_password_file: self.kafka_sasl_password_file.clone(),
            sasl_password: self.kafka_sasl_password.clone(),
            ca: self.kafka_ca.clone(),
        }
        .resolve()?
        .with_extra(&self.kafka_properties)
    }

    /// The drain grace period.
    pub fn drain_grace(&self) -> Duration {
        Duration::from_secs(self.drain_grace_secs)
    }

    /// The host name to register: the flag, else the kernel's, else `unknown`.
    pub fn hostname(&self) -> String {
        self.hostname
            .clone()
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "unknown".into())
    }

    /// The simulate processor's per-zone durations. The error names the bad entry.
    pub fn simulate_zone_durations(&self) -> Result<BTreeMap<String, Duration>, String> {
        self.simulate_zone_durations
            .iter()
            .map(|(zone, ms)| {
                ms.parse::<u64>()
                    .map(|ms| (zone.clone(), Duration::from_millis(ms)))
                    .map_err(|_| {
                        format!(
                            "--simulate-zone-duration {zone}={ms}: the duration must be whole milliseconds"
                        )
                    })
            })
            .collect()
    }
}

/// `key=value` → `(key, value)`; the error names the token.
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_bad_tokens_are_named() {
        let args = AgentArgs::try_parse_from([
            "strata-worker-agent",
            "--zone",
            "raw",
            "--concurrency",
            "8",
            "--label",
            "team=data",
            "--simulate-zone-duration",
            "raw=5",
        ])
        .expect("parses");
        assert_eq!(args.zone, "raw");
        assert_eq!(args.concurrency, 8);
        assert_eq!(
            args.admin_addr,
            "127.0.0.1:9464".parse().unwrap(),
            "the admin port binds loopback unless told otherwise"
        );
        assert_eq!(args.labels, vec![("team".into(), "data".into())]);
        assert_eq!(
            args.simulate_zone_durations().expect("ms")["raw"],
            Duration::from_millis(5)
        );
        let err = AgentArgs::try_parse_from(["a", "--zone", "raw", "--label", "oops"])
            .expect_err("not key=value")
            .to_string();
        assert!(err.contains("\"oops\" is not key=value"), "{err}");
        assert!(AgentArgs::try_parse_from(["a", "--zone", "raw", "--concurrency", "0"]).is_err());
    }

    #[test]
    fn kafka_properties_cannot_override_what_the_guarantees_rest_on() {
        for property in ["group.id=evil", "enable.auto.offset.store=true", "acks=1"] {
            let args =
                AgentArgs::try_parse_from(["a", "--zone", "raw", "--kafka-property", property])
                    .expect("parses");
            let err = args.kafka_client_properties().expect_err(property);
            let key = property.split('=').next().unwrap_or_default();
            assert!(
                err.contains(key) && err.contains("may not be overridden"),
                "{err}"
            );
        }
    }

    #[test]
    fn kafka_credentials_come_from_flags_and_the_password_from_elsewhere() {
        let mut args = AgentArgs::try_parse_from([
            "a",
            "--zone",
            "raw",
            "--kafka-sasl-username",
            "strata",
            "--kafka-property",
            "linger.ms=1",
        ])
        .expect("parses");
        let err = args.kafka_client_properties().expect_err("no password");
        assert!(err.contains("STRATA_KAFKA_SASL_PASSWORD"), "{err}");
        args.kafka_sasl_password = Some(Secret::new("hunter2"));
        let properties = args.kafka_client_properties().expect("complete");
        assert!(properties.contains(&("sasl.password".into(), "hunter2".into())));
        assert!(properties.contains(&("sasl.mechanisms".into(), "SCRAM-SHA-512".into())));
        assert!(properties.contains(&("linger.ms".into(), "1".into())));
        assert!(!format!("{args:?}").contains("hunter2"));
        // There is no flag for the password.
        assert!(
            AgentArgs::try_parse_from(["a", "--zone", "raw", "--kafka-sasl-password", "x"])
                .is_err()
        );
    }
}
