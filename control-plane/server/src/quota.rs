//! Per-principal quotas on the gRPC port: how fast each caller may call, how many of its calls
//! may be in progress, and how many `WatchBatch` streams it (and everyone together) may hold.
//!
//! [`QuotaLayer`] sits behind the authentication layer (the call's [`Principal`] is known) and in
//! front of every service; a call over a quota is answered at once with `RESOURCE_EXHAUSTED`,
//! naming the quota and the principal, with a retry hint (`grpc-retry-pushback-ms`, the trailer
//! gRPC clients' retry policies honour) — before any service decodes the request. A call holds
//! its place until its response ends: a `WatchBatch` stream until it closes.
//!
//! Health checks are exempt (orchestrators probe them, anonymously, and they cost nothing). The
//! state is one entry per principal seen (principals come from the auth file or a client CA, so
//! they are bounded; in `--insecure` mode every caller is the one anonymous principal).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, Either, Ready, ready};
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::auth::Principal;

/// The RPC path of `WatchBatch`.
const WATCH_PATH: &str = "/strata.v1.Orchestrator/WatchBatch";
/// Calls under this prefix are exempt.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// The quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSettings {
    /// Calls per second per principal, sustained; a burst of twice that is allowed.
    pub calls_per_sec: u32,
    /// Calls of one principal in progress at once (streams until they end).
    pub concurrent_calls: usize,
    /// `WatchBatch` streams one principal may hold open.
    pub watch_streams_per_principal: usize,
    /// `WatchBatch` streams open at once, all principals together.
    pub watch_streams_total: usize,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self {
            calls_per_sec: 500,
            concurrent_calls: 256,
            watch_streams_per_principal: 64,
            watch_streams_total: 4096,
        }
    }
}

/// Which quota refused a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Over the call rate; a call succeeds again after `retry_after`.
    Rate { retry_after: Duration },
    /// Too many calls of this principal in progress.
    Concurrent,
    /// Too many `WatchBatch` streams of this principal.
    WatchStreams,
    /// Too many `WatchBatch` streams in total.
    WatchStreamsTotal,
}

/// One principal's usage.
#[derive(Debug)]
struct Usage {
    /// Calls it may make now (a token bucket of `2 × calls_per_sec`).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
    in_flight: usize,
    watching: usize,
}

#[derive(Debug, Default)]
struct State {
    principals: HashMap<String, Usage>,
    watching: usize,
}

/// The quotas and everyone's usage.
#[derive(Debug)]
pub struct Quotas {
    settings: QuotaSettings,
    state: Mutex<State>,
}

/// A call's place: released when dropped.
#[derive(Debug)]
pub struct Permit {
    quotas: Arc<Quotas>,
    principal: String,
    watch: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.quotas.lock();
        if self.watch {
            state.watching = state.watching.saturating_sub(1);
        }
        if let Some(usage) = state.principals.get_mut(&self.principal) {
            usage.in_flight = usage.in_flight.saturating_sub(1);
            if self.watch {
                usage.watching = usage.watching.saturating_sub(1);
            }
        }
    }
}

impl Quotas {
    /// Quotas of `settings`, nothing in use.
    pub fn new(settings: QuotaSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a call of `principal` (a `WatchBatch` stream when `watch`) at `now`, or says
    /// which quota refuses it. A refused call uses nothing.
    pub fn admit(
        self: &Arc<Self>,
        principal: &str,
        watch: bool,
        now: Instant,
    ) -> Result<Permit, Refusal> {
        let s = self.settings;
        let rate = f64::from(s.calls_per_sec.max(1));
        let burst = 2.0 * rate;
        let mut state = self.lock();
        let watching_total = state.watching;
        let usage = state
            .principals
            .entry(principal.to_owned())
            .or_insert(Usage {
                tokens: burst,
                at: now,
                in_flight: 0,
                watching: 0,
            });
        let elapsed = now.saturating_duration_since(usage.at).as_secs_f64();
        usage.tokens = (usage.tokens + elapsed * rate).min(burst);
        usage.at = now;
        if usage.tokens < 1.0 {
            let wait = (1.0 - usage.tokens) / rate;
            return Err(Refusal::Rate {
                retry_after: Duration::from_secs_f64(wait).max(Duration::from_millis(1)),
            });
        }
        if usage.in_flight >= s.concurrent_calls {
            return Err(Refusal::Concurrent);
        }
        if watch && usage.watching >= s.watch_streams_per_principal {
            return Err(Refusal::WatchStreams);
        }
        if watch && watching_total >= s.watch_streams_total {
            return Err(Refusal::WatchStreamsTotal);
        }
        usage.tokens -= 1.0;
        usage.in_flight += 1;
        if watch {
            usage.watching += 1;
            state.watching += 1;
        }
        Ok(Permit {
            quotas: self.clone(),
            principal: principal.to_owned(),
            watch,
        })
    }

    /// The `RESOURCE_EXHAUSTED` status of `refusal` for `principal`, with a retry hint.
    pub fn status(&self, principal: &str, refusal: &Refusal) -> tonic::Status {
        let s = self.settings;
        let (message, retry_after) = match refusal {
            Refusal::Rate { retry_after } => (
                format!(
                    "principal {principal} is over its call rate ({} calls per second, bursts \
                     of {}); retry after {} ms",
                    s.calls_per_sec,
                    2 * u64::from(s.calls_per_sec),
                    retry_after.as_millis().max(1)
                ),
                *retry_after,
            ),
            Refusal::Concurrent => (
                format!(
                    "principal {principal} has {} calls in progress, its limit; retry when one \
                     ends",
                    s.concurrent_calls
                ),
                Duration::from_secs(1),
            ),
            Refusal::WatchStreams => (
                format!(
                    "principal {principal} holds {} WatchBatch streams, its limit; close one or \
                     retry later",
                    s.watch_streams_per_principal
                ),
                Duration::from_secs(1),
            ),
            Refusal::WatchStreamsTotal => (
                format!(
                    "the control plane holds {} WatchBatch streams, its limit; retry later",
                    s.watch_streams_total
                ),
                Duration::from_secs(1),
            ),
        };
        let mut status = tonic::Status::resource_exhausted(message);
        let millis = retry_after.as_millis().max(1).to_string();
        if let Ok(value) = millis.parse() {
            status
                .metadata_mut()
                .insert("grpc-retry-pushback-ms", value);
        }
        status
    }
}

/// Wraps services with [`QuotaService`].
#[derive(Debug, Clone)]
pub struct QuotaLayer {
    quotas: Arc<Quotas>,
}

impl QuotaLayer {
    /// A layer applying `quotas`.
    pub fn new(quotas: Arc<Quotas>) -> Self {
        Self { quotas }
    }
}

impl<S> Layer<S> for QuotaLayer {
    type Service = QuotaService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        QuotaService {
            inner,
            quotas: self.quotas.clone(),
        }
    }
}

