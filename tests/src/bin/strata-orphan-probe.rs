//! Test helper for `smoke.rs`: starts a Redis and a broker, prints their ports, then kills
//! itself with `SIGKILL` (no destructor runs). The test then checks both ports close, which
//! only the harness's watchdogs can achieve.

use std::io::Write as _;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use strata_tests::{KafkaBroker, RedisServer};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let broker = KafkaBroker::start().await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "port {}", redis.port())?;
    writeln!(out, "port {}", broker.port())?;
    out.flush()?;
    kill(Pid::this(), Signal::SIGKILL)?;
    // Not reached; keeps both servers alive until the signal lands.
    std::thread::sleep(std::time::Duration::from_secs(60));
    drop((redis, broker));
    Ok(())
}
