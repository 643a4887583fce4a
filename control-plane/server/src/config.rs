//! Configuration: clap flags, each with a `STRATA_*` environment variable, over an optional TOML
//! file, over defaults that work locally. [`Config::validate`] checks the result; `--print-config`
//! shows the effective configuration (secrets masked).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use strata_core::Zone;
use strata_core::preflight::PreflightRules;
use strata_core::retry::RetryPolicy;
use strata_runtime::kafka_security::{self, KafkaSecurity, Secret, SecurityArgs};

use crate::quota::QuotaSettings;
use crate::tls::TlsFiles;

/// Command-line flags and environment variables of `strata-control-plane`.
#[derive(Debug, Clone, Default, Parser, Serialize, Deserialize)]
#[command(
    name = "strata-control-plane",
    version,
    about = "Strata control plane: plans batches of data objects and drives them to loaded through worker agents over Kafka, with state in Redis.",
    long_about = None,
    after_help = "Kafka SASL password: STRATA_KAFKA_SASL_PASSWORD (environment only) or \
                  --kafka-sasl-password-file; there is no flag for it, and it is never printed \
                  (--print-config shows the file's path).\n\n\
                  Traces: set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://127.0.0.1:4317) to export \
                  OpenTelemetry traces over OTLP/gRPC (one trace per batch, one span per object \
                  attempt); OTEL_SERVICE_NAME (default strata-control-plane) and the other \
                  standard OTEL_* variables apply."
)]
#[serde(default, deny_unknown_fields)]
pub struct Flags {
    /// TOML file with any of these settings (flags and environment variables win over it), and
    /// the per-zone settings that only a file can hold: `[zones_config.<zone>]` with
    /// `max_attempts`, `initial_backoff_ms`, `backoff_multiplier`, `max_backoff_ms`,
    /// `execution_timeout_secs`, `expected_duration_ms`, and `[zones_config.<zone>.preflight]`
    /// with `require_attributes`, `reject_ids`, `allow_ids` (globs).
    #[arg(long, env = "STRATA_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,

    /// A command to run instead of serving.
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<Command>,

    /// gRPC listen address.
    #[arg(long, env = "STRATA_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,

    /// The auth file: bearer tokens (their SHA-256) and client-certificate subjects, each with
    /// its roles (docs/SECURITY.md; `strata-control-plane new-token` adds tokens). Re-read on
    /// SIGHUP. Required unless --insecure.
    #[arg(long, env = "STRATA_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,

    /// Serve every caller of the gRPC port with every role, without credentials (for a trusted
    /// network only; logged and shown in the readiness body). Refused with --auth-file.
    #[arg(long, env = "STRATA_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,

    /// PEM certificate chain of the gRPC port (its own certificate first): gRPC is served over
    /// TLS. With --tls-key. Re-read, with the key and the client CA, on SIGHUP.
    #[arg(long, env = "STRATA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "STRATA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates that sign client certificates (mutual TLS, with --tls-cert): a client
    /// certificate is verified against them when presented; a client without one still gets
    /// through the handshake (what it may do is up to authorization).
    #[arg(long, env = "STRATA_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// HTTP admin listen address: `/metrics` (Prometheus), `/health/liveness`,
    /// `/health/readiness` (default 127.0.0.1:9463; agents default to 9464).
    #[arg(long, env = "STRATA_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,

    /// Kafka bootstrap servers (comma-separated host:port).
    #[arg(long, env = "STRATA_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,

    /// Extra Kafka client properties (librdkafka's), `key=value`, repeatable (e.g. tuning, or
    /// security settings the dedicated flags below do not cover). Secret-looking values are
    /// masked when shown.
    #[arg(
        long = "kafka-property",
        env = "STRATA_KAFKA_PROPERTIES",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub kafka_properties: Option<Vec<String>>,

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

    /// The Kafka SASL password, from STRATA_KAFKA_SASL_PASSWORD only (no flag, no file key).
    #[arg(skip = kafka_security::password_from_env())]
    #[serde(skip)]
    pub kafka_sasl_password: Option<Secret>,

    /// Prefix of every topic name (`<prefix>.ready.<zone>`, `<prefix>.results`, …).
    #[arg(long, env = "STRATA_TOPIC_PREFIX")]
    pub topic_prefix: Option<String>,

    /// Partitions of topics the control plane creates.
    #[arg(long, env = "STRATA_TOPIC_PARTITIONS")]
    pub topic_partitions: Option<i32>,

    /// Replication factor of topics the control plane creates (default 1; 3 on a production
    /// cluster). More than the cluster's brokers is refused at start.
    #[arg(long, env = "STRATA_TOPIC_REPLICATION_FACTOR")]
    pub topic_replication_factor: Option<i32>,

    /// `min.insync.replicas` of topics the control plane creates (default: the broker's; 2 with
    /// a replication factor of 3). At most the replication factor.
    #[arg(long, env = "STRATA_TOPIC_MIN_INSYNC_REPLICAS")]
    pub topic_min_insync_replicas: Option<i32>,

    /// Consumer group of the control plane on the results topic.
    #[arg(long, env = "STRATA_CONSUMER_GROUP")]
    pub consumer_group: Option<String>,

    /// Redis URL (`redis://[:password@]host:port/db`; `rediss://` for TLS).
    #[arg(long, env = "STRATA_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key.
    #[arg(long, env = "STRATA_KEY_PREFIX")]
    pub key_prefix: Option<String>,

    /// How long a finished batch stays queryable in Redis, in seconds.
    #[arg(long, env = "STRATA_FINISHED_TTL_SECS")]
    pub finished_ttl_secs: Option<u64>,

