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
use serde::{de::DeserializeOwned, Serialize};

use crate::keys::{AgentKey, VerifyKey};
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
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Head => "head",
            Kind::Wal => "wal",
            Kind::Report => "report",
            Kind::RestoreTest => "restore-test",
        }
    }
}

fn message(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{MAGIC} {}\n", kind.as_str()).into_bytes();
    m.extend_from_slice(body);
    m
}

/// Serialises `body` and signs it.
pub fn sign<T: Serialize>(kind: Kind, body: &T, key: &AgentKey) -> Vec<u8> {
    let body = serde_json::to_vec(body).expect("bodies serialise");
    let sig = key.sign(&message(kind, &body));
    let mut out = format!("{MAGIC} {}\nkey {}\nsig {}\n\n", kind.as_str(), key.verify_key(), hex::encode(sig)).into_bytes();
    out.extend_from_slice(&body);
    out
}

/// [`open`], then checks that the key that signed was valid at the time the
/// object carries (`at`): not before its `valid_from`, not after its revocation.
pub fn open_valid<T: DeserializeOwned>(
    kind: Kind,
    bytes: &[u8],
    trusted: &[crate::keys::TrustedKey],
    name: &str,
    at: impl Fn(&T) -> chrono::DateTime<chrono::Utc>,
) -> Result<(T, VerifyKey)> {
    let keys: Vec<VerifyKey> = trusted.iter().map(|t| t.key).collect();
    let (v, by) = open::<T>(kind, bytes, &keys, name)?;
    for t in trusted.iter().filter(|t| t.key == by) {
        t.allows(at(&v)).map_err(|reason| Error::KeyNotValid { key: name.into(), reason })?;
    }
    Ok((v, by))
}

/// Verifies the envelope against the trusted keys, then parses the body.
/// Returns the body and the key that signed it. `name` is used in errors.
pub fn open<T: DeserializeOwned>(kind: Kind, bytes: &[u8], trusted: &[VerifyKey], name: &str) -> Result<(T, VerifyKey)> {
    let bad = |reason: &str| Error::Envelope { key: name.into(), reason: reason.into() };
    let split = bytes.windows(2).position(|w| w == b"\n\n").ok_or_else(|| bad("no blank line after the header"))?;
    let header = std::str::from_utf8(&bytes[..split]).map_err(|_| bad("header is not UTF-8"))?;
    let body = &bytes[split + 2..];
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
