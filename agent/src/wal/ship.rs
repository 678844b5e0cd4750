//! The daemon's side of WAL archiving: seal what `wal-push` spooled, upload
//! it to each provider in order, release it once both hold it.
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bascule_core::manifest::{ObjectRef, FORMAT};
use bascule_core::signed::{self, Kind};
use bascule_core::wal::{WalName, WalRecord};
use bascule_core::{hash_hex, seal};
use bytes::Bytes;
use futures::StreamExt;
use notify::Watcher;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::spool::{record_body, write_durably, Spool};
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
    loop {
        if let Err(e) = seal_pending(&agent, &spool, &sealed).await {
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

/// Seals every pushed file, in order: sealed bytes and signed record written
/// durably, then the pushed copy removed.
async fn seal_pending(agent: &Arc<Agent>, spool: &Spool, sealed: &Notify) -> anyhow::Result<()> {
    for name in spool.unsealed()? {
        let (agent, spool2, n) = (agent.clone(), spool.clone(), name.clone());
        tokio::task::spawn_blocking(move || seal_one(&agent, &spool2, &n)).await??;
        sealed.notify_waiters();
    }
    Ok(())
}

fn seal_one(agent: &Agent, spool: &Spool, name: &WalName) -> anyhow::Result<()> {
    let raw = spool.raw(&name.name);
    if spool.record(&name.name).exists() {
        // sealed before a crash that came before the removal
        std::fs::remove_file(&raw)?;
        return Ok(());
    }
    let data = std::fs::read(&raw).with_context(|| raw.display().to_string())?;
    let archived_at: chrono::DateTime<chrono::Utc> = std::fs::metadata(&raw)?.modified().unwrap_or_else(|_| SystemTime::now()).into();
    let sealed = seal::seal(&data, &agent.config.recipients)?;
    let object = ObjectRef { key: name.object_key(), len: sealed.len() as u64, hash: hash_hex(&sealed) };
    let record = WalRecord {
        format: FORMAT,
        tenant: agent.config.tenant.clone(),
        name: name.name.clone(),
        kind: name.kind,
        timeline: name.timeline,
        size: data.len() as u64,
        plain_hash: hash_hex(&data),
        object,
        recipients: agent.config.recipients.iter().map(|r| r.to_string()).collect(),
        sequence: next_record_sequence(agent)?,
        archived_at,
        host: crate::hostname(),
    };
    let tmp = spool.tmp();
    write_durably(&tmp, &spool.sealed(&name.name), &sealed)?;
    write_durably(&tmp, &spool.record(&name.name), &signed::sign(Kind::Wal, &record, &agent.key))?;
    std::fs::remove_file(&raw)?;
    let since = chrono::Utc::now() - archived_at;
    tracing::debug!(wal = %name.name, bytes = data.len(), sealed = sealed.len(), since_push_ms = since.num_milliseconds(), "WAL file sealed");
    Ok(())
}

fn next_record_sequence(agent: &Agent) -> anyhow::Result<u64> {
    let path = agent.config.state_dir.join("wal.sequence");
    let last: u64 = match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse().with_context(|| format!("{} is corrupt", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).context(path.display().to_string()),
    };
    bascule_core::config::write_atomic(&path, format!("{}\n", last + 1).as_bytes())?;
    Ok(last + 1)
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
                let (replica, spool, agent) = (replica.clone(), spool.clone(), agent.clone());
                async move {
                    let object = Bytes::from(tokio::fs::read(spool.sealed(&name.name)).await?);
                    let rec_bytes = Bytes::from(tokio::fs::read(spool.record(&name.name)).await?);
                    let record = record_body(&rec_bytes).context("unreadable record in the spool")?;
                    agent.throttle.acquire((object.len() + rec_bytes.len()) as u64).await;
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
            let mut which = vec![false; all.len()];
            which[i] = true;
            match agent.commit_head(&which, HeadUpdate { wal: Some((i, &r.name)), ..Default::default() }).await {
                Ok(results) => {
                    for (_, res) in results {
                        if let Err(e) = res {
                            tracing::warn!(provider = %provider, error = %e, "Cannot update HEAD after archiving WAL");
                        }
                    }
                }
                Err(e) => tracing::error!(error = format!("{e:#}"), "Cannot update HEAD"),
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
