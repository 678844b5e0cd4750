//! bascule-controller: at the vendor, checks tenants' encrypted backups on
//! both providers without any key, and restores them with the key a
//! customer hands over.
#![forbid(unsafe_code)]

pub mod command;
pub mod config;
pub mod drill;
pub mod runbook;
pub mod serve;
pub mod tenant;

/// Whether this process runs as root.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// The account a restored PostgreSQL runs as: `postgres` when run as root
/// (the server refuses root), else the current one.
pub fn os_user_for_postgres() -> Option<String> {
    is_root().then(|| "postgres".to_string())
}
