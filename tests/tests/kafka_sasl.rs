//! Kafka security against Apache Kafka itself: a broker with a SASL_SSL listener (SCRAM-SHA-512,
//! a CA and a server certificate the harness makes; `ApacheKafka::start_sasl`,
//! `tests/src/kafka_sasl.rs`).
//!
//! - The fixture: a client with the user's credentials and the CA produces and consumes over
//!   SASL_SSL; a wrong password, no credentials at all, and a plaintext client are refused, and
//!   the client's error says why.
//! - A control plane and an agent with the credentials (the control plane's from flags and a
//!   password file, the agent's from its environment; the agent's bootstrap servers from its
//!   lease) run a batch to SUCCEEDED over SASL_SSL. Neither their logs (librdkafka's security
//!   debug lines included) nor `--print-config` contain the password.
//! - A control plane with a wrong password is not ready, and `/health/readiness` says
//!   `kafka: authentication failed: …`; it stops on `SIGTERM` without hanging.
//!
//! Needs both binaries built (`cargo build --workspace --bins`) and `STRATA_KAFKA_LIBS`
//! (`./tests/run.sh` provisions it). Each test starts a private broker (the shared one of a run
//! has no SASL listener).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use strata_proto::v1::{self as pb};
use strata_runtime::kafka_config::{self, ClientSettings};
use strata_tests::control_plane::{ControlPlane, print_config};
use strata_tests::kafka::{consumer_config, producer_config};
use strata_tests::kafka_sasl::SaslListener;
use strata_tests::worker_agent::{WorkerAgent, http_get};
use strata_tests::{ApacheKafka, RedisServer, blocking, temp_dir, within};

/// Bound on starting the broker (the fixture's own bound is 60 s per wait).
const START: Duration = Duration::from_secs(90);
/// Bound on one step (a delivery, a group read, a batch, a readiness answer).
const STEP: Duration = Duration::from_secs(60);

/// Errors a client reported through its context, kept for the test to read.
#[derive(Debug, Clone, Default)]
struct Errors(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl ClientContext for Errors {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        if (level as i32) <= (rdkafka::config::RDKafkaLogLevel::Warning as i32) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("log {fac}: {log_message}"));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{error} | {reason}"));
    }
}

impl ConsumerContext for Errors {}

impl Errors {
    fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }
}

/// A client that must be refused: what it is, its properties, what its errors must say.
type Refusal<'a> = (&'a str, Vec<(String, String)>, &'a [&'a str]);

/// `base` with `properties` set.
fn with(mut base: ClientConfig, properties: &[(String, String)]) -> ClientConfig {
    for (k, v) in properties {
        base.set(k, v);
    }
    base
}

/// An admin client's configuration for `bootstrap` with `properties`.
fn admin_config(bootstrap: &str, properties: &[(String, String)]) -> ClientConfig {
    kafka_config::admin(&ClientSettings {
        bootstrap_servers: bootstrap.to_owned(),
        extra: properties.to_vec(),
        client_id: "strata-tests-sasl".into(),
    })
}

