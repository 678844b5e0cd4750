//! `HEAD`, read and written: one writer at a time (a lock file, so that a
//! one-shot `snapshot` and the daemon's WAL shipping never interleave), a
//! sequence that only grows, the newest snapshot, and each provider's own
//! newest WAL file.
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use bascule_core::head::Head;
use bascule_core::layout;
use bascule_core::manifest::FORMAT;
use bascule_core::provider::Writer;
use bascule_core::restore_test::RestoreTestSummary;
use bascule_core::signed::Signed;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::Agent;

/// What the agent last wrote to HEAD (`<state_dir>/head.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct HeadState {
    sequence: u64,
    latest_snapshot: Option<String>,
    /// Per provider: the newest WAL file it holds.
    latest_wal: BTreeMap<String, String>,
    #[serde(default)]
    restore_test: Option<RestoreTestSummary>,
}

/// What changed since the last HEAD.
#[derive(Debug, Default)]
pub struct HeadUpdate<'a> {
    /// The highest sequence a provider showed (the next one is above it).
    pub seen_on_providers: u64,
    pub snapshot: Option<&'a str>,
    /// (provider index, newest WAL file now on it)
    pub wal: Option<(usize, &'a str)>,
    pub restore_test: Option<RestoreTestSummary>,
}

impl Agent {
    fn head_state_path(&self) -> PathBuf {
        self.config.state_dir.join("head.json")
    }

    /// Reads and verifies HEAD on each provider in `up`; returns the highest sequence.
    pub async fn read_heads(&self, up: &[bool]) -> u64 {
        let trusted = self.trusted();
        let mut best = 0;
        for (r, u) in self.replicated.replicas.iter().zip(up) {
            if !*u {
                continue;
            }
            match r.get(layout::HEAD, Head::MAX_LEN).await {
                Ok(Some(b)) => match Head::open(&b, &trusted, &self.config.tenant, layout::HEAD) {
                    Ok(h) => best = best.max(h.sequence),
                    Err(e) => tracing::warn!(provider = %r.provider, error = %e, "Ignoring a HEAD that does not verify"),
                },
                Ok(None) => {}
                Err(e) => tracing::warn!(provider = %r.provider, error = %e, "Cannot read HEAD"),
            }
        }
        best
    }

    /// Records the update and writes a new HEAD to every provider still up
    /// in `writer` (a failure takes that provider out); an error when none
    /// took it.
    pub async fn commit_head(&self, writer: &Writer, update: HeadUpdate<'_>) -> anyhow::Result<()> {
        let _in_process = self.head_lock.lock().await;
        let lock_path = self.config.state_dir.join("head.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| lock_path.display().to_string())?;
        // held until the end of this function; the OS releases it if we die
        let _cross_process = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock)).await?.context("locking head.lock")?;

        let path = self.head_state_path();
        let mut state: HeadState = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{} is corrupt", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HeadState::default(),
            Err(e) => return Err(e).context(path.display().to_string()),
        };
        state.sequence = state.sequence.max(update.seen_on_providers) + 1;
        if let Some(s) = update.snapshot {
            state.latest_snapshot = Some(s.to_string());
        }
        if let Some(mut t) = update.restore_test {
            // a failed test does not erase when the last one passed
            t.last_success_at = t.last_success_at.or(state.restore_test.as_ref().and_then(|p| p.last_success_at));
            state.restore_test = Some(t);
        }
        let replicas = &self.replicated.replicas;
        if let Some((i, w)) = update.wal {
            state.latest_wal.insert(replicas[i].provider.clone(), w.to_string());
        }
        // the sequence is durable before any provider shows it
        bascule_core::config::write_atomic(&path, &serde_json::to_vec_pretty(&state)?)?;

        // each provider's HEAD names the newest WAL file that provider holds
        // one time for the whole commit: every provider's HEAD says the same but for its WAL
        let agent_time = chrono::Utc::now();
        let up = writer.up();
        let puts = replicas.iter().enumerate().filter(|(i, _)| up[*i]).map(|(i, r)| {
            let head = Head {
                format: FORMAT,
                tenant: self.config.tenant.clone(),
                sequence: state.sequence,
                latest_snapshot: state.latest_snapshot.clone(),
                latest_wal: state.latest_wal.get(&r.provider).cloned(),
                agent_time,
                restore_test: state.restore_test.clone(),
            };
            let mut only = vec![false; replicas.len()];
            only[i] = true;
            async move { writer.put_to(layout::HEAD, Bytes::from(head.sign(&self.key)), &only, false).await }
        });
        let written = futures::future::join_all(puts).await;
        if !written.iter().any(|w| w.is_ok()) {
            anyhow::bail!("no provider took the new HEAD: {}", writer.down_reasons());
        }
        Ok(())
    }
}
