//! The channel to the control plane: plain HTTP/2 or TLS (a CA to trust, optionally a client
//! certificate for mutual TLS), and a bearer token sent on every call. One implementation for
//! this crate's [`Client`](crate::Client) and the worker agent's registry client.
//!
//! - `https://` endpoints use TLS (rustls): the server's certificate must be signed by the CA
//!   of [`Security::ca`], or by one of the system's CAs without it. A bare `host:port` is taken
//!   as `https://` when a CA or a client certificate is given, else as `http://`; `http://`
//!   with either is refused (it would send them nowhere).
//! - The token goes in `authorization: Bearer <token>` (marked sensitive, so HTTP/2 never
//!   indexes it). It never appears in `Debug` output or in errors.

use std::fmt;
use std::path::{Path, PathBuf};

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::{ClientError, ClientOptions};

/// The channel every call goes through: the token added by [`BearerToken`].
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

/// How the client proves who it is and whom it trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// PEM file of the CA certificates that signed the control plane's certificate (default with
    /// an `https://` endpoint: the system's CAs).
    pub ca: Option<PathBuf>,
    /// A client certificate and its key, for a control plane that verifies clients (mutual TLS).
    pub identity: Option<IdentityFiles>,
    /// A bearer token sent with every call.
    pub token: Option<Token>,
}

/// A client certificate (PEM chain) and its private key (PEM), as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

impl IdentityFiles {
    /// The pair, or an error naming the flag that is missing (`cert_flag`, `key_flag`).
    pub fn pair(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        cert_flag: &str,
        key_flag: &str,
    ) -> Result<Option<Self>, ClientError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self { cert, key })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(ClientError::Credentials {
                detail: format!("{cert_flag} needs {key_flag} (the certificate's private key)"),
            }),
            (None, Some(_)) => Err(ClientError::Credentials {
                detail: format!("{key_flag} needs {cert_flag} (the certificate it belongs to)"),
            }),
        }
    }
}

/// A bearer token. `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token given as text (e.g. from the environment); an error names `source`, never the
    /// value.
    pub fn new(value: &str, source: &str) -> Result<Self, ClientError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(ClientError::Credentials {
                detail: format!("the token from {source} is empty"),
            });
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::Credentials {
                detail: format!(
                    "the token from {source} holds a space or a character that is not printable \
                     ASCII"
                ),
            });
        }
        Ok(Self(value.to_owned()))
    }

    /// The token in `path` (surrounding white space, e.g. a final line break, is ignored).
    pub fn from_file(path: &Path) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| ClientError::Credentials {
            detail: format!("cannot read the token file {}: {e}", path.display()),
        })?;
        Self::new(&text, &format!("the file {}", path.display()))
    }

    /// The token of a command line: from `file` (`file_flag`) or from the environment variable
    /// `env_var`; both set is an error (which one was meant?).
    pub fn from_file_or_env(
        file: Option<&Path>,
        file_flag: &str,
        env_var: &str,
    ) -> Result<Option<Self>, ClientError> {
        let from_env = std::env::var(env_var).ok().filter(|v| !v.is_empty());
        match (file, from_env) {
            (Some(_), Some(_)) => Err(ClientError::Credentials {
                detail: format!("both {file_flag} and {env_var} give a token: keep one"),
            }),
            (Some(path), None) => Self::from_file(path).map(Some),
            (None, Some(value)) => Self::new(&value, env_var).map(Some),
            (None, None) => Ok(None),
        }
    }

    fn header_value(&self) -> AsciiMetadataValue {
        let mut value = MetadataValue::try_from(format!("Bearer {}", self.0))
            .expect("checked: printable ASCII");
        value.set_sensitive(true);
        value
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Adds `authorization: Bearer <token>` to every call when there is a token.
#[derive(Clone, Default)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.0.is_some() { "***" } else { "none" };
        write!(f, "BearerToken({shown})")
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The channel to `endpoint` with `options`' timeouts and security, connecting lazily (an
/// unreachable endpoint is reported by the first call). Returns the endpoint as used (with its
/// scheme).
pub fn connect(
    endpoint: &str,
    options: &ClientOptions,
) -> Result<(String, AuthChannel), ClientError> {
    let security = &options.security;
    let tls_asked = security.ca.is_some() || security.identity.is_some();
    let endpoint = match endpoint.split_once("://") {
        Some(("http", _)) if tls_asked => {
            return Err(ClientError::Endpoint {
                endpoint: endpoint.to_owned(),
                reason: "a CA or client certificate is given but the endpoint is http:// \
                         (plaintext): use https://"
                    .into(),
            });
        }
        Some(_) => endpoint.to_owned(),
        None if tls_asked => format!("https://{endpoint}"),
        None => format!("http://{endpoint}"),
    };
    let invalid = |reason: String| ClientError::Endpoint {
        endpoint: endpoint.clone(),
        reason,
    };
    let mut builder = Endpoint::from_shared(endpoint.clone())
        .map_err(|e| invalid(e.to_string()))?
        .timeout(options.timeout)
        .connect_timeout(options.connect_timeout);
    if endpoint.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        tls = match &security.ca {
            Some(ca) => {
                tls.ca_certificate(Certificate::from_pem(read_pem(ca, "CA", "CERTIFICATE")?))
            }
            None => tls.with_native_roots(),
        };
        if let Some(identity) = &security.identity {
            tls = tls.identity(Identity::from_pem(
                read_pem(&identity.cert, "client certificate", "CERTIFICATE")?,
                read_pem(&identity.key, "client key", "PRIVATE KEY")?,
            ));
        }
        builder = builder
            .tls_config(tls)
            .map_err(|e| ClientError::Credentials {
                detail: format!("TLS settings for {endpoint}: {}", error_chain(&e)),
            })?;
    }
    let token = BearerToken(security.token.as_ref().map(Token::header_value));
    Ok((
        endpoint,
        InterceptedService::new(builder.connect_lazy(), token),
    ))
}

