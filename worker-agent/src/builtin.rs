//! The processors the binary can run, chosen by `--processor` (the [`Processor`] trait is not
//! object-safe, so they are one enum).

use strata_proto::v1::ObjectReady;

use crate::config::{AgentArgs, ProcessorKind};
use crate::processor::{Outcome, Processor, Simulate};

/// One of the built-in processors.
#[derive(Debug)]
pub enum BuiltIn {
    /// `--processor simulate`.
    Simulate(Simulate),
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
            ProcessorKind::Exec | ProcessorKind::Http => {
                Err("this build has no exec/http processors yet".into())
            }
        }
    }
}

impl Processor for BuiltIn {
    async fn process(&self, ready: &ObjectReady) -> Outcome {
        match self {
            Self::Simulate(p) => p.process(ready).await,
        }
    }
}
