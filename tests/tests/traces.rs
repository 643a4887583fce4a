//! Traces (`docs/design.md#observability`): the real `strata-control-plane` and `strata-worker-agent` binaries export
//! OTLP/gRPC to a receiver inside this test process (the collector's `TraceService`, on a free
//! loopback port), against the real broker and Redis.
//!
//! Checked here:
//! - with `OTEL_EXPORTER_OTLP_ENDPOINT` set, a layered batch gives one trace: every span has the
//!   trace id derived from the batch id; one root `batch` span; every object has an `attempt`
//!   span whose parent is the batch span; every agent `process` span is a child of an `attempt`
//!   span of its object; every `apply_result` span is a child of a `process` span; the services
//!   are `strata-control-plane` and `strata-worker-agent`. Spans are flushed by `SIGTERM`.
//! - with it unset, no connection reaches the receiver and no record on the Ready or results
//!   topics carries a `traceparent` header (no trace context is even formatted).
//!
//! Every wait is bounded; nothing is timed. Needs both binaries built (`cargo build -p
//! strata-control-plane -p strata-worker-agent`; `cargo nextest run --workspace` builds them).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Headers as _;
use sha2::{Digest as _, Sha256};
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use strata_proto::v1::{self as pb};
use strata_tests::control_plane::ControlPlane;
use strata_tests::worker_agent::WorkerAgent;
use strata_tests::{RedisServer, TestBroker, within};
use tonic::transport::Channel;

/// Bound on every wait (start-ups, the batch, exits).
const LONG: Duration = Duration::from_secs(120);
const CP_FLAGS: &[&str] = &[
    "--heartbeat-interval-secs",
    "1",
    "--initial-backoff-ms",
    "100",
];
const ZONES: [&str; 3] = ["raw", "standardized", "application"];
const SIMULATE: &[&str] = &["--processor", "simulate", "--simulate-duration-ms", "20"];

/// One exported span and the service that exported it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

/// What the receiver saw.
#[derive(Debug, Default)]
struct Collected {
    connections: AtomicUsize,
    exports: AtomicUsize,
    spans: Mutex<Vec<Received>>,
}

impl Collected {
    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("spans poisoned").clone()
    }
}

/// The collector's trace service, storing every span.
#[derive(Debug, Clone)]
struct Receiver(Arc<Collected>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.exports.fetch_add(1, Ordering::Relaxed);
        let mut spans = self.0.spans.lock().expect("spans poisoned");
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| string_attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A receiver on a free loopback port: its endpoint, what it collects, and its server task.
async fn start_receiver() -> anyhow::Result<(String, Arc<Collected>, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let collected = Arc::new(Collected::default());
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<tokio::net::TcpStream>>(16);
    let counter = collected.clone();
    let server = TraceServiceServer::new(Receiver(collected.clone()));
    let task = tokio::spawn(async move {
        // Every accepted connection is counted, then served.
        let accept = async move {
            loop {
                let accepted = listener.accept().await.map(|(stream, _)| stream);
                counter.connections.fetch_add(1, Ordering::Relaxed);
                if tx.send(accepted).await.is_err() {
                    return;
                }
            }
        };
        let serve = tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx));
        tokio::select! {
            () = accept => {}
            served = serve => {
                if let Err(e) = served {
                    eprintln!("OTLP receiver stopped: {e}");
                }
            }
        }
    });
    Ok((endpoint, collected, task))
}

/// A broker, a Redis, a control plane, one simulated agent per zone, and a client.
struct Stack {
    cp: ControlPlane,
    agents: Vec<WorkerAgent>,
    client: OrchestratorClient<Channel>,
    // Dropped after the processes.
    _redis: RedisServer,
    broker: TestBroker,
}

impl Stack {
    async fn start(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let broker = within(LONG, "start the broker", TestBroker::start()).await??;
        let redis = within(LONG, "start redis", RedisServer::start()).await??;
        let cp = ControlPlane::start_on(&broker, &redis.url(), CP_FLAGS, env).await?;
        let client = OrchestratorClient::connect(cp.endpoint()).await?;
        let mut agents = Vec::new();
        for zone in ZONES {
            agents.push(WorkerAgent::start(
                &format!("traces-{zone}"),
                &cp.endpoint(),
                zone,
                SIMULATE,
                env,
            )?);
        }
        for a in &mut agents {
            a.wait_ready(LONG).await?;
        }
        Ok(Self {
            cp,
            agents,
            client,
            _redis: redis,
            broker,
        })
    }

