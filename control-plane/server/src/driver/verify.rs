//! Result verification: a report is applied only if it is signed with the key of the lease it
//! names (its current key, or the one that key replaced while the rotation is recent), that
//! lease is the agent's current one and still live, and its zone is the object's (the rules and
//! their order are in `ObjectResult`'s comment, events.proto). Pure: the registry and the time
//! are read, nothing else.

use chrono::{DateTime, TimeDelta, Utc};
use strata_core::Zone;
use strata_core::agents::{LeaseKey, Registry};
use strata_proto::signing::ResultKey;

use crate::records::ReportSeal;

/// Why a report was rejected (the `reason` of `strata_results_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rejection {
    /// No signature.
    Unsigned,
    /// No lease `(agent_id, agent_lease_epoch)` with a key is known.
    UnknownLease,
    /// The lease is older than the agent's current one, or had ended.
    OldLease,
    /// The signature is not the lease key's over the report.
    BadSignature,
    /// Signed with a key the lease replaced longer ago than the rotation grace.
    OldKey,
    /// The lease's zone is not the object's.
    WrongZone,
}

impl Rejection {
    /// The metrics label.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::UnknownLease => "unknown_lease",
            Rejection::OldLease => "old_lease",
            Rejection::BadSignature => "bad_signature",
            Rejection::OldKey => "old_key",
            Rejection::WrongZone => "wrong_zone",
        }
    }
}

