//! The control plane end to end on the real Kafka-protocol broker and a real Redis: the
//! in-process control plane (`run_with` over the Kafka and Redis adapters, a real gRPC server and
//! client) and, per zone, the worker agent's own loop (`agent::run`, `tests/src/agent.rs`) with a
//! scripted processor, consuming the real ready topics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use strata_control_plane::adapters::kafka::{KafkaDataPlane, KafkaSettings};
use strata_control_plane::adapters::redis::RedisStore;
use strata_control_plane::config::{Config, Flags};
use strata_control_plane::run::run_with;
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use strata_proto::v1::{self as pb, object_result, watch_batch_response};
use strata_tests::agent::{Answer, Behaviour, TestAgent};
use strata_tests::{RedisServer, TestBroker, within};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::transport::Channel;

const SAMPLE: &str = include_str!("../../clients/samples/catalogue.json");
const ZONES: [&str; 3] = ["raw", "standardized", "application"];
const LONG: Duration = Duration::from_secs(60);

/// The sample catalogue's edges: child → parents.
fn sample_parents() -> BTreeMap<String, Vec<String>> {
    let c = strata_core::catalogue::read_catalogue(SAMPLE.as_bytes()).expect("sample reads");
    c.objects
        .iter()
        .map(|o| {
            (
                o.id.to_string(),
                o.parents.iter().map(ToString::to_string).collect(),
            )
        })
        .collect()
}

