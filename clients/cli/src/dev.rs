//! `strata dev`: the control plane and one simulated agent per zone in one process, on the
//! in-memory data plane and store (no Kafka, no Redis), serving the real gRPC API. The agents
//! register over gRPC like real ones, so leases, heartbeats and zone checks are the real ones;
//! only the transport of Ready records and results is in memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use strata_client::{Client, ClientOptions};
use strata_control_plane::adapters::memory::{MemoryDataPlane, MemoryStore};
use strata_control_plane::config::Flags;
use strata_control_plane::run::run_with;
use strata_core::Zone;
use strata_proto::v1::ObjectReady;
use strata_worker_agent::processor::{Processor, Simulate};
use strata_worker_agent::registry::{Registration, Registry};
use strata_worker_agent::results::{self, Ending, Who};
use strata_worker_agent::stopped;
use tokio::sync::{Semaphore, broadcast, watch};
use tracing::{info, warn};

use crate::SubmitArgs;
use crate::render::Output;

/// `strata dev` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Address of the gRPC API.
    #[arg(long, env = "STRATA_DEV_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,

    /// Objects each zone's agent runs at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,

    /// Simulated processing time per object, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub simulate_duration_ms: u64,

    /// Objects whose id ends with this fail permanently (repeatable).
    #[arg(long = "simulate-fail-suffix")]
    pub simulate_fail_suffixes: Vec<String>,

    /// Probability in [0, 1] of a retryable failure per attempt.
    #[arg(long, default_value_t = 0.0)]
    pub simulate_fail_rate: f64,

    /// Submit this catalogue (seed or native JSON) once serving, watch it to the end, print the
    /// per-zone summary, and exit with its outcome (0 = succeeded).
    #[arg(long, value_name = "CATALOGUE")]
    pub submit: Option<PathBuf>,

    /// With --submit: keep serving after the batch ended (until Ctrl-C).
    #[arg(long, requires = "submit")]
    pub keep_running: bool,
}

/// Runs dev mode; returns the process exit code.
pub async fn run(args: DevArgs, output: Output) -> anyhow::Result<u8> {
    let config = Flags {
        grpc_addr: Some(args.addr),
        ..Flags::default()
    }
    .resolve()
    .context("dev configuration")?;
    let listener = tokio::net::TcpListener::bind(args.addr).await.with_context(|| {
        format!(
            "cannot listen on {} (is another `strata dev` or control plane running? pick another with --addr)",
            args.addr
        )
    })?;
    let data = Arc::new(MemoryDataPlane::new());
    let store = Arc::new(MemoryStore::new());
    let endpoint = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = watch::channel(false);

    // Agents subscribe before anything can be released, so no Ready is missed.
    let processor = Arc::new(Simulate {
        durations: Default::default(),
        default_duration: Duration::from_millis(args.simulate_duration_ms),
        fail_suffixes: args.simulate_fail_suffixes.clone(),
        fail_rate: args.simulate_fail_rate,
    });
    let mut agents = Vec::new();
    for zone in &config.zones {
        agents.push(tokio::spawn(dev_agent(
            endpoint.clone(),
            zone.clone(),
            data.clone(),
            data.subscribe_ready(zone),
            processor.clone(),
            args.concurrency,
            stop_rx.clone(),
        )));
    }
    let zones: Vec<String> = config.zones.iter().map(Zone::to_string).collect();
    let server_stop = stopped(stop_rx.clone());
    let server =
        tokio::spawn(
            async move { run_with(&config, data, store, listener, None, server_stop).await },
        );
    let client = Client::connect(&endpoint, ClientOptions::default())?;
    wait_for_agents(&client, zones.len()).await?;
    if output == Output::Text {
        println!(
            "strata dev: control plane and simulated agents for {} serving gRPC on {endpoint} \
             (in memory: no Kafka, no Redis)",
            zones.join(", ")
        );
    }

    let code = match &args.submit {
        Some(path) => {
            let submit = SubmitArgs::for_file(path.clone());
            let code = crate::submit_and_watch(&client, &submit, output).await?;
            if args.keep_running {
                println!("serving until Ctrl-C; try: strata --endpoint {endpoint} status");
                let _ = tokio::signal::ctrl_c().await;
            }
            code
        }
        None => {
            println!(
                "try: strata --endpoint {endpoint} submit clients/samples/catalogue.json --watch"
            );
            let _ = tokio::signal::ctrl_c().await;
            0
        }
    };
    stop_tx.send_replace(true);
    for a in agents {
        let _ = a.await;
    }
    server
        .await
        .context("control plane task")?
        .context("control plane")?;
    Ok(code)
}

/// Waits (bounded) until every zone's agent holds a lease.
async fn wait_for_agents(client: &Client, zones: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(list) = client.list_agents("", false).await
            && list.agents.len() >= zones
        {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the dev agents did not register within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One zone's simulated agent over the in-memory data plane: registers and heartbeats over gRPC,
/// runs up to `concurrency` objects at once, reports Started then Loaded/Failed, deregisters
/// when stopped.
async fn dev_agent(
    endpoint: String,
    zone: Zone,
    data: Arc<MemoryDataPlane>,
    mut readies: broadcast::Receiver<ObjectReady>,
    processor: Arc<Simulate>,
    concurrency: usize,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let registry = Registry::new(&endpoint)?;
    let registration = Registration {
        zone: zone.to_string(),
        capacity: concurrency as u32,
        hostname: "strata-dev".into(),
        labels: HashMap::from([
            ("processor".to_owned(), "simulate".to_owned()),
            ("mode".to_owned(), "dev".to_owned()),
        ]),
    };
    let Some(lease) = registry
        .register(&registration, &mut Box::pin(stopped(stop.clone())))
        .await?
    else {
        return Ok(());
    };
    let who = Who {
        agent_id: lease.agent_id.clone(),
        lease_epoch: lease.epoch,
    };
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut beat = tokio::time::interval(lease.heartbeat_interval);
    let mut stop = std::pin::pin!(stopped(stop));
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = beat.tick() => {
                // In flight is not reported: a lost lease is not expected in one process.
                let _ = registry.heartbeat(&lease, Vec::new(), false).await;
            }
            ready = readies.recv() => match ready {
                Ok(ready) => {
                    let permit = slots.clone().acquire_owned().await?;
                    let (data, processor, who) = (data.clone(), processor.clone(), who.clone());
                    tokio::spawn(async move {
                        let start = Utc::now();
                        let clock = Instant::now();
                        data.send_result(results::started(&ready, &who, start)).await;
                        let outcome = processor.process(&ready).await;
                        let (result, _) = results::finished(
                            &ready,
                            &who,
                            start,
                            Utc::now(),
                            clock.elapsed(),
                            Ending::Processed(outcome),
                        );
                        data.send_result(result).await;
                        drop(permit);
                    });
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(%zone, missed = n, "dev agent fell behind; objects stay READY");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    let _ = registry.deregister(&lease, "dev mode stopping").await;
    info!(%zone, "dev agent stopped");
    Ok(())
}
