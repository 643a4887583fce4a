//! The auth file (`--auth-file`): who may call, with which roles. TOML, no plaintext secret in
//! it:
//!
//! ```toml
//! [[token]]
//! name = "ci"                      # the principal's name (logs, leases, idempotency scope)
//! sha256 = "9f86d081…"             # SHA-256 of the bearer token, 64 hex digits
//! roles = ["submit", "read"]
//!
//! [[certificate]]
//! subject = "agent-raw-1"          # a client certificate's subject common name (mTLS)
//! roles = ["agent:raw"]
//! ```
//!
//! Tokens are 256 random bits (`strata-control-plane new-token`), so one SHA-256 is enough to
//! store them (a slow password hash protects guessable secrets; these are not guessable).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::roles::Role;

/// Longest principal name.
pub const MAX_NAME_LEN: usize = 64;

/// A principal's name and roles, as the auth file grants them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The principal's name.
    pub name: Arc<str>,
    /// Its roles.
    pub roles: Arc<[Role]>,
}

/// The parsed auth file: grants by token hash and by certificate subject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    by_token_hash: HashMap<[u8; 32], Grant>,
    by_subject: HashMap<String, Grant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    token: Vec<TokenEntry>,
    #[serde(default)]
    certificate: Vec<CertificateEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    roles: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateEntry {
    subject: String,
    roles: Vec<String>,
}

impl Grants {
    /// Reads and checks the auth file at `path`. The error names the file and the entry; it
    /// never quotes a hash.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("auth file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("auth file {}: {e}", path.display()))
    }

    /// Parses the auth file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let doc: FileDoc = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let mut grants = Grants::default();
        let mut names = std::collections::HashSet::new();
        for (i, t) in doc.token.into_iter().enumerate() {
            let what = format!("token #{} ({:?})", i + 1, t.name);
            let grant = grant(&what, t.name, &t.roles)?;
            if !names.insert(grant.name.clone()) {
                return Err(format!("{what}: the name is used twice"));
            }
            let hash = parse_hash(&t.sha256)
                .ok_or_else(|| format!("{what}: sha256 must be 64 hex digits"))?;
            if grants.by_token_hash.insert(hash, grant).is_some() {
                return Err(format!("{what}: the same token hash is listed twice"));
            }
        }
        for (i, c) in doc.certificate.into_iter().enumerate() {
            let what = format!("certificate #{} ({:?})", i + 1, c.subject);
            let grant = grant(&what, c.subject.clone(), &c.roles)?;
            if !names.insert(grant.name.clone()) {
                return Err(format!("{what}: the name is used twice"));
            }
            grants.by_subject.insert(c.subject, grant);
        }
        Ok(grants)
    }

    /// The grant of a presented bearer token, if the file lists its hash.
    pub fn for_token(&self, token: &str) -> Option<&Grant> {
        self.by_token_hash.get(&token_hash(token))
    }

    /// The grant of a client certificate's subject common name.
    pub fn for_subject(&self, subject: &str) -> Option<&Grant> {
        self.by_subject.get(subject)
    }

    /// How many principals the file lists.
    pub fn len(&self) -> usize {
        self.by_token_hash.len() + self.by_subject.len()
    }

    /// Whether the file lists nobody.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn grant(what: &str, name: String, roles: &[String]) -> Result<Grant, String> {
    check_name(&name).map_err(|e| format!("{what}: {e}"))?;
    if roles.is_empty() {
        return Err(format!("{what}: roles is empty"));
    }
    let roles = roles
        .iter()
        .map(|r| Role::parse(r).map_err(|e| format!("{what}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Grant {
        name: name.into(),
        roles: roles.into(),
    })
}

/// A principal name: 1 to [`MAX_NAME_LEN`] bytes of letters, digits and `.-_@:=,` (so that it
/// prints on one line and can scope idempotency keys unambiguously).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_@:=,".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the name must be 1 to {MAX_NAME_LEN} letters, digits or '.-_@:=,'"
        ))
    }
}

