//! # strata-client
//!
//! A typed client of Strata's gRPC API over the generated `strata.v1` stubs, used by the
//! `strata` CLI:
//!
//! - every unary call has a deadline ([`ClientOptions::timeout`], tower's timeout layer inside
//!   tonic's channel); streams (`WatchBatch`) are not cut by it;
//! - **idempotent calls only** are retried when the control plane is unavailable (reads,
//!   `PlanBatch`, `CancelBatch`, and `SubmitBatch` *with* an idempotency key); `SubmitBatch`
//!   without a key, `RetryNow` and `ReplayDeadLetters` are sent once;
//! - errors are one line and actionable: an unreachable endpoint names the address and what to
//!   start; a refusal carries the gRPC code and the server's message (which names the offending
//!   ids).
//!
//! ```no_run
//! # async fn demo() -> Result<(), strata_client::ClientError> {
//! use strata_client::{Client, ClientOptions};
//! let client = Client::connect("http://127.0.0.1:50051", ClientOptions::default())?;
//! let batch = client.get_batch("b-123").await?;
//! println!("{:?}", batch.state());
//! # Ok(()) }
//! ```
//!
//! TLS, mutual TLS and a bearer token are [`ClientOptions::security`] ([`channel`]): an
//! `https://` endpoint is reached over TLS, the token is sent on every call and never shown.
//!
//! Depends on the wire crate and tonic only: no Strata domain logic.

pub mod channel;

use std::future::Future;
use std::time::Duration;

use strata_proto::v1 as pb;
use strata_proto::v1::agent_registry_client::AgentRegistryClient;
use strata_proto::v1::orchestrator_client::OrchestratorClient;
use tonic::{Code, Status, Streaming};

pub use crate::channel::{AuthChannel, IdentityFiles, Security, Token};

/// The control plane's default gRPC address (what `strata dev` and `strata-control-plane` serve).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50051";

/// How the client talks to the control plane.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline of one unary call.
    pub timeout: Duration,
    /// Deadline of establishing the connection.
    pub connect_timeout: Duration,
    /// Attempts of an idempotent call while the server is unavailable (1 = no retry).
    pub attempts: u32,
    /// The largest message the client sends or accepts.
    pub max_message_bytes: usize,
    /// TLS (the CA to trust, a client certificate) and the bearer token.
    pub security: Security,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            attempts: 3,
            max_message_bytes: strata_proto::DEFAULT_MAX_MESSAGE_BYTES,
            security: Security::default(),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not a usable URL.
    #[error("invalid endpoint {endpoint:?}: {reason} (expected e.g. {DEFAULT_ENDPOINT})")]
    Endpoint {
        /// What was given.
        endpoint: String,
        /// Why it is not usable.
        reason: String,
    },
    /// Nothing answers at the endpoint.
    #[error(
        "cannot reach the control plane at {endpoint} ({reason}); start one with `strata dev` \
         (or `strata-control-plane`), or point --endpoint / STRATA_ENDPOINT at it"
    )]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// The transport's reason.
        reason: String,
    },
    /// A CA, client certificate, key or token cannot be used (the message names the file or
    /// the setting, never a token).
    #[error("{detail}")]
    Credentials {
        /// What is wrong.
        detail: String,
    },
    /// The TLS handshake with the control plane failed (an untrusted certificate, a refused
    /// client certificate, a plaintext server).
    #[error(
        "TLS with the control plane at {endpoint} failed ({reason}); check the CA given for it \
         (the one that signed its certificate), the client certificate, and that it serves TLS"
    )]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// The handshake's reason.
        reason: String,
    },
    /// A plaintext connection broke during the call: typically a plaintext client of a TLS port.
    #[error(
        "the control plane at {endpoint} closed the connection ({reason}); if it serves TLS, \
         use an https:// endpoint and the CA that signed its certificate"
    )]
    Dropped {
        /// The endpoint.
        endpoint: String,
        /// The transport's reason.
        reason: String,
    },
    /// The control plane answered with an error.
    #[error("{}: {}", code_name(status.code()), status.message())]
    Status {
        /// The status (code, message, details).
        status: Status,
    },
}

