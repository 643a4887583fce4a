//! OpenTelemetry traces of the agent (`docs/design.md#observability`): one `process` span per attempt run here, a
//! child of the control plane's `attempt` span named by the Ready's `traceparent`.
//!
//! Nothing is installed unless the environment names an OTLP endpoint
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; the other standard
//! variables — `OTEL_SERVICE_NAME` (default `strata-worker-agent`), `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`, `OTEL_RESOURCE_ATTRIBUTES` — apply as usual;
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off). Without it [`tracer`] is
//! `None`, no span is created, and results carry the Ready's `traceparent` unchanged.
//!
//! The `process` span (kind consumer) starts when the agent takes the Ready and ends once the
//! final result is delivered; attributes: batch and object id, zone, attempt, dispatch epoch,
//! agent id, and `strata.outcome` (`loaded`, `failed_retryable`, `failed_permanent`, `timeout`,
//! or `abandoned` when the attempt was dropped without its own result: superseded, lease lost,
//! handed back at drain). Every result record of the attempt carries this span's `traceparent`,
//! so the control plane's `apply_result` spans are its children.

use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span};
use strata_proto::v1::ObjectReady;
pub use strata_runtime::otlp::{install_from_env, tracer};
use strata_runtime::otlp::{parse_traceparent, traceparent};

/// The service name when `OTEL_SERVICE_NAME` does not say otherwise.
pub const SERVICE_NAME: &str = "strata-worker-agent";

/// The `process` span of one attempt; ends as `abandoned` if dropped before [`Self::end`].
#[derive(Debug)]
pub struct ProcessSpan {
    span: Span,
    traceparent: String,
}

impl ProcessSpan {
    /// Starts the span of `ready` run by `agent_id`, a child of the Ready's `traceparent` (a new
    /// trace when it has none).
    pub fn start(tracer: &SdkTracer, ready: &ObjectReady, agent_id: &str) -> Self {
        let parent = ready
            .trace
            .as_ref()
            .and_then(|t| parse_traceparent(&t.traceparent))
            .map_or_else(Context::new, |sc| {
                Context::new().with_remote_span_context(sc)
            });
        let span = tracer
            .span_builder("process")
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("strata.batch.id", ready.batch_id.clone()),
                KeyValue::new("strata.object.id", ready.object_id.clone()),
                KeyValue::new("strata.zone", ready.zone.clone()),
                KeyValue::new("strata.attempt", i64::from(ready.attempt)),
                KeyValue::new("strata.dispatch_epoch", ready.dispatch_epoch as i64),
                KeyValue::new("strata.agent.id", agent_id.to_owned()),
            ])
            .start_with_context(tracer, &parent);
        let traceparent = traceparent(span.span_context());
        Self { span, traceparent }
    }

    /// The span's `traceparent`, for the attempt's result records.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// Ends the span with the attempt's `outcome` (the results metric's label).
    pub fn end(mut self, outcome: &'static str) {
        self.span
            .set_attribute(KeyValue::new("strata.outcome", outcome));
        if outcome != "loaded" {
            self.span
                .set_status(Status::error(format!("attempt {outcome}")));
        }
        self.span.end();
    }
}

impl Drop for ProcessSpan {
    fn drop(&mut self) {
        if self.span.is_recording() {
            self.span
                .set_attribute(KeyValue::new("strata.outcome", "abandoned"));
            self.span.end();
        }
    }
}
