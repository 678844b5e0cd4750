//! `restore-test`: proves on the customer's site, with the customer's
//! identity, that the newest export of a job restores. The export is
//! fetched from the providers (every byte checked), restored with
//! `pg_restore` into a scratch database on the job's server, its row counts
//! compared with those recorded at export time, and the scratch database
//! dropped. The result (digests and counts only) is signed with the agent's
//! key and stored on both providers; HEAD names it, so the vendor's
//! controller shows it without any key.
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use bascule_core::keys::Identities;
use bascule_core::layout;
use bascule_core::manifest::{Manifest, SnapshotKind};
use bascule_core::postgres::{compare_row_counts, pg_restore, Dsn, PgRestore};
use bascule_core::restore::open_index;
use bascule_core::restore_test::{self, RestoreTestResult, RestoreTestSummary};
use bascule_core::signed::Signed;
use bytes::Bytes;

use crate::source::{PgDumpSource, SourceConfig};
use crate::Agent;

pub struct Options {
    pub identity: PathBuf,
    /// A snapshot name (or its short id); the job's newest export by default.
    pub snapshot: Option<String>,
    /// `pg_restore` to use; by default the one next to the job's `pg_dump`, or on PATH.
    pub pg_restore: Option<PathBuf>,
}

/// A libpq `key=value` string for the server of `c` and database `db`.
fn conninfo(c: &bascule_core::postgres::Connect, db: &str, password: Option<&str>) -> String {
    let cfg = c.pg();
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let mut parts = Vec::new();
    if !hosts.is_empty() {
        parts.push(format!("host={}", quote(&hosts.join(","))));
    }
    let ports: Vec<String> = cfg.get_ports().iter().map(u16::to_string).collect();
    if !ports.is_empty() {
        parts.push(format!("port={}", ports.join(",")));
    }
    if let Some(u) = cfg.get_user() {
        parts.push(format!("user={}", quote(u)));
    }
    parts.push(format!("dbname={}", quote(db)));
    for (k, v) in c.tls_fields() {
        parts.push(format!("{k}={}", quote(v)));
    }
    if let Some(p) = password {
        parts.push(format!("password={}", quote(p)));
    }
    parts.join(" ")
}

/// The newest export of `job` whose manifest verifies with this agent's
/// key (or the one `wanted` names).
async fn find_export(agent: &Agent, job: &str, wanted: Option<&str>) -> anyhow::Result<Manifest> {
    let mut names = std::collections::BTreeSet::new();
    for r in &agent.replicated.replicas {
        match r.list(layout::SNAPSHOTS).await {
            Ok(l) => names.extend(l.keys().filter_map(|k| layout::manifest_name(k).map(str::to_string))),
            Err(e) => tracing::warn!(provider = %r.provider, error = %e, "Cannot list snapshots"),
        }
    }
    let trusted = agent.trusted();
    let mut refused = Vec::new();
    for name in names.iter().rev() {
        if let Some(w) = wanted {
            if name != w && !name.ends_with(&format!("-{w}")) {
                continue;
            }
        }
        let key = layout::manifest(name);
        let opened =
            agent.replicated.get_checked(&key, Manifest::MAX_LEN, 0, |_, b| Manifest::open(&b, &trusted, &agent.config.tenant, name)).await;
        match opened {
            Ok((m, _)) if m.job == job && m.kind == SnapshotKind::PgDump => return Ok(m),
            Ok((m, _)) if wanted.is_some() => {
                bail!("snapshot {name} is a {} snapshot of job {}, not a pg_dump export of job {job}", m.kind, m.job)
            }
            Ok(_) => {}
            Err(e) => refused.push(format!("{name}: {e}")),
        }
    }
    match wanted {
        Some(w) => bail!(
            "no snapshot {w:?} that verifies with this agent's key{}",
            if refused.is_empty() { String::new() } else { format!(" ({})", refused.join("; ")) }
        ),
        None => bail!(
            "job {job} has no export that verifies with this agent's key on the providers{}",
            if refused.is_empty() { String::new() } else { format!(" (refused: {})", refused.join("; ")) }
        ),
    }
}

