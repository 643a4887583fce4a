//! `GetObject`: one object of a batch, with its attempts and what blocks it: from the driver
//! while it holds the batch, else from the store (a finished batch, rebuilt).

use strata_core::ObjectId;
use strata_core::model::NodeIx;
use strata_proto::v1::{self as pb};
use tracing::instrument;

use super::OrchestratorService;
use super::validate::object_id;
use super::validate::required;
use super::wire;
use crate::driver::BatchRuntime;
use crate::error::ServiceError;
use crate::ports::StateStore;
impl<S: StateStore> OrchestratorService<S> {
    /// Resolves an object id of a held batch to its node.
    pub(super) fn node_of(rt: &BatchRuntime, object_id: &ObjectId) -> Result<NodeIx, ServiceError> {
        rt.node_of(object_id)
            .ok_or_else(|| ServiceError::ObjectNotFound {
                batch: rt.batch_id().to_owned(),
                object: object_id.to_string(),
            })
    }

    #[instrument(skip_all, fields(batch_id = %req.batch_id, object_id = %req.object_id))]
    pub(super) async fn do_get_object(
        &self,
        req: pb::GetObjectRequest,
    ) -> Result<pb::ObjectStatus, ServiceError> {
        let batch_id = required("batch_id", &req.batch_id)?.to_owned();
        let id = object_id(&req.object_id)?;
        let wanted = id.clone();
        let held = batch_id.clone();
        match self
            .handle
            .read(move |s| {
                s.batch(&held)
                    .map(|rt| {
                        let node = Self::node_of(rt, &id)?;
                        let live = s.agents().active_in(&rt.object(node).zone) as u32;
                        Ok::<_, ServiceError>(wire::object_status(rt, node, live))
                    })
                    .transpose()
            })
            .await??
        {
            Some(s) => Ok(s),
            None => match self.stored_runtime(&batch_id).await? {
                // Finished: no agent matters to a terminal object's status.
                Some(rt) => Ok(wire::object_status(&rt, Self::node_of(&rt, &wanted)?, 0)),
                None => Err(self
                    .not_held(
                        &batch_id,
                        "it is driven by another control plane, or not at all",
                    )
                    .await),
            },
        }
    }
}
