//! The agent registry (`docs/design.md#agents-and-processors`): worker agents register for a zone and hold a lease by
//! heartbeating; an agent whose lease runs out is *lost*, and the attempts it held must be
//! retried. Pure: time is an argument, nothing is read or written outside the value.
//!
//! Each registration gets a new agent id and a lease epoch that increases across the registry,
//! so a result or heartbeat carrying an older epoch is recognisably stale. Expired and
//! deregistered agents are kept (for listings) until [`Registry::forget_inactive`] drops them.
//!
//! Leases outlive the control plane (`docs/design.md#redis`: they are kept in Redis): every change is
//! recorded, [`Registry::take_changes`] hands the changed agents to whoever persists them, and
//! [`Registry::restore`] rebuilds the registry after a restart — giving every live lease a full
//! TTL from the restart, since its agent could not heartbeat while the control plane was down.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use chrono::{DateTime, TimeDelta, Utc};

use crate::model::Zone;

/// One attempt an agent holds, as it reported it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HeldAttempt {
    /// The batch.
    pub batch_id: String,
    /// The object id.
    pub object_id: String,
    /// The attempt number.
    pub attempt: u32,
    /// The attempt's dispatch epoch.
    pub dispatch_epoch: u64,
}

/// The state of an agent's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AgentState {
    /// Heartbeating and taking work.
    Active,
    /// Heartbeating, but draining: takes no new work.
    Draining,
    /// Missed its heartbeats past the lease TTL.
    Expired,
    /// Deregistered.
    Deregistered,
}

impl AgentState {
    /// Whether the lease is live (active or draining).
    pub fn is_live(self) -> bool {
        matches!(self, AgentState::Active | AgentState::Draining)
    }
}

/// A lease's secret result signing key (32 random bytes the caller draws): what the agent signs
/// its results with and the control plane verifies them against. `Debug` never shows it; stored
/// with the lease as lowercase hex.
#[derive(Clone, PartialEq, Eq)]
pub struct LeaseKey([u8; LeaseKey::LEN]);

impl LeaseKey {
    /// Its length in bytes.
    pub const LEN: usize = 32;

    /// The key of these bytes.
    pub fn new(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

impl std::fmt::Debug for LeaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseKey(<redacted>)")
    }
}

impl Serialize for LeaseKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&hex)
    }
}

impl<'de> Deserialize<'de> for LeaseKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let hex = String::deserialize(d)?;
        let bad = || serde::de::Error::custom("a lease key is 64 hex digits");
        if hex.len() != 2 * Self::LEN || !hex.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; Self::LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(bytes))
    }
}

/// What an agent says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Registration {
    /// Its zone.
    pub zone: Option<Zone>,
    /// Most attempts at once (≥ 1).
    pub capacity: u32,
    /// Software version.
    pub version: String,
    /// Host or pod name.
    pub hostname: String,
    /// Free labels.
    pub labels: BTreeMap<String, String>,
    /// The principal that registers it (only it may renew or end the lease).
    pub owner: String,
    /// The new lease's result signing key.
    pub result_key: Option<LeaseKey>,
}

/// One registered agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    /// Its id.
    pub id: String,
    /// Its zone.
    pub zone: Zone,
    /// Its processor concurrency.
    pub capacity: u32,
    /// Its software version.
    pub version: String,
    /// Its host name.
    pub hostname: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its lease epoch.
    pub lease_epoch: u64,
    /// When it registered.
    pub registered_at: DateTime<Utc>,
    /// When it last heartbeated.
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// When its lease expires (or expired).
    pub expires_at: DateTime<Utc>,
    /// Its lease state.
    pub state: AgentState,
    /// The attempts it held at its last heartbeat.
    pub in_flight: Vec<HeldAttempt>,
    /// The principal that registered it (empty: stored before principals existed).
    #[serde(default)]
    pub owner: String,
    /// Its lease's result signing key (none: stored before result keys existed, or granted
    /// without one; its results are then of an unknown lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_key: Option<LeaseKey>,
    /// When `result_key` was handed out (none: stored before keys rotated; taken as the
    /// registration time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_key_at: Option<DateTime<Utc>>,
    /// The key `result_key` replaced, still good for results signed before the rotation for a
    /// while (see [`Agent::result_keys`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_result_key: Option<LeaseKey>,
}

