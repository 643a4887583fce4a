//! The errors of the gRPC service and their mapping to `tonic::Status` — the one place where that
//! mapping happens (as in Quickwit's `quickwit-proto/src/error.rs`).
//!
//! Messages are lowercase and name the ids involved. A planning rejection also carries its
//! machine-readable detail: a `strata.v1.BatchRejection` packed in a `google.protobuf.Any` inside a
//! `google.rpc.Status`, sent as `grpc-status-details-bin` (see `BatchRejection` in
//! `orchestrator.proto`). The detail is capped so that it fits the HTTP/2 header budget of every
//! client (trailers share the default 16 KiB header-list limit of hyper clients).

use prost::Message;
use strata_core::catalogue::{CatalogueError, Problem, ProblemKind};
use strata_core::planner::{PlanError, Violation};
use strata_proto::v1 as pb;
use tonic::{Code, Status};

use crate::driver::DriverError;
use crate::ports::PortError;

/// Largest encoded `BatchRejection` put in a status (before base64).
const MAX_DETAIL_BYTES: usize = 6 * 1024;
/// Largest status message, in bytes (longer ones are cut at a character boundary).
const MAX_MESSAGE_BYTES: usize = 2 * 1024;

/// Why an RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed (a missing field, a bad token, inconsistent options).
    #[error("{0}")]
    InvalidArgument(String),
    /// The batch cannot be planned: its graph is invalid, it is empty or over the cap.
    #[error("{0}")]
    Plan(#[from] PlanError),
    /// The objects (a catalogue document or object definitions) cannot be read.
    #[error("{0}")]
    Catalogue(#[from] CatalogueError),
    /// No such batch.
    #[error("batch {0} not found")]
    BatchNotFound(String),
    /// No such agent (never registered here, or forgotten after a control-plane restart).
    #[error("agent {0} is not registered; register again")]
    AgentNotFound(String),
    /// No such object in the batch.
    #[error("object {object} is not in batch {batch}")]
    ObjectNotFound {
        /// The batch.
        batch: String,
        /// The object.
        object: String,
    },
    /// The idempotency key names another submission.
    #[error("idempotency key {key:?} was already used for batch {batch_id} with different content")]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The batch it names.
        batch_id: String,
    },
    /// The operation does not apply in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A size limit of the server was exceeded.
    #[error("{0}")]
    TooLarge(String),
    /// The request asks for something this server does not support yet.
    #[error("{0}")]
    Unsupported(String),
    /// The state store or the data plane failed.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The request stream of a client-streaming call failed (the client's status is kept).
    #[error("request stream failed: {}", .0.message())]
    Stream(Status),
    /// The caller presented no credentials, or unknown ones.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's principal may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The control plane is stopping.
    #[error("the control plane is shutting down")]
    ShuttingDown,
    /// A bug or an unexpected failure inside the service.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// Whether retrying the same call later may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            ServiceError::Port(e) => e.retryable(),
            ServiceError::ShuttingDown => true,
            _ => false,
        }
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            ServiceError::InvalidArgument(_)
            | ServiceError::Plan(_)
            | ServiceError::Catalogue(_) => Code::InvalidArgument,
            ServiceError::BatchNotFound(_)
            | ServiceError::ObjectNotFound { .. }
            | ServiceError::AgentNotFound(_) => Code::NotFound,
            ServiceError::IdempotencyConflict { .. } => Code::AlreadyExists,
            ServiceError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServiceError::TooLarge(_) => Code::ResourceExhausted,
            ServiceError::Unauthenticated(_) => Code::Unauthenticated,
            ServiceError::PermissionDenied(_) => Code::PermissionDenied,
            ServiceError::Unsupported(_) => Code::Unimplemented,
            ServiceError::Port(e) if e.retryable() => Code::Unavailable,
            ServiceError::ShuttingDown => Code::Unavailable,
            ServiceError::Stream(s) => s.code(),
            ServiceError::Port(_) | ServiceError::Internal(_) => Code::Internal,
        }
    }

    /// The error of a failed read from a request stream: a message over the decoding limit is
    /// `RESOURCE_EXHAUSTED` (tonic reports it as `OUT_OF_RANGE`).
    pub fn from_request_stream(status: Status) -> Self {
        match oversize_message(status.code(), status.message()) {
            Some(message) => ServiceError::TooLarge(message),
            None => ServiceError::Stream(status),
        }
    }

    /// The machine-readable rejection detail, for planning and catalogue errors.
    pub fn rejection(&self) -> Option<pb::BatchRejection> {
        match self {
            ServiceError::Plan(e) => Some(plan_rejection(e)),
            ServiceError::Catalogue(e) => Some(catalogue_rejection(&e.problems)),
            _ => None,
        }
    }
}

