//! `ListDeadLetters` and `ReplayDeadLetters`: what exhausted its attempts, listed from the store
//! and released again.

use strata_core::machine::{BatchState, Event, NodeState, Outcome};
use strata_core::model::NodeIx;
use strata_proto::v1::{self as pb};
use tokio::sync::broadcast;
use tracing::{info, instrument};

use super::MAX_STORE_PAGES;
use super::OrchestratorService;
use super::validate::object_id;
use super::validate::optional_zone;
use super::validate::required;
use super::wire;
use crate::convert;
use crate::driver::{WatchEvent, WatchStep};
use crate::error::ServiceError;
use crate::ports::StateStore;
impl<S: StateStore> OrchestratorService<S> {
    #[instrument(skip_all, fields(batch_id = %req.batch_id, zone = %req.zone))]
    pub(super) async fn do_list_dead_letters(
        &self,
        req: pb::ListDeadLettersRequest,
    ) -> Result<pb::ListDeadLettersResponse, ServiceError> {
        let size = wire::page_size(req.page_size);
        let zone = optional_zone(&req.zone)?;
        let filters = format!("dead:{}:{}", req.batch_id, req.zone);
        let mut cursor = wire::decode_token(&req.page_token, &filters)?;
        let batch_filter = (!req.batch_id.is_empty()).then(|| req.batch_id.clone());
        let mut letters = Vec::new();
        for _ in 0..MAX_STORE_PAGES {
            let (page, next) = self
                .store
                .list_dead_letters(batch_filter.clone(), cursor.clone(), size - letters.len())
                .await?;
            cursor = next;
            let decoded: Vec<(NodeIx, pb::DeadLetter)> = page
                .into_iter()
                .filter(|stored| {
                    zone.as_ref()
                        .is_none_or(|z| *z == stored.letter.object.zone)
                })
                .map(|stored| (stored.node, convert::dead_letter_message(&stored.letter)))
                .collect();
            // Replayed objects are no longer dead: only letters of objects still DEAD (or of
            // batches this process does not drive) are listed, with their blocked descendants.
            // (letter, node), node only for a batch the driver does not hold.
            let kept: Vec<(pb::DeadLetter, Option<NodeIx>)> = self
                .handle
                .read(move |s| {
                    decoded
                        .into_iter()
                        .filter_map(|(node, mut l)| match s.batch(&l.batch_id) {
                            None => Some((l, Some(node))),
                            Some(rt) => (rt.machine().state(node) == Some(NodeState::Dead)
                                && rt.object(node).id.as_str() == l.object_id)
                                .then(|| {
                                    l.blocked_descendant_count =
                                        wire::blocked_descendants(rt, node);
                                    (l, None)
                                }),
                        })
                        .collect()
                })
                .await?;
            for (mut l, not_held) in kept {
                // A finished batch that left memory: its blocked descendants from the store,
                // as while it was held. Rebuilt for a listing of that one batch; a listing of
                // every batch (many batches a page) only uses batches already rebuilt.
                let Some(node) = not_held else {
                    letters.push(l);
                    continue;
                };
                let rt = if batch_filter.is_some() {
                    self.stored_runtime(&l.batch_id).await?
                } else {
                    self.rebuilt.get(&l.batch_id)
                };
                if let Some(rt) = rt {
                    l.blocked_descendant_count = wire::blocked_descendants(&rt, node);
                }
                letters.push(l);
            }
            if letters.len() >= size || cursor.is_none() {
                break;
            }
        }
        Ok(pb::ListDeadLettersResponse {
            dead_letters: letters,
            next_page_token: cursor
                .map(|c| wire::encode_token(&filters, &c))
                .unwrap_or_default(),
        })
    }

