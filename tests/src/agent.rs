//! A scripted worker agent over the real topics, for the control plane's end-to-end suite
//! (`tests/tests/control_plane_e2e.rs`), which chooses each answer: it consumes one zone's ready topic in the zone's
//! consumer group, publishes `ObjectStarted` then `ObjectLoaded`/`ObjectFailed` to the results
//! topic (delivery awaited), and stores its offset only after that. What it answers for each
//! Ready is a closure; every record it handles is written to a shared log the tests inspect.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use strata_proto::kafka as topics;
use strata_proto::v1::{
    ObjectFailed, ObjectLoaded, ObjectReady, ObjectResult, ObjectStarted, object_result,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::kafka::{CloseOnThread, consumer_config, producer_config};

/// What the agent answers for one Ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `ObjectLoaded`.
    Load,
    /// `ObjectFailed`.
    Fail {
        /// Retryable or permanent.
        retryable: bool,
        /// The error text.
        error: String,
    },
    /// Publish nothing (the agent "crashed" on it).
    Nothing,
}

/// Decides the answer for a Ready.
pub type Behaviour = Arc<dyn Fn(&ObjectReady) -> Answer + Send + Sync>;

/// One handled Ready, in handling order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// When it was received.
    pub at: Instant,
    /// Batch id.
    pub batch_id: String,
    /// Object id.
    pub object_id: String,
    /// Attempt.
    pub attempt: u32,
    /// What was answered.
    pub answer: Answer,
}

/// A running test agent; stopped on drop (its consumer leaves the group on a thread of its own:
/// drop the agents before their broker, so that it can).
#[derive(Debug)]
pub struct TestAgent {
    task: JoinHandle<()>,
    /// Every Ready handled, shared with the task.
    pub log: Arc<Mutex<Vec<Handled>>>,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestAgent {
    /// Starts an agent for `zone` on the broker, answering with `behaviour`.
    pub fn spawn(
        bootstrap_servers: &str,
        topic_prefix: &str,
        zone: &str,
        agent_id: &str,
        behaviour: Behaviour,
    ) -> anyhow::Result<Self> {
        Self::spawn_gated(
            bootstrap_servers,
            topic_prefix,
            zone,
            agent_id,
            behaviour,
            watch::channel(true).1,
        )
    }

    /// Like [`TestAgent::spawn`], but each Ready it receives waits until `gate` is (or becomes)
    /// true before it is handled (and logged): the test decides when work may proceed.
    pub fn spawn_gated(
        bootstrap_servers: &str,
        topic_prefix: &str,
        zone: &str,
        agent_id: &str,
        behaviour: Behaviour,
        mut gate: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        // Closed on a thread of its own when the task is dropped: never on a runtime worker.
        let consumer: CloseOnThread<StreamConsumer> = CloseOnThread::new(
            consumer_config(bootstrap_servers, &format!("{topic_prefix}.agents.{zone}"))
                .create()?,
        );
        let ready_topic = format!("{topic_prefix}.{}.{zone}", topics::READY_TOPIC);
        consumer.subscribe(&[&ready_topic])?;
        let producer: FutureProducer = producer_config(bootstrap_servers).create()?;
        let results_topic = format!("{topic_prefix}.{}", topics::RESULTS_TOPIC);
        let log = Arc::new(Mutex::new(Vec::new()));
        let task_log = log.clone();
        let agent_id = agent_id.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let msg = match consumer.recv().await {
                    Ok(m) => m,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(Ok(ready)) = msg.payload().map(ObjectReady::decode) else {
                    let _ = consumer.store_offset_from_message(&msg);
                    continue;
                };
                if gate.wait_for(|open| *open).await.is_err() {
                    return;
                }
                let answer = behaviour(&ready);
                task_log.lock().expect("log").push(Handled {
                    at: Instant::now(),
                    batch_id: ready.batch_id.clone(),
                    object_id: ready.object_id.clone(),
                    attempt: ready.attempt,
                    answer: answer.clone(),
                });
                let mut results = vec![object_result::Result::Started(ObjectStarted {
                    batch_id: ready.batch_id.clone(),
                    object_id: ready.object_id.clone(),
                    zone: ready.zone.clone(),
                    attempt: ready.attempt,
                    dispatch_epoch: ready.dispatch_epoch,
                    agent_id: agent_id.clone(),
                    ..Default::default()
                })];
                match &answer {
                    Answer::Load => results.push(object_result::Result::Loaded(ObjectLoaded {
                        batch_id: ready.batch_id.clone(),
                        object_id: ready.object_id.clone(),
                        zone: ready.zone.clone(),
                        attempt: ready.attempt,
                        dispatch_epoch: ready.dispatch_epoch,
                        agent_id: agent_id.clone(),
                        ..Default::default()
                    })),
                    Answer::Fail { retryable, error } => {
                        results.push(object_result::Result::Failed(ObjectFailed {
                            batch_id: ready.batch_id.clone(),
                            object_id: ready.object_id.clone(),
                            zone: ready.zone.clone(),
                            attempt: ready.attempt,
                            dispatch_epoch: ready.dispatch_epoch,
                            agent_id: agent_id.clone(),
                            retryable: *retryable,
                            error: error.clone(),
                            ..Default::default()
                        }));
                    }
                    Answer::Nothing => results.clear(),
                }
                for r in results {
                    let payload = ObjectResult { result: Some(r) }.encode_to_vec();
                    loop {
                        let record = FutureRecord::to(&results_topic)
                            .key(&ready.batch_id)
                            .payload(&payload)
                            .headers(OwnedHeaders::new().insert(Header {
                                key: topics::HEADER_TYPE,
                                value: Some(topics::TYPE_OBJECT_RESULT),
                            }));
                        match producer.send(record, Duration::from_secs(5)).await {
                            Ok(_) => break,
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                }
                let _ = consumer.store_offset_from_message(&msg);
            }
        });
        Ok(Self { task, log })
    }

    /// The handled Ready records so far.
    pub fn handled(&self) -> Vec<Handled> {
        self.log.lock().expect("log").clone()
    }
}