impl ClientError {
    /// The gRPC code, if the server answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status { status } => Some(status.code()),
            _ => None,
        }
    }

    fn from_status(endpoint: &str, status: Status) -> Self {
        // A status the transport made (it has a cause) rather than one the server sent.
        let from_transport = std::error::Error::source(&status).is_some()
            || (status.code() == Code::Unavailable && is_transport(&status));
        if !from_transport
            || !matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
            )
        {
            return Self::Status { status };
        }
        let reason = transport_reason(&status);
        if endpoint.starts_with("https://") && is_tls_failure(&status) {
            return Self::Tls {
                endpoint: endpoint.to_owned(),
                reason,
            };
        }
        if status.code() == Code::Unavailable && is_transport(&status) {
            return Self::Unreachable {
                endpoint: endpoint.to_owned(),
                reason,
            };
        }
        if endpoint.starts_with("https://") {
            // Closed by the server after the handshake: a refused client certificate (TLS 1.3).
            return Self::Tls {
                endpoint: endpoint.to_owned(),
                reason,
            };
        }
        Self::Dropped {
            endpoint: endpoint.to_owned(),
            reason,
        }
    }
}

/// `INVALID_ARGUMENT` rather than `InvalidArgument`: the names grpcurl and the docs use.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A connection-level failure (refused, reset, DNS) rather than the server saying "unavailable".
fn is_transport(status: &Status) -> bool {
    let text = format!(
        "{} {:?}",
        status.message(),
        std::error::Error::source(status)
    );
    [
        "connect",
        "transport",
        "Connection refused",
        "dns",
        "broken pipe",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// A failed TLS handshake (rustls' errors, tonic's own TLS errors).
fn is_tls_failure(status: &Status) -> bool {
    let text = channel::error_chain(status);
    [
        "certificate",
        "InvalidCertificate",
        "alert",
        "AlertReceived",
        "HTTP/2 was not negotiated",
        "handshake",
        "tls",
        "TLS",
        "CorruptMessage",
        "InvalidContentType",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// The innermost cause of a transport failure ("Connection refused (os error 111)").
fn transport_reason(status: &Status) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    let mut last = None;
    while let Some(c) = cause {
        last = Some(c.to_string());
        cause = c.source();
    }
    last.unwrap_or_else(|| status.message().to_owned())
}

/// A client of one control plane. Cheap to clone (one HTTP/2 connection, shared).
#[derive(Debug, Clone)]
pub struct Client {
    orchestrator: OrchestratorClient<AuthChannel>,
    agents: AgentRegistryClient<AuthChannel>,
    endpoint: String,
    attempts: u32,
}

/// The result of a call.
pub type Result<T> = std::result::Result<T, ClientError>;

impl Client {
    /// A client of `endpoint` (`http://host:port`, or `https://host:port` for TLS; `host:port`
    /// is taken as plain HTTP, or as TLS when [`ClientOptions::security`] names a CA or a client
    /// certificate). Connects lazily: an unreachable endpoint is reported by the first call; a
    /// CA, certificate or key file that cannot be read is an error now.
    pub fn connect(endpoint: &str, options: ClientOptions) -> Result<Self> {
        let (endpoint, channel) = channel::connect(endpoint, &options)?;
        Ok(Self {
            orchestrator: OrchestratorClient::new(channel.clone())
                .max_decoding_message_size(options.max_message_bytes)
                .max_encoding_message_size(options.max_message_bytes),
            agents: AgentRegistryClient::new(channel),
            endpoint,
            attempts: options.attempts.max(1),
        })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends an idempotent call, again while the server is unavailable (100 ms, then 400 ms, …).
    async fn idempotent<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut(OrchestratorClient<AuthChannel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match call(self.orchestrator.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s)
                    if attempt < self.attempts
                        && matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded) =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff *= 4;
                    attempt += 1;
                }
                Err(s) => return Err(ClientError::from_status(&self.endpoint, s)),
            }
        }
    }

    /// Sends a call once.
    async fn once<T>(
        &self,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    ) -> Result<T> {
        call.await
            .map(tonic::Response::into_inner)
            .map_err(|s| ClientError::from_status(&self.endpoint, s))
    }

    /// `SubmitBatch`, or `SubmitBatchStream` when the request is larger than
    /// [`STREAM_ABOVE_BYTES`] (the unary call is limited to the server's message size, 16 MiB by
    /// default): the same answer either way. Retried while unavailable only when
    /// `request.idempotency_key` is set (the server answers a repeat with the same batch).
    pub async fn submit(&self, request: pb::SubmitBatchRequest) -> Result<pb::SubmitBatchResponse> {
        if prost::Message::encoded_len(&request) > STREAM_ABOVE_BYTES {
            return self.submit_stream(&request).await;
        }
        if request.idempotency_key.is_empty() {
            self.once(self.orchestrator.clone().submit_batch(request))
                .await
        } else {
            self.idempotent(|mut c| {
                let r = request.clone();
                async move { c.submit_batch(r).await }
            })
            .await
        }
    }

    /// `SubmitBatchStream` of `request`: its header, then its objects or catalogue bytes in
    /// chunks of about [`STREAM_CHUNK_BYTES`]. Retried like [`Client::submit`].
    pub async fn submit_stream(
        &self,
        request: &pb::SubmitBatchRequest,
    ) -> Result<pb::SubmitBatchResponse> {
        let messages = stream_messages(request);
        if request.idempotency_key.is_empty() {
            self.once(
                self.orchestrator
                    .clone()
                    .submit_batch_stream(tokio_stream::iter(messages)),
            )
            .await
        } else {
            self.idempotent(|mut c| {
                let m = messages.clone();
                async move { c.submit_batch_stream(tokio_stream::iter(m)).await }
            })
            .await
        }
    }

    /// `PlanBatch` (a dry run).
    pub async fn plan(&self, request: pb::PlanBatchRequest) -> Result<pb::PlanBatchResponse> {
        self.idempotent(|mut c| {
            let r = request.clone();
            async move { c.plan_batch(r).await }
        })
        .await
    }

    /// `GetBatch`.
    pub async fn get_batch(&self, batch_id: &str) -> Result<pb::Batch> {
        let r = pb::GetBatchRequest {
            batch_id: batch_id.into(),
        };
        self.idempotent(|mut c| {
            let r = r.clone();
            async move { c.get_batch(r).await }
        })
        .await
    }

    /// `ListBatches`.
    pub async fn list_batches(
        &self,
        request: pb::ListBatchesRequest,
    ) -> Result<pb::ListBatchesResponse> {
        self.idempotent(|mut c| {
            let r = request.clone();
            async move { c.list_batches(r).await }
        })
        .await
    }

    /// `GetObject`.
    pub async fn get_object(&self, batch_id: &str, object_id: &str) -> Result<pb::ObjectStatus> {
        let r = pb::GetObjectRequest {
            batch_id: batch_id.into(),
            object_id: object_id.into(),
        };
        self.idempotent(|mut c| {
            let r = r.clone();
            async move { c.get_object(r).await }
        })
        .await
    }

    /// `WatchBatch`: a snapshot, then every change, until the batch is terminal. Opening the
    /// stream is retried while unavailable; a broken stream is the caller's to reopen (the
    /// snapshot makes that safe).
    pub async fn watch(&self, batch_id: &str) -> Result<Streaming<pb::WatchBatchResponse>> {
        let r = pb::WatchBatchRequest {
            batch_id: batch_id.into(),
        };
        self.idempotent(|mut c| {
            let r = r.clone();
            async move { c.watch_batch(r).await }
        })
        .await
    }

    /// `CancelBatch` (idempotent on a cancelled batch).
    pub async fn cancel(&self, batch_id: &str, reason: &str) -> Result<pb::Batch> {
        let r = pb::CancelBatchRequest {
            batch_id: batch_id.into(),
            reason: reason.into(),
        };
        self.idempotent(|mut c| {
            let r = r.clone();
            async move { c.cancel_batch(r).await }
        })
        .await
    }

    /// `ListRetries`.
    pub async fn list_retries(
        &self,
        request: pb::ListRetriesRequest,
    ) -> Result<pb::ListRetriesResponse> {
        self.idempotent(|mut c| {
            let r = request.clone();
            async move { c.list_retries(r).await }
        })
        .await
    }

    /// `GetRetry`.
    pub async fn get_retry(&self, batch_id: &str, object_id: &str) -> Result<pb::GetRetryResponse> {
        let r = pb::GetRetryRequest {
            batch_id: batch_id.into(),
            object_id: object_id.into(),
        };
        self.idempotent(|mut c| {
            let r = r.clone();
            async move { c.get_retry(r).await }
        })
        .await
    }

    /// `RetryNow` (sent once).
    pub async fn retry_now(&self, batch_id: &str, object_id: &str) -> Result<pb::RetryInfo> {
        self.once(self.orchestrator.clone().retry_now(pb::RetryNowRequest {
            batch_id: batch_id.into(),
            object_id: object_id.into(),
        }))
        .await
    }

    /// `ListDeadLetters`.
    pub async fn list_dead_letters(
        &self,
        request: pb::ListDeadLettersRequest,
    ) -> Result<pb::ListDeadLettersResponse> {
        self.idempotent(|mut c| {
            let r = request.clone();
            async move { c.list_dead_letters(r).await }
        })
        .await
    }

    /// `ReplayDeadLetters` (sent once).
    pub async fn replay_dead_letters(
        &self,
        request: pb::ReplayDeadLettersRequest,
    ) -> Result<pb::ReplayDeadLettersResponse> {
        self.once(self.orchestrator.clone().replay_dead_letters(request))
            .await
    }

    /// `AgentRegistry.ListAgents`.
    pub async fn list_agents(
        &self,
        zone: &str,
        include_inactive: bool,
    ) -> Result<pb::ListAgentsResponse> {
        let request = pb::ListAgentsRequest {
            zone: zone.into(),
            include_inactive,
        };
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.agents.clone().list_agents(request.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if attempt < self.attempts && s.code() == Code::Unavailable => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 4;
                    attempt += 1;
                }
                Err(s) => return Err(ClientError::from_status(&self.endpoint, s)),
            }
        }
    }
}

