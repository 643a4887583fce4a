//! `strata-worker-agent`: the thin binary. Reads its flags (`STRATA_*` environment too), and runs
//! the agent with the chosen built-in processor until SIGTERM/SIGINT, then drains and exits 0.

use std::process::ExitCode;

use clap::Parser;
use strata_runtime::{executor, logs, shutdown};
use strata_worker_agent::agent::run_from_args;
use strata_worker_agent::builtin::BuiltIn;
use strata_worker_agent::config::AgentArgs;

fn main() -> ExitCode {
    let args = AgentArgs::parse();
    let processor = match BuiltIn::from_args(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("strata-worker-agent: {e}");
            return ExitCode::from(2);
        }
    };
    // Checked before anything starts (the agent builds its clients only once registered).
    if let Err(e) = args.kafka_client_properties() {
        eprintln!("strata-worker-agent: kafka: {e}");
        return ExitCode::from(2);
    }
    logs::init(
        "info",
        std::io::stdout,
        std::io::IsTerminal::is_terminal(&std::io::stdout()),
    );
    let runtime = match executor::build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata-worker-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let shutdown = shutdown::signal()?;
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