impl From<DriverError> for ServiceError {
    fn from(e: DriverError) -> Self {
        match e {
            DriverError::BatchNotFound(id) => ServiceError::BatchNotFound(id),
            DriverError::ObjectNotFound { batch, object } => {
                ServiceError::ObjectNotFound { batch, object }
            }
            DriverError::IdempotencyConflict { key, batch_id } => {
                ServiceError::IdempotencyConflict { key, batch_id }
            }
            DriverError::FailedPrecondition(m) => ServiceError::FailedPrecondition(m),
            DriverError::Port(e) => ServiceError::Port(e),
            DriverError::ShuttingDown => ServiceError::ShuttingDown,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let code = e.code();
        let message = truncate(e.to_string(), MAX_MESSAGE_BYTES);
        match e.rejection() {
            Some(rejection) => {
                let details = rpc_status_bytes(code, &message, &rejection);
                Status::with_details(code, message, details.into())
            }
            None => Status::new(code, message),
        }
    }
}

/// tonic's message when a received message is over the decoding limit.
const TONIC_OVERSIZE: &str = "Error, decoded message length too large";

/// The contract's message for a request over the size limit, if `message` is tonic's.
fn oversize_message(code: Code, message: &str) -> Option<String> {
    if code != Code::OutOfRange || !message.starts_with(TONIC_OVERSIZE) {
        return None;
    }
    // "…: found {len} bytes, the limit is: {limit} bytes"
    let numbers: Vec<&str> = message
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect();
    Some(match numbers.as_slice() {
        [found, limit] => format!(
            "request message of {found} bytes is over the limit of {limit} bytes; send larger batches with SubmitBatchStream, in chunks below the limit"
        ),
        _ => "request message is over the size limit; send larger batches with SubmitBatchStream, in chunks below the limit".to_owned(),
    })
}

/// Wraps a tonic service so that a unary request over its decoding limit is answered
/// `RESOURCE_EXHAUSTED`, as the contract says (and as other gRPC implementations do), instead of
/// tonic's `OUT_OF_RANGE`. Such a rejection is a trailers-only response: its status is in the
/// headers, which are rewritten; every other response passes untouched.
#[derive(Debug, Clone)]
pub struct OversizeAsResourceExhausted<S> {
    inner: S,
}

impl<S> OversizeAsResourceExhausted<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService
    for OversizeAsResourceExhausted<S>
{
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<B>>
    for OversizeAsResourceExhausted<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            let rewritten = Status::from_header_map(headers)
                .and_then(|s| oversize_message(s.code(), s.message()));
            if let Some(message) = rewritten {
                // Replaces grpc-status and grpc-message.
                let _ = Status::new(Code::ResourceExhausted, message).add_header(headers);
            }
            Ok(response)
        })
    }
}

/// `google.rpc.Status` (google/rpc/status.proto), the envelope of `grpc-status-details-bin`.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    /// The status code (a `google.rpc.Code` value).
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// The developer-facing message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// The details.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types::Any>,
}

fn rpc_status_bytes(code: Code, message: &str, rejection: &pb::BatchRejection) -> Vec<u8> {
    let any = prost_types::Any {
        type_url: <pb::BatchRejection as prost::Name>::type_url(),
        value: rejection.encode_to_vec(),
    };
    RpcStatus {
        code: code as i32,
        message: message.to_owned(),
        details: vec![any],
    }
    .encode_to_vec()
}

/// Cuts `s` to at most `max` bytes at a character boundary, saying so.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut cut = max.saturating_sub(16);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str(" … (truncated)");
    s
}

/// The detail of a planning error; violations beyond the size budget are counted in
/// `omitted_count`.
pub fn plan_rejection(e: &PlanError) -> pb::BatchRejection {
    let mut r = pb::BatchRejection::default();
    match e {
        PlanError::EmptyBatch => r.empty_batch = true,
        PlanError::TooLarge { count, max } => {
            r.object_count = *count as u64;
            r.max_objects = *max as u64;
        }
        PlanError::Invalid { violations } => {
            let mut budget = MAX_DETAIL_BYTES;
            for v in violations {
                let v = violation(v);
                let len = v.encoded_len() + 4;
                if len > budget {
                    r.omitted_count += 1;
                    continue;
                }
                budget -= len;
                r.violations.push(v);
            }
        }
    }
    r
}

/// The detail of unreadable objects; problems beyond the size budget are counted in
/// `omitted_count`.
pub fn catalogue_rejection(problems: &[Problem]) -> pb::BatchRejection {
    let mut r = pb::BatchRejection::default();
    let mut budget = MAX_DETAIL_BYTES;
    for p in problems {
        let p = problem(p);
        let len = p.encoded_len() + 4;
        if len > budget {
            r.omitted_count += 1;
            continue;
        }
        budget -= len;
        r.problems.push(p);
    }
    r
}

