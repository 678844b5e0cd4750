//! One file per command.
pub mod pitr;
pub mod restore;
pub mod snapshots;
pub mod verify;
pub mod wal;
