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
//! Three attacks with real agents (`strata-worker-agent`, `exec` processor, over TLS with their
//! token):
//! - a flood of 10,000 `WatchBatch` calls on one connection by a `read` principal, while another
//!   principal's batch runs on a real agent: the flood gets at most its quota of streams (64),
//!   every other call is refused with `RESOURCE_EXHAUSTED` naming the limit or cut by h2 (the
//!   connection the server ends, a stream it refuses), the batch reaches SUCCEEDED as a watcher on
//!   another connection sees, and the control plane's peak RSS grows by less than a bound
//!   (printed);
//! - an object whose attributes try to make the `exec` program print the agent's environment
//!   (`$(env)`, backticks, `;`, `${…}`, a newline): the object loads, the program's environment
//!   holds only the allow-listed variables and none of the agent's secrets, and each attribute
//!   arrives as its text, unexpanded, in its variable and on stdin;
//! - newlines, a carriage return and terminal escapes in a program's error, in the ids of an
//!   unsigned Ready and in the agent id of a forged result: both the control plane's and the
//!   agent's log stay one event per line, with no raw ESC or CR, the text shown escaped.
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
use strata_tests::worker_agent::{WorkerAgent, http_get};
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
        let channel = connect(&cp, &ca).await?;
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

    /// A connection of its own to the control plane (the flood's, a watcher's).
    async fn connect(&self) -> anyhow::Result<Channel> {
        connect(&self.cp, &self.ca).await
    }

    /// A real `strata-worker-agent` of `zone`, ready, registered over TLS as principal
    /// `principal` (its token in `STRATA_CONTROL_PLANE_TOKEN`), whose `exec` processor runs
    /// `sh script` per object, with `flags` and `env` added.
    async fn exec_agent(
        &self,
        zone: &str,
        principal: &str,
        script: &std::path::Path,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<WorkerAgent> {
        let script = script.to_str().context("UTF-8 script path")?;
        // `--exec-arg` splits on commas.
        ensure!(!script.contains(','), "{script} has a comma");
        let ca = self.ca.cert_path();
        let ca = ca.to_str().context("UTF-8 CA path")?;
        let mut args = vec![
            "--processor",
            "exec",
            "--exec-command",
            "sh",
            "--exec-arg",
            script,
            "--control-plane-ca",
            ca,
        ];
        args.extend(flags);
        let mut env = env.to_vec();
        env.push(("STRATA_CONTROL_PLANE_TOKEN", &self.tokens[principal]));
        let mut agent = WorkerAgent::start(
            &format!("{zone}-exec"),
            &self.cp.endpoint(),
            zone,
            &args,
            &env,
        )?;
        within(LONG, "the agent ready", agent.wait_ready(LONG)).await??;
        Ok(agent)
    }

    /// Object `object_id` of batch `batch_id`, as principal `admin` sees it.
    async fn object(&self, batch_id: &str, object_id: &str) -> anyhow::Result<pb::ObjectStatus> {
        Ok(self
            .orchestrator()
            .get_object(self.authed(
                "admin",
                pb::GetObjectRequest {
                    batch_id: batch_id.into(),
                    object_id: object_id.into(),
                },
            ))
            .await?
            .into_inner())
    }

    /// Waits (bounded) until object `object_id` of `batch_id` is in a state `done` accepts.
    async fn wait_object(
        &self,
        batch_id: &str,
        object_id: &str,
        what: &str,
        done: impl Fn(pb::ObjectState) -> bool,
    ) -> anyhow::Result<pb::ObjectStatus> {
        within(LONG, what, async {
            loop {
                let status = self.object(batch_id, object_id).await?;
                if done(status.state()) {
                    return anyhow::Ok(status);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await?
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

/// A new connection to `cp`'s gRPC port over TLS, trusting `ca`.
async fn connect(cp: &ControlPlane, ca: &TestCa) -> anyhow::Result<Channel> {
    let pem = std::fs::read(ca.cert_path())?;
    Ok(Channel::from_shared(cp.endpoint())?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?
        .connect()
        .await?)
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

/// `WatchBatch` streams one principal may hold: the control plane's default
/// (`--max-watch-streams-per-principal`), which the tests do not change.
const WATCH_STREAMS_PER_PRINCIPAL: usize = 64;
/// `WatchBatch` calls the flood makes on its one connection.
const FLOOD_CALLS: usize = 10_000;
/// Bound on the whole flood being answered (the in-process flood takes about 2 s).
const FLOOD: Duration = Duration::from_secs(180);
/// Bound on the control plane's peak resident set growing during the flood. Each call that is
/// refused must leave nothing behind, and the streams admitted are the quota's 64 over a batch of
/// five objects (a snapshot of a few hundred bytes each); what the flood may cost is per-stream
/// state of h2 and rustls while up to 256 streams (the connection's limit) are in flight, and
/// the allocator's arenas of the threads serving them: a few MiB. 10,000 calls keeping even 4 KiB
/// each would be 40 MiB; so 32 MiB is far above what the flood needs (measured: 2.1–2.7 MiB on
/// the 2-core machine) and below what a per-call leak would cost.
const FLOOD_PEAK_GROWTH: u64 = 32 << 20;
const MIB: u64 = 1 << 20;

/// The state a `WatchBatch` stream ends with (the last batch state it told).
async fn watch_to_end(
    mut stream: tonic::Streaming<pb::WatchBatchResponse>,
) -> anyhow::Result<pb::BatchState> {
    use pb::watch_batch_response::Event;
    let mut last = pb::BatchState::Unspecified;
    while let Some(message) = stream.message().await? {
        match message.event {
            Some(Event::BatchChanged(b)) => last = b.to_state(),
            Some(Event::Snapshot(s)) => {
                if let Some(b) = s.batch {
                    last = b.state();
                }
            }
            _ => {}
        }
    }
    Ok(last)
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_watch_streams_on_one_connection_leave_a_batch_running_to_success()
-> anyhow::Result<()> {
    let target = Target::start().await?;
    // A real raw agent whose program holds every attempt until the file `go` exists (bounded:
    // after 120 s it gives up with a retryable failure), so the batch runs through the flood.
    let work = temp_dir("security-flood")?;
    let go = work.path().join("go");
    let script = work.path().join("hold.sh");
    std::fs::write(
        &script,
        format!(
            "i=0\nwhile [ ! -e '{}' ]; do\n  i=$((i + 1))\n  [ \"$i\" -gt 1200 ] && exit 75\n  \
             sleep 0.1\ndone\necho loaded\n",
            go.display()
        ),
    )?;
    let _agent = target
        .exec_agent("raw", "agent-raw", &script, &["--concurrency", "8"], &[])
        .await?;
    // Another principal's batch: every object started (held by the agent) before the flood.
    let ids = ["1101", "1102", "1103", "1104", "1105"];
    let mut request = submit_request("flooded", ids[0], "raw");
    if let Some(pb::batch_input::Source::Objects(list)) =
        request.input.as_mut().and_then(|i| i.source.as_mut())
    {
        list.objects = ids.iter().map(|id| object(id, "raw")).collect();
    }
    let batch_id = target
        .orchestrator()
        .submit_batch(target.authed("submitter", request))
        .await?
        .into_inner()
        .batch_id;
    for id in ids {
        target
            .wait_object(&batch_id, id, "the agent to start the object", |s| {
                s == pb::ObjectState::Running
            })
            .await?;
    }
    // The submitter watches it on a connection of its own.
    let watcher = OrchestratorClient::new(target.connect().await?)
        .watch_batch(target.authed(
            "submitter",
            pb::WatchBatchRequest {
                batch_id: batch_id.clone(),
            },
        ))
        .await?
        .into_inner();
    let watching = tokio::spawn(watch_to_end(watcher));

    // The flood: principal `reader` opens 10,000 streams at once on one connection.
    let flood = target.connect().await?;
    target.cp.reset_peak_memory()?;
    let rss_before = target.cp.memory("VmRSS")?;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..FLOOD_CALLS {
        let mut client = OrchestratorClient::new(flood.clone());
        let request = target.authed(
            "reader",
            pb::WatchBatchRequest {
                batch_id: batch_id.clone(),
            },
        );
        calls.spawn(async move {
            client
                .watch_batch(request)
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let replies = within(FLOOD, "the flood answered", async {
        let mut replies = Vec::with_capacity(FLOOD_CALLS);
        while let Some(reply) = calls.join_next().await {
            replies.push(reply?);
        }
        anyhow::Ok(replies)
    })
    .await??;
    let (rss_after, peak) = (target.cp.memory("VmRSS")?, target.cp.memory("VmHWM")?);
    let quota = format!(
        "principal reader holds {WATCH_STREAMS_PER_PRINCIPAL} WatchBatch streams, its limit"
    );
    let (mut open, mut refused, mut cut) = (0usize, 0usize, BTreeMap::<String, usize>::new());
    let mut wrong = Vec::new();
    for reply in &replies {
        match reply {
            Ok(_) => open += 1,
            Err(e) if e.message().contains("WatchBatch streams, its limit") => {
                if e.code() == Code::ResourceExhausted && e.message().contains(&quota) {
                    refused += 1;
                } else {
                    wrong.push(format!("{e:?}"));
                }
            }
            // The server ended the flooding connection, and the calls still on it fail: each
            // refusal is answered before its request is read, and h2 answers a client whose
            // streams leave too much unread (more than 1,024 reset streams, or too many small
            // DATA frames buffered) with `GOAWAY ENHANCE_YOUR_CALM` (seen by the client as
            // `RESOURCE_EXHAUSTED`, "h2 protocol error"). Or h2 refused a stream before any
            // service saw it (`REFUSED_STREAM`, seen as `UNAVAILABLE`: 1 or 2 calls in some runs).
            Err(e)
                if matches!(
                    e.code(),
                    Code::ResourceExhausted | Code::Cancelled | Code::Unknown | Code::Unavailable
                ) && (e.message().contains("h2 protocol error")
                    || e.message().contains("transport error")
                    || e.message().contains("canceled")) =>
            {
                // The GOAWAY's reason, or the stream reset's, when the error carries it.
                let debug = format!("{e:?}");
                let reason = debug
                    .split_once("GoAway(b\"")
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(reason, _)| format!(" (GOAWAY {reason})"))
                    .or_else(|| {
                        debug
                            .contains("REFUSED_STREAM")
                            .then(|| " (REFUSED_STREAM)".to_owned())
                    })
                    .unwrap_or_default();
                *cut.entry(format!("{:?}: {}{reason}", e.code(), e.message()))
                    .or_default() += 1;
            }
            Err(e) => wrong.push(format!("{e:?}")),
        }
    }
    let cut_total: usize = cut.values().sum();
    eprintln!(
        "{FLOOD_CALLS} WatchBatch calls on one connection: {open} open, {refused} refused by the \
         quota, {cut_total} cut by h2 {cut:?}; control-plane RSS {:.1} MiB \
         before, {:.1} MiB after, peak {:.1} MiB (+{:.1} MiB)",
        rss_before as f64 / MIB as f64,
        rss_after as f64 / MIB as f64,
        peak as f64 / MIB as f64,
        peak.saturating_sub(rss_before) as f64 / MIB as f64,
    );
    ensure!(
        wrong.is_empty(),
        "{} calls ended otherwise, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    ensure!(
        open <= WATCH_STREAMS_PER_PRINCIPAL,
        "{open} streams opened: over the principal's quota of {WATCH_STREAMS_PER_PRINCIPAL}"
    );
    ensure!(refused > 0, "no call was refused by the quota");
    ensure!(
        peak.saturating_sub(rss_before) < FLOOD_PEAK_GROWTH,
        "the control plane's peak RSS grew by {} MiB during the flood (bound {} MiB)",
        peak.saturating_sub(rss_before) / MIB,
        FLOOD_PEAK_GROWTH / MIB
    );

    // With the flood's streams still open, the agent finishes: the watcher sees SUCCEEDED.
    std::fs::write(&go, "")?;
    let state = within(LONG, "the watcher to see the batch end", watching).await???;
    ensure!(
        state == pb::BatchState::Succeeded,
        "the watcher saw the batch end {state:?}; log tail:\n{}",
        target.cp.log_tail()
    );
    for id in ids {
        let status = target.object(&batch_id, id).await?;
        ensure!(status.state() == pb::ObjectState::Loaded, "{status:?}");
    }
    eprintln!(
        "after the batch: control-plane RSS {:.1} MiB",
        target.cp.memory("VmRSS")? as f64 / MIB as f64
    );
    // The flood's streams closed, the quota is the reader's again.
    drop(replies);
    let seen = within(LONG, "a stream for the reader after the flood", async {
        loop {
            let watch = OrchestratorClient::new(target.connect().await?)
                .watch_batch(target.authed(
                    "reader",
                    pb::WatchBatchRequest {
                        batch_id: batch_id.clone(),
                    },
                ))
                .await;
            match watch {
                Ok(stream) => return anyhow::Ok(watch_to_end(stream.into_inner()).await?),
                Err(e) if e.code() == Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => bail!("{e:?}"),
            }
        }
    })
    .await??;
    ensure!(seen == pb::BatchState::Succeeded, "{seen:?}");
    Ok(())
}

/// The attempt's own variables the `exec` processor sets (beside `STRATA_ATTR_<KEY>`).
const ATTEMPT_ENV: [&str; 7] = [
    "STRATA_BATCH_ID",
    "STRATA_OBJECT_ID",
    "STRATA_OBJECT_NAME",
    "STRATA_ZONE",
    "STRATA_ATTEMPT",
    "STRATA_MAX_ATTEMPTS",
    "STRATA_DISPATCH_EPOCH",
];

#[tokio::test(flavor = "multi_thread")]
async fn an_exec_object_cannot_read_the_agents_environment_through_its_attributes()
-> anyhow::Result<()> {
    let target = Target::start().await?;
    let work = temp_dir("security-exec-env")?;
    let (env_file, stdin_file) = (work.path().join("env"), work.path().join("stdin.json"));
    let pwned = work.path().join("pwned");
    // The program writes its whole environment (NUL-separated: values may hold newlines) and
    // its stdin, as they reached it.
    let script = work.path().join("dump.sh");
    std::fs::write(
        &script,
        format!(
            "env -0 > '{}'\ncat > '{}'\n",
            env_file.display(),
            stdin_file.display()
        ),
    )?;
    // Secrets in the agent's environment: its control-plane token (which it uses), an OTLP
    // exporter's header, and what a host typically holds beside (a Redis URL with a password,
    // a cloud key). Plus the agent's own settings (`STRATA_LOG`, `NO_COLOR` from the harness,
    // `STRATA_CONCURRENCY` here) and one variable passed on purpose.
    let token = target.tokens["agent-standardized"].clone();
    let secrets = [
        ("STRATA_CONTROL_PLANE_TOKEN", token.as_str()),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer otlp-secret-7d41c9",
        ),
        (
            "REDIS_URL",
            "redis://strata:redis-secret-5be2@127.0.0.1:6379/0",
        ),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-0e93af1b"),
    ];
    let agent = target
        .exec_agent(
            "standardized",
            "agent-standardized",
            &script,
            &["--exec-pass-env", "ALLOWED_SETTING"],
            &[
                (secrets[1].0, secrets[1].1),
                (secrets[2].0, secrets[2].1),
                (secrets[3].0, secrets[3].1),
                ("STRATA_CONCURRENCY", "2"),
                ("ALLOWED_SETTING", "passed-on-purpose"),
            ],
        )
        .await?;
    // Attributes that would run `env` (or touch a file) if anything put them through a shell.
    let touch = format!("touch '{}'", pwned.display());
    let attributes: BTreeMap<String, String> = [
        ("command", "$(env)".to_owned()),
        ("backticks", "`env`".to_owned()),
        ("semicolon", format!("x; env; {touch}")),
        ("substitution", format!("$({touch})")),
        (
            "parameter",
            "${STRATA_CONTROL_PLANE_TOKEN} $OTEL_EXPORTER_OTLP_HEADERS".to_owned(),
        ),
        ("quotes", format!("'\"; {touch}; echo \"'")),
        ("newline", "value\nFORGED_VARIABLE=1".to_owned()),
        ("$(env)", "a key that is a command".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut request = submit_request("exec-env", "2001", "standardized");
    if let Some(pb::batch_input::Source::Objects(list)) =
        request.input.as_mut().and_then(|i| i.source.as_mut())
    {
        list.objects[0].attributes = attributes.clone().into_iter().collect();
    }
    let batch_id = target
        .orchestrator()
        .submit_batch(target.authed("submitter", request))
        .await?
        .into_inner()
        .batch_id;
    let status = target
        .wait_object(&batch_id, "2001", "the object to end", |s| {
            !matches!(
                s,
                pb::ObjectState::Ready | pb::ObjectState::Pending | pb::ObjectState::Running
            )
        })
        .await?;
    ensure!(
        status.state() == pb::ObjectState::Loaded,
        "{status:?}; agent log:\n{}",
        agent.log_tail()
    );

    // The program's environment: only the allow-listed variables, no secret anywhere in it.
    let raw = std::fs::read(&env_file)?;
    let env: BTreeMap<String, String> = raw
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let e = String::from_utf8_lossy(e);
            let (k, v) = e.split_once('=').unwrap_or((&e, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let attribute_env = |key: &str| {
        let name: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("STRATA_ATTR_{name}")
    };
    // `PWD` (`OLDPWD`, `SHLVL`, `_` for other shells) is the shell's own, not the agent's.
    let shell = ["PWD", "OLDPWD", "SHLVL", "_"];
    let allowed: Vec<String> = ["PATH", "ALLOWED_SETTING"]
        .into_iter()
        .chain(ATTEMPT_ENV)
        .chain(shell)
        .map(str::to_owned)
        .chain(attributes.keys().map(|k| attribute_env(k)))
        .collect();
    let names: Vec<&String> = env.keys().collect();
    eprintln!("the program's environment: {names:?}");
    let extra: Vec<&&String> = names.iter().filter(|n| !allowed.contains(n)).collect();
    ensure!(
        extra.is_empty(),
        "not allow-listed, yet in the program's environment: {extra:?}"
    );
    for (name, secret) in secrets {
        ensure!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the agent's {name} reached the program's environment"
        );
    }
    ensure!(
        env.get("ALLOWED_SETTING").map(String::as_str) == Some("passed-on-purpose"),
        "--exec-pass-env ALLOWED_SETTING: {:?}",
        env.get("ALLOWED_SETTING")
    );
    ensure!(env.get("STRATA_OBJECT_ID").map(String::as_str) == Some("2001"));
    // Each attribute arrived as its text, unexpanded: in its variable and on stdin.
    for (key, value) in &attributes {
        ensure!(
            env.get(&attribute_env(key)) == Some(value),
            "attribute {key:?}: {:?} in the environment, not {value:?}",
            env.get(&attribute_env(key))
        );
    }
    let stdin: serde_json::Value = serde_json::from_slice(&std::fs::read(&stdin_file)?)?;
    let sent: BTreeMap<String, String> =
        serde_json::from_value(stdin["object"]["attributes"].clone())?;
    ensure!(sent == attributes, "stdin's attributes: {sent:?}");
    ensure!(!pwned.exists(), "an attribute ran a command");
    Ok(())
}

/// Whether `line` starts as the log writer starts an event: an RFC 3339 UTC time stamp, then
/// the level (`2026-12-03T09:15:24.123456Z  INFO strata_…: …`).
fn starts_an_event(line: &str) -> bool {
    let Some((stamp, rest)) = line.split_once(' ') else {
        return false;
    };
    stamp.ends_with('Z')
        && chrono::DateTime::parse_from_rfc3339(stamp).is_ok()
        && matches!(
            rest.trim_start().split(' ').next(),
            Some("TRACE" | "DEBUG" | "INFO" | "WARN" | "ERROR")
        )
}

/// Checks that the log file `path` holds one event per line (besides the harness's own
/// `---- strata-tests:` line before each start), no raw escape character and no carriage
/// return; returns its text.
fn one_event_per_line(name: &str, path: &std::path::Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    ensure!(
        !bytes.contains(&0x1b),
        "{name}'s log holds a raw ESC byte: {}",
        String::from_utf8_lossy(&bytes).escape_debug()
    );
    ensure!(
        !bytes.contains(&b'\r'),
        "{name}'s log holds a carriage return: {}",
        String::from_utf8_lossy(&bytes).escape_debug()
    );
    let text = String::from_utf8(bytes)?;
    let mut events = 0;
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("---- strata-tests: ") {
            continue;
        }
        ensure!(
            starts_an_event(line),
            "{name}'s log, line {}, is not an event of its own: {line:?}",
            n + 1
        );
        events += 1;
    }
    eprintln!("{name}'s log: {events} events, one line each");
    Ok(text)
}

/// Waits (bounded) until the log file `path` holds `text`.
async fn wait_logged(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    within(LONG, &format!("{text:?} logged"), async {
        loop {
            if std::fs::read_to_string(path)
                .unwrap_or_default()
                .contains(text)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn newlines_and_terminal_escapes_in_ids_and_errors_leave_one_log_line_per_event()
-> anyhow::Result<()> {
    use prost::Message as _;
    use strata_proto::kafka;
    let target = Target::start().await?;
    // An agent whose program fails with output that would forge log lines and recolour a
    // terminal: newlines, a carriage return, ANSI escapes.
    let work = temp_dir("security-log-lines")?;
    let script = work.path().join("fail.sh");
    std::fs::write(
        &script,
        "printf 'out one\\nFORGED-OUT 2026-01-01T00:00:00.000000Z ERROR forged\\r\\033[31mred out\\033[0m\\n'\n\
         printf 'err one\\nFORGED-ERR 2026-01-01T00:00:00.000000Z ERROR forged\\r\\033[31mred err\\033[0m\\n' >&2\n\
         exit 3\n",
    )?;
    // A failed attempt's error is logged at debug.
    let agent = target
        .exec_agent(
            "standardized",
            "agent-standardized",
            &script,
            &[],
            &[("STRATA_LOG", "info,strata_worker_agent=debug")],
        )
        .await?;
    let agent_log = agent.dir().join("agent.log");
    let cp_log = target.cp.dir().join("control-plane.log");
    let batch_id = target
        .orchestrator()
        .submit_batch(target.authed(
            "submitter",
            submit_request("failing", "2001", "standardized"),
        ))
        .await?
        .into_inner()
        .batch_id;
    let failed = target
        .wait_object(&batch_id, "2001", "the object to fail", |s| {
            s == pb::ObjectState::Dead
        })
        .await?;
    // The error as stored and served carries the program's text as it was.
    ensure!(
        failed.last_error.contains("err one\nFORGED-ERR")
            && failed.last_error.contains("forged\r\u{1b}[31mred err"),
        "{:?}",
        failed.last_error
    );
    // The agent logged the failure with its error, escaped.
    wait_logged(&agent_log, "attempt failed").await?;

    // An unsigned Ready whose ids hold the same, on the agent's topic: refused and logged.
    let prefix = target.broker.topic_prefix().to_owned();
    let ready_topic = kafka::ready_topic(&prefix, "standardized");
    let results_topic = kafka::results_topic(&prefix);
    let forged = |what: &str| {
        format!("{what}\nFORGED-{what} 2026-01-01T00:00:00.000000Z ERROR forged\r\u{1b}[31m{what}")
    };
    let ready = pb::ObjectReady {
        batch_id: forged("batch"),
        object_id: forged("object"),
        zone: "standardized".into(),
        attempt: 1,
        max_attempts: 3,
        dispatch_epoch: 1,
        ..Default::default()
    };
    produce(
        &target.broker,
        &ready_topic,
        "2002",
        kafka::TYPE_OBJECT_READY,
        ready.encode_to_vec(),
    )
    .await?;
    wait_logged(&agent_log, "ready record not signed by the control plane").await?;

    // A forged result whose agent id holds them, for the live batch's object: the control plane
    // rejects it and logs it.
    let object = target.target_object().await?;
    let result = loaded(&object, &forged("agent"), target.lease_epoch, &[]);
    produce(
        &target.broker,
        &results_topic,
        &object.batch_id,
        kafka::TYPE_OBJECT_RESULT,
        result.encode_to_vec(),
    )
    .await?;
    wait_logged(&cp_log, "result rejected").await?;

    // Every line of both logs is one event; the injected text is there, escaped.
    let cp_text = one_event_per_line("the control plane", &cp_log)?;
    let agent_text = one_event_per_line("the agent", &agent_log)?;
    for (log, name, escaped) in [
        // The writer escapes what a field shows as it is (the processor's error).
        (
            &agent_text,
            "the agent",
            r"err one\nFORGED-ERR 2026-01-01T00:00:00.000000Z ERROR forged\r\x1b[31mred err\x1b[0m",
        ),
        // Ids are shown quoted (`Debug`), which escapes them already.
        (
            &agent_text,
            "the agent",
            r#""object\nFORGED-object 2026-01-01T00:00:00.000000Z ERROR forged\r\u{1b}[31mobject""#,
        ),
        (
            &cp_text,
            "the control plane",
            r#""agent\nFORGED-agent 2026-01-01T00:00:00.000000Z ERROR forged\r\u{1b}[31magent""#,
        ),
    ] {
        ensure!(
            log.contains(escaped),
            "{name}'s log does not show {escaped}:\n{log}"
        );
    }
    Ok(())
}
