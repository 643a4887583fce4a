//! Processors turn one `ObjectReady` into an outcome (`docs/design.md#agents-and-processors`). A processor is the only part
//! of an agent users replace: implement [`Processor`] to embed your own loading code.
//! Built in: [`Simulate`] (the seed's behaviour), [`Exec`] (runs a command per object) and
//! [`Http`] (POSTs each object); the last two hand user code the [`ready_json`] document.
//!
//! ```
//! use strata_proto::v1::ObjectReady;
//! use strata_worker_agent::processor::{Outcome, Processor};
//!
//! /// Loads every object by logging it.
//! #[derive(Debug)]
//! struct Print;
//!
//! impl Processor for Print {
//!     async fn process(&self, ready: &ObjectReady) -> Outcome {
//!         println!("loading {} (attempt {})", ready.object_id, ready.attempt);
//!         Outcome::Loaded { info: "printed".into() }
//!     }
//! }
//! ```

use std::future::Future;

use strata_proto::v1::ObjectReady;

mod exec;
#[cfg(feature = "runtime")]
mod http;
mod payload;
mod simulate;

pub use exec::{BASE_ENV, Exec, passable};
#[cfg(feature = "runtime")]
pub use http::{Http, HttpConfigError};
pub use payload::ready_json;
pub use simulate::Simulate;

/// What processing one object came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Loaded; `info` is a short note for the result (e.g. rows written).
    Loaded {
        /// The note.
        info: String,
    },
    /// Failed: retryable (the control plane schedules another attempt) or permanent (`DEAD`).
    Failed {
        /// Whether another attempt may succeed.
        retryable: bool,
        /// What went wrong.
        error: String,
    },
}

/// Turns one Ready into an outcome. Called concurrently (up to the agent's capacity).
///
/// The agent enforces the attempt's execution timeout around it and cancels it by dropping the
/// future (timeout, an attempt the control plane abandoned, a drain whose grace ran out): a
/// processor must release what it holds when dropped (`exec` kills its process group).
pub trait Processor: Send + Sync + 'static {
    /// Processes one object.
    fn process(&self, ready: &ObjectReady) -> impl Future<Output = Outcome> + Send;
}
