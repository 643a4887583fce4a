//! Roles, and the one table that says which role each RPC of the gRPC port needs
//! ([`RPC_ACCESS`]). `docs/SECURITY.md` prints the same table; a test compares them.

use std::fmt;

use strata_core::Zone;

/// A role a principal holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Reads batches, plans, objects, retries, dead letters and agents; watches batches.
    Read,
    /// Submits and plans batches (and reads).
    Submit,
    /// Cancels batches, retries objects now, replays dead letters (and reads).
    Operate,
    /// Everything `read`, `submit` and `operate` may do.
    Admin,
    /// Registers, heartbeats and deregisters worker agents of one zone. Grants nothing else.
    Agent(Zone),
}

impl Role {
    /// Parses `read`, `submit`, `operate`, `admin` or `agent:<zone>`.
    pub fn parse(token: &str) -> Result<Self, String> {
        match token {
            "read" => Ok(Role::Read),
            "submit" => Ok(Role::Submit),
            "operate" => Ok(Role::Operate),
            "admin" => Ok(Role::Admin),
            other => match other.strip_prefix("agent:") {
                Some(zone) => Zone::parse(zone).map(Role::Agent).ok_or_else(|| {
                    format!("role {other:?}: {zone:?} is not a zone name (lowercase letters, digits, '-' or '_')")
                }),
                None => Err(format!(
                    "{other:?} is not a role (read, submit, operate, admin, agent:<zone>)"
                )),
            },
        }
    }

    /// Whether holding this role satisfies `needed`.
    pub fn grants(&self, needed: &Needs) -> bool {
        match (self, needed) {
            (_, Needs::Nothing) => true,
            (_, Needs::AnyRole) => true,
            (Role::Agent(_), Needs::AnyAgent) => true,
            (Role::Agent(_), _) => false,
            (Role::Admin, Needs::Role(_)) => true,
            (Role::Submit | Role::Operate, Needs::Role(Role::Read)) => true,
            (held, Needs::Role(role)) => held == role,
            (_, Needs::AnyAgent) => false,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Read => f.write_str("read"),
            Role::Submit => f.write_str("submit"),
            Role::Operate => f.write_str("operate"),
            Role::Admin => f.write_str("admin"),
            Role::Agent(zone) => write!(f, "agent:{zone}"),
        }
    }
}

/// What an RPC needs of its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Needs {
    /// Nothing: open to any caller, with or without credentials (gRPC health, for probes).
    Nothing,
    /// Any authenticated principal, whatever its roles (server reflection: the public schema).
    AnyRole,
    /// This role, or one that grants it ([`Role::grants`]).
    Role(Role),
    /// An `agent:<zone>` role. The service then checks the zone (RegisterAgent: the request's
    /// zone) and the lease (Heartbeat, Deregister: the principal that registered it).
    AnyAgent,
}

impl fmt::Display for Needs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Needs::Nothing => f.write_str("none"),
            Needs::AnyRole => f.write_str("any role"),
            Needs::Role(role) => role.fmt(f),
            Needs::AnyAgent => f.write_str("agent:<zone>"),
        }
    }
}

const ORCHESTRATOR: &str = "/strata.v1.Orchestrator/";
const REGISTRY: &str = "/strata.v1.AgentRegistry/";

/// Which role each RPC needs, by gRPC method (`service/method`, without the leading `/`). A path
/// not in this table and not under [`OPEN_SERVICES`] or [`SCHEMA_SERVICES`] needs
/// [`Needs::AnyRole`] (and tonic then answers UNIMPLEMENTED).
pub const RPC_ACCESS: &[(&str, RoleName)] = &[
    ("strata.v1.Orchestrator/SubmitBatch", RoleName::Submit),
    ("strata.v1.Orchestrator/SubmitBatchStream", RoleName::Submit),
    ("strata.v1.Orchestrator/PlanBatch", RoleName::Submit),
    ("strata.v1.Orchestrator/GetPlan", RoleName::Read),
    ("strata.v1.Orchestrator/GetBatch", RoleName::Read),
    ("strata.v1.Orchestrator/ListBatches", RoleName::Read),
    ("strata.v1.Orchestrator/WatchBatch", RoleName::Read),
    ("strata.v1.Orchestrator/GetObject", RoleName::Read),
    ("strata.v1.Orchestrator/ListRetries", RoleName::Read),
    ("strata.v1.Orchestrator/GetRetry", RoleName::Read),
    ("strata.v1.Orchestrator/ListDeadLetters", RoleName::Read),
    ("strata.v1.Orchestrator/CancelBatch", RoleName::Operate),
    ("strata.v1.Orchestrator/RetryNow", RoleName::Operate),
    (
        "strata.v1.Orchestrator/ReplayDeadLetters",
        RoleName::Operate,
    ),
    (
        "strata.v1.AgentRegistry/RegisterAgent",
        RoleName::AgentOfZone,
    ),
    ("strata.v1.AgentRegistry/Heartbeat", RoleName::AgentOfZone),
    ("strata.v1.AgentRegistry/Deregister", RoleName::AgentOfZone),
    ("strata.v1.AgentRegistry/ListAgents", RoleName::Read),
];

/// gRPC services open to every caller (their every method needs [`Needs::Nothing`]).
pub const OPEN_SERVICES: &[&str] = &["grpc.health.v1.Health"];

