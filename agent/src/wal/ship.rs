//! The daemon's side of WAL archiving: seal what `wal-push` spooled, upload
//! it to each provider in order, release it once both hold it.
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bascule_core::manifest::FORMAT;
use bascule_core::object::ObjectRef;
use bascule_core::seal;
use bascule_core::signed::Signed;
use bascule_core::wal::{WalName, WalRecord};
use bytes::Bytes;
use futures::StreamExt;
use notify::Watcher;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::spool::{record_body, Spool};
use crate::head::HeadUpdate;
use crate::{metrics, Agent};

/// How long a re-push of an archived file is recognised.
const DURABLE_MEMORY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest wait between two attempts on a failing provider.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Ships the spool until `cancel`; returns once every task stopped.
pub async fn ship(agent: Arc<Agent>, cancel: CancellationToken) -> anyhow::Result<()> {
    let wal = agent.config.wal.as_ref().context("no wal section")?;
    let spool = Spool::open(&agent.config.spool_dir()?)?;
    let pushed = Arc::new(Notify::new());
    let sealed = Arc::new(Notify::new());

    // file-system events wake the sealer at once; the periodic rescan
    // covers any event lost
    let wake = pushed.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // a file renamed or written into the spool; not our own reads of
        // it (opening the folder to list it is an event too)
        if ev.is_ok_and(|e| matches!(e.kind, notify::EventKind::Create(_) | notify::EventKind::Modify(_))) {
            wake.notify_one()
        }
    })
    .context("cannot watch the WAL spool")?;
    watcher.watch(&spool.dir, notify::RecursiveMode::NonRecursive).context("cannot watch the WAL spool")?;
    tracing::info!(spool = %spool.dir.display(), "WAL shipping started");

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..agent.replicated.replicas.len() {
        let (agent, spool, sealed, cancel) = (agent.clone(), spool.clone(), sealed.clone(), cancel.clone());
        tasks.spawn(async move { upload_loop(agent, spool, i, sealed, cancel).await });
    }
    let rescan = wal.rescan_interval;
    let warn_at = wal.spool_warn_size.0;
    let mut sequence = RecordSequence::load(&agent.config.state_dir)?;
    loop {
        if let Err(e) = seal_pending(&agent, &spool, &sealed, &mut sequence).await {
            tracing::error!(error = format!("{e:#}"), "Cannot seal spooled WAL; retrying");
        }
        let (files, bytes) = spool.usage();
        metrics::SPOOL_FILES.set(files as i64);
        metrics::SPOOL_BYTES.set(bytes as i64);
        if bytes > warn_at {
            tracing::error!(
                files,
                bytes,
                limit = warn_at,
                "WAL SPOOL ABOVE ITS WARNING SIZE: a provider is probably down; the spool fills until it returns"
            );
        }
        spool.prune_durable(DURABLE_MEMORY);
        tokio::select! {
            _ = pushed.notified() => {}
            _ = tokio::time::sleep(rescan) => {}
            _ = cancel.cancelled() => break,
        }
    }
    drop(watcher);
    while let Some(r) = tasks.join_next().await {
        r?;
    }
    tracing::info!("WAL shipping stopped");
    Ok(())
}

/// Seals every pushed file, in order: the CPU work (hashing, zstd, age,
/// signing) of the next file overlaps the durable writes of the previous one;
/// sealed bytes and signed record are written durably, then the pushed copy
/// is removed.
async fn seal_pending(agent: &Arc<Agent>, spool: &Spool, sealed: &Notify, sequence: &mut RecordSequence) -> anyhow::Result<()> {
    let mut prepared = futures::stream::iter(spool.unsealed()?)
        .map(|name| {
            let (agent, spool) = (agent.clone(), spool.clone());
            let seq = sequence.next();
            tokio::task::spawn_blocking(move || prepare(&agent, &spool, &name, seq?))
        })
        .buffered(2);
    while let Some(p) = prepared.next().await {
        let Some(p) = p?? else { continue };
        let spool = spool.clone();
        tokio::task::spawn_blocking(move || commit(&spool, p)).await??;
        sealed.notify_waiters();
    }
    Ok(())
}

/// A file sealed in memory, not yet written.
struct Prepared {
    name: String,
    sealed: Vec<u8>,
    record: Vec<u8>,
    archived_at: chrono::DateTime<chrono::Utc>,
    plain_len: usize,
    /// Time spent reading, hashing, compressing, encrypting and signing.
    prepare: std::time::Duration,
}

