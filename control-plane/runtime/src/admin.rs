//! The admin HTTP server: `/metrics` (Prometheus text), `/health/liveness` (the process answers)
//! and `/health/readiness` (200 when ready, else 503; a JSON body says why) on a port of its own.
//!
//! What is measured and what readiness means belong to each binary; this module serves them.

use std::future::Future;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

/// What the readiness check found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Readiness {
    /// Ready (200) or not (503).
    pub ready: bool,
    /// Fields of the JSON body beside `status` (`"ready"` or `"not ready"`), e.g. the reasons.
    pub details: Map<String, Value>,
}

/// The admin routes: `metrics` renders the Prometheus text, `readiness` runs the checks.
pub fn router<M, MF, R, RF>(metrics: M, readiness: R) -> Router
where
    M: Fn() -> MF + Clone + Send + Sync + 'static,
    MF: Future<Output = String> + Send + 'static,
    R: Fn() -> RF + Clone + Send + Sync + 'static,
    RF: Future<Output = Readiness> + Send + 'static,
{
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = metrics();
                async move {
                    (
                        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                        text.await,
                    )
                }
            }),
        )
        .route(
            "/health/liveness",
            get(|| async { axum::Json(json!({"status": "alive"})) }),
        )
        .route(
            "/health/readiness",
            get(move || {
                let checked = readiness();
                async move { readiness_response(checked.await) }
            }),
        )
}

fn readiness_response(r: Readiness) -> Response {
    let (code, status) = if r.ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    let mut body = r.details;
    body.insert("status".into(), status.into());
    (code, axum::Json(Value::Object(body))).into_response()
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve_until(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves `router` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, router: Router) -> std::io::Result<()> {
    serve_until(listener, router, std::future::pending()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_answers_with_its_status_and_details() {
        let mut details = Map::new();
        details.insert("reasons".into(), json!(["draining"]));
        let not = readiness_response(Readiness {
            ready: false,
            details,
        });
        assert_eq!(not.status(), StatusCode::SERVICE_UNAVAILABLE);
        let ready = readiness_response(Readiness {
            ready: true,
            details: Map::new(),
        });
        assert_eq!(ready.status(), StatusCode::OK);
    }
}
