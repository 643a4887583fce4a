//! The agent loop ([`agent::run`]) on the in-memory bus, with a fixed lease: every Ready is
//! answered and its offset stored, duplicates and stale releases are skipped, a newer release
//! supersedes the attempt in flight, a drain hands back what is still running, and with a signed
//! lease a Ready the control plane did not sign never reaches the processor. Every wait is
//! bounded.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use strata_bus::{Consumer, Topic};
use strata_proto::v1::{FailureReason, ObjectReady, ObjectResult, object_result};
use strata_worker_agent::admin::Health;
use strata_worker_agent::agent::{self, AgentError, AgentOptions};
use strata_worker_agent::memory::MemoryTransport;
use strata_worker_agent::metrics::Metrics;
use strata_worker_agent::ports::FixedLease;
use strata_worker_agent::processor::{Outcome, Processor, Simulate};
use strata_worker_agent::registry::Registration;
use strata_worker_agent::stopped;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const GROUP: &str = "agents.raw";

async fn t<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}

fn ready(object_id: &str, dispatch_epoch: u64) -> ObjectReady {
    ObjectReady {
        batch_id: "b-1".into(),
        object_id: object_id.into(),
        zone: "raw".into(),
        attempt: 1,
        dispatch_epoch,
        ..Default::default()
    }
}

/// Loads once `open` is true.
struct Gated(watch::Receiver<bool>);

impl Processor for Gated {
    async fn process(&self, _ready: &ObjectReady) -> Outcome {
        let _ = self.0.clone().wait_for(|o| *o).await;
        Outcome::Loaded {
            info: String::new(),
        }
    }
}

struct Running {
    ready: Topic<ObjectReady>,
    results: Consumer<ObjectResult>,
    metrics: Metrics,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), AgentError>>,
}

fn start<P: Processor>(processor: P, capacity: u32, drain_grace: Duration) -> Running {
    start_with(
        FixedLease::new("agent-raw", "ready.raw", GROUP, "results"),
        processor,
        capacity,
        drain_grace,
    )
}

fn start_with<P: Processor>(
    lease: FixedLease,
    processor: P,
    capacity: u32,
    drain_grace: Duration,
) -> Running {
    let ready = Topic::new(1);
    let results_topic = Topic::new(1);
    let results = results_topic.subscribe("test");
    let metrics = Metrics::new("raw");
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(agent::run(
        AgentOptions {
            registration: Registration {
                zone: "raw".into(),
                capacity,
                hostname: "test".into(),
                labels: Default::default(),
            },
            drain_grace,
        },
        lease,
        MemoryTransport {
            ready: ready.clone(),
            results: results_topic,
        },
        Arc::new(processor),
        metrics.clone(),
        Arc::new(Health::default()),
        stopped(stop_rx),
    ));
    Running {
        ready,
        results,
        metrics,
        stop,
        task,
    }
}

/// (kind, object, epoch) of a result.
fn describe(r: &ObjectResult) -> (&'static str, String, u64) {
    match r.result.as_ref().expect("a result") {
        object_result::Result::Started(s) => ("started", s.object_id.clone(), s.dispatch_epoch),
        object_result::Result::Loaded(l) => ("loaded", l.object_id.clone(), l.dispatch_epoch),
        object_result::Result::Failed(f) => ("failed", f.object_id.clone(), f.dispatch_epoch),
    }
}

async fn next(results: &mut Consumer<ObjectResult>) -> ObjectResult {
    t(results.recv()).await.value
}