fn prepare(agent: &Agent, spool: &Spool, name: &WalName, sequence: u64) -> anyhow::Result<Option<Prepared>> {
    let raw = spool.raw(&name.name);
    if spool.record(&name.name).exists() {
        // sealed before a crash that came before the removal
        std::fs::remove_file(&raw)?;
        return Ok(None);
    }
    let t0 = std::time::Instant::now();
    let (data, written) = super::spool::read_spooled(&raw).with_context(|| raw.display().to_string())?;
    let archived_at: chrono::DateTime<chrono::Utc> = written.into();
    let sealed = seal::seal(&data, &agent.config.recipients)?;
    let object = ObjectRef::of(name.object_key(), &sealed);
    let record = WalRecord {
        format: FORMAT,
        tenant: agent.config.tenant.clone(),
        name: name.name.clone(),
        kind: name.kind,
        timeline: name.timeline,
        size: data.len() as u64,
        plain_hash: bascule_core::hash_hex(&data),
        object,
        recipients: agent.config.recipients.iter().map(|r| r.to_string()).collect(),
        sequence,
        archived_at,
        host: crate::hostname(),
    };
    let record = record.sign(&agent.key);
    Ok(Some(Prepared { name: name.name.clone(), sealed, record, archived_at, plain_len: data.len(), prepare: t0.elapsed() }))
}

/// Both files fsynced, renamed into place, one fsync of the folder; then
/// the pushed copy goes (should that removal be lost in a crash, the next
/// pass sees the record and removes it again).
fn commit(spool: &Spool, p: Prepared) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let tmp = spool.tmp();
    let (t_sealed, t_record) = (tmp.join(format!("{}.sealed", p.name)), tmp.join(format!("{}.rec", p.name)));
    for (path, bytes) in [(&t_sealed, &p.sealed), (&t_record, &p.record)] {
        // the temporary folder is shared with PostgreSQL's account: a file
        // (or a link) planted there is unlinked, never followed
        let _ = std::fs::remove_file(path);
        let mut f = bascule_core::config::create_exclusive(path, 0o640).with_context(|| path.display().to_string())?;
        std::io::Write::write_all(&mut f, bytes).with_context(|| path.display().to_string())?;
        f.sync_all()?;
    }
    // the record last: its presence means "sealed"
    std::fs::rename(&t_sealed, spool.sealed(&p.name))?;
    std::fs::rename(&t_record, spool.record(&p.name))?;
    std::fs::File::open(spool.dir.join(".sealed"))?.sync_all()?;
    std::fs::remove_file(spool.raw(&p.name))?;
    let since = chrono::Utc::now() - p.archived_at;
    tracing::debug!(
        wal = %p.name,
        bytes = p.plain_len,
        sealed = p.sealed.len(),
        prepare_ms = p.prepare.as_millis() as u64,
        write_ms = t0.elapsed().as_millis() as u64,
        since_push_ms = since.num_milliseconds(),
        "WAL file sealed"
    );
    Ok(())
}

/// Record sequence numbers: only grow, across restarts and crashes. Numbers
/// are reserved in blocks (one durable write per block); after a restart the
/// next block starts above anything handed out before.
struct RecordSequence {
    path: std::path::PathBuf,
    next: u64,
    reserved: u64,
}

const SEQUENCE_BLOCK: u64 = 1024;

impl RecordSequence {
    fn load(state_dir: &std::path::Path) -> anyhow::Result<Self> {
        let path = state_dir.join("wal.sequence");
        let reserved: u64 = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().with_context(|| format!("{} is corrupt", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).context(path.display().to_string()),
        };
        Ok(RecordSequence { path, next: reserved + 1, reserved })
    }

    fn next(&mut self) -> anyhow::Result<u64> {
        if self.next > self.reserved {
            let until = self.next + SEQUENCE_BLOCK - 1;
            bascule_core::config::write_atomic(&self.path, format!("{until}\n").as_bytes())?;
            self.reserved = until;
        }
        self.next += 1;
        Ok(self.next - 1)
    }
}

/// Whether `replica` already archives `name` with the same content: a WAL
/// name is written once. A record there that this agent signed for other
/// content is an error (nothing is overwritten), whatever the spool remembers;
/// one that does not verify (damaged, or planted) is written over.
async fn already_archived(
    agent: &Agent,
    replica: &bascule_core::provider::Replica,
    name: &WalName,
    ours: &WalRecord,
) -> anyhow::Result<bool> {
    let Some(bytes) = replica.get(&name.record_key(), WalRecord::MAX_LEN).await? else { return Ok(false) };
    match WalRecord::open(&bytes, &agent.trusted(), &agent.config.tenant, name) {
        Ok(theirs) if theirs.plain_hash == ours.plain_hash && theirs.size == ours.size => Ok(true),
        Ok(theirs) => anyhow::bail!(
            "{}: provider {} already archives another file under this name (archived {} by {}); refusing to overwrite it \
             (is another cluster archiving as this tenant?)",
            name.name,
            replica.provider,
            theirs.archived_at.to_rfc3339(),
            theirs.host
        ),
        Err(e) => {
            tracing::warn!(provider = %replica.provider, wal = %name.name, error = %e, "A record that does not verify is there; writing ours over it");
            Ok(false)
        }
    }
}

