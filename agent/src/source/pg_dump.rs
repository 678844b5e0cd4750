//! Source `pg_dump`: `pg_dump -Fc -Z0` streamed to the chunker.
//!
//! The dump is uncompressed on purpose: zstd runs per chunk after
//! content-defined chunking, which only finds yesterday's bytes in an
//! uncompressed stream. Row counts are read in the stream itself as it
//! passes (each table's `COPY` lines, see `bascule_core::postgres::dump`): exactly what the dump
//! holds, without a second scan of the database. A stream the scanner cannot
//! read is counted with SQL instead, in the very snapshot the dump reads
//! (`pg_export_snapshot()` + `pg_dump --snapshot`), kept open until the end.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bascule_core::config::SecretRef;
use serde::Deserialize;

use super::{Running, Scanned, SourceFacts};
use bascule_core::postgres::count_rows;
use bascule_core::postgres::dump::DumpScan;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgDumpSource {
    /// libpq connection string or URL: `host=/var/run/postgresql dbname=app user=backup`.
    pub dsn: String,
    /// The password, if the server asks for one (never inline).
    pub password: Option<SecretRef>,
    /// Path of `pg_dump` when not on PATH (e.g. `/usr/lib/postgresql/15/bin/pg_dump`).
    pub pg_dump: Option<PathBuf>,
    /// Count the rows of every table (in the dump's stream) for restore checks.
    #[serde(default = "yes")]
    pub count_rows: bool,
}

fn yes() -> bool {
    true
}

impl PgDumpSource {
    pub(crate) fn pg_config(&self, config_file: &Path) -> anyhow::Result<(bascule_core::postgres::Connect, Option<String>)> {
        let mut pg = bascule_core::postgres::Connect::parse(&self.dsn).context("source.dsn is not a valid PostgreSQL connection string")?;
        let password = match &self.password {
            Some(p) => Some(p.resolve(config_file, "source.password")?),
            None => None,
        };
        if let Some(p) = &password {
            pg.password(p.as_bytes());
        }
        Ok((pg, password))
    }

    pub(super) async fn start(&self, config_file: &Path) -> anyhow::Result<Running> {
        let (pg, password) = self.pg_config(config_file)?;
        let (client, conn) = pg.connect().await.map_err(|e| anyhow::anyhow!(super::cannot_connect(&e, "source")))?;
        tokio::spawn(async move {
            if let Ok(Err(e)) = conn.await {
                tracing::warn!(error = %e, "Source database connection ended");
            }
        });
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let snapshot: String = client.query_one("SELECT pg_export_snapshot()", &[]).await?.get(0);
        let version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
        let db: String = client.query_one("SELECT current_database()", &[]).await?.get(0);

        let prog = self.pg_dump.clone().unwrap_or_else(|| PathBuf::from("pg_dump"));
        let mut cmd = std::process::Command::new(&prog);
        cmd.args(["--format=custom", "--compress=0", "--no-password"]).arg(format!("--snapshot={snapshot}")).arg("--dbname").arg(&self.dsn);
        if let Some(p) = password {
            cmd.env("PGPASSWORD", p);
        }
        let mut running = Running::spawn(cmd, format!("{}", prog.display()))?;

        // Rows are counted in the stream as it passes (see `bascule_core::postgres::dump`); if
        // it cannot be read, with SQL in the exported snapshot, which stays
        // open until the dump has finished.
        let scan = Arc::new(Mutex::new(DumpScan::default()));
        if self.count_rows {
            let stdout = running.stdout.take().expect("fresh source");
            running.reader = Some(Box::new(Scanned { inner: stdout, scan: scan.clone() }));
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let count = self.count_rows;
        running.dump_done = Some(done_tx);
        running.facts = Some(tokio::spawn(async move {
            let _ = done_rx.await;
            let (owners, grantees) = scan.lock().expect("lock").roles();
            let archive = scan.lock().expect("lock").layout();
            let row_counts = if !count {
                BTreeMap::new()
            } else {
                let from_stream = scan.lock().expect("lock").counts();
                match from_stream {
                    Ok(counts) => counts,
                    Err(why) => {
                        tracing::warn!(
                            "Cannot count rows in the dump's stream ({why}); counting rows with SQL in the dump's snapshot instead"
                        );
                        count_rows(&client).await?
                    }
                }
            };
            client.batch_execute("ROLLBACK").await?;
            let mut source = BTreeMap::new();
            source.insert("server_version".into(), version);
            source.insert("database".into(), db);
            source.insert("snapshot".into(), snapshot);
            Ok(SourceFacts { row_counts, source, wal: None, owners, grantees, archive })
        }));
        Ok(running)
    }
}
