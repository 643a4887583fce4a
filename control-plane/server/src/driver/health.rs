//! What the driver tells readiness without being asked through its loop (a driver waiting for
//! Redis, or busy with a long step, cannot answer a query): whether a step is stalled because
//! its state cannot be persisted, and when the loop last finished a turn.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A step that could not be persisted yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// What is being persisted (`persist step`, `persist agent leases`).
    pub what: &'static str,
    /// Since when.
    pub since: Instant,
    /// Tries so far.
    pub tries: u32,
    /// The last error.
    pub error: String,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stalled for {} s: {} failed {} times (last: {}); no result is taken and nothing is \
             released until it succeeds",
            self.since.elapsed().as_secs(),
            self.what,
            self.tries,
            self.error
        )
    }
}

/// Shared between the driver (writes) and readiness (reads).
#[derive(Debug)]
pub struct DriverHealth {
    stall: Mutex<Option<Stall>>,
    last_turn: Mutex<Instant>,
}

impl Default for DriverHealth {
    fn default() -> Self {
        Self {
            stall: Mutex::new(None),
            last_turn: Mutex::new(Instant::now()),
        }
    }
}

impl DriverHealth {
    /// The current stall, if any.
    pub fn stall(&self) -> Option<Stall> {
        self.stall.lock().map(|s| s.clone()).unwrap_or(None)
    }

    /// How long ago the loop last finished a turn.
    pub fn since_last_turn(&self) -> Duration {
        self.last_turn
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    pub(super) fn set_stall(&self, stall: Option<Stall>) {
        if let Ok(mut s) = self.stall.lock() {
            *s = stall;
        }
    }

    pub(super) fn turned(&self) {
        if let Ok(mut t) = self.last_turn.lock() {
            *t = Instant::now();
        }
    }
}
