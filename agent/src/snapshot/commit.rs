//! The commit of an export, in this order on each provider still up: the
//! sealed index, the signed manifest, then HEAD. A crash anywhere leaves the
//! previous state or the new one, never a manifest that points at something
//! missing. Before the manifest goes out, the prune's condemned lists are
//! read again: a snapshot that reuses a pack condemned after the run began
//! commits only before that condemnation's deadline.
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{bail, Context};
use bascule_core::condemned::{self, Condemned};
use bascule_core::manifest::{Index, Manifest, FORMAT};
use bascule_core::object::ObjectRef;
use bascule_core::signed::Signed;
use bascule_core::{layout, seal};
use bytes::Bytes;

use super::known::Tables;
use super::session::Session;
use super::{Exported, SnapshotReport, SEGMENT_SIZE};
use crate::config::JobConfig;
use crate::head::HeadUpdate;
use crate::Agent;

pub(super) async fn commit(
    session: &Session,
    job: &JobConfig,
    tables: &Tables,
    started_at: chrono::DateTime<chrono::Utc>,
    t0: Instant,
    exported: Exported,
) -> anyhow::Result<SnapshotReport> {
    let agent = &session.agent;
    let Exported { packer, extents, chunk_count, stream_hash, source_bytes, facts } = exported;
    let head_seq = agent.read_heads(&session.writer.up()).await;
    let name = layout::new_snapshot_name(started_at);
    let index = Index {
        format: FORMAT,
        segments: packer.segments.clone(),
        extents,
        stream_hash,
        row_counts: facts.row_counts,
        owners: facts.owners,
        grantees: facts.grantees,
        archive: facts.archive,
        source: facts.source,
    };
    let recipients = agent.config.recipients.clone();
    // streamed: the index's JSON (a few bytes per chunk) is never whole in memory
    let sealed_index = tokio::task::spawn_blocking(move || {
        seal::seal_written(|w| serde_json::to_writer(w, &index).map_err(std::io::Error::from), &recipients)
    })
    .await??;
    let index_ref = ObjectRef::of(layout::index(&name), &sealed_index);
    session.put(&index_ref.key, Bytes::from(sealed_index), &session.writer.up(), false).await?;

    let mut manifest = Manifest {
        format: FORMAT,
        tenant: agent.config.tenant.clone(),
        name: name.clone(),
        kind: job.source.kind(),
        job: job.name.clone(),
        host: crate::hostname(),
        started_at,
        finished_at: started_at + chrono::Duration::from_std(t0.elapsed()).unwrap_or_default(),
        source_bytes,
        chunk_count,
        new_bytes: session.new_bytes.load(Ordering::Relaxed) + index_ref.len,
        stored_bytes: packer.objects.iter().map(|o| o.len).sum::<u64>() + index_ref.len,
        recipients: agent.config.recipients.iter().map(|r| r.to_string()).collect(),
        chunker: agent.config.chunking,
        pack_size: packer.pack_size as u64,
        segment_size: SEGMENT_SIZE as u64,
        index: index_ref,
        objects: packer.objects.clone(),
        wal: facts.wal.clone(),
        retention: job.retention,
    };
    // the manifest crosses the uplink too: count it (its own size, to a few bytes)
    manifest.new_bytes += manifest.sign(&agent.key).len() as u64;
    let manifest_bytes = Bytes::from(manifest.sign(&agent.key));
    if session.cancel.is_cancelled() {
        bail!("job {}: cancelled before the commit, nothing committed", job.name);
    }
    let lists = condemned_lists(agent, &session.writer.up())
        .await
        .with_context(|| format!("job {}: reading the prune's condemned lists before the commit", job.name))?;
    check_condemned(&packer.objects, &lists).with_context(|| format!("job {}", job.name))?;
    confirm_packs(session, &packer.objects).await.with_context(|| format!("job {}: nothing committed", job.name))?;
    session.put(&layout::manifest(&name), manifest_bytes, &session.writer.up(), false).await?;

    // once a manifest is out, HEAD follows even if a stop was asked meanwhile
    let update = HeadUpdate { seen_on_providers: head_seq, snapshot: Some(&name), ..Default::default() };
    agent
        .commit_head(&session.writer, update)
        .await
        .with_context(|| format!("job {}: every provider failed while committing", job.name))?;
    tables.committed(&packer.objects, &packer.segments, packer.chunks)?;

    let report = SnapshotReport {
        name,
        source_bytes,
        chunk_count: manifest.chunk_count,
        new_bytes: manifest.new_bytes,
        stored_bytes: manifest.stored_bytes,
        index_bytes: manifest.index.len,
        elapsed: t0.elapsed(),
        providers: session.writer.outcome().into_iter().map(|(p, why)| (p, why.map_or(Ok(()), Err))).collect(),
    };
    if report.degraded() {
        agent.backlog_add(&report)?;
    }
    Ok(report)
}

