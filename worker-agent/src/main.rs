//! `strata-worker-agent`: the thin binary. Reads its flags (`STRATA_*` environment too), and runs
//! the agent with the chosen built-in processor until SIGTERM/SIGINT, then drains and exits 0.

use std::process::ExitCode;

use clap::Parser;
use strata_worker_agent::agent::run_from_args;
use strata_worker_agent::builtin::BuiltIn;
use strata_worker_agent::config::AgentArgs;
use tokio::signal::unix::{SignalKind, signal};

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
        let mut term = signal(SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        let label = format!("{:?}", args.processor).to_lowercase();
        run_from_args(&args, processor, &label, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-worker-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
