//! Attacks on the gRPC port of a control plane that authenticates its callers, with the real
//! `strata-control-plane` (started with `--auth-file`, tokens made by its own `new-token`
//! command), the broker and Redis.
//!
//! One table of attacks ([`attacks`]): every RPC without credentials, every RPC with a role that
//! does not grant it, unknown and malformed tokens, an agent token registering for another zone,
//! another principal renewing or ending an agent's lease, an object of an unconfigured zone, an
//! idempotency key with a control character, an oversized registration. Each row names the
//! status it must get and what its message must say; around every row the test takes a digest
//! of Redis (every key's `DUMP`) and of the end offsets of the test's topics, and the row fails
//! if either changed: a refused call leaves no trace.
//!
//! A second table ([`FORGED_RECORDS`]) attacks through the topics, as someone who can produce to
//! them: an unsigned Loaded naming the live agent lease of the object's zone, a Loaded signed with
//! the key of an ended lease (a result replayed from an old lease epoch), and an unsigned and a
//! forged Ready on the zone topic of a running agent whose `exec` processor leaves a marker file.
//! Each must be counted under its reason (`strata_results_rejected_total`,
//! `strata_agent_ready_rejected_total`), leave Redis and every other topic as they were, the
//! object not LOADED and no marker; then a correctly signed result and a Ready the control plane
//! signed show that the same checks see an admitted change. The gRPC port serves TLS: a lease's
//! key is only handed out over TLS.
//!
//! Beside the tables: idempotency keys are scoped to their principal, a token added to the auth
//! file is accepted after SIGHUP (and not before), and the readiness body says how callers are
//! authenticated.
//!
//! Needs the binaries built (`cargo build --bins`). Every wait is bounded.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use sha2::{Digest as _, Sha256};
use strata_proto::v1 as pb;
use strata_proto::v1::agent_registry_client::AgentRegistryClient;
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use strata_tests::certs::TestCa;
use strata_tests::control_plane::{AuthFile, ControlPlane, GrpcTls, Secured};
use strata_tests::redis_server::RedisServer;
use strata_tests::worker_agent::http_get;
use strata_tests::{TestBroker, blocking, temp_dir, within};
use tempfile::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request};

const LONG: Duration = Duration::from_secs(60);
/// Bound on one attack's call.
const CALL: Duration = Duration::from_secs(10);
/// Leases far longer than the test, heartbeats rarer than it: no lease expires and no running
/// agent's heartbeat changes Redis while it runs.
const CP_FLAGS: &[&str] = &[
    "--topic-partitions",
    "1",
    "--lease-ttl-secs",
    "600",
    "--heartbeat-interval-secs",
    "300",
];

/// Who calls: a principal of the auth file, or a forged credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Nobody,
    UnknownToken,
    NotBearer,
    Reader,
    Submitter,
    Operator,
    AgentRaw,
    /// Another principal with `agent:raw`.
    OtherAgentRaw,
}

/// The RPC an attack calls, with a request that would change something if it were admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    SubmitBatch,
    SubmitBatchStream,
    PlanBatch,
    GetPlan,
    GetBatch,
    ListBatches,
    WatchBatch,
    GetObject,
    ListRetries,
    GetRetry,
    ListDeadLetters,
    CancelBatch,
    RetryNow,
    ReplayDeadLetters,
    RegisterAgent,
    Heartbeat,
    Deregister,
    ListAgents,
    /// SubmitBatch of an object whose zone the control plane does not run.
    SubmitUnconfiguredZone,
    /// SubmitBatch whose idempotency key holds a newline and a terminal escape.
    SubmitControlCharKey,
    /// RegisterAgent for the standardized zone.
    RegisterOtherZone,
    /// RegisterAgent with a 300-byte host name.
    RegisterHugeHostname,
}

const EVERY_RPC: [(Call, &str); 18] = [
    (Call::SubmitBatch, "strata.v1.Orchestrator/SubmitBatch"),
    (
        Call::SubmitBatchStream,
        "strata.v1.Orchestrator/SubmitBatchStream",
    ),
    (Call::PlanBatch, "strata.v1.Orchestrator/PlanBatch"),
    (Call::GetPlan, "strata.v1.Orchestrator/GetPlan"),
    (Call::GetBatch, "strata.v1.Orchestrator/GetBatch"),
    (Call::ListBatches, "strata.v1.Orchestrator/ListBatches"),
    (Call::WatchBatch, "strata.v1.Orchestrator/WatchBatch"),
    (Call::GetObject, "strata.v1.Orchestrator/GetObject"),
    (Call::ListRetries, "strata.v1.Orchestrator/ListRetries"),
    (Call::GetRetry, "strata.v1.Orchestrator/GetRetry"),
    (
        Call::ListDeadLetters,
        "strata.v1.Orchestrator/ListDeadLetters",
    ),
    (Call::CancelBatch, "strata.v1.Orchestrator/CancelBatch"),
    (Call::RetryNow, "strata.v1.Orchestrator/RetryNow"),
    (
        Call::ReplayDeadLetters,
        "strata.v1.Orchestrator/ReplayDeadLetters",
    ),
    (Call::RegisterAgent, "strata.v1.AgentRegistry/RegisterAgent"),
    (Call::Heartbeat, "strata.v1.AgentRegistry/Heartbeat"),
    (Call::Deregister, "strata.v1.AgentRegistry/Deregister"),
    (Call::ListAgents, "strata.v1.AgentRegistry/ListAgents"),
];

