//! TLS and mutual TLS on the gRPC port, with the certificate reloaded on `SIGHUP`.
//!
//! - [`GrpcTls::load`] reads the certificate chain, its key and, for mutual TLS, the CA that
//!   signs client certificates (rustls with the ring provider, ALPN `h2`). A client certificate
//!   is verified against that CA when one is presented; a client without one still gets through
//!   the handshake (a bearer token is the other way in: deciding what a caller may do is the
//!   authorization layer's job, which reads [`client_subject`]).
//! - [`GrpcTls::incoming`] accepts TCP connections and runs each handshake in a task of its own,
//!   bounded by [`HANDSHAKE_TIMEOUT`]: a failed or stalled handshake is logged at debug, counted
//!   (`strata_grpc_tls_handshake_failures_total`) and never holds up other connections. The
//!   stream feeds tonic's `serve_with_incoming_shutdown`; tonic puts each connection's
//!   `TlsConnectInfo` (its peer certificates) into every request's extensions.
//! - [`GrpcTls::reload_on_sighup`]: the files are read again on `SIGHUP`; new connections use
//!   the new certificate, open ones keep theirs. A file that cannot be used keeps the previous
//!   configuration (logged as an error).
//!
//! Errors name the file and what is wrong with it, never key material.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tracing::{debug, error, info, warn};
use x509_parser::extensions::GeneralName;

use crate::metrics::Metrics;

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handshaken but not yet taken by the server.
const ACCEPTED_BACKLOG: usize = 64;
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The files of the gRPC port's TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// PEM CA certificates that sign client certificates (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {}: {detail}", path.display())]
pub struct TlsError {
    /// The flag naming the file.
    pub flag: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub detail: String,
}

/// The certificate being served, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Its subject (`CN=…`).
    pub subject: String,
    /// When it expires.
    pub not_after: String,
}

/// The gRPC port's TLS configuration, replaced as a whole on reload. Shared (`Arc`).
#[derive(Debug)]
pub struct GrpcTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl GrpcTls {
    /// Reads the files; the error names the first one that cannot be used.
    pub fn load(files: TlsFiles) -> Result<(Arc<Self>, CertificateInfo), TlsError> {
        let (config, served) = server_config(&files)?;
        let tls = Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(config)),
        });
        Ok((tls, served))
    }

    /// `"TLS"`, or `"mutual TLS"` when client certificates are verified.
    pub fn mode(&self) -> &'static str {
        if self.files.client_ca.is_some() {
            "mutual TLS"
        } else {
            "TLS"
        }
    }

    /// Reads the files again; on success, new connections use them. On error the previous
    /// configuration stays.
    pub fn reload(&self) -> Result<CertificateInfo, TlsError> {
        let (config, served) = server_config(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(served)
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    /// Reloads on every `SIGHUP` until the task is aborted. Call it inside the runtime.
    pub fn reload_on_sighup(self: &Arc<Self>) -> io::Result<JoinHandle<()>> {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let tls = self.clone();
        Ok(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match tls.reload() {
                    Ok(served) => info!(
                        subject = %served.subject,
                        not_after = %served.not_after,
                        "reloaded TLS certificate"
                    ),
                    Err(e) => error!(
                        error = %e,
                        "TLS reload on SIGHUP failed; still serving the previous certificate"
                    ),
                }
            }
        }))
    }

    /// The TLS connections of `listener`, for `serve_with_incoming_shutdown`. Accepting stops
    /// (and the listener closes) when the stream is dropped.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        metrics: Metrics,
    ) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_BACKLOG);
        let tls = self.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = tx.closed() => return,
                    accepted = listener.accept() => accepted,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "gRPC port: accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = tls.acceptor();
                let (tx, metrics) = (tx.clone(), metrics.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => {
                            metrics.tls_handshake_failed("error");
                            debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics.tls_handshake_failed("timeout");
                            debug!(%peer, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// Whether the request came over TLS (the gRPC port's TLS acceptor put the connection's
/// `TlsConnectInfo` in it).
pub fn over_tls<T>(request: &tonic::Request<T>) -> bool {
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .is_some()
}

/// The subject of the client certificate the caller presented and the server verified
/// (mutual TLS): its common name, else its first DNS or URI subject alternative name. `None`
/// over plaintext, without a client certificate, or without `--tls-client-ca` (then none is
/// asked for).
pub fn client_subject<B>(request: &http::Request<B>) -> Option<String> {
    let info = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    subject_name(certs.first()?)
}

/// A certificate's common name, else its first DNS or URI subject alternative name.
fn subject_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
    {
        return Some(cn.to_owned());
    }
    let names = cert.subject_alternative_name().ok()??;
    names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::DNSName(n) | GeneralName::URI(n) => Some((*n).to_owned()),
            _ => None,
        })
}