/// SHA-256 of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A token hash as the auth file writes it.
pub fn hash_hex(hash: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    for b in hash {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new random bearer token: `strata_` and 64 hex digits (256 bits from the OS).
pub fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(format!("strata_{}", hash_hex(&bytes)))
}

/// The auth file entry of a token (its hash, never the token).
pub fn token_entry(name: &str, token: &str, roles: &[Role]) -> String {
    let roles: Vec<String> = roles
        .iter()
        .map(|r| format!("{:?}", r.to_string()))
        .collect();
    format!(
        "\n[[token]]\nname = {name:?}\nsha256 = \"{}\"\nroles = [{}]\n",
        hash_hex(&token_hash(token)),
        roles.join(", ")
    )
}

/// Makes a new token for `name` with `roles`, adds its entry to the auth file at `path`
/// (created, mode 0600, if missing; the whole file must still parse, so a name used twice is
/// refused and nothing is written) and returns the token: the only place it ever appears.
pub fn add_new_token(path: &Path, name: &str, roles: &[String]) -> Result<String, String> {
    let roles = roles
        .iter()
        .map(|r| Role::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    let token = new_token()?;
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("auth file {}: {e}", path.display())),
    };
    let text = existing + &token_entry(name, &token, &roles);
    Grants::parse(&text).map_err(|e| format!("auth file {}: {e}", path.display()))?;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()).map(|()| f))
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        file.flush()
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_grants_tokens_by_hash_and_certificates_by_subject() {
        let token = new_token().unwrap();
        assert!(token.starts_with("strata_") && token.len() == 71, "{token}");
        let mut text = token_entry("ci", &token, &[Role::Submit, Role::Read]);
        assert!(!text.contains(&token), "the entry holds the hash only");
        text.push_str("\n[[certificate]]\nsubject = \"agent-raw-1\"\nroles = [\"agent:raw\"]\n");
        let grants = Grants::parse(&text).unwrap();
        let g = grants.for_token(&token).expect("the token is known");
        assert_eq!(&*g.name, "ci");
        assert_eq!(&*g.roles, &[Role::Submit, Role::Read]);
        assert!(grants.for_token("strata_0000").is_none());
        assert_eq!(
            &*grants.for_subject("agent-raw-1").unwrap().name,
            "agent-raw-1"
        );
        assert_eq!(grants.len(), 2);
    }

    #[test]
    fn new_tokens_are_added_to_the_file_once_per_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.toml");
        let a = add_new_token(&path, "ci", &["submit".into(), "read".into()]).unwrap();
        let b = add_new_token(&path, "agent-raw", &["agent:raw".into()]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&a) && !text.contains(&b),
            "no plaintext token is stored"
        );
        let grants = Grants::load(&path).unwrap();
        assert_eq!(&*grants.for_token(&a).unwrap().name, "ci");
        assert_eq!(&*grants.for_token(&b).unwrap().name, "agent-raw");
        let err = add_new_token(&path, "ci", &["read".into()]).unwrap_err();
        assert!(err.contains("the name is used twice"), "{err}");
        let err = add_new_token(&path, "x", &["superuser".into()]).unwrap_err();
        assert!(err.contains("\"superuser\" is not a role"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "nothing written"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn bad_entries_are_named_without_quoting_hashes() {
        let hash = "ab".repeat(32);
        let cases = [
            (
                format!("[[token]]\nname = \"a b\"\nsha256 = \"{hash}\"\nroles = [\"read\"]"),
                "token #1 (\"a b\"): the name must be",
            ),
            (
                "[[token]]\nname = \"a\"\nsha256 = \"xyz\"\nroles = [\"read\"]".to_owned(),
                "token #1 (\"a\"): sha256 must be 64 hex digits",
            ),
            (
                format!("[[token]]\nname = \"a\"\nsha256 = \"{hash}\"\nroles = [\"root\"]"),
                "token #1 (\"a\"): \"root\" is not a role",
            ),
            (
                format!("[[token]]\nname = \"a\"\nsha256 = \"{hash}\"\nroles = []"),
                "roles is empty",
            ),
            (
                format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{hash}\"\nroles = [\"read\"]\n\
                     [[certificate]]\nsubject = \"a\"\nroles = [\"read\"]"
                ),
                "certificate #1 (\"a\"): the name is used twice",
            ),
            ("[[tokens]]\n".to_owned(), "unknown field"),
        ];
        for (text, expected) in cases {
            let err = Grants::parse(&text).unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
            assert!(!err.contains(&hash), "{err}");
        }
    }
}
