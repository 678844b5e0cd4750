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
//!    `COPY` over N connections at once, largest tables first (large
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
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::SinkExt;

use super::dump::{BlockReader, Part, Section, Toc, TocEntry};
use super::{quote_ident, ConnectError, Dsn, Keep, PgRestoreError};
use crate::keys::Identities;
use crate::manifest::{Index, Manifest};
use crate::progress::Progress;
use crate::provider::Replicated;
use crate::restore::{stream_range, RestoreError, Seen};

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

/// A table's data (or the large objects): its entry and its bytes in the stream.
struct Table {
    entry: TocEntry,
    /// The `COPY` statement; `None` for the block of large objects.
    copy: Option<String>,
    range: Range<u64>,
}

/// Work for a loading connection.
enum Job {
    Load(Table),
    /// An index, a key or a foreign key whose tables are loaded.
    Build(TocEntry),
}

impl Job {
    fn foreign_key(&self) -> bool {
        matches!(self, Job::Build(e) if e.desc == "FK CONSTRAINT")
    }
}

/// Indexes, keys and foreign keys built by the loading connections as soon
/// as what they depend on is in (the rows of their tables, the key a foreign
/// key references), as `pg_restore -j` schedules them, while other tables
/// still load.
#[derive(Default)]
struct Schedule {
    waiting: HashMap<i64, (TocEntry, usize)>,
    /// Who waits for a load or a build, by its dump id.
    dependents: HashMap<i64, Vec<i64>>,
}

impl Schedule {
    fn of(toc: &Toc, tables: &[Table]) -> Schedule {
        // a table's entry → the entry of its data
        let data_of: HashMap<i64, i64> =
            tables.iter().filter_map(|t| Some((*t.entry.deps.first()?, t.entry.id)).filter(|_| t.entry.deps.len() == 1)).collect();
        let schema: std::collections::HashSet<i64> = toc.entries.iter().filter(|e| e.section == Section::PreData).map(|e| e.id).collect();
        let mut s = Schedule::default();
        for e in toc
            .entries
            .iter()
            .filter(|e| e.section == Section::PostData && matches!(e.desc.as_str(), "INDEX" | "CONSTRAINT" | "FK CONSTRAINT"))
        {
            let mut waits = Vec::new();
            let ours = e.deps.iter().all(|d| {
                if let Some(data) = data_of.get(d) {
                    waits.push(*data);
                } else if s.waiting.contains_key(d) {
                    waits.push(*d);
                } else {
                    return schema.contains(d);
                }
                true
            });
            waits.sort_unstable();
            waits.dedup();
            if ours && !waits.is_empty() {
                for w in &waits {
                    s.dependents.entry(*w).or_default().push(e.id);
                }
                s.waiting.insert(e.id, (e.clone(), waits.len()));
            }
        }
        s
    }

    /// `id` is done: the builds that now have all they wait for.
    fn done(&mut self, id: i64) -> Vec<TocEntry> {
        let mut ready = Vec::new();
        for d in self.dependents.remove(&id).unwrap_or_default() {
            if let Some((_, left)) = self.waiting.get_mut(&d) {
                *left -= 1;
                if *left == 0 {
                    ready.extend(self.waiting.remove(&d).map(|(e, _)| e));
                }
            }
        }
        ready
    }
}

/// The jobs left, those under way, and the builds still waiting.
struct Queue {
    jobs: std::collections::VecDeque<Job>,
    running: usize,
    /// One foreign key at a time: two, each locking both its tables, could
    /// deadlock.
    foreign_key: bool,
    schedule: Schedule,
    done: std::collections::HashSet<i64>,
}

impl Queue {
    /// The next job to run, `Ok(None)` to wait for one, `Err` when all is done.
    fn next(&mut self) -> Result<Option<Job>, ()> {
        let fk = self.foreign_key;
        match self.jobs.iter().position(|j| !(fk && j.foreign_key())) {
            Some(i) => {
                let job = self.jobs.remove(i);
                if let Some(j) = &job {
                    self.running += 1;
                    self.foreign_key |= j.foreign_key();
                }
                Ok(job)
            }
            None if self.running == 0 => Err(()),
            None => Ok(None),
        }
    }

