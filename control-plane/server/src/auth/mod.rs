//! Who is calling, and may they: every call on the gRPC port passes [`layer::AuthLayer`], which
//! finds the caller's [`Principal`] (a bearer token from the `authorization` header, or a
//! client certificate's subject under mutual TLS), checks the role the RPC needs
//! ([`roles::RPC_ACCESS`]) and puts the principal in the request's extensions for the services
//! (agent leases and idempotency keys belong to principals).
//!
//! Grants come from the auth file ([`grants`], `--auth-file`), re-read on SIGHUP (a file that
//! does not parse is refused with its reason and the previous grants stay). Without one the
//! control plane serves everyone with every role only when told to (`--insecure`, and
//! `strata dev` on loopback), and says so in its log and readiness body.

pub mod grants;
pub mod layer;
pub mod roles;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tracing::{info, warn};

use crate::error::ServiceError;
use grants::{Grant, Grants};
use roles::{Needs, Role};

/// The caller of an RPC, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    name: Arc<str>,
    roles: Arc<[Role]>,
    /// Insecure mode: every role, no name.
    open: bool,
}

/// The principal's name in insecure mode.
pub const ANONYMOUS: &str = "anonymous";

impl Principal {
    /// The caller in insecure mode: anonymous, with every role.
    pub fn open() -> Self {
        Self {
            name: ANONYMOUS.into(),
            roles: Arc::new([]),
            open: true,
        }
    }

    fn granted(grant: &Grant) -> Self {
        Self {
            name: grant.name.clone(),
            roles: grant.roles.clone(),
            open: false,
        }
    }

    /// Its name (`anonymous` in insecure mode).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is the caller of insecure mode (no authentication: `--insecure`, `strata dev`).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Whether it may call an RPC that needs `needs`.
    pub fn may(&self, needs: &Needs) -> bool {
        self.open || self.roles.iter().any(|r| r.grants(needs))
    }

    /// Whether it may run agents of `zone`.
    pub fn is_agent_of(&self, zone: &strata_core::Zone) -> bool {
        self.open
            || self
                .roles
                .iter()
                .any(|r| matches!(r, Role::Agent(z) if z == zone))
    }

    /// The scope of its idempotency keys: its name, or none in insecure mode (keys are then
    /// global, as every caller is the same anonymous principal).
    pub fn idempotency_scope(&self) -> Option<&str> {
        (!self.open).then_some(&*self.name)
    }

    fn describe_roles(&self) -> String {
        if self.roles.is_empty() {
            return "none".into();
        }
        let names: Vec<String> = self.roles.iter().map(ToString::to_string).collect();
        names.join(", ")
    }
}

/// The principal of a request the auth layer let through. Services call this; a request that
/// did not pass the layer (a service used without it, in component tests) is the open
/// principal.
pub fn principal_of<T>(request: &tonic::Request<T>) -> Principal {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::open)
}

/// Decides who a caller is and whether it may call. Cheap to clone (shared grants).
#[derive(Debug, Clone)]
pub struct Authenticator {
    mode: Arc<Mode>,
}

#[derive(Debug)]
enum Mode {
    Open {
        why: &'static str,
    },
    File {
        path: PathBuf,
        grants: RwLock<Arc<Grants>>,
    },
}

/// What a caller presented.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// The `authorization` header's value, if any.
    pub authorization: Option<&'a [u8]>,
    /// The subject common name of its verified client certificate, if any.
    pub certificate_subject: Option<&'a str>,
}

impl Authenticator {
    /// Everyone is the open principal. `why` is said in the log and readiness body (e.g.
    /// `--insecure`).
    pub fn open(why: &'static str) -> Self {
        Self {
            mode: Arc::new(Mode::Open { why }),
        }
    }

    /// Grants from the auth file at `path`.
    pub fn from_file(path: PathBuf) -> Result<Self, String> {
        let grants = Grants::load(&path)?;
        info!(path = %path.display(), principals = grants.len(), "auth file loaded");
        Ok(Self {
            mode: Arc::new(Mode::File {
                path,
                grants: RwLock::new(Arc::new(grants)),
            }),
        })
    }

