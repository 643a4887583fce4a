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

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};
use strata_proto::v1::ObjectReady;

/// The service name when `OTEL_SERVICE_NAME` does not say otherwise.
pub const SERVICE_NAME: &str = "strata-worker-agent";

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The installed tracer, if traces are exported.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// The OTLP endpoint the environment asks traces to go to, if any (see the module doc).
pub fn endpoint_from_env() -> Option<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
    {
        return None;
    }
    var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// The exporting pipeline; [`TraceExport::shutdown`] flushes it.
#[derive(Debug)]
pub struct TraceExport {
    provider: SdkTracerProvider,
    endpoint: String,
}

impl TraceExport {
    /// Where spans go.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Exports what is still queued and stops, waiting at most `bound` (on a blocking thread, so
    /// the runtime keeps driving the exporter's channel meanwhile).
    pub async fn shutdown(self, bound: Duration) {
        let provider = self.provider;
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(bound)).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "spans not all exported at shutdown"),
            Err(e) => tracing::warn!(error = %e, "flushing spans failed"),
        }
    }
}

/// Installs the OTLP exporter when the environment names an endpoint (see the module doc);
/// `Ok(None)` when it does not. Must run inside a Tokio runtime (the gRPC channel's tasks live
/// there), once per process.
pub fn install_from_env(default_service: &'static str) -> Result<Option<TraceExport>, String> {
    let Some(endpoint) = endpoint_from_env() else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| format!("OTLP trace exporter for {endpoint}: {e}"))?;
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").map_or(true, |v| v.trim().is_empty()) {
        resource = resource.with_service_name(default_service);
    }
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build();
    TRACER
        .set(provider.tracer("strata-worker-agent"))
        .map_err(|_| "traces were installed twice".to_owned())?;
    Ok(Some(TraceExport { provider, endpoint }))
}

/// The W3C `traceparent` of a span context.
pub fn traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// The remote span context of a W3C `traceparent` (version 00 layout; later versions are read
/// by their first four fields, as the spec asks), if valid.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    if version.len() != 2
        || version.eq_ignore_ascii_case("ff")
        || (version == "00" && rest.is_some())
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    u8::from_str_radix(version, 16).ok()?;
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(trace) || !hex(span) {
        return None;
    }
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & 1),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).expect("valid");
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(traceparent(&sc), tp);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }
}
