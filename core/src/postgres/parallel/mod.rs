//! `restore --jobs N`: what `pg_restore -j N` does, from the providers,
//! without the dump on disk.
//!
//! The agent recorded where the archive's table of contents ends and where
//! each table's data block begins ([`crate::manifest::ArchiveLayout`]). A
//! parallel restore:
//! 1. reads the header and table of contents (checked as every read is) and
//!    writes them alone to a file (mode 0600 in a 0700 directory, removed
//!    afterwards): the schema, no table data;
//! 2. creates a new database from the target (`CREATE DATABASE … TEMPLATE
//!    target`, same owner and privileges) and restores into it, so that a
//!    restore that fails leaves the target as it was: `pg_restore
//!    --section=pre-data` from that file, then every table's rows fetched by
//!    their byte range from the providers (both serving) and loaded with
//!    `COPY` over N connections at once, largest tables first, frozen
//!    (`COPY … FREEZE` after a `TRUNCATE` of the empty table, so that
//!    nothing writes their pages again to record that their rows are
//!    committed), with `maintenance_work_mem` of at least 256 MiB for the
//!    index builds (large
//!    objects written with `lo_put`, as their block arrives), then the
//!    rest of the archive (sequence values, indexes, constraints, triggers,
//!    materialized views, privileges) with `pg_restore -j N`, which builds
//!    them in dependency order;
//! 3. checks that every chunk of the stream was read and that they chain to
//!    the stream hash the agent recorded, then swaps the databases in one
//!    transaction (the target renamed away, the new one renamed to the
//!    target's name) and drops the old, empty one.
//!
//! Table data is never written to disk in clear: it goes from the providers
//! through memory to PostgreSQL. What it needs besides `pg_restore`'s
//! needs: the role may create databases (CREATEDB) and is a member of the
//! target's owner, and no other session is connected to the target (a
//! database used as a template, or renamed, must have none). Where these do
//! not hold, or the export recorded no layout (made before it was
//! recorded), the restore runs as before: one stream into
//! one `pg_restore` in one transaction. Database-level settings (`ALTER
//! DATABASE … SET`) and the database's comment are not carried to the new
//! database.
// Parses what a provider served (after its checks): total, no panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::dump::{Section, Toc, TocEntry};
use super::{quote_ident, ConnectError, Dsn, Keep, PgRestoreError};
use crate::keys::Identities;
use crate::manifest::{Index, Manifest};
use crate::progress::Progress;
use crate::provider::Replicated;
use crate::restore::{stream_range, RestoreError, Seen};

mod database;
mod load;

use database::{claim, copy_privileges, fit, maintenance, random_bytes, staging_name, swap, Staging};
use load::{load, Schedule, Table};

