//! Source `pg_basebackup`: a physical base backup as one tar stream
//! (`pg_basebackup -Ft -D - -X none`), chunked and deduplicated like an
//! export. The WAL it needs comes from the archive (`wal-push`), so the
//! server must archive through bascule. The manifest records the WAL range
//! the backup needs, read from the stream as it passes: the start LSN and
//! timeline from `backup_label`, the end LSN from `backup_manifest`.
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bascule_core::config::SecretRef;
use bascule_core::wal::{Lsn, WalRange};
use serde::Deserialize;

use super::{Running, Scan, Scanned, SourceFacts};

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
        // one tar on stdout; a fast checkpoint so that the backup starts now
        cmd.args(["--format=tar", "--pgdata=-", "--wal-method=none", "--checkpoint=fast", "--label=bascule", "--no-password"])
            .arg("--dbname")
            .arg(&self.dsn);
        if let Some(p) = &self.password {
            cmd.env("PGPASSWORD", p.resolve(config_file, "source.password")?);
        }
        let mut running = Running::spawn(cmd, format!("{}", prog.display()))?;
        let scan = Arc::new(Mutex::new(TarScan::default()));
        let stdout = running.stdout.take().context("the source's standard output")?;
        running.reader = Some(Box::new(Scanned { inner: stdout, scan: scan.clone() }));
        running.facts_from_stream = Some(Box::new(move || scan.lock().unwrap_or_else(|e| e.into_inner()).facts()));
        Ok(running)
    }
}

/// Follows a tar stream's headers and keeps the two small members it needs:
/// `backup_label` whole, and the end of `backup_manifest` (its WAL ranges).
#[derive(Default)]
pub(super) struct TarScan {
    header: Vec<u8>,
    /// Bytes of the current member (padded to 512) still to pass.
    skip: u64,
    /// Unpadded bytes of the current member still to keep, if kept.
    keep: Option<(&'static str, u64)>,
    label: Vec<u8>,
    manifest_tail: Vec<u8>,
    end: bool,
}

const KEEP_TAIL: usize = 16 << 10;

impl Scan for TarScan {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.end {
            if self.skip > 0 {
                let (member, rest) = bytes.split_at(self.skip.min(bytes.len() as u64) as usize);
                if let Some((which, left)) = &mut self.keep {
                    let (kept, _) = member.split_at((*left).min(member.len() as u64) as usize);
                    let buf = if *which == "backup_label" { &mut self.label } else { &mut self.manifest_tail };
                    buf.extend_from_slice(kept);
                    buf.drain(..buf.len().saturating_sub(KEEP_TAIL));
                    *left -= kept.len() as u64;
                }
                self.skip -= member.len() as u64;
                bytes = rest;
                if self.skip == 0 {
                    self.keep = None;
                }
                continue;
            }
            let (part, rest) = bytes.split_at(512usize.saturating_sub(self.header.len()).min(bytes.len()));
            self.header.extend_from_slice(part);
            bytes = rest;
            if self.header.len() < 512 {
                continue;
            }
            let h = std::mem::take(&mut self.header);
            // the end of the archive, or no tar at all (the facts then lack
            // the backup_label, and the export says so)
            let Ok(Some(h)) = bascule_core::tar::parse(&h) else {
                self.end = true;
                break;
            };
            self.skip = h.padded_size();
            let (name, size) = (h.name, h.size);
            self.keep = match name.trim_start_matches("./") {
                "backup_label" => Some(("backup_label", size)),
                "backup_manifest" => Some(("backup_manifest", size)),
                _ => None,
            };
        }
    }
}

impl TarScan {
    pub(super) fn facts(&self) -> anyhow::Result<SourceFacts> {
        let label = String::from_utf8_lossy(&self.label);
        let field = |name: &str| label.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        let start = field("START WAL LOCATION:").context("the stream has no backup_label with a START WAL LOCATION")?;
        let start: Lsn = start.split_whitespace().next().unwrap_or_default().parse().map_err(anyhow::Error::msg)?;
        let timeline: u32 = field("START TIMELINE:").context("backup_label has no START TIMELINE")?.parse()?;
        // backup_manifest ends with "WAL-Ranges": [ { ..., "End-LSN": "0/2000100" } ], then its checksum
        let tail = String::from_utf8_lossy(&self.manifest_tail);
        let stop = tail
            .rsplit_once("\"End-LSN\"")
            .and_then(|(_, rest)| rest.split('"').nth(1))
            .context("the stream has no backup_manifest with an End-LSN")?;
        let wal = WalRange { start, stop: stop.parse().map_err(anyhow::Error::msg)?, timeline };
        let mut facts = SourceFacts::default();
        facts.source.insert("wal_start".into(), wal.start.to_string());
        facts.source.insert("wal_stop".into(), wal.stop.to_string());
        facts.source.insert("label".into(), label.trim().to_string());
        facts.wal = Some(wal);
        Ok(facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bascule_core::tar::file_member;

    #[test]
    fn reads_the_wal_range_from_the_stream_in_any_pieces() {
        let mut tar = file_member("base/1/1234", &vec![7u8; 9000]);
        tar.extend(file_member(
            "backup_label",
            b"START WAL LOCATION: 0/2000028 (file 000000030000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 3\n",
        ));
        tar.extend(file_member("backup_manifest", b"{ \"Files\": [], \"WAL-Ranges\": [\n{ \"Timeline\": 3, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n],\n\"Manifest-Checksum\": \"ab\"}\n"));
        tar.extend(vec![0u8; 1024]);
        for piece in [1usize, 7, 511, 512, 4096, tar.len()] {
            let mut s = TarScan::default();
            tar.chunks(piece).for_each(|c| s.feed(c));
            let w = s.facts().unwrap().wal.unwrap();
            assert_eq!(
                (w.start.to_string(), w.stop.to_string(), w.timeline),
                ("0/2000028".into(), "0/2000100".into(), 3),
                "pieces of {piece}"
            );
        }
        let mut s = TarScan::default();
        s.feed(&file_member("base/1/1234", b"x"));
        assert!(s.facts().is_err());
    }
}
