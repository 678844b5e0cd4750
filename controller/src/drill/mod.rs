//! Drills: running runbooks, their state, audit and reports.
pub mod engine;
pub mod store;
