//! Keys: the agent key file (signing + dedup key), verify keys, age recipients
//! and identities.
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::{Error, Result};

const KEY_FILE_HEADER: &str = "# bascule agent key: keep it secret, keep it on site";

/// A secret file's text, refused when its group or others may read it.
pub fn read_private(path: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Error::KeyFile {
            path: path.into(),
            reason: format!("its group or other users may read it (mode {:o}): chmod 600 {}", mode & 0o777, path.display()),
        });
    }
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// The agent's secrets: the ed25519 signing key and the BLAKE3 key that makes
/// chunk ids unguessable to a provider. Never printed.
pub struct AgentKey {
    signing: SigningKey,
    dedup: [u8; 32],
}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentKey({}, secrets redacted)", self.verify_key())
    }
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    // kept: without the operating system's random source no key can be made
    #[allow(clippy::expect_used)]
    getrandom::getrandom(&mut b).expect("the operating system's random source is unavailable");
    b
}

impl AgentKey {
    pub fn generate() -> Self {
        AgentKey { signing: SigningKey::from_bytes(&random32()), dedup: random32() }
    }

    /// Writes the key file with mode 0600; refuses to overwrite an existing file.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        let text = format!(
            "{KEY_FILE_HEADER}\n# verify key (public): {}\nsigning {}\ndedup {}\n",
            self.verify_key(),
            hex::encode(self.signing.to_bytes()),
            hex::encode(self.dedup)
        );
        crate::config::write_new_secret(path, text.as_bytes())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = read_private(path)?;
        Self::parse(&text, path)
    }

    /// A key file's text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let bad = |reason: &str| Error::KeyFile { path: path.into(), reason: reason.into() };
        let (mut signing, mut dedup) = (None, None);
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line.split_once(' ').ok_or_else(|| bad("a line is not `name value`"))?;
            let bytes: [u8; 32] =
                hex::decode(value.trim()).ok().and_then(|v| v.try_into().ok()).ok_or_else(|| bad("a value is not 64 hex digits"))?;
            match name {
                "signing" => signing = Some(bytes),
                "dedup" => dedup = Some(bytes),
                _ => return Err(bad("unknown line")),
            }
        }
        Ok(AgentKey {
            signing: SigningKey::from_bytes(&signing.ok_or_else(|| bad("no `signing` line"))?),
            dedup: dedup.ok_or_else(|| bad("no `dedup` line"))?,
        })
    }

    pub fn verify_key(&self) -> VerifyKey {
        VerifyKey(self.signing.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The id of a chunk: the first 128 bits of the keyed BLAKE3 of its
    /// plaintext's BLAKE3 (one pass over the bytes serves both). A provider
    /// cannot test whether it holds a known plaintext without this key; 128
    /// bits keep accidental collisions out of reach (below 10⁻²² for a
    /// billion chunks) at half the memory of the whole hash.
    pub fn chunk_id(&self, plain_hash: &blake3::Hash) -> [u8; 16] {
        let h = blake3::keyed_hash(&self.dedup, plain_hash.as_bytes());
        let (id, _) = h.as_bytes().split_first_chunk::<16>().unwrap_or((&[0; 16], &[]));
        *id
    }
}

/// A public ed25519 verify key, written `ed25519:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VerifyKey(pub VerifyingKey);

impl fmt::Display for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for VerifyKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::VerifyKey { key: s.to_string() };
        let hexpart = s.trim().strip_prefix("ed25519:").ok_or_else(bad)?;
        let bytes: [u8; 32] = hex::decode(hexpart).ok().and_then(|v| v.try_into().ok()).ok_or_else(bad)?;
        VerifyingKey::from_bytes(&bytes).map(VerifyKey).map_err(|_| bad())
    }
}

impl VerifyKey {
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        self.0.verify_strict(message, &sig).is_ok()
    }
}

impl<'de> serde::Deserialize<'de> for VerifyKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A verify key a reader trusts, and when: an object it signed is accepted
/// only if the time the object carries (a manifest's start, a WAL record's
/// archive time, a HEAD's agent time) is at or after `valid_from` and before
/// `revoked_at`. Written as the bare key, or as
/// `{ key: "ed25519:…", valid_from: 2026-01-01T00:00:00Z, revoked_at: … }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub key: VerifyKey,
    pub valid_from: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Why a trusted key may not have signed an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotValid {
    #[error("{key} is valid from {from}, the object says {at}")]
    NotYet { key: String, from: chrono::DateTime<chrono::Utc>, at: chrono::DateTime<chrono::Utc> },
    #[error("{key} was revoked at {revoked}, the object says {at}")]
    Revoked { key: String, revoked: chrono::DateTime<chrono::Utc>, at: chrono::DateTime<chrono::Utc> },
}

