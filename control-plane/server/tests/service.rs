//! Component tests of the `strata.v1.Orchestrator` service: a real tonic server on a 127.0.0.1
//! port-0 listener (with health and reflection), a real generated client, the real driver over the
//! in-memory data plane and store, and the worker agent's loop on the in-memory topics with a
//! simulated processor.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use strata_control_plane::adapters::memory::{MemoryDataPlane, MemoryStore};
use strata_control_plane::driver::{Driver, DriverCounters, DriverSettings, Handle};
use strata_control_plane::service::{ServiceSettings, grpc_services};
use strata_core::Zone;
use strata_proto::signing::{ReadyVerifier, ResultKey};
use strata_proto::v1::agent_registry_client::AgentRegistryClient;
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use strata_proto::v1::{self as pb, object_result, watch_batch_response};
use strata_worker_agent::admin::Health;
use strata_worker_agent::agent::{self, AgentOptions};
use strata_worker_agent::memory::MemoryTransport;
use strata_worker_agent::metrics::Metrics;
use strata_worker_agent::ports::{FixedLease, GatedTransport, WithholdingTransport};
use strata_worker_agent::processor::{Outcome, Processor};
use strata_worker_agent::registry::Registration;
use strata_worker_agent::stopped;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::transport::Channel;
use tonic::{Code, Status};

const SAMPLE: &str = include_str!("../../../clients/samples/catalogue.json");
const SAMPLE_UNKNOWN_PARENTS: &str =
    include_str!("../../../clients/samples/catalogue_unknown_parents.json");
const ZONES: [&str; 3] = ["raw", "standardized", "application"];
/// The batch-size cap of the test server.
const MAX_OBJECTS: usize = 1000;

/// Every await of these tests is bounded.
async fn t<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}

/// A control plane on a free port, with its driver.
struct Plane {
    client: OrchestratorClient<Channel>,
    channel: Channel,
    /// `http://127.0.0.1:PORT`, for a client on a connection of its own.
    endpoint: String,
    data: Arc<MemoryDataPlane>,
    handle: Handle,
    stop: Option<(oneshot::Sender<()>, oneshot::Sender<()>)>,
}

impl Drop for Plane {
    fn drop(&mut self) {
        if let Some((server, driver)) = self.stop.take() {
            let _ = server.send(());
            let _ = driver.send(());
        }
    }
}

async fn start() -> Plane {
    start_with(ServiceSettings {
        max_objects: MAX_OBJECTS,
        ..ServiceSettings::default()
    })
    .await
}

async fn start_with(settings: ServiceSettings) -> Plane {
    start_on(Arc::new(MemoryStore::new()), settings).await
}

/// A control plane over `store` (a new data plane): a restarted control plane when the store
/// was used before.
async fn start_on(store: Arc<MemoryStore>, settings: ServiceSettings) -> Plane {
    start_over(store, Arc::new(MemoryDataPlane::new()), settings).await
}

/// A control plane over `store` and `data`, whose topics tests may subscribe to before the
/// driver restores and re-publishes anything.
async fn start_over(
    store: Arc<MemoryStore>,
    data: Arc<MemoryDataPlane>,
    settings: ServiceSettings,
) -> Plane {
    start_driven(store, data, settings, DriverSettings::default()).await
}

/// The most general start: `driver`'s tick and topic check are made fast for tests.
async fn start_driven(
    store: Arc<MemoryStore>,
    data: Arc<MemoryDataPlane>,
    settings: ServiceSettings,
    driver: DriverSettings,
) -> Plane {
    let (driver, handle) = Driver::new(
        data.clone(),
        store.clone(),
        DriverSettings {
            tick: Duration::from_millis(5),
            topic_check: Duration::from_millis(20),
            ..driver
        },
    );
    let (stop_driver, driver_stopped) = oneshot::channel::<()>();
    tokio::spawn(driver.run(async {
        let _ = driver_stopped.await;
    }));
    let services = t(grpc_services(handle.clone(), store, settings))
        .await
        .expect("services");
    let listener = t(TcpListener::bind("127.0.0.1:0")).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    tokio::spawn(services.serve(listener, async {
        let _ = server_stopped.await;
    }));
    let channel = t(Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect())
    .await
    .expect("connect");
    Plane {
        client: OrchestratorClient::new(channel.clone()),
        channel,
        endpoint: format!("http://{addr}"),
        data,
        handle,
        stop: Some((stop_server, stop_driver)),
    }
}

/// What a simulated agent answers for (object id, attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Load,
    Fail {
        retryable: bool,
    },
    /// Report `ObjectStarted`, then nothing (the agent hangs or its result is lost).
    Hang,
}

/// Agents of every zone: the worker agent's loop ([`agent::run`]) on the in-memory topics, one
/// attempt at a time, taking Ready records only while the gate is open; stopped when dropped.
struct Agents {
    gate: watch::Sender<bool>,
    _stop: watch::Sender<bool>,
}

impl Agents {
    fn open(&self) {
        self.gate.send_replace(true);
    }
}

/// Answers as `decide` says; the attempts it answers [`Answer::Hang`] for are noted for
/// [`DropHung`].
struct Decide<F> {
    decide: F,
    hung: Arc<Mutex<HashSet<(String, String, u32)>>>,
}

impl<F: Fn(&str, u32) -> Answer + Send + Sync + 'static> Processor for Decide<F> {
    async fn process(&self, r: &pb::ObjectReady) -> Outcome {
        match (self.decide)(&r.object_id, r.attempt) {
            Answer::Load => Outcome::Loaded {
                info: String::new(),
            },
            Answer::Fail { retryable } => Outcome::Failed {
                retryable,
                error: format!("simulated failure of attempt {}", r.attempt),
            },
            Answer::Hang => {
                self.hung.lock().expect("hung").insert((
                    r.batch_id.clone(),
                    r.object_id.clone(),
                    r.attempt,
                ));
                Outcome::Loaded {
                    info: String::new(),
                }
            }
        }
    }
}

fn agents(
    data: &Arc<MemoryDataPlane>,
    open: bool,
    decide: impl Fn(&str, u32) -> Answer + Send + Sync + 'static,
) -> Agents {
    let hung = Arc::new(Mutex::new(HashSet::new()));
    let processor = Arc::new(Decide {
        decide,
        hung: hung.clone(),
    });
    let (gate, _) = watch::channel(open);
    let (stop, _) = watch::channel(false);
    for zone in ZONES {
        let z = Zone::parse(zone).expect("zone");
        let lease = FixedLease::new(
            &format!("agent-{zone}"),
            &format!("ready.{zone}"),
            &format!("agents.{zone}"),
            "results",
        );
        let transport = GatedTransport {
            // An attempt in `hung` never reports its end (its agent hangs, or its result is lost).
            inner: WithholdingTransport {
                inner: MemoryTransport {
                    ready: data.ready_topic(&z),
                    results: data.results_topic(),
                },
                withheld: hung.clone(),
            },
            open: gate.subscribe(),
        };
        let options = AgentOptions {
            registration: Registration {
                zone: zone.to_owned(),
                capacity: 1,
                hostname: "test".into(),
                labels: HashMap::new(),
            },
            drain_grace: Duration::from_secs(1),
        };
        tokio::spawn(agent::run(
            options,
            lease,
            transport,
            processor.clone(),
            Metrics::new(zone),
            Arc::new(Health::default()),
            stopped(stop.subscribe()),
        ));
    }
    Agents { gate, _stop: stop }
}

fn loaded(r: &pb::ObjectReady, agent_id: &str) -> pb::ObjectLoaded {
    pb::ObjectLoaded {
        batch_id: r.batch_id.clone(),
        object_id: r.object_id.clone(),
        zone: r.zone.clone(),
        attempt: r.attempt,
        dispatch_epoch: r.dispatch_epoch,
        agent_id: agent_id.to_owned(),
        ..Default::default()
    }
}

fn catalogue(doc: &str) -> Option<pb::BatchInput> {
    Some(pb::BatchInput {
        source: Some(pb::batch_input::Source::Catalogue(pb::CatalogueDocument {
            format: pb::CatalogueFormat::SeedJson as i32,
            content: doc.as_bytes().to_vec(),
        })),
    })
}

fn object(id: &str, parents: &[&str]) -> pb::ObjectDefinition {
    pb::ObjectDefinition {
        id: id.into(),
        parents: parents.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    }
}

fn objects(list: Vec<pb::ObjectDefinition>) -> Option<pb::BatchInput> {
    Some(pb::BatchInput {
        source: Some(pb::batch_input::Source::Objects(pb::ObjectList {
            objects: list,
        })),
    })
}

/// `n` objects without parents, ids from 1,000,000.
fn independent_objects(n: u32) -> Option<pb::BatchInput> {
    objects(
        (0..n)
            .map(|i| object(&(1_000_000 + i).to_string(), &[]))
            .collect(),
    )
}

