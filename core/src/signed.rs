//! The signed envelope around every manifest, WAL record and `HEAD`.
//!
//! ```text
//! bascule-signed v1 <kind>
//! key ed25519:<hex verify key>
//! sig <hex ed25519 signature>
//!
//! <body: compact JSON, exactly the signed bytes>
//! ```
//! The signature covers `"bascule-signed v1 " + kind + "\n" + body`, so a
//! signature over a HEAD cannot be replayed as a manifest. The body is
//! readable with `sed '1,/^$/d' FILE | jq`, and is only parsed once the
//! signature verified.
//!
//! Every signed object of the format implements [`Signed`], and is opened
//! through [`Signed::open`] only: signature by a trusted key, that key valid
//! at the time the object carries, the object bound to its tenant and to the
//! key it is stored under (a validly signed object moved to another name is
//! refused).
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use serde::{de::DeserializeOwned, Serialize};

use crate::keys::{AgentKey, TrustedKey, VerifyKey};
use crate::{Error, Result};

const MAGIC: &str = "bascule-signed v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Manifest,
    Head,
    Wal,
    /// A drill report, signed by the controller.
    Report,
    /// An on-site restore test's result, signed by the agent.
    RestoreTest,
    /// A prune's list of condemned packs, signed by the controller.
    Condemned,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Head => "head",
            Kind::Wal => "wal",
            Kind::Report => "report",
            Kind::RestoreTest => "restore-test",
            Kind::Condemned => "condemned",
        }
    }
}

fn message(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{MAGIC} {}\n", kind.as_str()).into_bytes();
    m.extend_from_slice(body);
    m
}

/// An object of the format that travels in the signed envelope.
pub trait Signed: Serialize + DeserializeOwned {
    /// Which kind of object: part of what is signed.
    const KIND: Kind;

    /// The most bytes such an object may have on a provider: a longer one
    /// is refused before it is read whole.
    const MAX_LEN: u64;

    /// The time the object carries; the key that signed it must have been valid then.
    fn signed_at(&self) -> chrono::DateTime<chrono::Utc>;

    /// The tenant the object belongs to.
    fn tenant(&self) -> &str;

    /// The key the object must be stored under, as its own body says
    /// (`None`: the body contradicts itself).
    fn stored_at(&self) -> Option<String>;

    /// The envelope: the body signed with `key`.
    fn sign(&self, key: &AgentKey) -> Vec<u8> {
        sign(Self::KIND, self, key)
    }

    /// Opens an object read under `key`: a signature by one of `keys`, that
    /// key valid at the object's time, the object `tenant`'s and bound to `key`.
    fn open(bytes: &[u8], keys: &[TrustedKey], tenant: &str, key: &str) -> Result<Self> {
        Self::open_by(bytes, keys, tenant, key).map(|(v, _)| v)
    }

    /// [`Signed::open`], and which key signed it.
    fn open_by(bytes: &[u8], keys: &[TrustedKey], tenant: &str, key: &str) -> Result<(Self, VerifyKey)> {
        let verify: Vec<VerifyKey> = keys.iter().map(|t| t.key).collect();
        let (v, by) = open::<Self>(Self::KIND, bytes, &verify, key)?;
        for t in keys.iter().filter(|t| t.key == by) {
            t.allows(v.signed_at()).map_err(|reason| Error::KeyNotValid { key: key.into(), reason })?;
        }
        if v.tenant() != tenant {
            return Err(Error::Body { key: key.into(), reason: format!("the object is for tenant {:?}", v.tenant()) });
        }
        match v.stored_at() {
            Some(k) if k == key => Ok((v, by)),
            Some(other) => Err(Error::Body { key: key.into(), reason: format!("the object is signed for {other}") }),
            None => Err(Error::Body { key: key.into(), reason: "the object contradicts itself".into() }),
        }
    }
}

/// Serialises `body` and signs it (objects of the format sign with [`Signed::sign`]).
pub fn sign<T: Serialize + ?Sized>(kind: Kind, body: &T, key: &AgentKey) -> Vec<u8> {
    // serde_json fails only on maps with non-string keys, which no body has
    let body = serde_json::to_vec(body).unwrap_or_default();
    let sig = key.sign(&message(kind, &body));
    let mut out = format!("{MAGIC} {}\nkey {}\nsig {}\n\n", kind.as_str(), key.verify_key(), hex::encode(sig)).into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Verifies the envelope against the trusted keys, then parses the body.
/// Returns the body and the key that signed it. `name` is used in errors.
/// Objects of the format are opened with [`Signed::open`], which checks more.
pub fn open<T: DeserializeOwned>(kind: Kind, bytes: &[u8], trusted: &[VerifyKey], name: &str) -> Result<(T, VerifyKey)> {
    let bad = |reason: &str| Error::Envelope { key: name.into(), reason: reason.into() };
    let split = bytes.windows(2).position(|w| w == b"\n\n").ok_or_else(|| bad("no blank line after the header"))?;
    let (header, rest) = bytes.split_at(split);
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not UTF-8"))?;
    let body = rest.get(2..).unwrap_or_default();
    let mut lines = header.lines();
    let first = lines.next().unwrap_or_default();
    if first != format!("{MAGIC} {}", kind.as_str()) {
        return Err(bad(&format!("expected `{MAGIC} {}`, found `{first}`", kind.as_str())));
    }
    let key: VerifyKey = lines
        .next()
        .and_then(|l| l.strip_prefix("key "))
        .ok_or_else(|| bad("no `key` line"))?
        .parse()
        .map_err(|_| bad("bad `key` line"))?;
    let sig: [u8; 64] = lines
        .next()
        .and_then(|l| l.strip_prefix("sig "))
        .and_then(|h| hex::decode(h).ok())
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("bad `sig` line"))?;
    if !trusted.contains(&key) || !key.verify(&message(kind, body), &sig) {
        return Err(Error::BadSignature { key: name.into() });
    }
    let value = serde_json::from_slice(body).map_err(|e| Error::Body { key: name.into(), reason: e.to_string() })?;
    Ok((value, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
    struct B {
        n: u64,
        s: String,
    }

    #[test]
    fn sign_open_and_tamper() {
        let k = AgentKey::generate();
        let b = B { n: 7, s: "Hôtel de ville".into() };
        let bytes = sign(Kind::Head, &b, &k);
        let (got, by): (B, _) = open(Kind::Head, &bytes, &[k.verify_key()], "HEAD").unwrap();
        assert_eq!(got, b);
        assert_eq!(by, k.verify_key());
        // another kind
        assert!(open::<B>(Kind::Manifest, &bytes, &[k.verify_key()], "m").is_err());
        // an untrusted key, even with a valid signature
        let other = AgentKey::generate();
        let forged = sign(Kind::Head, &b, &other);
        assert!(matches!(open::<B>(Kind::Head, &forged, &[k.verify_key()], "HEAD"), Err(Error::BadSignature { .. })));
        // every single flipped byte of the body is refused
        let start = bytes.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
        for i in start..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x01;
            assert!(open::<B>(Kind::Head, &t, &[k.verify_key()], "HEAD").is_err(), "byte {i}");
        }
    }
}
