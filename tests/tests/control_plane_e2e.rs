//! The control plane end to end on the real Kafka-protocol broker and a real Redis: the
//! in-process control plane (`run_with` over the Kafka and Redis adapters, a real gRPC server and
//! client) and one minimal agent per zone consuming the real ready topics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use strata_control_plane::adapters::kafka::{KafkaDataPlane, KafkaSettings};
use strata_control_plane::adapters::redis::RedisStore;
use strata_control_plane::config::{Config, Flags};
use strata_control_plane::run::run_with;
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use strata_proto::v1::{self as pb, watch_batch_response};
use strata_tests::agent::{Answer, Behaviour, TestAgent};
use strata_tests::{KafkaBroker, RedisServer, within};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
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

struct Stack {
    _redis: RedisServer,
    broker: KafkaBroker,
    client: OrchestratorClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    agents: Vec<TestAgent>,
    config: Config,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(behaviour: Behaviour) -> anyhow::Result<Stack> {
    let redis = within(LONG, "start redis", RedisServer::start()).await??;
    let broker = within(LONG, "start broker", KafkaBroker::start()).await??;
    let config = Flags {
        kafka_brokers: Some(broker.bootstrap_servers()),
        redis_url: Some(redis.url()),
        topic_partitions: Some(2),
        initial_backoff_ms: Some(20),
        max_backoff_ms: Some(100),
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
        agents.push(TestAgent::spawn(
            &config.kafka_brokers,
            &config.topic_prefix,
            zone,
            &format!("test-agent-{zone}"),
            behaviour.clone(),
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
        _redis: redis,
        broker,
        client,
        stop: Some(stop),
        agents,
        config,
    })
}

async fn submit(stack: &mut Stack, key: &str) -> anyhow::Result<String> {
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
            options: Some(pb::SubmitOptions::default()),
        }),
    )
    .await??
    .into_inner();
    Ok(reply.batch_id)
}

/// Watches a batch to its terminal state (or the deadline) and returns it.
async fn watch_to_end(stack: &mut Stack, batch_id: &str) -> anyhow::Result<pb::BatchState> {
    let mut stream = stack
        .client
        .watch_batch(pb::WatchBatchRequest {
            batch_id: batch_id.into(),
        })
        .await?
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
        let o = stack
            .client
            .get_object(pb::GetObjectRequest {
                batch_id: batch_id.into(),
                object_id: id.clone(),
            })
            .await?
            .into_inner();
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
    let listed = stack
        .client
        .list_dead_letters(pb::ListDeadLettersRequest {
            batch_id: batch_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(listed.dead_letters.len(), 1);
    healed.store(true, Ordering::SeqCst);
    stack
        .client
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            batch_id: batch_id.clone(),
            ..Default::default()
        })
        .await?;
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