/// The rustls configuration of `files`, and what its certificate says.
fn server_config(files: &TlsFiles) -> Result<(ServerConfig, CertificateInfo), TlsError> {
    let provider = Arc::new(crypto::ring::default_provider());
    let chain = certificates(&files.cert, "--tls-cert")?;
    let served = certificate_info(&chain[0]).ok_or_else(|| TlsError {
        flag: "--tls-cert",
        path: files.cert.clone(),
        detail: "the first certificate is not valid X.509".into(),
    })?;
    let key = private_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            flag: "--tls-cert",
            path: files.cert.clone(),
            detail: e.to_string(),
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let invalid = |detail: String| TlsError {
                flag: "--tls-client-ca",
                path: path.clone(),
                detail,
            };
            let mut roots = RootCertStore::empty();
            for cert in certificates(path, "--tls-client-ca")? {
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| invalid(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError {
        flag: "--tls-key",
        path: files.key.clone(),
        detail: format!("cannot be used with the certificate of --tls-cert: {e}"),
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, served))
}

/// Every PEM certificate of `path` (at least one).
fn certificates(path: &Path, flag: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |detail: String| TlsError {
        flag,
        path: path.to_owned(),
        detail,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(pem_error(&e, "certificate")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(pem_error(&e, "certificate")))?;
    if chain.is_empty() {
        return Err(invalid("holds no PEM certificate".into()));
    }
    Ok(chain)
}

/// The PEM private key of `path` (PKCS#8, PKCS#1 or SEC1).
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError {
        flag: "--tls-key",
        path: path.to_owned(),
        detail: pem_error(&e, "private key"),
    })
}

/// What went wrong reading a PEM file, without quoting the file (it may be a key).
fn pem_error(e: &tokio_rustls::rustls::pki_types::pem::Error, what: &str) -> String {
    use tokio_rustls::rustls::pki_types::pem::Error;
    match e {
        Error::Io(e) => format!("cannot read it: {e}"),
        Error::NoItemsFound => format!("holds no PEM {what}"),
        _ => format!("is not a valid PEM {what}"),
    }
}

