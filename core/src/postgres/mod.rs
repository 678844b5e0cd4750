//! PostgreSQL helpers shared by the agent (export, restore test) and the
//! controller (restore): row counts, and `pg_restore` fed from a stream.
pub mod connect;
pub mod dsn;
pub mod dump;
pub mod parallel;
mod pg_restore;

use std::collections::BTreeMap;

pub use connect::{Connect, ConnectError, SslMode};
pub use dsn::Dsn;
pub use pg_restore::{pg_restore, PgRestore, PgRestoreError};

use crate::manifest::Index;

/// `"name"`, with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The row-count key of the number of large objects.
pub const LARGE_OBJECTS: &str = "pg_catalog.pg_largeobject_metadata";

/// Why a database could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Dsn(#[from] dsn::BadDsn),
    #[error("cannot connect to the restored database: {0}")]
    Connect(#[source] ConnectError),
    #[error("querying the target: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// Rows of every user table (`schema.table`) and the number of large objects,
/// as seen by the transaction `client` is in.
pub async fn count_rows(client: &tokio_postgres::Client) -> Result<BTreeMap<String, u64>, tokio_postgres::Error> {
    let tables = client
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' ORDER BY 1, 2",
            &[],
        )
        .await?;
    let mut counts = BTreeMap::new();
    for t in tables {
        let (schema, table): (String, String) = (t.get(0), t.get(1));
        let q = format!("SELECT count(*) FROM ONLY {}.{}", quote_ident(&schema), quote_ident(&table));
        let n: i64 = client.query_one(&q, &[]).await?.get(0);
        counts.insert(format!("{schema}.{table}"), n as u64);
    }
    let lo: i64 = client.query_one("SELECT count(*) FROM pg_largeobject_metadata", &[]).await?.get(0);
    counts.insert(LARGE_OBJECTS.into(), lo as u64);
    Ok(counts)
}

/// What a restore keeps of the export besides the data: its objects'
/// owners and their privileges (both by default, as `pg_restore` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    pub owners: bool,
    pub privileges: bool,
}

impl Default for Keep {
    fn default() -> Keep {
        Keep { owners: true, privileges: true }
    }
}

/// Before anything is restored: the roles the export's owners (when kept)
/// and privileges (when kept) name that the target server lacks. An export
/// that recorded none (older, or read by SQL) is not checked.
/// `map` renames roles on the way (`--map-role`).
pub async fn missing_roles(index: &Index, dsn: &Dsn, keep: Keep, map: &BTreeMap<String, String>) -> Result<Vec<String>, CheckError> {
    let mut needed: std::collections::BTreeSet<&String> = std::collections::BTreeSet::new();
    if keep.owners {
        needed.extend(index.owners.iter().map(|r| map.get(r).unwrap_or(r)));
    }
    if keep.privileges {
        needed.extend(index.grantees.iter().map(|r| map.get(r).unwrap_or(r)));
    }
    if needed.is_empty() {
        return Ok(Vec::new());
    }
    let (client, _conn) = dsn.config()?.connect().await.map_err(CheckError::Connect)?;
    let have: std::collections::BTreeSet<String> =
        client.query("SELECT rolname FROM pg_roles", &[]).await?.iter().map(|r| r.get(0)).collect();
    Ok(needed.into_iter().filter(|r| !have.contains(*r)).cloned().collect())
}

/// What to tell the operator when `missing` roles are not on the target.
pub fn missing_roles_advice(missing: &[String]) -> String {
    let create: Vec<String> = missing.iter().map(|r| format!("CREATE ROLE {};", quote_ident(r))).collect();
    format!(
        "the target server lacks {} role(s) this export's objects are owned by or granted to: {}. Nothing was restored. \
         Create them first ({}), map them to roles the target has (--map-role old=new), or restore without \
         owners (--no-owner: everything owned by the restoring role) and/or privileges (--no-privileges)",
        missing.len(),
        missing
            .iter()
            .map(|r| if r.chars().all(|c| c.is_alphanumeric() || c == '_' || c == ' ') { r.clone() } else { format!("{r:?}") })
            .collect::<Vec<_>>()
            .join(", "),
        create.join(" ")
    )
}

/// Every table's row count in a database against an export's index.
pub struct RowCountCheck {
    pub tables: usize,
    pub rows: u64,
    /// Tables whose row count differs: (table, at export, now).
    pub mismatches: Vec<(String, u64, Option<u64>)>,
}

/// Counts the rows of every table of the database `dsn` and compares them
/// with those the export recorded.
pub async fn compare_row_counts(index: &Index, dsn: &Dsn) -> Result<RowCountCheck, CheckError> {
    let (client, _conn) = dsn.config()?.connect().await.map_err(CheckError::Connect)?;
    let after = count_rows(&client).await?;
    let mut mismatches = Vec::new();
    for (table, n) in &index.row_counts {
        let got = after.get(table).copied();
        if got != Some(*n) {
            mismatches.push((table.clone(), *n, got));
        }
    }
    Ok(RowCountCheck { tables: index.row_counts.len(), rows: index.row_counts.values().sum(), mismatches })
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        assert_eq!(super::quote_ident(r#"a"b"#), r#""a""b""#);
    }
}
