//! Why a driver command failed (mapped to a gRPC status in `crate::error`).

use crate::ports::PortError;

/// Why a command failed; mapped to a gRPC status in one place (`crate::error`).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// No such batch.
    #[error("batch {0} not found")]
    BatchNotFound(String),
    /// No such object in the batch.
    #[error("object {object} is not in batch {batch}")]
    ObjectNotFound {
        /// Batch id.
        batch: String,
        /// Object id.
        object: String,
    },
    /// The idempotency key was used for another submission.
    #[error("idempotency key {key:?} was already used for batch {batch_id} with different content")]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The batch it names.
        batch_id: String,
    },
    /// The command does not apply in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Storage failed.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The driver has stopped.
    #[error("the control plane is shutting down")]
    ShuttingDown,
}
