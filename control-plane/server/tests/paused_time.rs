//! The driver's time rules under tokio's paused time: the driver reads the time of day from a
//! [`TokioClock`] and its timers run on tokio's clock, so these tests step time with
//! `tokio::time::advance` instead of sleeping, and take no wall time to cover a lease's life, an
//! execution timeout or a retry's backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strata_control_plane::adapters::memory::{MemoryDataPlane, MemoryStore};
use strata_control_plane::convert;
use strata_control_plane::driver::{
    Clock as _, Driver, DriverSettings, Handle, Renewal, TokioClock,
};
use strata_control_plane::metrics::Metrics;
use strata_control_plane::ports::StateStore as _;
use strata_core::Zone;
use strata_core::agents::{AgentState, Registration};
use strata_core::machine::{Event, FailureKind, NodeRecord, NodeState};
use strata_core::retry::RetryPolicy;
use strata_core::submission::{BatchOptions, LastLoaded, PlanContext, prepare};
use strata_proto::v1 as pb;
use tokio::sync::oneshot;

const TTL: Duration = Duration::from_secs(15);
const TICK: Duration = Duration::from_millis(100);

/// A driver over the in-memory adapters, on tokio's (paused) clock; stopped when the sender drops.
async fn driver() -> (Handle, oneshot::Sender<()>) {
    let (handle, _, stop) = driver_on(Arc::new(MemoryDataPlane::new())).await;
    (handle, stop)
}

/// [`driver`] over `data`, with the clock it reads.
async fn driver_on(data: Arc<MemoryDataPlane>) -> (Handle, Arc<TokioClock>, oneshot::Sender<()>) {
    driver_over(data, Arc::new(MemoryStore::new()), Metrics::new()).await
}

/// [`driver`] over `data` and `store`, counting in `metrics`.
async fn driver_over(
    data: Arc<MemoryDataPlane>,
    store: Arc<MemoryStore>,
    metrics: Metrics,
) -> (Handle, Arc<TokioClock>, oneshot::Sender<()>) {
    let clock = Arc::new(TokioClock::new());
    let settings = DriverSettings {
        lease_ttl: TTL,
        tick: TICK,
        execution_timeout: EXECUTION_TIMEOUT,
        clock: clock.clone(),
        seed: Some(7),
        metrics,
        ..DriverSettings::default()
    };
    let (driver, handle) = Driver::new(data, store, settings);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(driver.run(async {
        let _ = stopped.await;
    }));
    (handle, clock, stop)
}

const EXECUTION_TIMEOUT: Duration = Duration::from_secs(60);
const INITIAL_BACKOFF: Duration = Duration::from_secs(30);

/// A batch of one raw object, three attempts with a 30 s first backoff ceiling, submitted now.
async fn submit_one(handle: &Handle, clock: &TokioClock) -> String {
    let objects = convert::object_defs(vec![pb::ObjectDefinition {
        id: "1001".into(),
        ..Default::default()
    }])
    .expect("a valid object");
    let options = BatchOptions {
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: INITIAL_BACKOFF,
            multiplier: 2.0,
            max_backoff: Duration::from_secs(300),
        },
        ..BatchOptions::default()
    };
    let none = BTreeMap::new();
    let ctx = PlanContext {
        max_objects: 10,
        durations: &none,
        last_loaded: &LastLoaded::default(),
        preflight: &BTreeMap::new(),
        now: clock.now(),
    };
    let prepared = prepare("paused-time", objects, options, &ctx).expect("plans");
    let batch_id = prepared.batch_id.clone();
    handle.submit(prepared).await.expect("submitted");
    batch_id
}

/// The record of the batch's only object.
async fn record(handle: &Handle, batch_id: &str) -> NodeRecord {
    let id = batch_id.to_owned();
    handle
        .read(move |s| s.batch(&id).and_then(|rt| rt.machine().record(0).cloned()))
        .await
        .expect("driver answers")
        .expect("object held")
}