impl Agent {
    /// When the current result key was handed out.
    pub fn result_key_since(&self) -> DateTime<Utc> {
        self.result_key_at.unwrap_or(self.registered_at)
    }

    /// The lease's result keys at `now`: the current one, and the one it replaced while the
    /// replacement is younger than `grace` (results signed just before a rotation may still be
    /// on their way).
    pub fn result_keys(&self, now: DateTime<Utc>, grace: TimeDelta) -> ResultKeys<'_> {
        ResultKeys {
            current: self.result_key.as_ref(),
            previous: self.previous_result_key.as_ref(),
            previous_valid: self
                .result_key_since()
                .checked_add_signed(grace)
                .is_none_or(|end| now < end),
        }
    }
}

/// A lease's result keys at one moment (see [`Agent::result_keys`]).
#[derive(Debug, Clone, Copy)]
pub struct ResultKeys<'a> {
    /// The key results are signed with now.
    pub current: Option<&'a LeaseKey>,
    /// The key it replaced.
    pub previous: Option<&'a LeaseKey>,
    /// Whether `previous` still signs valid results.
    pub previous_valid: bool,
}

/// Why a heartbeat or deregistration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// No such agent.
    #[error("agent {0} is not registered")]
    UnknownAgent(String),
    /// The lease epoch is not the agent's.
    #[error("agent {agent}: lease epoch {given} is stale (the lease is at {current})")]
    StaleEpoch {
        /// The agent.
        agent: String,
        /// The epoch sent.
        given: u64,
        /// The agent's epoch.
        current: u64,
    },
    /// The caller is not the principal that registered the agent.
    #[error("agent {agent} was registered by another principal than {principal:?}")]
    NotHolder {
        /// The agent.
        agent: String,
        /// The caller.
        principal: String,
    },
    /// The principal holds as many live leases as it may.
    #[error(
        "principal {principal:?} holds {max} live agent leases already (at most {max}); deregister some first"
    )]
    TooManyLeases {
        /// The principal.
        principal: String,
        /// The bound.
        max: usize,
    },
    /// The lease has ended.
    #[error("agent {agent}: its lease has {how}; register again")]
    Ended {
        /// The agent.
        agent: String,
        /// `expired` or `ended (deregistered)`.
        how: &'static str,
    },
}

/// An agent whose lease just expired, with what it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// The agent.
    pub agent_id: String,
    /// Its zone.
    pub zone: Zone,
    /// The attempts it last reported.
    pub in_flight: Vec<HeldAttempt>,
}

/// What changed in the registry since the last [`Registry::take_changes`]: what a store must
/// write so that [`Registry::restore`] rebuilds the same registry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegistryChanges {
    /// Agents registered or changed (their whole current record).
    pub upsert: Vec<Agent>,
    /// Agents forgotten.
    pub removed: Vec<String>,
    /// The next lease epoch to hand out.
    pub next_epoch: u64,
}

impl RegistryChanges {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.removed.is_empty()
    }
}

/// The registry. See the module documentation.
#[derive(Debug, Clone)]
pub struct Registry {
    agents: BTreeMap<String, Agent>,
    next_epoch: u64,
    ttl: TimeDelta,
    /// Changed since the last `take_changes`: ids to write, ids to delete.
    dirty: BTreeSet<String>,
    removed: BTreeSet<String>,
}

impl Registry {
    /// An empty registry whose leases live `ttl` after each heartbeat.
    pub fn new(ttl: std::time::Duration) -> Self {
        Self {
            agents: BTreeMap::new(),
            next_epoch: 1,
            ttl: TimeDelta::from_std(ttl).unwrap_or(TimeDelta::MAX),
            dirty: BTreeSet::new(),
            removed: BTreeSet::new(),
        }
    }

    /// The registry as persisted, after a restart at `now`: every live lease runs at least a
    /// full TTL from `now` (its agent's heartbeats went unanswered while the control plane was
    /// down), and epochs continue after the highest one stored.
    pub fn restore(
        ttl: std::time::Duration,
        agents: Vec<Agent>,
        next_epoch: u64,
        now: DateTime<Utc>,
    ) -> Self {
        let mut registry = Self::new(ttl);
        let grace = now + registry.ttl;
        for mut agent in agents {
            registry.next_epoch = registry.next_epoch.max(agent.lease_epoch + 1);
            if agent.state.is_live() && agent.expires_at < grace {
                agent.expires_at = grace;
            }
            registry.agents.insert(agent.id.clone(), agent);
        }
        registry.next_epoch = registry.next_epoch.max(next_epoch);
        registry
    }