/// A caller whose roles do not grant `call` (agents read nothing; readers submit nothing;
/// submitters operate nothing; only agents heartbeat).
fn wrong_role_for(call: Call) -> Caller {
    match call {
        Call::SubmitBatch | Call::SubmitBatchStream | Call::PlanBatch => Caller::Reader,
        Call::CancelBatch | Call::RetryNow | Call::ReplayDeadLetters => Caller::Submitter,
        Call::RegisterAgent | Call::Heartbeat | Call::Deregister => Caller::Operator,
        _ => Caller::AgentRaw,
    }
}

struct Attack {
    name: String,
    caller: Caller,
    call: Call,
    code: Code,
    /// Words the status message must hold.
    says: Vec<&'static str>,
}

fn attacks() -> Vec<Attack> {
    let mut out = Vec::new();
    for (call, method) in EVERY_RPC {
        out.push(Attack {
            name: format!("{method} without credentials"),
            caller: Caller::Nobody,
            call,
            code: Code::Unauthenticated,
            says: vec!["no credentials"],
        });
    }
    for (call, method) in EVERY_RPC {
        let caller = wrong_role_for(call);
        out.push(Attack {
            name: format!("{method} by {caller:?}"),
            caller,
            call,
            code: Code::PermissionDenied,
            says: vec!["may not call", method],
        });
    }
    let more = [
        (
            "a token the auth file does not know",
            Caller::UnknownToken,
            Call::CancelBatch,
            Code::Unauthenticated,
            vec!["not known"],
        ),
        (
            "an authorization header that is not Bearer",
            Caller::NotBearer,
            Call::SubmitBatch,
            Code::Unauthenticated,
            vec!["Bearer"],
        ),
        (
            "an agent:raw token registering for standardized",
            Caller::AgentRaw,
            Call::RegisterOtherZone,
            Code::PermissionDenied,
            vec!["standardized"],
        ),
        (
            "another principal's heartbeat claiming the agent's attempts",
            Caller::OtherAgentRaw,
            Call::Heartbeat,
            Code::PermissionDenied,
            vec!["strata-tests-other-agent"],
        ),
        (
            "another principal deregistering the agent",
            Caller::OtherAgentRaw,
            Call::Deregister,
            Code::PermissionDenied,
            vec!["strata-tests-other-agent"],
        ),
        (
            "an object of an unconfigured zone",
            Caller::Submitter,
            Call::SubmitUnconfiguredZone,
            Code::InvalidArgument,
            vec!["gold"],
        ),
        (
            "an idempotency key with a newline and a terminal escape",
            Caller::Submitter,
            Call::SubmitControlCharKey,
            Code::InvalidArgument,
            vec!["control character"],
        ),
        (
            "a registration with a 300-byte host name",
            Caller::AgentRaw,
            Call::RegisterHugeHostname,
            Code::InvalidArgument,
            vec!["hostname"],
        ),
    ];
    for (name, caller, call, code, says) in more {
        out.push(Attack {
            name: name.into(),
            caller,
            call,
            code,
            says,
        });
    }
    out
}

/// The control plane under attack (gRPC over TLS: a lease's result signing key is only handed out
/// over TLS), its callers' tokens, and what the attacks aim at: a running batch (no agent takes
/// its objects) and a live agent lease of principal `agent-raw`.
struct Target {
    cp: ControlPlane,
    /// The CA clients trust (its directory is `_certs`).
    ca: TestCa,
    _certs: TempDir,
    redis: RedisServer,
    broker: TestBroker,
    channel: Channel,
    tokens: BTreeMap<&'static str, String>,
    batch_id: String,
    agent_id: String,
    lease_epoch: u64,
    /// The result signing key of that lease.
    result_key: Vec<u8>,
}

