//! The signed result of an on-site restore test (`bascule-agent
//! restore-test`): digests and counts, never data. The agent signs it and
//! stores it under `reports/restore-tests/`; its HEAD names the newest.
use serde::{Deserialize, Serialize};

use crate::signed::{Kind, Signed};

/// What an on-site restore test found: digests and counts, never data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreTestResult {
    pub format: u32,
    pub tenant: String,
    pub job: String,
    /// The snapshot restored (`<time>-<id>`) and when its export started.
    pub snapshot: String,
    pub snapshot_started_at: chrono::DateTime<chrono::Utc>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    pub host: String,
    pub passed: bool,
    /// Why it failed, in bascule's words: `pg_restore`'s own messages, which
    /// may quote data, stay on the customer's site.
    pub failure: Option<String>,
    /// Plaintext bytes restored, and the stream hash they matched.
    pub bytes: u64,
    pub stream_hash: String,
    pub tables: usize,
    pub rows: u64,
    /// Tables whose row count differs: (table, at export, after restore).
    pub mismatches: Vec<(String, u64, Option<u64>)>,
}

/// The newest restore test, as the agent's HEAD names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreTestSummary {
    /// Where the signed result is: `reports/restore-tests/<time>-<job>.json`.
    pub key: String,
    pub job: String,
    pub snapshot: String,
    pub at: chrono::DateTime<chrono::Utc>,
    pub passed: bool,
    /// When a restore test of this tenant last passed (this one or an earlier one).
    pub last_success_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Signed for RestoreTestResult {
    const KIND: Kind = Kind::RestoreTest;
    const MAX_LEN: u64 = 1 << 20;

    /// The key that signed must have been valid when the test started.
    fn signed_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.started_at
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }

    fn stored_at(&self) -> Option<String> {
        Some(key(self.started_at, &self.job))
    }
}

/// The key of a restore test's signed result.
pub fn key(at: chrono::DateTime<chrono::Utc>, job: &str) -> String {
    format!("{}{}-{job}.json", crate::layout::RESTORE_TESTS, at.format("%Y%m%dT%H%M%S%.3fZ"))
}
