//! Continuous archiving of PostgreSQL's WAL.
//!
//! `wal-push` (PostgreSQL's `archive_command`) only copies each file into the
//! local [`spool`], durably, and returns: the database never waits for the
//! network. The daemon [`ship`]s the spool: it seals each file once (zstd +
//! age, plus a signed record), uploads it to every provider in order, each
//! provider at its own pace, and removes it from the spool once both hold it.
pub mod ship;
pub mod spool;

pub use ship::ship;
pub use spool::{Pushed, Spool};
