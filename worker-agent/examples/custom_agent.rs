//! A custom worker agent in Rust: your own [`Processor`] inside the same runtime the
//! `strata-worker-agent` binary uses (registration, the zone's consumer group, concurrency,
//! results, heartbeats, drain on SIGTERM, the admin port).
//!
//! ```sh
//! cargo run -p strata-worker-agent --example custom_agent -- \
//!     --zone standardized --control-plane http://127.0.0.1:50051 --admin-addr 127.0.0.1:9465
//! ```
//!
//! It takes the binary's flags (`--help`); the `--processor` options are ignored.

use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser as _;
use strata_proto::v1::ObjectReady;
use strata_worker_agent::agent;
use strata_worker_agent::config::AgentArgs;
use strata_worker_agent::processor::{Outcome, Processor};

/// Loads an object by "copying" its rows: objects whose `rows` attribute is missing fail
/// permanently (retrying cannot fix the input); every 10th call fails retryably.
#[derive(Debug, Default)]
struct CopyRows {
    calls: AtomicU64,
}

impl Processor for CopyRows {
    async fn process(&self, ready: &ObjectReady) -> Outcome {
        let Some(def) = ready.object.as_ref() else {
            return Outcome::Failed {
                retryable: false,
                error: "the Ready carries no object definition".into(),
            };
        };
        let Some(rows) = def.attributes.get("rows") else {
            return Outcome::Failed {
                retryable: false,
                error: format!("object {} has no `rows` attribute", def.id),
            };
        };
        if self.calls.fetch_add(1, Ordering::Relaxed) % 10 == 9 {
            return Outcome::Failed {
                retryable: true,
                error: "warehouse busy, try again".into(),
            };
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        Outcome::Loaded {
            info: format!("copied {rows} rows"),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().init();
    let args = AgentArgs::parse();
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    agent::run_from_args(&args, CopyRows::default(), "copy-rows", shutdown).await
}
