//! The `http` processor (`docs/design.md#agents-and-processors`): see [`Http`].

use std::fmt;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, StatusCode, Url};
use strata_proto::v1::ObjectReady;

use super::{Outcome, Processor, ready_json};

/// How much of a response body is read (bytes).
const BODY_READ: usize = 4096;
/// How much of an error response's body goes into the error (bytes).
const ERROR_BODY: usize = 1024;
/// How long the `info` of a success may be (characters).
const INFO_CHARS: usize = 200;

/// Why an [`Http`] processor cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpConfigError {
    /// The URL does not parse.
    #[error("invalid http processor URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The URL is not `http` or `https`.
    #[error("http processor URL {url:?} has scheme {scheme:?}; only http and https are supported")]
    UnsupportedScheme {
        /// The URL (password removed).
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// A configured header has an invalid name or value (the value is not shown).
    #[error("invalid http processor header {name:?}: {reason}")]
    InvalidHeader {
        /// The header name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built (e.g. the TLS backend failed to initialise).
    #[error("cannot build the http processor's client: {0}")]
    Client(#[source] reqwest::Error),
}

/// POSTs each object to a URL.
///
/// The request body is the [`ready_json`](super::ready_json) document, with
/// `content-type: application/json`, the configured headers, and `x-strata-batch-id`,
/// `x-strata-object-id` and `x-strata-attempt` (these four override configured headers of the
/// same name; an id that is not a valid header value is left out, it is in the body anyway).
///
/// The outcome, from the response status:
/// - 2xx → `Loaded`, `info` = the body's first line, trimmed, at most 200 characters (or
///   `HTTP <code>` when that is empty). The status decides: a body cut short after a 2xx
///   still counts as loaded;
/// - 5xx → retryable failure, `HTTP 503 Service Unavailable: <body prefix, ≤ 1 KiB>`;
/// - 4xx → permanent failure, likewise;
/// - 1xx and 3xx → permanent failure (redirects are not followed);
/// - no response (connection refused or reset, DNS, the request timeout) → retryable failure
///   naming the URL (without any password) and the transport error. Headers never appear in
///   errors or in `Debug` output (they may carry credentials).
///
/// At most 4 KiB of any response body is read.
#[derive(Clone)]
pub struct Http {
    url: Url,
    client: Client,
    headers: HeaderMap,
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http")
            .field("url", &redacted(&self.url))
            .field(
                "headers",
                &self.headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Http {
    /// POSTs to `url` (`http` or `https`) with `headers` added to every request;
    /// `request_timeout` bounds each request as a whole (connect to end of body), `None` = no
    /// bound of its own (the agent's execution timeout still applies).
    pub fn new(
        url: &str,
        headers: Vec<(String, String)>,
        request_timeout: Option<Duration>,
    ) -> Result<Self, HttpConfigError> {
        let url = Url::parse(url).map_err(|e| HttpConfigError::InvalidUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpConfigError::UnsupportedScheme {
                url: redacted(&url),
                scheme: url.scheme().to_string(),
            });
        }
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let invalid = |reason: String| HttpConfigError::InvalidHeader {
                name: name.clone(),
                reason,
            };
            let header_name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(e.to_string()))?;
            let mut header_value =
                HeaderValue::from_str(&value).map_err(|e| invalid(e.to_string()))?;
            header_value.set_sensitive(true);
            map.append(header_name, header_value);
        }
        let mut builder = Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(t) = request_timeout {
            builder = builder.timeout(t);
        }
        let client = builder.build().map_err(HttpConfigError::Client)?;
        Ok(Self {
            url,
            client,
            headers: map,
        })
    }

    /// The URL objects are posted to.
    pub fn url(&self) -> &Url {
        &self.url
    }

    fn request_headers(&self, ready: &ObjectReady) -> HeaderMap {
        let mut headers = self.headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let strata = [
            ("x-strata-batch-id", ready.batch_id.clone()),
            ("x-strata-object-id", ready.object_id.clone()),
            ("x-strata-attempt", ready.attempt.to_string()),
        ];
        for (name, value) in strata {
            let name = HeaderName::from_static(name);
            match HeaderValue::from_str(&value) {
                Ok(v) => {
                    headers.insert(name, v);
                }
                Err(_) => {
                    headers.remove(name);
                }
            }
        }
        headers
    }

    async fn post(&self, ready: &ObjectReady) -> Outcome {
        let body = ready_json(ready).to_string();
        let sent = self
            .client
            .post(self.url.clone())
            .headers(self.request_headers(ready))
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Failed {
                    retryable: true,
                    error: format!("POST {}: {}", redacted(&self.url), error_chain(e)),
                };
            }
        };
        let status = response.status();
        let mut body = Vec::new();
        while body.len() < BODY_READ {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        body.truncate(BODY_READ);
        let text = String::from_utf8_lossy(&body);
        outcome(status, &text)
    }
}