/// One provider: uploads, in order, every sealed file it lacks; on failure
/// waits (growing up to [`BACKOFF_MAX`]) and starts again from the first file
/// it lacks. The other provider's loop is never held up by this one.
async fn upload_loop(agent: Arc<Agent>, spool: Spool, i: usize, sealed: Arc<Notify>, cancel: CancellationToken) {
    let replica = agent.replicated.replicas[i].clone();
    let provider = replica.provider.clone();
    let all: Vec<String> = agent.replicated.replicas.iter().map(|r| r.provider.clone()).collect();
    let wal = agent.config.wal.as_ref().expect("wal section");
    let mut backoff = Duration::from_secs(1);
    loop {
        let woken = sealed.notified();
        let todo: Vec<WalName> = match spool.sealed_names() {
            Ok(v) => v.into_iter().filter(|n| !spool.is_sent(&provider, &n.name)).collect(),
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "Cannot list the WAL spool");
                Vec::new()
            }
        };
        let oldest = todo.first().and_then(|n| std::fs::read(spool.record(&n.name)).ok()).and_then(|b| record_body(&b));
        metrics::WAL_OLDEST_PENDING
            .with_label_values(&[&provider])
            .set(oldest.map(|r| r.archived_at.timestamp_millis() as f64 / 1000.0).unwrap_or_else(|| metrics::timestamp(SystemTime::now())));

        let mut failed = false;
        let mut newest: Option<WalRecord> = None;
        let mut uploads = futures::stream::iter(todo)
            .map(|name| {
                let (replica, spool) = (replica.clone(), spool.clone());
                let agent = agent.clone();
                async move {
                    let object = Bytes::from(tokio::fs::read(spool.sealed(&name.name)).await?);
                    let rec_bytes = Bytes::from(tokio::fs::read(spool.record(&name.name)).await?);
                    let record = record_body(&rec_bytes).context("unreadable record in the spool")?;
                    if already_archived(&agent, &replica, &name, &record).await? {
                        return Ok::<_, anyhow::Error>((name, record));
                    }
                    let n = (object.len() + rec_bytes.len()) as u64;
                    // the file first, its record after: the record says "archived"
                    let t0 = std::time::Instant::now();
                    replica.put(&name.object_key(), object).await?;
                    let t1 = t0.elapsed();
                    replica.put(&name.record_key(), rec_bytes).await?;
                    tracing::debug!(provider = %replica.provider, wal = %name.name, object_ms = t1.as_millis() as u64, record_ms = (t0.elapsed() - t1).as_millis() as u64, "WAL file uploaded");
                    metrics::UPLOAD_BYTES.with_label_values(&[&replica.provider]).inc_by(n);
                    Ok::<_, anyhow::Error>((name, record))
                }
            })
            .buffered(wal.concurrency);
        loop {
            let next = tokio::select! {
                n = uploads.next() => n,
                _ = cancel.cancelled() => return,
            };
            let Some(result) = next else { break };
            match result.and_then(|(name, record)| {
                spool.mark_sent(&provider, &name.name)?;
                spool.release_if_everywhere(&all, &name.name, &record.plain_hash)?;
                Ok(record)
            }) {
                Ok(record) => {
                    let lag = chrono::Utc::now() - record.archived_at;
                    tracing::debug!(provider = %provider, wal = %record.name, lag_ms = lag.num_milliseconds(), "WAL file durable on provider");
                    newest = Some(record)
                }
                Err(e) => {
                    metrics::UPLOAD_ERRORS.with_label_values(&[&provider]).inc();
                    tracing::warn!(provider = %provider, error = format!("{e:#}"), retry_in = ?backoff, "WAL upload failed; this provider catches up when it returns, the other goes on");
                    failed = true;
                    break;
                }
            }
        }
        drop(uploads);
        if let Some(r) = &newest {
            metrics::WAL_LAST_DURABLE.with_label_values(&[&provider]).set(r.archived_at.timestamp_millis() as f64 / 1000.0);
            let writer = agent.replicated.writer_to(i);
            if let Err(e) = agent.commit_head(&writer, HeadUpdate { wal: Some((i, &r.name)), ..Default::default() }).await {
                tracing::warn!(provider = %provider, error = format!("{e:#}"), "Cannot update HEAD after archiving WAL");
            }
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = cancel.cancelled() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        backoff = Duration::from_secs(1);
        if newest.is_none() {
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(wal.rescan_interval) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sequence_only_grows_across_restarts() {
        let d = tempfile::tempdir().unwrap();
        let mut s = RecordSequence::load(d.path()).unwrap();
        let first: Vec<u64> = (0..3).map(|_| s.next().unwrap()).collect();
        assert_eq!(first, [1, 2, 3]);
        // a restart (or crash) skips the rest of the reserved block
        let mut s = RecordSequence::load(d.path()).unwrap();
        let n = s.next().unwrap();
        assert!(n > 3, "{n}");
        let all: Vec<u64> = (0..2 * SEQUENCE_BLOCK).map(|_| s.next().unwrap()).collect();
        assert!(all.windows(2).all(|w| w[1] == w[0] + 1));
        let mut s2 = RecordSequence::load(d.path()).unwrap();
        assert!(s2.next().unwrap() > *all.last().unwrap());
    }
}