async fn until_stored(topic: &Topic<ObjectReady>) {
    t(async {
        while topic.lag(GROUP) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ready_is_answered_and_its_offset_stored() {
    let processor = Simulate {
        durations: Default::default(),
        default_duration: Duration::ZERO,
        fail_suffixes: Vec::new(),
        fail_rate: 0.0,
    };
    let mut a = start(processor, 16, Duration::from_secs(1));
    for i in 0..2_000 {
        a.ready.publish(b"b-1", ready(&i.to_string(), 1));
    }
    let (mut started, mut loaded) = (0, 0);
    for _ in 0..4_000 {
        match describe(&next(&mut a.results).await).0 {
            "started" => started += 1,
            "loaded" => loaded += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((started, loaded), (2_000, 2_000));
    until_stored(&a.ready).await;
    assert_eq!(a.ready.retained(), 0, "stored offsets free the records");
    a.stop.send_replace(true);
    t(a.task).await.expect("task").expect("a clean drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_stale_releases_are_skipped_and_a_newer_release_supersedes() {
    let (open, gate) = watch::channel(false);
    let mut a = start(Gated(gate), 4, Duration::from_secs(1));
    a.ready.publish(b"b-1", ready("1001", 1));
    assert_eq!(
        describe(&next(&mut a.results).await),
        ("started", "1001".into(), 1)
    );
    a.ready.publish(b"b-1", ready("1001", 1)); // redelivery of the attempt in flight
    a.ready.publish(b"b-1", ready("1001", 2)); // newer release: supersedes
    a.ready.publish(b"b-1", ready("1001", 1)); // older than the newest seen: stale
    assert_eq!(
        describe(&next(&mut a.results).await),
        ("started", "1001".into(), 2)
    );
    open.send_replace(true);
    assert_eq!(
        describe(&next(&mut a.results).await),
        ("loaded", "1001".into(), 2),
        "the superseded attempt reports nothing"
    );
    until_stored(&a.ready).await;
    let verdict = |v: &str| a.metrics.readies.with_label_values(&[v]).get();
    assert_eq!(
        (verdict("accepted"), verdict("duplicate"), verdict("stale")),
        (2, 1, 1)
    );
    assert_eq!(a.metrics.abandoned.get(), 1);
    assert!(a.results.try_recv().is_none(), "nothing else was published");
    a.stop.send_replace(true);
    t(a.task).await.expect("task").expect("a clean drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_hands_back_what_is_still_running_and_stores_its_offset() {
    let (_never, gate) = watch::channel(false);
    let mut a = start(Gated(gate), 4, Duration::from_millis(100));
    a.ready.publish(b"b-1", ready("1001", 1));
    assert_eq!(describe(&next(&mut a.results).await).0, "started");
    a.stop.send_replace(true);
    t(a.task).await.expect("task").expect("a clean drain");
    let Some(object_result::Result::Failed(f)) = next(&mut a.results).await.result else {
        panic!("a failure")
    };
    assert!(f.retryable, "{f:?}");
    assert_eq!(f.reason, FailureReason::Drained as i32);
    assert_eq!(a.ready.lag(GROUP), 0, "handed back counts as done");
}

/// Records the object of every Ready it is given, and loads it.
#[derive(Default, Clone)]
struct Recording(Arc<std::sync::Mutex<Vec<String>>>);

impl Processor for Recording {
    async fn process(&self, ready: &ObjectReady) -> Outcome {
        self.0.lock().expect("lock").push(ready.object_id.clone());
        Outcome::Loaded {
            info: String::new(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_the_control_plane_did_not_sign_is_never_run_and_its_offset_is_stored() {
    use strata_proto::signing::{ReadySigner, ResultKey, result_seal, result_signed_text};
    let signer = ReadySigner::from_seed(&[3; 32]);
    let result_key = ResultKey::from_slice(&[9; 32]).expect("32 bytes");
    let mut lease = (*FixedLease::new("agent-raw", "ready.raw", GROUP, "results").0).clone();
    lease.epoch = 7;
    lease.result_key = Some(result_key.clone());
    lease.ready_key = strata_proto::signing::ReadyVerifier::from_slice(&signer.verify_key());
    assert!(lease.ready_key.is_some());
    let processor = Recording::default();
    let mut a = start_with(
        FixedLease(Arc::new(lease)),
        processor.clone(),
        4,
        Duration::from_secs(1),
    );
    // Unsigned; signed by another key; signed and then altered (its object); the control plane's.
    a.ready.publish(b"b-1", ready("1001", 1));
    let mut other = ready("1002", 1);
    ReadySigner::from_seed(&[4; 32]).sign(&mut other);
    a.ready.publish(b"b-1", other);
    let mut altered = ready("1000", 1);
    signer.sign(&mut altered);
    altered.object_id = "1003".into();
    a.ready.publish(b"b-1", altered);
    let mut good = ready("1004", 1);
    signer.sign(&mut good);
    a.ready.publish(b"b-1", good);

    for kind in ["started", "loaded"] {
        let result = next(&mut a.results).await;
        assert_eq!(describe(&result), (kind, "1004".into(), 1));
        let (signature, epoch) = result_seal(&result).expect("an outcome");
        assert_eq!(epoch, 7, "the lease's epoch");
        let text = result_signed_text(&result).expect("an outcome");
        assert!(
            result_key.verify(&text, signature),
            "signed with the lease key"
        );
    }
    until_stored(&a.ready).await;
    assert_eq!(
        *processor.0.lock().expect("lock"),
        ["1004"],
        "only the signed Ready ran"
    );
    let rejected = |r: &str| a.metrics.ready_rejected.with_label_values(&[r]).get();
    assert_eq!((rejected("unsigned"), rejected("bad_signature")), (1, 2));
    let verdict = |v: &str| a.metrics.readies.with_label_values(&[v]).get();
    assert_eq!((verdict("accepted"), verdict("rejected")), (1, 3));
    assert!(a.results.try_recv().is_none(), "nothing else was published");
    a.stop.send_replace(true);
    t(a.task).await.expect("task").expect("a clean drain");
}