    /// A job ended well: what waited for it goes first.
    fn finished(&mut self, id: i64, foreign_key: bool) {
        self.running -= 1;
        self.foreign_key &= !foreign_key;
        self.done.insert(id);
        for e in self.schedule.done(id).into_iter().rev() {
            self.jobs.push_front(Job::Build(e));
        }
    }
}

/// What the target database is and whether this role may replace it.
struct Target {
    name: String,
    owner: String,
    connlimit: i32,
    /// Rows written in it when the restore began.
    writes: i64,
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
    let tables = match tables(&toc, &layout.blocks, seen.len()) {
        Ok(t) => t,
        Err(why) => return Ok(Outcome::Serial(why)),
    };
    if !to.map_roles.is_empty() {
        let mut map = super::dump::RoleMap::new(to.map_roles.clone());
        head = map.feed(head).map_err(ParallelError::Archive)?;
        map.finish().map_err(ParallelError::Archive)?;
    }

    if let Some(why) = unsuitable(&toc) {
        return Ok(Outcome::Serial(why));
    }

    // 2. a new database beside the target
    let target = match fit(to.target).await? {
        Ok(t) => t,
        Err(why) => return Ok(Outcome::Serial(why)),
    };
    let suffix = hex::encode(random_bytes());
    let staging_name = derived(&target.name, "restore", &suffix);
    maintenance(to.target)
        .await?
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
        copy_privileges(&maintenance(to.target).await?, &target.name, &staging_name).await?;
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

/// The target database, if this role may replace it (else why not).
async fn fit(dsn: &Dsn) -> Result<Result<Target, String>, ParallelError> {
    let (client, conn) = dsn.config()?.connect().await?;
    let row = client
        .query_one(
            "SELECT current_database(), pg_get_userbyid(d.datdba), \
                    (SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user), \
                    pg_has_role(d.datdba, 'MEMBER'), \
                    (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
                       AND backend_type = 'client backend'), \
                    d.datconnlimit, \
                    EXISTS (SELECT 1 FROM pg_db_role_setting s WHERE s.setdatabase = d.oid), \
                    shobj_description(d.oid, 'pg_database') IS NOT NULL, \
                    (SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datid = d.oid) \
             FROM pg_database d WHERE d.datname = current_database()",
            &[],
        )
        .await
        .map_err(sql("reading the target database's owner and this role's rights"))?;
    drop(client);
    let _ = conn.await;
    let (name, owner): (String, String) = (row.get(0), row.get(1));
    let (createdb, member, others): (Option<bool>, bool, i64) = (row.get(2), row.get(3), row.get(4));
    let (connlimit, settings, comment, writes): (i32, bool, bool, Option<i64>) = (row.get(5), row.get(6), row.get(7), row.get(8));
    Ok(if createdb != Some(true) {
        Err("the role may not create databases (CREATEDB), which a parallel restore needs to leave the target as it was on failure".into())
    } else if !member {
        Err(format!("the role is not a member of {owner}, the target database's owner"))
    } else if others > 0 {
        Err(format!("{others} other session(s) are connected to {name}"))
    } else if settings || comment {
        Err(format!("{name} has its own settings (ALTER DATABASE/ROLE … SET) or a comment, which a new database would not carry"))
    } else if matches!(name.as_str(), "postgres" | "template0" | "template1") {
        Err(format!("the target is {name}, a database the server keeps"))
    } else {
        Ok(Target { name, owner, connlimit, writes: writes.unwrap_or(0) })
    })
}

/// Rows written in database `name` so far (all tables, catalogs included).
async fn writes(c: &tokio_postgres::Client, name: &str) -> Result<i64, ParallelError> {
    let row = c
        .query_one("SELECT coalesce(tup_inserted + tup_updated + tup_deleted, 0) FROM pg_stat_database WHERE datname = $1", &[&name])
        .await
        .map_err(sql("reading the target's activity"))?;
    Ok(row.get(0))
}