/// Checks the report of agent `agent_id`, sealed with `seal`, about an object of `zone`, at
/// `now`; a key the lease replaced signs valid results for `grace` after the rotation.
pub(super) fn verify(
    agents: &Registry,
    agent_id: &str,
    seal: &ReportSeal,
    zone: &Zone,
    now: DateTime<Utc>,
    grace: TimeDelta,
) -> Result<(), Rejection> {
    if seal.signature.is_empty() {
        return Err(Rejection::Unsigned);
    }
    let agent = agents
        .get(agent_id)
        .filter(|a| a.lease_epoch >= seal.lease_epoch)
        .ok_or(Rejection::UnknownLease)?;
    if seal.lease_epoch < agent.lease_epoch {
        return Err(Rejection::OldLease);
    }
    let keys = agent.result_keys(now, grace);
    let signs = |key: &LeaseKey| {
        ResultKey::from_slice(key.as_bytes())
            .expect("a lease key is 32 bytes")
            .verify(&seal.signed_text, &seal.signature)
    };
    match (keys.current, keys.previous) {
        (None, _) => return Err(Rejection::UnknownLease),
        (Some(current), _) if signs(current) => {}
        (_, Some(previous)) if signs(previous) => {
            if !keys.previous_valid {
                return Err(Rejection::OldKey);
            }
        }
        _ => return Err(Rejection::BadSignature),
    }
    if !agent.state.is_live() {
        return Err(Rejection::OldLease);
    }
    if agent.zone != *zone {
        return Err(Rejection::WrongZone);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;
    use strata_core::agents::{LeaseKey, Registration};
    use strata_proto::signing::result_signed_text;
    use strata_proto::v1::{ObjectLoaded, ObjectResult, object_result};

    use super::*;

    fn zone(z: &str) -> Zone {
        Zone::parse(z).expect("zone")
    }

    fn register(r: &mut Registry, z: &str, key: u8) -> (String, u64) {
        let a = r.register(
            zone(z),
            Registration {
                capacity: 1,
                result_key: Some(LeaseKey::new([key; 32])),
                ..Registration::default()
            },
            1,
            Utc::now(),
        );
        (a.id.clone(), a.lease_epoch)
    }

    /// A `loaded` report of `agent`'s lease `epoch`, signed with `key` (none: unsigned).
    fn seal(agent: &str, epoch: u64, key: Option<u8>) -> ReportSeal {
        let mut result = ObjectResult {
            result: Some(object_result::Result::Loaded(ObjectLoaded {
                batch_id: "b-1".into(),
                object_id: "1001".into(),
                zone: "raw".into(),
                agent_id: agent.into(),
                agent_lease_epoch: epoch,
                ..ObjectLoaded::default()
            })),
        };
        if let Some(k) = key {
            ResultKey::from_slice(&[k; 32]).unwrap().sign(&mut result);
        }
        let (signature, lease_epoch) = strata_proto::signing::result_seal(&result).unwrap();
        ReportSeal {
            lease_epoch,
            signature: signature.to_vec(),
            signed_text: result_signed_text(&result).unwrap(),
        }
    }

    const GRACE: TimeDelta = TimeDelta::seconds(60);

    #[test]
    fn a_rotated_lease_key_signs_for_its_grace_and_then_is_an_old_key() {
        let mut r = Registry::new(Duration::from_secs(600));
        let (a, ea) = register(&mut r, "raw", 1);
        let raw = zone("raw");
        let rotated = Utc::now();
        assert!(r.rotate_result_key(&a, ea, LeaseKey::new([2; 32]), rotated));
        let at = |secs| rotated + TimeDelta::seconds(secs);
        assert_eq!(
            verify(&r, &a, &seal(&a, ea, Some(2)), &raw, at(0), GRACE),
            Ok(())
        );
        assert_eq!(
            verify(&r, &a, &seal(&a, ea, Some(1)), &raw, at(59), GRACE),
            Ok(()),
            "signed just before the rotation, verified within the grace"
        );
        assert_eq!(
            verify(&r, &a, &seal(&a, ea, Some(1)), &raw, at(60), GRACE),
            Err(Rejection::OldKey)
        );
        assert_eq!(
            verify(&r, &a, &seal(&a, ea, Some(3)), &raw, at(0), GRACE),
            Err(Rejection::BadSignature)
        );
        // A second rotation forgets the first key.
        assert!(r.rotate_result_key(&a, ea, LeaseKey::new([3; 32]), at(1)));
        assert_eq!(
            verify(&r, &a, &seal(&a, ea, Some(1)), &raw, at(2), GRACE),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            verify(&r, &a, &seal(&a, ea, Some(2)), &raw, at(2), GRACE),
            Ok(())
        );
    }

    #[test]
    fn every_rejection_reason() {
        let mut r = Registry::new(Duration::from_secs(60));
        let (a, ea) = register(&mut r, "raw", 1);
        let raw = zone("raw");
        assert_eq!(
            verify(&r, &a, &seal(&a, ea, Some(1)), &raw, Utc::now(), GRACE),
            Ok(())
        );
        assert_eq!(
            verify(&r, &a, &seal(&a, ea, None), &raw, Utc::now(), GRACE),
            Err(Rejection::Unsigned)
        );
        assert_eq!(
            verify(&r, &a, &seal(&a, ea, Some(2)), &raw, Utc::now(), GRACE),
            Err(Rejection::BadSignature)
        );
        let mut tampered = seal(&a, ea, Some(1));
        tampered.signed_text.extend_from_slice(b"x");
        assert_eq!(
            verify(&r, &a, &tampered, &raw, Utc::now(), GRACE),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            verify(
                &r,
                "agent-nope",
                &seal("agent-nope", ea, Some(1)),
                &raw,
                Utc::now(),
                GRACE
            ),
            Err(Rejection::UnknownLease)
        );
        assert_eq!(
            verify(&r, &a, &seal(&a, ea + 1, Some(1)), &raw, Utc::now(), GRACE),
            Err(Rejection::UnknownLease),
            "an epoch the agent never had"
        );
        assert_eq!(
            verify(&r, &a, &seal(&a, ea - 1, Some(1)), &raw, Utc::now(), GRACE),
            Err(Rejection::OldLease),
            "an epoch older than the agent's"
        );
        assert_eq!(
            verify(
                &r,
                &a,
                &seal(&a, ea, Some(1)),
                &zone("application"),
                Utc::now(),
                GRACE
            ),
            Err(Rejection::WrongZone)
        );
        // The agent registers again (a new lease, a new key); its old lease ends.
        let (b, eb) = register(&mut r, "raw", 3);
        r.deregister(&a, ea, Utc::now()).expect("ended");
        assert_eq!(
            verify(&r, &a, &seal(&a, ea, Some(1)), &raw, Utc::now(), GRACE),
            Err(Rejection::OldLease),
            "correctly signed, by a lease that had ended"
        );
        assert_eq!(
            verify(&r, &a, &seal(&a, ea, Some(2)), &raw, Utc::now(), GRACE),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            verify(&r, &b, &seal(&b, eb, Some(3)), &raw, Utc::now(), GRACE),
            Ok(())
        );
        assert_eq!(
            verify(&r, &b, &seal(&b, eb, Some(1)), &raw, Utc::now(), GRACE),
            Err(Rejection::BadSignature),
            "the old lease's key does not sign for the new one"
        );
    }
}
