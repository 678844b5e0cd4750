//! Drills: running runbooks, their state, audit and reports.
pub mod store;