fn raw() -> Zone {
    Zone::parse(Zone::RAW).expect("zone")
}

fn registration() -> Registration {
    Registration {
        zone: Some(raw()),
        capacity: 4,
        version: "test".into(),
        hostname: "host".into(),
        labels: BTreeMap::new(),
        owner: "agent-raw".into(),
        result_key: None,
    }
}

/// The agent's state as the registry lists it (inactive ones included).
async fn state_of(handle: &Handle, agent_id: &str) -> AgentState {
    let id = agent_id.to_owned();
    handle
        .read(move |s| {
            s.agents()
                .list(None, true)
                .into_iter()
                .find(|a| a.id == id)
                .map(|a| a.state)
        })
        .await
        .expect("driver answers")
        .expect("agent listed")
}

/// Lets the driver's tick run at least once at the current (paused) time.
async fn tick() {
    tokio::time::advance(TICK * 2).await;
    tokio::task::yield_now().await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_without_heartbeats_expires_after_its_ttl_and_not_before() {
    let (handle, _stop) = driver().await;
    let agent = handle
        .register_agent(raw(), registration(), 1, None)
        .await
        .expect("driver answers")
        .expect("registered")
        .agent;

    tokio::time::advance(TTL - Duration::from_secs(1)).await;
    tick().await;
    assert_eq!(state_of(&handle, &agent.id).await, AgentState::Active);

    tokio::time::advance(Duration::from_secs(2)).await;
    tick().await;
    assert_eq!(state_of(&handle, &agent.id).await, AgentState::Expired);
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_renews_the_lease_for_a_full_ttl() {
    let (handle, _stop) = driver().await;
    let agent = handle
        .register_agent(raw(), registration(), 1, None)
        .await
        .expect("driver answers")
        .expect("registered")
        .agent;

    tokio::time::advance(TTL - Duration::from_secs(5)).await;
    let reply = handle
        .heartbeat(
            agent.id.clone(),
            agent.lease_epoch,
            "agent-raw".into(),
            Renewal {
                held: Vec::new(),
                draining: false,
                rotate_keys: false,
            },
        )
        .await
        .expect("driver answers")
        .expect("lease renewed");
    assert!(reply.abandon.is_empty());

    // Past the first lease's end, within the renewed one.
    tokio::time::advance(Duration::from_secs(10)).await;
    tick().await;
    assert_eq!(state_of(&handle, &agent.id).await, AgentState::Active);

    tokio::time::advance(TTL).await;
    tick().await;
    assert_eq!(state_of(&handle, &agent.id).await, AgentState::Expired);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_past_its_execution_timeout_is_retried_when_its_backoff_is_due() {
    let data = Arc::new(MemoryDataPlane::new());
    let mut ready = data.subscribe_ready(&raw());
    let (handle, clock, _stop) = driver_on(data).await;
    let batch_id = submit_one(&handle, &clock).await;
    let first = ready.recv().await.expect("first Ready published");
    assert_eq!(first.attempt, 1);
    let started = Event::Started {
        node: 0,
        attempt: 1,
        dispatch_epoch: first.dispatch_epoch,
    };
    assert!(
        handle
            .event(&batch_id, started)
            .await
            .expect("applied")
            .is_applied()
    );

    // Running, one second short of the timeout: nothing happens.
    tokio::time::advance(EXECUTION_TIMEOUT - Duration::from_secs(1)).await;
    tick().await;
    assert_eq!(record(&handle, &batch_id).await.state, NodeState::Running);

    // Past it: the attempt is lost to the timeout and waits for its backoff.
    tokio::time::advance(Duration::from_secs(2)).await;
    tick().await;
    let waiting = record(&handle, &batch_id).await;
    assert_eq!(waiting.state, NodeState::RetryWait);
    assert_eq!(waiting.last_failure, Some(FailureKind::Timeout));
    let due = waiting.retry_due.expect("a retry is scheduled");
    let backoff = (due - clock.now()).to_std().expect("due in the future");
    assert!(
        backoff <= INITIAL_BACKOFF,
        "backoff {backoff:?} above its ceiling"
    );

    // Not released before its due time...
    tokio::time::advance(backoff.saturating_sub(Duration::from_secs(1))).await;
    tick().await;
    assert_eq!(record(&handle, &batch_id).await.state, NodeState::RetryWait);
    assert!(
        ready.try_recv().is_err(),
        "released before its backoff ended"
    );

    // ...and released once it is: attempt 2 on the Ready topic.
    tokio::time::advance(Duration::from_secs(2)).await;
    tick().await;
    let again = record(&handle, &batch_id).await;
    assert_eq!((again.state, again.attempt), (NodeState::Ready, 2));
    let second = ready.recv().await.expect("second Ready published");
    assert_eq!(second.attempt, 2);
}

/// A step whose state write keeps failing is never applied in memory alone nor given up: the
/// driver retries it (far past the 20 tries it used to give up after), takes no other work,
/// reports the stall, and applies the step once the store answers again.
#[tokio::test(start_paused = true)]
async fn a_step_whose_state_write_fails_for_ten_minutes_waits_for_it_then_goes_on() {
    let data = Arc::new(MemoryDataPlane::new());
    let store = Arc::new(MemoryStore::new());
    let metrics = Metrics::new();
    let mut ready = data.subscribe_ready(&raw());
    let (handle, clock, _stop) = driver_over(data, store.clone(), metrics.clone()).await;
    let batch_id = submit_one(&handle, &clock).await;
    let first = ready.recv().await.expect("first Ready published");

    store.fail_writes(true);
    let started = Event::Started {
        node: 0,
        attempt: 1,
        dispatch_epoch: first.dispatch_epoch,
    };
    let pending = tokio::spawn({
        let (handle, batch_id) = (handle.clone(), batch_id.clone());
        async move { handle.event(&batch_id, started).await }
    });
    for _ in 0..120 {
        tokio::time::advance(Duration::from_secs(5)).await;
        tokio::task::yield_now().await;
    }
    let stall = handle
        .health()
        .stall()
        .expect("the driver reports the stall");
    assert_eq!(stall.what, "persist step");
    assert!(stall.tries > 100, "{} tries in 10 minutes", stall.tries);
    assert!(stall.to_string().contains("writes fail"), "{stall}");
    assert!(
        !pending.is_finished(),
        "the command was answered before its step was durable"
    );
    assert!(
        metrics.render().contains("strata_driver_stalled 1"),
        "{}",
        metrics.render()
    );
    let stored = |store: Arc<MemoryStore>, batch_id: String| async move {
        store
            .load_active()
            .await
            .expect("readable")
            .into_iter()
            .find(|b| b.batch.batch_id == batch_id)
            .and_then(|b| b.nodes.into_iter().find(|(n, _)| *n == 0))
            .map(|(_, r)| r.state)
    };
    assert_eq!(
        stored(store.clone(), batch_id.clone()).await,
        Some(NodeState::Ready),
        "nothing was written"
    );

    store.fail_writes(false);
    tokio::time::advance(Duration::from_secs(5)).await;
    let outcome = pending
        .await
        .expect("no panic")
        .expect("applied once written");
    assert!(outcome.is_applied());
    assert_eq!(handle.health().stall(), None);
    assert!(metrics.render().contains("strata_driver_stalled 0"));
    // The start is durable. (It was applied 10 minutes ago, past the 60 s execution timeout:
    // the next tick may already have moved the attempt on to its retry.)
    let now = stored(store, batch_id.clone()).await;
    assert!(
        matches!(now, Some(NodeState::Running | NodeState::RetryWait)),
        "stored: {now:?}"
    );
    let held = record(&handle, &batch_id).await;
    assert!(
        matches!(held.state, NodeState::Running | NodeState::RetryWait) && held.attempt == 1,
        "held: {held:?}"
    );
}