    /// Zones whose topics are created at start-up (comma-separated).
    #[arg(long, env = "STRATA_ZONES", value_delimiter = ',')]
    pub zones: Option<Vec<String>>,

    /// Largest accepted batch, in objects.
    #[arg(long, env = "STRATA_MAX_OBJECTS")]
    pub max_objects: Option<usize>,

    /// Largest accepted gRPC message, in bytes (larger batches use SubmitBatchStream).
    #[arg(long, env = "STRATA_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,

    /// Most bytes one SubmitBatchStream may carry (object chunks as encoded, or the catalogue
    /// document), checked as each chunk arrives: the most a submission holds in memory before it
    /// is planned. Default 256 MiB (a 1,000,000-object seed catalogue is about 212 MB).
    #[arg(long, env = "STRATA_MAX_SUBMISSION_BYTES")]
    pub max_submission_bytes: Option<usize>,

    /// Largest object, in bytes as sent in its Ready record; a larger one is refused at
    /// submission (the broker could not deliver it). Keep it below the topics' and the
    /// producer's message limit. Default 524288 (Kafka's default limit is 1 MiB).
    #[arg(long, env = "STRATA_MAX_OBJECT_BYTES")]
    pub max_object_bytes: Option<usize>,

    /// Calls per second one principal may make on the gRPC port, sustained (bursts of twice
    /// that); beyond, RESOURCE_EXHAUSTED with a retry hint. Default 500.
    #[arg(long, env = "STRATA_MAX_CALLS_PER_SEC")]
    pub max_calls_per_sec: Option<u32>,

    /// Calls of one principal in progress at once (a WatchBatch stream until it closes).
    /// Default 256.
    #[arg(long, env = "STRATA_MAX_CONCURRENT_CALLS")]
    pub max_concurrent_calls: Option<usize>,

    /// WatchBatch streams one principal may hold open. Default 64.
    #[arg(long, env = "STRATA_MAX_WATCH_STREAMS_PER_PRINCIPAL")]
    pub max_watch_streams_per_principal: Option<usize>,

    /// WatchBatch streams open at once, all principals together. Default 4096.
    #[arg(long, env = "STRATA_MAX_WATCH_STREAMS")]
    pub max_watch_streams: Option<usize>,

    /// Default attempts per object.
    #[arg(long, env = "STRATA_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,

    /// Default first retry delay ceiling, in milliseconds.
    #[arg(long, env = "STRATA_INITIAL_BACKOFF_MS")]
    pub initial_backoff_ms: Option<u64>,

    /// Default backoff multiplier.
    #[arg(long, env = "STRATA_BACKOFF_MULTIPLIER")]
    pub backoff_multiplier: Option<f64>,

    /// Default retry delay cap, in milliseconds.
    #[arg(long, env = "STRATA_MAX_BACKOFF_MS")]
    pub max_backoff_ms: Option<u64>,

    /// Default execution timeout of one attempt, in seconds (a RUNNING attempt past it is retried).
    #[arg(long, env = "STRATA_EXECUTION_TIMEOUT_SECS")]
    pub execution_timeout_secs: Option<u64>,

    /// How long an agent's lease lives without a heartbeat, in seconds (then its attempts are
    /// retried as `agent_lost`).
    #[arg(long, env = "STRATA_LEASE_TTL_SECS")]
    pub lease_ttl_secs: Option<u64>,

    /// How often agents heartbeat, in seconds (below the lease TTL).
    #[arg(long, env = "STRATA_HEARTBEAT_INTERVAL_SECS")]
    pub heartbeat_interval_secs: Option<u64>,

    /// Kafka bootstrap servers as agents reach them (comma-separated; default: --kafka-brokers).
    #[arg(long, env = "STRATA_AGENT_KAFKA_BROKERS")]
    pub agent_kafka_brokers: Option<String>,

    /// Verify every result before it changes anything: signed (HMAC-SHA256) with the key of
    /// its agent's current, live lease of the object's zone; others are rejected and counted in
    /// `strata_results_rejected_total{reason}` (the default; `strata-worker-agent` registers and
    /// signs). `false` accepts results from any producer of the results topic: only for
    /// in-process test agents and benchmarks, never in production.
    #[arg(long, env = "STRATA_VERIFY_RESULTS")]
    pub verify_results: Option<bool>,

    /// How long an agent lease keeps one result signing key, in seconds (default 3600): the
    /// first heartbeat after it hands the agent a new key (over TLS, or when insecure), and the
    /// old key still signs valid results for as long again, then its results are rejected as
    /// `old_key`.
    #[arg(long, env = "STRATA_RESULT_KEY_ROTATION_SECS")]
    pub result_key_rotation_secs: Option<u64>,

    /// How long a finished batch stays in memory, in seconds (default 900); after it, reads of
    /// it (GetBatch, GetObject, GetRetry, ListDeadLetters) are answered from Redis.
    #[arg(long, env = "STRATA_FINISHED_RETENTION_SECS")]
    pub finished_retention_secs: Option<u64>,

    /// Per-zone settings (TOML only), e.g. `[zones_config.raw] max_attempts = 5` and
    /// `[zones_config.raw.preflight] reject_ids = ["*99"]`; see [`ZoneSettings`].
    #[arg(skip)]
    pub zones_config: Option<BTreeMap<String, ZoneSettings>>,
}

/// Commands of `strata-control-plane` besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Make a bearer token: add its entry (name, SHA-256, roles) to --auth-file (created if
    /// missing) and print the token, once, on stdout. Running control planes take it on SIGHUP.
    NewToken {
        /// The principal's name (1-64 letters, digits or `.-_@:=,`).
        #[arg(long)]
        name: String,
        /// A role to grant (repeat for several): read, submit, operate, admin, agent:<zone>.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
}