impl Target {
    async fn start() -> anyhow::Result<Self> {
        let broker = within(LONG, "start broker", TestBroker::start()).await??;
        let redis = within(LONG, "start redis", RedisServer::start()).await??;
        let certs = temp_dir("security-certs")?;
        let ca = TestCa::create(certs.path(), "server-ca")?;
        let server = ca.server_cert("grpc")?;
        let auth = AuthFile::create()?;
        let mut tokens = BTreeMap::new();
        for (name, roles) in [
            ("reader", &["read"][..]),
            ("submitter", &["submit"]),
            ("operator", &["operate"]),
            ("admin", &["admin"]),
            ("agent-raw", &["agent:raw"]),
            ("strata-tests-other-agent", &["agent:raw"]),
            ("agent-standardized", &["agent:standardized"]),
        ] {
            tokens.insert(name, auth.add_token(name, roles)?);
        }
        let cp = within(
            LONG,
            "start the control plane",
            ControlPlane::start_secured_on(
                &broker,
                &redis.url(),
                Secured {
                    tls: Some(GrpcTls {
                        ca: ca.cert_path(),
                        server,
                        client_ca: None,
                    }),
                    auth: Some(auth),
                },
                CP_FLAGS,
            ),
        )
        .await??;
        let pem = std::fs::read(ca.cert_path())?;
        let channel = Channel::from_shared(cp.endpoint())?
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?
            .connect()
            .await?;
        let mut target = Self {
            cp,
            ca,
            _certs: certs,
            redis,
            broker,
            channel,
            tokens,
            batch_id: String::new(),
            agent_id: String::new(),
            lease_epoch: 0,
            result_key: Vec::new(),
        };
        let submitted = target
            .orchestrator()
            .submit_batch(target.authed("submitter", submit_request("target", "1001", "")))
            .await?
            .into_inner();
        ensure!(submitted.created, "{submitted:?}");
        target.batch_id = submitted.batch_id;
        let lease = target
            .registry()
            .register_agent(target.authed("agent-raw", registration("raw", "host-a")))
            .await?
            .into_inner();
        target.agent_id = lease.agent_id;
        target.lease_epoch = lease.lease_epoch;
        target.result_key = lease.result_signing_key;
        Ok(target)
    }

    fn orchestrator(&self) -> OrchestratorClient<Channel> {
        OrchestratorClient::new(self.channel.clone())
    }

    fn registry(&self) -> AgentRegistryClient<Channel> {
        AgentRegistryClient::new(self.channel.clone())
    }

    /// The attacked batch's object `1001`, as a reader sees it.
    async fn target_object(&self) -> anyhow::Result<pb::ObjectStatus> {
        Ok(self
            .orchestrator()
            .get_object(self.authed(
                "reader",
                pb::GetObjectRequest {
                    batch_id: self.batch_id.clone(),
                    object_id: "1001".into(),
                },
            ))
            .await?
            .into_inner())
    }

    /// `message` with principal `name`'s bearer token.
    fn authed<T>(&self, name: &str, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let header = format!("Bearer {}", self.tokens[name]);
        request
            .metadata_mut()
            .insert("authorization", header.parse().expect("ASCII token"));
        request
    }

    fn as_caller<T>(&self, caller: Caller, message: T) -> Request<T> {
        let name = match caller {
            Caller::Nobody => return Request::new(message),
            Caller::UnknownToken | Caller::NotBearer => {
                let mut request = Request::new(message);
                let header = if caller == Caller::UnknownToken {
                    "Bearer strata_0000000000000000000000000000000000000000000000000000000000000000"
                } else {
                    "Basic c3RyYXRhOnN0cmF0YQ=="
                };
                request
                    .metadata_mut()
                    .insert("authorization", header.parse().expect("ASCII"));
                return request;
            }
            Caller::Reader => "reader",
            Caller::Submitter => "submitter",
            Caller::Operator => "operator",
            Caller::AgentRaw => "agent-raw",
            Caller::OtherAgentRaw => "strata-tests-other-agent",
        };
        self.authed(name, message)
    }