    /// Submits the layered batch of [`layered`] and waits until it succeeded.
    async fn run_batch(&mut self, key: &str) -> anyhow::Result<String> {
        let request = pb::SubmitBatchRequest {
            idempotency_key: key.into(),
            input: Some(pb::BatchInput {
                source: Some(pb::batch_input::Source::Objects(pb::ObjectList {
                    objects: layered(),
                })),
            }),
            options: Some(pb::SubmitOptions {
                all: true,
                ..Default::default()
            }),
        };
        let batch_id = within(LONG, "submit", self.client.submit_batch(request))
            .await??
            .into_inner()
            .batch_id;
        let started = Instant::now();
        loop {
            let batch = self
                .client
                .get_batch(pb::GetBatchRequest {
                    batch_id: batch_id.clone(),
                })
                .await?
                .into_inner();
            match batch.state() {
                pb::BatchState::Running => {}
                pb::BatchState::Succeeded => {
                    println!("batch {batch_id} succeeded after {:?}", started.elapsed());
                    return Ok(batch_id);
                }
                other => anyhow::bail!(
                    "batch {batch_id} ended {other:?}: {:?}; control plane log:\n{}",
                    batch.counts,
                    self.cp.log_tail()
                ),
            }
            ensure!(
                started.elapsed() < LONG,
                "batch {batch_id} still running after {LONG:?}: {:?}; control plane log:\n{}",
                batch.counts,
                self.cp.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `SIGTERM` to every agent, then to the control plane; each must exit 0 (having flushed
    /// its spans).
    async fn stop(&mut self) -> anyhow::Result<()> {
        for a in &self.agents {
            a.terminate()?;
        }
        for a in &mut self.agents {
            let status = a.wait_exit(LONG).await?;
            ensure!(
                status.success(),
                "{} exited {status}; log tail:\n{}",
                a.name(),
                a.log_tail()
            );
        }
        self.cp.terminate()?;
        let status = self.cp.wait_exit(LONG).await?;
        ensure!(
            status.success(),
            "the control plane exited {status}; log tail:\n{}",
            self.cp.log_tail()
        );
        Ok(())
    }
}

/// Five objects in three layers: 1001, 1002 → 2001 (both), 2002 (1002) → 3001 (both).
fn layered() -> Vec<pb::ObjectDefinition> {
    let object = |id: &str, zone: &str, parents: &[&str]| pb::ObjectDefinition {
        id: id.into(),
        name: format!("traces object {id}"),
        zone: zone.into(),
        parents: parents.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    };
    vec![
        object("1001", "raw", &[]),
        object("1002", "raw", &[]),
        object("2001", "standardized", &["1001", "1002"]),
        object("2002", "standardized", &["1002"]),
        object("3001", "application", &["2001", "2002"]),
    ]
}

const OBJECTS: [&str; 5] = ["1001", "1002", "2001", "2002", "3001"];

fn string_attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

fn str_of(span: &Span, key: &str) -> String {
    string_attr(&span.attributes, key).unwrap_or_default()
}

fn int_of(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key)?.value.as_ref()? {
        any_value::Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

fn bool_of(span: &Span, key: &str) -> Option<bool> {
    match attr(span, key)?.value.as_ref()? {
        any_value::Value::BoolValue(b) => Some(*b),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A one-line description of a span, for failure messages.
fn describe(r: &Received) -> String {
    let s = &r.span;
    format!(
        "{} {} span {} parent {} trace {} object {} outcome {}",
        r.service,
        s.name,
        hex(&s.span_id),
        hex(&s.parent_span_id),
        hex(&s.trace_id),
        str_of(s, "strata.object.id"),
        str_of(s, "strata.outcome"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_is_one_trace_from_submission_through_the_agents_and_back() -> anyhow::Result<()> {
    let (endpoint, collected, receiver) = start_receiver().await?;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Export while running too, not only at the flush on exit.
        ("OTEL_BSP_SCHEDULE_DELAY", "500"),
    ];
    let mut stack = Stack::start(&env).await?;
    let batch_id = stack.run_batch("traces-on").await?;
    stack.stop().await?;
    let spans = collected.spans();
    receiver.abort();
    let all: String = spans.iter().map(|r| describe(r) + "\n").collect();
    println!("{} spans received:\n{all}", spans.len());

    // The trace id and the batch span id follow from the batch id.
    let digest = Sha256::digest(batch_id.as_bytes());
    let (trace_id, batch_span_id) = (digest[..16].to_vec(), digest[16..24].to_vec());
    for r in &spans {
        ensure!(
            r.span.trace_id == trace_id,
            "a span outside the batch's trace {}: {}\nall spans:\n{all}",
            hex(&trace_id),
            describe(r)
        );
    }
    let services: BTreeSet<&str> = spans.iter().map(|r| r.service.as_str()).collect();
    ensure!(
        services == BTreeSet::from(["strata-control-plane", "strata-worker-agent"]),
        "services {services:?}"
    );
    let named = |name: &str, service: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|r| r.span.name == name)
            .inspect(|r| assert_eq!(r.service, service, "{}", describe(r)))
            .map(|r| &r.span)
            .collect()
    };

    // One root `batch` span.
    let batch = named("batch", "strata-control-plane");
    ensure!(batch.len() == 1, "{} batch spans:\n{all}", batch.len());
    let batch = batch[0];
    ensure!(
        batch.parent_span_id.is_empty() && batch.span_id == batch_span_id,
        "the batch span is not the root derived from the batch id:\n{all}"
    );
    ensure!(str_of(batch, "strata.batch.id") == batch_id);
    ensure!(int_of(batch, "strata.batch.objects") == Some(OBJECTS.len() as i64));

    // Every object has an `attempt` span, a child of the batch span, ended as loaded.
    let attempts = named("attempt", "strata-control-plane");
    let mut attempt_object: BTreeMap<Vec<u8>, String> = BTreeMap::new();
    for a in &attempts {
        ensure!(
            a.parent_span_id == batch_span_id,
            "attempt span {} of {} is not a child of the batch span\n{all}",
            hex(&a.span_id),
            str_of(a, "strata.object.id")
        );
        ensure!(str_of(a, "strata.batch.id") == batch_id);
        ensure!(!str_of(a, "strata.zone").is_empty());
        ensure!(int_of(a, "strata.attempt").is_some_and(|n| n >= 1));
        ensure!(int_of(a, "strata.dispatch_epoch").is_some());
        attempt_object.insert(a.span_id.clone(), str_of(a, "strata.object.id"));
    }
    for id in OBJECTS {
        ensure!(
            attempts
                .iter()
                .any(|a| str_of(a, "strata.object.id") == id
                    && str_of(a, "strata.outcome") == "loaded"),
            "no attempt span of {id} ended loaded:\n{all}"
        );
    }

    // Every `process` span of the agents is a child of an attempt span of its object.
    let processes = named("process", "strata-worker-agent");
    let mut process_ids = BTreeSet::new();
    for p in &processes {
        let object = str_of(p, "strata.object.id");
        ensure!(
            attempt_object.get(&p.parent_span_id) == Some(&object),
            "process span {} of {object} is not a child of an attempt span of it:\n{all}",
            hex(&p.span_id)
        );
        ensure!(!str_of(p, "strata.agent.id").is_empty());
        ensure!(!str_of(p, "strata.zone").is_empty());
        process_ids.insert(p.span_id.clone());
    }
    for id in OBJECTS {
        ensure!(
            processes
                .iter()
                .any(|p| str_of(p, "strata.object.id") == id
                    && str_of(p, "strata.outcome") == "loaded"),
            "no process span of {id} ended loaded:\n{all}"
        );
    }

    // Every `apply_result` span is a child of a process span; each object's loaded result was
    // accepted by the machine.
    let applied = named("apply_result", "strata-control-plane");
    for a in &applied {
        ensure!(
            process_ids.contains(&a.parent_span_id),
            "apply_result span {} is not a child of a process span:\n{all}",
            hex(&a.span_id)
        );
        ensure!(bool_of(a, "strata.accepted").is_some(), "{a:?}");
    }
    for id in OBJECTS {
        ensure!(
            applied.iter().any(|a| str_of(a, "strata.object.id") == id
                && str_of(a, "strata.outcome") == "loaded"
                && bool_of(a, "strata.accepted") == Some(true)),
            "no accepted loaded apply_result span of {id}:\n{all}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_an_endpoint_nothing_is_traced() -> anyhow::Result<()> {
    let (endpoint, collected, receiver) = start_receiver().await?;
    // Only the service name: no endpoint, so nothing is installed (and nothing may default to
    // the receiver or anywhere else).
    let env = [("OTEL_SERVICE_NAME", "strata-traces-off")];
    let mut stack = Stack::start(&env).await?;
    let batch_id = stack.run_batch("traces-off").await?;
    stack.stop().await?;
    ensure!(
        collected.connections.load(Ordering::Relaxed) == 0
            && collected.exports.load(Ordering::Relaxed) == 0,
        "the receiver at {endpoint} was reached: {} connections, {} exports",
        collected.connections.load(Ordering::Relaxed),
        collected.exports.load(Ordering::Relaxed)
    );
    receiver.abort();
    ensure!(!stack.cp.log_tail().contains("exporting traces"));
    for a in &stack.agents {
        ensure!(!a.log().contains("exporting traces"), "{}", a.name());
    }

    // No record of the batch carries a trace context: 5 Readies, and every result (a started and
    // a loaded one per object).
    let consumer: StreamConsumer = stack.broker.consumer_config("traces-off-reader").create()?;
    let prefix = stack.broker.topic_prefix();
    let mut topics: Vec<String> = ZONES
        .iter()
        .map(|z| format!("{prefix}.{}.{z}", strata_proto::kafka::READY_TOPIC))
        .collect();
    topics.push(format!("{prefix}.{}", strata_proto::kafka::RESULTS_TOPIC));
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    let wanted = OBJECTS.len() * 3;
    let seen = within(
        LONG,
        "the batch's records on the Ready and results topics",
        async {
            let mut seen = 0;
            while seen < wanted {
                let msg = consumer.recv().await?;
                let headers: Vec<String> = msg
                    .headers()
                    .map(|h| h.iter().map(|h| h.key.to_owned()).collect())
                    .unwrap_or_default();
                ensure!(
                    !headers
                        .iter()
                        .any(|k| k == strata_proto::kafka::HEADER_TRACEPARENT),
                    "a record on {} carries a traceparent: headers {headers:?}",
                    msg.topic()
                );
                seen += 1;
            }
            anyhow::Ok(seen)
        },
    )
    .await?
    .with_context(|| format!("records of batch {batch_id}"))?;
    strata_tests::kafka::close_consumer(consumer).await?;
    println!("{seen} records without a traceparent");
    Ok(())
}
