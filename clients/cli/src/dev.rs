//! `strata dev`: the control plane and one simulated agent per zone in one process, on the
//! in-memory data plane and store (no Kafka, no Redis), serving the real gRPC API. The agents are
//! the worker agent's own loop ([`agent::run`]) with the `simulate` processor: they register over
//! gRPC like real ones (leases, heartbeats, zone checks, dedup, offsets and drain are the real
//! ones); only the topics are in memory, with Kafka's semantics (nothing is dropped when an
//! agent falls behind).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use strata_client::{Client, ClientOptions};
use strata_control_plane::adapters::memory::{MemoryDataPlane, MemoryStore};
use strata_control_plane::config::Flags;
use strata_control_plane::run::run_with;
use strata_core::Zone;
use strata_worker_agent::admin::Health;
use strata_worker_agent::agent::{self, AgentOptions};
use strata_worker_agent::memory::MemoryTransport;
use strata_worker_agent::metrics::Metrics;
use strata_worker_agent::processor::Simulate;
use strata_worker_agent::registry::{Registration, Registry};
use strata_worker_agent::stopped;
use tokio::sync::watch;

use crate::SubmitArgs;
use crate::render::Output;

/// How long the dev agents' attempts may still run once dev mode stops.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// `strata dev` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Address of the gRPC API: a loopback address (dev mode authenticates nobody).
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
    // Dev mode authenticates nobody, so it serves only this machine.
    anyhow::ensure!(
        args.addr.ip().is_loopback(),
        "strata dev serves without authentication, so only on a loopback address: {} is not one \
         (run strata-control-plane with --auth-file to serve a network)",
        args.addr
    );
    let config = Flags {
        grpc_addr: Some(args.addr),
        insecure: Some(true),
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
    // The agents stop first (they drain and deregister while the control plane still serves).
    let (stop_agents, agents_stopped) = watch::channel(false);
    let (stop_server, server_stopped) = watch::channel(false);

    let processor = Arc::new(Simulate {
        durations: Default::default(),
        default_duration: Duration::from_millis(args.simulate_duration_ms),
        fail_suffixes: args.simulate_fail_suffixes.clone(),
        fail_rate: args.simulate_fail_rate,
    });
    let mut agents = Vec::new();
    for zone in &config.zones {
        agents.push(tokio::spawn(dev_agent(
            Registry::new(&endpoint, Default::default())?,
            zone.clone(),
            &data,
            processor.clone(),
            args.concurrency,
            agents_stopped.clone(),
        )));
    }
    let zones: Vec<String> = config.zones.iter().map(Zone::to_string).collect();
    let server_stop = stopped(server_stopped);
    let server =
        tokio::spawn(
            async move { run_with(&config, data, store, listener, None, server_stop).await },
        );
    let client = Client::connect(&endpoint, ClientOptions::default())?;
    wait_for_agents(&client, zones.len()).await?;
    if output == Output::Text {
        println!(
            "strata dev: control plane and simulated agents for {} serving gRPC on {endpoint} \
             (in memory: no Kafka, no Redis; open on loopback, no authentication)",
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
    stop_agents.send_replace(true);
    for a in agents {
        let _ = a.await;
    }
    stop_server.send_replace(true);
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

/// One zone's simulated agent: [`agent::run`] over the zone's in-memory topics, until `stop`
/// (then it drains and deregisters).
fn dev_agent(
    registry: Registry,
    zone: Zone,
    data: &MemoryDataPlane,
    processor: Arc<Simulate>,
    concurrency: usize,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = Result<(), agent::AgentError>> + Send + 'static {
    let options = AgentOptions {
        registration: Registration {
            zone: zone.to_string(),
            capacity: u32::try_from(concurrency.max(1)).unwrap_or(u32::MAX),
            hostname: "strata-dev".into(),
            labels: HashMap::from([
                ("processor".to_owned(), "simulate".to_owned()),
                ("mode".to_owned(), "dev".to_owned()),
            ]),
        },
        drain_grace: DRAIN_GRACE,
    };
    let transport = MemoryTransport {
        ready: data.ready_topic(&zone),
        results: data.results_topic(),
    };
    agent::run(
        options,
        registry,
        transport,
        processor,
        Metrics::new(zone.as_str()),
        Arc::new(Health::default()),
        stopped(stop),
    )
}
