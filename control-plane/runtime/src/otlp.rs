//! OTLP install and `traceparent`: a process's traces exported over OTLP/gRPC, and the W3C
//! trace-context header that carries a span from one process to the next.
//!
//! Nothing is installed unless the environment names an OTLP endpoint
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; the other standard
//! variables — `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_BSP_*`, `OTEL_RESOURCE_ATTRIBUTES` — apply as usual; `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` turn it off). [`install_from_env`] then exports with a batch span
//! processor and makes [`tracer`] return the tracer; otherwise [`tracer`] is `None` and no span
//! is created.
//!
//! Span ids are random, except where a span's ids must follow from data (a root span whose
//! trace a restarted process joins again): [`with_ids`] names them for the one span it builds.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The installed tracer, if traces are exported.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Whether traces are exported (one atomic load).
pub fn enabled() -> bool {
    TRACER.get().is_some()
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

    /// Exports what is still queued and stops, waiting at most `bound` (blocking: call it outside
    /// async code, while the runtime that built the exporter still runs).
    pub fn shutdown_blocking(self, bound: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(bound) {
            tracing::warn!(error = %e, "spans not all exported at shutdown");
        }
    }

    /// [`Self::shutdown_blocking`] on a blocking thread, so the runtime keeps driving the
    /// exporter's channel meanwhile.
    pub async fn shutdown(self, bound: Duration) {
        if let Err(e) = tokio::task::spawn_blocking(move || self.shutdown_blocking(bound)).await {
            tracing::warn!(error = %e, "flushing spans failed");
        }
    }
}

/// Installs the OTLP exporter when the environment names an endpoint (see the module doc), with
/// `default_service` as the service name unless `OTEL_SERVICE_NAME` says otherwise; `Ok(None)`
/// when it does not. Must run inside a Tokio runtime (the gRPC channel's tasks live there), once
/// per process.
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
        .with_id_generator(NamedOrRandomIds)
        .with_batch_exporter(exporter)
        .build();
    TRACER
        .set(provider.tracer(default_service))
        .map_err(|_| "traces were installed twice".to_owned())?;
    Ok(Some(TraceExport { provider, endpoint }))
}

thread_local! {
    /// Ids the next span built on this thread takes (see [`with_ids`]).
    static NAMED_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Runs `build` (which builds one span) with `ids` as that span's trace and span id: the SDK
/// takes a root span's ids from the id generator only.
pub fn with_ids<T>(ids: &SpanContext, build: impl FnOnce() -> T) -> T {
    NAMED_IDS.set(Some((ids.trace_id(), ids.span_id())));
    let built = build();
    NAMED_IDS.set(None);
    built
}

/// Random ids, except those [`with_ids`] names.
#[derive(Debug)]
struct NamedOrRandomIds;

impl IdGenerator for NamedOrRandomIds {
    fn new_trace_id(&self) -> TraceId {
        NAMED_IDS
            .get()
            .map_or_else(|| RandomIdGenerator::default().new_trace_id(), |(t, _)| t)
    }

    fn new_span_id(&self) -> SpanId {
        NAMED_IDS
            .get()
            .map_or_else(|| RandomIdGenerator::default().new_span_id(), |(_, s)| s)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).expect("valid");
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(traceparent(&sc), tp);
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(parse_traceparent(ok).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
        assert!(parse_traceparent(&format!("01-{}-extra", &ok[3..])).is_some());
    }

    #[test]
    fn nothing_is_enabled_without_an_endpoint() {
        // The test process sets no OTLP variable.
        if endpoint_from_env().is_none() {
            assert!(!enabled() && tracer().is_none());
        }
    }
}
