//! Drills: running runbooks, their state, audit and reports.
pub mod engine;
pub mod report;
pub mod step;
pub mod store;
