//! One file per command.
pub mod pitr;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod restore_tests;
pub mod snapshots;
pub mod verify;
pub mod wal;
