//! The driver's time rules under tokio's paused time: the driver reads the time of day from a
//! [`TokioClock`] and its timers run on tokio's clock, so these tests step time with
//! `tokio::time::advance` instead of sleeping, and take no wall time to cover a lease's life.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strata_control_plane::adapters::memory::{MemoryDataPlane, MemoryStore};
use strata_control_plane::driver::{Driver, DriverSettings, Handle, TokioClock};
use strata_core::Zone;
use strata_core::agents::{AgentState, Registration};
use tokio::sync::oneshot;

const TTL: Duration = Duration::from_secs(15);
const TICK: Duration = Duration::from_millis(100);

/// A driver over the in-memory adapters, on tokio's (paused) clock; stopped when the sender drops.
async fn driver() -> (Handle, oneshot::Sender<()>) {
    let settings = DriverSettings {
        lease_ttl: TTL,
        tick: TICK,
        clock: Arc::new(TokioClock::new()),
        seed: Some(7),
        ..DriverSettings::default()
    };
    let (driver, handle) = Driver::new(
        Arc::new(MemoryDataPlane::new()),
        Arc::new(MemoryStore::new()),
        settings,
    );
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(driver.run(async {
        let _ = stopped.await;
    }));
    (handle, stop)
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
    let (agent, _) = handle
        .register_agent(raw(), registration(), 1)
        .await
        .expect("registered");

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
    let (agent, _) = handle
        .register_agent(raw(), registration(), 1)
        .await
        .expect("registered");

    tokio::time::advance(TTL - Duration::from_secs(5)).await;
    let reply = handle
        .heartbeat(agent.id.clone(), agent.lease_epoch, Vec::new(), false)
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
