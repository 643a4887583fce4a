//! Wall-clock time as the driver sees it: read from a [`Clock`] in its settings, so that tests can
//! move it (with tokio's paused time) instead of sleeping.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};

/// Where the driver reads the time of day (lease expiry, backoff due times, records' times).
/// Timers (execution deadlines, the tick) run on tokio's clock.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that follows tokio's: the wall time it was made at, plus the tokio time elapsed since.
/// Under `tokio::time::pause` it moves only when tokio's time does (`advance`, or auto-advance
/// while every task waits on a timer), so a test can step lease expiry and retry backoff.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: DateTime<Utc>,
    at: tokio::time::Instant,
}

impl TokioClock {
    /// Starts at the system's time now.
    pub fn new() -> Self {
        Self::starting_at(Utc::now())
    }

    /// Starts at `wall`.
    pub fn starting_at(wall: DateTime<Utc>) -> Self {
        Self {
            wall,
            at: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = TimeDelta::from_std(self.at.elapsed()).unwrap_or(TimeDelta::MAX);
        self.wall.checked_add_signed(elapsed).unwrap_or(self.wall)
    }
}
