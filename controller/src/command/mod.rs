//! One file per command.
pub mod restore;
pub mod snapshots;
pub mod verify;
