//! The shutdown signal: SIGINT (Ctrl-C) or SIGTERM, whichever comes first.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal as unix_signal};

/// Resolves at the first SIGINT or SIGTERM. Call it inside the runtime, before the signal can
/// come (it installs the handlers now).
pub fn signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = unix_signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
}