/// The PEM file `path` (what: "CA", "client key", …), checked to hold a `label` block.
fn read_pem(path: &Path, what: &str, label: &str) -> Result<Vec<u8>, ClientError> {
    let bytes = std::fs::read(path).map_err(|e| ClientError::Credentials {
        detail: format!("cannot read the {what} file {}: {e}", path.display()),
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")));
    if !found {
        return Err(ClientError::Credentials {
            detail: format!(
                "the {what} file {} holds no PEM {label} block",
                path.display()
            ),
        });
    }
    Ok(bytes)
}

/// `e` and its causes, `: `-separated (a transport failure's status says only "transport
/// error"; its causes say which: refused, reset, an untrusted certificate).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_shows_and_is_sent_as_a_sensitive_bearer_header() {
        let token = Token::new("s3cret-token\n", "STRATA_TOKEN").expect("valid");
        let options = ClientOptions {
            security: Security {
                token: Some(token.clone()),
                ..Security::default()
            },
            ..ClientOptions::default()
        };
        for shown in [
            format!("{token:?}"),
            format!("{token}"),
            format!("{options:?}"),
        ] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        let mut interceptor = BearerToken(Some(token.header_value()));
        assert!(!format!("{interceptor:?}").contains("s3cret"));
        let request = interceptor.call(Request::new(())).expect("no refusal");
        let value = request.metadata().get("authorization").expect("set");
        assert_eq!(value.to_str().ok(), Some("Bearer s3cret-token"));
        assert!(value.is_sensitive());
    }

    #[test]
    fn a_bad_token_is_refused_without_echoing_it() {
        let err = Token::new("two words", "STRATA_TOKEN").expect_err("a space");
        let text = err.to_string();
        assert!(
            text.contains("STRATA_TOKEN") && !text.contains("words"),
            "{text}"
        );
        let err = Token::new("  \n", "STRATA_TOKEN").expect_err("empty");
        assert!(err.to_string().contains("empty"), "{err}");
        let missing = Path::new("/nonexistent/strata-token");
        let err = Token::from_file(missing).expect_err("no file");
        assert!(
            err.to_string().contains("/nonexistent/strata-token"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn tls_settings_choose_the_scheme_and_bad_files_are_named() {
        let with_ca = |ca: &str| ClientOptions {
            security: Security {
                ca: Some(PathBuf::from(ca)),
                ..Security::default()
            },
            ..ClientOptions::default()
        };
        let err = connect("http://127.0.0.1:1", &with_ca("ca.pem")).expect_err("plaintext");
        assert!(err.to_string().contains("https://"), "{err}");
        let err = connect("127.0.0.1:1", &with_ca("/nonexistent/ca.pem")).expect_err("no file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let dir = std::env::temp_dir().join(format!("strata-client-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let not_pem = dir.join("not-a-ca.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        let err =
            connect("127.0.0.1:1", &with_ca(&not_pem.display().to_string())).expect_err("not PEM");
        assert!(err.to_string().contains("no PEM CERTIFICATE"), "{err}");
        let (endpoint, _) = connect("127.0.0.1:1", &ClientOptions::default()).expect("plaintext");
        assert_eq!(endpoint, "http://127.0.0.1:1");
        let err =
            IdentityFiles::pair(Some("c.pem".into()), None, "--cert", "--key").expect_err("no key");
        assert!(err.to_string().contains("--key"), "{err}");
    }
}
