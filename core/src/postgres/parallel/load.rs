//! The loading connections: every table's rows over `COPY` (large objects
//! with `lo_put`), and the indexes and keys built as soon as what they
//! depend on is in.
// Parses what a provider served (after its checks): total, no panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::SinkExt;

use super::{quote_ident, sql, Dsn, Parallel, ParallelError};
use crate::keys::Identities;
use crate::manifest::{Index, Manifest};
use crate::postgres::dump::{BlockReader, Part, Section, Toc, TocEntry};
use crate::progress::Progress;
use crate::provider::Replicated;
use crate::restore::{stream_range, RestoreError, Seen};

/// A table's data (or the large objects): its entry and its bytes in the stream.
pub(super) struct Table {
    pub(super) entry: TocEntry,
    /// The `COPY` statement; `None` for the block of large objects.
    pub(super) copy: Option<String>,
    pub(super) range: Range<u64>,
}

/// Work for a loading connection.
pub(super) enum Job {
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
pub(super) struct Schedule {
    pub(super) waiting: HashMap<i64, (TocEntry, usize)>,
    /// Who waits for a load or a build, by its dump id.
    pub(super) dependents: HashMap<i64, Vec<i64>>,
}

impl Schedule {
    pub(super) fn of(toc: &Toc, tables: &[Table]) -> Schedule {
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
pub(super) struct Queue {
    pub(super) jobs: std::collections::VecDeque<Job>,
    pub(super) running: usize,
    /// One foreign key at a time: two, each locking both its tables, could
    /// deadlock.
    pub(super) foreign_key: bool,
    pub(super) schedule: Schedule,
    pub(super) done: std::collections::HashSet<i64>,
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

/// Every table's rows, `jobs` tables at a time, and each table's indexes
/// and keys once its rows are in.
#[allow(clippy::too_many_arguments)]
pub(super) async fn load(
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
    // sorts of the index builds in memory, as PostgreSQL's advice for a
    // restore has it, unless the server grants more already
    setup.push_str(&format!(
        "SELECT pg_catalog.set_config('maintenance_work_mem', '{BUILD_MEMORY_MIB}MB', false) \
         WHERE pg_catalog.pg_size_bytes(pg_catalog.current_setting('maintenance_work_mem')) < {BUILD_MEMORY_MIB} * 1048576;"
    ));
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
pub(super) fn qualified(e: &TocEntry) -> String {
    if e.namespace.is_empty() {
        e.tag.clone()
    } else {
        format!("{}.{}", e.namespace, e.tag)
    }
}

/// `maintenance_work_mem` of each loading connection, in MiB (at least).
pub(super) const BUILD_MEMORY_MIB: u64 = 256;

/// Bytes of one large object written at once.
pub(super) const OBJECT_WRITE: usize = 1 << 20;

/// One table's block, fetched and loaded with `COPY` as it arrives (or the
/// large objects, written with `lo_put`).
#[allow(clippy::too_many_arguments)]
pub(super) async fn copy_table(
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
        let mut frozen = match frozen_copy(copy) {
            Some(stmt) if truncated(client, &t.entry).await => Some(stmt),
            _ => None,
        };
        let started = match frozen.as_deref() {
            // refused before any row is sent (a COPY into another table than
            // the one truncated, a partitioned root): loaded as it is
            Some(stmt) => match client.copy_in::<_, Bytes>(stmt).await {
                Ok(sink) => Ok(sink),
                Err(err) => {
                    tracing::debug!(table = %t.entry.tag, error = %err, "Rows loaded without FREEZE");
                    frozen = None;
                    client.batch_execute("ROLLBACK").await.map_err(sql("giving up a frozen load of"))?;
                    client.copy_in::<_, Bytes>(copy).await
                }
            },
            None => client.copy_in::<_, Bytes>(copy).await,
        };
        let sink = started.map_err(sql("starting COPY into"))?;
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
        if frozen.is_some() {
            client.batch_execute("COMMIT").await.map_err(sql("committing the rows of"))?;
        }
        Ok::<_, ParallelError>(())
    };
    let (served, ()) = futures::future::try_join(fetch, load).await?;
    Ok(served)
}

/// `COPY … FROM stdin (FREEZE)` for the statement pg_dump writes: rows
/// loaded frozen and their pages marked all-visible, so that the index
/// builds that read them next (and the first queries, and VACUUM) need not
/// look up each row's transaction and write every page a second time to
/// record it, as they do after `pg_restore`.
fn frozen_copy(copy: &str) -> Option<String> {
    copy.trim_end().strip_suffix(" FROM stdin;").map(|c| format!("{c} FROM stdin (FREEZE)"))
}

/// Opens the transaction a frozen `COPY` needs (the table truncated in it,
/// which is empty: only its file is made anew); `false`, with no
/// transaction open, where the table cannot be (a partitioned table, one
/// the role may not truncate): its rows are then loaded as they are.
async fn truncated(client: &tokio_postgres::Client, e: &TocEntry) -> bool {
    let table = if e.namespace.is_empty() { quote_ident(&e.tag) } else { format!("{}.{}", quote_ident(&e.namespace), quote_ident(&e.tag)) };
    match client.batch_execute(&format!("BEGIN; TRUNCATE ONLY {table}")).await {
        Ok(()) => true,
        Err(err) => {
            tracing::debug!(table = %table, error = %err, "Rows loaded without FREEZE");
            let _ = client.batch_execute("ROLLBACK").await;
            false
        }
    }
}

/// Writes bytes of a large object (created with the schema) at their offset.
pub(super) async fn write_object(client: &tokio_postgres::Client, part: Option<(u32, i64, Vec<u8>)>) -> Result<(), ParallelError> {
    let Some((oid, at, buf)) = part.filter(|p| !p.2.is_empty()) else { return Ok(()) };
    client
        .execute("SELECT pg_catalog.lo_put($1, $2, $3)", &[&oid, &at, &buf])
        .await
        .map_err(sql(format!("writing large object {oid} (at byte {at}) of")))?;
    Ok(())
}