/// gRPC services any authenticated caller may use ([`Needs::AnyRole`]).
pub const SCHEMA_SERVICES: &[&str] = &[
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// A role as the table names it (a `const`-friendly [`Needs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleName {
    /// `read`.
    Read,
    /// `submit`.
    Submit,
    /// `operate`.
    Operate,
    /// `agent:<zone>`, the zone checked by the service.
    AgentOfZone,
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.needs().fmt(f)
    }
}

impl RoleName {
    fn needs(self) -> Needs {
        match self {
            RoleName::Read => Needs::Role(Role::Read),
            RoleName::Submit => Needs::Role(Role::Submit),
            RoleName::Operate => Needs::Role(Role::Operate),
            RoleName::AgentOfZone => Needs::AnyAgent,
        }
    }
}

/// What a call to the HTTP/2 path `path` (`/package.Service/Method`) needs.
pub fn needs_for(path: &str) -> Needs {
    let method = path.strip_prefix('/').unwrap_or(path);
    if let Some((_, role)) = RPC_ACCESS.iter().find(|(m, _)| *m == method) {
        return role.needs();
    }
    let service = method.split('/').next().unwrap_or_default();
    if OPEN_SERVICES.contains(&service) {
        Needs::Nothing
    } else {
        Needs::AnyRole
    }
}

/// Whether `path` is one of Strata's own services (the orchestrator or the agent registry).
pub fn is_strata_path(path: &str) -> bool {
    path.starts_with(ORCHESTRATOR) || path.starts_with(REGISTRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(z: &str) -> Zone {
        Zone::parse(z).unwrap()
    }

    #[test]
    fn roles_parse_print_and_name_bad_tokens() {
        for token in ["read", "submit", "operate", "admin", "agent:raw"] {
            assert_eq!(Role::parse(token).unwrap().to_string(), token);
        }
        let err = Role::parse("root").unwrap_err();
        assert!(err.contains("\"root\" is not a role"), "{err}");
        let err = Role::parse("agent:Raw Zone").unwrap_err();
        assert!(err.contains("\"Raw Zone\" is not a zone name"), "{err}");
    }

    #[test]
    fn what_each_role_grants() {
        let read = Needs::Role(Role::Read);
        let submit = Needs::Role(Role::Submit);
        let operate = Needs::Role(Role::Operate);
        assert!(Role::Read.grants(&read) && !Role::Read.grants(&submit));
        assert!(Role::Submit.grants(&read) && Role::Submit.grants(&submit));
        assert!(!Role::Submit.grants(&operate));
        assert!(Role::Operate.grants(&read) && Role::Operate.grants(&operate));
        assert!(!Role::Operate.grants(&submit));
        assert!(Role::Admin.grants(&read) && Role::Admin.grants(&submit));
        assert!(Role::Admin.grants(&operate) && !Role::Admin.grants(&Needs::AnyAgent));
        let agent = Role::Agent(zone("raw"));
        assert!(agent.grants(&Needs::AnyAgent) && agent.grants(&Needs::AnyRole));
        assert!(!agent.grants(&read), "an agent's credentials read nothing");
        assert!(!Role::Read.grants(&Needs::AnyAgent));
    }

    #[test]
    fn every_strata_rpc_is_in_the_table_and_nothing_else_is_open() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(strata_proto::FILE_DESCRIPTOR_SET)
            .expect("the contract's descriptor set");
        let mut rpcs = 0;
        for file in &set.file {
            for service in &file.service {
                let name = format!("{}.{}", file.package(), service.name());
                for method in &service.method {
                    let path = format!("{name}/{}", method.name());
                    assert!(
                        RPC_ACCESS.iter().any(|(m, _)| *m == path),
                        "{path} has no row in RPC_ACCESS"
                    );
                    rpcs += 1;
                }
            }
        }
        assert_eq!(
            rpcs,
            RPC_ACCESS.len(),
            "a row names an RPC the contract lacks"
        );
        assert_eq!(needs_for("/grpc.health.v1.Health/Check"), Needs::Nothing);
        assert_eq!(
            needs_for("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Needs::AnyRole
        );
        assert_eq!(needs_for("/strata.v1.Orchestrator/Nope"), Needs::AnyRole);
        assert_eq!(needs_for("/anything/else"), Needs::AnyRole);
        assert_eq!(
            needs_for("/strata.v1.Orchestrator/CancelBatch"),
            Needs::Role(Role::Operate)
        );
    }

    #[test]
    fn docs_security_prints_this_table() {
        let doc = include_str!("../../../../docs/SECURITY.md");
        let block = doc
            .split("<!-- rpc-access:begin -->")
            .nth(1)
            .and_then(|rest| rest.split("<!-- rpc-access:end -->").next())
            .expect("docs/SECURITY.md marks the RPC table with rpc-access:begin/end");
        let documented: Vec<(String, String)> = block
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(|c| c.trim().trim_matches('`')).collect();
                (cells[1].to_owned(), cells[2].to_owned())
            })
            .collect();
        let coded: Vec<(String, String)> = RPC_ACCESS
            .iter()
            .map(|(m, r)| ((*m).to_owned(), r.to_string()))
            .collect();
        assert_eq!(
            documented, coded,
            "docs/SECURITY.md's table differs from RPC_ACCESS"
        );
    }
}
