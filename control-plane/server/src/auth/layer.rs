//! The tower layer in front of every service of the gRPC port: it admits a call (its principal
//! goes into the request's extensions) or answers it at once with UNAUTHENTICATED or
//! PERMISSION_DENIED, before any service decodes a byte of the request.

use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use tonic::codegen::http;
use tower::{Layer, Service};

use super::{Authenticator, Credentials};

/// Wraps services with [`AuthService`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Authenticator,
}

impl AuthLayer {
    /// A layer deciding with `auth`.
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Authenticator,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let subject = crate::tls::client_subject(&request);
        let credentials = Credentials {
            authorization: request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(http::HeaderValue::as_bytes),
            certificate_subject: subject.as_deref(),
        };
        match self.auth.admit(request.uri().path(), credentials) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Either::Left(self.inner.call(request))
            }
            Err(e) => Either::Right(ready(Ok(tonic::Status::from(e).into_http()))),
        }
    }
}
