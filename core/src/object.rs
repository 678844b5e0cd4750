//! A reference to one stored object: its key, ciphertext length and hash.
//!
//! Manifests, WAL records and condemned lists all point at objects this way;
//! a copy read from a provider is used only once it matches its reference.
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One stored object: where, how long, and the BLAKE3 hash of its ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    pub key: String,
    pub len: u64,
    pub hash: String,
}

impl ObjectRef {
    /// A reference to `bytes` stored under `key`.
    pub fn of(key: impl Into<String>, bytes: &[u8]) -> ObjectRef {
        ObjectRef { key: key.into(), len: bytes.len() as u64, hash: crate::hash_hex(bytes) }
    }

    /// Checks a copy served by `provider` against the length and hash recorded.
    pub fn check(&self, provider: &str, bytes: &[u8]) -> Result<()> {
        let actual = crate::hash_hex(bytes);
        if bytes.len() as u64 != self.len || actual != self.hash {
            return Err(Error::CiphertextHash { key: self.key.clone(), provider: provider.into(), expected: self.hash.clone(), actual });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_must_match_its_reference() {
        let r = ObjectRef::of("packs/ab/ab", b"sealed");
        assert!(r.check("a", b"sealed").is_ok());
        assert!(matches!(r.check("a", b"sealeD"), Err(Error::CiphertextHash { .. })));
        assert!(matches!(r.check("a", b"sealed!"), Err(Error::CiphertextHash { .. })));
    }
}
