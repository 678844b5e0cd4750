//! Entry points for the fuzz targets (`tests/src/bin/fuzz.rs`,
//! `scripts/fuzz.sh`): each feeds arbitrary bytes to one parser of what a
//! provider serves and ignores the answer; a panic, an overflow or an
//! allocation out of bounds is what the fuzzer looks for.
#![doc(hidden)]

use crate::condemned::Condemned;
use crate::head::Head;
use crate::keys::{AgentKey, Identities, TrustedKey, VerifyKey};
use crate::manifest::{Index, Manifest};
use crate::restore_test::RestoreTestResult;
use crate::signed::{self, Kind, Signed};
use crate::wal::{Lsn, WalName, WalRecord};

/// Object names as a listing returns them.
pub fn names(s: &str) {
    let _ = WalName::parse(s).map(|w| (w.object_key(), w.record_key(), w.segment_number(16 << 20)));
    let _ = crate::wal::record_name(s);
    let _ = crate::layout::manifest_name(s);
    let _ = s.parse::<Lsn>();
    let _ = s.parse::<VerifyKey>();
}

/// The signed envelope, of every kind, with `key` trusted.
pub fn envelope(bytes: &[u8], key: &VerifyKey) {
    for kind in [Kind::Head, Kind::Manifest, Kind::Wal, Kind::Report, Kind::RestoreTest, Kind::Condemned] {
        let _ = signed::open::<serde_json::Value>(kind, bytes, &[*key], "k");
    }
}

/// A signed object of each kind whose body is `body`, opened as a reader
/// opens it (the signature is valid: only the body and its binding are tested).
pub fn bodies(body: &[u8], signer: &AgentKey) {
    let trusted = [TrustedKey::from(signer.verify_key())];
    let _ = Head::open(&resign(Kind::Head, body, signer), &trusted, "t", "HEAD");
    let _ = <Manifest as Signed>::open(&resign(Kind::Manifest, body, signer), &trusted, "t", "snapshots/x.manifest");
    let _ = <WalRecord as Signed>::open(&resign(Kind::Wal, body, signer), &trusted, "t", "wal/00000001/000000010000000000000001.rec");
    let _ = <RestoreTestResult as Signed>::open(&resign(Kind::RestoreTest, body, signer), &trusted, "t", "reports/restore-tests/x");
    let _ = <Condemned as Signed>::open(&resign(Kind::Condemned, body, signer), &trusted, "t", "prune/x.condemned");
    let _ = Condemned::read_unverified(body, "prune/x.condemned");
}

/// A valid envelope around `body` exactly (what a reader gets once the signature verified).
fn resign(kind: Kind, body: &[u8], signer: &AgentKey) -> Vec<u8> {
    let magic = format!("bascule-signed v1 {}", kind.as_str());
    let mut message = format!("{magic}\n").into_bytes();
    message.extend_from_slice(body);
    let sig = signer.sign(&message);
    let mut out = format!("{magic}\nkey {}\nsig {}\n\n", signer.verify_key(), hex::encode(sig)).into_bytes();
    out.extend_from_slice(body);
    out
}

/// An index body, checked against `m` and planned into reads, as a restore does.
pub fn index(body: &[u8], m: &Manifest) {
    if let Ok(i) = serde_json::from_slice::<Index>(body) {
        if i.check_refs(m, "i").is_ok() {
            let _ = crate::restore::plan_for_fuzz(&i);
            let _ = i.chunks().count();
        }
    }
}

/// Sealed bytes opened with `ids`, bounded as a restore bounds a segment.
pub fn sealed(bytes: &[u8], ids: &Identities) {
    let _ = crate::seal::open(bytes, ids, 1 << 20, "k", &[]);
}

/// The answers of a bucket's versioning and object-lock requests.
pub fn protection(status: u16, xml: &str) {
    let _ = crate::provider::parse_protection((status, xml), (status, xml));
}
