//! bascule-controller: at the vendor, checks tenants' encrypted backups on
//! both providers without any key, and restores them with the key a
//! customer hands over.
//!
//! * [`cli`] parses the command line; [`command`] has one file per command;
//! * [`context`] holds the configuration, the providers and the rollback
//!   guards, once; [`tenant`] is one tenant on them;
//! * [`runbook`] reads and validates runbooks, one file per step kind;
//!   [`drill`] runs them and reports; [`state`] keeps drills and the audit log;
//! * [`serve`] is the service: monitor, scheduled work, API, metrics.
#![forbid(unsafe_code)]

pub mod cli;
pub mod command;
pub mod config;
pub mod context;
pub mod drill;
pub mod model;
pub mod os_user;
pub mod projection;
pub mod runbook;
pub mod serve;
pub mod state;
pub mod tenant;
