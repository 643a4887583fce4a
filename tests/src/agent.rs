//! An in-process worker agent over the real topics, for the control plane's end-to-end suites
//! that run without the agent registry (`verify_results = false`): the worker agent's own
//! loop ([`agent::run`] over Kafka, with a [`FixedLease`]) and a processor that answers each Ready
//! as a closure says, one attempt at a time. Every Ready it handles is written to a shared log
//! the tests inspect.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_proto::kafka as topics;
use strata_proto::v1::ObjectReady;
use strata_worker_agent::admin::Health;
use strata_worker_agent::agent::{self, AgentOptions};
use strata_worker_agent::kafka_ports::KafkaTransport;
use strata_worker_agent::metrics::Metrics;
use strata_worker_agent::ports::{FixedLease, GatedTransport, Withheld, WithholdingTransport};
use strata_worker_agent::processor::{Outcome, Processor};
use strata_worker_agent::registry::Registration;
use strata_worker_agent::stopped;
use tokio::sync::watch;

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
    /// No final result (the agent "crashed" on it once it had started).
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

/// A running test agent; stopped (drained) on drop.
#[derive(Debug)]
pub struct TestAgent {
    stop: watch::Sender<bool>,
    /// Every Ready handled, shared with the task.
    pub log: Arc<Mutex<Vec<Handled>>>,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Attempts answered [`Answer::Nothing`]: (batch, object, attempt).
type Silenced = Withheld;

/// Answers with the behaviour and logs what it handled.
struct Behave {
    behaviour: Behaviour,
    log: Arc<Mutex<Vec<Handled>>>,
    silenced: Silenced,
}

impl Processor for Behave {
    async fn process(&self, ready: &ObjectReady) -> Outcome {
        let answer = (self.behaviour)(ready);
        self.log.lock().expect("log").push(Handled {
            at: Instant::now(),
            batch_id: ready.batch_id.clone(),
            object_id: ready.object_id.clone(),
            attempt: ready.attempt,
            answer: answer.clone(),
        });
        match answer {
            Answer::Load => Outcome::Loaded {
                info: String::new(),
            },
            Answer::Fail { retryable, error } => Outcome::Failed { retryable, error },
            Answer::Nothing => {
                self.silenced.lock().expect("silenced").insert((
                    ready.batch_id.clone(),
                    ready.object_id.clone(),
                    ready.attempt,
                ));
                Outcome::Loaded {
                    info: String::new(),
                }
            }
        }
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

    /// Like [`TestAgent::spawn`], but it takes Ready records only while `gate` is true (they
    /// wait in the topic, unhandled and unlogged, meanwhile): the test decides when work may
    /// proceed.
    pub fn spawn_gated(
        bootstrap_servers: &str,
        topic_prefix: &str,
        zone: &str,
        agent_id: &str,
        behaviour: Behaviour,
        gate: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let lease = FixedLease::new(
            agent_id,
            &topics::ready_topic(topic_prefix, zone),
            &topics::agent_group(topic_prefix, zone),
            &topics::results_topic(topic_prefix),
        );
        let log = Arc::new(Mutex::new(Vec::new()));
        let silenced = Silenced::default();
        let processor = Arc::new(Behave {
            behaviour,
            log: log.clone(),
            silenced: silenced.clone(),
        });
        let transport = GatedTransport {
            inner: WithholdingTransport {
                inner: KafkaTransport {
                    brokers: Some(bootstrap_servers.to_owned()),
                    properties: Vec::new(),
                    zone: zone.to_owned(),
                },
                withheld: silenced,
            },
            open: gate,
        };
        let options = AgentOptions {
            registration: Registration {
                zone: zone.to_owned(),
                capacity: 1,
                hostname: "strata-tests".into(),
                labels: Default::default(),
            },
            drain_grace: Duration::from_secs(1),
        };
        let (stop, stop_rx) = watch::channel(false);
        let ran = agent::run(
            options,
            lease,
            transport,
            processor,
            Metrics::new(zone),
            Arc::new(Health::default()),
            stopped(stop_rx),
        );
        let zone = zone.to_owned();
        tokio::spawn(async move {
            if let Err(e) = ran.await {
                eprintln!("test agent of {zone} stopped: {e}");
            }
        });
        Ok(Self { stop, log })
    }

    /// The handled Ready records so far.
    pub fn handled(&self) -> Vec<Handled> {
        self.log.lock().expect("log").clone()
    }
}
