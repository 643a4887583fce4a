//! Kafka client security from dedicated settings, shared by the control plane and the worker
//! agent (`docs/SECURITY.md#kafka`): the security protocol, the SASL mechanism, user name and
//! password, and the CA that signed the brokers' certificates, turned into librdkafka properties.
//!
//! The password never comes from a flag (a command line is visible to every user of the machine):
//! it is read from a file (`--kafka-sasl-password-file`) or from the environment
//! ([`PASSWORD_ENV`]). It is held as a [`Secret`], whose `Debug` prints `***`; a configuration
//! shown to people shows the file's path, never the password.
//!
//! Pure string work (no librdkafka): the control plane's configuration uses it without the Kafka
//! feature.

use std::fmt;
use std::path::{Path, PathBuf};

/// The environment variable holding the SASL password (there is no flag for it).
pub const PASSWORD_ENV: &str = "STRATA_KAFKA_SASL_PASSWORD";

/// The mechanism used when a user name is given without one.
pub const DEFAULT_SASL_MECHANISM: &str = "SCRAM-SHA-512";

/// librdkafka's `security.protocol` values.
const PROTOCOLS: &[&str] = &["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];

/// A string that must not be shown: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it (the client's configuration).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The password from the environment ([`PASSWORD_ENV`]), if set and not empty.
pub fn password_from_env() -> Option<Secret> {
    std::env::var(PASSWORD_ENV)
        .ok()
        .filter(|p| !p.is_empty())
        .map(Secret::new)
}

/// Whether a client property's value is secret by its name (passwords, keys, secrets, tokens,
/// JAAS configurations): such values are masked wherever properties are shown.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "key", "token", "jaas"]
        .iter()
        .any(|s| key.contains(s))
}

/// The dedicated security settings as given (flags, environment, file), before [`Self::resolve`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityArgs {
    /// `--kafka-security-protocol`.
    pub security_protocol: Option<String>,
    /// `--kafka-sasl-mechanism`.
    pub sasl_mechanism: Option<String>,
    /// `--kafka-sasl-username`.
    pub sasl_username: Option<String>,
    /// `--kafka-sasl-password-file`.
    pub sasl_password_file: Option<PathBuf>,
    /// [`PASSWORD_ENV`].
    pub sasl_password: Option<Secret>,
    /// `--kafka-ca`.
    pub ca: Option<PathBuf>,
}

/// The resolved security settings of a process's Kafka clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaSecurity {
    /// `security.protocol` (upper case), `None` = librdkafka's default or `--kafka-property`.
    pub security_protocol: Option<String>,
    /// `sasl.mechanisms`.
    pub sasl_mechanism: Option<String>,
    /// `sasl.username`.
    pub sasl_username: Option<String>,
    /// `sasl.password`.
    pub sasl_password: Option<Secret>,
    /// Where the password was read from (`None` with a password: [`PASSWORD_ENV`]).
    pub sasl_password_file: Option<PathBuf>,
    /// `ssl.ca.location`.
    pub ca: Option<PathBuf>,
}

impl SecurityArgs {
    /// Checks the settings and reads the password file. A user name needs a password and the
    /// other way round; a user name without a protocol means `SASL_SSL`, without a mechanism
    /// [`DEFAULT_SASL_MECHANISM`]; a CA alone means `SSL`. Errors name the setting (never a
    /// password).
    pub fn resolve(self) -> Result<KafkaSecurity, String> {
        let security_protocol = match self.security_protocol.filter(|p| !p.trim().is_empty()) {
            None => None,
            Some(p) => {
                let upper = p.trim().to_ascii_uppercase();
                if !PROTOCOLS.contains(&upper.as_str()) {
                    return Err(format!(
                        "--kafka-security-protocol {p:?}: expected one of plaintext, ssl, \
                         sasl_plaintext, sasl_ssl"
                    ));
                }
                Some(upper)
            }
        };
        let username = self.sasl_username.filter(|u| !u.is_empty());
        let password = match (&self.sasl_password_file, self.sasl_password) {
            (Some(path), _) => Some(read_password_file(path)?),
            (None, env) => env,
        };
        match (&username, &password) {
            (Some(_), None) => {
                return Err(format!(
                    "--kafka-sasl-username needs a password: set {PASSWORD_ENV} or \
                     --kafka-sasl-password-file"
                ));
            }
            (None, Some(_)) => {
                return Err(format!(
                    "a Kafka SASL password ({}) without --kafka-sasl-username",
                    self.sasl_password_file.as_ref().map_or_else(
                        || PASSWORD_ENV.to_owned(),
                        |_| { "--kafka-sasl-password-file".to_owned() }
                    )
                ));
            }
            _ => {}
        }
        if let Some(ca) = &self.ca
            && !ca.is_file()
        {
            return Err(format!(
                "--kafka-ca {}: no such file (a PEM file of the CA certificates that signed the \
                 brokers' certificates)",
                ca.display()
            ));
        }
        let security_protocol = security_protocol.or_else(|| {
            if username.is_some() {
                Some("SASL_SSL".to_owned())
            } else if self.ca.is_some() {
                Some("SSL".to_owned())
            } else {
                None
            }
        });
        let sasl_mechanism = self
            .sasl_mechanism
            .filter(|m| !m.trim().is_empty())
            .map(|m| m.trim().to_ascii_uppercase())
            .or_else(|| {
                username
                    .is_some()
                    .then(|| DEFAULT_SASL_MECHANISM.to_owned())
            });
        Ok(KafkaSecurity {
            security_protocol,
            sasl_mechanism,
            sasl_username: username,
            sasl_password: password,
            sasl_password_file: self.sasl_password_file,
            ca: self.ca,
        })
    }
}