/// A connection to the server's maintenance database (`postgres`, else
/// `template1`), statements without a time limit.
async fn maintenance(target: &Dsn) -> Result<tokio_postgres::Client, ParallelError> {
    let mut last = None;
    for db in ["postgres", "template1"] {
        match target.with_dbname(db).config()?.connect().await {
            Ok((client, _conn)) => {
                client.batch_execute("SET statement_timeout = 0; SET lock_timeout = 0").await.map_err(sql("setting up"))?;
                return Ok(client);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map(ParallelError::Connect).unwrap_or_else(|| ParallelError::Io("no maintenance database".into())))
}

/// The database restored into, dropped unless it took the target's place
/// (on an error, awaited; when the restore is dropped midway — a drill step
/// timed out, aborted — by a task of its own).
struct Staging {
    server: Dsn,
    name: String,
    armed: bool,
}

impl Staging {
    async fn drop_now(mut self) {
        self.armed = false;
        drop_database(&self.server, &self.name).await;
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            let (server, name) = (self.server.clone(), std::mem::take(&mut self.name));
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { drop_database(&server, &name).await });
            }
        }
    }
}

async fn drop_database(server: &Dsn, name: &str) {
    let dropped = async {
        let c = maintenance(server).await?;
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name))).await.map_err(sql("dropping"))
    };
    if let Err(e) = dropped.await {
        tracing::warn!("the restore failed and its database {name} could not be dropped ({e}): drop it by hand");
    }
}

/// `name_what_suffix`, within PostgreSQL's 63 bytes.
fn derived(name: &str, what: &str, suffix: &str) -> String {
    let room = 63 - what.len() - suffix.len() - 2;
    let mut cut = name.len().min(room);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{what}_{suffix}", name.get(..cut).unwrap_or_default())
}

fn random_bytes() -> [u8; 4] {
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    b
}