fn violation(v: &Violation) -> pb::PlanViolation {
    use pb::plan_violation::Kind;
    let mut out = pb::PlanViolation {
        message: v.to_string(),
        ..Default::default()
    };
    match v {
        Violation::DuplicateId { id, positions } => {
            out.set_kind(Kind::DuplicateId);
            out.object_id = id.to_string();
            out.positions = positions.iter().map(|&p| p as u64).collect();
        }
        Violation::SelfParent { id } => {
            out.set_kind(Kind::SelfParent);
            out.object_id = id.to_string();
        }
        Violation::UnknownParent { id, parent } => {
            out.set_kind(Kind::UnknownParent);
            out.object_id = id.to_string();
            out.parent_id = parent.to_string();
        }
        Violation::LayerInversion {
            id,
            layer,
            parent,
            parent_layer,
        } => {
            out.set_kind(Kind::LayerInversion);
            out.object_id = id.to_string();
            out.parent_id = parent.to_string();
            out.layer = u32::from(*layer);
            out.parent_layer = u32::from(*parent_layer);
        }
        Violation::UnknownTarget { id } => {
            out.set_kind(Kind::UnknownTarget);
            out.object_id = id.to_string();
        }
        Violation::Cycle { path } => {
            out.set_kind(Kind::Cycle);
            out.cycle = path.iter().map(ToString::to_string).collect();
        }
    }
    out
}

fn problem(p: &Problem) -> pb::CatalogueProblem {
    use pb::catalogue_problem::Kind;
    let kind = match p.kind {
        ProblemKind::Malformed => Kind::Malformed,
        ProblemKind::MissingId => Kind::MissingId,
        ProblemKind::InvalidId => Kind::InvalidId,
        ProblemKind::InvalidParent => Kind::InvalidParent,
        ProblemKind::InvalidZone => Kind::InvalidZone,
        ProblemKind::InvalidFrequency => Kind::InvalidFrequency,
        ProblemKind::InvalidTimestamp => Kind::InvalidTimestamp,
        ProblemKind::InvalidValue => Kind::InvalidValue,
        ProblemKind::OverLimit => Kind::OverLimit,
    };
    let mut out = pb::CatalogueProblem {
        index: p.index.map(|i| i as u64),
        object_id: p.object_id.clone().unwrap_or_default(),
        field: p.field.clone(),
        token: p.token.clone(),
        message: p.message.clone(),
        ..Default::default()
    };
    out.set_kind(kind);
    out
}

#[cfg(test)]
mod tests {
    use strata_core::ObjectId;

    use super::*;

    fn id(s: &str) -> ObjectId {
        ObjectId::parse(s).expect("valid id")
    }

    #[test]
    fn a_rejection_carries_its_detail_in_a_google_rpc_status() {
        let e = ServiceError::Plan(PlanError::Invalid {
            violations: vec![Violation::UnknownParent {
                id: id("3002"),
                parent: id("2011"),
            }],
        });
        let status = Status::from(e);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("3002") && status.message().contains("2011"));
        let rpc = RpcStatus::decode(status.details()).expect("google.rpc.Status");
        assert_eq!(rpc.code, Code::InvalidArgument as i32);
        assert_eq!(
            rpc.details[0].type_url,
            "type.googleapis.com/strata.v1.BatchRejection"
        );
        let r = pb::BatchRejection::decode(rpc.details[0].value.as_slice()).expect("detail");
        assert_eq!(r.violations[0].object_id, "3002");
        assert_eq!(r.violations[0].parent_id, "2011");
    }

    #[test]
    fn a_huge_rejection_is_capped_and_counts_what_it_leaves_out() {
        let violations: Vec<Violation> = (0..10_000u64)
            .map(|i| Violation::UnknownParent {
                id: ObjectId::from_u64(3_000_000 + i),
                parent: ObjectId::from_u64(2_000_000 + i),
            })
            .collect();
        let status = Status::from(ServiceError::Plan(PlanError::Invalid { violations }));
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
        assert!(status.details().len() <= MAX_DETAIL_BYTES + 4096);
        let rpc = RpcStatus::decode(status.details()).expect("google.rpc.Status");
        let r = pb::BatchRejection::decode(rpc.details[0].value.as_slice()).expect("detail");
        assert!(!r.violations.is_empty());
        assert_eq!(r.violations.len() as u32 + r.omitted_count, 10_000);
    }

    #[test]
    fn codes_follow_the_contract() {
        let cases = [
            (
                ServiceError::InvalidArgument("x".into()),
                Code::InvalidArgument,
            ),
            (ServiceError::BatchNotFound("b-1".into()), Code::NotFound),
            (
                ServiceError::IdempotencyConflict {
                    key: "k".into(),
                    batch_id: "b-1".into(),
                },
                Code::AlreadyExists,
            ),
            (
                ServiceError::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (ServiceError::TooLarge("x".into()), Code::ResourceExhausted),
            (
                ServiceError::Port(PortError::Unavailable {
                    service: "redis",
                    detail: "down".into(),
                }),
                Code::Unavailable,
            ),
            (ServiceError::ShuttingDown, Code::Unavailable),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
    }
}