/// Submissions larger than this (encoded) go through `SubmitBatchStream`.
pub const STREAM_ABOVE_BYTES: usize = 15 << 20;
/// About how much one message of a `SubmitBatchStream` call carries.
pub const STREAM_CHUNK_BYTES: usize = 4 << 20;

/// The messages of a `SubmitBatchStream` call equivalent to `request`.
pub fn stream_messages(request: &pb::SubmitBatchRequest) -> Vec<pb::SubmitBatchStreamRequest> {
    use pb::submit_batch_stream_request::Chunk;
    let message = |chunk| pb::SubmitBatchStreamRequest { chunk: Some(chunk) };
    let mut header = pb::SubmitBatchHeader {
        idempotency_key: request.idempotency_key.clone(),
        options: request.options.clone(),
        ..Default::default()
    };
    let mut chunks = Vec::new();
    match request.input.as_ref().and_then(|i| i.source.as_ref()) {
        Some(pb::batch_input::Source::Catalogue(doc)) => {
            // UNSPECIFIED in a header means "object chunks follow": name the format.
            header.catalogue_format = match doc.format() {
                pb::CatalogueFormat::Unspecified => pb::CatalogueFormat::Auto,
                f => f,
            } as i32;
            for piece in doc.content.chunks(STREAM_CHUNK_BYTES) {
                chunks.push(message(Chunk::Catalogue(pb::CatalogueChunk {
                    content: piece.to_vec(),
                })));
            }
        }
        Some(pb::batch_input::Source::Objects(list)) => {
            header.expected_object_count = list.objects.len() as u64;
            let mut current = pb::ObjectList::default();
            let mut size = 0;
            for o in &list.objects {
                let len = prost::Message::encoded_len(o);
                if size + len > STREAM_CHUNK_BYTES && !current.objects.is_empty() {
                    chunks.push(message(Chunk::Objects(std::mem::take(&mut current))));
                    size = 0;
                }
                size += len;
                current.objects.push(o.clone());
            }
            if !current.objects.is_empty() {
                chunks.push(message(Chunk::Objects(current)));
            }
        }
        None => {}
    }
    let mut messages = Vec::with_capacity(chunks.len() + 1);
    messages.push(message(Chunk::Header(header)));
    messages.extend(chunks);
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_endpoint_names_the_address_and_what_to_start() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let client = Client::connect(
            &format!("127.0.0.1:{port}"),
            ClientOptions {
                attempts: 2,
                ..ClientOptions::default()
            },
        )
        .expect("valid endpoint");
        let err = client.get_batch("b-1").await.expect_err("nothing listens");
        let text = err.to_string();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
        assert!(text.contains(&format!("http://127.0.0.1:{port}")), "{text}");
        assert!(text.contains("strata dev"), "{text}");
        assert!(!text.contains('\n'), "one line: {text}");
    }

    #[test]
    fn a_large_submission_is_cut_into_a_header_and_ordered_chunks() {
        let objects: Vec<pb::ObjectDefinition> = (0..3000)
            .map(|i| pb::ObjectDefinition {
                id: (1000 + i).to_string(),
                name: "x".repeat(4096),
                ..Default::default()
            })
            .collect();
        let request = pb::SubmitBatchRequest {
            idempotency_key: "k".into(),
            input: Some(pb::BatchInput {
                source: Some(pb::batch_input::Source::Objects(pb::ObjectList {
                    objects: objects.clone(),
                })),
            }),
            options: Some(pb::SubmitOptions {
                all: true,
                ..Default::default()
            }),
        };
        let messages = stream_messages(&request);
        use pb::submit_batch_stream_request::Chunk;
        let Some(Chunk::Header(header)) = &messages[0].chunk else {
            panic!("first message is not the header: {:?}", messages[0]);
        };
        assert_eq!(header.expected_object_count, 3000);
        assert_eq!(header.catalogue_format(), pb::CatalogueFormat::Unspecified);
        assert!(header.options.as_ref().is_some_and(|o| o.all));
        let mut sent = Vec::new();
        for m in &messages[1..] {
            assert!(prost::Message::encoded_len(m) <= STREAM_CHUNK_BYTES + 8192);
            let Some(Chunk::Objects(list)) = &m.chunk else {
                panic!("not an object chunk");
            };
            sent.extend(list.objects.iter().cloned());
        }
        assert!(
            messages.len() > 3,
            "12 MB in 4 MiB chunks: {}",
            messages.len()
        );
        assert_eq!(sent, objects, "every object once, in order");

        let document = vec![b'['; 9 << 20];
        let request = pb::SubmitBatchRequest {
            input: Some(pb::BatchInput {
                source: Some(pb::batch_input::Source::Catalogue(pb::CatalogueDocument {
                    format: pb::CatalogueFormat::Unspecified as i32,
                    content: document.clone(),
                })),
            }),
            ..Default::default()
        };
        let messages = stream_messages(&request);
        let Some(Chunk::Header(header)) = &messages[0].chunk else {
            panic!("no header");
        };
        assert_eq!(
            header.catalogue_format(),
            pb::CatalogueFormat::Auto,
            "a header without a format would announce object chunks"
        );
        let joined: Vec<u8> = messages[1..]
            .iter()
            .flat_map(|m| match &m.chunk {
                Some(Chunk::Catalogue(c)) => c.content.clone(),
                other => panic!("not a catalogue chunk: {other:?}"),
            })
            .collect();
        assert_eq!(messages.len(), 4, "9 MiB in 4 MiB chunks");
        assert_eq!(joined, document);
    }

    #[test]
    fn a_bad_endpoint_is_refused_with_an_example() {
        let err = Client::connect("http://bad host", ClientOptions::default())
            .expect_err("not a URL")
            .to_string();
        assert!(
            err.contains("bad host") && err.contains(DEFAULT_ENDPOINT),
            "{err}"
        );
    }
}
