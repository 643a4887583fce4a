//! The Apache Kafka broker shared by every test of one `./tests/run.sh` run.
//!
//! Starts one [`ApacheKafka`] node (the harness's fixture: same settings, dirs in a temp dir),
//! prints `bootstrap 127.0.0.1:PORT`, `dir <temp dir>` and `log <kafka.log>` on stdout, then
//! holds it until its stdin reaches end of file (run.sh keeps the write end of a pipe open for
//! as long as the tests run; if run.sh dies, the pipe closes) or it gets `SIGTERM`/`SIGINT`,
//! and stops it. If this process is killed outright, the fixture's watchdog kills the broker.

use std::io::{Read as _, Write as _};

use strata_tests::ApacheKafka;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let broker = ApacheKafka::start().await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "bootstrap {}", broker.bootstrap())?;
        writeln!(out, "dir {}", broker.dir().display())?;
        writeln!(out, "log {}", broker.log_path().display())?;
        out.flush()?;
    }
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut sink);
        let _ = eof_tx.send(());
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let why = tokio::select! {
        _ = eof_rx => "stdin closed",
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    eprintln!("strata-test-broker: {why}, stopping the broker");
    drop(broker);
    Ok(())
}
