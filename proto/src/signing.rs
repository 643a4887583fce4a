//! The signatures of the signed records (`strata/v1/events.proto`): the canonical text each
//! covers, written once here for both sides.
//!
//! - Results (`ObjectResult`): HMAC-SHA256 with the agent's per-lease `result_signing_key`
//!   ([`ResultKey`]); the agent signs, the control plane verifies.
//! - Ready records (`ObjectReady`): Ed25519 with the control plane's key ([`ReadySigner`]); the
//!   control plane signs, agents verify with the public key they got at registration
//!   ([`ReadyVerifier`]).
//!
//! Keys never print: their `Debug` says `<redacted>`.

use std::fmt;

use ed25519_dalek::Signer as _;
use hmac::{Hmac, Mac};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::kafka::{READY_SIGNATURE_DOMAIN, RESULT_SIGNATURE_DOMAIN};
use crate::v1::{ObjectReady, ObjectResult, object_result};

/// Length of a result signing key, of an Ed25519 seed and of an Ed25519 public key, in bytes.
pub const KEY_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Lowercase hex of the SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The canonical text a result's signature covers (see `ObjectResult` in events.proto), or
/// `None` when no outcome is set.
pub fn result_signed_text(result: &ObjectResult) -> Option<Vec<u8>> {
    use object_result::Result as R;
    let (kind, batch, object, zone, attempt, epoch, agent, lease, failed) =
        match result.result.as_ref()? {
            R::Started(s) => (
                "started",
                &s.batch_id,
                &s.object_id,
                &s.zone,
                s.attempt,
                s.dispatch_epoch,
                &s.agent_id,
                s.agent_lease_epoch,
                None,
            ),
            R::Loaded(l) => (
                "loaded",
                &l.batch_id,
                &l.object_id,
                &l.zone,
                l.attempt,
                l.dispatch_epoch,
                &l.agent_id,
                l.agent_lease_epoch,
                None,
            ),
            R::Failed(f) => (
                "failed",
                &f.batch_id,
                &f.object_id,
                &f.zone,
                f.attempt,
                f.dispatch_epoch,
                &f.agent_id,
                f.agent_lease_epoch,
                Some((f.retryable, f.error.as_str())),
            ),
        };
    let mut lines = vec![
        RESULT_SIGNATURE_DOMAIN.to_owned(),
        kind.to_owned(),
        batch.clone(),
        object.clone(),
        zone.clone(),
        attempt.to_string(),
        epoch.to_string(),
        agent.clone(),
        lease.to_string(),
    ];
    if let Some((retryable, _)) = failed {
        lines.push(retryable.to_string());
    }
    lines.push(sha256_hex(failed.map_or("", |(_, error)| error).as_bytes()));
    Some(lines.join("\n").into_bytes())
}

/// The signature and lease epoch a result carries (empty signature: unsigned).
pub fn result_seal(result: &ObjectResult) -> Option<(&[u8], u64)> {
    use object_result::Result as R;
    Some(match result.result.as_ref()? {
        R::Started(s) => (&s.signature, s.agent_lease_epoch),
        R::Loaded(l) => (&l.signature, l.agent_lease_epoch),
        R::Failed(f) => (&f.signature, f.agent_lease_epoch),
    })
    .map(|(sig, epoch)| (sig.as_slice(), epoch))
}

/// A lease's result signing key (HMAC-SHA256, [`KEY_LEN`] bytes). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ResultKey([u8; KEY_LEN]);

impl fmt::Debug for ResultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResultKey(<redacted>)")
    }
}

impl ResultKey {
    /// The key of these bytes; `None` unless exactly [`KEY_LEN`] long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The key's bytes (for the registration reply and the lease store only).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn mac(&self, text: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(text);
        mac
    }

    /// Signs `result` in place (its inner message's `signature`); a result with no outcome is
    /// left as is.
    pub fn sign(&self, result: &mut ObjectResult) {
        use object_result::Result as R;
        let Some(text) = result_signed_text(result) else {
            return;
        };
        let signature = self.mac(&text).finalize().into_bytes().to_vec();
        match result.result.as_mut() {
            Some(R::Started(s)) => s.signature = signature,
            Some(R::Loaded(l)) => l.signature = signature,
            Some(R::Failed(f)) => f.signature = signature,
            None => {}
        }
    }

    /// Whether `signature` is this key's over `signed_text` (compared in constant time).
    pub fn verify(&self, signed_text: &[u8], signature: &[u8]) -> bool {
        self.mac(signed_text).verify_slice(signature).is_ok()
    }
}