impl Processor for Http {
    async fn process(&self, ready: &ObjectReady) -> Outcome {
        self.post(ready).await
    }
}

/// The outcome of a response with `status` and (the start of) `body`.
fn outcome(status: StatusCode, body: &str) -> Outcome {
    if status.is_success() {
        let first = body.lines().next().unwrap_or("").trim();
        let info: String = first.chars().take(INFO_CHARS).collect();
        let info = info.trim_end().to_string();
        return Outcome::Loaded {
            info: if info.is_empty() {
                format!("HTTP {}", status.as_u16())
            } else {
                info
            },
        };
    }
    let mut error = format!("HTTP {status}");
    let prefix = body.trim();
    if !prefix.is_empty() {
        let mut end = prefix.len().min(ERROR_BODY);
        while !prefix.is_char_boundary(end) {
            end -= 1;
        }
        error.push_str(": ");
        error.push_str(prefix[..end].trim_end());
    }
    if status.is_redirection() {
        error.push_str(" (redirects are not followed)");
    }
    Outcome::Failed {
        retryable: status.is_server_error(),
        error,
    }
}

/// `url` without its password.
fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

/// A transport error and its causes, without the URL (the caller names it, redacted).
fn error_chain(e: reqwest::Error) -> String {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    if timeout && !text.contains("timed out") {
        text.push_str(" (timed out)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::extract::State;
    use axum::http::HeaderMap as AxumHeaders;
    use axum::routing::post;
    use tokio::sync::Mutex;

    fn ready(id: &str) -> ObjectReady {
        ObjectReady {
            batch_id: "b-1".into(),
            object_id: id.into(),
            zone: "raw".into(),
            attempt: 3,
            ..Default::default()
        }
    }

    #[derive(Default)]
    struct Seen {
        flaky_calls: AtomicUsize,
        requests: Mutex<Vec<(AxumHeaders, String)>>,
    }

    /// A local server: `/ok`, `/empty`, `/bad`, `/flaky` (503 once, then 200), `/slow`,
    /// `/moved`, recording what it receives.
    async fn server() -> (String, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route(
                "/ok",
                post(
                    |State(seen): State<Arc<Seen>>, headers: AxumHeaders, body: String| async move {
                        seen.requests.lock().await.push((headers, body));
                        "  wrote 12 rows  \nsecond line\n"
                    },
                ),
            )
            .route("/empty", post(|| async { "" }))
            .route(
                "/bad",
                post(|| async {
                    (
                        axum::http::StatusCode::BAD_REQUEST,
                        format!("unknown dataset\n{}", "x".repeat(3000)),
                    )
                }),
            )
            .route(
                "/flaky",
                post(|State(seen): State<Arc<Seen>>| async move {
                    if seen.flaky_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "warming up".to_string(),
                        )
                    } else {
                        (axum::http::StatusCode::OK, "done".to_string())
                    }
                }),
            )
            .route(
                "/slow",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route(
                "/moved",
                post(|| async {
                    (
                        axum::http::StatusCode::FOUND,
                        [(axum::http::header::LOCATION, "/ok")],
                        "",
                    )
                }),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    fn http(url: &str) -> Http {
        Http::new(
            url,
            vec![("Authorization".into(), "Bearer s3cret".into())],
            Some(Duration::from_secs(5)),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_2xx_loads_with_the_first_line_and_the_request_carries_the_object() {
        let (base, seen) = server().await;
        assert_eq!(
            http(&format!("{base}/ok")).process(&ready("obj-42")).await,
            Outcome::Loaded {
                info: "wrote 12 rows".into()
            }
        );
        let requests = seen.requests.lock().await;
        let (headers, body) = &requests[0];
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json, ready_json(&ready("obj-42")));
        assert_eq!(json["object_id"], "obj-42");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-strata-batch-id"], "b-1");
        assert_eq!(headers["x-strata-object-id"], "obj-42");
        assert_eq!(headers["x-strata-attempt"], "3");
        assert_eq!(headers["authorization"], "Bearer s3cret");
        drop(requests);

        assert_eq!(
            http(&format!("{base}/empty")).process(&ready("1")).await,
            Outcome::Loaded {
                info: "HTTP 200".into()
            }
        );
    }

    #[tokio::test]
    async fn a_4xx_is_permanent_a_5xx_retryable_and_redirects_are_not_followed() {
        let (base, seen) = server().await;
        match http(&format!("{base}/bad")).process(&ready("1")).await {
            Outcome::Failed { retryable, error } => {
                assert!(!retryable);
                assert!(
                    error.starts_with("HTTP 400 Bad Request: unknown dataset\nxxx"),
                    "{error}"
                );
                assert!(error.len() <= "HTTP 400 Bad Request: ".len() + ERROR_BODY);
            }
            other => panic!("{other:?}"),
        }
        let flaky = http(&format!("{base}/flaky"));
        assert_eq!(
            flaky.process(&ready("1")).await,
            Outcome::Failed {
                retryable: true,
                error: "HTTP 503 Service Unavailable: warming up".into()
            }
        );
        assert_eq!(
            flaky.process(&ready("1")).await,
            Outcome::Loaded {
                info: "done".into()
            }
        );
        assert_eq!(seen.flaky_calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            http(&format!("{base}/moved")).process(&ready("1")).await,
            Outcome::Failed {
                retryable: false,
                error: "HTTP 302 Found (redirects are not followed)".into()
            }
        );
        assert!(seen.requests.lock().await.is_empty(), "/ok never reached");
    }

    #[tokio::test]
    async fn a_timeout_or_a_refused_connection_is_retryable_without_secrets() {
        let (base, _) = server().await;
        let slow = Http::new(
            &format!("{base}/slow"),
            vec![("authorization".into(), "Bearer s3cret".into())],
            Some(Duration::from_millis(200)),
        )
        .unwrap();
        match slow.process(&ready("1")).await {
            Outcome::Failed { retryable, error } => {
                assert!(retryable);
                assert!(error.contains("timed out"), "{error}");
                assert!(!error.contains("s3cret"), "{error}");
            }
            other => panic!("{other:?}"),
        }

        // A port nobody listens on: bind one, then close it.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let refused = http(&format!("http://user:pw@{closed}/load"));
        match refused.process(&ready("1")).await {
            Outcome::Failed { retryable, error } => {
                assert!(retryable);
                assert!(error.starts_with(&format!("POST http://user:***@{closed}/load: ")));
                assert!(error.to_lowercase().contains("refused"), "{error}");
                assert!(
                    !error.contains("pw@") && !error.contains("s3cret"),
                    "{error}"
                );
            }
            other => panic!("{other:?}"),
        }
        let debug = format!("{refused:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("pw@"),
            "{debug}"
        );
    }

    #[test]
    fn the_url_and_headers_are_validated() {
        let e = Http::new("ftp://example.com/x", vec![], None).unwrap_err();
        assert!(
            e.to_string().contains("\"ftp://example.com/x\"") && e.to_string().contains("ftp"),
            "{e}"
        );
        let e = Http::new("not a url", vec![], None).unwrap_err();
        assert!(e.to_string().contains("\"not a url\""), "{e}");
        let e = Http::new(
            "http://example.com",
            vec![("x-token".into(), "bad\nvalue".into())],
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("x-token") && !e.to_string().contains("bad"),
            "{e}"
        );
        let ok = Http::new("https://example.com/load", vec![], None).unwrap();
        assert_eq!(ok.url().as_str(), "https://example.com/load");
    }

    #[test]
    fn success_info_is_bounded_and_error_bodies_are_cut_on_a_character() {
        match outcome(StatusCode::CREATED, &"é".repeat(500)) {
            Outcome::Loaded { info } => assert_eq!(info, "é".repeat(INFO_CHARS)),
            other => panic!("{other:?}"),
        }
        match outcome(StatusCode::BAD_GATEWAY, &"é".repeat(1000)) {
            Outcome::Failed { retryable, error } => {
                assert!(retryable);
                assert_eq!(error, format!("HTTP 502 Bad Gateway: {}", "é".repeat(512)));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            outcome(StatusCode::CONTINUE, ""),
            Outcome::Failed {
                retryable: false,
                ..
            }
        ));
    }
}