/// Restores `m` into a new scratch database, compares the row counts, and
/// drops the database whatever happened. Fills the result's measures.
async fn restore_into_scratch(
    agent: &Agent,
    src: &PgDumpSource,
    m: Manifest,
    ids: Identities,
    opts: &Options,
    result: &mut RestoreTestResult,
) -> anyhow::Result<()> {
    let (pg, password) = src.pg_config(&agent.config_file)?;
    let (client, _conn) = pg.connect().await.map_err(|e| anyhow::anyhow!(crate::source::cannot_connect(&e, "source")))?;
    let id = layout::new_snapshot_name(chrono::Utc::now()); // `<time>-<8 random hex digits>`
    let scratch = format!("bascule_restore_test_{}", &id[id.len() - 8..]);
    if let Err(e) = client.batch_execute(&format!("CREATE DATABASE \"{scratch}\"")).await {
        if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
            let role = pg.pg().get_user().map(bascule_core::postgres::quote_ident).unwrap_or("the job's role".into());
            bail!(
                "role {role} may not create databases, and the restore test restores into a scratch database it creates \
                 and drops: as a superuser, run `ALTER ROLE {role} CREATEDB;` (or give source.dsn a role that has it)"
            );
        }
        return Err(e).with_context(|| format!("cannot create the scratch database {scratch}"));
    }
    tracing::info!(database = %scratch, snapshot = %m.name, "Restoring into a scratch database");

    let restored = async {
        let replicated = &agent.replicated;
        let ids = Arc::new(ids);
        let index = Arc::new(open_index(replicated, &m, &ids).await?);
        result.stream_hash = index.stream_hash.clone();
        let prog = opts
            .pg_restore
            .clone()
            .or_else(|| src.pg_dump.as_ref().map(|p| p.with_file_name("pg_restore")).filter(|p| p.exists()))
            .unwrap_or_else(|| PathBuf::from("pg_restore"));
        let m = Arc::new(m.clone());
        let target = Dsn { conninfo: conninfo(&pg, &scratch, None), password: password.clone() };
        let progress = bascule_core::progress::Progress::bytes(format!("restore test of {}", m.name), Some(m.source_bytes));
        // a scratch copy, dropped afterwards: owned by the job's role, which may
        // not be a superuser (privileges are kept: their roles are on this server)
        let keep = bascule_core::postgres::Keep { owners: false, privileges: true };
        let to = PgRestore { prog: &prog, target: &target, progress: &progress, keep, map_roles: &Default::default() };
        let restored = pg_restore(replicated, m.clone(), index.clone(), ids, agent.config.upload.concurrency, to).await;
        progress.finish();
        restored?;
        progress.phase("restored; comparing each table's row count with the export's");
        result.bytes = m.source_bytes;
        let counts = compare_row_counts(&index, &target).await?;
        result.tables = counts.tables;
        result.rows = counts.rows;
        result.mismatches = counts.mismatches;
        Ok::<_, anyhow::Error>(())
    }
    .await;

    let drop = client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{scratch}\" WITH (FORCE)")).await;
    if let Err(e) = drop {
        tracing::error!(database = %scratch, error = %e, "Cannot drop the scratch database: drop it by hand");
    }
    restored
}

/// Why it failed, without what `pg_restore` said (its messages may quote data).
fn redact(e: &anyhow::Error) -> String {
    let parts: Vec<String> = e
        .chain()
        .map(|c| {
            let s = c.to_string();
            if let Some(i) = s.find("; pg_restore said:") {
                format!("{} (pg_restore's messages kept on site)", &s[..i])
            } else if s.starts_with("pg_restore failed (") {
                "pg_restore failed (its messages kept on site)".to_string()
            } else {
                s
            }
        })
        .collect();
    parts.join(": ").chars().take(600).collect()
}