/// Where a parallel restore restores, and how.
pub struct Parallel<'a> {
    pub prog: &'a Path,
    pub target: &'a Dsn,
    pub progress: &'a Progress,
    pub keep: Keep,
    pub map_roles: &'a BTreeMap<String, String>,
    /// Connections loading tables at once, and `pg_restore -j`.
    pub jobs: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ParallelError {
    #[error(transparent)]
    Read(#[from] RestoreError),
    #[error("{what}: {source}")]
    Sql {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Dsn(#[from] super::dsn::BadDsn),
    #[error("the archive: {0}")]
    Archive(String),
    #[error(transparent)]
    PgRestore(Box<PgRestoreError>),
    #[error("{0}")]
    Io(String),
}

/// A restore done in parallel, or why it runs as one stream instead.
pub enum Outcome {
    /// The ciphertext bytes each provider served.
    Done {
        served: BTreeMap<String, u64>,
        /// How long each part took: `schema 0.4 s, rows 12.0 s, …`.
        timings: String,
    },
    Serial(String),
}

impl From<PgRestoreError> for ParallelError {
    fn from(e: PgRestoreError) -> ParallelError {
        ParallelError::PgRestore(Box::new(e))
    }
}

fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> ParallelError {
    move |source| ParallelError::Sql { what: what.into(), source }
}

/// Restores in parallel (see the module's docs), or says why not before
/// changing anything.
pub async fn restore(
    replicated: &Replicated,
    m: Arc<Manifest>,
    index: Arc<Index>,
    ids: Arc<Identities>,
    concurrency: usize,
    to: Parallel<'_>,
) -> Result<Outcome, ParallelError> {
    let Some(layout) = index.archive.clone() else {
        return Ok(Outcome::Serial(
            "the export did not record where its tables lie (made by an older agent, or its dump could not be read)".into(),
        ));
    };
    let seen = Seen::new(&index);
    let (mut head, toc, served) = read_toc(replicated, &m, &index, &ids, concurrency, &layout, &seen).await?;
    if let Some(why) = unsuitable(&toc) {
        return Ok(Outcome::Serial(why));
    }
    let tables = match tables(&toc, &layout.blocks, seen.len()) {
        Ok(t) => t,
        Err(why) => return Ok(Outcome::Serial(why)),
    };
    if !to.map_roles.is_empty() {
        let mut map = super::dump::RoleMap::new(to.map_roles.clone());
        head = map.feed(head).map_err(ParallelError::Archive)?;
        map.finish().map_err(ParallelError::Archive)?;
    }

    // 2. a new database beside the target
    let target = match fit(to.target).await? {
        Ok(t) => t,
        Err(why) => return Ok(Outcome::Serial(why)),
    };
    let suffix = hex::encode(random_bytes());
    let staging_name = staging_name(&target.name, &suffix);
    // held until this function returns: its session holds the claim on the name
    let server = maintenance(to.target).await?;
    for name in claim(&server, &target.name, &staging_name).await? {
        tracing::warn!("dropped {name}, the database a killed restore into {} left", target.name);
    }
    server
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE {} OWNER {} CONNECTION LIMIT {}",
            quote_ident(&staging_name),
            quote_ident(&target.name),
            quote_ident(&target.owner),
            target.connlimit
        ))
        .await
        .map_err(sql(format!("creating the database {staging_name} to restore into (from {}, as its template)", target.name)))?;
    let guard = Staging { server: to.target.clone(), name: staging_name.clone(), armed: true };
    let staging = to.target.with_dbname(&staging_name);
    let mut timings = Vec::new();
    let mut lap = std::time::Instant::now();
    let mut took = |what: &str| {
        timings.push(format!("{what} {:.1} s", lap.elapsed().as_secs_f64()));
        lap = std::time::Instant::now();
    };
    let loaded = async {
        copy_privileges(&server, &target.name, &staging_name).await?;
        let dir = tempfile::Builder::new()
            .prefix("bascule-restore-")
            .tempdir()
            .map_err(|e| ParallelError::Io(format!("a directory for the schema: {e}")))?;
        let toc_file = dir.path().join("schema.dump");
        write_private(&toc_file, &head)?;
        // privileges last, as pg_restore grants them: after the rows
        let privileges = |e: &TocEntry| matches!(e.desc.as_str(), "ACL" | "ACL LANGUAGE" | "DEFAULT ACL");
        let schema: Vec<i64> = toc.entries.iter().filter(|e| e.section == Section::PreData && !privileges(e)).map(|e| e.id).collect();
        to.progress.phase(&format!("restoring the schema of {} table(s) into {staging_name}", tables.len()));
        let list = dir.path().join("schema.list");
        write_private(&list, ids_list(&schema).as_bytes())?;
        pg_restore(to.prog, &staging, to.keep, &["--single-transaction", &format!("--use-list={}", list.display())], &toc_file).await?;
        took("schema");
        let schedule = Schedule::of(&toc, &tables);
        to.progress.phase(&format!(
            "loading {} table(s) over {} connection(s), building {} of their indexes and keys as their tables are loaded",
            tables.len(),
            to.jobs,
            schedule.waiting.len()
        ));
        let (served, built) = load(replicated, &m, &index, &ids, concurrency, &to, &staging, &toc, tables, schedule, &seen).await?;
        seen.verify(&index)?;
        took("rows, indexes and keys");
        let rest: Vec<&TocEntry> = toc
            .entries
            .iter()
            .filter(|e| {
                (e.section != Section::PreData || privileges(e))
                    && !matches!(e.desc.as_str(), "TABLE DATA" | "BLOBS")
                    && !built.contains(&e.id)
            })
            .collect();
        if !rest.is_empty() {
            to.progress.phase(&format!("building the rest with pg_restore -j {}: {}", to.jobs, kinds(&rest)));
            let list = dir.path().join("rest.list");
            write_private(&list, ids_list(&rest.iter().map(|e| e.id).collect::<Vec<_>>()).as_bytes())?;
            let jobs = format!("--jobs={}", to.jobs.max(1));
            let list_arg = format!("--use-list={}", list.display());
            pg_restore(to.prog, &staging, to.keep, &[&jobs, &list_arg], &toc_file).await?;
            took("the rest");
        }
        Ok::<_, ParallelError>(served)
    }
    .await;
    let swapped = match loaded {
        Ok(s) => swap(to.target, &target, &staging_name, &suffix).await.map(|()| s),
        Err(e) => Err(e),
    };
    match swapped {
        Ok(mut s) => {
            let mut guard = guard;
            guard.armed = false;
            for (p, n) in served {
                *s.entry(p).or_default() += n;
            }
            took("swap");
            Ok(Outcome::Done { served: s, timings: timings.join(", ") })
        }
        Err(e) => {
            guard.drop_now().await;
            Err(e)
        }
    }
}

/// What in an archive keeps it from being restored in parallel, if anything.
fn unsuitable(toc: &Toc) -> Option<String> {
    let encoding = toc.entries.iter().find(|e| e.desc == "ENCODING").map(|e| e.defn.as_str()).unwrap_or_default();
    if !encoding.contains("'UTF8'") {
        // names and statements are read as UTF-8 here; pg_restore reads them as they are
        return Some(format!("the dump is not in UTF-8 ({})", encoding.trim()));
    }
    if !toc.entries.iter().any(|e| e.desc == "SEARCHPATH") {
        return Some("the dump comes from a pg_dump older than 11 (no search path entry)".into());
    }
    None
}

/// A `pg_restore --use-list` file: one dump id a line.
fn ids_list(ids: &[i64]) -> String {
    ids.iter().map(|id| format!("{id}\n")).collect()
}

/// `3 FK CONSTRAINT, 1 INDEX, …`: what a list of entries holds.
fn kinds(entries: &[&TocEntry]) -> String {
    let mut n: BTreeMap<&str, usize> = BTreeMap::new();
    for e in entries {
        *n.entry(e.desc.as_str()).or_default() += 1;
    }
    n.iter().map(|(d, k)| format!("{k} {d}")).collect::<Vec<_>>().join(", ")
}

/// Reads and checks the header and table of contents (the layout's first
/// `toc_end` bytes): their bytes, what they say, and who served them.
async fn read_toc(
    replicated: &Replicated,
    m: &Arc<Manifest>,
    index: &Arc<Index>,
    ids: &Arc<Identities>,
    concurrency: usize,
    layout: &crate::manifest::ArchiveLayout,
    seen: &Seen,
) -> Result<(Vec<u8>, Toc, BTreeMap<String, u64>), ParallelError> {
    if seen.len() != m.source_bytes {
        return Err(ParallelError::Archive(format!("the index's chunks make {} bytes, the manifest says {}", seen.len(), m.source_bytes)));
    }
    if layout.toc_end == 0 || layout.toc_end > seen.len() || layout.toc_end > super::dump::HEAD_MAX as u64 {
        return Err(ParallelError::Archive(format!("a table of contents of {} bytes", layout.toc_end)));
    }
    let starts: Vec<u64> = layout.blocks.iter().map(|b| b.at).collect();
    if starts.first().is_some_and(|&a| a != layout.toc_end)
        || starts.windows(2).any(|w| w.first() >= w.get(1))
        || starts.last().is_some_and(|&a| a >= seen.len())
    {
        return Err(ParallelError::Archive("data blocks out of order or outside the stream".into()));
    }

    // 1. the header and table of contents
    let head = Arc::new(Mutex::new(Vec::with_capacity(layout.toc_end as usize)));
    let served = {
        let head = head.clone();
        stream_range(
            replicated,
            m.clone(),
            index.clone(),
            ids.clone(),
            concurrency,
            0..layout.toc_end,
            seen,
            &Progress::hidden(),
            move |b| {
                head.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&b);
                Box::pin(async { Ok(()) })
            },
        )
        .await?
    };
    let head = std::mem::take(&mut *head.lock().unwrap_or_else(|e| e.into_inner()));
    let toc = super::dump::toc(&head).map_err(ParallelError::Archive)?;
    if toc.len as u64 != layout.toc_end {
        return Err(ParallelError::Archive(format!("the table of contents ends at byte {}, the index says {}", toc.len, layout.toc_end)));
    }
    Ok((head, toc, served))
}