/// The password in `path`: its content without the trailing line break.
fn read_password_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--kafka-sasl-password-file {}: {e}", path.display()))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(format!(
            "--kafka-sasl-password-file {}: the file is empty",
            path.display()
        ));
    }
    Ok(Secret::new(password))
}

impl KafkaSecurity {
    /// The librdkafka properties these settings stand for (the password in clear: for the
    /// client's configuration only).
    pub fn properties(&self) -> Vec<(String, String)> {
        let mut properties = Vec::new();
        if let Some(p) = &self.security_protocol {
            properties.push(("security.protocol".to_owned(), p.clone()));
        }
        if let Some(m) = &self.sasl_mechanism {
            properties.push(("sasl.mechanisms".to_owned(), m.clone()));
        }
        if let Some(u) = &self.sasl_username {
            properties.push(("sasl.username".to_owned(), u.clone()));
        }
        if let Some(p) = &self.sasl_password {
            properties.push(("sasl.password".to_owned(), p.expose().to_owned()));
        }
        if let Some(ca) = &self.ca {
            properties.push(("ssl.ca.location".to_owned(), ca.display().to_string()));
        }
        properties
    }

    /// [`Self::properties`] followed by `extra` (`--kafka-property`); an error when both set the
    /// same property (`sasl.mechanism` is librdkafka's alias of `sasl.mechanisms`).
    pub fn with_extra(&self, extra: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
        let own = self.properties();
        let canonical = |k: &str| match k.trim() {
            "sasl.mechanism" => "sasl.mechanisms".to_owned(),
            other => other.to_owned(),
        };
        for (key, _) in extra {
            if own.iter().any(|(k, _)| *k == canonical(key)) {
                return Err(format!(
                    "Kafka property {} is set both by --kafka-property and by a dedicated \
                     setting (--kafka-security-protocol, --kafka-sasl-*, --kafka-ca); use one",
                    key.trim()
                ));
            }
        }
        Ok(own.into_iter().chain(extra.iter().cloned()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> SecurityArgs {
        SecurityArgs::default()
    }

    #[test]
    fn a_user_means_sasl_ssl_with_scram_sha_512() {
        let s = SecurityArgs {
            sasl_username: Some("strata".into()),
            sasl_password: Some(Secret::new("hunter2")),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            s.properties(),
            [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanisms", "SCRAM-SHA-512"),
                ("sasl.username", "strata"),
                ("sasl.password", "hunter2"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(args().resolve().unwrap().properties(), []);
    }

    #[test]
    fn the_password_comes_from_its_file_without_the_line_break() {
        let dir = std::env::temp_dir().join(format!("strata-sasl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "hunter2\n").unwrap();
        let s = SecurityArgs {
            sasl_username: Some("strata".into()),
            sasl_password_file: Some(file.clone()),
            sasl_password: Some(Secret::new("from-env")),
            security_protocol: Some("sasl_plaintext".into()),
            sasl_mechanism: Some("scram-sha-256".into()),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.sasl_password, Some(Secret::new("hunter2")));
        assert_eq!(s.security_protocol.as_deref(), Some("SASL_PLAINTEXT"));
        assert_eq!(s.sasl_mechanism.as_deref(), Some("SCRAM-SHA-256"));
        std::fs::write(&file, "").unwrap();
        let err = SecurityArgs {
            sasl_username: Some("strata".into()),
            sasl_password_file: Some(file),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn incomplete_or_conflicting_settings_are_named() {
        let err = SecurityArgs {
            sasl_username: Some("strata".into()),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(err.contains(PASSWORD_ENV), "{err}");
        let err = SecurityArgs {
            sasl_password: Some(Secret::new("hunter2")),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(
            err.contains("--kafka-sasl-username") && !err.contains("hunter2"),
            "{err}"
        );
        let err = SecurityArgs {
            security_protocol: Some("tls".into()),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(err.contains("\"tls\""), "{err}");
        let err = SecurityArgs {
            ca: Some("/no/such/ca.pem".into()),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(err.contains("/no/such/ca.pem"), "{err}");

        let s = SecurityArgs {
            sasl_username: Some("strata".into()),
            sasl_password: Some(Secret::new("hunter2")),
            ..args()
        }
        .resolve()
        .unwrap();
        let extra = |k: &str| vec![(k.to_owned(), "x".to_owned())];
        let err = s.with_extra(&extra("sasl.mechanism")).unwrap_err();
        assert!(err.contains("sasl.mechanism"), "{err}");
        assert!(s.with_extra(&extra("sasl.password")).is_err());
        let all = s
            .with_extra(&extra("ssl.endpoint.identification.algorithm"))
            .unwrap();
        assert_eq!(all.len(), 5);
    }

    #[test]
    fn secret_names_are_recognised() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "sasl.jaas.config",
            "SSL.KEY.PEM",
        ] {
            assert!(is_secret_property(key), "{key}");
        }
        for key in ["sasl.username", "security.protocol", "ssl.ca.location"] {
            assert!(!is_secret_property(key), "{key}");
        }
        assert_eq!(format!("{}", Secret::new("hunter2")), "***");
    }
}
