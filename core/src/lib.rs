//! bascule-core: the format shared by the agent (which writes it) and the
//! controller (which reads it).
//!
//! * [`chunker`] cuts a byte stream into content-defined chunks with keyed ids;
//! * [`seal`] turns a chunk into `age(zstd(chunk))` and back;
//! * [`signed`] is the ed25519 envelope, and the [`signed::Signed`] trait
//!   through which every signed object is opened;
//! * [`object`] is the reference (key, length, hash) every signed object uses
//!   to point at what it needs;
//! * [`manifest`], [`head`], [`wal`] (records), [`restore_test`] are the
//!   signed objects themselves;
//! * [`layout`] names every object under a tenant's prefix;
//! * [`retention`] decides which snapshots stay; [`condemned`] lists the packs
//!   a prune will delete (signed by the controller);
//! * [`provider`] reaches S3 or a local directory, and writes to / reads from both;
//! * [`restore`] reads a snapshot back, every byte checked; [`postgres`] feeds
//!   it to `pg_restore` and checks row counts;
//! * [`sync`] copies to each provider what the other holds (ciphertext only);
//! * [`tar`] reads the headers of a base backup's tar stream.
// one exception, `child::few_arenas` (an allocator setting through libc)
#![deny(unsafe_code)]

pub mod child;
pub mod chunker;
pub mod condemned;
pub mod config;
pub mod error;
pub mod fuzz;
pub mod head;
pub mod keys;
pub mod layout;
pub mod logging;
pub mod manifest;
pub mod object;
pub mod postgres;
pub mod progress;
pub mod provider;
pub mod restore;
pub mod restore_test;
pub mod retention;
pub mod schedule;
pub mod seal;
pub mod signed;
pub mod sync;
pub mod tar;
pub mod wal;

pub use error::{Error, Result};

/// Lower-case hex of a BLAKE3 hash of `bytes` (used for ciphertext and plaintext hashes).
pub fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}