/// Settings of one zone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZoneSettings {
    /// Expected duration of one object, for the critical path, in ms.
    pub expected_duration_ms: Option<u64>,
    /// Attempts per object in this zone (default: the global `max_attempts`).
    pub max_attempts: Option<u32>,
    /// First backoff ceiling in this zone, in ms.
    pub initial_backoff_ms: Option<u64>,
    /// Backoff growth in this zone.
    pub backoff_multiplier: Option<f64>,
    /// Backoff cap in this zone, in ms.
    pub max_backoff_ms: Option<u64>,
    /// Execution timeout of one attempt in this zone, in seconds.
    pub execution_timeout_secs: Option<u64>,
    /// Preflight rules of this zone (disabled objects are rejected in every zone).
    pub preflight: Option<PreflightRules>,
}

/// The effective, validated configuration. Its `Debug` is masked like `--print-config`.
#[derive(Clone, PartialEq)]
pub struct Config {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// The gRPC port's certificate chain (TLS when set).
    pub tls_cert: Option<PathBuf>,
    /// Its private key.
    pub tls_key: Option<PathBuf>,
    /// The CA of client certificates (mutual TLS).
    pub tls_client_ca: Option<PathBuf>,
    /// HTTP admin listen address.
    pub admin_addr: SocketAddr,
    /// The auth file (`None`: no authentication, allowed only with `insecure`).
    pub auth_file: Option<PathBuf>,
    /// No authentication, explicitly.
    pub insecure: bool,
    /// Kafka bootstrap servers.
    pub kafka_brokers: String,
    /// Extra Kafka client properties.
    pub kafka_properties: Vec<(String, String)>,
    /// The Kafka clients' security settings (SASL, TLS).
    pub kafka_security: KafkaSecurity,
    /// Topic prefix.
    pub topic_prefix: String,
    /// Partitions of created topics.
    pub topic_partitions: i32,
    /// Replication factor of created topics.
    pub topic_replication_factor: i32,
    /// `min.insync.replicas` of created topics (`None`: the broker's default).
    pub topic_min_insync_replicas: Option<i32>,
    /// Consumer group on the results topic.
    pub consumer_group: String,
    /// Redis URL.
    pub redis_url: String,
    /// Redis key prefix.
    pub key_prefix: String,
    /// TTL of finished batches.
    pub finished_ttl: Duration,
    /// Zones created at start-up.
    pub zones: Vec<Zone>,
    /// Largest batch.
    pub max_objects: usize,
    /// Largest gRPC message.
    pub max_message_bytes: usize,
    /// Most bytes of one SubmitBatchStream.
    pub max_submission_bytes: usize,
    /// Largest object as sent in its Ready record.
    pub max_object_bytes: usize,
    /// Per-principal quotas on the gRPC port.
    pub quotas: QuotaSettings,
    /// Default retry policy.
    pub retry: RetryPolicy,
    /// Default execution timeout.
    pub execution_timeout: Duration,
    /// Expected per-zone durations, in ms.
    pub zone_durations_ms: BTreeMap<Zone, u64>,
    /// Zones whose retry policy differs from `retry` (their settings over `retry`).
    pub zone_retry: BTreeMap<Zone, RetryPolicy>,
    /// Zones whose execution timeout differs from `execution_timeout`.
    pub zone_execution_timeouts: BTreeMap<Zone, Duration>,
    /// Preflight rules per zone.
    pub preflight: BTreeMap<Zone, PreflightRules>,
    /// Agent lease TTL.
    pub lease_ttl: Duration,
    /// Agent heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Bootstrap servers told to agents.
    pub agent_kafka_brokers: String,
    /// Results only when signed by their agent's current, live lease of the object's zone.
    pub verify_results: bool,
    /// How long a lease keeps one result signing key.
    pub result_key_rotation: Duration,
    /// How long a finished batch stays in memory.
    pub finished_retention: Duration,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read or parsed.
    #[error("config file {path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// A setting is invalid.
    #[error("invalid setting {name}: {detail}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// Why.
        detail: String,
    },
}

/// Default gRPC message limit (the contract's: 16 MiB, about 60,000 objects in one unary
/// SubmitBatch).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = strata_proto::DEFAULT_MAX_MESSAGE_BYTES;

