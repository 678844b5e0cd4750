//! Source `pg_basebackup`: a physical base backup as one tar stream
//! (`pg_basebackup -Ft -D - -X none`), chunked and deduplicated like an
//! export. The WAL it needs comes from the archive (`wal-push`), so the
//! server must archive through bascule; the manifest records the start and
//! stop LSN and the timeline, from pg_basebackup's own report.
use std::path::{Path, PathBuf};

use anyhow::Context;
use bascule_core::config::SecretRef;
use bascule_core::wal::{Lsn, WalRange};
use serde::Deserialize;

use super::{Running, SourceFacts};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgBasebackupSource {
    /// libpq connection string of a role with the REPLICATION attribute.
    pub dsn: String,
    /// The password, if the server asks for one (never inline).
    pub password: Option<SecretRef>,
    /// Path of `pg_basebackup` when not on PATH.
    pub pg_basebackup: Option<PathBuf>,
}

impl PgBasebackupSource {
    pub(super) fn start(&self, config_file: &Path) -> anyhow::Result<Running> {
        let prog = self.pg_basebackup.clone().unwrap_or_else(|| PathBuf::from("pg_basebackup"));
        let mut cmd = std::process::Command::new(&prog);
        // one tar on stdout; a fast checkpoint so that the backup starts now;
        // -v reports the WAL start and end points, read below
        cmd.args(["--format=tar", "--pgdata=-", "--wal-method=none", "--checkpoint=fast", "--label=bascule", "--verbose", "--no-password"])
            .arg("--dbname")
            .arg(&self.dsn);
        if let Some(p) = &self.password {
            cmd.env("PGPASSWORD", p.resolve(config_file, "source.password")?);
        }
        let mut running = Running::spawn(cmd, format!("{}", prog.display()))?;
        running.facts_from_stderr = Some(parse_report);
        Ok(running)
    }
}

/// Reads `write-ahead log start point: 0/2000028 on timeline 1` and
/// `write-ahead log end point: 0/2000100` from pg_basebackup's report.
fn parse_report(stderr: &str) -> anyhow::Result<SourceFacts> {
    let after = |what: &str| stderr.lines().find_map(|l| l.split_once(what).map(|(_, rest)| rest.trim().to_string()));
    let start_line = after("write-ahead log start point:").context("pg_basebackup did not report its WAL start point")?;
    let (start, timeline) = match start_line.split_once(" on timeline ") {
        Some((lsn, tl)) => (lsn, tl.trim().parse::<u32>().context("bad timeline in pg_basebackup's report")?),
        None => (start_line.as_str(), 1),
    };
    let stop = after("write-ahead log end point:").context("pg_basebackup did not report its WAL end point")?;
    let wal = WalRange {
        start: start.parse::<Lsn>().map_err(anyhow::Error::msg)?,
        stop: stop.parse::<Lsn>().map_err(anyhow::Error::msg)?,
        timeline,
    };
    let mut facts = SourceFacts::default();
    facts.source.insert("wal_start".into(), wal.start.to_string());
    facts.source.insert("wal_stop".into(), wal.stop.to_string());
    facts.wal = Some(wal);
    Ok(facts)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_wal_range() {
        let report = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
                      pg_basebackup: checkpoint completed\n\
                      pg_basebackup: write-ahead log start point: 0/2000028 on timeline 3\n\
                      pg_basebackup: write-ahead log end point: 0/2000100\n\
                      pg_basebackup: base backup completed\n";
        let w = super::parse_report(report).unwrap().wal.unwrap();
        assert_eq!((w.start.to_string(), w.stop.to_string(), w.timeline), ("0/2000028".into(), "0/2000100".into(), 3));
        assert!(super::parse_report("pg_basebackup: base backup completed").is_err());
    }
}
