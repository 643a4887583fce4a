//! OpenTelemetry traces (`docs/design.md#observability`): one trace per batch, one span per object attempt, carried
//! to the agents through the Ready's `traceparent` and back through the results' header.
//!
//! Nothing is installed unless the environment names an OTLP endpoint
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; the other standard
//! variables — `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_BSP_*`, `OTEL_RESOURCE_ATTRIBUTES` — apply as usual; `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` turn it off). [`otlp::install_from_env`] then exports over
//! OTLP/gRPC with a batch span processor and makes [`otlp::tracer`] return the tracer; otherwise
//! [`otlp::tracer`] is `None` and the driver holds no [`DriverTraces`]: no span is created and no
//! trace context formatted.
//!
//! The spans of the control plane (`strata-control-plane` service):
//! - `batch` — the root of a batch's trace, emitted when the submission is durable and its
//!   first objects released (start: submission, end: then). Its trace id and span id are derived
//!   from the batch id ([`batch_context`]), so a restarted control plane's spans join the same
//!   trace under the same parent.
//! - `attempt` — one per released attempt, a child of the batch span; its context is the Ready's
//!   `traceparent`. It starts at the release and ends when the attempt ends in this process (its
//!   final result applied, or lost, timed out, cancelled), with the object's new state as
//!   `strata.outcome` (`loaded`, `retry_wait`, `dead`, `cancelled`, …). An attempt released before a restart is not ended by the new process (it
//!   cannot end a span it did not start): its span was dropped with the old process, and the
//!   agent's and `apply_result` spans still join the batch trace. Attempt spans still open when
//!   the driver stops (SIGTERM) end then, without an outcome, and are flushed with the rest.
//! - `apply_result` — one per consumed result that carries a `traceparent`, a child of the agent's
//!   `process` span, from consumption until the state change it caused is durable; attributes:
//!   the result (`started`, `loaded`, `failed`), and whether the machine accepted it.

use std::time::SystemTime;

use crate::records::{AgentReport, ReportOutcome};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span};
use rustc_hash::FxHashMap;
use sha2::{Digest as _, Sha256};
use strata_core::machine::{NodeState, Outcome};
use strata_core::model::NodeIx;
use strata_runtime::otlp::{self, parse_traceparent, traceparent};

/// The service name when `OTEL_SERVICE_NAME` does not say otherwise.
pub const SERVICE_NAME: &str = "strata-control-plane";

/// The batch span's context, derived from the batch id alone: trace id = the first 16 bytes of
/// SHA-256(batch id), span id = the next 8 (any all-zero part, which W3C forbids, becomes 1).
pub fn batch_context(batch_id: &str) -> SpanContext {
    let digest = Sha256::digest(batch_id.as_bytes());
    let mut trace = [0u8; 16];
    trace.copy_from_slice(&digest[..16]);
    let mut span = [0u8; 8];
    span.copy_from_slice(&digest[16..24]);
    let trace_id = match TraceId::from_bytes(trace) {
        TraceId::INVALID => TraceId::from_bytes(1u128.to_be_bytes()),
        id => id,
    };
    let span_id = match SpanId::from_bytes(span) {
        SpanId::INVALID => SpanId::from_bytes(1u64.to_be_bytes()),
        id => id,
    };
    SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )
}

/// An attempt span still open, by (batch, node).
#[derive(Debug)]
struct OpenAttempt {
    attempt: u32,
    dispatch_epoch: u64,
    traceparent: String,
    span: Span,
}

/// The driver's spans: built only when traces are exported ([`DriverTraces::from_installed`]).
#[derive(Debug)]
pub struct DriverTraces {
    tracer: SdkTracer,
    open: FxHashMap<(String, NodeIx), OpenAttempt>,
}

impl DriverTraces {
    /// `Some` when traces are exported.
    pub fn from_installed() -> Option<Self> {
        otlp::tracer().map(|t| Self {
            tracer: t.clone(),
            open: FxHashMap::default(),
        })
    }

    /// Emits the `batch` span of a submission made at `submitted_at`, ending now.
    pub fn batch_submitted(&self, batch_id: &str, objects: usize, submitted_at: SystemTime) {
        // A root span: its ids follow from the batch id (see [`batch_context`]).
        let mut span = otlp::with_ids(&batch_context(batch_id), || {
            self.tracer
                .span_builder("batch")
                .with_kind(SpanKind::Internal)
                .with_start_time(submitted_at)
                .with_attributes([
                    KeyValue::new("strata.batch.id", batch_id.to_owned()),
                    KeyValue::new("strata.batch.objects", objects as i64),
                ])
                .start_with_context(&self.tracer, &Context::new())
        });
        span.end();
    }