impl Flags {
    /// Merges the flags over the TOML file (if any) over the defaults, and validates.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            None => Flags::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    detail: e.to_string(),
                })?
            }
        };
        let f = self;
        let defaults = RetryPolicy::default();
        let zones: Vec<String> = f.zones.or(file.zones).unwrap_or_else(|| {
            [Zone::RAW, Zone::STANDARDIZED, Zone::APPLICATION]
                .map(String::from)
                .to_vec()
        });
        let zones = zones
            .iter()
            .map(|z| {
                Zone::parse(z).ok_or_else(|| ConfigError::Invalid {
                    name: "zones",
                    detail: format!("{z:?} is not a zone name ([a-z0-9_-])"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut zone_settings = BTreeMap::new();
        for (name, s) in f.zones_config.or(file.zones_config).unwrap_or_default() {
            let zone = Zone::parse(&name).ok_or_else(|| ConfigError::Invalid {
                name: "zones_config",
                detail: format!("{name:?} is not a zone name"),
            })?;
            zone_settings.insert(zone, s);
        }
        let kafka_properties = f
            .kafka_properties
            .or(file.kafka_properties)
            .unwrap_or_default()
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
                _ => Err(ConfigError::Invalid {
                    name: "kafka-property",
                    detail: format!("{kv:?} is not key=value"),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let kafka_security = SecurityArgs {
            security_protocol: f.kafka_security_protocol.or(file.kafka_security_protocol),
            sasl_mechanism: f.kafka_sasl_mechanism.or(file.kafka_sasl_mechanism),
            sasl_username: f.kafka_sasl_username.or(file.kafka_sasl_username),
            sasl_password_file: f.kafka_sasl_password_file.or(file.kafka_sasl_password_file),
            sasl_password: f.kafka_sasl_password,
            ca: f.kafka_ca.or(file.kafka_ca),
        }
        .resolve()
        .map_err(|detail| ConfigError::Invalid {
            name: "kafka security",
            detail,
        })?;
        let config = Config {
            grpc_addr: f
                .grpc_addr
                .or(file.grpc_addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50051))),
            tls_cert: f.tls_cert.or(file.tls_cert),
            tls_key: f.tls_key.or(file.tls_key),
            tls_client_ca: f.tls_client_ca.or(file.tls_client_ca),
            admin_addr: f
                .admin_addr
                .or(file.admin_addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9463))),
            auth_file: f.auth_file.or(file.auth_file),
            insecure: f.insecure.or(file.insecure).unwrap_or(false),
            kafka_brokers: f
                .kafka_brokers
                .or(file.kafka_brokers)
                .unwrap_or_else(|| "127.0.0.1:9092".into()),
            kafka_properties,
            kafka_security,
            topic_prefix: f
                .topic_prefix
                .or(file.topic_prefix)
                .unwrap_or_else(|| strata_proto::kafka::DEFAULT_TOPIC_PREFIX.into()),
            topic_partitions: f.topic_partitions.or(file.topic_partitions).unwrap_or(3),
            topic_replication_factor: f
                .topic_replication_factor
                .or(file.topic_replication_factor)
                .unwrap_or(1),
            topic_min_insync_replicas: f
                .topic_min_insync_replicas
                .or(file.topic_min_insync_replicas),
            consumer_group: f
                .consumer_group
                .or(file.consumer_group)
                .unwrap_or_else(|| "strata-control-plane".into()),
            redis_url: f
                .redis_url
                .or(file.redis_url)
                .unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            key_prefix: f
                .key_prefix
                .or(file.key_prefix)
                .unwrap_or_else(|| "strata:".into()),
            finished_ttl: Duration::from_secs(
                f.finished_ttl_secs
                    .or(file.finished_ttl_secs)
                    .unwrap_or(7 * 24 * 3600),
            ),
            zones,
            max_objects: f
                .max_objects
                .or(file.max_objects)
                .unwrap_or(strata_core::planner::DEFAULT_MAX_OBJECTS),
            max_message_bytes: f
                .max_message_bytes
                .or(file.max_message_bytes)
                .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
            max_submission_bytes: f
                .max_submission_bytes
                .or(file.max_submission_bytes)
                .unwrap_or(crate::service::DEFAULT_MAX_SUBMISSION_BYTES),
            max_object_bytes: f
                .max_object_bytes
                .or(file.max_object_bytes)
                .unwrap_or(strata_core::limits::DEFAULT_OBJECT_BYTES),
            quotas: {
                let d = QuotaSettings::default();
                QuotaSettings {
                    calls_per_sec: f
                        .max_calls_per_sec
                        .or(file.max_calls_per_sec)
                        .unwrap_or(d.calls_per_sec),
                    concurrent_calls: f
                        .max_concurrent_calls
                        .or(file.max_concurrent_calls)
                        .unwrap_or(d.concurrent_calls),
                    watch_streams_per_principal: f
                        .max_watch_streams_per_principal
                        .or(file.max_watch_streams_per_principal)
                        .unwrap_or(d.watch_streams_per_principal),
                    watch_streams_total: f
                        .max_watch_streams
                        .or(file.max_watch_streams)
                        .unwrap_or(d.watch_streams_total),
                }
            },
            retry: RetryPolicy {
                max_attempts: f
                    .max_attempts
                    .or(file.max_attempts)
                    .unwrap_or(defaults.max_attempts),
                initial_backoff: f
                    .initial_backoff_ms
                    .or(file.initial_backoff_ms)
                    .map_or(defaults.initial_backoff, Duration::from_millis),
                multiplier: f
                    .backoff_multiplier
                    .or(file.backoff_multiplier)
                    .unwrap_or(defaults.multiplier),
                max_backoff: f
                    .max_backoff_ms
                    .or(file.max_backoff_ms)
                    .map_or(defaults.max_backoff, Duration::from_millis),
            },
            execution_timeout: Duration::from_secs(
                f.execution_timeout_secs
                    .or(file.execution_timeout_secs)
                    .unwrap_or(3600),
            ),
            zone_durations_ms: BTreeMap::new(),
            zone_retry: BTreeMap::new(),
            zone_execution_timeouts: BTreeMap::new(),
            preflight: BTreeMap::new(),
            lease_ttl: Duration::from_secs(f.lease_ttl_secs.or(file.lease_ttl_secs).unwrap_or(15)),
            heartbeat_interval: Duration::from_secs(
                f.heartbeat_interval_secs
                    .or(file.heartbeat_interval_secs)
                    .unwrap_or(5),
            ),
            agent_kafka_brokers: f
                .agent_kafka_brokers
                .or(file.agent_kafka_brokers)
                .unwrap_or_default(),
            verify_results: f.verify_results.or(file.verify_results).unwrap_or(true),
            result_key_rotation: Duration::from_secs(
                f.result_key_rotation_secs
                    .or(file.result_key_rotation_secs)
                    .unwrap_or(3600),
            ),
            finished_retention: Duration::from_secs(
                f.finished_retention_secs
                    .or(file.finished_retention_secs)
                    .unwrap_or(900),
            ),
        };
        let config = config.with_zone_settings(zone_settings);
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// Applies per-zone settings over the global ones.
    fn with_zone_settings(mut self, zones: BTreeMap<Zone, ZoneSettings>) -> Self {
        for (zone, s) in zones {
            if let Some(ms) = s.expected_duration_ms {
                self.zone_durations_ms.insert(zone.clone(), ms);
            }
            let retry = RetryPolicy {
                max_attempts: s.max_attempts.unwrap_or(self.retry.max_attempts),
                initial_backoff: s
                    .initial_backoff_ms
                    .map_or(self.retry.initial_backoff, Duration::from_millis),
                multiplier: s.backoff_multiplier.unwrap_or(self.retry.multiplier),
                max_backoff: s
                    .max_backoff_ms
                    .map_or(self.retry.max_backoff, Duration::from_millis),
            };
            if retry != self.retry {
                self.zone_retry.insert(zone.clone(), retry);
            }
            if let Some(secs) = s.execution_timeout_secs {
                self.zone_execution_timeouts
                    .insert(zone.clone(), Duration::from_secs(secs));
            }
            if let Some(rules) = s.preflight {
                self.preflight.insert(zone, rules);
            }
        }
        self
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, detail: &str| {
            Err(ConfigError::Invalid {
                name,
                detail: detail.to_owned(),
            })
        };
        if let Err(e) = self.retry.validate() {
            return invalid("retry policy", &e.to_string());
        }
        if self.insecure && self.auth_file.is_some() {
            return invalid(
                "insecure",
                "--insecure serves every caller with every role; it cannot go with --auth-file",
            );
        }
        for (zone, retry) in &self.zone_retry {
            if let Err(e) = retry.validate() {
                return invalid("zones_config", &format!("zone {zone}: {e}"));
            }
        }
        if self.zone_retry.len() > 255 {
            return invalid(
                "zones_config",
                "at most 255 zones may set their own retry policy",
            );
        }
        for (zone, rules) in &self.preflight {
            if let Err(e) = rules.validate() {
                return invalid("zones_config", &format!("zone {zone} preflight: {e}"));
            }
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.lease_ttl {
            return invalid(
                "heartbeat-interval-secs",
                "must be at least 1 second and below --lease-ttl-secs",
            );
        }
        if self.result_key_rotation < self.heartbeat_interval {
            return invalid(
                "result-key-rotation-secs",
                "must be at least --heartbeat-interval-secs (keys rotate at a heartbeat)",
            );
        }
        if self.execution_timeout.is_zero()
            || self.zone_execution_timeouts.values().any(Duration::is_zero)
        {
            return invalid("execution-timeout-secs", "must be at least 1 second");
        }
        if self.zones.is_empty() {
            return invalid("zones", "at least one zone is needed");
        }
        if self.topic_partitions < 1 {
            return invalid("topic-partitions", "must be at least 1");
        }
        if self.topic_replication_factor < 1 {
            return invalid("topic-replication-factor", "must be at least 1");
        }
        if let Some(n) = self.topic_min_insync_replicas
            && !(1..=self.topic_replication_factor).contains(&n)
        {
            return invalid(
                "topic-min-insync-replicas",
                &format!(
                    "must be between 1 and the replication factor ({}), not {n}",
                    self.topic_replication_factor
                ),
            );
        }
        if self.max_objects == 0 {
            return invalid("max-objects", "must be at least 1");
        }
        if self.max_message_bytes < 64 * 1024 {
            return invalid("max-message-bytes", "must be at least 65536");
        }
        if self.max_submission_bytes < 64 * 1024 {
            return invalid("max-submission-bytes", "must be at least 65536");
        }
        if self.max_object_bytes < 1024 {
            return invalid("max-object-bytes", "must be at least 1024");
        }
        for (flag, value) in [
            ("max-calls-per-sec", self.quotas.calls_per_sec as usize),
            ("max-concurrent-calls", self.quotas.concurrent_calls),
            (
                "max-watch-streams-per-principal",
                self.quotas.watch_streams_per_principal,
            ),
            ("max-watch-streams", self.quotas.watch_streams_total),
        ] {
            if value == 0 {
                return invalid(flag, "must be at least 1");
            }
        }
        if self.kafka_brokers.trim().is_empty() {
            return invalid("kafka-brokers", "must not be empty");
        }
        if let Err(e) = self.kafka_security.with_extra(&self.kafka_properties) {
            return invalid("kafka-property", &e);
        }
        if !(self.redis_url.starts_with("redis://") || self.redis_url.starts_with("rediss://")) {
            return invalid("redis-url", "must start with redis:// or rediss://");
        }
        match (&self.tls_cert, &self.tls_key, &self.tls_client_ca) {
            (Some(_), None, _) => {
                return invalid("tls-cert", "needs --tls-key (its private key)");
            }
            (None, Some(_), _) => {
                return invalid(
                    "tls-key",
                    "needs --tls-cert (the certificate it belongs to)",
                );
            }
            (None, None, Some(_)) => {
                return invalid(
                    "tls-client-ca",
                    "needs --tls-cert and --tls-key (mutual TLS is TLS first)",
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// The gRPC port's TLS files, when it serves TLS ([`Self::validate`] checked the pairs).
    pub fn grpc_tls(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// The per-zone settings that differ from the global ones, as a TOML file states them.
    pub fn zone_settings(&self) -> BTreeMap<String, ZoneSettings> {
        let mut out: BTreeMap<String, ZoneSettings> = BTreeMap::new();
        fn entry<'a>(
            out: &'a mut BTreeMap<String, ZoneSettings>,
            z: &Zone,
        ) -> &'a mut ZoneSettings {
            out.entry(z.to_string()).or_default()
        }
        for (z, ms) in &self.zone_durations_ms {
            entry(&mut out, z).expected_duration_ms = Some(*ms);
        }
        for (z, p) in &self.zone_retry {
            let s = entry(&mut out, z);
            s.max_attempts = Some(p.max_attempts);
            s.initial_backoff_ms = Some(p.initial_backoff.as_millis() as u64);
            s.backoff_multiplier = Some(p.multiplier);
            s.max_backoff_ms = Some(p.max_backoff.as_millis() as u64);
        }
        for (z, t) in &self.zone_execution_timeouts {
            entry(&mut out, z).execution_timeout_secs = Some(t.as_secs());
        }
        for (z, rules) in &self.preflight {
            entry(&mut out, z).preflight = Some(rules.clone());
        }
        out
    }

    /// The Redis URL with its password masked, for messages and logs.
    pub fn redis_url_masked(&self) -> String {
        mask_url_password(&self.redis_url)
    }

    /// Every Kafka client property of the control plane's clients: the security settings',
    /// then `--kafka-property`'s ([`Self::validate`] refused any overlap). Holds the SASL
    /// password in clear: for the clients' configuration only.
    pub fn kafka_client_properties(&self) -> Vec<(String, String)> {
        let mut all = self.kafka_security.properties();
        all.extend(self.kafka_properties.iter().cloned());
        all
    }

    /// The effective configuration as TOML, with secrets masked: the Redis password, Kafka
    /// properties whose name mentions a password, secret, key, token or JAAS configuration; the
    /// SASL password is never shown (its file's path is, or a comment saying it came from the
    /// environment).
    pub fn to_display_toml(&self) -> String {
        let shown = self.masked();
        let mut text = String::new();
        if shown.kafka_security.sasl_password.is_some()
            && shown.kafka_security.sasl_password_file.is_none()
        {
            text.push_str(&format!(
                "# The Kafka SASL password is set by {} (not shown).\n",
                kafka_security::PASSWORD_ENV
            ));
        }
        text.push_str(&toml::to_string(&DisplayConfig::from(&shown)).unwrap_or_default());
        text
    }

    /// A copy without secrets in clear: the Redis password and secret-looking Kafka properties
    /// masked (the SASL password is a [`Secret`], shown as `***` anyway).
    fn masked(&self) -> Config {
        let mut shown = self.clone();
        shown.redis_url = mask_url_password(&shown.redis_url);
        for (k, v) in &mut shown.kafka_properties {
            if kafka_security::is_secret_property(k) {
                *v = "***".into();
            }
        }
        shown
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Config {:?}", DisplayConfig::from(&self.masked()))
    }
}

#[derive(Debug, Serialize)]
struct DisplayConfig {
    grpc_addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_file: Option<String>,
    insecure: bool,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    tls_client_ca: Option<String>,
    admin_addr: String,
    kafka_brokers: String,
    kafka_properties: Vec<String>,
    kafka_security_protocol: Option<String>,
    kafka_sasl_mechanism: Option<String>,
    kafka_sasl_username: Option<String>,
    kafka_sasl_password_file: Option<String>,
    kafka_ca: Option<String>,
    topic_prefix: String,
    topic_partitions: i32,
    topic_replication_factor: i32,
    topic_min_insync_replicas: Option<i32>,
    consumer_group: String,
    redis_url: String,
    key_prefix: String,
    finished_ttl_secs: u64,
    zones: Vec<String>,
    max_objects: usize,
    max_message_bytes: usize,
    max_submission_bytes: usize,
    max_object_bytes: usize,
    max_calls_per_sec: u32,
    max_concurrent_calls: usize,
    max_watch_streams_per_principal: usize,
    max_watch_streams: usize,
    max_attempts: u32,
    initial_backoff_ms: u64,
    backoff_multiplier: f64,
    max_backoff_ms: u64,
    execution_timeout_secs: u64,
    lease_ttl_secs: u64,
    heartbeat_interval_secs: u64,
    agent_kafka_brokers: String,
    verify_results: bool,
    result_key_rotation_secs: u64,
    finished_retention_secs: u64,
    zones_config: BTreeMap<String, ZoneSettings>,
}

impl From<&Config> for DisplayConfig {
    fn from(c: &Config) -> Self {
        Self {
            grpc_addr: c.grpc_addr.to_string(),
            auth_file: c.auth_file.as_ref().map(|p| p.display().to_string()),
            insecure: c.insecure,
            tls_cert: c.tls_cert.as_ref().map(|p| p.display().to_string()),
            tls_key: c.tls_key.as_ref().map(|p| p.display().to_string()),
            tls_client_ca: c.tls_client_ca.as_ref().map(|p| p.display().to_string()),
            admin_addr: c.admin_addr.to_string(),
            kafka_brokers: c.kafka_brokers.clone(),
            kafka_properties: c
                .kafka_properties
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            kafka_security_protocol: c.kafka_security.security_protocol.clone(),
            kafka_sasl_mechanism: c.kafka_security.sasl_mechanism.clone(),
            kafka_sasl_username: c.kafka_security.sasl_username.clone(),
            kafka_sasl_password_file: c
                .kafka_security
                .sasl_password_file
                .as_ref()
                .map(|p| p.display().to_string()),
            kafka_ca: c
                .kafka_security
                .ca
                .as_ref()
                .map(|p| p.display().to_string()),
            topic_prefix: c.topic_prefix.clone(),
            topic_partitions: c.topic_partitions,
            topic_replication_factor: c.topic_replication_factor,
            topic_min_insync_replicas: c.topic_min_insync_replicas,
            consumer_group: c.consumer_group.clone(),
            redis_url: c.redis_url.clone(),
            key_prefix: c.key_prefix.clone(),
            finished_ttl_secs: c.finished_ttl.as_secs(),
            zones: c.zones.iter().map(ToString::to_string).collect(),
            max_objects: c.max_objects,
            max_message_bytes: c.max_message_bytes,
            max_submission_bytes: c.max_submission_bytes,
            max_object_bytes: c.max_object_bytes,
            max_calls_per_sec: c.quotas.calls_per_sec,
            max_concurrent_calls: c.quotas.concurrent_calls,
            max_watch_streams_per_principal: c.quotas.watch_streams_per_principal,
            max_watch_streams: c.quotas.watch_streams_total,
            max_attempts: c.retry.max_attempts,
            initial_backoff_ms: c.retry.initial_backoff.as_millis() as u64,
            backoff_multiplier: c.retry.multiplier,
            max_backoff_ms: c.retry.max_backoff.as_millis() as u64,
            execution_timeout_secs: c.execution_timeout.as_secs(),
            lease_ttl_secs: c.lease_ttl.as_secs(),
            heartbeat_interval_secs: c.heartbeat_interval.as_secs(),
            agent_kafka_brokers: c.agent_kafka_brokers.clone(),
            verify_results: c.verify_results,
            result_key_rotation_secs: c.result_key_rotation.as_secs(),
            finished_retention_secs: c.finished_retention.as_secs(),
            zones_config: c.zone_settings(),
        }
    }
}

fn mask_url_password(url: &str) -> String {
    // redis://user:password@host → redis://user:***@host
    // (the last '@' ends the credentials: a password may hold '@')
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((auth, host)) = rest.rsplit_once('@')
    {
        let user = auth.split_once(':').map_or(auth, |(u, _)| u);
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_locally() {
        let c = Flags::default().resolve().unwrap();
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(c.zones.len(), 3);
        assert_eq!(c.retry, RetryPolicy::default());
    }

    #[test]
    fn flags_win_over_the_file_and_bad_values_are_named() {
        let dir = std::env::temp_dir().join(format!("strata-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cp.toml");
        std::fs::write(
            &path,
            "topic_prefix = \"file\"\nmax_attempts = 7\n[zones_config.raw]\nexpected_duration_ms = 250\n",
        )
        .unwrap();
        let c = Flags {
            config: Some(path.clone()),
            topic_prefix: Some("flag".into()),
            ..Flags::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.topic_prefix, "flag");
        assert_eq!(c.retry.max_attempts, 7);
        assert_eq!(
            c.zone_durations_ms.values().copied().collect::<Vec<_>>(),
            [250]
        );

        std::fs::write(&path, "no_such_setting = 1\n").unwrap();
        let err = Flags {
            config: Some(path),
            ..Flags::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("no_such_setting"), "{err}");

        let err = Flags {
            zones: Some(vec!["Bad Zone".into()]),
            ..Flags::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("Bad Zone"), "{err}");
    }

    #[test]
    fn topic_replication_is_configured_checked_and_printed() {
        let c = Flags::default().resolve().unwrap();
        assert_eq!(
            (c.topic_replication_factor, c.topic_min_insync_replicas),
            (1, None)
        );
        let c = Flags {
            topic_replication_factor: Some(3),
            topic_min_insync_replicas: Some(2),
            ..Flags::default()
        }
        .resolve()
        .unwrap();
        let shown = c.to_display_toml();
        assert!(shown.contains("topic_replication_factor = 3"), "{shown}");
        assert!(shown.contains("topic_min_insync_replicas = 2"), "{shown}");
        for (rf, min_insync, offending) in [
            (0, None, "topic-replication-factor"),
            (3, Some(4), "topic-min-insync-replicas"),
            (3, Some(0), "topic-min-insync-replicas"),
        ] {
            let err = Flags {
                topic_replication_factor: Some(rf),
                topic_min_insync_replicas: min_insync,
                ..Flags::default()
            }
            .resolve()
            .unwrap_err();
            assert!(err.to_string().contains(offending), "{err}");
        }
    }

    #[test]
    fn zones_have_their_own_retry_timeout_and_preflight_and_print_back() {
        let dir = std::env::temp_dir().join(format!("strata-zones-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("zones.toml");
        std::fs::write(
            &path,
            r#"
max_attempts = 4
[zones_config.raw]
max_attempts = 6
max_backoff_ms = 60000
execution_timeout_secs = 120
[zones_config.raw.preflight]
reject_ids = ["*99"]
require_attributes = ["URL"]
[zones_config.application]
max_attempts = 4
"#,
        )
        .unwrap();
        let c = Flags {
            config: Some(path.clone()),
            ..Flags::default()
        }
        .resolve()
        .unwrap();
        let raw = Zone::parse("raw").unwrap();
        assert_eq!(c.retry.max_attempts, 4);
        assert_eq!(c.zone_retry.len(), 1, "application equals the default");
        assert_eq!(c.zone_retry[&raw].max_attempts, 6);
        assert_eq!(c.zone_retry[&raw].max_backoff, Duration::from_secs(60));
        assert_eq!(c.zone_retry[&raw].initial_backoff, c.retry.initial_backoff);
        assert_eq!(c.zone_execution_timeouts[&raw], Duration::from_secs(120));
        assert_eq!(c.preflight[&raw].reject_ids, ["*99"]);

        // What --print-config shows reads back as the same configuration.
        std::fs::write(&path, c.to_display_toml()).unwrap();
        let again = Flags {
            config: Some(path.clone()),
            ..Flags::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(again, c);

        std::fs::write(&path, "[zones_config.raw]\nmax_attempts = 0\n").unwrap();
        let err = Flags {
            config: Some(path.clone()),
            ..Flags::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("zone raw"), "{err}");
        std::fs::write(&path, "[zones_config.raw.preflight]\nallow_ids = [\"\"]\n").unwrap();
        let err = Flags {
            config: Some(path),
            ..Flags::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("allow_ids"), "{err}");
    }

    #[test]
    fn tls_files_come_in_pairs_named_by_their_flag_and_print_back() {
        let c = Flags {
            tls_cert: Some("/etc/strata/grpc.pem".into()),
            tls_key: Some("/etc/strata/grpc-key.pem".into()),
            tls_client_ca: Some("/etc/strata/clients-ca.pem".into()),
            ..Flags::default()
        }
        .resolve()
        .unwrap();
        let files = c.grpc_tls().expect("TLS");
        assert_eq!(
            files.client_ca.as_deref(),
            Some("/etc/strata/clients-ca.pem".as_ref())
        );
        let shown = c.to_display_toml();
        assert!(
            shown.contains("tls_key = \"/etc/strata/grpc-key.pem\""),
            "{shown}"
        );
        assert_eq!(Flags::default().resolve().unwrap().grpc_tls(), None);
        for (cert, key, ca, offending) in [
            (Some("c.pem"), None, None, "tls-cert"),
            (None, Some("k.pem"), None, "tls-key"),
            (None, None, Some("ca.pem"), "tls-client-ca"),
        ] {
            let err = Flags {
                tls_cert: cert.map(PathBuf::from),
                tls_key: key.map(PathBuf::from),
                tls_client_ca: ca.map(PathBuf::from),
                ..Flags::default()
            }
            .resolve()
            .unwrap_err();
            assert!(err.to_string().contains(offending), "{err}");
        }
    }

    #[test]
    fn secrets_are_masked_when_printed() {
        let c = Flags {
            redis_url: Some("redis://app:hunter2@redis:6379/0".into()),
            kafka_properties: Some(vec!["sasl.password=hunter2".into()]),
            ..Flags::default()
        }
        .resolve()
        .unwrap();
        let shown = c.to_display_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://app:***@redis:6379/0"), "{shown}");
        // A password holding '@' (or written percent-encoded) is masked whole, in both forms.
        for url in [
            "redis://app:s3cr@t@redis:6379/0",
            "redis://:s3cr@t@redis:6379/0",
            "rediss://app:s3cr%40t@redis:6379/0",
        ] {
            let c = Flags {
                redis_url: Some(url.into()),
                ..Flags::default()
            }
            .resolve()
            .unwrap();
            for shown in [c.to_display_toml(), format!("{c:?}"), c.redis_url_masked()] {
                assert!(!shown.contains("s3cr") && !shown.contains("t@"), "{shown}");
                assert!(shown.contains(":***@redis:6379/0"), "{shown}");
            }
        }
    }

    #[test]
    fn the_sasl_password_is_used_but_never_shown() {
        let dir = std::env::temp_dir().join(format!("strata-sasl-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kafka-password");
        std::fs::write(&file, "s3cret-from-file\n").unwrap();
        let from_file = Flags {
            kafka_sasl_username: Some("strata".into()),
            kafka_sasl_password_file: Some(file.clone()),
            kafka_properties: Some(vec!["sasl.jaas.config=x s3cret-jaas".into()]),
            ..Flags::default()
        }
        .resolve()
        .unwrap();
        let properties = from_file.kafka_client_properties();
        assert!(
            properties.contains(&("sasl.password".into(), "s3cret-from-file".into())),
            "{properties:?}"
        );
        assert!(properties.contains(&("security.protocol".into(), "SASL_SSL".into())));
        for shown in [from_file.to_display_toml(), format!("{from_file:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        let shown = from_file.to_display_toml();
        assert!(
            shown.contains("kafka_sasl_username = \"strata\""),
            "{shown}"
        );
        assert!(shown.contains(&file.display().to_string()), "{shown}");
        // What it shows reads back as the same configuration (the password from the file again).
        let path = dir.join("shown.toml");
        std::fs::write(&path, &shown).unwrap();
        let again = Flags {
            config: Some(path.clone()),
            ..Flags::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(again.kafka_security, from_file.kafka_security);

        let from_env = Flags {
            kafka_sasl_username: Some("strata".into()),
            kafka_sasl_password: Some(Secret::new("s3cret-from-env")),
            ..Flags::default()
        }
        .resolve()
        .unwrap();
        let shown = from_env.to_display_toml();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains(kafka_security::PASSWORD_ENV), "{shown}");

        // A password in the TOML file is refused: it belongs in a file of its own or the
        // environment.
        std::fs::write(&path, "kafka_sasl_password = \"s3cret\"\n").unwrap();
        let err = Flags {
            config: Some(path),
            ..Flags::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("kafka_sasl_password"), "{err}");
        // No password for a user: named, and refused.
        let err = Flags {
            kafka_sasl_username: Some("strata".into()),
            ..Flags::default()
        }
        .resolve()
        .unwrap_err();
        assert!(
            err.to_string().contains("STRATA_KAFKA_SASL_PASSWORD"),
            "{err}"
        );
        // The same property twice.
        let err = Flags {
            kafka_sasl_username: Some("strata".into()),
            kafka_sasl_password: Some(Secret::new("s3cret-from-env")),
            kafka_properties: Some(vec!["sasl.username=other".into()]),
            ..Flags::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("sasl.username"), "{err}");
    }
}
