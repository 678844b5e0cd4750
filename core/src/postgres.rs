//! PostgreSQL helpers shared by the agent (export) and the controller
//! (restore check).
use std::collections::BTreeMap;

/// `"name"`, with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The row-count key of the number of large objects.
pub const LARGE_OBJECTS: &str = "pg_catalog.pg_largeobject_metadata";

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

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        assert_eq!(super::quote_ident(r#"a"b"#), r#""a""b""#);
    }
}
