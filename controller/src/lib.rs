//! bascule-controller: at the vendor, checks tenants' encrypted backups on
//! both providers without any key, and restores them with the key a
//! customer hands over.
#![forbid(unsafe_code)]

pub mod command;
pub mod config;
pub mod drill;
pub mod runbook;
pub mod tenant;