/// The canonical text a Ready's signature covers (see `ObjectReady` in events.proto).
pub fn ready_signed_text(ready: &ObjectReady) -> Vec<u8> {
    let object = ready
        .object
        .as_ref()
        .map(Message::encode_to_vec)
        .unwrap_or_default();
    let timeout = ready.execution_timeout.as_ref().map_or_else(
        || "unset".to_owned(),
        |d| format!("{} {}", d.seconds, d.nanos),
    );
    [
        READY_SIGNATURE_DOMAIN.to_owned(),
        ready.batch_id.clone(),
        ready.object_id.clone(),
        ready.zone.clone(),
        ready.attempt.to_string(),
        ready.max_attempts.to_string(),
        ready.dispatch_epoch.to_string(),
        sha256_hex(&object),
        timeout,
    ]
    .join("\n")
    .into_bytes()
}

/// The control plane's Ready signing key (Ed25519, from a [`KEY_LEN`]-byte seed). `Debug` never
/// shows it.
#[derive(Clone)]
pub struct ReadySigner(ed25519_dalek::SigningKey);

impl fmt::Debug for ReadySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReadySigner(<redacted>)")
    }
}

impl ReadySigner {
    /// The key of a seed.
    pub fn from_seed(seed: &[u8; KEY_LEN]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The public key agents verify with (`RegisterAgentResponse.ready_verify_key`).
    pub fn verify_key(&self) -> [u8; KEY_LEN] {
        self.0.verifying_key().to_bytes()
    }

    /// Signs `ready` in place (its `signature`).
    pub fn sign(&self, ready: &mut ObjectReady) {
        ready.signature = self.0.sign(&ready_signed_text(ready)).to_bytes().to_vec();
    }
}

/// Why a Ready's signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyRejection {
    /// It has none.
    Unsigned,
    /// It is not the control plane's over this Ready.
    BadSignature,
}

impl ReadyRejection {
    /// Its metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadyRejection::Unsigned => "unsigned",
            ReadyRejection::BadSignature => "bad_signature",
        }
    }
}

/// The control plane's Ready public key, as an agent holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyVerifier(ed25519_dalek::VerifyingKey);

