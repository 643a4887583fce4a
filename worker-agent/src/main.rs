//! `strata-worker-agent`: the thin binary. Reads its flags (`STRATA_*` environment too), serves
//! the admin port, and runs the agent with the chosen built-in processor until SIGTERM/SIGINT,
//! then drains and exits 0.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use strata_worker_agent::admin::{self, Health};
use strata_worker_agent::agent::{self, AgentOptions};
use strata_worker_agent::builtin::BuiltIn;
use strata_worker_agent::config::AgentArgs;
use strata_worker_agent::metrics::Metrics;
use strata_worker_agent::registry::Registration;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

fn main() -> ExitCode {
    let args = AgentArgs::parse();
    let processor = match BuiltIn::from_args(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("strata-worker-agent: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata-worker-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let metrics = Metrics::new(&args.zone);
        let health = Arc::new(Health::default());
        let listener = tokio::net::TcpListener::bind(args.admin_addr)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot listen on {} (--admin-addr): {e}", args.admin_addr)
            })?;
        info!(addr = %listener.local_addr()?, "admin port serving /metrics and /health");
        tokio::spawn(admin::serve(
            listener,
            admin::router(health.clone(), metrics.clone()),
        ));
        let mut term = signal(SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        let options = AgentOptions {
            registration: Registration {
                zone: args.zone.clone(),
                capacity: args.concurrency,
                hostname: args.hostname(),
                labels: args
                    .labels
                    .iter()
                    .cloned()
                    .chain([(
                        "processor".to_owned(),
                        format!("{:?}", args.processor).to_lowercase(),
                    )])
                    .collect(),
            },
            control_plane: args.control_plane.clone(),
            kafka_brokers: args.kafka_brokers.clone(),
            kafka_properties: args.kafka_properties.clone(),
            drain_grace: args.drain_grace(),
        };
        agent::run(options, Arc::new(processor), metrics, health, shutdown).await?;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-worker-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