/// Polls `GetBatch` (bounded) until the batch is SUCCEEDED: a client that reads nothing else.
async fn until_succeeded(client: &mut OrchestratorClient<Channel>, batch_id: &str) {
    t(async {
        loop {
            let b = client
                .get_batch(pb::GetBatchRequest {
                    batch_id: batch_id.into(),
                })
                .await
                .expect("batch")
                .into_inner();
            if b.state() == pb::BatchState::Succeeded {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A retry policy fast enough for tests.
fn fast_retries(max_attempts: u32) -> Option<pb::SubmitOptions> {
    Some(pb::SubmitOptions {
        max_attempts,
        retry_policy: Some(pb::RetryPolicy {
            initial_backoff: Some(prost_types::Duration {
                seconds: 0,
                nanos: 10_000_000,
            }),
            max_backoff: Some(prost_types::Duration {
                seconds: 0,
                nanos: 20_000_000,
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

async fn submit(
    client: &mut OrchestratorClient<Channel>,
    key: &str,
    input: Option<pb::BatchInput>,
    options: Option<pb::SubmitOptions>,
) -> Result<pb::SubmitBatchResponse, Status> {
    t(client.submit_batch(pb::SubmitBatchRequest {
        idempotency_key: key.into(),
        input,
        options,
    }))
    .await
    .map(tonic::Response::into_inner)
}

/// The parents of every object of a catalogue document, canonical.
fn parents_of(doc: &str) -> HashMap<String, Vec<String>> {
    strata_core::catalogue::read_catalogue(doc.as_bytes())
        .expect("sample reads")
        .objects
        .into_iter()
        .map(|o| {
            (
                o.id.to_string(),
                o.parents.iter().map(ToString::to_string).collect(),
            )
        })
        .collect()
}

/// A watch stream, read message by message.
struct Watch {
    stream: tonic::Streaming<pb::WatchBatchResponse>,
    messages: Vec<pb::WatchBatchResponse>,
}

impl Watch {
    async fn open(client: &mut OrchestratorClient<Channel>, batch_id: &str) -> Watch {
        let stream = t(client.watch_batch(pb::WatchBatchRequest {
            batch_id: batch_id.into(),
        }))
        .await
        .expect("watch")
        .into_inner();
        Watch {
            stream,
            messages: Vec::new(),
        }
    }

    /// The next message; `None` at the end of the stream.
    async fn next(&mut self) -> Option<pb::WatchBatchResponse> {
        let m = t(self.stream.message()).await.expect("watch stream")?;
        assert_eq!(
            m.sequence,
            self.messages.len() as u64 + 1,
            "sequence numbers count up from 1"
        );
        self.messages.push(m.clone());
        Some(m)
    }

    /// Reads until the first snapshot is complete.
    async fn snapshot(&mut self) {
        loop {
            match self.next().await.expect("a snapshot").event {
                Some(watch_batch_response::Event::Snapshot(s)) if s.last_part => return,
                Some(watch_batch_response::Event::Snapshot(_)) => {}
                other => panic!("expected a snapshot, got {other:?}"),
            }
        }
    }

    /// Reads to the end of the stream; returns the final batch state (that of the snapshot if
    /// the batch was terminal when the watch began).
    async fn until_end(&mut self) -> pb::BatchState {
        while self.next().await.is_some() {}
        let mut last = pb::BatchState::Unspecified;
        for m in &self.messages {
            match &m.event {
                Some(watch_batch_response::Event::BatchChanged(c)) => last = c.to_state(),
                Some(watch_batch_response::Event::Snapshot(s)) => {
                    if let Some(b) = &s.batch {
                        last = b.state();
                    }
                }
                _ => {}
            }
        }
        last
    }

    /// The state of every object after everything read so far.
    fn states(&self) -> BTreeMap<String, pb::ObjectState> {
        let mut states = BTreeMap::new();
        for m in &self.messages {
            match &m.event {
                Some(watch_batch_response::Event::Snapshot(s)) => {
                    for o in &s.objects {
                        states.insert(o.object_id.clone(), o.state());
                    }
                }
                Some(watch_batch_response::Event::ObjectChanged(c)) => {
                    states.insert(c.object_id.clone(), c.to_state());
                }
                _ => {}
            }
        }
        states
    }

    /// The object changes read so far, in order.
    fn changes(&self) -> Vec<pb::ObjectStateChanged> {
        self.messages
            .iter()
            .filter_map(|m| match &m.event {
                Some(watch_batch_response::Event::ObjectChanged(c)) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }
}

/// `google.rpc.Status`, decoded independently of the server's definition.
#[derive(Clone, PartialEq, Message)]
struct GoogleRpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

fn rejection(status: &Status) -> pb::BatchRejection {
    let rpc = GoogleRpcStatus::decode(status.details()).expect("details are a google.rpc.Status");
    assert_eq!(rpc.code, status.code() as i32);
    assert_eq!(rpc.details.len(), 1);
    assert_eq!(
        rpc.details[0].type_url,
        "type.googleapis.com/strata.v1.BatchRejection"
    );
    pb::BatchRejection::decode(rpc.details[0].value.as_slice()).expect("a BatchRejection")
}

/// A bad submission: name, input, options, what the message must name.
type Case = (
    &'static str,
    Option<pb::BatchInput>,
    Option<pb::SubmitOptions>,
    &'static [&'static str],
);

async fn list_batches(client: &mut OrchestratorClient<Channel>) -> Vec<pb::Batch> {
    t(client.list_batches(pb::ListBatchesRequest::default()))
        .await
        .expect("list batches")
        .into_inner()
        .batches
}

async fn counters(handle: &Handle) -> DriverCounters {
    t(handle.read(|s| s.counters().clone()))
        .await
        .expect("read")
}

async fn get_object(
    client: &mut OrchestratorClient<Channel>,
    batch_id: &str,
    object_id: &str,
) -> Result<pb::ObjectStatus, Status> {
    t(client.get_object(pb::GetObjectRequest {
        batch_id: batch_id.into(),
        object_id: object_id.into(),
    }))
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_catalogue_runs_to_succeeded_in_dependency_order() {
    let mut plane = start().await;
    let agents = agents(&plane.data, false, |_, _| Answer::Load);
    let r = submit(&mut plane.client, "sample-1", catalogue(SAMPLE), None)
        .await
        .expect("submitted");
    assert!(r.created);
    let summary = r.summary.expect("summary");
    assert_eq!(summary.object_count, 11);
    assert_eq!(summary.wave_count, 3);
    assert_eq!(summary.target_count, 3);

    // Watch before any agent answers, so every change is seen in order.
    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    watch.snapshot().await;
    let first = watch.states();
    assert_eq!(first.len(), 11);
    for root in ["1001", "1002", "1003", "1004"] {
        assert_eq!(
            first[root],
            pb::ObjectState::Ready,
            "{root} is released at once"
        );
    }
    assert_eq!(first["3001"], pb::ObjectState::Pending);
    agents.open();
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);

    let states = watch.states();
    assert!(
        states.values().all(|s| *s == pb::ObjectState::Loaded),
        "every object loaded: {states:?}"
    );
    // No child is released (let alone loaded) before all its parents are loaded.
    let changes = watch.changes();
    let position = |id: &str, to: pb::ObjectState| {
        changes
            .iter()
            .position(|c| c.object_id == id && c.to_state() == to)
    };
    for (child, parents) in parents_of(SAMPLE) {
        for parent in parents {
            let parent_loaded = position(&parent, pb::ObjectState::Loaded).expect("parent loaded");
            let child_loaded = position(&child, pb::ObjectState::Loaded).expect("child loaded");
            let child_released = position(&child, pb::ObjectState::Ready).expect("child released");
            assert!(
                parent_loaded < child_released && child_released < child_loaded,
                "{child} released at {child_released} / loaded at {child_loaded}, its parent {parent} loaded at {parent_loaded}"
            );
        }
    }
    let loaded = changes
        .iter()
        .find(|c| c.object_id == "2004" && c.to_state() == pb::ObjectState::Loaded)
        .expect("2004 loaded");
    assert_eq!(loaded.agent_id, "agent-standardized");
    assert_eq!(loaded.zone, "standardized");

    // The last message is the terminal batch change, with the final counters.
    let Some(watch_batch_response::Event::BatchChanged(last)) =
        watch.messages.last().and_then(|m| m.event.clone())
    else {
        panic!("the stream ends with the batch change");
    };
    let batch = last.batch.expect("batch");
    let loaded: u32 = batch
        .counts
        .iter()
        .filter(|c| c.state() == pb::ObjectState::Loaded)
        .map(|c| c.count)
        .sum();
    assert_eq!(loaded, 11);

    let got = t(plane.client.get_batch(pb::GetBatchRequest {
        batch_id: r.batch_id.clone(),
    }))
    .await
    .expect("get batch")
    .into_inner();
    assert_eq!(got.state(), pb::BatchState::Succeeded);
    assert!(got.finished_at.is_some());
    assert_eq!(got.idempotency_key, "sample-1");
    let raw = got
        .counts
        .iter()
        .find(|c| c.zone == "raw" && c.state() == pb::ObjectState::Loaded)
        .expect("raw counts");
    assert_eq!(raw.count, 4);

    // Watching a finished batch yields its snapshot and ends.
    let mut again = Watch::open(&mut plane.client, &r.batch_id).await;
    again.snapshot().await;
    assert!(again.next().await.is_none());

    // The plan, page by page, in topological order.
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = t(plane.client.get_plan(pb::GetPlanRequest {
            batch_id: r.batch_id.clone(),
            page_size: 4,
            page_token: token.clone(),
            include_excluded: false,
        }))
        .await
        .expect("plan page")
        .into_inner();
        assert!(page.objects.len() <= 4);
        listed.extend(page.objects.into_iter().map(|o| o.object_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(listed.len(), 11);
    for (child, parents) in parents_of(SAMPLE) {
        let at = |id: &str| listed.iter().position(|x| x == id).expect("listed");
        for p in parents {
            assert!(at(&p) < at(&child), "{p} listed before {child}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmission_is_idempotent_and_a_reused_key_conflicts() {
    let mut plane = start().await;
    let first = submit(&mut plane.client, "key-a", catalogue(SAMPLE), None)
        .await
        .expect("first");
    assert!(first.created);
    let again = submit(&mut plane.client, "key-a", catalogue(SAMPLE), None)
        .await
        .expect("again");
    assert_eq!(again.batch_id, first.batch_id);
    assert!(!again.created);

    let other = submit(
        &mut plane.client,
        "key-a",
        catalogue(SAMPLE),
        Some(pb::SubmitOptions {
            force: true,
            ..Default::default()
        }),
    )
    .await
    .expect_err("conflict");
    assert_eq!(other.code(), Code::AlreadyExists);
    assert!(other.message().contains("key-a") && other.message().contains(&first.batch_id));

    // A second batch, then the list, newest first and filtered by state.
    let second = submit(&mut plane.client, "key-b", catalogue(SAMPLE), None)
        .await
        .expect("second");
    let all = list_batches(&mut plane.client).await;
    let ids: Vec<&str> = all.iter().map(|b| b.batch_id.as_str()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&first.batch_id.as_str()) && ids.contains(&second.batch_id.as_str()));
    let page = t(plane.client.list_batches(pb::ListBatchesRequest {
        page_size: 1,
        ..Default::default()
    }))
    .await
    .expect("page")
    .into_inner();
    assert_eq!(page.batches.len(), 1);
    assert!(!page.next_page_token.is_empty());
    let changed_filters = t(plane.client.list_batches(pb::ListBatchesRequest {
        page_size: 1,
        page_token: page.next_page_token.clone(),
        states: vec![pb::BatchState::Failed as i32],
    }))
    .await
    .expect_err("token bound to its filters");
    assert_eq!(changed_filters.code(), Code::InvalidArgument);
    let succeeded = t(plane.client.list_batches(pb::ListBatchesRequest {
        states: vec![pb::BatchState::Succeeded as i32],
        ..Default::default()
    }))
    .await
    .expect("filtered")
    .into_inner();
    assert!(
        succeeded.batches.is_empty(),
        "no agent ran: nothing succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_rejected_with_a_detail_and_nothing_is_persisted() {
    use pb::plan_violation::Kind;
    let mut plane = start().await;

    // Unknown parents (the sample): every missing parent named.
    let e = submit(
        &mut plane.client,
        "k1",
        catalogue(SAMPLE_UNKNOWN_PARENTS),
        None,
    )
    .await
    .expect_err("unknown parents");
    assert_eq!(e.code(), Code::InvalidArgument);
    let r = rejection(&e);
    let mut missing: Vec<&str> = r
        .violations
        .iter()
        .filter(|v| v.kind() == Kind::UnknownParent)
        .map(|v| v.parent_id.as_str())
        .collect();
    missing.sort_unstable();
    assert_eq!(missing, ["2011", "2017", "2023", "2031"]);
    assert!(r.violations.iter().all(|v| v.object_id == "3002"));
    for id in ["3002", "2011", "2017", "2023", "2031"] {
        assert!(e.message().contains(id), "{id} named in {:?}", e.message());
    }

    let cases: Vec<Case> = vec![
        (
            "cycle",
            objects(vec![object("1001", &["1002"]), object("1002", &["1001"])]),
            None,
            &["1001", "1002"],
        ),
        (
            "self-parent",
            objects(vec![object("1001", &["1001"])]),
            None,
            &["1001"],
        ),
        (
            "duplicate",
            objects(vec![object("1001", &[]), object("1001", &[])]),
            None,
            &["1001"],
        ),
        (
            "inversion",
            objects(vec![object("1001", &["2001"]), object("2001", &[])]),
            None,
            &["1001", "2001"],
        ),
        (
            "unknown target",
            objects(vec![object("1001", &[])]),
            Some(pb::SubmitOptions {
                targets: vec!["1009".into()],
                ..Default::default()
            }),
            &["1009"],
        ),
        ("empty", objects(Vec::new()), None, &["empty"]),
        (
            "over the cap",
            objects(
                (0..=MAX_OBJECTS)
                    .map(|i| object(&(1_000_000 + i).to_string(), &[]))
                    .collect(),
            ),
            None,
            &["1001", "1000"],
        ),
        (
            "bad parent token in a catalogue",
            catalogue(
                r#"[{"IdObjet": 2001, "IdObjet_Parent": "1001, garbage2003x"}, {"IdObjet": 1001}]"#,
            ),
            None,
            &["2001", "garbage2003x"],
        ),
        (
            "bad parent token in objects",
            objects(vec![object("2001", &["a b"])]),
            None,
            &["2001", "a b"],
        ),
        (
            "unconfigured zone",
            objects(vec![
                object("1001", &[]),
                pb::ObjectDefinition {
                    zone: "nowhere".into(),
                    ..object("1002", &[])
                },
            ]),
            None,
            &["1002", "nowhere", "not configured"],
        ),
        (
            "over a size limit",
            objects(vec![
                object("1001", &[]),
                pb::ObjectDefinition {
                    attributes: [("payload".to_owned(), "x".repeat(600 * 1024))].into(),
                    ..object("1002", &[])
                },
            ]),
            None,
            &["1002", "payload", "65536", "524288", "could not deliver"],
        ),
    ];
    for (name, input, options, named) in cases {
        let e = submit(&mut plane.client, name, input, options)
            .await
            .expect_err(name);
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
        for id in named {
            assert!(
                e.message().contains(id),
                "{name}: {id} named in {:?}",
                e.message()
            );
        }
        let r = rejection(&e);
        match name {
            "cycle" => {
                assert_eq!(r.violations[0].kind(), Kind::Cycle);
                let mut cycle = r.violations[0].cycle.clone();
                cycle.sort();
                assert_eq!(cycle, ["1001", "1002"]);
            }
            "self-parent" => assert_eq!(r.violations[0].kind(), Kind::SelfParent),
            "duplicate" => {
                assert_eq!(r.violations[0].kind(), Kind::DuplicateId);
                assert_eq!(r.violations[0].positions, [0, 1]);
            }
            "inversion" => {
                let v = &r.violations[0];
                assert_eq!(v.kind(), Kind::LayerInversion);
                assert_eq!((v.layer, v.parent_layer), (1, 2));
                assert_eq!(
                    (v.object_id.as_str(), v.parent_id.as_str()),
                    ("1001", "2001")
                );
            }
            "unknown target" => assert_eq!(r.violations[0].kind(), Kind::UnknownTarget),
            "empty" => assert!(r.empty_batch),
            "unconfigured zone" => {
                assert_eq!(r.problems.len(), 1, "{r:?}");
                let p = &r.problems[0];
                assert_eq!(p.kind(), pb::catalogue_problem::Kind::InvalidZone);
                assert_eq!(
                    (p.object_id.as_str(), p.token.as_str()),
                    ("1002", "nowhere")
                );
            }
            "over the cap" => {
                assert_eq!(r.object_count, MAX_OBJECTS as u64 + 1);
                assert_eq!(r.max_objects, MAX_OBJECTS as u64);
            }
            "over a size limit" => {
                let over: Vec<(&str, &str)> = r
                    .problems
                    .iter()
                    .map(|p| {
                        assert_eq!(p.kind(), pb::catalogue_problem::Kind::OverLimit, "{p:?}");
                        (p.object_id.as_str(), p.field.as_str())
                    })
                    .collect();
                assert_eq!(over, [("1002", "attributes"), ("1002", "object")]);
            }
            _ => {
                let p = &r.problems[0];
                assert_eq!(p.kind(), pb::catalogue_problem::Kind::InvalidParent);
                assert_eq!(p.object_id, "2001");
                assert!(
                    p.token.contains("garbage2003x") || p.token == "a b",
                    "{p:?}"
                );
            }
        }
    }

    // Requests that are malformed before planning: no detail, still INVALID_ARGUMENT.
    let no_key = submit(&mut plane.client, "", catalogue(SAMPLE), None)
        .await
        .expect_err("no key");
    assert_eq!(no_key.code(), Code::InvalidArgument);
    assert!(no_key.message().contains("idempotency_key"));
    let no_input = submit(&mut plane.client, "k", None, None)
        .await
        .expect_err("no input");
    assert_eq!(no_input.code(), Code::InvalidArgument);
    let bad_policy = submit(
        &mut plane.client,
        "k",
        catalogue(SAMPLE),
        Some(pb::SubmitOptions {
            retry_policy: Some(pb::RetryPolicy {
                multiplier: 0.5,
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await
    .expect_err("bad policy");
    assert_eq!(bad_policy.code(), Code::InvalidArgument);
    assert!(bad_policy.message().contains("multiplier"));

    assert!(
        list_batches(&mut plane.client).await.is_empty(),
        "nothing persisted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_retried_and_succeeds() {
    let mut plane = start().await;
    let _agents = agents(&plane.data, true, |id, attempt| {
        if id == "2001" && attempt == 1 {
            Answer::Fail { retryable: true }
        } else {
            Answer::Load
        }
    });
    let input = objects(vec![
        object("1001", &[]),
        object("2001", &["1001"]),
        object("3001", &["2001"]),
    ]);
    let r = submit(&mut plane.client, "retry", input, fast_retries(3))
        .await
        .expect("submitted");
    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);

    let retry = t(plane.client.get_retry(pb::GetRetryRequest {
        batch_id: r.batch_id.clone(),
        object_id: "2001".into(),
    }))
    .await
    .expect("get retry")
    .into_inner();
    let info = retry.retry.expect("retry info");
    assert_eq!(info.state(), pb::ObjectState::Loaded);
    assert_eq!(info.attempt, 2);
    assert_eq!(info.max_attempts, 3);
    assert!(info.last_error.contains("attempt 1"));
    assert!(!info.error_fingerprint.is_empty());
    let outcomes: Vec<(u32, pb::AttemptOutcome)> = retry
        .attempts
        .iter()
        .map(|a| (a.attempt, a.outcome()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, pb::AttemptOutcome::Failed),
            (2, pb::AttemptOutcome::Loaded)
        ]
    );
    assert!(retry.attempts[0].retryable);
    assert_eq!(retry.attempts[1].agent_id, "agent-standardized");

    let status = get_object(&mut plane.client, &r.batch_id, "2001")
        .await
        .expect("object");
    let path: Vec<pb::ObjectState> = status.history.iter().map(|h| h.to_state()).collect();
    use pb::ObjectState as S;
    assert_eq!(
        path,
        [
            S::Pending,
            S::Ready,
            S::Running,
            S::RetryWait,
            S::Ready,
            S::Running,
            S::Loaded
        ]
    );
    assert!(status.blocked.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_retry_is_listed_and_can_be_released_now() {
    let mut plane = start().await;
    let _agents = agents(&plane.data, true, |_, attempt| {
        if attempt == 1 {
            Answer::Fail { retryable: true }
        } else {
            Answer::Load
        }
    });
    // An hour of backoff: only RetryNow can release it in time.
    let options = Some(pb::SubmitOptions {
        retry_policy: Some(pb::RetryPolicy {
            initial_backoff: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            multiplier: 1.0,
            max_backoff: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let r = submit(
        &mut plane.client,
        "wait",
        objects(vec![object("1001", &[])]),
        options,
    )
    .await
    .expect("submitted");
    let waiting = t(async {
        loop {
            let page = plane
                .client
                .list_retries(pb::ListRetriesRequest {
                    batch_id: r.batch_id.clone(),
                    ..Default::default()
                })
                .await
                .expect("list retries")
                .into_inner();
            if let Some(info) = page.retries.into_iter().next() {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(waiting.object_id, "1001");
    assert_eq!(waiting.state(), pb::ObjectState::RetryWait);
    assert!(waiting.next_attempt_at.is_some());
    let by_zone = t(plane.client.list_retries(pb::ListRetriesRequest {
        zone: "application".into(),
        ..Default::default()
    }))
    .await
    .expect("by zone")
    .into_inner();
    assert!(by_zone.retries.is_empty());

    let blocked = get_object(&mut plane.client, &r.batch_id, "1001")
        .await
        .expect("object")
        .blocked
        .expect("blocked");
    let Some(pb::blocked_reason::Reason::Backoff(b)) = blocked.reason else {
        panic!("blocked by backoff: {blocked:?}");
    };
    assert_eq!(b.next_attempt, 2);

    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    let released = t(plane.client.retry_now(pb::RetryNowRequest {
        batch_id: r.batch_id.clone(),
        object_id: "1001".into(),
    }))
    .await
    .expect("retry now")
    .into_inner();
    assert_eq!(released.attempt, 2);
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);

    let again = t(plane.client.retry_now(pb::RetryNowRequest {
        batch_id: r.batch_id.clone(),
        object_id: "1001".into(),
    }))
    .await
    .expect_err("not waiting");
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("1001") && again.message().contains("LOADED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_dead_letter_and_replay_re_arms_the_descendants() {
    let mut plane = start().await;
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let _agents = agents(&plane.data, true, move |id, _| {
        if id == "1001" && !h.load(Ordering::SeqCst) {
            Answer::Fail { retryable: true }
        } else {
            Answer::Load
        }
    });
    let input = objects(vec![
        object("1001", &[]),
        object("1002", &[]),
        object("2001", &["1001", "1002"]),
        object("3001", &["2001"]),
    ]);
    let r = submit(&mut plane.client, "dead", input, fast_retries(2))
        .await
        .expect("submitted");
    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Failed);
    let states = watch.states();
    assert_eq!(states["1001"], pb::ObjectState::Dead);
    assert_eq!(states["1002"], pb::ObjectState::Loaded);
    assert_eq!(states["2001"], pb::ObjectState::UpstreamFailed);
    assert_eq!(states["3001"], pb::ObjectState::UpstreamFailed);

    let letters = t(plane
        .client
        .list_dead_letters(pb::ListDeadLettersRequest::default()))
    .await
    .expect("dead letters")
    .into_inner()
    .dead_letters;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        (letter.batch_id.as_str(), letter.object_id.as_str()),
        (r.batch_id.as_str(), "1001")
    );
    assert_eq!(letter.attempts, 2);
    assert_eq!(letter.blocked_descendant_count, 2);
    assert!(letter.last_error.contains("attempt 2"));

    let batch = t(plane.client.get_batch(pb::GetBatchRequest {
        batch_id: r.batch_id.clone(),
    }))
    .await
    .expect("batch")
    .into_inner();
    assert!(
        batch.state_reason.contains("1001"),
        "{}",
        batch.state_reason
    );

    let blocked = get_object(&mut plane.client, &r.batch_id, "3001")
        .await
        .expect("object")
        .blocked
        .expect("blocked");
    let Some(pb::blocked_reason::Reason::UpstreamFailed(u)) = &blocked.reason else {
        panic!("upstream failed: {blocked:?}");
    };
    assert_eq!(u.dead_ancestors, ["1001"]);
    assert!(blocked.summary.contains("1001"));

    // Replaying a live object is refused, naming it.
    let refused = t(plane
        .client
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            batch_id: r.batch_id.clone(),
            object_ids: vec!["1002".into()],
            max_attempts: 0,
        }))
    .await
    .expect_err("1002 is not dead");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("1002"));

    healthy.store(true, Ordering::SeqCst);
    let replay = t(plane
        .client
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            batch_id: r.batch_id.clone(),
            object_ids: Vec::new(),
            max_attempts: 0,
        }))
    .await
    .expect("replay")
    .into_inner();
    assert_eq!(replay.replayed_object_ids, ["1001"]);
    assert_eq!(replay.rearmed_descendant_count, 2);

    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);
    assert!(
        watch
            .states()
            .values()
            .all(|s| *s == pb::ObjectState::Loaded)
    );
    let letters = t(plane.client.list_dead_letters(pb::ListDeadLettersRequest {
        batch_id: r.batch_id.clone(),
        ..Default::default()
    }))
    .await
    .expect("dead letters")
    .into_inner()
    .dead_letters;
    assert!(letters.is_empty(), "a replayed object is no longer listed");
    let attempts = t(plane.client.get_retry(pb::GetRetryRequest {
        batch_id: r.batch_id.clone(),
        object_id: "1001".into(),
    }))
    .await
    .expect("retry")
    .into_inner()
    .retry
    .expect("info");
    assert_eq!(attempts.attempt, 3, "attempt numbers go on across a replay");
    assert_eq!(
        attempts.max_attempts, 4,
        "a fresh budget of 2 after attempt 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_object_says_why_an_object_is_blocked() {
    let mut plane = start().await;
    let _agents = agents(&plane.data, false, |_, _| Answer::Load);
    let r = submit(&mut plane.client, "blocked", catalogue(SAMPLE), None)
        .await
        .expect("submitted");
    let s = get_object(&mut plane.client, &r.batch_id, "3001")
        .await
        .expect("3001");
    assert_eq!(s.state(), pb::ObjectState::Pending);
    assert_eq!(s.zone, "application");
    assert_eq!(s.wave, 2);
    let blocked = s.blocked.expect("blocked");
    let Some(pb::blocked_reason::Reason::WaitingOnParents(w)) = &blocked.reason else {
        panic!("waiting on parents: {blocked:?}");
    };
    let parents: Vec<(&str, pb::ObjectState)> = w
        .parents
        .iter()
        .map(|p| (p.object_id.as_str(), p.state()))
        .collect();
    assert_eq!(
        parents,
        [
            ("2001", pb::ObjectState::Pending),
            ("2002", pb::ObjectState::Pending),
            ("2003", pb::ObjectState::Pending)
        ]
    );
    assert!(
        blocked.summary.contains("waiting on 3 parents"),
        "{}",
        blocked.summary
    );
    assert!(
        blocked.summary.contains("2001 (PENDING)"),
        "{}",
        blocked.summary
    );

    // A released root with no agent of its zone registered says so.
    let root = get_object(&mut plane.client, &r.batch_id, "01001")
        .await
        .expect("ids are canonicalised");
    assert_eq!(root.state(), pb::ObjectState::Ready);
    assert_eq!(root.attempt, 1);
    assert!(root.dispatch_epoch > 0);
    let Some(pb::blocked_reason::Reason::NoLiveAgent(none)) =
        root.blocked.as_ref().and_then(|b| b.reason.clone())
    else {
        panic!("no live agent: {:?}", root.blocked);
    };
    assert_eq!(none.zone, "raw");
    assert!(
        root.blocked
            .as_ref()
            .is_some_and(|b| b.summary.contains("no live agent of zone raw")),
        "{:?}",
        root.blocked
    );
    // Once an agent of the zone holds a lease, it waits for that agent.
    let mut registry = AgentRegistryClient::new(plane.channel.clone());
    register(&mut registry, "raw", 2).await;
    let root = get_object(&mut plane.client, &r.batch_id, "1001")
        .await
        .expect("1001");
    let Some(pb::blocked_reason::Reason::Queued(q)) =
        root.blocked.as_ref().and_then(|b| b.reason.clone())
    else {
        panic!("queued: {:?}", root.blocked);
    };
    assert_eq!((q.zone.as_str(), q.live_agents), ("raw", 1));
    assert!(q.released_at.is_some());

    let missing = get_object(&mut plane.client, &r.batch_id, "9999")
        .await
        .expect_err("not planned");
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains("9999") && missing.message().contains(&r.batch_id));
    let unknown = get_object(&mut plane.client, "b-nope", "1001")
        .await
        .expect_err("unknown batch");
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().contains("b-nope"));
}

/// When results and queries both wait, the results are applied first: a flood of reads cannot
/// hold up what the agents report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_applied_before_the_queries_waiting_with_them() {
    let mut plane = start().await;
    let mut ready = plane
        .data
        .subscribe_ready(&Zone::parse("raw").expect("zone"));
    submit(
        &mut plane.client,
        "priority",
        objects(vec![object("1001", &[])]),
        None,
    )
    .await
    .expect("submitted");
    let first = t(ready.recv()).await.expect("ready");
    let applied = counters(&plane.handle).await.applied;
    // Hold the driver in a read until the result and 50 reads wait together. The read blocks
    // its worker thread: `block_in_place` first hands that worker's other tasks to another
    // thread (a task parked in a blocked worker's LIFO slot, such as the memory data plane's
    // result forwarder, cannot be stolen and would wait for the release too).
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (entered, inside) = tokio::sync::oneshot::channel::<()>();
    let blocker = tokio::spawn({
        let handle = plane.handle.clone();
        async move {
            handle
                .read(move |_| {
                    let _ = entered.send(());
                    tokio::task::block_in_place(|| {
                        let _ = held.recv_timeout(Duration::from_secs(20));
                    });
                })
                .await
        }
    });
    // The driver is inside the read (not merely about to take it) before the result is sent.
    t(inside).await.expect("the driver takes the read");
    plane
        .data
        .send_result(pb::ObjectResult {
            result: Some(object_result::Result::Loaded(loaded(&first, "agent-x"))),
        })
        .await;
    let reads: Vec<_> = (0..50)
        .map(|_| {
            let handle = plane.handle.clone();
            tokio::spawn(async move { handle.read(|s| s.counters().applied).await })
        })
        .collect();
    t(async {
        while plane.data.results_waiting() < 1 || plane.handle.queries_waiting() < 50 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    release.send(()).expect("the driver holds the read");
    t(blocker).await.expect("joined").expect("read");
    for read in reads {
        let seen = t(read).await.expect("joined").expect("read");
        assert_eq!(
            seen,
            applied + 1,
            "a query that waited with a result was served before it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_stale_results_change_nothing_and_are_counted() {
    let mut plane = start().await;
    let mut ready = plane
        .data
        .subscribe_ready(&Zone::parse("raw").expect("zone"));
    let r = submit(
        &mut plane.client,
        "dup",
        objects(vec![object("1001", &[]), object("1002", &[])]),
        None,
    )
    .await
    .expect("submitted");
    let first = t(ready.recv()).await.expect("ready");
    let loaded_once = pb::ObjectResult {
        result: Some(object_result::Result::Loaded(loaded(&first, "agent-x"))),
    };
    let before = counters(&plane.handle).await;
    plane.data.send_result(loaded_once.clone()).await;
    t(async {
        while counters(&plane.handle).await.applied == before.applied {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let status = get_object(&mut plane.client, &r.batch_id, &first.object_id)
        .await
        .expect("object");
    assert_eq!(status.state(), pb::ObjectState::Loaded);
    let applied = counters(&plane.handle).await;

    // The same result again, and one with a wrong dispatch epoch.
    plane.data.send_result(loaded_once).await;
    let mut stale = loaded(&first, "agent-x");
    stale.dispatch_epoch += 100;
    plane
        .data
        .send_result(pb::ObjectResult {
            result: Some(object_result::Result::Loaded(stale)),
        })
        .await;
    let after = t(async {
        loop {
            let c = counters(&plane.handle).await;
            if c.ignored.get("duplicate").copied().unwrap_or(0) >= 1
                && c.ignored.get("stale").copied().unwrap_or(0) >= 1
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert_eq!(after.applied, applied.applied, "nothing more applied");
    assert_eq!(after.ignored.get("duplicate"), Some(&1));
    assert_eq!(after.ignored.get("stale"), Some(&1));
    let again = get_object(&mut plane.client, &r.batch_id, &first.object_id)
        .await
        .expect("object");
    assert_eq!(again.state(), pb::ObjectState::Loaded);
    assert_eq!(again.attempt, 1);
    assert_eq!(
        again.history.len(),
        status.history.len(),
        "no new transition"
    );
    let batch = t(plane.client.get_batch(pb::GetBatchRequest {
        batch_id: r.batch_id.clone(),
    }))
    .await
    .expect("batch")
    .into_inner();
    assert_eq!(
        batch.state(),
        pb::BatchState::Running,
        "the other object is still out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_batch_cancels_what_is_left_and_only_running_batches() {
    let mut plane = start().await;
    let agents = agents(&plane.data, false, |_, _| Answer::Load);
    let r = submit(&mut plane.client, "cancel", catalogue(SAMPLE), None)
        .await
        .expect("submitted");
    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    watch.snapshot().await;
    let cancelled = t(plane.client.cancel_batch(pb::CancelBatchRequest {
        batch_id: r.batch_id.clone(),
        reason: "wrong catalogue".into(),
    }))
    .await
    .expect("cancel")
    .into_inner();
    assert_eq!(cancelled.state(), pb::BatchState::Cancelled);
    assert!(cancelled.state_reason.contains("wrong catalogue"));
    let counts: u32 = cancelled
        .counts
        .iter()
        .filter(|c| c.state() == pb::ObjectState::Cancelled)
        .map(|c| c.count)
        .sum();
    assert_eq!(counts, 11);
    assert_eq!(watch.until_end().await, pb::BatchState::Cancelled);

    // Results of attempts in flight are ignored; the batch stays cancelled.
    agents.open();
    let again = t(plane.client.cancel_batch(pb::CancelBatchRequest {
        batch_id: r.batch_id.clone(),
        reason: String::new(),
    }))
    .await
    .expect("idempotent")
    .into_inner();
    assert_eq!(again.state(), pb::BatchState::Cancelled);

    let done = submit(
        &mut plane.client,
        "done",
        objects(vec![object("1001", &[])]),
        None,
    )
    .await
    .expect("submitted");
    let mut watch = Watch::open(&mut plane.client, &done.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);
    let refused = t(plane.client.cancel_batch(pb::CancelBatchRequest {
        batch_id: done.batch_id.clone(),
        reason: String::new(),
    }))
    .await
    .expect_err("finished");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains(&done.batch_id) && refused.message().contains("SUCCEEDED"));
    let unknown = t(plane.client.cancel_batch(pb::CancelBatchRequest {
        batch_id: "b-unknown".into(),
        reason: String::new(),
    }))
    .await
    .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_batch_shows_the_plan_and_persists_nothing() {
    let mut plane = start().await;
    let plan = t(plane.client.plan_batch(pb::PlanBatchRequest {
        input: catalogue(SAMPLE),
        ..Default::default()
    }))
    .await
    .expect("plan")
    .into_inner();
    let summary = plan.summary.expect("summary");
    assert_eq!(summary.object_count, 11);
    assert_eq!(summary.wave_count, 3);
    assert_eq!(summary.excluded_count, 0);
    let zones: BTreeMap<String, u32> = summary.objects_per_zone.into_iter().collect();
    assert_eq!(
        zones,
        BTreeMap::from([
            ("application".into(), 3),
            ("raw".into(), 4),
            ("standardized".into(), 4)
        ])
    );
    assert_eq!(summary.critical_path.len(), 3);
    assert_eq!(summary.plan_hash.len(), 64);
    assert_eq!(plan.objects.len(), 11);
    assert_eq!(plan.omitted_count, 0);
    let waves: Vec<u32> = plan.objects.iter().map(|o| o.wave).collect();
    assert!(
        waves.windows(2).all(|w| w[0] <= w[1]),
        "wave by wave: {waves:?}"
    );
    assert!(
        plan.objects
            .iter()
            .all(|o| o.disposition() == pb::Disposition::Run)
    );
    let targets: Vec<&str> = plan
        .objects
        .iter()
        .filter(|o| o.target)
        .map(|o| o.object_id.as_str())
        .collect();
    assert_eq!(targets.len(), 3);

    // Explicit targets, excluded objects listed, and a cap on the listing.
    let narrow = t(plane.client.plan_batch(pb::PlanBatchRequest {
        input: catalogue(SAMPLE),
        options: Some(pb::SubmitOptions {
            targets: vec!["2001".into()],
            ..Default::default()
        }),
        max_objects: 5,
        include_excluded: true,
    }))
    .await
    .expect("plan")
    .into_inner();
    let s = narrow.summary.expect("summary");
    assert_eq!((s.object_count, s.excluded_count, s.wave_count), (2, 9, 2));
    assert_eq!(narrow.objects.len(), 5);
    assert_eq!(narrow.objects[0].object_id, "1001");
    assert_eq!(narrow.objects[1].object_id, "2001");
    assert!(
        narrow.objects[2..]
            .iter()
            .all(|o| o.disposition() == pb::Disposition::Excluded)
    );

    // Preflight: a disabled object is rejected, its descendants with it.
    let disabled = t(plane.client.plan_batch(pb::PlanBatchRequest {
        input: objects(vec![
            pb::ObjectDefinition {
                enabled: Some(false),
                ..object("1001", &[])
            },
            object("2001", &["1001"]),
        ]),
        ..Default::default()
    }))
    .await
    .expect("plan")
    .into_inner();
    assert_eq!(
        disabled.summary.expect("summary").preflight_rejected_count,
        1
    );
    assert_eq!(
        disabled.objects[0].disposition(),
        pb::Disposition::PreflightRejected
    );
    assert!(disabled.objects[0].reason.contains("1001"));
    assert_eq!(
        disabled.objects[1].disposition(),
        pb::Disposition::UpstreamRejected
    );
    assert!(disabled.objects[1].reason.contains("1001"));

    // A plan error is the same as on submit.
    let e = t(plane.client.plan_batch(pb::PlanBatchRequest {
        input: catalogue(SAMPLE_UNKNOWN_PARENTS),
        ..Default::default()
    }))
    .await
    .expect_err("unknown parents");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(!rejection(&e).violations.is_empty());

    assert!(
        list_batches(&mut plane.client).await.is_empty(),
        "nothing persisted"
    );

    // Objects in flight in a running batch would coalesce.
    let _idle = agents(&plane.data, false, |_, _| Answer::Load);
    let running = submit(&mut plane.client, "running", catalogue(SAMPLE), None)
        .await
        .expect("submitted");
    let plan = t(plane.client.plan_batch(pb::PlanBatchRequest {
        input: catalogue(SAMPLE),
        ..Default::default()
    }))
    .await
    .expect("plan")
    .into_inner();
    assert_eq!(plan.summary.expect("summary").coalesced_count, 4);
    let coalesced: Vec<&pb::PlannedObject> = plan
        .objects
        .iter()
        .filter(|o| o.disposition() == pb::Disposition::Coalesced)
        .collect();
    assert_eq!(coalesced.len(), 4);
    assert!(
        coalesced
            .iter()
            .all(|o| o.coalesced_onto_batch_id == running.batch_id && o.object_id.starts_with('1'))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_use_the_stream_and_oversize_unary_is_resource_exhausted() {
    let mut plane = start_with(ServiceSettings {
        max_objects: 5000,
        max_message_bytes: 64 * 1024,
        ..ServiceSettings::default()
    })
    .await;
    let many: Vec<pb::ObjectDefinition> = (0..3000u32)
        .map(|i| pb::ObjectDefinition {
            name: format!("object number {i} with a longish name"),
            ..object(&(1_000_000 + i).to_string(), &[])
        })
        .collect();
    let e = submit(&mut plane.client, "big", objects(many.clone()), None)
        .await
        .expect_err("over the message limit");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("SubmitBatchStream"), "{}", e.message());

    let header = |dry_run: bool, expected: u64| pb::SubmitBatchStreamRequest {
        chunk: Some(pb::submit_batch_stream_request::Chunk::Header(
            pb::SubmitBatchHeader {
                idempotency_key: "big".into(),
                expected_object_count: expected,
                dry_run,
                ..Default::default()
            },
        )),
    };
    let chunks = |list: &[pb::ObjectDefinition]| -> Vec<pb::SubmitBatchStreamRequest> {
        list.chunks(500)
            .map(|c| pb::SubmitBatchStreamRequest {
                chunk: Some(pb::submit_batch_stream_request::Chunk::Objects(
                    pb::ObjectList {
                        objects: c.to_vec(),
                    },
                )),
            })
            .collect()
    };
    let mut messages = vec![header(false, 3000)];
    messages.extend(chunks(&many));
    let r = t(plane
        .client
        .submit_batch_stream(tokio_stream::iter(messages)))
    .await
    .expect("streamed")
    .into_inner();
    assert!(r.created);
    assert_eq!(r.summary.expect("summary").object_count, 3000);

    // A dry run plans without persisting.
    let mut messages = vec![header(true, 0)];
    messages.extend(chunks(&many[..10]));
    let dry = t(plane
        .client
        .submit_batch_stream(tokio_stream::iter(messages)))
    .await
    .expect("dry run")
    .into_inner();
    assert!(dry.batch_id.is_empty() && !dry.created);
    assert_eq!(dry.summary.expect("summary").object_count, 10);
    assert_eq!(list_batches(&mut plane.client).await.len(), 1);

    // Stream rules: header first, a truthful count, no mixing.
    let no_header = t(plane
        .client
        .submit_batch_stream(tokio_stream::iter(chunks(&many[..10]))))
    .await
    .expect_err("no header");
    assert_eq!(no_header.code(), Code::InvalidArgument);
    let mut truncated = vec![header(false, 3000)];
    truncated.extend(chunks(&many[..1000]));
    let truncated = t(plane
        .client
        .submit_batch_stream(tokio_stream::iter(truncated)))
    .await
    .expect_err("truncated");
    assert_eq!(truncated.code(), Code::InvalidArgument);
    assert!(truncated.message().contains("3000") && truncated.message().contains("1000"));
    let mut mixed = vec![header(false, 0)];
    mixed.push(pb::SubmitBatchStreamRequest {
        chunk: Some(pb::submit_batch_stream_request::Chunk::Catalogue(
            pb::CatalogueChunk {
                content: b"[]".to_vec(),
            },
        )),
    });
    let mixed = t(plane.client.submit_batch_stream(tokio_stream::iter(mixed)))
        .await
        .expect_err("mixed");
    assert_eq!(mixed.code(), Code::InvalidArgument);

    // A catalogue in chunks.
    let doc = SAMPLE.as_bytes();
    let mut messages = vec![pb::SubmitBatchStreamRequest {
        chunk: Some(pb::submit_batch_stream_request::Chunk::Header(
            pb::SubmitBatchHeader {
                idempotency_key: "doc".into(),
                catalogue_format: pb::CatalogueFormat::SeedJson as i32,
                ..Default::default()
            },
        )),
    }];
    messages.extend(doc.chunks(1000).map(|c| pb::SubmitBatchStreamRequest {
        chunk: Some(pb::submit_batch_stream_request::Chunk::Catalogue(
            pb::CatalogueChunk {
                content: c.to_vec(),
            },
        )),
    }));
    let r = t(plane
        .client
        .submit_batch_stream(tokio_stream::iter(messages)))
    .await
    .expect("catalogue streamed")
    .into_inner();
    assert_eq!(r.summary.expect("summary").object_count, 11);

    // Over the object cap in the stream: the same rejection as SubmitBatch.
    let over: Vec<pb::ObjectDefinition> = (0..5001u32)
        .map(|i| object(&(1_000_000 + i).to_string(), &[]))
        .collect();
    let mut messages = vec![header(false, 0)];
    messages.extend(chunks(&over));
    let e = t(plane
        .client
        .submit_batch_stream(tokio_stream::iter(messages)))
    .await
    .expect_err("over the cap");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(rejection(&e).max_objects, 5000);

    // Over the byte limit of one stream, objects or catalogue: refused as the chunk that crosses
    // it arrives, nothing planned.
    let mut small = start_with(ServiceSettings {
        max_submission_bytes: 100_000,
        ..ServiceSettings::default()
    })
    .await;
    let mut messages = vec![header(false, 0)];
    messages.extend(chunks(&many));
    let e = t(small
        .client
        .submit_batch_stream(tokio_stream::iter(messages)))
    .await
    .expect_err("objects over the byte limit");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("over the limit of 100000 bytes"),
        "{}",
        e.message()
    );
    let mut messages = vec![pb::SubmitBatchStreamRequest {
        chunk: Some(pb::submit_batch_stream_request::Chunk::Header(
            pb::SubmitBatchHeader {
                idempotency_key: "doc".into(),
                catalogue_format: pb::CatalogueFormat::SeedJson as i32,
                ..Default::default()
            },
        )),
    }];
    let filler = vec![b' '; 30_000];
    messages.extend((0..4).map(|_| pb::SubmitBatchStreamRequest {
        chunk: Some(pb::submit_batch_stream_request::Chunk::Catalogue(
            pb::CatalogueChunk {
                content: filler.clone(),
            },
        )),
    }));
    let e = t(small
        .client
        .submit_batch_stream(tokio_stream::iter(messages)))
    .await
    .expect_err("catalogue over the byte limit");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("120000 bytes"), "{}", e.message());
    assert!(list_batches(&mut small.client).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_and_reflection_lists_the_orchestrator() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let plane = start().await;
    let mut health = HealthClient::new(plane.channel.clone());
    let status = t(health.check(tonic_health::pb::HealthCheckRequest {
        service: "strata.v1.Orchestrator".into(),
    }))
    .await
    .expect("health")
    .into_inner();
    assert_eq!(status.status(), ServingStatus::Serving);

    let mut reflection = ServerReflectionClient::new(plane.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = t(reflection.server_reflection_info(tokio_stream::iter(vec![request])))
        .await
        .expect("reflection")
        .into_inner();
    let response = t(responses.message())
        .await
        .expect("reflection answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("a service list: {response:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"strata.v1.Orchestrator"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

/// One connection opens at most `max_concurrent_streams` streams at once: a call beyond them
/// waits for a stream to end (and is not refused), so one client cannot open streams until the
/// server's memory runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_opens_at_most_the_concurrent_stream_limit() {
    let mut plane = start_with(ServiceSettings {
        max_objects: MAX_OBJECTS,
        max_concurrent_streams: 2,
        ..ServiceSettings::default()
    })
    .await;
    let r = submit(&mut plane.client, "streams", catalogue(SAMPLE), None)
        .await
        .expect("submitted");
    let first = Watch::open(&mut plane.client, &r.batch_id).await;
    let _second = Watch::open(&mut plane.client, &r.batch_id).await;
    let mut client = plane.client.clone();
    let batch_id = r.batch_id.clone();
    let mut third = tokio::spawn(async move {
        client
            .get_batch(pb::GetBatchRequest { batch_id })
            .await
            .map(|r| r.into_inner().batch_id)
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "a third stream on the connection was served while two were open"
    );
    drop(first);
    let served = t(third)
        .await
        .expect("joined")
        .expect("served once a stream ended");
    assert_eq!(served, r.batch_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_over_its_quotas_gets_resource_exhausted_with_a_retry_hint() {
    use strata_control_plane::quota::QuotaSettings;
    let mut plane = start_with(ServiceSettings {
        max_objects: MAX_OBJECTS,
        quotas: QuotaSettings {
            calls_per_sec: 20,
            concurrent_calls: 100,
            watch_streams_per_principal: 2,
            watch_streams_total: 100,
        },
        ..ServiceSettings::default()
    })
    .await;
    let r = submit(&mut plane.client, "quotas", catalogue(SAMPLE), None)
        .await
        .expect("submitted");
    // WatchBatch streams: two held, the third refused, one closed, the next served.
    let first = Watch::open(&mut plane.client, &r.batch_id).await;
    let _second = Watch::open(&mut plane.client, &r.batch_id).await;
    let e = t(plane.client.watch_batch(pb::WatchBatchRequest {
        batch_id: r.batch_id.clone(),
    }))
    .await
    .expect_err("a third stream");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("holds 2 WatchBatch streams"),
        "{}",
        e.message()
    );
    assert!(
        e.metadata().get("grpc-retry-pushback-ms").is_some(),
        "{e:?}"
    );
    drop(first);
    // The server notices the closed stream a moment after the client drops it (bounded by `t`).
    let _reopened = t(async {
        loop {
            match plane
                .client
                .watch_batch(pb::WatchBatchRequest {
                    batch_id: r.batch_id.clone(),
                })
                .await
            {
                Ok(stream) => return stream,
                Err(e) if e.message().contains("WatchBatch streams") => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await;
    // The call rate: a burst of twice the rate passes, then calls are refused with the time to
    // wait, and pass again once it has gone by.
    // The bucket refills (40 calls at 20 per second) from what the calls above used.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let calls = (0..100).map(|_| {
        let mut client = plane.client.clone();
        let batch_id = r.batch_id.clone();
        async move { client.get_batch(pb::GetBatchRequest { batch_id }).await }
    });
    let started = std::time::Instant::now();
    let replies = t(futures::future::join_all(calls)).await;
    let refilled = (started.elapsed().as_secs_f64() * 20.0).ceil() as usize;
    let served = replies.iter().filter(|r| r.is_ok()).count();
    assert!(
        (40..=41 + refilled).contains(&served) && served < 100,
        "a burst of 40 (and the {refilled} that refilled while it ran) is served, not all 100: \
         {served}"
    );
    let e = replies
        .into_iter()
        .find_map(Result::err)
        .expect("100 calls at once exceed a rate of 20 per second");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("over its call rate"),
        "{}",
        e.message()
    );
    let wait: u64 = e
        .metadata()
        .get("grpc-retry-pushback-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("a retry hint in ms");
    assert!((1..=50).contains(&wait), "one call every 50 ms: {wait}");
    tokio::time::sleep(Duration::from_millis(wait)).await;
    plane
        .client
        .get_batch(pb::GetBatchRequest {
            batch_id: r.batch_id.clone(),
        })
        .await
        .expect("served after the hinted wait");
}

/// A flood of `WatchBatch` calls on one connection: the flooding principal gets no more than its
/// quota of streams, every other call is refused (or the server ends the flooding connection: a
/// call refused before its request is read ends in a stream reset, and h2 answers a client that
/// causes more than 1,024 of them with `GOAWAY ENHANCE_YOUR_CALM`), and the batch runs to the end
/// meanwhile, as a watcher on another connection sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watch_streams_on_one_connection_leave_the_batch_running() {
    use strata_control_plane::quota::QuotaSettings;
    let mut plane = start().await;
    let agents = agents(&plane.data, false, |_, _| Answer::Load);
    let r = submit(&mut plane.client, "flood", catalogue(SAMPLE), None)
        .await
        .expect("submitted");
    let mut other = OrchestratorClient::new(
        t(Channel::from_shared(plane.endpoint.clone())
            .expect("uri")
            .connect())
        .await
        .expect("a second connection"),
    );
    let mut watcher = Watch::open(&mut other, &r.batch_id).await;
    let calls = (0..10_000).map(|_| {
        let mut client = plane.client.clone();
        let batch_id = r.batch_id.clone();
        async move {
            client
                .watch_batch(pb::WatchBatchRequest { batch_id })
                .await
                .map(tonic::Response::into_inner)
        }
    });
    let replies = t(futures::future::join_all(calls)).await;
    let (mut open, mut refused, mut cut) = (0, 0, 0);
    for reply in &replies {
        match reply {
            Ok(_) => open += 1,
            Err(e) if e.message().contains("WatchBatch streams, its limit") => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                refused += 1;
            }
            // The server ended the flooding connection (GOAWAY): the calls still on it fail.
            Err(e) => {
                assert!(
                    matches!(
                        e.code(),
                        Code::ResourceExhausted
                            | Code::Cancelled
                            | Code::Unknown
                            | Code::Unavailable
                    ) && (e.message().contains("h2 protocol error")
                        || e.message().contains("transport error")
                        || e.message().contains("canceled")),
                    "{e:?}"
                );
                cut += 1;
            }
        }
    }
    eprintln!(
        "10,000 WatchBatch calls on one connection: {open} open, {refused} refused by the quota, {cut} on the connection the server ended"
    );
    assert!(
        open < QuotaSettings::default().watch_streams_per_principal,
        "{open} streams opened beside the watcher: over the principal's quota"
    );
    assert!(refused > 0, "no call was refused by the quota");
    drop(replies);
    agents.open();
    assert_eq!(watcher.until_end().await, pb::BatchState::Succeeded);
}

/// The driver keeps one execution deadline per attempt running, not one per attempt started
/// within the execution timeout (an hour by default): once the batch is over, none is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_deadlines_are_dropped_when_their_attempts_end() {
    let mut plane = start().await;
    let agents = agents(&plane.data, false, |_, _| Answer::Load);
    let r = submit(&mut plane.client, "deadlines", catalogue(SAMPLE), None)
        .await
        .expect("submitted");
    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    watch.snapshot().await;
    agents.open();
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);
    let started = watch
        .changes()
        .iter()
        .filter(|c| c.to_state() == pb::ObjectState::Running)
        .count();
    assert!(started > 10, "{started} attempts started");
    // A read is served at a later turn of the loop than the batch's last step.
    let _ = counters(&plane.handle).await;
    assert_eq!(counters(&plane.handle).await.deadlines_armed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_see_the_same_changes() {
    let mut plane = start().await;
    let agents = agents(&plane.data, false, |_, _| Answer::Load);
    let r = submit(&mut plane.client, "many", catalogue(SAMPLE), None)
        .await
        .expect("submitted");
    let mut watches = Vec::new();
    for _ in 0..5 {
        let mut w = Watch::open(&mut plane.client, &r.batch_id).await;
        w.snapshot().await;
        watches.push(w);
    }
    // One watcher that never reads must not hold anything up.
    let _idle = Watch::open(&mut plane.client, &r.batch_id).await;
    agents.open();
    let finished = Arc::new(AtomicU32::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for mut w in watches {
        let finished = finished.clone();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            assert_eq!(w.until_end().await, pb::BatchState::Succeeded);
            finished.fetch_add(1, Ordering::SeqCst);
            let changes: Vec<(String, i32)> = w
                .changes()
                .into_iter()
                .map(|c| (c.object_id, c.to_state))
                .collect();
            seen.lock().expect("lock").push(changes);
        }));
    }
    for task in tasks {
        t(task).await.expect("watcher");
    }
    assert_eq!(finished.load(Ordering::SeqCst), 5);
    let seen = seen.lock().expect("lock");
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "same changes in the same order"
    );
    assert_eq!(
        seen[0].len(),
        11 * 3 - 4,
        "READY (7), RUNNING (11), LOADED (11)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_finished_before_a_restart_is_answered_from_the_store() {
    let store = Arc::new(MemoryStore::new());
    let settings = ServiceSettings {
        max_objects: MAX_OBJECTS,
        ..ServiceSettings::default()
    };
    let mut first = start_on(store.clone(), settings.clone()).await;
    let _agents = agents(&first.data, true, |_, _| Answer::Load);
    let r = submit(&mut first.client, "before", catalogue(SAMPLE), None)
        .await
        .expect("submitted");
    let mut watch = Watch::open(&mut first.client, &r.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);
    drop(first);

    // A new control plane over the same store: the finished batch is not restored.
    let mut plane = start_on(store, settings).await;
    let batch = t(plane.client.get_batch(pb::GetBatchRequest {
        batch_id: r.batch_id.clone(),
    }))
    .await
    .expect("from the store")
    .into_inner();
    assert_eq!(batch.state(), pb::BatchState::Succeeded);
    assert_eq!(batch.idempotency_key, "before");
    assert!(batch.finished_at.is_some());
    assert_eq!(batch.summary.expect("re-planned summary").object_count, 11);
    let loaded: u32 = batch
        .counts
        .iter()
        .filter(|c| c.state() == pb::ObjectState::Loaded)
        .map(|c| c.count)
        .sum();
    assert_eq!(loaded, 11, "a succeeded batch loaded every planned object");

    let listed = list_batches(&mut plane.client).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state(), pb::BatchState::Succeeded);

    let page = t(plane.client.get_plan(pb::GetPlanRequest {
        batch_id: r.batch_id.clone(),
        ..Default::default()
    }))
    .await
    .expect("plan from the store")
    .into_inner();
    assert_eq!(page.objects.len(), 11);

    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    watch.snapshot().await;
    assert!(
        watch.next().await.is_none(),
        "a finished batch: snapshot, then the end"
    );
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);

    // Its objects are read from the store, with their history.
    let object = get_object(&mut plane.client, &r.batch_id, "1001")
        .await
        .expect("an object of a finished batch, from the store");
    assert_eq!(object.state(), pb::ObjectState::Loaded);
    assert!(object.history.len() >= 4, "{:?}", object.history);
    assert!(!object.agent_id.is_empty());
    let cancel = t(plane.client.cancel_batch(pb::CancelBatchRequest {
        batch_id: r.batch_id.clone(),
        reason: String::new(),
    }))
    .await
    .expect_err("finished");
    assert_eq!(cancel.code(), Code::FailedPrecondition);

    let again = submit(&mut plane.client, "before", catalogue(SAMPLE), None)
        .await
        .expect("idempotent across restarts");
    assert_eq!(again.batch_id, r.batch_id);
    assert!(!again.created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_falls_behind_gets_a_resync_and_a_fresh_snapshot() {
    // A watcher may fall one driver step behind; this one reads nothing while thousands of
    // results arrive in many more steps than that.
    let mut plane = start_driven(
        Arc::new(MemoryStore::new()),
        Arc::new(MemoryDataPlane::new()),
        ServiceSettings {
            max_objects: 10_000,
            snapshot_part_objects: 1000,
            ..ServiceSettings::default()
        },
        DriverSettings {
            watch_capacity: 1,
            ..DriverSettings::default()
        },
    )
    .await;
    let _agents = agents(&plane.data, false, |_, _| Answer::Load);
    let n = 8000u32;
    let input = independent_objects(n);
    let r = submit(&mut plane.client, "slow", input, None)
        .await
        .expect("submitted");
    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    watch.snapshot().await;
    let parts = watch
        .messages
        .iter()
        .filter(|m| matches!(m.event, Some(watch_batch_response::Event::Snapshot(_))))
        .count();
    assert_eq!(parts, 8, "8000 objects in parts of 1000");
    _agents.open();
    // The watcher reads nothing while the batch runs: the driver is not held up.
    until_succeeded(&mut plane.client, &r.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);
    let resync = watch
        .messages
        .iter()
        .position(|m| matches!(m.event, Some(watch_batch_response::Event::Resync(_))))
        .expect("a resync");
    let Some(watch_batch_response::Event::Resync(dropped)) = &watch.messages[resync].event else {
        unreachable!()
    };
    assert!(dropped.dropped_events > 0);
    assert!(
        matches!(
            &watch.messages[resync + 1].event,
            Some(watch_batch_response::Event::Snapshot(s)) if s.batch.is_some()
        ),
        "a fresh snapshot follows the resync"
    );
    let states = watch.states();
    assert_eq!(states.len(), n as usize);
    assert!(states.values().all(|s| *s == pb::ObjectState::Loaded));
}

/// A snapshot is read part by part as the client takes it, not copied whole when the watch
/// begins: a client that stops reading after the first part, while the whole batch loads, gets
/// later parts that already show the objects LOADED, and no change it already holds. Applied in
/// order, every change follows on from the state the client holds for that object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_read_in_parts_and_the_changes_after_it_never_disagree() {
    let mut plane = start_driven(
        Arc::new(MemoryStore::new()),
        Arc::new(MemoryDataPlane::new()),
        ServiceSettings {
            max_objects: 10_000,
            snapshot_part_objects: 10,
            ..ServiceSettings::default()
        },
        DriverSettings {
            // Room for every step of the batch: this watcher must not need a resync.
            watch_capacity: 100_000,
            ..DriverSettings::default()
        },
    )
    .await;
    let agents = agents(&plane.data, false, |_, _| Answer::Load);
    let n = 5000u32;
    let input = independent_objects(n);
    let r = submit(&mut plane.client, "parts", input, None)
        .await
        .expect("submitted");
    // The watcher's own connection takes 16 KiB before the client reads: 500 parts (about
    // 150 KB) are far more, so the server waits to read the rest until the client reads again.
    // (Parts of 10 objects: h2 ends a connection that buffers too many DATA frames under 256
    // bytes its reader has not taken.)
    let mut narrow = OrchestratorClient::new(
        t(Channel::from_shared(plane.endpoint.clone())
            .expect("uri")
            .initial_stream_window_size(16 << 10)
            .initial_connection_window_size(16 << 10)
            .connect())
        .await
        .expect("a narrow connection"),
    );
    let mut watch = Watch::open(&mut narrow, &r.batch_id).await;
    watch.next().await.expect("the first part");
    agents.open();
    // The client reads nothing more until the batch is over.
    until_succeeded(&mut plane.client, &r.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);
    let mut held: BTreeMap<String, (pb::ObjectState, u32)> = BTreeMap::new();
    let (mut parts, mut loaded_in_parts) = (0, 0);
    for m in &watch.messages {
        match &m.event {
            Some(watch_batch_response::Event::Snapshot(s)) => {
                parts += 1;
                for o in &s.objects {
                    loaded_in_parts += usize::from(o.state() == pb::ObjectState::Loaded);
                    assert!(
                        held.insert(o.object_id.clone(), (o.state(), o.attempt))
                            .is_none(),
                        "{} in two parts",
                        o.object_id
                    );
                }
            }
            Some(watch_batch_response::Event::ObjectChanged(c)) => {
                let state = held
                    .get_mut(&c.object_id)
                    .expect("a change of a shown object");
                assert_eq!(
                    state.0,
                    c.from_state(),
                    "{}: a change from {:?} to {:?}, but the client holds {:?}",
                    c.object_id,
                    c.from_state(),
                    c.to_state(),
                    state.0
                );
                *state = (c.to_state(), c.attempt);
            }
            Some(watch_batch_response::Event::Resync(_)) => panic!("no resync was needed"),
            _ => {}
        }
    }
    assert_eq!(parts, n as usize / 10, "parts of 10 objects");
    assert!(
        loaded_in_parts > 0,
        "every part was read when the watch began: none shows an object LOADED"
    );
    assert_eq!(held.len(), n as usize);
    assert!(
        held.values()
            .all(|(state, attempt)| *state == pb::ObjectState::Loaded && *attempt == 1),
        "every object LOADED at attempt 1 in the client's view"
    );
}

/// Counts the Ready records produced per object id, on every zone's topic.
/// Every Ready the data plane published, in order; tests wait on it for what they expect (woken
/// by each record, never polling).
#[derive(Clone, Default)]
struct ReadyLog {
    records: Arc<Mutex<Vec<pb::ObjectReady>>>,
    grown: Arc<tokio::sync::Notify>,
}

impl ReadyLog {
    /// `f` of the records so far.
    fn with<T>(&self, f: impl FnOnce(&[pb::ObjectReady]) -> T) -> T {
        f(&self.records.lock().expect("log"))
    }

    /// Waits (bounded by [`t`]) until `f` of the records finds something, and returns it.
    async fn until<T>(&self, mut f: impl FnMut(&[pb::ObjectReady]) -> Option<T>) -> T {
        t(async {
            loop {
                let grown = self.grown.notified();
                tokio::pin!(grown);
                // Registered before looking, so a record pushed in between still wakes us.
                grown.as_mut().enable();
                if let Some(found) = self.with(&mut f) {
                    return found;
                }
                grown.await;
            }
        })
        .await
    }
}

fn ready_log(data: &Arc<MemoryDataPlane>) -> ReadyLog {
    let log = ReadyLog::default();
    for zone in ZONES {
        let mut ready = data.subscribe_ready(&Zone::parse(zone).expect("zone"));
        let log = log.clone();
        tokio::spawn(async move {
            while let Ok(r) = ready.recv().await {
                log.records.lock().expect("log").push(r);
                log.grown.notify_waiters();
            }
        });
    }
    log
}

fn produced(log: &ReadyLog, object_id: &str) -> Vec<String> {
    log.with(|records| {
        records
            .iter()
            .filter(|r| r.object_id == object_id)
            .map(|r| r.batch_id.clone())
            .collect()
    })
}

/// A batch that defines an object in flight otherwise (another attribute) does not take the
/// running attempt's outcome: it waits for that attempt to end (two runs of one object never
/// overlap), says so, and then runs its own definition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_defined_otherwise_waits_for_the_running_attempt_then_runs_its_own() {
    let mut plane = start().await;
    let log = ready_log(&plane.data);
    let agents = agents(&plane.data, false, |_, _| Answer::Load);
    let a = submit(
        &mut plane.client,
        "first",
        objects(vec![object("1001", &[])]),
        None,
    )
    .await
    .expect("first batch");
    let mut other = object("1001", &[]);
    other.attributes.insert("path".into(), "/data/other".into());
    let b = submit(&mut plane.client, "second", objects(vec![other]), None)
        .await
        .expect("second batch");

    let waiting = get_object(&mut plane.client, &b.batch_id, "1001")
        .await
        .expect("object");
    assert_eq!(waiting.state(), pb::ObjectState::Ready);
    assert_eq!(waiting.coalesced_onto_batch_id, a.batch_id);
    let summary = waiting.blocked.expect("blocked").summary;
    assert!(summary.contains("runs its own definition"), "{summary}");
    assert_eq!(produced(&log, "1001"), vec![a.batch_id.clone()]);

    let mut watch_a = Watch::open(&mut plane.client, &a.batch_id).await;
    let mut watch_b = Watch::open(&mut plane.client, &b.batch_id).await;
    agents.open();
    assert_eq!(watch_a.until_end().await, pb::BatchState::Succeeded);
    assert_eq!(watch_b.until_end().await, pb::BatchState::Succeeded);
    // Two runs, one per definition: the second batch's own Ready, with its attribute.
    assert_eq!(
        produced(&log, "1001"),
        vec![a.batch_id.clone(), b.batch_id.clone()]
    );
    let own = log.with(|records| {
        records
            .iter()
            .find(|r| r.batch_id == b.batch_id)
            .and_then(|r| r.object.as_ref())
            .map(|o| o.attributes.get("path").cloned())
    });
    assert_eq!(own, Some(Some("/data/other".to_owned())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_run_a_shared_object_once_and_share_its_outcome() {
    let mut plane = start().await;
    let log = ready_log(&plane.data);
    let agents = agents(&plane.data, false, |id, _| {
        if id == "1007" {
            Answer::Fail { retryable: false }
        } else {
            Answer::Load
        }
    });
    let a = submit(
        &mut plane.client,
        "first",
        objects(vec![
            object("1001", &[]),
            object("1007", &[]),
            object("2001", &["1001"]),
            object("2007", &["1007"]),
        ]),
        None,
    )
    .await
    .expect("first batch");
    let b = submit(
        &mut plane.client,
        "second",
        objects(vec![
            object("1001", &[]),
            object("1007", &[]),
            object("2002", &["1001"]),
            object("2008", &["1007"]),
        ]),
        None,
    )
    .await
    .expect("second batch");

    // The second batch's 1001 waits on the first's attempt, and says so.
    let waiting = get_object(&mut plane.client, &b.batch_id, "1001")
        .await
        .expect("object");
    assert_eq!(waiting.state(), pb::ObjectState::Ready);
    assert_eq!(waiting.coalesced_onto_batch_id, a.batch_id);
    let Some(pb::blocked_reason::Reason::Coalesced(c)) =
        waiting.blocked.as_ref().and_then(|b| b.reason.clone())
    else {
        panic!("blocked reason {:?}", waiting.blocked);
    };
    assert_eq!(c.batch_id, a.batch_id);
    assert!(
        waiting
            .blocked
            .expect("blocked")
            .summary
            .contains(&a.batch_id),
        "the summary names the batch"
    );
    // A third submission's plan sees both objects in flight.
    let plan = t(plane.client.plan_batch(pb::PlanBatchRequest {
        input: objects(vec![object("1001", &[]), object("1007", &[])]),
        ..Default::default()
    }))
    .await
    .expect("plan")
    .into_inner();
    assert_eq!(plan.summary.expect("summary").coalesced_count, 2);

    let mut watch_a = Watch::open(&mut plane.client, &a.batch_id).await;
    let mut watch_b = Watch::open(&mut plane.client, &b.batch_id).await;
    agents.open();
    assert_eq!(watch_a.until_end().await, pb::BatchState::Failed);
    assert_eq!(watch_b.until_end().await, pb::BatchState::Failed);

    // One Ready each for the shared objects, from the first batch; the rest once per batch.
    assert_eq!(produced(&log, "1001"), vec![a.batch_id.clone()]);
    assert_eq!(produced(&log, "1007"), vec![a.batch_id.clone()]);
    assert_eq!(produced(&log, "2001"), vec![a.batch_id.clone()]);
    assert_eq!(produced(&log, "2002"), vec![b.batch_id.clone()]);
    assert!(produced(&log, "2007").is_empty() && produced(&log, "2008").is_empty());

    // The second batch took the first's outcomes.
    let shared = get_object(&mut plane.client, &b.batch_id, "1001")
        .await
        .expect("object");
    assert_eq!(shared.state(), pb::ObjectState::Loaded);
    assert_eq!(shared.coalesced_onto_batch_id, a.batch_id);
    assert_eq!(
        get_object(&mut plane.client, &b.batch_id, "2002")
            .await
            .expect("object")
            .state(),
        pb::ObjectState::Loaded
    );
    let dead = get_object(&mut plane.client, &b.batch_id, "1007")
        .await
        .expect("object");
    assert_eq!(dead.state(), pb::ObjectState::Dead);
    assert!(
        dead.last_error.contains("simulated failure"),
        "{}",
        dead.last_error
    );
    assert_eq!(
        get_object(&mut plane.client, &b.batch_id, "2008")
            .await
            .expect("object")
            .state(),
        pb::ObjectState::UpstreamFailed
    );
    let letters: Vec<pb::DeadLetter> = plane
        .data
        .dead_letters()
        .into_iter()
        .filter(|l| l.object_id == "1007")
        .collect();
    assert_eq!(letters.len(), 2, "each batch dead-letters its own object");
    let theirs = letters
        .iter()
        .find(|l| l.batch_id == b.batch_id)
        .expect("second batch's letter");
    assert!(theirs.last_error.contains("simulated failure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_batch_that_runs_a_shared_object_releases_the_waiting_one() {
    let mut plane = start().await;
    let log = ready_log(&plane.data);
    let agents = agents(&plane.data, false, |_, _| Answer::Load);
    let owner = submit(
        &mut plane.client,
        "owner",
        objects(vec![object("1005", &[])]),
        None,
    )
    .await
    .expect("owner");
    let waiter = submit(
        &mut plane.client,
        "waiter",
        objects(vec![object("1005", &[]), object("2005", &["1005"])]),
        None,
    )
    .await
    .expect("waiter");
    assert_eq!(
        get_object(&mut plane.client, &waiter.batch_id, "1005")
            .await
            .expect("object")
            .coalesced_onto_batch_id,
        owner.batch_id
    );
    t(plane.client.cancel_batch(pb::CancelBatchRequest {
        batch_id: owner.batch_id.clone(),
        reason: "not needed".into(),
    }))
    .await
    .expect("cancel");
    let mut watch = Watch::open(&mut plane.client, &waiter.batch_id).await;
    agents.open();
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);
    // Released by the owner, then — once the owner was cancelled — by the waiter itself.
    assert_eq!(
        produced(&log, "1005"),
        [owner.batch_id.clone(), waiter.batch_id.clone()]
    );
    let status = get_object(&mut plane.client, &waiter.batch_id, "1005")
        .await
        .expect("object");
    assert_eq!(status.state(), pb::ObjectState::Loaded);
    assert!(status.coalesced_onto_batch_id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_waiting_batch_coalesces_onto_the_same_attempt_again() {
    let store = Arc::new(MemoryStore::new());
    let settings = ServiceSettings {
        max_objects: MAX_OBJECTS,
        ..ServiceSettings::default()
    };
    let mut first = start_on(store.clone(), settings.clone()).await;
    let _idle = agents(&first.data, false, |_, _| Answer::Load);
    // The newer batch is submitted first in key order but later in time: creation order decides.
    let older = submit(
        &mut first.client,
        "z-older",
        objects(vec![object("1001", &[]), object("2001", &["1001"])]),
        None,
    )
    .await
    .expect("older");
    // Creation times are milliseconds: keep the two apart.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let newer = submit(
        &mut first.client,
        "a-newer",
        objects(vec![object("1001", &[]), object("2002", &["1001"])]),
        None,
    )
    .await
    .expect("newer");
    drop(first);

    let data = Arc::new(MemoryDataPlane::new());
    let log = ready_log(&data);
    let _agents = agents(&data, true, |_, _| Answer::Load);
    let mut plane = start_over(store, data, settings).await;
    let mut watch_older = Watch::open(&mut plane.client, &older.batch_id).await;
    let mut watch_newer = Watch::open(&mut plane.client, &newer.batch_id).await;
    assert_eq!(watch_older.until_end().await, pb::BatchState::Succeeded);
    assert_eq!(watch_newer.until_end().await, pb::BatchState::Succeeded);
    assert_eq!(produced(&log, "1001"), vec![older.batch_id.clone()]);
    assert_eq!(
        get_object(&mut plane.client, &newer.batch_id, "1001")
            .await
            .expect("object")
            .coalesced_onto_batch_id,
        older.batch_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_loaded_by_an_earlier_batch_are_skipped_as_fresh_unless_forced() {
    let mut plane = start().await;
    let _agents = agents(&plane.data, true, |_, _| Answer::Load);
    let log = ready_log(&plane.data);
    // 1001 is due yearly; 1002 has no frequency, so it always runs.
    let yearly = |id: &str, parents: &[&str]| pb::ObjectDefinition {
        frequency: "@yearly".into(),
        ..object(id, parents)
    };
    let batch = |key: &'static str| {
        (
            key,
            objects(vec![
                yearly("1001", &[]),
                object("1002", &[]),
                yearly("2001", &["1001", "1002"]),
            ]),
        )
    };
    let (key, input) = batch("first");
    let first = submit(&mut plane.client, key, input, None)
        .await
        .expect("first");
    let mut watch = Watch::open(&mut plane.client, &first.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);

    // The dry run and the submission agree: 1001 and 2001 are fresh now.
    let (_, input) = batch("plan");
    let plan = t(plane.client.plan_batch(pb::PlanBatchRequest {
        input,
        ..Default::default()
    }))
    .await
    .expect("plan")
    .into_inner();
    let fresh: Vec<&str> = plan
        .objects
        .iter()
        .filter(|o| o.disposition() == pb::Disposition::SkippedFresh)
        .map(|o| o.object_id.as_str())
        .collect();
    assert_eq!(fresh, ["1001", "2001"]);
    let (key, input) = batch("second");
    let second = submit(&mut plane.client, key, input, None)
        .await
        .expect("second");
    let mut watch = Watch::open(&mut plane.client, &second.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);
    for (id, state) in [
        ("1001", pb::ObjectState::SkippedFresh),
        ("1002", pb::ObjectState::Loaded),
        ("2001", pb::ObjectState::SkippedFresh),
    ] {
        let o = get_object(&mut plane.client, &second.batch_id, id)
            .await
            .expect("object");
        assert_eq!(o.state(), state, "{id}");
    }

    // Forced: everything runs again.
    let (key, input) = batch("forced");
    let forced = submit(
        &mut plane.client,
        key,
        input,
        Some(pb::SubmitOptions {
            force: true,
            ..Default::default()
        }),
    )
    .await
    .expect("forced");
    let mut watch = Watch::open(&mut plane.client, &forced.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);
    assert_eq!(
        produced(&log, "1001"),
        vec![first.batch_id.clone(), forced.batch_id.clone()]
    );
    assert_eq!(
        produced(&log, "1002"),
        vec![
            first.batch_id.clone(),
            second.batch_id.clone(),
            forced.batch_id.clone()
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_retry_by_their_own_policy_and_reject_by_their_own_preflight_rules() {
    use strata_core::preflight::PreflightRules;
    use strata_core::retry::RetryPolicy;
    let raw = Zone::parse("raw").expect("zone");
    let standardized = Zone::parse("standardized").expect("zone");
    let mut plane = start_with(ServiceSettings {
        max_objects: MAX_OBJECTS,
        zone_retry: [(
            raw,
            RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
        )]
        .into(),
        preflight: [(
            standardized,
            PreflightRules {
                require_attributes: vec!["URL".into()],
                ..PreflightRules::default()
            },
        )]
        .into(),
        ..ServiceSettings::default()
    })
    .await;
    let log = ready_log(&plane.data);
    // 1001 always fails (retryably); 2001 fails twice, then loads.
    let _agents = agents(&plane.data, true, |id, attempt| match (id, attempt) {
        ("1001", _) | ("2001", 1 | 2) => Answer::Fail { retryable: true },
        _ => Answer::Load,
    });
    let with_url = |id: &str, parents: &[&str]| pb::ObjectDefinition {
        attributes: [("URL".to_owned(), "https://example.test/x".to_owned())].into(),
        ..object(id, parents)
    };
    // Backoffs from the request; attempts from the zones. Every object is a target.
    let fast = fast_retries(0).map(|o| pb::SubmitOptions { all: true, ..o });
    let r = submit(
        &mut plane.client,
        "zones",
        objects(vec![
            object("1001", &[]),
            with_url("2001", &[]),
            object("2099", &[]),
            object("3001", &["2099"]),
            object("3002", &["2001"]),
        ]),
        fast,
    )
    .await
    .expect("submitted");
    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Failed);

    let raw_dead = get_object(&mut plane.client, &r.batch_id, "1001")
        .await
        .expect("object");
    assert_eq!(raw_dead.state(), pb::ObjectState::Dead);
    assert_eq!((raw_dead.attempt, raw_dead.max_attempts), (1, 1));
    let retried = get_object(&mut plane.client, &r.batch_id, "2001")
        .await
        .expect("object");
    assert_eq!(retried.state(), pb::ObjectState::Loaded);
    assert_eq!((retried.attempt, retried.max_attempts), (3, 3));
    let rejected = get_object(&mut plane.client, &r.batch_id, "2099")
        .await
        .expect("object");
    assert_eq!(rejected.state(), pb::ObjectState::Dead);
    assert!(
        rejected.last_error.contains("URL") && rejected.last_error.contains("standardized"),
        "{}",
        rejected.last_error
    );
    assert!(produced(&log, "2099").is_empty(), "never dispatched");
    assert_eq!(
        get_object(&mut plane.client, &r.batch_id, "3001")
            .await
            .expect("object")
            .state(),
        pb::ObjectState::UpstreamFailed
    );
    // The Ready records carry each zone's attempt budget.
    let budgets: Vec<(String, u32)> = log.with(|records| {
        records
            .iter()
            .map(|r| (r.object_id.clone(), r.max_attempts))
            .collect()
    });
    assert!(budgets.contains(&("1001".into(), 1)), "{budgets:?}");
    assert!(budgets.contains(&("2001".into(), 3)), "{budgets:?}");

    // A dry run shows the preflight rejection too.
    let plan = t(plane.client.plan_batch(pb::PlanBatchRequest {
        input: objects(vec![object("2099", &[])]),
        ..Default::default()
    }))
    .await
    .expect("plan")
    .into_inner();
    assert_eq!(
        plan.objects[0].disposition(),
        pb::Disposition::PreflightRejected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_records_lost_with_the_topics_are_published_again() {
    let mut plane = start().await;
    let log = ready_log(&plane.data);
    let agents = agents(&plane.data, false, |_, _| Answer::Load);
    let r = submit(
        &mut plane.client,
        "lost",
        objects(vec![
            object("1001", &[]),
            object("1002", &[]),
            object("2001", &["1001", "1002"]),
        ]),
        None,
    )
    .await
    .expect("submitted");
    let published = |records: &[pb::ObjectReady]| {
        let mut v: Vec<(String, u32, u64)> = records
            .iter()
            .map(|r| (r.object_id.clone(), r.attempt, r.dispatch_epoch))
            .collect();
        v.sort();
        v
    };
    let first = log
        .until(|records| (records.len() >= 2).then(|| published(records)))
        .await;
    // Several topic checks pass with nothing lost: nothing is published again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(log.with(published), first);

    plane.data.lose_topics();
    let again = log
        .until(|records| (records.len() >= 4).then(|| published(records)))
        .await;
    let expected: Vec<(String, u32, u64)> =
        first.iter().flat_map(|r| [r.clone(), r.clone()]).collect();
    assert_eq!(again, expected, "the same attempts, published once more");

    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    agents.open();
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);
    assert_eq!(
        produced(&log, "2001"),
        vec![r.batch_id.clone()],
        "released once, after its parents"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_past_its_zone_execution_timeout_is_retried() {
    let data = Arc::new(MemoryDataPlane::new());
    let log = ready_log(&data);
    // The first attempt of 1001 starts and never answers; later ones load.
    let _agents = agents(&data, true, |id, attempt| {
        if id == "1001" && attempt == 1 {
            Answer::Hang
        } else {
            Answer::Load
        }
    });
    let mut plane = start_driven(
        Arc::new(MemoryStore::new()),
        data,
        ServiceSettings {
            max_objects: MAX_OBJECTS,
            ..ServiceSettings::default()
        },
        DriverSettings {
            zone_execution_timeouts: [(
                Zone::parse("raw").expect("zone"),
                Duration::from_millis(200),
            )]
            .into(),
            ..DriverSettings::default()
        },
    )
    .await;
    let r = submit(
        &mut plane.client,
        "timeout",
        objects(vec![object("1001", &[]), object("2001", &["1001"])]),
        fast_retries(3),
    )
    .await
    .expect("submitted");
    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);
    let o = get_object(&mut plane.client, &r.batch_id, "1001")
        .await
        .expect("object");
    assert_eq!((o.state(), o.attempt), (pb::ObjectState::Loaded, 2));
    assert!(
        o.history
            .iter()
            .any(|h| h.to_state() == pb::ObjectState::RetryWait && h.attempt == 1),
        "{:?}",
        o.history
    );
    assert_eq!(o.last_error, "attempt 1 lost: timeout");
    // The Ready records carry the zone's timeout; other zones keep the default.
    let timeouts: Vec<(String, Option<prost_types::Duration>)> = log.with(|records| {
        records
            .iter()
            .map(|r| (r.object_id.clone(), r.execution_timeout))
            .collect()
    });
    let of = |id: &str| -> Vec<(i64, i32)> {
        timeouts
            .iter()
            .filter(|(o, _)| o == id)
            .filter_map(|(_, d)| d.as_ref().map(|d| (d.seconds, d.nanos)))
            .collect()
    };
    assert_eq!(
        of("1001"),
        [(0, 200_000_000), (0, 200_000_000)],
        "{timeouts:?}"
    );
    assert_eq!(of("2001"), [(3600, 0)], "{timeouts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_register_heartbeat_list_and_deregister_with_fenced_leases() {
    let plane = start().await;
    let mut registry = AgentRegistryClient::new(plane.channel.clone());
    let e = t(registry.register_agent(pb::RegisterAgentRequest {
        zone: "gold".into(),
        capacity: 1,
        ..Default::default()
    }))
    .await
    .expect_err("unknown zone");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("gold") && e.message().contains("raw"),
        "{}",
        e.message()
    );
    let e = t(registry.register_agent(pb::RegisterAgentRequest {
        zone: "raw".into(),
        capacity: 0,
        ..Default::default()
    }))
    .await
    .expect_err("no capacity");
    assert_eq!(e.code(), Code::InvalidArgument);

    let lease = t(registry.register_agent(pb::RegisterAgentRequest {
        zone: "raw".into(),
        capacity: 4,
        version: "0.1.0".into(),
        hostname: "host-a".into(),
        labels: [("processor".to_owned(), "simulate".to_owned())].into(),
    }))
    .await
    .expect("registered")
    .into_inner();
    assert_eq!(lease.ready_topic, "strata.ready.raw");
    assert_eq!(lease.results_topic, "strata.results");
    assert_eq!(lease.consumer_group, "strata.agents.raw");
    assert!(lease.heartbeat_interval.is_some() && lease.lease_ttl.is_some());
    let again = register(&mut registry, "raw", 1).await;
    assert_ne!(again.agent_id, lease.agent_id);
    assert!(again.lease_epoch > lease.lease_epoch);

    let beat = t(registry.heartbeat(pb::HeartbeatRequest {
        agent_id: lease.agent_id.clone(),
        lease_epoch: lease.lease_epoch,
        // An attempt nobody waits for: the agent is told to abandon it.
        in_flight: vec![pb::InFlightAttempt {
            batch_id: "b-gone".into(),
            object_id: "1001".into(),
            attempt: 1,
            dispatch_epoch: 1,
            started_at: None,
        }],
        draining: false,
    }))
    .await
    .expect("heartbeat")
    .into_inner();
    assert!(beat.lease_expires_at.is_some());
    assert_eq!(beat.abandon.len(), 1);
    let stale = t(registry.heartbeat(pb::HeartbeatRequest {
        agent_id: lease.agent_id.clone(),
        lease_epoch: again.lease_epoch,
        ..Default::default()
    }))
    .await
    .expect_err("another lease's epoch");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    let unknown = t(registry.heartbeat(pb::HeartbeatRequest {
        agent_id: "agent-nope".into(),
        lease_epoch: 1,
        ..Default::default()
    }))
    .await
    .expect_err("unknown agent");
    assert_eq!(unknown.code(), Code::NotFound);

    let listed = t(registry.list_agents(pb::ListAgentsRequest {
        zone: "raw".into(),
        include_inactive: false,
    }))
    .await
    .expect("list")
    .into_inner()
    .agents;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].agent_id, lease.agent_id);
    assert_eq!(listed[0].hostname, "host-a");
    assert_eq!(listed[0].in_flight, 1);
    assert_eq!(listed[0].state(), pb::AgentState::Active);

    t(registry.deregister(pb::DeregisterRequest {
        agent_id: lease.agent_id.clone(),
        lease_epoch: lease.lease_epoch,
        reason: "sigterm".into(),
    }))
    .await
    .expect("deregistered");
    t(registry.deregister(pb::DeregisterRequest {
        agent_id: lease.agent_id.clone(),
        lease_epoch: lease.lease_epoch,
        reason: "again".into(),
    }))
    .await
    .expect("idempotent");
    let live = t(registry.list_agents(pb::ListAgentsRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .agents;
    assert_eq!(live.len(), 1);
    let all = t(registry.list_agents(pb::ListAgentsRequest {
        include_inactive: true,
        ..Default::default()
    }))
    .await
    .expect("list")
    .into_inner()
    .agents;
    assert!(
        all.iter()
            .any(|a| a.agent_id == lease.agent_id && a.state() == pb::AgentState::Deregistered)
    );
}

/// The first Ready of `object_id` in the log, waited for.
async fn first_ready(log: &ReadyLog, object_id: &str) -> pb::ObjectReady {
    log.until(|records| records.iter().find(|r| r.object_id == object_id).cloned())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_of_an_agent_whose_lease_expires_or_that_deregisters_are_retried() {
    let data = Arc::new(MemoryDataPlane::new());
    let log = ready_log(&data);
    // The data-plane agents wait behind a closed gate, so agents A and B below are the ones that
    // hold the first attempts (READY, started by nobody else); once the gate opens, every first
    // attempt hangs (its agent is gone) and later ones load.
    let agents = agents(&data, false, |_, attempt| {
        if attempt == 1 {
            Answer::Hang
        } else {
            Answer::Load
        }
    });
    let mut plane = start_driven(
        Arc::new(MemoryStore::new()),
        data,
        ServiceSettings {
            max_objects: MAX_OBJECTS,
            ..ServiceSettings::default()
        },
        DriverSettings {
            lease_ttl: Duration::from_millis(300),
            ..DriverSettings::default()
        },
    )
    .await;
    let mut registry = AgentRegistryClient::new(plane.channel.clone());
    let r = submit(
        &mut plane.client,
        "lost-agents",
        objects(vec![object("1001", &[]), object("1002", &[])]),
        fast_retries(3),
    )
    .await
    .expect("submitted");
    let held = |r: &pb::ObjectReady| pb::InFlightAttempt {
        batch_id: r.batch_id.clone(),
        object_id: r.object_id.clone(),
        attempt: r.attempt,
        dispatch_epoch: r.dispatch_epoch,
        started_at: None,
    };
    // Agent A holds 1001 and then stops heartbeating; agent B holds 1002 and deregisters.
    let a = register(&mut registry, "raw", 1).await;
    let b = register(&mut registry, "raw", 1).await;
    let r1001 = first_ready(&log, "1001").await;
    let r1002 = first_ready(&log, "1002").await;
    t(registry.heartbeat(pb::HeartbeatRequest {
        agent_id: a.agent_id.clone(),
        lease_epoch: a.lease_epoch,
        in_flight: vec![held(&r1001)],
        draining: false,
    }))
    .await
    .expect("a beats once");
    t(registry.heartbeat(pb::HeartbeatRequest {
        agent_id: b.agent_id.clone(),
        lease_epoch: b.lease_epoch,
        in_flight: vec![held(&r1002)],
        draining: true,
    }))
    .await
    .expect("b drains");
    let handed = t(registry.deregister(pb::DeregisterRequest {
        agent_id: b.agent_id.clone(),
        lease_epoch: b.lease_epoch,
        reason: "sigterm".into(),
    }))
    .await
    .expect("b leaves")
    .into_inner();
    assert_eq!(handed.handed_back_count, 1);
    // A's lease expires (no heartbeat for its 300 ms TTL): the attempt it held is lost. Only
    // then does the data-plane agent run anything (had it started 1001's first attempt, that
    // attempt would be its own, not A's).
    t(async {
        loop {
            let o = get_object(&mut plane.client, &r.batch_id, "1001")
                .await
                .expect("1001");
            if o.attempt == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    agents.open();

    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);
    let lost = get_object(&mut plane.client, &r.batch_id, "1001")
        .await
        .expect("1001");
    assert_eq!(
        (lost.attempt, lost.last_error.as_str()),
        (2, "attempt 1 lost: agent_lost")
    );
    let drained = get_object(&mut plane.client, &r.batch_id, "1002")
        .await
        .expect("1002");
    assert_eq!(
        (drained.attempt, drained.last_error.as_str()),
        (2, "attempt 1 lost: drained")
    );
    let expired = t(registry.heartbeat(pb::HeartbeatRequest {
        agent_id: a.agent_id.clone(),
        lease_epoch: a.lease_epoch,
        ..Default::default()
    }))
    .await
    .expect_err("expired");
    assert_eq!(expired.code(), Code::FailedPrecondition);
    assert!(
        expired.message().contains("expired"),
        "{}",
        expired.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_results_verified_only_a_signed_result_of_the_objects_zone_is_heard() {
    let data = Arc::new(MemoryDataPlane::new());
    let log = ready_log(&data);
    let mut plane = start_driven(
        Arc::new(MemoryStore::new()),
        data.clone(),
        ServiceSettings {
            max_objects: MAX_OBJECTS,
            ..ServiceSettings::default()
        },
        DriverSettings {
            verify_results: true,
            ..DriverSettings::default()
        },
    )
    .await;
    let mut registry = AgentRegistryClient::new(plane.channel.clone());
    let app_agent = register(&mut registry, "application", 1).await;
    let raw_agent = register(&mut registry, "raw", 1).await;
    assert_eq!(raw_agent.result_signing_key.len(), 32);
    assert_ne!(raw_agent.result_signing_key, app_agent.result_signing_key);
    let r = submit(
        &mut plane.client,
        "leases",
        objects(vec![object("1001", &[])]),
        None,
    )
    .await
    .expect("submitted");
    let ready = first_ready(&log, "1001").await;
    // `agent`'s Loaded for lease `epoch`, signed with `key` (empty: unsigned).
    let result = |agent: &str, epoch: u64, key: &[u8]| {
        let mut l = loaded(&ready, agent);
        l.agent_lease_epoch = epoch;
        let mut result = pb::ObjectResult {
            result: Some(object_result::Result::Loaded(l)),
        };
        if let Some(key) = ResultKey::from_slice(key) {
            key.sign(&mut result);
        }
        result
    };
    // Forged or misdirected Loaded results: each is rejected with its reason.
    for forged in [
        result(&app_agent.agent_id, app_agent.lease_epoch, &[]),
        result(
            &app_agent.agent_id,
            app_agent.lease_epoch,
            &app_agent.result_signing_key,
        ),
        result(
            &raw_agent.agent_id,
            raw_agent.lease_epoch,
            &app_agent.result_signing_key,
        ),
        result("agent-unregistered", 1, &[9; 32]),
    ] {
        data.send_result(forged).await;
    }
    t(async {
        while counters(&plane.handle).await.rejected.values().sum::<u64>() < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let still = get_object(&mut plane.client, &r.batch_id, "1001")
        .await
        .expect("1001");
    assert_eq!(
        still.state(),
        pb::ObjectState::Ready,
        "rejected results change nothing"
    );
    // The zone's own agent, signing with its lease's key, is heard.
    data.send_result(result(
        &raw_agent.agent_id,
        raw_agent.lease_epoch,
        &raw_agent.result_signing_key,
    ))
    .await;
    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);
    assert_eq!(
        counters(&plane.handle).await.rejected,
        [
            ("bad_signature", 1),
            ("unknown_lease", 1),
            ("unsigned", 1),
            ("wrong_zone", 1)
        ]
        .into_iter()
        .collect()
    );
}

/// Registers an agent of `zone` with `capacity` and returns its lease.
async fn register(
    registry: &mut AgentRegistryClient<Channel>,
    zone: &str,
    capacity: u32,
) -> pb::RegisterAgentResponse {
    t(registry.register_agent(pb::RegisterAgentRequest {
        zone: zone.into(),
        capacity,
        ..Default::default()
    }))
    .await
    .expect("registered")
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_signed_before_a_restart_is_verified_after_it_and_the_ready_key_is_kept() {
    let store = Arc::new(MemoryStore::new());
    let settings = ServiceSettings {
        max_objects: MAX_OBJECTS,
        ..ServiceSettings::default()
    };
    let driver = DriverSettings {
        verify_results: true,
        ..DriverSettings::default()
    };
    let data = Arc::new(MemoryDataPlane::new());
    let log = ready_log(&data);
    let mut first = start_driven(store.clone(), data, settings.clone(), driver.clone()).await;
    let mut registry = AgentRegistryClient::new(first.channel.clone());
    let agent = register(&mut registry, "raw", 1).await;
    let r = submit(
        &mut first.client,
        "restart",
        objects(vec![object("1001", &[])]),
        None,
    )
    .await
    .expect("submitted");
    let ready = first_ready(&log, "1001").await;
    let verifier = ReadyVerifier::from_slice(&agent.ready_verify_key).expect("a verify key");
    assert_eq!(verifier.verify(&ready), Ok(()), "the Ready is signed");
    // The agent's Loaded, signed with its lease's key before the control plane stops.
    let mut l = loaded(&ready, &agent.agent_id);
    l.agent_lease_epoch = agent.lease_epoch;
    let mut result = pb::ObjectResult {
        result: Some(object_result::Result::Loaded(l)),
    };
    ResultKey::from_slice(&agent.result_signing_key)
        .expect("a result key")
        .sign(&mut result);
    drop(registry);
    drop(first);

    // A new control plane over the same store: the Ready it publishes again is signed with the
    // same key, and the lease's key still verifies the result.
    let data = Arc::new(MemoryDataPlane::new());
    let log = ready_log(&data);
    let mut plane = start_driven(store, data.clone(), settings, driver).await;
    let again = first_ready(&log, "1001").await;
    assert_eq!(verifier.verify(&again), Ok(()), "the same Ready key");
    data.send_result(result).await;
    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);
    assert!(counters(&plane.handle).await.rejected.is_empty());
    // A registration after the restart gets the same Ready key and a new result key.
    let mut registry = AgentRegistryClient::new(plane.channel.clone());
    let next = register(&mut registry, "raw", 1).await;
    assert_eq!(next.ready_verify_key, agent.ready_verify_key);
    assert_ne!(next.result_signing_key, agent.result_signing_key);
}

/// A stored batch whose objects now plan to another node layout than the one its records were
/// stored under (a planner change between versions, say) is refused at restore, loudly (logged,
/// counted by reason), instead of attaching its records to the wrong objects; a batch whose
/// layout is the same is restored. The refused one still answers from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_batch_planned_to_another_layout_is_not_restored() {
    use strata_control_plane::convert;
    use strata_control_plane::metrics::Metrics as CpMetrics;
    use strata_control_plane::ports::{BatchHead, StateStore as _, StoredBatch};
    use strata_core::machine::BatchState;
    use strata_core::submission::{BatchOptions, LastLoaded, PlanContext, prepare};

    let store = Arc::new(MemoryStore::new());
    let store_batch = |key: &'static str, layout: Option<&'static str>| {
        let store = store.clone();
        async move {
            let defs = convert::object_defs(vec![object("1001", &[]), object("2001", &["1001"])])
                .expect("valid objects");
            let none = BTreeMap::new();
            let ctx = PlanContext {
                max_objects: 10,
                durations: &none,
                last_loaded: &LastLoaded::default(),
                preflight: &BTreeMap::new(),
                now: chrono::Utc::now(),
            };
            let p = prepare(key, defs, BatchOptions::default(), &ctx).expect("plans");
            let mut stored = StoredBatch::of(&p);
            if let Some(layout) = layout {
                stored.layout_hash = layout.to_owned();
            }
            let head = BatchHead {
                state: BatchState::Running,
                next_epoch: 1,
                finished_at_ms: None,
            };
            store
                .create_batch(&stored, &p.objects, &head, &[])
                .await
                .expect("stored");
            p.batch_id
        }
    };
    let same = store_batch("same-layout", None).await;
    let other = store_batch("other-layout", Some("00112233445566778899aabbccddeeff")).await;
    let metrics = CpMetrics::new();
    let mut plane = start_driven(
        store,
        Arc::new(MemoryDataPlane::new()),
        ServiceSettings::default(),
        DriverSettings {
            metrics: metrics.clone(),
            ..DriverSettings::default()
        },
    )
    .await;
    let held = {
        let (same, other) = (same.clone(), other.clone());
        t(plane
            .handle
            .read(move |s| (s.batch(&same).is_some(), s.batch(&other).is_some())))
        .await
        .expect("the driver answers")
    };
    assert_eq!(held, (true, false), "(same layout, other layout) restored");
    assert!(
        metrics
            .render()
            .contains(r#"strata_batches_not_restored_total{reason="layout_changed"} 1"#),
        "{}",
        metrics.render()
    );
    let e = plane
        .client
        .get_object(pb::GetObjectRequest {
            batch_id: other.clone(),
            object_id: "1001".into(),
        })
        .await
        .expect_err("not driven");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let b = plane
        .client
        .get_batch(pb::GetBatchRequest { batch_id: other })
        .await
        .expect("answered from the store")
        .into_inner();
    assert_eq!(b.state(), pb::BatchState::Running);
}

/// A finished batch leaves memory after the retention, and GetBatch, GetObject, GetRetry,
/// ListDeadLetters and WatchBatch then answer exactly as before, from the store (its records, and the trails
/// stored when it finished), and again after a restart; ReplayDeadLetters takes it back from the
/// store and runs it to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_batch_leaves_memory_and_reads_answer_the_same_from_the_store() {
    let store = Arc::new(MemoryStore::new());
    let data = Arc::new(MemoryDataPlane::new());
    let driver = || DriverSettings {
        finished_retention: Duration::from_millis(300),
        ..DriverSettings::default()
    };
    let mut plane = start_driven(
        store.clone(),
        data.clone(),
        ServiceSettings::default(),
        driver(),
    )
    .await;
    let _agents = agents(&data, true, move |id, _| {
        if id == "1001" {
            Answer::Fail { retryable: true }
        } else {
            Answer::Load
        }
    });
    let input = objects(vec![
        object("1001", &[]),
        object("1002", &[]),
        object("2001", &["1001", "1002"]),
    ]);
    let r = submit(&mut plane.client, "evicted", input, fast_retries(2))
        .await
        .expect("submitted");
    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Failed);

    // Everything a user reads about the finished batch.
    async fn reads(
        client: &mut OrchestratorClient<Channel>,
        batch_id: &str,
    ) -> (
        pb::Batch,
        Vec<pb::ObjectStatus>,
        pb::GetRetryResponse,
        Vec<pb::DeadLetter>,
    ) {
        let batch = t(client.get_batch(pb::GetBatchRequest {
            batch_id: batch_id.into(),
        }))
        .await
        .expect("batch")
        .into_inner();
        let mut objects = Vec::new();
        for id in ["1001", "1002", "2001"] {
            objects.push(get_object(client, batch_id, id).await.expect("object"));
        }
        let retry = t(client.get_retry(pb::GetRetryRequest {
            batch_id: batch_id.into(),
            object_id: "1001".into(),
        }))
        .await
        .expect("retry")
        .into_inner();
        let letters = t(client.list_dead_letters(pb::ListDeadLettersRequest {
            batch_id: batch_id.into(),
            ..Default::default()
        }))
        .await
        .expect("dead letters")
        .into_inner()
        .dead_letters;
        (batch, objects, retry, letters)
    }
    let held = reads(&mut plane.client, &r.batch_id).await;
    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Failed);
    let held_states = watch.states();
    assert_eq!(held_states.len(), 3);
    assert_eq!(held.1[0].history.len(), 7, "{:?}", held.1[0].history);
    assert_eq!(held.2.attempts.len(), 2, "{:?}", held.2);
    assert!(!held.1[1].agent_id.is_empty());
    assert_eq!(held.3.len(), 1);

    // Waits (bounded) until the driver no longer holds the batch.
    async fn until_evicted(handle: &Handle, batch_id: &str) {
        t(async {
            loop {
                let id = batch_id.to_owned();
                let still = handle
                    .read(move |s| s.batch(&id).is_some())
                    .await
                    .expect("read");
                if !still {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    until_evicted(&plane.handle, &r.batch_id).await;
    assert_eq!(
        reads(&mut plane.client, &r.batch_id).await,
        held,
        "after the batch left memory"
    );
    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Failed);
    assert_eq!(
        watch.states(),
        held_states,
        "a watch after the batch left memory"
    );

    // A restarted control plane (same store, a new broker connection) answers the same.
    drop(plane);
    drop(_agents);
    let data = Arc::new(MemoryDataPlane::new());
    let mut again = start_driven(
        store.clone(),
        data.clone(),
        ServiceSettings::default(),
        driver(),
    )
    .await;
    assert_eq!(
        reads(&mut again.client, &r.batch_id).await,
        held,
        "after a restart"
    );

    // Replaying takes it back from the store; it runs to the end.
    let _agents = agents(&data, true, |_, _| Answer::Load);
    let replay = t(again
        .client
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            batch_id: r.batch_id.clone(),
            object_ids: Vec::new(),
            max_attempts: 0,
        }))
    .await
    .expect("replayed from the store")
    .into_inner();
    assert_eq!(replay.replayed_object_ids, ["1001"]);
    let mut watch = Watch::open(&mut again.client, &r.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Succeeded);
    // Finished again and evicted again: reads show the new outcome, not the one read before.
    until_evicted(&again.handle, &r.batch_id).await;
    let object = get_object(&mut again.client, &r.batch_id, "1001")
        .await
        .expect("object");
    assert_eq!(
        (object.state(), object.attempt),
        (pb::ObjectState::Loaded, 3)
    );
}

/// Every DEAD object reaches the dead-letter topic: a letter the broker does not take is
/// produced again at the next tick once it does, and one still unproduced when the control
/// plane stops (a crash between the state write and the produce) is produced by the next
/// control plane at start, from the store's outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dead_letter_reaches_the_topic_even_across_a_restart() {
    use strata_control_plane::ports::StateStore as _;
    let store = Arc::new(MemoryStore::new());
    let data = Arc::new(MemoryDataPlane::new());
    let mut plane = start_driven(
        store.clone(),
        data.clone(),
        ServiceSettings::default(),
        DriverSettings::default(),
    )
    .await;
    let agents = agents(&data, true, |_, _| Answer::Fail { retryable: false });
    data.fail_dead_letters(true);
    let r = submit(
        &mut plane.client,
        "outbox-1",
        objects(vec![object("1001", &[])]),
        None,
    )
    .await
    .expect("submitted");
    let mut watch = Watch::open(&mut plane.client, &r.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Failed);
    assert!(data.dead_letters().is_empty(), "the broker took nothing");
    let unsent = store.unsent_dead_letters(10).await.expect("outbox");
    assert_eq!(unsent.len(), 1, "the letter waits in the outbox");
    // The broker takes letters again: the next tick produces it.
    data.fail_dead_letters(false);
    t(async {
        while data.dead_letters().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(data.dead_letters()[0].object_id, "1001");
    t(async {
        while !store
            .unsent_dead_letters(10)
            .await
            .expect("outbox")
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // A second letter the broker refuses, then the control plane stops before producing it.
    data.fail_dead_letters(true);
    let r2 = submit(
        &mut plane.client,
        "outbox-2",
        objects(vec![object("1002", &[])]),
        None,
    )
    .await
    .expect("submitted");
    let mut watch = Watch::open(&mut plane.client, &r2.batch_id).await;
    assert_eq!(watch.until_end().await, pb::BatchState::Failed);
    drop(plane);
    drop(agents);
    assert_eq!(
        store.unsent_dead_letters(10).await.expect("outbox").len(),
        1
    );

    // The next control plane (a new broker connection) produces it at start.
    let fresh = Arc::new(MemoryDataPlane::new());
    let _again = start_driven(
        store.clone(),
        fresh.clone(),
        ServiceSettings::default(),
        DriverSettings::default(),
    )
    .await;
    t(async {
        while fresh.dead_letters().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let produced: Vec<String> = fresh
        .dead_letters()
        .iter()
        .map(|d| d.object_id.clone())
        .collect();
    assert_eq!(produced, ["1002"], "only the unproduced letter, once");
}