/// Fields drop in order: agents (their consumers leave the group while the broker is up), the
/// client, then the broker and Redis.
struct Stack {
    agents: Vec<TestAgent>,
    client: OrchestratorClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    config: Config,
    broker: TestBroker,
    _redis: RedisServer,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(behaviour: Behaviour) -> anyhow::Result<Stack> {
    start_gated(behaviour, watch::channel(true).1).await
}

/// The stack with agents that handle each Ready only once `gate` is open.
async fn start_gated(behaviour: Behaviour, gate: watch::Receiver<bool>) -> anyhow::Result<Stack> {
    let redis = within(LONG, "start redis", RedisServer::start()).await??;
    let broker = within(LONG, "start broker", TestBroker::start()).await??;
    let config = Flags {
        kafka_brokers: Some(broker.bootstrap_servers()),
        // The test's own topics and group on a broker other tests may share.
        topic_prefix: Some(broker.topic_prefix().to_owned()),
        consumer_group: Some(broker.group("control-plane")),
        redis_url: Some(redis.url()),
        topic_partitions: Some(2),
        initial_backoff_ms: Some(20),
        max_backoff_ms: Some(100),
        // The in-process test agents hold a fixed lease and do not register (tests/tests/worker_agents.rs
        // runs the real agent with leases required).
        verify_results: Some(false),
        ..Flags::default()
    }
    .resolve()?;
    let store = within(
        LONG,
        "connect redis",
        RedisStore::connect(&config.redis_url, &config.key_prefix, config.finished_ttl),
    )
    .await??;
    let data = KafkaDataPlane::connect(KafkaSettings {
        topic_prefix: config.topic_prefix.clone(),
        partitions: config.topic_partitions,
        consumer_group: config.consumer_group.clone(),
        ..KafkaSettings::new(config.kafka_brokers.clone())
    })?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let run_config = config.clone();
    tokio::spawn(async move {
        let result = run_with(
            &run_config,
            Arc::new(data),
            Arc::new(store),
            listener,
            None,
            async move {
                let _ = stopped.await;
            },
        )
        .await;
        if let Err(e) = result {
            eprintln!("control plane stopped: {e}");
        }
    });
    let mut agents = Vec::new();
    for zone in ZONES {
        agents.push(TestAgent::spawn_gated(
            &config.kafka_brokers,
            &config.topic_prefix,
            zone,
            &format!("test-agent-{zone}"),
            behaviour.clone(),
            gate.clone(),
        )?);
    }
    let client = within(LONG, "connect client", async {
        loop {
            if let Ok(c) = OrchestratorClient::connect(format!("http://{addr}")).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    Ok(Stack {
        agents,
        client,
        stop: Some(stop),
        config,
        broker,
        _redis: redis,
    })
}

async fn submit(stack: &mut Stack, key: &str) -> anyhow::Result<String> {
    submit_targets(stack, key, &[]).await
}

/// Submits the sample catalogue with these targets (empty: the default targets).
async fn submit_targets(stack: &mut Stack, key: &str, targets: &[&str]) -> anyhow::Result<String> {
    let reply = within(
        LONG,
        "submit",
        stack.client.submit_batch(pb::SubmitBatchRequest {
            idempotency_key: key.into(),
            input: Some(pb::BatchInput {
                source: Some(pb::batch_input::Source::Catalogue(pb::CatalogueDocument {
                    format: pb::CatalogueFormat::SeedJson as i32,
                    content: SAMPLE.as_bytes().to_vec(),
                })),
            }),
            options: Some(pb::SubmitOptions {
                targets: targets.iter().map(|t| (*t).to_owned()).collect(),
                ..Default::default()
            }),
        }),
    )
    .await??
    .into_inner();
    Ok(reply.batch_id)
}

/// Watches a batch to its terminal state (or the deadline) and returns it.
async fn watch_to_end(stack: &mut Stack, batch_id: &str) -> anyhow::Result<pb::BatchState> {
    let mut stream = within(
        LONG,
        "watch batch",
        stack.client.watch_batch(pb::WatchBatchRequest {
            batch_id: batch_id.into(),
        }),
    )
    .await??
    .into_inner();
    let mut last = pb::BatchState::Running;
    within(LONG, "watch to the end", async {
        while let Some(msg) = stream.message().await? {
            match msg.event {
                Some(watch_batch_response::Event::BatchChanged(b)) => {
                    last = b.to_state();
                }
                Some(watch_batch_response::Event::Snapshot(s)) => {
                    if let Some(b) = s.batch {
                        last = b.state();
                    }
                }
                _ => {}
            }
        }
        anyhow::Ok(())
    })
    .await??;
    Ok(last)
}

async fn object_states(
    stack: &mut Stack,
    batch_id: &str,
) -> anyhow::Result<BTreeMap<String, pb::ObjectState>> {
    let mut out = BTreeMap::new();
    for id in sample_parents().keys() {
        let o = get_object(stack, batch_id, id).await?;
        out.insert(id.clone(), o.state());
    }
    Ok(out)
}

/// Checks from the agents' logs (not from timing) that no object was handed to an agent before
/// every parent had been answered Loaded.
fn assert_released_after_parents(agents: &[TestAgent]) {
    let parents = sample_parents();
    let mut log: Vec<_> = agents.iter().flat_map(TestAgent::handled).collect();
    log.sort_by_key(|h| h.at);
    let mut loaded: BTreeSet<String> = BTreeSet::new();
    for h in &log {
        for p in &parents[&h.object_id] {
            assert!(
                loaded.contains(p),
                "{} released before its parent {p} was loaded",
                h.object_id
            );
        }
        if h.answer == Answer::Load {
            loaded.insert(h.object_id.clone());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sample_catalogue_is_loaded_in_dependency_order_with_a_retry() -> anyhow::Result<()> {
    // 2004 fails its first attempt (retryable), then loads.
    let behaviour: Behaviour = Arc::new(|r: &pb::ObjectReady| {
        if r.object_id == "2004" && r.attempt == 1 {
            Answer::Fail {
                retryable: true,
                error: "warehouse busy".into(),
            }
        } else {
            Answer::Load
        }
    });
    let mut stack = start(behaviour).await?;
    let batch_id = submit(&mut stack, "e2e-sample").await?;
    assert_eq!(
        watch_to_end(&mut stack, &batch_id).await?,
        pb::BatchState::Succeeded
    );
    let states = object_states(&mut stack, &batch_id).await?;
    assert!(
        states.values().all(|s| *s == pb::ObjectState::Loaded),
        "{states:?}"
    );
    assert_released_after_parents(&stack.agents);
    let attempts_2004: Vec<u32> = stack
        .agents
        .iter()
        .flat_map(TestAgent::handled)
        .filter(|h| h.object_id == "2004")
        .map(|h| h.attempt)
        .collect();
    assert_eq!(attempts_2004, [1, 2], "failed once, retried once");
    // Each object ran once per attempt, across zones: shared parents are not run twice.
    let runs = stack.agents.iter().flat_map(TestAgent::handled).count();
    assert_eq!(runs, 11 + 1);
    // Resubmitting the same content is the same batch.
    assert_eq!(submit(&mut stack, "e2e-sample").await?, batch_id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_retries_dead_letter_to_kafka_and_replay_loads_them() -> anyhow::Result<()> {
    // 1003 fails until `healed`; its descendants 2003, 2004, 3001, 3002 are blocked.
    let healed = Arc::new(AtomicBool::new(false));
    let h = healed.clone();
    let behaviour: Behaviour = Arc::new(move |r: &pb::ObjectReady| {
        if r.object_id == "1003" && !h.load(Ordering::SeqCst) {
            Answer::Fail {
                retryable: true,
                error: "source unreachable".into(),
            }
        } else {
            Answer::Load
        }
    });
    let mut stack = start(behaviour).await?;
    let batch_id = submit(&mut stack, "e2e-dead").await?;
    assert_eq!(
        watch_to_end(&mut stack, &batch_id).await?,
        pb::BatchState::Failed
    );
    let states = object_states(&mut stack, &batch_id).await?;
    assert_eq!(states["1003"], pb::ObjectState::Dead);
    for id in ["2003", "2004", "3001", "3002"] {
        assert_eq!(states[id], pb::ObjectState::UpstreamFailed, "{id}");
    }
    assert_eq!(states["3003"], pb::ObjectState::Loaded);

    // The dead letter is on the dead-letter topic.
    let consumer: StreamConsumer = stack.broker.consumer_config("e2e-dlq-reader").create()?;
    consumer.subscribe(&[&format!("{}.dlq", stack.config.topic_prefix)])?;
    let letter = within(LONG, "dead letter on the topic", async {
        let msg = consumer.recv().await?;
        anyhow::Ok(pb::DeadLetter::decode(msg.payload().unwrap_or_default())?)
    })
    .await??;
    assert_eq!(letter.object_id, "1003");
    assert_eq!(letter.batch_id, batch_id);
    assert_eq!(letter.attempts, 3);
    assert!(letter.last_error.contains("source unreachable"));
    strata_tests::kafka::close_consumer(consumer).await?;

    // Listed over RPC, then replayed once the source is back.
    let listed = within(
        LONG,
        "list dead letters",
        stack.client.list_dead_letters(pb::ListDeadLettersRequest {
            batch_id: batch_id.clone(),
            ..Default::default()
        }),
    )
    .await??
    .into_inner();
    assert_eq!(listed.dead_letters.len(), 1);
    healed.store(true, Ordering::SeqCst);
    within(
        LONG,
        "replay dead letters",
        stack
            .client
            .replay_dead_letters(pb::ReplayDeadLettersRequest {
                batch_id: batch_id.clone(),
                ..Default::default()
            }),
    )
    .await??;
    assert_eq!(
        watch_to_end(&mut stack, &batch_id).await?,
        pb::BatchState::Succeeded
    );
    let states = object_states(&mut stack, &batch_id).await?;
    assert!(
        states.values().all(|s| *s == pb::ObjectState::Loaded),
        "{states:?}"
    );
    Ok(())
}

async fn get_object(
    stack: &mut Stack,
    batch_id: &str,
    object_id: &str,
) -> anyhow::Result<pb::ObjectStatus> {
    Ok(within(
        LONG,
        "get object",
        stack.client.get_object(pb::GetObjectRequest {
            batch_id: batch_id.into(),
            object_id: object_id.into(),
        }),
    )
    .await??
    .into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_concurrent_batches_sharing_ancestors_run_each_shared_object_once() -> anyhow::Result<()>
{
    // Agents hold every Ready until both batches are in: the second one finds the first's
    // attempts in flight.
    let (gate, gated) = watch::channel(false);
    let mut stack = start_gated(Arc::new(|_: &pb::ObjectReady| Answer::Load), gated).await?;
    // 3001 needs 2001, 2002, 2003 and their parents 1001, 1002, 1003; 3002 needs 2003, 2004
    // and 1003, 1004: 1003 and 2003 are shared.
    let first = submit_targets(&mut stack, "e2e-shared-a", &["3001"]).await?;
    let second = submit_targets(&mut stack, "e2e-shared-b", &["3002"]).await?;
    let waiting = get_object(&mut stack, &second, "1003").await?;
    assert_eq!(waiting.coalesced_onto_batch_id, first);
    assert!(
        matches!(
            waiting.blocked.and_then(|b| b.reason),
            Some(pb::blocked_reason::Reason::Coalesced(_))
        ),
        "the second batch's 1003 waits on the first's attempt"
    );
    gate.send_replace(true);
    assert_eq!(
        watch_to_end(&mut stack, &first).await?,
        pb::BatchState::Succeeded
    );
    assert_eq!(
        watch_to_end(&mut stack, &second).await?,
        pb::BatchState::Succeeded
    );

    let handled: Vec<_> = stack.agents.iter().flat_map(TestAgent::handled).collect();
    let mut runs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for h in &handled {
        runs.entry(&h.object_id).or_default().push(&h.batch_id);
    }
    let expected: BTreeSet<&str> = [
        "1001", "1002", "1003", "1004", "2001", "2002", "2003", "2004", "3001", "3002",
    ]
    .into();
    assert_eq!(runs.keys().copied().collect::<BTreeSet<_>>(), expected);
    for (object, batches) in &runs {
        assert_eq!(batches.len(), 1, "{object} ran {batches:?}");
    }
    assert_eq!(runs["1003"], [first.as_str()]);
    assert_eq!(runs["2003"], [first.as_str()]);
    assert_eq!(runs["2004"], [second.as_str()]);
    for id in ["1003", "2003", "2004", "3002"] {
        let o = get_object(&mut stack, &second, id).await?;
        assert_eq!(o.state(), pb::ObjectState::Loaded, "{id}");
        let onto = if matches!(id, "1003" | "2003") {
            first.as_str()
        } else {
            ""
        };
        assert_eq!(o.coalesced_onto_batch_id, onto, "{id}");
    }
    Ok(())
}

/// Produces raw records to the results topic as a (misbehaving) agent would.
async fn produce_raw(stack: &Stack, records: Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
    let producer: FutureProducer = stack.broker.producer_config().create()?;
    let topic = format!("{}.results", stack.config.topic_prefix);
    for (key, payload) in records {
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload(&payload)
            .headers(OwnedHeaders::new().insert(Header {
                key: strata_proto::kafka::HEADER_TYPE,
                value: Some(strata_proto::kafka::TYPE_OBJECT_RESULT),
            }));
        within(LONG, "produce", producer.send(record, LONG))
            .await?
            .map_err(|(e, _)| e)?;
    }
    Ok(())
}

fn encoded(result: object_result::Result) -> Vec<u8> {
    pb::ObjectResult {
        result: Some(result),
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_late_stale_and_undecodable_results_change_nothing() -> anyhow::Result<()> {
    // 2004 fails its first attempt, so it has a stale attempt to replay.
    let behaviour: Behaviour = Arc::new(|r: &pb::ObjectReady| {
        if r.object_id == "2004" && r.attempt == 1 {
            Answer::Fail {
                retryable: true,
                error: "flaky".into(),
            }
        } else {
            Answer::Load
        }
    });
    let mut stack = start(behaviour).await?;
    let batch_id = submit(&mut stack, "e2e-noise").await?;
    assert_eq!(
        watch_to_end(&mut stack, &batch_id).await?,
        pb::BatchState::Succeeded
    );
    let before_1001 = get_object(&mut stack, &batch_id, "1001").await?;
    let before_2004 = get_object(&mut stack, &batch_id, "2004").await?;
    let before_3001 = get_object(&mut stack, &batch_id, "3001").await?;
    assert_eq!(before_2004.attempt, 2);

    let key = batch_id.clone();
    let loaded = |o: &pb::ObjectStatus| pb::ObjectLoaded {
        batch_id: batch_id.clone(),
        object_id: o
            .definition
            .as_ref()
            .map(|d| d.id.clone())
            .unwrap_or_default(),
        zone: o.zone.clone(),
        attempt: o.attempt,
        dispatch_epoch: o.dispatch_epoch,
        agent_id: "impostor".into(),
        ..Default::default()
    };
    produce_raw(
        &stack,
        vec![
            // The same Loaded again.
            (
                key.clone(),
                encoded(object_result::Result::Loaded(loaded(&before_1001))),
            ),
            // A failure of 2004's first attempt, long retried: stale.
            (
                key.clone(),
                encoded(object_result::Result::Failed(pb::ObjectFailed {
                    batch_id: batch_id.clone(),
                    object_id: "2004".into(),
                    zone: before_2004.zone.clone(),
                    attempt: 1,
                    dispatch_epoch: before_2004.dispatch_epoch - 1,
                    retryable: false,
                    error: "stale news".into(),
                    ..Default::default()
                })),
            ),
            // A Started after the outcome: late.
            (
                key.clone(),
                encoded(object_result::Result::Started(pb::ObjectStarted {
                    batch_id: batch_id.clone(),
                    object_id: "3001".into(),
                    zone: before_3001.zone.clone(),
                    attempt: before_3001.attempt,
                    dispatch_epoch: before_3001.dispatch_epoch,
                    ..Default::default()
                })),
            ),
            // Not a protobuf ObjectResult at all, and a result for a batch nobody knows.
            (key.clone(), b"\xff\xfe not protobuf".to_vec()),
            (
                "b-nobody".into(),
                encoded(object_result::Result::Loaded(pb::ObjectLoaded {
                    batch_id: "b-nobody".into(),
                    object_id: "1001".into(),
                    attempt: 1,
                    dispatch_epoch: 1,
                    ..Default::default()
                })),
            ),
        ],
    )
    .await?;

    // The control plane read past them: a new batch submitted after them completes.
    let after = within(
        LONG,
        "submit after the noise",
        stack.client.submit_batch(pb::SubmitBatchRequest {
            idempotency_key: "e2e-after-noise".into(),
            input: Some(pb::BatchInput {
                source: Some(pb::batch_input::Source::Objects(pb::ObjectList {
                    objects: vec![pb::ObjectDefinition {
                        id: "1100".into(),
                        ..Default::default()
                    }],
                })),
            }),
            options: None,
        }),
    )
    .await??
    .into_inner();
    assert_eq!(
        watch_to_end(&mut stack, &after.batch_id).await?,
        pb::BatchState::Succeeded
    );

    // Nothing about the first batch changed: states, attempts, histories, agents.
    let batch = within(
        LONG,
        "get batch",
        stack.client.get_batch(pb::GetBatchRequest {
            batch_id: batch_id.clone(),
        }),
    )
    .await??
    .into_inner();
    assert_eq!(batch.state(), pb::BatchState::Succeeded);
    for before in [before_1001, before_2004, before_3001] {
        let id = before
            .definition
            .as_ref()
            .map(|d| d.id.clone())
            .unwrap_or_default();
        let now = get_object(&mut stack, &batch_id, &id).await?;
        assert_eq!(now.state(), pb::ObjectState::Loaded, "{id}");
        assert_eq!(now.attempt, before.attempt, "{id}");
        assert_eq!(now.history, before.history, "{id}");
        assert_eq!(
            now.agent_id, before.agent_id,
            "{id}: the impostor was not recorded"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_are_invalid_argument_naming_the_ids_and_leave_redis_empty() -> anyhow::Result<()>
{
    let mut stack = start(Arc::new(|_: &pb::ObjectReady| Answer::Load)).await?;
    let objects = |list: &[(&str, &[&str])]| pb::BatchInput {
        source: Some(pb::batch_input::Source::Objects(pb::ObjectList {
            objects: list
                .iter()
                .map(|(id, parents)| pb::ObjectDefinition {
                    id: (*id).into(),
                    parents: parents.iter().map(|p| (*p).to_owned()).collect(),
                    ..Default::default()
                })
                .collect(),
        })),
    };
    let unknown_parents = pb::BatchInput {
        source: Some(pb::batch_input::Source::Catalogue(pb::CatalogueDocument {
            format: pb::CatalogueFormat::SeedJson as i32,
            content: include_bytes!("../../clients/samples/catalogue_unknown_parents.json")
                .to_vec(),
        })),
    };
    let cases: Vec<(&str, pb::BatchInput, &[&str])> = vec![
        (
            "unknown parents",
            unknown_parents,
            &["3002", "2011", "2017", "2023", "2031"],
        ),
        (
            "cycle",
            objects(&[("2001", &["2002"]), ("2002", &["2001"])]),
            &["2001", "2002"],
        ),
        ("self-parent", objects(&[("1001", &["1001"])]), &["1001"]),
        (
            "duplicate id",
            objects(&[("1001", &[]), ("1001", &[])]),
            &["1001"],
        ),
        (
            "parent in a higher layer",
            objects(&[("1001", &["2001"]), ("2001", &[])]),
            &["1001", "2001"],
        ),
        ("empty", objects(&[]), &["empty"]),
    ];
    for (name, input, named) in cases {
        let e = within(
            LONG,
            name,
            stack.client.submit_batch(pb::SubmitBatchRequest {
                idempotency_key: format!("bad-{name}"),
                input: Some(input),
                options: None,
            }),
        )
        .await?
        .expect_err(name);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{name}: {e:?}");
        for id in named {
            assert!(
                e.message().contains(id),
                "{name}: {id} not named in {:?}",
                e.message()
            );
        }
    }
    let listed = within(
        LONG,
        "list batches",
        stack.client.list_batches(pb::ListBatchesRequest::default()),
    )
    .await??
    .into_inner();
    assert!(listed.batches.is_empty(), "{:?}", listed.batches);
    // Nothing under the control plane's key prefix in the real Redis but the generation marker
    // and the Ready signing seed, which the control plane writes once when it starts, before any
    // call.
    let client = redis::Client::open(stack.config.redis_url.as_str())?;
    let mut conn = within(LONG, "redis", client.get_multiplexed_async_connection()).await??;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", stack.config.key_prefix))
        .query_async(&mut conn)
        .await?;
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("{}generation", stack.config.key_prefix),
            format!("{}ready_signing_seed", stack.config.key_prefix)
        ],
        "keys written for rejected batches"
    );
    Ok(())
}