fn certificate_info(der: &CertificateDer<'_>) -> Option<CertificateInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(CertificateInfo {
        subject: cert.subject().to_string(),
        not_after: cert.validity().not_after.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, SanType,
    };
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::ClientConfig;
    use tokio_rustls::rustls::pki_types::ServerName;
    use tonic::transport::server::Connected as _;

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate signed by `ca`: (cert PEM, key PEM).
    fn leaf(ca: &Ca, cn: Option<&str>, sans: Vec<SanType>, client: bool) -> (String, String) {
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }

    struct Fixture {
        dir: PathBuf,
        server_ca: Ca,
        client_ca: Ca,
    }

    impl Fixture {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("strata-tls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let server_ca = ca("server CA");
            let client_ca = ca("client CA");
            let (cert, key) = leaf(
                &server_ca,
                Some("control plane"),
                vec![SanType::IpAddress([127, 0, 0, 1].into())],
                false,
            );
            std::fs::write(dir.join("server.pem"), cert).expect("write");
            std::fs::write(dir.join("server-key.pem"), key).expect("write");
            std::fs::write(dir.join("client-ca.pem"), &client_ca.pem).expect("write");
            Self {
                dir,
                server_ca,
                client_ca,
            }
        }

        fn files(&self) -> TlsFiles {
            TlsFiles {
                cert: self.dir.join("server.pem"),
                key: self.dir.join("server-key.pem"),
                client_ca: Some(self.dir.join("client-ca.pem")),
            }
        }
    }

    /// A TLS client trusting only `ca`, presenting `identity` if given.
    fn connector(ca: &Ca, identity: Option<(String, String)>) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("CA PEM"))
            .expect("root");
        let builder =
            ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots);
        let mut config = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
                )
                .expect("identity"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    /// One connection through [`GrpcTls::incoming`] with `client`: the server's side of it when
    /// both ends completed the handshake (the server then writes a byte the client reads), else
    /// `None`; and the port's metrics.
    async fn handshake(
        tls: &Arc<GrpcTls>,
        client: TlsConnector,
    ) -> (Option<TlsStream<TcpStream>>, Metrics) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        use tokio_stream::StreamExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Metrics::new();
        let mut incoming = tls.incoming(listener, metrics.clone());
        let mut client_side = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from("127.0.0.1").expect("name");
            // With TLS 1.3 a refused client certificate shows on the client's first read.
            let mut stream = client.connect(name, tcp).await.ok()?;
            let mut byte = [0u8; 1];
            (stream.read(&mut byte).await.ok()? == 1).then_some(stream)
        });
        let outcome = async {
            tokio::select! {
                accepted = incoming.next() => {
                    let mut server = accepted.expect("accepting").expect("a stream");
                    server.write_all(b"x").await.expect("write");
                    server.flush().await.expect("flush");
                    let client = (&mut client_side).await.expect("client task");
                    assert!(client.is_some(), "the server accepted, the client failed");
                    Some(server)
                }
                client = &mut client_side => {
                    assert!(client.expect("client task").is_none(), "the client got a byte");
                    None
                }
            }
        };
        let server = tokio::time::timeout(Duration::from_secs(10), outcome)
            .await
            .expect("the handshake neither succeeded nor failed within 10 s");
        (server, metrics)
    }

    fn subject_of(stream: &TlsStream<TcpStream>) -> Option<String> {
        let mut request = http::Request::new(());
        request.extensions_mut().insert(stream.connect_info());
        client_subject(&request)
    }

    #[tokio::test]
    async fn a_verified_client_certificate_names_its_subject_and_a_foreign_one_is_refused() {
        let f = Fixture::new("mtls");
        let (tls, served) = GrpcTls::load(f.files()).expect("valid files");
        assert_eq!(tls.mode(), "mutual TLS");
        assert_eq!(served.subject, "CN=control plane");

        // Signed by the client CA: verified, its CN is the subject.
        let good = leaf(&f.client_ca, Some("agent-raw-1"), Vec::new(), true);
        let (server, _) = handshake(&tls, connector(&f.server_ca, Some(good))).await;
        let server = server.expect("a client certificate of the client CA is accepted");
        assert_eq!(subject_of(&server).as_deref(), Some("agent-raw-1"));

        // No CN: the first DNS name.
        let san_only = leaf(
            &f.client_ca,
            None,
            vec![SanType::DnsName("ops.example".try_into().expect("dns"))],
            true,
        );
        let (server, _) = handshake(&tls, connector(&f.server_ca, Some(san_only))).await;
        let server = server.expect("accepted");
        assert_eq!(subject_of(&server).as_deref(), Some("ops.example"));

        // No certificate: through (a token may authorize it), no subject.
        let (server, _) = handshake(&tls, connector(&f.server_ca, None)).await;
        assert_eq!(subject_of(&server.expect("accepted")), None);

        // Signed by another CA: refused at the handshake, and counted.
        let stranger = ca("another CA");
        let foreign = leaf(&stranger, Some("intruder"), Vec::new(), true);
        let (server, metrics) = handshake(&tls, connector(&f.server_ca, Some(foreign))).await;
        assert!(server.is_none(), "a foreign client certificate got through");
        let text = metrics.render();
        assert!(
            text.contains("strata_grpc_tls_handshake_failures_total{reason=\"error\"} 1"),
            "{text}"
        );

        // Plaintext: no subject.
        assert_eq!(client_subject(&http::Request::new(())), None);
    }

    #[tokio::test]
    async fn a_reload_serves_the_new_certificate_and_a_bad_file_keeps_the_old_one() {
        let f = Fixture::new("reload");
        let files = TlsFiles {
            client_ca: None,
            ..f.files()
        };
        let (tls, _) = GrpcTls::load(files.clone()).expect("valid files");
        assert_eq!(tls.mode(), "TLS");
        let (server, _) = handshake(&tls, connector(&f.server_ca, None)).await;
        assert!(server.is_some());

        // A certificate of another CA replaces it: that CA's clients connect, the old one's fail.
        let next = ca("next server CA");
        let (cert, key) = leaf(
            &next,
            Some("control plane 2"),
            vec![SanType::IpAddress([127, 0, 0, 1].into())],
            false,
        );
        std::fs::write(&files.cert, cert).expect("write");
        std::fs::write(&files.key, key).expect("write");
        let served = tls.reload().expect("reloaded");
        assert_eq!(served.subject, "CN=control plane 2");
        let (server, _) = handshake(&tls, connector(&next, None)).await;
        assert!(server.is_some(), "the new CA's client was refused");
        let (server, _) = handshake(&tls, connector(&f.server_ca, None)).await;
        assert!(server.is_none(), "the old CA's client still connects");

        // A broken key: the error names the file, not its content; the second certificate stays.
        std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\nnot base64!\n").expect("write");
        let err = tls.reload().expect_err("broken key").to_string();
        assert!(
            err.contains("--tls-key") && err.contains("server-key.pem"),
            "{err}"
        );
        assert!(!err.contains("base64!"), "{err}");
        let (server, _) = handshake(&tls, connector(&next, None)).await;
        assert!(
            server.is_some(),
            "a failed reload dropped the served certificate"
        );
        let err = GrpcTls::load(files).expect_err("broken key at start");
        assert!(err.to_string().contains("server-key.pem"), "{err}");
    }

    #[test]
    fn missing_and_mismatched_files_are_named() {
        let f = Fixture::new("errors");
        let missing = TlsFiles {
            cert: f.dir.join("nope.pem"),
            ..f.files()
        };
        let err = GrpcTls::load(missing).expect_err("missing").to_string();
        assert!(
            err.contains("--tls-cert") && err.contains("nope.pem"),
            "{err}"
        );
        let not_a_ca = TlsFiles {
            client_ca: Some(f.dir.join("server-key.pem")),
            ..f.files()
        };
        let err = GrpcTls::load(not_a_ca)
            .expect_err("a key as CA")
            .to_string();
        assert!(
            err.contains("--tls-client-ca") && err.contains("no PEM certificate"),
            "{err}"
        );
        let (_, other_key) = leaf(&f.server_ca, Some("x"), Vec::new(), false);
        std::fs::write(f.dir.join("other-key.pem"), other_key).expect("write");
        let mismatched = TlsFiles {
            key: f.dir.join("other-key.pem"),
            ..f.files()
        };
        let err = GrpcTls::load(mismatched).expect_err("mismatch").to_string();
        assert!(err.contains("--tls-key"), "{err}");
    }
}
