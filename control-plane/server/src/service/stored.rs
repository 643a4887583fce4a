//! Batches the driver no longer holds (finished, then evicted after the retention), rebuilt from
//! the store to answer reads the same way as while they were held: their records, and the
//! trails stored when they finished as their history. The last few rebuilt are kept (at most
//! [`KEPT`] batches and [`KEPT_OBJECTS`] objects), so that a client reading a finished batch
//! object by object rebuilds it once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tracing::warn;

use super::OrchestratorService;
use crate::driver::{BatchRuntime, for_reads};
use crate::error::ServiceError;
use crate::ports::StateStore;

/// Rebuilt batches kept, at most.
const KEPT: usize = 4;
/// Objects of the rebuilt batches kept, at most (a bigger batch is rebuilt for each read, so
/// what is kept stays small beside the batches the driver holds).
const KEPT_OBJECTS: usize = 200_000;

/// The batches last rebuilt, newest first.
#[derive(Debug, Clone, Default)]
pub(super) struct Rebuilt(Arc<Mutex<VecDeque<Arc<BatchRuntime>>>>);

impl Rebuilt {
    pub(super) fn get(&self, batch_id: &str) -> Option<Arc<BatchRuntime>> {
        let kept = self.0.lock().ok()?;
        kept.iter().find(|rt| rt.batch_id() == batch_id).cloned()
    }

    /// Drops what is kept of `batch_id` (it is about to change: a replay takes it back).
    pub(super) fn forget(&self, batch_id: &str) {
        if let Ok(mut kept) = self.0.lock() {
            kept.retain(|k| k.batch_id() != batch_id);
        }
    }

    fn keep(&self, rt: Arc<BatchRuntime>) {
        let size = |rt: &BatchRuntime| rt.machine().records().len();
        if size(&rt) > KEPT_OBJECTS {
            return;
        }
        if let Ok(mut kept) = self.0.lock() {
            kept.retain(|k| k.batch_id() != rt.batch_id());
            kept.push_front(rt);
            kept.truncate(KEPT);
            while kept.iter().map(|k| size(k)).sum::<usize>() > KEPT_OBJECTS {
                kept.pop_back();
            }
        }
    }
}

impl<S: StateStore> OrchestratorService<S> {
    /// A finished batch the driver does not hold, rebuilt from the store (planned again: seconds
    /// for a million objects, on a blocking thread). `None` when the store does not have it, or
    /// has it RUNNING (driven elsewhere, or not restorable: its reads are refused as before).
    pub(super) async fn stored_runtime(
        &self,
        batch_id: &str,
    ) -> Result<Option<Arc<BatchRuntime>>, ServiceError> {
        if let Some(rt) = self.rebuilt.get(batch_id) {
            return Ok(Some(rt));
        }
        let Some((restored, trails)) = self.store.load_batch(batch_id).await? else {
            return Ok(None);
        };
        if !restored.head.state.is_terminal() {
            return Ok(None);
        }
        let settings = self.settings.clone();
        let rebuilt = tokio::task::spawn_blocking(move || {
            for_reads(restored, trails, &settings.zone_durations_ms)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("rebuilding task failed: {e}")))?;
        match rebuilt {
            Ok(rt) => {
                let rt = Arc::new(rt);
                self.rebuilt.keep(rt.clone());
                Ok(Some(rt))
            }
            Err(e) => {
                warn!(%batch_id, error = %e, "stored batch cannot be rebuilt for reads");
                Err(ServiceError::FailedPrecondition(format!(
                    "batch {batch_id} cannot be read from the store: {e}"
                )))
            }
        }
    }
}