/// The target's privileges (who may connect, create, use temporary tables) on the new database.
async fn copy_privileges(c: &tokio_postgres::Client, from: &str, to: &str) -> Result<(), ParallelError> {
    let rows = c
        .query(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, a.is_grantable \
             FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = $1",
            &[&from],
        )
        .await
        .map_err(sql("reading the target database's privileges"))?;
    if rows.is_empty() {
        return Ok(()); // the defaults, as the new database has them
    }
    let mut stmts = format!("REVOKE ALL ON DATABASE {} FROM PUBLIC;", quote_ident(to));
    for r in rows {
        let (grantee, privilege, grantable): (Option<String>, String, bool) = (r.get(0), r.get(1), r.get(2));
        let privilege = match privilege.as_str() {
            p @ ("CONNECT" | "CREATE" | "TEMPORARY") => p,
            _ => continue,
        };
        let grantee = grantee.map(|g| quote_ident(&g)).unwrap_or_else(|| "PUBLIC".into());
        stmts.push_str(&format!(
            "GRANT {privilege} ON DATABASE {} TO {grantee}{};",
            quote_ident(to),
            if grantable { " WITH GRANT OPTION" } else { "" }
        ));
    }
    c.batch_execute(&stmts).await.map_err(sql("giving the new database the target's privileges"))
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
    let mut cmd = tokio::process::Command::new(prog);
    crate::child::clean(&mut cmd);
    if let Some(p) = &db.password {
        cmd.env("PGPASSWORD", p);
    }
    if !keep.owners {
        cmd.arg("--no-owner");
    }
    if !keep.privileges {
        cmd.arg("--no-privileges");
    }
    let out = cmd
        .args(["--exit-on-error", "--no-password"])
        .args(args)
        .arg("--dbname")
        .arg(&db.conninfo)
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

/// Every table's rows, `jobs` tables at a time, and each table's indexes
/// and keys once its rows are in.
#[allow(clippy::too_many_arguments)]
async fn load(
    replicated: &Replicated,
    m: &Arc<Manifest>,
    index: &Arc<Index>,
    ids: &Arc<Identities>,
    concurrency: usize,
    to: &Parallel<'_>,
    staging: &Dsn,
    toc: &Toc,
    tables: Vec<Table>,
    schedule: Schedule,
    seen: &Seen,
) -> Result<(BTreeMap<String, u64>, std::collections::HashSet<i64>), ParallelError> {
    let jobs = to.jobs.clamp(1, tables.len().max(1));
    // the session the archive asks for (encoding, quoting, search path), as pg_restore sets it
    let mut setup: String = toc
        .entries
        .iter()
        .filter(|e| matches!(e.desc.as_str(), "ENCODING" | "STDSTRINGS" | "SEARCHPATH"))
        .map(|e| e.defn.as_str())
        .collect();
    setup.push_str(
        "SET statement_timeout = 0; SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0; \
         SET row_security = off; SET synchronous_commit = off; SET xmloption = content; \
         SET check_function_bodies = false; SET client_min_messages = warning;",
    );
    let queue = Mutex::new(Queue {
        jobs: tables.into_iter().map(Job::Load).collect(),
        running: 0,
        foreign_key: false,
        schedule,
        done: Default::default(),
    });
    let per_job = (concurrency / jobs).max(2);
    let workers = (0..jobs).map(|_| async {
        let (client, conn) = staging.config()?.connect().await?;
        client.batch_execute(&setup).await.map_err(sql("setting up a loading session"))?;
        let mut served: BTreeMap<String, u64> = BTreeMap::new();
        loop {
            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
            let job = match next {
                Ok(Some(job)) => job,
                Ok(None) => {
                    // nothing to do until a job under way ends
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
                Err(()) => break,
            };
            let (id, foreign_key) = match &job {
                Job::Load(t) => (t.entry.id, false),
                Job::Build(e) => (e.id, job.foreign_key()),
            };
            match job {
                Job::Load(t) => {
                    let name = qualified(&t.entry);
                    let s = copy_table(replicated, m, index, ids, per_job, to.progress, &client, toc.int_size, &t, seen).await.map_err(
                        |e| match e {
                            ParallelError::Sql { what, source } => ParallelError::Sql { what: format!("{what} {name}"), source },
                            e => e,
                        },
                    )?;
                    for (p, n) in s {
                        *served.entry(p).or_default() += n;
                    }
                }
                Job::Build(e) => {
                    let tablespace = format!(
                        "SET default_tablespace = {};",
                        if e.tablespace.is_empty() { "''".into() } else { quote_ident(&e.tablespace) }
                    );
                    client.batch_execute(&format!("{tablespace}\n{}", e.defn)).await.map_err(sql(format!(
                        "building {} {}",
                        e.desc.to_lowercase(),
                        qualified(&e)
                    )))?;
                }
            }
            queue.lock().unwrap_or_else(|e| e.into_inner()).finished(id, foreign_key);
        }
        drop(client);
        let _ = conn.await;
        Ok::<_, ParallelError>(served)
    });
    let mut served = BTreeMap::new();
    for s in futures::future::try_join_all(workers).await? {
        for (p, n) in s {
            *served.entry(p).or_default() += n;
        }
    }
    let done = std::mem::take(&mut queue.lock().unwrap_or_else(|e| e.into_inner()).done);
    Ok((served, done))
}

/// `schema.name` of an entry, or its name alone.
fn qualified(e: &TocEntry) -> String {
    if e.namespace.is_empty() {
        e.tag.clone()
    } else {
        format!("{}.{}", e.namespace, e.tag)
    }
}

/// Bytes of one large object written at once.
const OBJECT_WRITE: usize = 1 << 20;

/// One table's block, fetched and loaded with `COPY` as it arrives (or the
/// large objects, written with `lo_put`).
#[allow(clippy::too_many_arguments)]
async fn copy_table(
    replicated: &Replicated,
    m: &Arc<Manifest>,
    index: &Arc<Index>,
    ids: &Arc<Identities>,
    concurrency: usize,
    progress: &Progress,
    client: &tokio_postgres::Client,
    int_size: usize,
    t: &Table,
    seen: &Seen,
) -> Result<BTreeMap<String, u64>, ParallelError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    let fetch = async move {
        let s = stream_range(replicated, m.clone(), index.clone(), ids.clone(), concurrency, t.range.clone(), seen, progress, move |b| {
            let tx = tx.clone();
            Box::pin(async move {
                tx.send(b).await.map_err(|_| RestoreError::Sink { what: "COPY".into(), source: std::io::Error::other("stopped") })
            })
        })
        .await?;
        Ok::<_, ParallelError>(s)
    };
    let load = async move {
        let mut reader = BlockReader::new(int_size, t.entry.id, t.copy.is_none());
        let Some(copy) = &t.copy else {
            let mut object: Option<(u32, i64, Vec<u8>)> = None;
            while let Some(b) = rx.recv().await {
                let mut parts = Vec::new();
                reader.feed(&b, |p| parts.push(p)).map_err(ParallelError::Archive)?;
                for p in parts {
                    match p {
                        Part::Object(oid) => {
                            write_object(client, object.take()).await?;
                            object = Some((oid, 0, Vec::new()));
                        }
                        Part::Bytes(r) => {
                            let Some(o) = object.as_mut() else {
                                return Err(ParallelError::Archive("large object bytes before its oid".into()));
                            };
                            o.2.extend_from_slice(b.get(r).unwrap_or_default());
                            if o.2.len() >= OBJECT_WRITE {
                                let (oid, at, buf) = (o.0, o.1, std::mem::take(&mut o.2));
                                o.1 += buf.len() as i64;
                                write_object(client, Some((oid, at, buf))).await?;
                            }
                        }
                        Part::Rows(_) => return Err(ParallelError::Archive("rows in a block of large objects".into())),
                    }
                }
            }
            write_object(client, object).await?;
            return reader.finish().map_err(ParallelError::Archive);
        };
        let sink = client.copy_in::<_, Bytes>(copy.as_str()).await.map_err(sql("starting COPY into"))?;
        let mut sink = std::pin::pin!(sink);
        while let Some(b) = rx.recv().await {
            // pg_dump writes a piece per row: the rows of a read go to COPY
            // together, without the pieces' framing
            let mut rows = Vec::with_capacity(b.len());
            let mut other = false;
            reader
                .feed(&b, |p| match p {
                    Part::Rows(r) => rows.extend_from_slice(b.get(r).unwrap_or_default()),
                    _ => other = true,
                })
                .map_err(ParallelError::Archive)?;
            if other {
                return Err(ParallelError::Archive("a large object in a table's block".into()));
            }
            if !rows.is_empty() {
                sink.feed(Bytes::from(rows)).await.map_err(sql("sending rows to COPY into"))?;
            }
        }
        reader.finish().map_err(ParallelError::Archive)?;
        sink.as_mut().finish().await.map_err(sql("ending COPY into"))?;
        Ok::<_, ParallelError>(())
    };
    let (served, ()) = futures::future::try_join(fetch, load).await?;
    Ok(served)
}

/// Writes bytes of a large object (created with the schema) at their offset.
async fn write_object(client: &tokio_postgres::Client, part: Option<(u32, i64, Vec<u8>)>) -> Result<(), ParallelError> {
    let Some((oid, at, buf)) = part.filter(|p| !p.2.is_empty()) else { return Ok(()) };
    client
        .execute("SELECT pg_catalog.lo_put($1, $2, $3)", &[&oid, &at, &buf])
        .await
        .map_err(sql(format!("writing large object {oid} (at byte {at}) of")))?;
    Ok(())
}

/// Gives the restored database the target's name, in one transaction, then
/// drops the replaced (empty) target, unless rows were written in it during
/// the restore (then it is kept, under its new name, and said so).
async fn swap(server: &Dsn, target: &Target, staging: &str, suffix: &str) -> Result<(), ParallelError> {
    let old = derived(&target.name, "replaced", suffix);
    let c = maintenance(server).await?;
    let written = writes(&c, &target.name).await? - target.writes;
    let renamed = async {
        c.batch_execute("BEGIN").await?;
        c.batch_execute(&format!("ALTER DATABASE {} RENAME TO {}", quote_ident(&target.name), quote_ident(&old))).await?;
        c.batch_execute(&format!("ALTER DATABASE {} RENAME TO {}", quote_ident(staging), quote_ident(&target.name))).await?;
        c.batch_execute("COMMIT").await
    }
    .await;
    if let Err(e) = renamed {
        let _ = c.batch_execute("ROLLBACK").await;
        // the commit may have reached the server before the connection broke
        let swapped = async {
            let c = maintenance(server).await.ok()?;
            let row = c.query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&staging]).await.ok()?;
            Some(row.get::<_, i64>(0) == 0)
        };
        if swapped.await != Some(true) {
            return Err(sql(format!(
                "giving the restored database {staging} the name {} (is a session connected to either?)",
                target.name
            ))(e));
        }
    }
    if written > 0 {
        tracing::warn!(
            "{written} row(s) were written in {} while it was being restored: the restored database took its name, \
             and what it held is kept as {old} (drop it once looked at)",
            target.name
        );
        return Ok(());
    }
    if let Err(e) = c.batch_execute(&format!("DROP DATABASE {}", quote_ident(&old))).await {
        tracing::warn!("the target database it replaced, now {old}, could not be dropped ({e}): drop it by hand");
    }
    Ok(())
}
