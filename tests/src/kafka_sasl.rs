//! The SASL_SSL listener of an [`ApacheKafka`](crate::ApacheKafka) node started with
//! [`ApacheKafka::start_sasl`](crate::ApacheKafka::start_sasl): TLS with a certificate the
//! harness makes, and SCRAM-SHA-512 authentication of one user created when the node's storage is
//! formatted.
//!
//! What it is, in the node's temp dir `sasl/`: a CA (`ca.pem`, `ca-key.pem`) and a server
//! certificate it signed (`server.pem`, `server-key.pem`, unencrypted PKCS#8; subject alternative
//! names `IP:127.0.0.1` and `DNS:localhost`, valid two days), made by [`crate::certs`] with the
//! `openssl` command. The broker reads them as PEM
//! (`ssl.keystore.type=PEM`, the key and chain inline in `server.properties`); clients trust
//! `ca.pem` (`ssl.ca.location`) and check the host name as librdkafka does by default.
//!
//! The user is [`SASL_USERNAME`] with a random password ([`SaslListener::password`]), created by
//! `kafka.tools.StorageTool format --add-scram 'SCRAM-SHA-512=[name=…,password=…]'`, stored in
//! the KRaft metadata log: it survives restarts. The listener is named `SASL_SSL` and sits beside
//! the `PLAINTEXT` one, which the harness itself and the brokers between themselves keep using;
//! a test gives the SASL_SSL address ([`SaslListener::bootstrap`]) to the clients under test.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::certs::{TestCa, openssl};

/// The SCRAM user the storage format creates.
pub const SASL_USERNAME: &str = "strata";
/// The one mechanism the listener offers.
pub const SASL_MECHANISM: &str = "SCRAM-SHA-512";
/// The listener's name (also its security protocol).
pub const LISTENER: &str = "SASL_SSL";

/// The SASL_SSL listener of one node: where it listens, its certificates and its user.
#[derive(Clone)]
pub struct SaslListener {
    port: u16,
    ca: PathBuf,
    password: String,
    /// The server's certificate and key, PEM with `\n` escaped for `server.properties`.
    chain_property: String,
    key_property: String,
}

impl std::fmt::Debug for SaslListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslListener")
            .field("port", &self.port)
            .field("ca", &self.ca)
            .field("password", &"***")
            .finish()
    }
}

impl SaslListener {
    /// Makes the CA, the server certificate and the user's password in `dir` (created), for a
    /// listener on `port`.
    pub(crate) fn create(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let ca = TestCa::create(dir, "ca")?;
        let server = ca.server_cert("server")?;
        // Letters and digits only: it goes into StorageTool's `[name=…,password=…]` syntax.
        let password = format!("pw{}", openssl(dir, &["rand", "-hex", "16"])?.trim());
        let pem = |file: &Path| -> anyhow::Result<String> {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("read {}", file.display()))?;
            Ok(text.trim_end().replace('\n', "\\n"))
        };
        Ok(Self {
            port,
            ca: ca.cert_path(),
            password,
            chain_property: pem(&server.cert)?,
            key_property: pem(&server.key)?,
        })
    }

    /// `127.0.0.1:PORT` of the SASL_SSL listener.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The listener's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The SCRAM user's name ([`SASL_USERNAME`]).
    pub fn username(&self) -> &str {
        SASL_USERNAME
    }

    /// The SCRAM user's password (random per node).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The CA certificate (PEM) that signed the broker's certificate: clients'
    /// `ssl.ca.location`.
    pub fn ca_path(&self) -> PathBuf {
        self.ca.clone()
    }

    /// librdkafka properties of a client of this listener with the CA: SASL_SSL, SCRAM-SHA-512,
    /// the user's name and `password` when it is `Some`; TLS only (`security.protocol=SSL`, no
    /// credentials at all) when `None`.
    pub fn client_properties(&self, password: Option<&str>) -> Vec<(String, String)> {
        let protocol = if password.is_some() { LISTENER } else { "SSL" };
        let mut properties = vec![
            ("security.protocol".to_owned(), protocol.to_owned()),
            (
                "ssl.ca.location".to_owned(),
                self.ca_path().display().to_string(),
            ),
        ];
        if let Some(password) = password {
            properties.extend([
                ("sasl.mechanisms".to_owned(), SASL_MECHANISM.to_owned()),
                ("sasl.username".to_owned(), SASL_USERNAME.to_owned()),
                ("sasl.password".to_owned(), password.to_owned()),
            ]);
        }
        properties
    }

    /// The `listeners` / `advertised.listeners` entry.
    pub(crate) fn listener_entry(&self) -> String {
        format!("{LISTENER}://127.0.0.1:{}", self.port)
    }

    /// `server.properties` lines of the listener: the mechanism, the broker's SCRAM login module,
    /// and its key and certificate as inline PEM (Java properties escape the newlines).
    pub(crate) fn server_properties(&self) -> String {
        let prefix = format!("listener.name.{}", LISTENER.to_ascii_lowercase());
        let mechanism = SASL_MECHANISM.to_ascii_lowercase();
        let mut text = String::from("# The SASL_SSL listener (tests/src/kafka_sasl.rs).\n");
        for line in [
            format!("sasl.enabled.mechanisms={SASL_MECHANISM}"),
            format!("{prefix}.sasl.enabled.mechanisms={SASL_MECHANISM}"),
            format!(
                "{prefix}.{mechanism}.sasl.jaas.config=\
                 org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            format!("{prefix}.ssl.keystore.type=PEM"),
            format!(
                "{prefix}.ssl.keystore.certificate.chain={}",
                self.chain_property
            ),
            format!("{prefix}.ssl.keystore.key={}", self.key_property),
        ] {
            let _ = writeln!(text, "{line}");
        }
        text
    }

    /// The storage tool's arguments that create the user.
    pub(crate) fn format_args(&self) -> [String; 2] {
        [
            "--add-scram".to_owned(),
            format!(
                "{SASL_MECHANISM}=[name={SASL_USERNAME},password={}]",
                self.password
            ),
        ]
    }
}