    /// The trace context of a released attempt: its `attempt` span, started now (or the one
    /// already open for this very release, when it is published again).
    #[allow(clippy::too_many_arguments)]
    pub fn released(
        &mut self,
        batch_id: &str,
        node: NodeIx,
        object_id: &str,
        zone: &str,
        attempt: u32,
        dispatch_epoch: u64,
    ) -> String {
        let key = (batch_id.to_owned(), node);
        if let Some(open) = self.open.get(&key) {
            if open.attempt == attempt && open.dispatch_epoch == dispatch_epoch {
                return open.traceparent.clone();
            }
            if let Some(mut old) = self.open.remove(&key) {
                old.span
                    .set_attribute(KeyValue::new("strata.outcome", "superseded"));
                old.span.end();
            }
        }
        let parent = Context::new().with_remote_span_context(batch_context(batch_id));
        let span = self
            .tracer
            .span_builder("attempt")
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("strata.batch.id", batch_id.to_owned()),
                KeyValue::new("strata.object.id", object_id.to_owned()),
                KeyValue::new("strata.zone", zone.to_owned()),
                KeyValue::new("strata.attempt", i64::from(attempt)),
                KeyValue::new("strata.dispatch_epoch", dispatch_epoch as i64),
            ])
            .start_with_context(&self.tracer, &parent);
        let traceparent = traceparent(span.span_context());
        self.open.insert(
            key,
            OpenAttempt {
                attempt,
                dispatch_epoch,
                traceparent: traceparent.clone(),
                span,
            },
        );
        traceparent
    }

    /// A node changed state: its attempt span notes the start, or ends when the attempt is over
    /// (`error`: the object's last error, for failed ends).
    pub fn transition(
        &mut self,
        batch_id: &str,
        node: NodeIx,
        from: NodeState,
        to: NodeState,
        error: Option<&str>,
    ) {
        if !matches!(from, NodeState::Ready | NodeState::Running) {
            return;
        }
        if to == NodeState::Running {
            if let Some(open) = self.open.get_mut(&(batch_id.to_owned(), node)) {
                open.span.add_event("started", Vec::new());
            }
            return;
        }
        if to == NodeState::Ready {
            return;
        }
        let Some(mut open) = self.open.remove(&(batch_id.to_owned(), node)) else {
            return;
        };
        open.span.set_attribute(KeyValue::new(
            "strata.outcome",
            to.as_str().to_ascii_lowercase(),
        ));
        if matches!(to, NodeState::Dead | NodeState::RetryWait) {
            open.span.set_status(Status::error(
                error.unwrap_or("the attempt failed").to_owned(),
            ));
        }
        open.span.end();
    }

    /// Starts the `apply_result` span of a consumed result whose record carries `traceparent`.
    pub fn result_consumed(&self, traceparent: &str, report: &AgentReport) -> Option<Span> {
        let parent = Context::new().with_remote_span_context(parse_traceparent(traceparent)?);
        let kind = match &report.outcome {
            ReportOutcome::Started => "started",
            ReportOutcome::Loaded { .. } => "loaded",
            ReportOutcome::Failed {
                retryable: true, ..
            } => "failed_retryable",
            ReportOutcome::Failed { .. } => "failed_permanent",
        };
        let (batch_id, object_id, agent) = (&report.batch_id, &report.object_id, &report.agent_id);
        let (attempt, epoch) = (report.attempt, report.dispatch_epoch);
        Some(
            self.tracer
                .span_builder("apply_result")
                .with_kind(SpanKind::Consumer)
                .with_attributes([
                    KeyValue::new("strata.outcome", kind),
                    KeyValue::new("strata.batch.id", batch_id.clone()),
                    KeyValue::new("strata.object.id", object_id.clone()),
                    KeyValue::new("strata.attempt", i64::from(attempt)),
                    KeyValue::new("strata.dispatch_epoch", epoch as i64),
                    KeyValue::new("strata.agent.id", agent.clone()),
                ])
                .start_with_context(&self.tracer, &parent),
        )
    }
}

/// Records on an `apply_result` span what became of its result: the machine's `outcome`, or the
/// driver's own reason for not applying it (`unknown_batch`, `unknown_node`, or a rejection: `unsigned`, `old_lease`, …).
pub fn result_decided(span: &mut Span, decided: Result<Outcome, &'static str>) {
    let (accepted, reason) = match decided {
        Ok(Outcome::Applied) => (true, None),
        Ok(Outcome::Ignored(reason)) => (false, Some(reason.as_str())),
        Err(reason) => (false, Some(reason)),
    };
    span.set_attribute(KeyValue::new("strata.accepted", accepted));
    if let Some(reason) = reason {
        span.set_attribute(KeyValue::new("strata.ignored_reason", reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_context_follows_from_the_batch_id() {
        let a = batch_context("b-0123");
        assert_eq!(a, batch_context("b-0123"));
        assert_ne!(a.trace_id(), batch_context("b-0124").trace_id());
        assert!(a.is_valid() && a.is_sampled());
    }

    #[test]
    fn traceparents_round_trip() {
        let sc = batch_context("batch");
        let tp = traceparent(&sc);
        assert_eq!(tp.len(), 55, "{tp}");
        assert!(tp.starts_with("00-") && tp.ends_with("-01"), "{tp}");
        let back = parse_traceparent(&tp).expect("valid");
        assert_eq!(
            (back.trace_id(), back.span_id(), back.is_sampled()),
            (sc.trace_id(), sc.span_id(), true)
        );
    }

    #[test]
    fn nothing_is_enabled_without_an_endpoint() {
        // The test process sets no OTLP variable.
        if otlp::endpoint_from_env().is_none() {
            assert!(!otlp::enabled() && DriverTraces::from_installed().is_none());
        }
    }
}