    #[instrument(skip_all, fields(batch_id = %req.batch_id))]
    pub(super) async fn do_replay(
        &self,
        req: pb::ReplayDeadLettersRequest,
    ) -> Result<pb::ReplayDeadLettersResponse, ServiceError> {
        let batch_id = required("batch_id", &req.batch_id)?.to_owned();
        let ids = req
            .object_ids
            .iter()
            .map(|t| object_id(t))
            .collect::<Result<Vec<_>, _>>()?;
        let budget = req.max_attempts;
        struct Prepared {
            nodes: Vec<NodeIx>,
            names: Vec<String>,
            upstream_before: u32,
            rx: broadcast::Receiver<WatchStep>,
        }
        // A finished batch that left memory is taken back from the store first (what reads
        // kept of it is stale from now on).
        self.rebuilt.forget(&batch_id);
        self.handle.adopt(batch_id.clone()).await?;
        let prepared = self
            .with_batch(&batch_id, move |rt| {
                let batch_id = &rt.batch_id();
                if rt.machine().batch_state() == BatchState::Cancelled {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "batch {batch_id} is CANCELLED: its dead objects cannot be replayed"
                    )));
                }
                let policy = rt.options().retry.max_attempts;
                if budget != 0 && (budget != policy || !rt.machine().policies().is_uniform()) {
                    return Err(ServiceError::Unsupported(format!(
                        "replaying with max_attempts {budget} is not supported: batch {batch_id} replays with its policies' attempts ({policy} outside the zones configured otherwise; send 0)"
                    )));
                }
                let nodes: Vec<NodeIx> = if ids.is_empty() {
                    rt.machine().nodes_in(NodeState::Dead).collect()
                } else {
                    let nodes = ids
                        .iter()
                        .map(|id| Self::node_of(rt, id))
                        .collect::<Result<Vec<_>, _>>()?;
                    let not_dead: Vec<String> = nodes
                        .iter()
                        .filter_map(|&n| {
                            let s = rt.machine().state(n).unwrap_or(NodeState::Pending);
                            (s != NodeState::Dead).then(|| format!("{} ({s})", rt.object(n).id))
                        })
                        .collect();
                    if !not_dead.is_empty() {
                        return Err(ServiceError::FailedPrecondition(format!(
                            "only DEAD objects can be replayed; in batch {batch_id} these are not: {}",
                            not_dead.join(", ")
                        )));
                    }
                    let mut nodes = nodes;
                    nodes.sort_unstable();
                    nodes.dedup();
                    nodes
                };
                Ok(Prepared {
                    names: nodes.iter().map(|&n| rt.object(n).id.to_string()).collect(),
                    nodes,
                    upstream_before: rt.machine().counts().get(NodeState::UpstreamFailed),
                    rx: rt.subscribe(),
                })
            })
            .await?;
        let Some(Prepared {
            nodes,
            names,
            upstream_before,
            mut rx,
        }) = prepared
        else {
            return Err(self
                .not_held(&batch_id, "replay it on the control plane that drives it")
                .await);
        };
        if nodes.is_empty() {
            return Ok(pb::ReplayDeadLettersResponse {
                replayed_object_ids: Vec::new(),
                rearmed_descendant_count: 0,
                batch: Some(self.batch(&batch_id).await?),
            });
        }
        match self
            .handle
            .event(&batch_id, Event::Replay { nodes })
            .await?
        {
            Outcome::Applied => {}
            Outcome::Ignored(_) => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "batch {batch_id} changed while replaying: none of {} is DEAD any more, or it was cancelled",
                    names.join(", ")
                )));
            }
        }
        // The step's changes were broadcast before the event's reply: count the re-armed
        // descendants among them (UPSTREAM_FAILED → PENDING happens only on replay).
        let mut rearmed = 0u32;
        let mut lagged = false;
        loop {
            match rx.try_recv() {
                Ok(step) => {
                    rearmed += step
                        .events
                        .iter()
                        .filter(|e| {
                            matches!(
                                e,
                                WatchEvent::Object {
                                    from: NodeState::UpstreamFailed,
                                    to: NodeState::Pending,
                                    ..
                                }
                            )
                        })
                        .count() as u32;
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    lagged = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if lagged {
            // Too many changes to follow: the drop in UPSTREAM_FAILED objects.
            let after = self
                .with_batch(&batch_id, |rt| {
                    Ok(rt.machine().counts().get(NodeState::UpstreamFailed))
                })
                .await?
                .unwrap_or_default();
            rearmed = upstream_before.saturating_sub(after);
        }
        info!(%batch_id, replayed = names.len(), rearmed, "dead letters replayed");
        Ok(pb::ReplayDeadLettersResponse {
            replayed_object_ids: names,
            rearmed_descendant_count: rearmed,
            batch: Some(self.batch(&batch_id).await?),
        })
    }
}