/// One metadata request with `config`: `Ok(brokers listed)` or the error, plus every error the
/// client reported meanwhile.
async fn metadata(config: ClientConfig) -> anyhow::Result<(Result<usize, String>, String)> {
    let errors = Errors::default();
    let context = errors.clone();
    let answer = blocking(STEP, "fetch metadata", move || {
        let consumer: BaseConsumer<Errors> = config.create_with_context(context)?;
        let answer = consumer
            .fetch_metadata(None, Duration::from_secs(8))
            .map(|m| m.brokers().len())
            .map_err(|e| e.to_string());
        // Serve the client's queue: its error events reach the context here.
        for _ in 0..5 {
            let _ = consumer.poll(Duration::from_millis(100));
        }
        anyhow::Ok(answer)
    })
    .await??;
    Ok((answer, errors.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sasl_ssl_listener_takes_its_user_and_refuses_everyone_else() -> anyhow::Result<()> {
    let started = Instant::now();
    let kafka = within(
        START,
        "start kafka with SASL_SSL",
        ApacheKafka::start_sasl(),
    )
    .await??;
    println!("broker with SASL_SSL ready in {:?}", started.elapsed());
    let sasl = kafka.sasl().context("started with SASL")?.clone();
    let bootstrap = sasl.bootstrap();
    let topic = "sasl-fixture";
    kafka.create_topic(topic, 1).await?;

    // The user, over TLS with the harness's CA: one record produced and read back.
    let good = sasl.client_properties(Some(sasl.password()));
    let producer: FutureProducer = with(producer_config(&bootstrap), &good).create()?;
    within(
        STEP,
        "deliver over SASL_SSL",
        producer.send(
            FutureRecord::to(topic).key("k").payload("over sasl_ssl"),
            Duration::from_secs(10),
        ),
    )
    .await?
    .map_err(|(e, _)| e)
    .context("deliver over SASL_SSL")?;
    blocking(STEP, "drop producer", move || drop(producer)).await?;
    let config = with(consumer_config(&bootstrap, "sasl-fixture-group"), &good);
    let topic_name = topic.to_owned();
    let read = blocking(STEP, "consume over SASL_SSL", move || {
        let consumer: BaseConsumer = config.create()?;
        consumer.subscribe(&[&topic_name])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message?;
                return anyhow::Ok(
                    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
                );
            }
        }
        bail!("no record within 30 s")
    })
    .await??;
    ensure!(read == "over sasl_ssl", "read {read:?}");

    // Refused: a wrong password (named as an authentication failure), no credentials (TLS but
    // no SASL), plaintext on the SASL_SSL port, and the right user without the CA.
    let refused: [Refusal; 4] = [
        (
            "wrong password",
            sasl.client_properties(Some("not-the-password")),
            &["Authentication", "SCRAM-SHA-512"],
        ),
        ("no credentials", sasl.client_properties(None), &[]),
        ("plaintext", Vec::new(), &[]),
        (
            "without the CA",
            good.iter()
                .filter(|(k, _)| k != "ssl.ca.location")
                .cloned()
                .collect(),
            &["certificate verify failed"],
        ),
    ];
    for (what, properties, expected) in refused {
        let (answer, errors) = metadata(admin_config(&bootstrap, &properties)).await?;
        println!("{what}: {answer:?}; client errors:\n{errors}");
        ensure!(answer.is_err(), "{what}: the broker answered: {answer:?}");
        for e in expected {
            ensure!(
                errors.contains(e),
                "{what}: the client's errors do not say {e:?}:\n{errors}"
            );
        }
        ensure!(
            !errors.contains(sasl.password()),
            "{what}: an error shows the password"
        );
    }
    // The plaintext listener beside it still answers (the harness and the brokers use it).
    let (answer, _) = metadata(admin_config(&kafka.bootstrap(), &[])).await?;
    ensure!(answer == Ok(1), "plaintext listener: {answer:?}");
    Ok(())
}

/// `n` raw objects without parents.
fn raw_objects(n: usize) -> Vec<pb::ObjectDefinition> {
    (0..n)
        .map(|k| pb::ObjectDefinition {
            id: (1000 + k).to_string(),
            name: format!("sasl object {}", 1000 + k),
            zone: "raw".into(),
            ..Default::default()
        })
        .collect()
}

/// Submits `objects` (all targets) and polls until the batch is no longer RUNNING.
async fn run_batch(
    endpoint: &str,
    objects: Vec<pb::ObjectDefinition>,
) -> anyhow::Result<pb::Batch> {
    let mut client = within(
        STEP,
        "connect gRPC",
        OrchestratorClient::connect(endpoint.to_owned()),
    )
    .await??;
    let request = pb::SubmitBatchRequest {
        idempotency_key: "sasl-batch".into(),
        input: Some(pb::BatchInput {
            source: Some(pb::batch_input::Source::Objects(pb::ObjectList { objects })),
        }),
        options: Some(pb::SubmitOptions {
            all: true,
            ..Default::default()
        }),
    };
    let batch_id = within(STEP, "submit", client.submit_batch(request))
        .await??
        .into_inner()
        .batch_id;
    let started = Instant::now();
    loop {
        let batch = within(
            STEP,
            "GetBatch",
            client.get_batch(pb::GetBatchRequest {
                batch_id: batch_id.clone(),
            }),
        )
        .await??
        .into_inner();
        if batch.state() != pb::BatchState::Running {
            return Ok(batch);
        }
        ensure!(
            started.elapsed() < STEP * 2,
            "batch {batch_id} still RUNNING: {:?}",
            batch.counts
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Occurrences of `needle` in `haystack`, for messages.
fn lines_with<'a>(haystack: &'a str, needle: &str) -> Vec<&'a str> {
    haystack.lines().filter(|l| l.contains(needle)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_and_an_agent_with_credentials_run_a_batch_and_never_show_the_password()
-> anyhow::Result<()> {
    let kafka = within(
        START,
        "start kafka with SASL_SSL",
        ApacheKafka::start_sasl(),
    )
    .await??;
    let sasl: SaslListener = kafka.sasl().context("started with SASL")?.clone();
    let password = sasl.password().to_owned();
    let redis = within(START, "start redis", RedisServer::start()).await??;
    let secrets = temp_dir("sasl-secrets")?;
    let password_file = secrets.path().join("kafka-password");
    std::fs::write(&password_file, format!("{password}\n"))?;
    let (ca, password_path) = (
        sasl.ca_path().display().to_string(),
        password_file.display().to_string(),
    );
    let bootstrap = sasl.bootstrap();
    // The control plane: user and password file by flag; librdkafka's security and broker
    // debug lines in its log (what would show a password if librdkafka printed one).
    let cp_flags = [
        "--zones",
        "raw",
        "--topic-partitions",
        "2",
        "--kafka-sasl-username",
        sasl.username(),
        "--kafka-sasl-password-file",
        &password_path,
        "--kafka-ca",
        &ca,
        "--kafka-property",
        "debug=security",
    ];

    // --print-config: the user, the file and the CA, never the password; the same with the
    // password from the environment.
    let mut args = vec!["--kafka-brokers", &bootstrap];
    args.extend(cp_flags);
    let shown = print_config(&args, &[])?;
    println!("--print-config:\n{shown}");
    ensure!(
        !shown.contains(&password),
        "--print-config shows the password:\n{shown}"
    );
    for expected in [
        "kafka_sasl_username = \"strata\"",
        "kafka_sasl_mechanism = \"SCRAM-SHA-512\"",
        "kafka_security_protocol = \"SASL_SSL\"",
        password_path.as_str(),
    ] {
        ensure!(
            shown.contains(expected),
            "--print-config lacks {expected}:\n{shown}"
        );
    }
    let shown = print_config(
        &[
            "--kafka-sasl-username",
            "strata",
            "--kafka-property",
            &format!("sasl.oauthbearer.client.secret={password}"),
        ],
        &[("STRATA_KAFKA_SASL_PASSWORD", &password)],
    )?;
    ensure!(
        !shown.contains(&password),
        "--print-config shows the password:\n{shown}"
    );
    ensure!(
        shown.contains("STRATA_KAFKA_SASL_PASSWORD") && shown.contains("client.secret=***"),
        "{shown}"
    );

    let mut cp = ControlPlane::start_with_env(
        &bootstrap,
        &redis.url(),
        &cp_flags,
        &[("STRATA_LOG", "info,librdkafka=trace")],
    )
    .await?;
    // The agent: its bootstrap servers from its lease (no --kafka-brokers), user and password
    // from its own environment, never from the control plane.
    let password_env = password.clone();
    let mut agent = WorkerAgent::start(
        "sasl-agent",
        &cp.endpoint(),
        "raw",
        &[
            "--processor",
            "simulate",
            "--simulate-duration-ms",
            "10",
            "--kafka-ca",
            &ca,
            "--kafka-property",
            "debug=security",
        ],
        &[
            ("STRATA_KAFKA_SASL_USERNAME", "strata"),
            ("STRATA_KAFKA_SASL_PASSWORD", &password_env),
            ("STRATA_LOG", "info,librdkafka=trace"),
        ],
    )?;
    agent.wait_ready(STEP).await?;
    let started = Instant::now();
    let batch = run_batch(&cp.endpoint(), raw_objects(20)).await?;
    ensure!(
        batch.state() == pb::BatchState::Succeeded,
        "{batch:?}; control plane log:\n{}\nagent log:\n{}",
        cp.log_tail(),
        agent.log_tail()
    );
    println!(
        "20 objects SUCCEEDED over SASL_SSL in {:?}",
        started.elapsed()
    );

    agent.terminate()?;
    agent.wait_exit(STEP).await?;
    cp.terminate()?;
    cp.wait_exit(STEP).await?;
    let cp_log = std::fs::read_to_string(cp.dir().join("control-plane.log"))?;
    let agent_log = agent.log();
    for (who, log) in [("control plane", &cp_log), ("agent", &agent_log)] {
        // The logs hold librdkafka's SASL exchange (so a password it printed would be here)...
        ensure!(
            log.contains("Authenticated as strata using SCRAM-SHA-512"),
            "the {who}'s log has no SASL debug lines ({} bytes)",
            log.len()
        );
        // ...and never the password.
        let leaks = lines_with(log, &password);
        ensure!(
            leaks.is_empty(),
            "the {who}'s log shows the password: {leaks:?}"
        );
        println!(
            "{who}: {} log lines, {} mention SASL, none the password",
            log.lines().count(),
            log.lines().filter(|l| l.contains("SASL")).count()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_with_a_wrong_password_is_not_ready_and_says_why() -> anyhow::Result<()> {
    let kafka = within(
        START,
        "start kafka with SASL_SSL",
        ApacheKafka::start_sasl(),
    )
    .await??;
    let sasl = kafka.sasl().context("started with SASL")?.clone();
    let redis = within(START, "start redis", RedisServer::start()).await??;
    let ca = sasl.ca_path().display().to_string();
    let wrong = "wrong-password-1234";
    let started = Instant::now();
    let mut cp = ControlPlane::spawn_unready(
        &sasl.bootstrap(),
        &redis.url(),
        &[
            "--zones",
            "raw",
            "--kafka-sasl-username",
            "strata",
            "--kafka-ca",
            &ca,
        ],
        &[("STRATA_KAFKA_SASL_PASSWORD", wrong)],
    )?;
    let answer = loop {
        if let Some(status) = cp.exit_status()? {
            bail!(
                "the control plane exited ({status}) before its readiness said why; log:\n{}",
                cp.log_tail()
            );
        }
        let last = match http_get(cp.admin_port(), "/health/readiness").await {
            Ok((503, body)) if body.contains("kafka: authentication failed") => break body,
            Ok((code, body)) => format!("{code} {body}"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            started.elapsed() < STEP,
            "readiness did not name kafka's authentication within {STEP:?} (last: {last}); \
             log:\n{}",
            cp.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("readiness after {:?}: {answer}", started.elapsed());
    ensure!(
        !answer.contains(wrong),
        "readiness shows the password: {answer}"
    );
    ensure!(
        answer.contains("SASL"),
        "readiness does not say SASL: {answer}"
    );
    // It does not hang: SIGTERM stops it while its driver waits for the broker.
    let stopping = Instant::now();
    cp.terminate()?;
    let status = cp.wait_exit(Duration::from_secs(30)).await?;
    println!("exited {status} {:?} after SIGTERM", stopping.elapsed());
    let log = std::fs::read_to_string(cp.dir().join("control-plane.log"))?;
    ensure!(
        !log.contains(wrong),
        "the log shows the password: {:?}",
        lines_with(&log, wrong)
    );
    Ok(())
}