    /// Calls `call` as `caller`: the status it got (`Ok` when the call was admitted).
    async fn attack(&self, caller: Caller, call: Call) -> Result<(), tonic::Status> {
        let mut o = self.orchestrator();
        let mut r = self.registry();
        let batch_id = self.batch_id.clone();
        let held = vec![pb::InFlightAttempt {
            batch_id: batch_id.clone(),
            object_id: "1001".into(),
            attempt: 1,
            dispatch_epoch: 1,
            started_at: None,
        }];
        match call {
            Call::SubmitBatch => o
                .submit_batch(self.as_caller(caller, submit_request("attack", "1002", "")))
                .await
                .map(drop),
            Call::SubmitBatchStream => {
                let header = pb::SubmitBatchStreamRequest {
                    chunk: Some(pb::submit_batch_stream_request::Chunk::Header(
                        pb::SubmitBatchHeader {
                            idempotency_key: "attack-stream".into(),
                            ..Default::default()
                        },
                    )),
                };
                let objects = pb::SubmitBatchStreamRequest {
                    chunk: Some(pb::submit_batch_stream_request::Chunk::Objects(
                        pb::ObjectList {
                            objects: vec![object("1003", "")],
                        },
                    )),
                };
                let stream = tokio_stream::iter(vec![header, objects]);
                o.submit_batch_stream(self.as_caller(caller, stream))
                    .await
                    .map(drop)
            }
            Call::PlanBatch => o
                .plan_batch(self.as_caller(
                    caller,
                    pb::PlanBatchRequest {
                        input: submit_request("plan", "1004", "").input,
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
            Call::GetPlan => o
                .get_plan(self.as_caller(
                    caller,
                    pb::GetPlanRequest {
                        batch_id,
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
            Call::GetBatch => o
                .get_batch(self.as_caller(caller, pb::GetBatchRequest { batch_id }))
                .await
                .map(drop),
            Call::ListBatches => o
                .list_batches(self.as_caller(caller, pb::ListBatchesRequest::default()))
                .await
                .map(drop),
            Call::WatchBatch => o
                .watch_batch(self.as_caller(caller, pb::WatchBatchRequest { batch_id }))
                .await
                .map(drop),
            Call::GetObject => o
                .get_object(self.as_caller(
                    caller,
                    pb::GetObjectRequest {
                        batch_id,
                        object_id: "1001".into(),
                    },
                ))
                .await
                .map(drop),
            Call::ListRetries => o
                .list_retries(self.as_caller(caller, pb::ListRetriesRequest::default()))
                .await
                .map(drop),
            Call::GetRetry => o
                .get_retry(self.as_caller(
                    caller,
                    pb::GetRetryRequest {
                        batch_id,
                        object_id: "1001".into(),
                    },
                ))
                .await
                .map(drop),
            Call::ListDeadLetters => o
                .list_dead_letters(self.as_caller(caller, pb::ListDeadLettersRequest::default()))
                .await
                .map(drop),
            Call::CancelBatch => o
                .cancel_batch(self.as_caller(
                    caller,
                    pb::CancelBatchRequest {
                        batch_id,
                        reason: "attack".into(),
                    },
                ))
                .await
                .map(drop),
            Call::RetryNow => o
                .retry_now(self.as_caller(
                    caller,
                    pb::RetryNowRequest {
                        batch_id,
                        object_id: "1001".into(),
                    },
                ))
                .await
                .map(drop),
            Call::ReplayDeadLetters => o
                .replay_dead_letters(self.as_caller(
                    caller,
                    pb::ReplayDeadLettersRequest {
                        batch_id,
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
            Call::RegisterAgent => r
                .register_agent(self.as_caller(caller, registration("raw", "host-b")))
                .await
                .map(drop),
            Call::RegisterOtherZone => r
                .register_agent(self.as_caller(caller, registration("standardized", "host-c")))
                .await
                .map(drop),
            Call::RegisterHugeHostname => r
                .register_agent(self.as_caller(caller, registration("raw", &"h".repeat(300))))
                .await
                .map(drop),
            Call::Heartbeat => r
                .heartbeat(self.as_caller(
                    caller,
                    pb::HeartbeatRequest {
                        agent_id: self.agent_id.clone(),
                        lease_epoch: self.lease_epoch,
                        in_flight: held,
                        draining: true,
                    },
                ))
                .await
                .map(drop),
            Call::Deregister => r
                .deregister(self.as_caller(
                    caller,
                    pb::DeregisterRequest {
                        agent_id: self.agent_id.clone(),
                        lease_epoch: self.lease_epoch,
                        reason: "attack".into(),
                    },
                ))
                .await
                .map(drop),
            Call::ListAgents => r
                .list_agents(self.as_caller(caller, pb::ListAgentsRequest::default()))
                .await
                .map(drop),
            Call::SubmitUnconfiguredZone => o
                .submit_batch(self.as_caller(caller, submit_request("gold", "1005", "gold")))
                .await
                .map(drop),
            Call::SubmitControlCharKey => o
                .submit_batch(
                    self.as_caller(caller, submit_request("evil\n\u{1b}[31mkey", "1006", "")),
                )
                .await
                .map(drop),
        }
    }

    /// A digest of what a refused call must not change: every Redis key and value, and the
    /// end offset of every partition of the test's topics.
    async fn digest(&self) -> anyhow::Result<String> {
        self.digest_except(None).await
    }

    /// [`Self::digest`] without the partitions of topic `skip` (one an attack produces to: its
    /// end offset moves by construction).
    async fn digest_except(&self, skip: Option<&str>) -> anyhow::Result<String> {
        let mut con = self.redis.connection().await?;
        let mut keys: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        let mut hash = Sha256::new();
        for key in &keys {
            let dump: Option<Vec<u8>> = redis::cmd("DUMP").arg(key).query_async(&mut con).await?;
            hash.update(key.as_bytes());
            hash.update(dump.unwrap_or_default());
        }
        let mut offsets = self.end_offsets().await?;
        offsets.retain(|(topic, _), _| Some(topic.as_str()) != skip);
        hash.update(format!("{offsets:?}"));
        let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!(
            "{} Redis keys, {} partitions, {hex}",
            keys.len(),
            offsets.len()
        ))
    }

    /// The end offset of every partition of the test's topics. A broker that has just created
    /// a topic may answer a metadata request with a transient error (`NotLeaderForPartition`)
    /// for a moment: asked again, up to 10 times.
    async fn end_offsets(&self) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
        let mut tries = 0;
        loop {
            match self.end_offsets_once().await {
                Ok(offsets) => return Ok(offsets),
                Err(e) if tries < 10 => {
                    tries += 1;
                    println!("end offsets, try {tries}: {e:#}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn end_offsets_once(&self) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
        let config = self.broker.consumer_config("security-digest");
        let prefix = self.broker.topic_prefix().to_owned();
        blocking(LONG, "topic end offsets", move || {
            let consumer: BaseConsumer = config.create()?;
            let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
            let mut out = BTreeMap::new();
            for topic in metadata.topics() {
                if !topic.name().starts_with(&prefix) {
                    continue;
                }
                for p in topic.partitions() {
                    let (_, high) =
                        consumer.fetch_watermarks(topic.name(), p.id(), Duration::from_secs(10))?;
                    out.insert((topic.name().to_owned(), p.id()), high);
                }
            }
            anyhow::Ok(out)
        })
        .await?
    }

    /// Waits until two digests a second apart agree: the submission's records are written and
    /// nothing else is under way.
    async fn settled(&self) -> anyhow::Result<String> {
        let mut last = self.digest().await?;
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.digest().await?;
            if now == last {
                return Ok(now);
            }
            last = now;
        }
        bail!("Redis and the topics kept changing for 30 s with no caller: {last}")
    }
}

fn object(id: &str, zone: &str) -> pb::ObjectDefinition {
    pb::ObjectDefinition {
        id: id.into(),
        zone: zone.into(),
        ..Default::default()
    }
}

fn submit_request(key: &str, id: &str, zone: &str) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        idempotency_key: key.into(),
        input: Some(pb::BatchInput {
            source: Some(pb::batch_input::Source::Objects(pb::ObjectList {
                objects: vec![object(id, zone)],
            })),
        }),
        options: Some(pb::SubmitOptions {
            all: true,
            ..Default::default()
        }),
    }
}

fn registration(zone: &str, hostname: &str) -> pb::RegisterAgentRequest {
    pb::RegisterAgentRequest {
        zone: zone.into(),
        capacity: 1,
        hostname: hostname.into(),
        version: "attack".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_attack_is_refused_with_its_status_and_changes_nothing() -> anyhow::Result<()> {
    let target = Target::start().await?;
    let table = attacks();
    ensure!(table.len() >= 30, "{} attacks", table.len());
    let mut before = within(LONG, "settle", target.settled()).await??;
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for attack in &table {
        let got = within(
            CALL,
            &attack.name,
            target.attack(attack.caller, attack.call),
        )
        .await?;
        let after = within(LONG, "digest", target.digest()).await??;
        let (code, message) = match &got {
            Ok(()) => (Code::Ok, String::new()),
            Err(s) => (s.code(), s.message().to_owned()),
        };
        report.push(format!("{:<72} {code:?}: {message}", attack.name));
        if code != attack.code {
            failures.push(format!(
                "{}: {code:?} ({message}), not {:?}",
                attack.name, attack.code
            ));
        } else if let Some(word) = attack.says.iter().find(|w| !message.contains(*w)) {
            failures.push(format!(
                "{}: the message {message:?} does not say {word:?}",
                attack.name
            ));
        }
        if after != before {
            failures.push(format!(
                "{}: state changed: {before} -> {after}",
                attack.name
            ));
            before = after;
        }
    }
    println!("{} attacks:\n{}", table.len(), report.join("\n"));
    ensure!(
        failures.is_empty(),
        "{} of {} attacks were not refused cleanly:\n{}\n\nlog tail:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n"),
        target.cp.log_tail()
    );
    // The control plane still serves its principals: the lease the attacks aimed at is whole.
    let beat = target
        .registry()
        .heartbeat(target.authed(
            "agent-raw",
            pb::HeartbeatRequest {
                agent_id: target.agent_id.clone(),
                lease_epoch: target.lease_epoch,
                ..Default::default()
            },
        ))
        .await;
    ensure!(beat.is_ok(), "the agent's own heartbeat: {beat:?}");
    // And the digest sees an admitted change: the operator cancels the batch.
    let before = within(LONG, "settle", target.settled()).await??;
    let cancelled = target
        .orchestrator()
        .cancel_batch(target.authed(
            "operator",
            pb::CancelBatchRequest {
                batch_id: target.batch_id.clone(),
                reason: "end of the attack run".into(),
            },
        ))
        .await?
        .into_inner();
    ensure!(
        cancelled.state() == pb::BatchState::Cancelled,
        "{cancelled:?}"
    );
    let after = within(LONG, "settle", target.settled()).await??;
    ensure!(
        after != before,
        "the digest did not change with an admitted cancel: {after}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_belong_to_their_principal() -> anyhow::Result<()> {
    let target = Target::start().await?;
    let mut o = target.orchestrator();
    let mine = o
        .submit_batch(target.authed("submitter", submit_request("nightly", "1010", "")))
        .await?
        .into_inner();
    ensure!(mine.created, "{mine:?}");
    // Another principal with the same key gets a batch of its own, not the first one.
    let theirs = o
        .submit_batch(target.authed("admin", submit_request("nightly", "1011", "")))
        .await?
        .into_inner();
    ensure!(
        theirs.created && theirs.batch_id != mine.batch_id,
        "admin's 'nightly' must be its own batch: {theirs:?} vs {mine:?}"
    );
    // The owner repeating its submission gets its batch back.
    let again = o
        .submit_batch(target.authed("submitter", submit_request("nightly", "1010", "")))
        .await?
        .into_inner();
    ensure!(
        !again.created && again.batch_id == mine.batch_id,
        "{again:?}"
    );
    // What GetBatch shows is the key as the caller gave it.
    let batch = o
        .get_batch(target.authed(
            "reader",
            pb::GetBatchRequest {
                batch_id: mine.batch_id.clone(),
            },
        ))
        .await?
        .into_inner();
    ensure!(
        batch.idempotency_key == "nightly",
        "{:?}",
        batch.idempotency_key
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_added_to_the_auth_file_is_accepted_after_sighup_and_not_before()
-> anyhow::Result<()> {
    let target = Target::start().await?;
    let auth = target.cp.auth().context("an auth file")?;
    let token = auth.add_token("late-reader", &["read"])?;
    let call = |token: String| {
        let mut o = target.orchestrator();
        async move {
            let mut request = Request::new(pb::ListBatchesRequest::default());
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ASCII"),
            );
            o.list_batches(request).await
        }
    };
    let before = call(token.clone()).await;
    ensure!(
        before.as_ref().err().map(tonic::Status::code) == Some(Code::Unauthenticated),
        "before SIGHUP: {before:?}"
    );
    target.cp.hangup()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match call(token.clone()).await {
            Ok(_) => break,
            Err(s)
                if s.code() == Code::Unauthenticated && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => bail!("after SIGHUP: {s}"),
        }
    }
    // The readiness body says how callers are authenticated, and no token is in it.
    let (status, body) = http_get(target.cp.admin_port(), "/health/readiness").await?;
    ensure!(status == 200, "{status}: {body}");
    ensure!(body.contains("auth file"), "{body}");
    ensure!(!body.contains(&token), "the readiness body shows a token");
    let log = target.cp.log_tail();
    ensure!(!log.contains(&token), "the log shows a token");
    Ok(())
}

/// A record an attacker who can produce to Strata's topics writes there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forged {
    /// A Loaded for the target's object naming the live agent lease of its zone, unsigned.
    UnsignedLoaded,
    /// A Loaded for it signed with the key of an earlier lease of the same principal, since
    /// ended (a result replayed from an old lease epoch).
    OldLeaseLoaded,
    /// A Ready on the zone topic of a running agent (`exec` processor), unsigned.
    UnsignedReady,
    /// The same with a signature that is not the control plane's.
    BadlySignedReady,
}

impl Forged {
    /// Whether it goes to a zone's Ready topic (else to the results topic).
    fn is_ready(self) -> bool {
        matches!(self, Forged::UnsignedReady | Forged::BadlySignedReady)
    }
}

/// Rows: the forged record, and the `reason` its rejection must be counted under (by the control
/// plane for results, `strata_results_rejected_total`; by the agent for Ready records,
/// `strata_agent_ready_rejected_total`).
const FORGED_RECORDS: [(Forged, &str); 4] = [
    (Forged::UnsignedLoaded, "unsigned"),
    (Forged::OldLeaseLoaded, "old_lease"),
    (Forged::UnsignedReady, "unsigned"),
    (Forged::BadlySignedReady, "bad_signature"),
];

/// A Loaded for `object` (its current attempt) by `agent_id` of lease `epoch`, signed with `key`
/// (empty: unsigned).
fn loaded(object: &pb::ObjectStatus, agent_id: &str, epoch: u64, key: &[u8]) -> pb::ObjectResult {
    let mut result = pb::ObjectResult {
        result: Some(pb::object_result::Result::Loaded(pb::ObjectLoaded {
            batch_id: object.batch_id.clone(),
            object_id: "1001".into(),
            zone: object.zone.clone(),
            attempt: object.attempt,
            dispatch_epoch: object.dispatch_epoch,
            agent_id: agent_id.into(),
            agent_lease_epoch: epoch,
            ..Default::default()
        })),
    };
    if let Some(key) = strata_proto::signing::ResultKey::from_slice(key) {
        key.sign(&mut result);
    }
    result
}

/// Writes `payload` (of wire type `kind`) to `topic` under `key`.
async fn produce(
    broker: &TestBroker,
    topic: &str,
    key: &str,
    kind: &str,
    payload: Vec<u8>,
) -> anyhow::Result<()> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = broker.producer_config().create()?;
    let record =
        FutureRecord::to(topic)
            .key(key)
            .payload(&payload)
            .headers(OwnedHeaders::new().insert(Header {
                key: strata_proto::kafka::HEADER_TYPE,
                value: Some(kind),
            }));
    within(LONG, "produce", producer.send(record, LONG))
        .await?
        .map_err(|(e, _)| e)?;
    Ok(())
}

/// A counter of the admin port's `/metrics` at `port` (0 when absent).
async fn counter(port: u16, sample: &str) -> anyhow::Result<f64> {
    let (status, body) = http_get(port, "/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    Ok(strata_tests::worker_agent::metric_value(&body, sample))
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_records_on_the_topics_are_refused_and_change_nothing() -> anyhow::Result<()> {
    use prost::Message as _;
    use strata_proto::kafka;
    let target = Target::start().await?;
    // An earlier lease of principal agent-raw, ended: its key is a real one, its epoch old.
    let old = target
        .registry()
        .register_agent(target.authed("agent-raw", registration("raw", "host-old")))
        .await?
        .into_inner();
    target
        .registry()
        .deregister(target.authed(
            "agent-raw",
            pb::DeregisterRequest {
                agent_id: old.agent_id.clone(),
                lease_epoch: old.lease_epoch,
                reason: "restarted".into(),
            },
        ))
        .await?;
    ensure!(old.lease_epoch < target.lease_epoch || old.agent_id != target.agent_id);
    // A real agent of zone standardized (over TLS, with its token) whose exec processor leaves a
    // marker file for every Ready it runs.
    let work = temp_dir("security-exec")?;
    let marker = work.path().join("ran");
    let script = work.path().join("run.sh");
    std::fs::write(&script, format!("touch '{}'\n", marker.display()))?;
    let token_file = work.path().join("token");
    std::fs::write(&token_file, &target.tokens["agent-standardized"])?;
    let path = |p: &std::path::Path| p.to_str().map(str::to_owned).context("UTF-8 path");
    let (script, ca, token_file) = (
        path(&script)?,
        path(&target.ca.cert_path())?,
        path(&token_file)?,
    );
    ensure!(!script.contains(','), "{script} has a comma");
    let mut agent = strata_tests::worker_agent::WorkerAgent::start(
        "standardized-agent",
        &target.cp.endpoint(),
        "standardized",
        &[
            "--processor",
            "exec",
            "--exec-command",
            "sh",
            "--exec-arg",
            &script,
            "--control-plane-ca",
            &ca,
            "--control-plane-token-file",
            &token_file,
        ],
        &[],
    )?;
    within(LONG, "the agent ready", agent.wait_ready(LONG)).await??;

    let object = target.target_object().await?;
    ensure!(
        object.state() == pb::ObjectState::Ready && object.zone == "raw" && object.attempt >= 1,
        "{object:?}"
    );
    let prefix = target.broker.topic_prefix().to_owned();
    let results_topic = kafka::results_topic(&prefix);
    let ready_topic = kafka::ready_topic(&prefix, "standardized");
    target
        .broker
        .create_topics(&[results_topic.as_str(), ready_topic.as_str()], 1)
        .await?;

    let mut failures = Vec::new();
    for (forged, reason) in FORGED_RECORDS {
        let (topic, sample) = if forged.is_ready() {
            (
                &ready_topic,
                format!(
                    "strata_agent_ready_rejected_total{{reason=\"{reason}\",zone=\"standardized\"}}"
                ),
            )
        } else {
            (
                &results_topic,
                format!("strata_results_rejected_total{{reason=\"{reason}\"}}"),
            )
        };
        let before = within(LONG, "settle", async {
            // Settled apart from the attacked topic.
            let mut last = target.digest_except(Some(topic)).await?;
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = target.digest_except(Some(topic)).await?;
                if now == last {
                    return anyhow::Ok(now);
                }
                last = now;
            }
            bail!("Redis and the topics kept changing: {last}")
        })
        .await??;
        let count = || async {
            if forged.is_ready() {
                agent.metric(&sample).await
            } else {
                counter(target.cp.admin_port(), &sample).await
            }
        };
        let counted = count().await?;
        match forged {
            Forged::UnsignedLoaded => {
                let r = loaded(&object, &target.agent_id, target.lease_epoch, &[]);
                produce(
                    &target.broker,
                    topic,
                    &object.batch_id,
                    kafka::TYPE_OBJECT_RESULT,
                    r.encode_to_vec(),
                )
                .await?
            }
            Forged::OldLeaseLoaded => {
                let r = loaded(
                    &object,
                    &old.agent_id,
                    old.lease_epoch,
                    &old.result_signing_key,
                );
                produce(
                    &target.broker,
                    topic,
                    &object.batch_id,
                    kafka::TYPE_OBJECT_RESULT,
                    r.encode_to_vec(),
                )
                .await?
            }
            Forged::UnsignedReady | Forged::BadlySignedReady => {
                let ready = pb::ObjectReady {
                    batch_id: target.batch_id.clone(),
                    object_id: "2001".into(),
                    zone: "standardized".into(),
                    attempt: 1,
                    max_attempts: 3,
                    dispatch_epoch: 1,
                    object: Some(pb::ObjectDefinition {
                        id: "2001".into(),
                        zone: "standardized".into(),
                        attributes: [("note".to_owned(), "forged".to_owned())]
                            .into_iter()
                            .collect(),
                        ..Default::default()
                    }),
                    signature: if forged == Forged::BadlySignedReady {
                        vec![7; 64]
                    } else {
                        Vec::new()
                    },
                    ..Default::default()
                };
                produce(
                    &target.broker,
                    topic,
                    "2001",
                    kafka::TYPE_OBJECT_READY,
                    ready.encode_to_vec(),
                )
                .await?
            }
        }
        let limit = tokio::time::Instant::now() + LONG;
        let now = loop {
            let now = count().await?;
            if now > counted || tokio::time::Instant::now() > limit {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if now != counted + 1.0 {
            failures.push(format!("{forged:?}: {sample} went {counted} -> {now}"));
        }
        // Let anything the record might have set off happen before looking.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = target.digest_except(Some(topic)).await?;
        if after != before {
            failures.push(format!("{forged:?}: state changed: {before} -> {after}"));
        }
        let status = target.target_object().await?;
        if status.state() != pb::ObjectState::Ready || status.attempt != object.attempt {
            failures.push(format!("{forged:?}: the object moved: {status:?}"));
        }
        if marker.exists() {
            failures.push(format!("{forged:?}: the exec processor ran"));
        }
    }
    ensure!(
        failures.is_empty(),
        "forged records were not refused cleanly:\n{}\n\ncontrol plane log:\n{}\n\nagent log:\n{}",
        failures.join("\n"),
        target.cp.log_tail(),
        agent.log_tail()
    );
    // The rejections were logged, and no key was.
    let log = std::fs::read_to_string(target.cp.dir().join("control-plane.log"))?;
    ensure!(log.contains("result rejected"), "{}", target.cp.log_tail());
    ensure!(
        agent
            .log()
            .contains("ready record not signed by the control plane")
    );

    // The same record as the first, signed with the live lease's key, is heard: the object loads.
    let before = target.digest_except(Some(&results_topic)).await?;
    let r = loaded(
        &object,
        &target.agent_id,
        target.lease_epoch,
        &target.result_key,
    );
    produce(
        &target.broker,
        &results_topic,
        &object.batch_id,
        kafka::TYPE_OBJECT_RESULT,
        r.encode_to_vec(),
    )
    .await?;
    within(LONG, "the signed result applied", async {
        loop {
            let status = target.target_object().await?;
            if status.state() == pb::ObjectState::Loaded {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await??;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = target.digest_except(Some(&results_topic)).await?;
    ensure!(
        after != before,
        "the digest did not change with an admitted result"
    );
    // And a Ready the control plane signs is run: the marker the forged ones did not leave.
    target
        .orchestrator()
        .submit_batch(target.authed(
            "submitter",
            submit_request("signed-ready", "2001", "standardized"),
        ))
        .await?;
    within(LONG, "the exec processor to run a signed Ready", async {
        while !marker.exists() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn no_lease_key_is_handed_out_over_plaintext_when_callers_are_authenticated()
-> anyhow::Result<()> {
    let broker = within(LONG, "start broker", TestBroker::start()).await??;
    let redis = within(LONG, "start redis", RedisServer::start()).await??;
    let auth = AuthFile::create()?;
    let token = auth.add_token("agent-raw", &["agent:raw"])?;
    let cp = within(
        LONG,
        "start the control plane",
        ControlPlane::start_secured_on(
            &broker,
            &redis.url(),
            Secured {
                tls: None,
                auth: Some(auth),
            },
            CP_FLAGS,
        ),
    )
    .await??;
    let channel = Channel::from_shared(cp.endpoint())?.connect().await?;
    let mut request = Request::new(registration("raw", "host-a"));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII"),
    );
    let refused = AgentRegistryClient::new(channel)
        .register_agent(request)
        .await
        .err()
        .context("a registration over plaintext was answered with a lease")?;
    ensure!(
        refused.code() == Code::FailedPrecondition && refused.message().contains("TLS"),
        "{refused:?}"
    );
    let mut con = redis.connection().await?;
    let agents: Vec<String> = redis::cmd("KEYS")
        .arg("*agents*")
        .query_async(&mut con)
        .await?;
    let mut leases = 0usize;
    for key in &agents {
        if let Ok(n) = redis::cmd("HLEN")
            .arg(key)
            .query_async::<usize>(&mut con)
            .await
        {
            leases += n;
        }
    }
    ensure!(leases == 0, "a lease was stored: {agents:?}");
    Ok(())
}
