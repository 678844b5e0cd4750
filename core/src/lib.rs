//! bascule-core: the format shared by the agent (which writes it) and the
//! controller (which reads it).
//!
//! * [`chunker`] cuts a byte stream into content-defined chunks with keyed ids;
//! * [`seal`] turns a chunk into `age(zstd(chunk))` and back;
//! * [`signed`] is the ed25519 envelope around manifests and `HEAD`;
//! * [`manifest`] and [`head`] are the signed objects themselves;
//! * [`wal`] names WAL files and signs the record of each archived one;
//! * [`layout`] names every object under a tenant's prefix;
//! * [`retention`] decides which snapshots stay and condemns packs in two steps;
//! * [`provider`] reaches S3 or a local directory, and writes to / reads from both.
#![forbid(unsafe_code)]

pub mod chunker;
pub mod config;
pub mod error;
pub mod head;
pub mod keys;
pub mod layout;
pub mod manifest;
pub mod postgres;
pub mod provider;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod seal;
pub mod signed;
pub mod sync;
pub mod wal;

pub use error::{Error, Result};

/// Lower-case hex of a BLAKE3 hash of `bytes` (used for ciphertext and plaintext hashes).
pub fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}
