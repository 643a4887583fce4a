//! Tracing init: a binary's `tracing` logs, filtered by `STRATA_LOG` (an `EnvFilter` directive).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The environment variable that filters the logs (e.g. `info,librdkafka=debug`).
pub const FILTER_ENV: &str = "STRATA_LOG";

/// Installs the process's log subscriber: lines filtered by [`FILTER_ENV`] (else
/// `default_filter`), written to `writer` (e.g. `std::io::stdout`). Once per process.
pub fn init<W>(default_filter: &str, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(
            EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .init();
}
