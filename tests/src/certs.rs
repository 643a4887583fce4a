//! Certificates for the TLS tests, made with the `openssl` command (Debian package `openssl`): a
//! CA ([`TestCa::create`]), server certificates it signs for `127.0.0.1` and `localhost`
//! ([`TestCa::server_cert`]) and client certificates with a given common name
//! ([`TestCa::client_cert`]). RSA 2048 keys, unencrypted PKCS#8 PEM; valid two days.
//!
//! Used by the Kafka SASL_SSL listener ([`crate::kafka_sasl`]) and the gRPC TLS suite.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Days every certificate is valid.
const DAYS: &str = "2";

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// A CA in a directory: `<name>.pem` and `<name>-key.pem`; the certificates it signs sit beside
/// them.
#[derive(Debug, Clone)]
pub struct TestCa {
    dir: PathBuf,
    name: String,
}

impl TestCa {
    /// Makes a self-signed CA named `name` (files `<name>.pem`, `<name>-key.pem`, subject
    /// `CN=strata-tests <name>`) in `dir` (created).
    pub fn create(dir: &Path, name: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                DAYS,
                "-subj",
                &format!("/CN=strata-tests {name}"),
                "-keyout",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}.pem"),
            ],
        )?;
        Ok(Self {
            dir: dir.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The CA certificate (what clients or servers trust).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// A server certificate `<name>.pem` / `<name>-key.pem` for `IP:127.0.0.1` and
    /// `DNS:localhost` (subject `CN=127.0.0.1`).
    pub fn server_cert(&self, name: &str) -> anyhow::Result<CertFiles> {
        self.sign(
            name,
            "127.0.0.1",
            "subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth\n",
        )
    }

    /// A client certificate `<name>.pem` / `<name>-key.pem` with subject `CN=<common_name>`.
    pub fn client_cert(&self, name: &str, common_name: &str) -> anyhow::Result<CertFiles> {
        self.sign(name, common_name, "extendedKeyUsage = clientAuth\n")
    }

    fn sign(&self, name: &str, common_name: &str, extensions: &str) -> anyhow::Result<CertFiles> {
        let (key, csr, ext, cert) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}-ext.cnf"),
            format!("{name}.pem"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={common_name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        )?;
        std::fs::write(self.dir.join(&ext), extensions)?;
        let ca_key = format!("{}-key.pem", self.name);
        let ca_cert = format!("{}.pem", self.name);
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                DAYS,
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        )?;
        Ok(CertFiles {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        })
    }
}

/// Runs `openssl args` in `dir`; its stdout, or an error with its stderr.
pub fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("run openssl (Debian package openssl) to make test certificates")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed ({}): {}",
            args.first().copied().unwrap_or_default(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