impl ReadyVerifier {
    /// The key of these bytes; `None` unless they are a valid Ed25519 public key.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; KEY_LEN] = bytes.try_into().ok()?;
        ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .ok()
            .map(Self)
    }

    /// Whether `ready` carries the control plane's signature over its canonical text.
    pub fn verify(&self, ready: &ObjectReady) -> Result<(), ReadyRejection> {
        if ready.signature.is_empty() {
            return Err(ReadyRejection::Unsigned);
        }
        let signature = ed25519_dalek::Signature::from_slice(&ready.signature)
            .map_err(|_| ReadyRejection::BadSignature)?;
        self.0
            .verify_strict(&ready_signed_text(ready), &signature)
            .map_err(|_| ReadyRejection::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{ObjectDefinition, ObjectFailed, ObjectLoaded};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn failed() -> ObjectResult {
        ObjectResult {
            result: Some(object_result::Result::Failed(ObjectFailed {
                batch_id: "b-1".into(),
                object_id: "1001".into(),
                zone: "raw".into(),
                attempt: 2,
                dispatch_epoch: 7,
                agent_id: "agent-raw-1-3".into(),
                agent_lease_epoch: 3,
                retryable: true,
                error: "disk full".into(),
                ..ObjectFailed::default()
            })),
        }
    }

    fn ready() -> ObjectReady {
        ObjectReady {
            batch_id: "b-1".into(),
            object_id: "1001".into(),
            zone: "raw".into(),
            attempt: 1,
            max_attempts: 3,
            dispatch_epoch: 7,
            object: Some(ObjectDefinition {
                id: "1001".into(),
                zone: "raw".into(),
                attributes: [("b", "2"), ("a", "1")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                ..ObjectDefinition::default()
            }),
            execution_timeout: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..ObjectReady::default()
        }
    }

    #[test]
    fn result_canonical_text_and_signature_vector() {
        let text = String::from_utf8(result_signed_text(&failed()).expect("outcome")).unwrap();
        assert_eq!(
            text,
            "strata.v1.result\nfailed\nb-1\n1001\nraw\n2\n7\nagent-raw-1-3\n3\ntrue\n\
             8c96d76f620269be0f4cbc27e6cb594426729e32474260ef82eb6fc24b2cba2f",
            "the last line is the SHA-256 of the error"
        );
        let loaded = ObjectResult {
            result: Some(object_result::Result::Loaded(ObjectLoaded {
                batch_id: "b-1".into(),
                object_id: "1001".into(),
                zone: "raw".into(),
                attempt: 1,
                dispatch_epoch: 7,
                agent_id: "agent-raw-1-3".into(),
                agent_lease_epoch: 3,
                ..ObjectLoaded::default()
            })),
        };
        assert_eq!(
            String::from_utf8(result_signed_text(&loaded).expect("outcome")).unwrap(),
            "strata.v1.result\nloaded\nb-1\n1001\nraw\n1\n7\nagent-raw-1-3\n3\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "no error: the digest of the empty string"
        );
        let key = ResultKey::from_slice(&[7u8; KEY_LEN]).expect("32 bytes");
        let mut signed = failed();
        key.sign(&mut signed);
        let (signature, epoch) = result_seal(&signed).expect("outcome");
        assert_eq!(epoch, 3);
        assert_eq!(
            hex(signature),
            "75123a71ade57285f3a42424d7d67a5acb8bab831c88d54b1f61ce0f7172264c"
        );
        let text = result_signed_text(&signed).expect("outcome");
        assert!(key.verify(&text, signature));
        assert!(
            !ResultKey::from_slice(&[8u8; KEY_LEN])
                .unwrap()
                .verify(&text, signature)
        );
        assert!(
            !key.verify(&text, &signature[..31]),
            "a truncated tag fails"
        );
    }

    #[test]
    fn ready_canonical_text_vector_and_signatures() {
        let r = ready();
        let text = String::from_utf8(ready_signed_text(&r)).unwrap();
        let object = sha256_hex(&r.object.as_ref().unwrap().encode_to_vec());
        assert_eq!(
            text,
            format!("strata.v1.ready\nb-1\n1001\nraw\n1\n3\n7\n{object}\n60 0")
        );
        let signer = ReadySigner::from_seed(&[1u8; KEY_LEN]);
        let verifier = ReadyVerifier::from_slice(&signer.verify_key()).expect("a public key");
        let mut signed = ready();
        assert_eq!(verifier.verify(&signed), Err(ReadyRejection::Unsigned));
        signer.sign(&mut signed);
        assert_eq!(verifier.verify(&signed), Ok(()));
        // Decoded from the wire, the definition encodes the same (attributes by key).
        let decoded = ObjectReady::decode(signed.encode_to_vec().as_slice()).unwrap();
        assert_eq!(verifier.verify(&decoded), Ok(()));
        let mut forged = signed.clone();
        forged
            .object
            .as_mut()
            .unwrap()
            .attributes
            .insert("command".into(), "touch /tmp/x".into());
        assert_eq!(verifier.verify(&forged), Err(ReadyRejection::BadSignature));
        let mut other = ready();
        ReadySigner::from_seed(&[2u8; KEY_LEN]).sign(&mut other);
        assert_eq!(verifier.verify(&other), Err(ReadyRejection::BadSignature));
    }

    #[test]
    fn keys_never_print() {
        let key = ResultKey::from_slice(&[0xab; KEY_LEN]).unwrap();
        let signer = ReadySigner::from_seed(&[0xab; KEY_LEN]);
        for shown in [format!("{key:?}"), format!("{signer:?}")] {
            assert!(shown.contains("<redacted>"), "{shown}");
            assert!(!shown.contains("ab") && !shown.contains("171"), "{shown}");
        }
    }
}
