//! Versioned schema migrations, one SQL file per version and backend under
//! `migrations/`, compiled into the binary.
//!
//! At every open, under a lock that makes concurrent processes take turns
//! (SQLite's write lock; a PostgreSQL advisory lock), the store's
//! `schema_migrations` table is read: a version this binary does not know
//! (a newer controller migrated it) or a version whose recorded checksum
//! differs from this binary's file is refused, and the versions not yet
//! applied are applied in order, in the same transaction, so that a crash
//! leaves the store at one version or the next, never between.
//!
//! Written here rather than taken from a migration crate: the store's two
//! backends speak through one small interface ([`super::db::Db`]) that such
//! crates do not know, and what is needed (ordered files, checksums, refusing
//! a newer schema) is these few lines.
use anyhow::Context as _;

use super::db::{p, Db, Dialect};

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

const SQLITE: &[Migration] = &[Migration { version: 1, name: "drills", sql: include_str!("migrations/sqlite/0001_drills.sql") }];

const POSTGRES: &[Migration] = &[
    Migration { version: 1, name: "drills", sql: include_str!("migrations/postgres/0001_drills.sql") },
    Migration { version: 2, name: "fleet", sql: include_str!("migrations/postgres/0002_fleet.sql") },
    Migration { version: 3, name: "revoked marks", sql: include_str!("migrations/postgres/0003_revoked_marks.sql") },
    Migration { version: 4, name: "leases by name only", sql: include_str!("migrations/postgres/0004_leases_by_name_only.sql") },
];

/// The advisory lock migrations take in PostgreSQL ("bascule" and 1).
pub const MIGRATION_LOCK: i64 = 0x6261_7363_756c_6501;

pub fn migrations(d: Dialect) -> &'static [Migration] {
    match d {
        Dialect::Sqlite => SQLITE,
        Dialect::Postgres => POSTGRES,
    }
}

/// Over the SQL with Unix line ends (a checkout with CRLF is the same SQL).
fn checksum(sql: &str) -> String {
    blake3::hash(sql.replace("\r\n", "\n").as_bytes()).to_hex().to_string()
}

/// Brings the store to this binary's newest version; returns the versions
/// it applied.
pub fn migrate<D: Db>(db: &D) -> anyhow::Result<Vec<i64>> {
    let known = migrations(db.dialect());
    db.write_tx(Some(MIGRATION_LOCK), |db| {
        db.batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version BIGINT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)",
        )?;
        let applied = db.query("SELECT version, name, checksum FROM schema_migrations ORDER BY version", p![])?;
        let newest = known.last().map_or(0, |m| m.version);
        for row in &applied {
            let (version, name, sum) = (row.int(0)?, row.text(1)?, row.text(2)?);
            let Some(m) = known.iter().find(|m| m.version == version) else {
                anyhow::bail!(
                    "the state store is at schema version {version} ({name}), newer than this bascule-controller knows \
                     (up to {newest}): a newer controller migrated it; run that version, or a newer one, here too"
                );
            };
            if sum != checksum(m.sql) {
                anyhow::bail!(
                    "the state store's schema version {version} ({name}) was applied from other SQL than this \
                     bascule-controller's (checksum {} there, {} here): the store was changed by hand or by another build",
                    &sum[..16.min(sum.len())],
                    &checksum(m.sql)[..16]
                );
            }
        }
        let mut done = Vec::new();
        for m in known.iter().filter(|m| !applied.iter().any(|r| r.int(0).ok() == Some(m.version))) {
            db.batch(m.sql).with_context(|| format!("applying schema version {} ({})", m.version, m.name))?;
            db.execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
                p![m.version, m.name, checksum(m.sql), super::records::now()],
            )?;
            done.push(m.version);
        }
        Ok(done)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::db::Sqlite;

    #[test]
    fn versions_are_in_order_and_a_newer_or_changed_schema_is_refused() {
        for d in [Dialect::Sqlite, Dialect::Postgres] {
            let v: Vec<i64> = migrations(d).iter().map(|m| m.version).collect();
            assert_eq!(v, (1..=v.len() as i64).collect::<Vec<_>>(), "{d:?}: versions 1, 2, … without a gap");
        }
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite(rusqlite::Connection::open(dir.path().join("s.sqlite")).unwrap());
        assert_eq!(migrate(&db).unwrap(), vec![1]);
        assert_eq!(migrate(&db).unwrap(), Vec::<i64>::new(), "a second open applies nothing");
        db.0.execute("UPDATE schema_migrations SET checksum = 'ab' WHERE version = 1", []).unwrap();
        let e = migrate(&db).unwrap_err().to_string();
        assert!(e.contains("other SQL"), "{e}");
        db.0.execute("UPDATE schema_migrations SET checksum = ?1 WHERE version = 1", [checksum(SQLITE[0].sql)]).unwrap();
        db.0.execute("INSERT INTO schema_migrations VALUES (9, 'future', 'x', 'now')", []).unwrap();
        let e = migrate(&db).unwrap_err().to_string();
        assert!(e.contains("schema version 9") && e.contains("newer"), "{e}");
    }
}