/// The condemned lists the providers in `up` hold that this agent honours
/// (a list that fails its check is said and left out).
pub(super) async fn condemned_lists(agent: &Agent, up: &[bool]) -> bascule_core::Result<BTreeMap<String, Condemned>> {
    let replicas: Vec<_> = agent.replicated.replicas.iter().zip(up).filter(|(_, u)| **u).map(|(r, _)| r.clone()).collect();
    let read = condemned::read(&replicas, agent.condemned_trust()).await?;
    for (provider, key, why) in &read.refused {
        tracing::warn!(provider = %provider, key = %key, error = %why, "Ignoring a condemned list that does not pass its check");
    }
    Ok(read.lists)
}

/// Before the manifest goes out: every pack it names is on each provider it
/// is committed to, with its length. A provider that lacks one gets it from
/// another that holds it (ciphertext checked), or is left out of the commit.
async fn confirm_packs(session: &Session, objects: &[ObjectRef]) -> anyhow::Result<()> {
    let replicas = &session.agent.replicated.replicas;
    let mut listings = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        listings.push(if session.writer.up()[i] {
            match r.list(layout::PACKS).await {
                Ok(l) => Some(l),
                Err(e) => {
                    session.writer.take_down(i, format!("cannot list its packs before the commit: {e}"));
                    None
                }
            }
        } else {
            None
        });
    }
    let holds = |i: usize, o: &ObjectRef| listings[i].as_ref().is_some_and(|l| l.get(&o.key) == Some(&o.len));
    for o in objects {
        let lacking: Vec<bool> = (0..replicas.len()).map(|i| session.writer.up()[i] && !holds(i, o)).collect();
        if !lacking.iter().any(|l| *l) {
            continue;
        }
        let from = (0..replicas.len()).find(|&i| holds(i, o));
        let copied = match from {
            Some(f) => match replicas[f].get_ref(o).await {
                Ok(Some(bytes)) if o.check(&replicas[f].provider, &bytes).is_ok() => session.put(&o.key, bytes, &lacking, true).await,
                Ok(_) => Err(anyhow::anyhow!("{} is not whole on {}", o.key, replicas[f].provider)),
                Err(e) => Err(e.into()),
            },
            None => Err(anyhow::anyhow!("{} is on no provider", o.key)),
        };
        if let Err(e) = copied {
            for (i, l) in lacking.iter().enumerate() {
                if *l {
                    session.writer.take_down(i, format!("lacks pack {} the snapshot needs: {e:#}", o.key));
                }
            }
        }
        tracing::warn!(key = %o.key, "A pack the snapshot needs was missing on a provider before the commit");
    }
    if !session.writer.any_up() {
        bail!("no provider holds every pack of this snapshot: {}", session.writer.down_reasons());
    }
    Ok(())
}

/// Refuses to commit a snapshot that references a pack a prune condemned
/// after this run started, once the commit deadline of that condemnation
/// has passed (a later prune may delete the pack).
fn check_condemned(objects: &[ObjectRef], lists: &BTreeMap<String, Condemned>) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let used: HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    for (key, list) in lists {
        let hit: Vec<&str> = list.packs.iter().map(|p| p.key.as_str()).filter(|k| used.contains(k)).collect();
        let Some(first) = hit.first() else { continue };
        if now >= list.commit_deadline() {
            bail!(
                "{} pack(s) this export reuses (first {first}) were condemned by a prune at {} ({key}) and may be deleted from {}; \
                 nothing committed: run the job again, it seals those chunks anew",
                hit.len(),
                list.condemned_at.to_rfc3339(),
                list.deletable_from().to_rfc3339()
            );
        }
        tracing::info!(packs = hit.len(), list = %key, "Packs condemned during this export are referenced again; committing before the deadline keeps them");
    }
    Ok(())
}
