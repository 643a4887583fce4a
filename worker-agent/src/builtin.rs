//! The processors the binary can run, chosen by `--processor` (the [`Processor`] trait is not
//! object-safe, so they are one enum).

use strata_proto::v1::ObjectReady;

use crate::config::{AgentArgs, ProcessorKind};
use crate::processor::{Exec, Http, Outcome, Processor, Simulate, passable};

/// One of the built-in processors.
#[derive(Debug)]
pub enum BuiltIn {
    /// `--processor simulate`.
    Simulate(Simulate),
    /// `--processor exec`.
    Exec(Exec),
    /// `--processor http`.
    Http(Http),
}

impl BuiltIn {
    /// The processor the flags ask for. The error names the missing or bad flag.
    pub fn from_args(args: &AgentArgs) -> Result<Self, String> {
        match args.processor {
            ProcessorKind::Simulate => {
                if !(0.0..=1.0).contains(&args.simulate_fail_rate) {
                    return Err(format!(
                        "--simulate-fail-rate {}: must be within [0, 1]",
                        args.simulate_fail_rate
                    ));
                }
                Ok(Self::Simulate(Simulate {
                    durations: args.simulate_zone_durations()?,
                    default_duration: std::time::Duration::from_millis(args.simulate_duration_ms),
                    fail_suffixes: args.simulate_fail_suffixes.clone(),
                    fail_rate: args.simulate_fail_rate,
                }))
            }
            ProcessorKind::Exec => {
                let program = args.exec_command.clone().ok_or(
                    "--processor exec needs --exec-command <program> (or STRATA_EXEC_COMMAND)",
                )?;
                let mut exec = Exec::new(program, args.exec_args.clone());
                exec.temp_fail_code = args.exec_temp_fail_code;
                if let Some(name) = args.exec_pass_env.iter().find(|n| !passable(n)) {
                    return Err(format!(
                        "--exec-pass-env {name}: the agent's STRATA_* variables (its settings, \
                         token and Kafka credentials) are never passed to the program"
                    ));
                }
                exec.pass_env = args.exec_pass_env.clone();
                Ok(Self::Exec(exec))
            }
            ProcessorKind::Http => {
                let url = args
                    .http_url
                    .as_deref()
                    .ok_or("--processor http needs --http-url <url> (or STRATA_HTTP_URL)")?;
                // No request timeout of its own: the attempt's execution timeout bounds it.
                Http::new(url, args.http_headers.clone(), None)
                    .map(Self::Http)
                    .map_err(|e| format!("--http-url: {e}"))
            }
        }
    }
}

impl Processor for BuiltIn {
    async fn process(&self, ready: &ObjectReady) -> Outcome {
        match self {
            Self::Simulate(p) => p.process(ready).await,
            Self::Exec(p) => p.process(ready).await,
            Self::Http(p) => p.process(ready).await,
        }
    }
}
