//! `restore` (an export into a database, or a point-in-time restore of the
//! whole cluster) and the row-count check of `verify`. The identity file is
//! read when the step runs and kept in memory only.
use bascule_core::keys::Identities;

use super::{Done, Drill};
use crate::command::{pitr, restore};
use crate::runbook::{RestoreStep, RowCountCheck};
use crate::tenant::Tenant;

fn fail(e: anyhow::Error) -> String {
    format!("{e:#}")
}

pub async fn run(r: &RestoreStep, d: &Drill) -> Result<Done, String> {
    let (cfg, file) = d.controller()?;
    let tenant = d.sub(&r.tenant);
    let identity = d.sub(&r.identity.to_string_lossy());
    let identities = Identities::load(identity.as_ref()).map_err(|e| format!("identity {identity}: {e}"))?;
    let mut t = Tenant::open(cfg, file, &tenant).map_err(fail)?;
    if let Some(target) = &r.target {
        let req = restore::RestoreRequest {
            snapshot: d.sub(r.snapshot.as_deref().unwrap_or("latest")),
            target: d.sub(target),
            identities,
            concurrency: cfg.restore.concurrency,
            pg_restore: cfg.restore.pg_restore.clone(),
        };
        let rep = restore::run(&mut t, req).await.map_err(fail)?;
        let mut out = format!(
            "restored snapshot {} ({} bytes, {} chunks) in {:.1}s; {} table(s), {} row(s) checked; recovery point {}",
            rep.snapshot,
            rep.bytes,
            rep.chunks,
            rep.fetch_and_restore.as_secs_f64(),
            rep.tables_checked,
            rep.rows_checked,
            rep.recovery_point.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        if !rep.mismatches.is_empty() {
            out.push_str(&mismatches(&rep.mismatches));
            return Err(out);
        }
        return Ok(Done { output: out, recovery_point: Some(rep.recovery_point), ..Done::default() });
    }
    let pgdata = d.sub(&r.pgdata.as_ref().expect("validated: target or pgdata").to_string_lossy());
    let req = pitr::PitrRequest {
        target: pitr::Target::parse(&d.sub(r.at.as_deref().unwrap_or("latest"))).map_err(fail)?,
        pgdata: pgdata.into(),
        port: match &r.port {
            Some(p) => d.sub(p).parse().map_err(|_| format!("port {:?} is not a port number", d.sub(p)))?,
            None => 5432,
        },
        identities,
        concurrency: cfg.restore.concurrency,
        bindir: cfg.restore.pg_bindir().map_err(fail)?,
        os_user: crate::os_user_for_postgres(),
        db_user: d.sub(r.db_user.as_deref().unwrap_or("postgres")),
        stop: false,
    };
    let rep = pitr::run(t, req).await.map_err(fail)?;
    let output = format!(
        "restored base backup {} and {} WAL file(s) ({} bytes); last replayed commit {}, LSN {}, timeline {}; base {:.1}s, replay {:.1}s",
        rep.base_backup,
        rep.wal_files,
        rep.wal_bytes,
        rep.last_commit.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).unwrap_or("none".into()),
        rep.replay_lsn.as_deref().unwrap_or("-"),
        rep.timeline,
        rep.fetch_base.as_secs_f64(),
        rep.replay.as_secs_f64()
    );
    Ok(Done { output, recovery_point: rep.last_commit, ..Done::default() })
}

fn mismatches(m: &[(String, u64, Option<u64>)]) -> String {
    m.iter()
        .map(|(table, want, got)| {
            format!("\nMISMATCH {table}: {want} rows in the export, {}", got.map(|g| g.to_string()).unwrap_or("no table".into()))
        })
        .collect()
}

/// Every table of the database against the export's row counts.
pub async fn row_counts(r: &RowCountCheck, d: &Drill) -> Result<String, String> {
    let (cfg, file) = d.controller()?;
    let identity = d.sub(&r.identity.to_string_lossy());
    let identities = Identities::load(identity.as_ref()).map_err(|e| format!("identity {identity}: {e}"))?;
    let mut t = Tenant::open(cfg, file, &d.sub(&r.tenant)).map_err(fail)?;
    let (name, m) = restore::resolve_export(&mut t, &d.sub(&r.snapshot)).await.map_err(fail)?;
    let index = restore::open_index(&t, &m, &identities).await.map_err(fail)?;
    let c = restore::compare_row_counts(&index, &d.sub(&r.dsn)).await.map_err(fail)?;
    let summary = format!("row counts: {} table(s), {} row(s) against snapshot {name}", c.tables, c.rows);
    if c.mismatches.is_empty() {
        Ok(format!("{summary}: identical"))
    } else {
        Err(format!("{summary}: DIFFERENT{}", mismatches(&c.mismatches)))
    }
}