    /// Why everyone is let in, if they are (insecure or dev mode).
    pub fn open_because(&self) -> Option<&'static str> {
        match &*self.mode {
            Mode::Open { why } => Some(why),
            Mode::File { .. } => None,
        }
    }

    /// Re-reads the auth file (SIGHUP). On error the previous grants stay and the error is
    /// returned; in open mode there is nothing to read.
    pub fn reload(&self) -> Result<usize, String> {
        match &*self.mode {
            Mode::Open { .. } => Ok(0),
            Mode::File { path, grants } => {
                let fresh = Grants::load(path)?;
                let n = fresh.len();
                *grants.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
                Ok(n)
            }
        }
    }

    /// The principal calling `path` with `credentials`, if it may: UNAUTHENTICATED without
    /// known credentials, PERMISSION_DENIED when its roles do not grant what the RPC needs.
    /// Messages never quote a token.
    pub fn admit(
        &self,
        path: &str,
        credentials: Credentials<'_>,
    ) -> Result<Principal, ServiceError> {
        let needs = roles::needs_for(path);
        let grants = match &*self.mode {
            Mode::Open { .. } => return Ok(Principal::open()),
            Mode::File { grants, .. } => grants.read().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        let principal = match Self::identify(&grants, credentials) {
            Ok(p) => p,
            Err(_) if needs == Needs::Nothing => return Ok(Principal::open()),
            Err(e) => return Err(e),
        };
        if principal.may(&needs) {
            Ok(principal)
        } else {
            let method = path.strip_prefix('/').unwrap_or(path);
            Err(ServiceError::PermissionDenied(format!(
                "principal {:?} (roles: {}) may not call {method}: it needs {needs}",
                principal.name(),
                principal.describe_roles()
            )))
        }
    }

    fn identify(grants: &Grants, credentials: Credentials<'_>) -> Result<Principal, ServiceError> {
        if let Some(header) = credentials.authorization {
            let token = std::str::from_utf8(header)
                .ok()
                .and_then(|h| {
                    h.strip_prefix("Bearer ")
                        .or_else(|| h.strip_prefix("bearer "))
                })
                .map(str::trim)
                .ok_or_else(|| {
                    ServiceError::Unauthenticated(
                        "the authorization header is not `Bearer <token>`".into(),
                    )
                })?;
            return grants
                .for_token(token)
                .map(Principal::granted)
                .ok_or_else(|| {
                    ServiceError::Unauthenticated("the bearer token is not known".into())
                });
        }
        if let Some(subject) = credentials.certificate_subject {
            return grants
                .for_subject(subject)
                .map(Principal::granted)
                .ok_or_else(|| {
                    ServiceError::Unauthenticated(format!(
                        "the client certificate's subject {subject:?} is not in the auth file"
                    ))
                });
        }
        Err(ServiceError::Unauthenticated(
            "no credentials: send `authorization: Bearer <token>` (or a client certificate \
             under mutual TLS)"
                .into(),
        ))
    }

    /// Logs how callers are authenticated (a warning in open mode).
    pub fn log_mode(&self) {
        match &*self.mode {
            Mode::Open { why } => {
                warn!("no authentication ({why}): every caller of the gRPC port has every role")
            }
            Mode::File { path, .. } => {
                info!(path = %path.display(), "callers authenticated by the auth file")
            }
        }
    }

    /// Re-reads the auth file on every SIGHUP until the process ends (a no-op in open mode).
    #[cfg(unix)]
    pub fn reload_on_sighup(&self) -> std::io::Result<()> {
        if matches!(&*self.mode, Mode::Open { .. }) {
            return Ok(());
        }
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let me = self.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match me.reload() {
                    Ok(n) => info!(principals = n, "auth file reloaded (SIGHUP)"),
                    Err(e) => warn!(error = %e, "auth file not reloaded; the previous grants stay"),
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(entries: &str) -> (tempfile::NamedTempFile, Authenticator) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), entries).unwrap();
        let auth = Authenticator::from_file(file.path().to_owned()).unwrap();
        (file, auth)
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn tokens_are_checked_against_the_table_and_reloaded() {
        let reader = grants::new_token().unwrap();
        let operator = grants::new_token().unwrap();
        let (file, auth) = file_with(&grants::token_entry("reader", &reader, &[Role::Read]));
        let with = |h: &str, path: &str| {
            auth.admit(
                path,
                Credentials {
                    authorization: Some(h.as_bytes()),
                    certificate_subject: None,
                },
            )
        };
        let get = "/strata.v1.Orchestrator/GetBatch";
        let cancel = "/strata.v1.Orchestrator/CancelBatch";
        assert_eq!(with(&bearer(&reader), get).unwrap().name(), "reader");
        let denied = with(&bearer(&reader), cancel).unwrap_err();
        assert!(matches!(denied, ServiceError::PermissionDenied(_)));
        assert_eq!(
            denied.to_string(),
            "principal \"reader\" (roles: read) may not call strata.v1.Orchestrator/CancelBatch: it needs operate"
        );
        let unknown = with(&bearer(&operator), get).unwrap_err();
        assert!(matches!(unknown, ServiceError::Unauthenticated(_)));
        assert!(!unknown.to_string().contains(&operator), "{unknown}");
        let none = auth.admit(get, Credentials::default()).unwrap_err();
        assert!(none.to_string().starts_with("no credentials"), "{none}");
        assert!(matches!(
            with("Basic abc", get).unwrap_err(),
            ServiceError::Unauthenticated(_)
        ));
        // Health stays open, with or without (even bad) credentials.
        assert!(
            auth.admit("/grpc.health.v1.Health/Check", Credentials::default())
                .is_ok()
        );
        assert!(with(&bearer(&operator), "/grpc.health.v1.Health/Check").is_ok());

        // A reload adds the operator; a broken file keeps the grants.
        let mut text = grants::token_entry("reader", &reader, &[Role::Read]);
        text.push_str(&grants::token_entry("op", &operator, &[Role::Operate]));
        std::fs::write(file.path(), &text).unwrap();
        assert_eq!(auth.reload().unwrap(), 2);
        assert_eq!(with(&bearer(&operator), cancel).unwrap().name(), "op");
        std::fs::write(file.path(), "[[token]]\nname = 1\n").unwrap();
        assert!(auth.reload().is_err());
        assert_eq!(with(&bearer(&operator), cancel).unwrap().name(), "op");
    }

    #[test]
    fn certificates_name_principals_and_open_mode_lets_everyone_in() {
        let (_file, auth) =
            file_with("[[certificate]]\nsubject = \"agent-raw-1\"\nroles = [\"agent:raw\"]\n");
        let cert = |s: &'static str| Credentials {
            authorization: None,
            certificate_subject: Some(s),
        };
        let p = auth
            .admit("/strata.v1.AgentRegistry/Heartbeat", cert("agent-raw-1"))
            .unwrap();
        assert!(p.is_agent_of(&strata_core::Zone::parse("raw").unwrap()));
        assert!(!p.is_agent_of(&strata_core::Zone::parse("application").unwrap()));
        assert_eq!(p.idempotency_scope(), Some("agent-raw-1"));
        assert!(
            auth.admit("/strata.v1.Orchestrator/GetBatch", cert("agent-raw-1"))
                .is_err()
        );
        assert!(
            auth.admit("/strata.v1.Orchestrator/GetBatch", cert("someone"))
                .is_err()
        );

        let open = Authenticator::open("--insecure");
        assert_eq!(open.open_because(), Some("--insecure"));
        let p = open
            .admit(
                "/strata.v1.Orchestrator/CancelBatch",
                Credentials::default(),
            )
            .unwrap();
        assert_eq!(p.name(), ANONYMOUS);
        assert_eq!(p.idempotency_scope(), None);
    }
}