impl TrustedKey {
    /// Whether an object that carries time `at` may be signed by this key.
    pub fn allows(&self, at: chrono::DateTime<chrono::Utc>) -> std::result::Result<(), NotValid> {
        if let Some(from) = self.valid_from {
            if at < from {
                return Err(NotValid::NotYet { key: self.key.to_string(), from, at });
            }
        }
        if let Some(revoked) = self.revoked_at {
            if at >= revoked {
                return Err(NotValid::Revoked { key: self.key.to_string(), revoked, at });
            }
        }
        Ok(())
    }
}

impl From<VerifyKey> for TrustedKey {
    fn from(key: VerifyKey) -> Self {
        TrustedKey { key, valid_from: None, revoked_at: None }
    }
}

impl<'de> serde::Deserialize<'de> for TrustedKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            key: VerifyKey,
            valid_from: Option<chrono::DateTime<chrono::Utc>>,
            revoked_at: Option<chrono::DateTime<chrono::Utc>>,
        }
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Either {
            Bare(VerifyKey),
            Full(Full),
        }
        Ok(match Either::deserialize(d)? {
            Either::Bare(key) => key.into(),
            Either::Full(f) => TrustedKey { key: f.key, valid_from: f.valid_from, revoked_at: f.revoked_at },
        })
    }
}

/// An age X25519 recipient (`age1…`), checked when the config is parsed.
#[derive(Clone)]
pub struct Recipient(pub age::x25519::Recipient);

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Recipient {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        age::x25519::Recipient::from_str(s.trim())
            .map(Recipient)
            .map_err(|e| Error::Recipient { recipient: s.to_string(), reason: e.to_string() })
    }
}

impl<'de> serde::Deserialize<'de> for Recipient {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The customer's age identities, held in memory only for the length of a
/// restore. Never printed.
pub struct Identities(Vec<age::x25519::Identity>);

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identities({} key(s), redacted)", self.0.len())
    }
}

impl Identities {
    /// Reads an age identity file (the format of `age-keygen`). The file is
    /// read once; the secret stays in memory only.
    pub fn load(path: &Path) -> Result<Self> {
        let text = read_private(path)?;
        Self::parse(&text).ok_or_else(|| Error::Identity { identity: path.display().to_string() })
    }

    pub fn parse(text: &str) -> Option<Self> {
        let ids: Vec<_> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
            .filter_map(|l| age::x25519::Identity::from_str(l).ok())
            .collect();
        (!ids.is_empty()).then_some(Identities(ids))
    }

    pub fn generate() -> (Self, Recipient) {
        let id = age::x25519::Identity::generate();
        let r = Recipient(id.to_public());
        (Identities(vec![id]), r)
    }

    /// The secret in age's file format (for tests and key generation tools).
    pub fn to_file_text(&self) -> String {
        use age::secrecy::ExposeSecret;
        self.0.iter().map(|i| format!("{}\n", i.to_string().expose_secret())).collect()
    }

    pub(crate) fn as_dyn(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.0.iter().map(|i| i as &dyn age::Identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        let k = AgentKey::generate();
        k.write_new(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let k2 = AgentKey::load(&path).unwrap();
        assert_eq!(k.verify_key(), k2.verify_key());
        assert_eq!(k.chunk_id(&blake3::hash(b"x")), k2.chunk_id(&blake3::hash(b"x")));
        assert!(k.write_new(&path).is_err(), "an existing key file must not be overwritten");
        let sig = k.sign(b"msg");
        assert!(k2.verify_key().verify(b"msg", &sig));
        assert!(!k2.verify_key().verify(b"msg2", &sig));
    }

    #[test]
    fn secrets_never_print() {
        let k = AgentKey::generate();
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&hex::encode(k.dedup)));
        assert!(!dbg.contains(&hex::encode(k.signing.to_bytes())));
        let (ids, _) = Identities::generate();
        assert!(!format!("{ids:?}").contains("AGE-SECRET-KEY"));
    }

    #[test]
    fn verify_key_parse() {
        let k = AgentKey::generate().verify_key();
        assert_eq!(k.to_string().parse::<VerifyKey>().unwrap(), k);
        assert!("ed25519:zz".parse::<VerifyKey>().is_err());
        assert!("age1xyz".parse::<Recipient>().is_err());
    }

    #[test]
    fn chunk_ids_are_keyed() {
        let (a, b) = (AgentKey::generate(), AgentKey::generate());
        let h = blake3::hash(b"same");
        assert_ne!(a.chunk_id(&h), b.chunk_id(&h));
        assert_ne!(a.chunk_id(&h)[..], h.as_bytes()[..16]);
    }
}