/// Runs the test; uploads and names in HEAD the signed result, passed or not.
pub async fn run(agent: Arc<Agent>, job_name: &str, opts: Options) -> anyhow::Result<RestoreTestResult> {
    let job = agent.config.job(job_name)?;
    let SourceConfig::PgDump(src) = &job.source else {
        bail!("restore-test restores pg_dump exports; job {job_name} has a {} source", job.source.kind());
    };
    // the identity is read once and kept in memory only
    let ids = Identities::load(&opts.identity).with_context(|| format!("identity file {}", opts.identity.display()))?;
    let started_at = chrono::Utc::now();
    let m = find_export(&agent, job_name, opts.snapshot.as_deref()).await?;
    let mut result = RestoreTestResult {
        format: bascule_core::manifest::FORMAT,
        tenant: agent.config.tenant.clone(),
        job: job_name.to_string(),
        snapshot: m.name.clone(),
        snapshot_started_at: m.started_at,
        started_at,
        finished_at: started_at,
        host: crate::hostname(),
        passed: false,
        failure: None,
        bytes: 0,
        stream_hash: String::new(),
        tables: 0,
        rows: 0,
        mismatches: Vec::new(),
    };
    let outcome = restore_into_scratch(&agent, src, m, ids, &opts, &mut result).await;
    result.finished_at = chrono::Utc::now();
    match &outcome {
        Ok(()) if result.mismatches.is_empty() => result.passed = true,
        Ok(()) => result.failure = Some(format!("{} table(s) with a row count that differs from the export's", result.mismatches.len())),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "Restore test failed");
            result.failure = Some(redact(e));
        }
    }

    let key = restore_test::key(result.started_at, job_name);
    let writer = agent.replicated.writer();
    if let Err(e) = writer.put(&key, Bytes::from(result.sign(&agent.key))).await {
        bail!(
            "the restore test {} but its result could not be stored on any provider: {e}",
            if result.passed { "passed" } else { "failed" }
        );
    }
    let summary = RestoreTestSummary {
        key,
        job: job_name.to_string(),
        snapshot: result.snapshot.clone(),
        at: result.finished_at,
        passed: result.passed,
        last_success_at: result.passed.then_some(result.finished_at),
    };
    // HEAD names it on the providers that hold it
    let seen = agent.read_heads(&writer.up()).await;
    let update = crate::head::HeadUpdate { seen_on_providers: seen, restore_test: Some(summary), ..Default::default() };
    if let Err(e) = agent.commit_head(&writer, update).await {
        tracing::error!(error = format!("{e:#}"), "Cannot update HEAD with the restore test");
    }
    Ok(result)
}

/// The result, for a person.
pub fn print(r: &RestoreTestResult) {
    let took = (r.finished_at - r.started_at).num_milliseconds() as f64 / 1000.0;
    if r.passed {
        println!(
            "restore test of {} (job {}): PASS: {} tables, {} rows as at export, {} bytes, stream {}, {took:.1} s",
            r.snapshot,
            r.job,
            r.tables,
            r.rows,
            r.bytes,
            &r.stream_hash[..16.min(r.stream_hash.len())]
        );
    } else {
        for (t, want, got) in &r.mismatches {
            println!("  {t}: {want} rows at export, {} after restore", got.map(|g| g.to_string()).unwrap_or_else(|| "missing".into()));
        }
        println!("restore test of {} (job {}): FAIL: {}", r.snapshot, r.job, r.failure.as_deref().unwrap_or("unknown"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bascule_core::postgres::Connect;

    #[test]
    fn conninfo_keeps_the_server_and_its_tls_and_changes_the_database() {
        let cfg = Connect::parse("postgres://backup@db.example:5433/mairie").unwrap();
        assert_eq!(conninfo(&cfg, "scratch", None), "host='db.example' port=5433 user='backup' dbname='scratch'");
        let cfg = Connect::parse("host=/var/run/postgresql dbname=app user=o'neil").unwrap();
        assert_eq!(conninfo(&cfg, "s", Some("p w")), "host='/var/run/postgresql' user='o\\'neil' dbname='s' password='p w'");
        let cfg = Connect::parse("postgres://backup@db.example/mairie?sslmode=verify-full&sslrootcert=/etc/ca.pem").unwrap();
        assert_eq!(
            conninfo(&cfg, "s", None),
            "host='db.example' port=5432 user='backup' dbname='s' sslmode='verify-full' sslrootcert='/etc/ca.pem'"
        );
    }

    #[test]
    fn what_pg_restore_said_stays_on_site() {
        let e = anyhow::anyhow!("pg_restore failed (exit status: 1): ERROR: duplicate key (nom)=(Lefèvre)");
        assert_eq!(redact(&e), "pg_restore failed (its messages kept on site)");
        let e = anyhow::anyhow!("restore of s stopped; pg_restore said: ERROR: secret").context("outer");
        assert!(!redact(&e).contains("secret"), "{}", redact(&e));
    }
}
