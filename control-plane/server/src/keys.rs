//! The control plane's key material for signed records (`strata_proto::signing`): a fresh
//! result signing key for every agent lease, and the Ready signing key kept in the state store
//! (one for every control plane on that store, across restarts). Keys (and the store's
//! generation marker) are drawn from the OS.

use strata_core::agents::LeaseKey;
use strata_proto::signing::{KEY_LEN, ReadySigner};

use crate::ports::{PortResult, StateStore};

/// `N` random bytes from the OS.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(bytes)
}

/// A new lease's result signing key.
pub fn new_lease_key() -> Result<LeaseKey, String> {
    random_bytes::<KEY_LEN>().map(LeaseKey::new)
}

/// The Ready signing key of `store`: the stored one, or a new one stored now.
pub async fn ready_signer<S: StateStore>(store: &S) -> PortResult<ReadySigner> {
    let candidate =
        random_bytes::<KEY_LEN>().map_err(|detail| crate::ports::PortError::Rejected {
            service: "os",
            detail,
        })?;
    let seed = store.ready_signing_seed(candidate).await?;
    Ok(ReadySigner::from_seed(&seed))
}