    /// What changed since the last call (see [`RegistryChanges`]); `None` when nothing did.
    pub fn take_changes(&mut self) -> Option<RegistryChanges> {
        if self.dirty.is_empty() && self.removed.is_empty() {
            return None;
        }
        let upsert = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|id| self.agents.get(&id).cloned())
            .collect();
        Some(RegistryChanges {
            upsert,
            removed: std::mem::take(&mut self.removed).into_iter().collect(),
            next_epoch: self.next_epoch,
        })
    }

    /// Puts changes that could not be written back, so that the next [`Registry::take_changes`]
    /// hands them out again (with whatever changed since).
    pub fn mark_unsaved(&mut self, changes: &RegistryChanges) {
        for agent in &changes.upsert {
            if self.agents.contains_key(&agent.id) {
                self.dirty.insert(agent.id.clone());
            }
        }
        for id in &changes.removed {
            if !self.agents.contains_key(id) {
                self.removed.insert(id.clone());
            }
        }
    }

    /// Registers an agent of `zone` at `now`: a new id and lease epoch. The id is derived from
    /// the epoch and `nonce` (e.g. the control plane's start time), so that ids stay unique
    /// across control-plane restarts.
    pub fn register(
        &mut self,
        zone: Zone,
        reg: Registration,
        nonce: u64,
        now: DateTime<Utc>,
    ) -> &Agent {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let id = format!("agent-{zone}-{nonce:x}-{epoch}");
        let agent = Agent {
            id: id.clone(),
            zone,
            capacity: reg.capacity.max(1),
            version: reg.version,
            hostname: reg.hostname,
            labels: reg.labels,
            lease_epoch: epoch,
            registered_at: now,
            last_heartbeat_at: None,
            expires_at: now + self.ttl,
            state: AgentState::Active,
            in_flight: Vec::new(),
            owner: reg.owner,
            result_key: reg.result_key,
            result_key_at: Some(now),
            previous_result_key: None,
        };
        self.removed.remove(&id);
        self.dirty.insert(id.clone());
        self.agents.entry(id).or_insert(agent)
    }

    fn live_mut(&mut self, id: &str, epoch: u64) -> Result<&mut Agent, LeaseError> {
        let agent = self
            .agents
            .get_mut(id)
            .ok_or_else(|| LeaseError::UnknownAgent(id.to_owned()))?;
        if agent.lease_epoch != epoch {
            return Err(LeaseError::StaleEpoch {
                agent: id.to_owned(),
                given: epoch,
                current: agent.lease_epoch,
            });
        }
        match agent.state {
            AgentState::Expired => Err(LeaseError::Ended {
                agent: id.to_owned(),
                how: "expired",
            }),
            AgentState::Deregistered => Err(LeaseError::Ended {
                agent: id.to_owned(),
                how: "ended (deregistered)",
            }),
            AgentState::Active | AgentState::Draining => Ok(agent),
        }
    }

    /// Renews a live lease at `now` and records what the agent holds. A lease already past its
    /// expiry (not yet swept by [`Registry::expire`]) is refused as expired.
    pub fn heartbeat(
        &mut self,
        id: &str,
        epoch: u64,
        in_flight: Vec<HeldAttempt>,
        draining: bool,
        now: DateTime<Utc>,
    ) -> Result<&Agent, LeaseError> {
        let ttl = self.ttl;
        let agent = self.live_mut(id, epoch)?;
        if agent.expires_at <= now {
            return Err(LeaseError::Ended {
                agent: id.to_owned(),
                how: "expired",
            });
        }
        agent.last_heartbeat_at = Some(now);
        agent.expires_at = now + ttl;
        agent.in_flight = in_flight;
        if draining {
            agent.state = AgentState::Draining;
        }
        self.dirty.insert(id.to_owned());
        Ok(&self.agents[id])
    }

    /// Replaces the result key of live lease `(id, epoch)` with `key` at `now`; the old key
    /// becomes the previous one. Returns whether the lease was live.
    pub fn rotate_result_key(
        &mut self,
        id: &str,
        epoch: u64,
        key: LeaseKey,
        now: DateTime<Utc>,
    ) -> bool {
        let Ok(agent) = self.live_mut(id, epoch) else {
            return false;
        };
        agent.previous_result_key = agent.result_key.replace(key);
        agent.result_key_at = Some(now);
        self.dirty.insert(id.to_owned());
        true
    }

    /// How many live leases `owner` holds.
    pub fn live_leases_of(&self, owner: &str) -> usize {
        self.agents
            .values()
            .filter(|a| a.state.is_live() && a.owner == owner)
            .count()
    }

    /// Ends a lease; returns the attempts the agent still held (to be handed back). Unknown or
    /// already ended agents hand back nothing (idempotent); a stale epoch is refused.
    pub fn deregister(
        &mut self,
        id: &str,
        epoch: u64,
        now: DateTime<Utc>,
    ) -> Result<Vec<HeldAttempt>, LeaseError> {
        match self.live_mut(id, epoch) {
            Ok(agent) => {
                agent.state = AgentState::Deregistered;
                agent.expires_at = now;
                let held = std::mem::take(&mut agent.in_flight);
                self.dirty.insert(id.to_owned());
                Ok(held)
            }
            Err(LeaseError::UnknownAgent(_) | LeaseError::Ended { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Expires every live lease past its expiry at `now`; returns those agents with what they
    /// held.
    pub fn expire(&mut self, now: DateTime<Utc>) -> Vec<Lost> {
        let mut lost = Vec::new();
        for agent in self.agents.values_mut() {
            if agent.state.is_live() && agent.expires_at <= now {
                agent.state = AgentState::Expired;
                self.dirty.insert(agent.id.clone());
                lost.push(Lost {
                    agent_id: agent.id.clone(),
                    zone: agent.zone.clone(),
                    in_flight: std::mem::take(&mut agent.in_flight),
                });
            }
        }
        lost
    }

    /// Drops agents whose lease ended before `before`.
    pub fn forget_inactive(&mut self, before: DateTime<Utc>) {
        let removed = &mut self.removed;
        let dirty = &mut self.dirty;
        self.agents.retain(|id, a| {
            let keep = a.state.is_live() || a.expires_at >= before;
            if !keep {
                dirty.remove(id);
                removed.insert(id.clone());
            }
            keep
        });
    }

    /// The agent, if registered (in any state).
    pub fn get(&self, id: &str) -> Option<&Agent> {
        self.agents.get(id)
    }

    /// Live agents of `zone` that take work (active, not draining).
    pub fn active_in(&self, zone: &Zone) -> usize {
        self.agents
            .values()
            .filter(|a| a.state == AgentState::Active && a.zone == *zone)
            .count()
    }

    /// Agents by zone then registration time; only live ones unless `include_inactive`.
    pub fn list(&self, zone: Option<&Zone>, include_inactive: bool) -> Vec<&Agent> {
        let mut out: Vec<&Agent> = self
            .agents
            .values()
            .filter(|a| zone.is_none_or(|z| a.zone == *z))
            .filter(|a| include_inactive || a.state.is_live())
            .collect();
        out.sort_by(|a, b| {
            (&a.zone, a.registered_at, a.lease_epoch).cmp(&(
                &b.zone,
                b.registered_at,
                b.lease_epoch,
            ))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;

    /// Whether `id` holds a live lease for `zone` in `r`.
    fn live_in(r: &Registry, id: &str, zone: &Zone) -> bool {
        r.get(id)
            .is_some_and(|a| a.state.is_live() && a.zone == *zone)
    }

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 29, 0, 0, 0).unwrap() + TimeDelta::seconds(secs)
    }

    fn zone(z: &str) -> Zone {
        Zone::parse(z).expect("zone")
    }

    fn reg() -> Registration {
        Registration {
            capacity: 4,
            version: "0.1.0".into(),
            hostname: "host-a".into(),
            ..Registration::default()
        }
    }

    fn held(object: &str) -> HeldAttempt {
        HeldAttempt {
            batch_id: "b-1".into(),
            object_id: object.into(),
            attempt: 1,
            dispatch_epoch: 7,
        }
    }

    #[test]
    fn a_lease_key_is_stored_as_hex_and_never_printed() {
        let mut r = Registry::new(Duration::from_secs(10));
        let key = LeaseKey::new([0xab; LeaseKey::LEN]);
        let a = r
            .register(
                zone("raw"),
                Registration {
                    result_key: Some(key.clone()),
                    ..reg()
                },
                1,
                t(0),
            )
            .clone();
        let shown = format!("{a:?}");
        assert!(shown.contains("LeaseKey(<redacted>)"), "{shown}");
        assert!(!shown.contains("171") && !shown.contains("abab"), "{shown}");
        let json = serde_json::to_string(&a).expect("encodable");
        assert!(json.contains(&"ab".repeat(LeaseKey::LEN)), "{json}");
        let back: Agent = serde_json::from_str(&json).expect("decodable");
        assert_eq!(back.result_key, Some(key));
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old.as_object_mut().unwrap().remove("result_key");
        let old: Agent = serde_json::from_value(old).expect("a lease stored before keys");
        assert_eq!(old.result_key, None);
    }

    #[test]
    fn a_rotated_key_replaces_the_current_one_and_the_old_one_lasts_its_grace() {
        let mut r = Registry::new(Duration::from_secs(10));
        let (k1, k2) = (LeaseKey::new([1; 32]), LeaseKey::new([2; 32]));
        let a = r
            .register(
                zone("raw"),
                Registration {
                    result_key: Some(k1.clone()),
                    ..reg()
                },
                1,
                t(0),
            )
            .clone();
        assert_eq!(a.result_key_since(), t(0));
        assert!(r.rotate_result_key(&a.id, a.lease_epoch, k2.clone(), t(5)));
        let a = r.get(&a.id).expect("registered").clone();
        let grace = TimeDelta::seconds(60);
        let keys = a.result_keys(t(64), grace);
        assert_eq!((keys.current, keys.previous), (Some(&k2), Some(&k1)));
        assert!(keys.previous_valid, "59 s after the rotation");
        assert!(!a.result_keys(t(65), grace).previous_valid, "60 s after");
        // Stored and restored with both keys.
        let back: Agent = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
        // An ended lease's key does not rotate.
        r.deregister(&a.id, a.lease_epoch, t(6)).expect("ended");
        assert!(!r.rotate_result_key(&a.id, a.lease_epoch, LeaseKey::new([3; 32]), t(7)));
        assert_eq!(r.get(&a.id).unwrap().result_key, Some(k2));
    }

    #[test]
    fn a_lease_lives_by_heartbeats_and_expires_with_what_it_held() {
        let mut r = Registry::new(Duration::from_secs(10));
        let a = r.register(zone("raw"), reg(), 0xab, t(0)).clone();
        assert_eq!(a.lease_epoch, 1);
        assert!(live_in(&r, &a.id, &zone("raw")));
        assert!(!live_in(&r, &a.id, &zone("application")));
        assert_eq!(r.active_in(&zone("raw")), 1);
        r.heartbeat(&a.id, 1, vec![held("1001")], false, t(8))
            .expect("renewed");
        assert!(r.expire(t(17)).is_empty(), "renewed until 18");
        let lost = r.expire(t(18));
        assert_eq!(
            lost,
            vec![Lost {
                agent_id: a.id.clone(),
                zone: zone("raw"),
                in_flight: vec![held("1001")]
            }]
        );
        assert!(!live_in(&r, &a.id, &zone("raw")));
        assert!(r.expire(t(30)).is_empty(), "expired once");
        assert!(matches!(
            r.heartbeat(&a.id, 1, vec![], false, t(31)),
            Err(LeaseError::Ended { how: "expired", .. })
        ));
        assert_eq!(r.list(None, false).len(), 0);
        assert_eq!(r.list(None, true).len(), 1);
        r.forget_inactive(t(100));
        assert!(r.get(&a.id).is_none());
    }

    #[test]
    fn changes_rebuild_the_registry_and_a_restart_extends_live_leases() {
        let mut r = Registry::new(Duration::from_secs(10));
        let a = r.register(zone("raw"), reg(), 1, t(0)).clone();
        let b = r.register(zone("application"), reg(), 1, t(0)).clone();
        let c = r.register(zone("raw"), reg(), 1, t(0)).clone();
        r.heartbeat(&a.id, a.lease_epoch, vec![held("1001")], false, t(5))
            .expect("renewed");
        r.deregister(&c.id, c.lease_epoch, t(5)).expect("ended");
        // Persist everything, then change more: only the change is handed out.
        let first = r.take_changes().expect("changes");
        assert_eq!(first.upsert.len(), 3);
        assert_eq!(first.next_epoch, 4);
        assert_eq!(r.take_changes(), None, "nothing changed since");
        r.mark_unsaved(&first);
        assert_eq!(
            r.take_changes().as_ref(),
            Some(&first),
            "a failed write comes back"
        );
        r.heartbeat(&b.id, b.lease_epoch, vec![], true, t(6))
            .expect("renewed");
        r.forget_inactive(t(100));
        let second = r.take_changes().expect("changes");
        assert_eq!(
            second.upsert.iter().map(|a| &a.id).collect::<Vec<_>>(),
            [&b.id]
        );
        assert_eq!(second.removed, vec![c.id.clone()]);
        assert!(
            r.heartbeat("agent-nope", 1, vec![], false, t(7)).is_err()
                && r.take_changes().is_none(),
            "a refused heartbeat changes nothing"
        );

        // A store applying both change sets holds a and b; the control plane restarts at 40,
        // long after both leases would have run out.
        let mut stored: BTreeMap<String, Agent> = BTreeMap::new();
        for changes in [first, second] {
            for agent in changes.upsert {
                stored.insert(agent.id.clone(), agent);
            }
            for id in changes.removed {
                stored.remove(&id);
            }
        }
        let mut restored = Registry::restore(
            Duration::from_secs(10),
            stored.into_values().collect(),
            4,
            t(40),
        );
        assert_eq!(restored.list(None, true).len(), 2);
        assert!(
            restored.expire(t(49)).is_empty(),
            "a full TTL from the restart"
        );
        let kept = restored
            .heartbeat(&a.id, a.lease_epoch, vec![], false, t(45))
            .expect("the old lease is honoured")
            .clone();
        assert_eq!(kept.zone, zone("raw"));
        assert!(live_in(&restored, &a.id, &zone("raw")));
        assert_eq!(
            restored.get(&b.id).map(|b| b.state),
            Some(AgentState::Draining)
        );
        let d = restored.register(zone("raw"), reg(), 2, t(46)).clone();
        assert_eq!(d.lease_epoch, 4, "epochs continue after the stored ones");
        let lost = restored.expire(t(51));
        assert_eq!(lost.len(), 1, "b was not renewed after the restart");
        assert_eq!(lost[0].agent_id, b.id);
    }

    #[test]
    fn epochs_fence_heartbeats_and_deregistration_hands_back_work() {
        let mut r = Registry::new(Duration::from_secs(10));
        let a = r.register(zone("raw"), reg(), 1, t(0)).clone();
        let b = r.register(zone("raw"), reg(), 1, t(1)).clone();
        assert!(b.lease_epoch > a.lease_epoch);
        assert_ne!(a.id, b.id);
        assert!(matches!(
            r.heartbeat(&a.id, b.lease_epoch, vec![], false, t(2)),
            Err(LeaseError::StaleEpoch { .. })
        ));
        assert!(matches!(
            r.heartbeat("agent-nope", 1, vec![], false, t(2)),
            Err(LeaseError::UnknownAgent(_))
        ));
        r.heartbeat(&b.id, b.lease_epoch, vec![held("1002")], true, t(2))
            .expect("draining");
        assert_eq!(r.get(&b.id).map(|a| a.state), Some(AgentState::Draining));
        assert_eq!(
            r.active_in(&zone("raw")),
            1,
            "a draining agent takes no work"
        );
        assert_eq!(
            r.deregister(&b.id, b.lease_epoch, t(3)),
            Ok(vec![held("1002")])
        );
        assert_eq!(r.deregister(&b.id, b.lease_epoch, t(4)), Ok(vec![]));
        assert_eq!(r.deregister("agent-nope", 9, t(4)), Ok(vec![]));
        assert!(r.expire(t(60)).iter().all(|l| l.agent_id == a.id));
        let listed: Vec<&str> = r
            .list(Some(&zone("raw")), true)
            .iter()
            .map(|a| a.id.as_str())
            .collect();
        assert_eq!(listed, [a.id.as_str(), b.id.as_str()]);
    }
}