/// The tables to load (the largest first), or why the archive's blocks do not
/// match its entries (then the serial restore reads it as pg_restore does).
fn tables(toc: &Toc, blocks: &[crate::manifest::DataBlock], stream_len: u64) -> Result<Vec<Table>, String> {
    let by_id: HashMap<i64, &TocEntry> = toc.entries.iter().map(|e| (e.id, e)).collect();
    let mut out = Vec::with_capacity(blocks.len());
    for (i, b) in blocks.iter().enumerate() {
        let end = blocks.get(i + 1).map(|n| n.at).unwrap_or(stream_len);
        let Some(e) = by_id.get(&b.id) else { return Err(format!("a data block of entry {}, which the table of contents lacks", b.id)) };
        let copy = match (b.large_objects, e.desc.as_str(), &e.copy_stmt) {
            (false, "TABLE DATA", Some(copy)) => Some(copy.clone()),
            (true, "BLOBS", _) => None,
            _ => return Err(format!("a data block of a {} entry ({}), not a table's", e.desc, e.tag)),
        };
        out.push(Table { entry: (*e).clone(), copy, range: b.at..end });
    }
    let with_blocks: std::collections::HashSet<i64> = blocks.iter().map(|b| b.id).collect();
    if let Some(e) = toc.entries.iter().find(|e| e.desc == "TABLE DATA" && !with_blocks.contains(&e.id)) {
        return Err(format!("the data of {}.{} has no block of its own", e.namespace, e.tag));
    }
    out.sort_by_key(|t| std::cmp::Reverse(t.range.end - t.range.start));
    Ok(out)
}

/// Writes a file only this user reads.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ParallelError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ParallelError::Io(format!("{}: {e}", path.display())))?;
    f.write_all(bytes).map_err(|e| ParallelError::Io(format!("{}: {e}", path.display())))
}

/// `pg_restore` of the schema file into `db`.
async fn pg_restore(prog: &Path, db: &Dsn, keep: Keep, args: &[&str], file: &Path) -> Result<(), PgRestoreError> {
    let out = super::pg_restore::command(prog, db, keep)
        .args(args)
        .arg(file)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| PgRestoreError::Start { prog: prog.into(), source })?;
    if !out.status.success() {
        return Err(PgRestoreError::Failed { status: out.status, said: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(())
}