/// See [`QuotaLayer`].
#[derive(Debug, Clone)]
pub struct QuotaService<S> {
    inner: S,
    quotas: Arc<Quotas>,
}

type Reply<E> = Result<http::Response<tonic::body::Body>, E>;

impl<S, B> Service<http::Request<B>> for QuotaService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<BoxFuture<'static, Reply<S::Error>>, Ready<Reply<S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if path.starts_with(HEALTH_PREFIX) {
            let call = self.inner.call(request);
            return Either::Left(Box::pin(call));
        }
        let principal = request.extensions().get::<Principal>().map_or_else(
            || Principal::open().name().to_owned(),
            |p| p.name().to_owned(),
        );
        let watch = path == WATCH_PATH;
        match self.quotas.admit(&principal, watch, Instant::now()) {
            Ok(permit) => {
                let call = self.inner.call(request);
                Either::Left(Box::pin(async move {
                    let response = call.await?;
                    Ok(response.map(|body| {
                        tonic::body::Body::new(Held {
                            body,
                            _permit: permit,
                        })
                    }))
                }))
            }
            Err(refusal) => Either::Right(ready(Ok(self
                .quotas
                .status(&principal, &refusal)
                .into_http()))),
        }
    }
}

/// A response body that holds its call's [`Permit`] until it ends.
struct Held {
    body: tonic::body::Body,
    _permit: Permit,
}

impl http_body::Body for Held {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas() -> Arc<Quotas> {
        Quotas::new(QuotaSettings {
            calls_per_sec: 10,
            concurrent_calls: 3,
            watch_streams_per_principal: 2,
            watch_streams_total: 3,
        })
    }

    #[test]
    fn a_burst_of_twice_the_rate_then_one_call_per_interval() {
        let q = quotas();
        let t0 = Instant::now();
        for _ in 0..20 {
            drop(q.admit("alice", false, t0).expect("within the burst"));
        }
        let Err(Refusal::Rate { retry_after }) = q.admit("alice", false, t0) else {
            panic!("over the burst");
        };
        assert_eq!(retry_after, Duration::from_millis(100));
        assert!(
            q.admit("bob", false, t0).is_ok(),
            "another principal is not charged"
        );
        let later = t0 + Duration::from_millis(100);
        drop(q.admit("alice", false, later).expect("a token came back"));
        assert!(q.admit("alice", false, later).is_err());
        let status = q.status("alice", &Refusal::Rate { retry_after });
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("alice") && status.message().contains("100 ms"));
        assert_eq!(
            status.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "100"
        );
    }

    #[test]
    fn calls_in_progress_hold_their_place_until_dropped() {
        let q = quotas();
        let t = Instant::now();
        let held: Vec<Permit> = (0..3)
            .map(|_| q.admit("alice", false, t).unwrap())
            .collect();
        assert_eq!(q.admit("alice", false, t).unwrap_err(), Refusal::Concurrent);
        assert!(q.admit("bob", false, t).is_ok());
        drop(held);
        assert!(q.admit("alice", false, t).is_ok());
    }

    #[test]
    fn watch_streams_are_bounded_per_principal_and_in_total() {
        let q = quotas();
        let t = Instant::now();
        let a1 = q.admit("alice", true, t).unwrap();
        let _a2 = q.admit("alice", true, t).unwrap();
        assert_eq!(
            q.admit("alice", true, t).unwrap_err(),
            Refusal::WatchStreams
        );
        assert!(q.admit("alice", false, t).is_ok(), "other calls still pass");
        let _b1 = q.admit("bob", true, t).unwrap();
        assert_eq!(
            q.admit("carol", true, t).unwrap_err(),
            Refusal::WatchStreamsTotal
        );
        drop(a1);
        assert!(
            q.admit("carol", true, t).is_ok(),
            "a closed stream frees a place"
        );
        let status = q.status("carol", &Refusal::WatchStreamsTotal);
        assert!(
            status.message().contains("3 WatchBatch streams"),
            "{status:?}"
        );
    }
}
