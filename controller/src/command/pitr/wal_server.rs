//! The WAL server of a point-in-time restore or a standby: serves verified
//! plaintext WAL to `wal-fetch` over a unix socket inside the data
//! directory, fetching ahead of the server's requests from either provider.
//! The identity stays in this process's memory. Each file fetched ahead is
//! checked, then written whole into a spool directory inside the data
//! directory (mode 0700), so that `wal-fetch` only renames it into place:
//! PostgreSQL's replay never waits for a copy. The spool is written by
//! threads that work as the server's account
//! ([`crate::os_user::as_account`]), which owns the data directory: what
//! that account swaps in there (a link for the spool, a link for a file)
//! leads nowhere it could not write itself.
//! `STATUS` on the socket says where the server fetching from it stands
//! ([`Standing`]).
use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bascule_core::keys::Identities;
use bascule_core::wal::{record_name, WalFileKind, WalName, WalRange, WAL};
use bascule_core::{hash_hex, seal};
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::os_user::{as_account, Account};
use crate::tenant::Tenant;

/// How many WAL files are fetched ahead of the server's requests.
const PREFETCH: usize = 4;
/// A following server lists the providers again at most this often, when
/// asked for a file it does not know yet.
const RELIST_EVERY: Duration = Duration::from_secs(1);
/// Missing files remembered (the last is normally the one after the archive's end).
const MISSING_KEPT: usize = 1000;

/// A file and its place in the archive's order.
type Placed = (usize, WalName);

/// A fetch ends with the file whole in the spool: its path and length.
type Fetch = Shared<BoxFuture<'static, Result<(Arc<PathBuf>, u64), String>>>;

/// Where the server writes the files it fetched, inside the data directory.
pub(super) struct Spool {
    pub dir: PathBuf,
    /// The account that runs PostgreSQL (which renames the files away).
    pub account: Option<Account>,
}

impl Spool {
    /// Emptied (what a server before this one left) and made again, mode 0700.
    fn prepare(&self) -> anyhow::Result<()> {
        as_account(self.account, || {
            match std::fs::remove_dir_all(&self.dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot empty {}", self.dir.display()))
                }
                _ => {}
            }
            std::fs::DirBuilder::new().mode(0o700).create(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))
        })?
    }

    /// Writes `plain` as `name`: under a temporary name, then renamed, so
    /// that only whole files are ever seen under their own.
    fn put(&self, name: &str, plain: &[u8]) -> std::io::Result<PathBuf> {
        let (tmp, path) = (self.dir.join(format!(".{name}.partial")), self.dir.join(name));
        as_account(self.account, || {
            // whatever is left under this name (a link included) is removed, never followed
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(plain)?;
            std::fs::rename(&tmp, &path)
        })??;
        Ok(path)
    }

    /// Removes the spool and what is left in it (files fetched ahead and
    /// never asked for).
    pub(super) fn remove(dir: &Path) {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "Cannot remove the WAL spool");
            }
        }
    }
}

/// Whether segment `next` comes right after segment `w` on its timeline.
fn follows(w: &WalName, next: &WalName) -> bool {
    w.timeline == next.timeline
        && ((w.log == next.log && w.seg.checked_add(1) == Some(next.seg)) || (w.log.checked_add(1) == Some(next.log) && next.seg == 0))
}

/// Whether a request for segment `w` says the server replayed every one
/// before it: `w` is in the archive (`listed`), or comes right after its
/// newest; a name further on says nothing.
fn says_replayed(listed: bool, newest_listed: Option<&WalName>, w: &WalName) -> bool {
    listed || newest_listed.is_some_and(|n| follows(n, w))
}

/// The files either provider has a record for, in archive order.
#[derive(Default)]
struct Archive {
    order: Vec<WalName>,
    position: HashMap<String, usize>,
    /// When each segment was first listed.
    seen: HashMap<String, Instant>,
    /// Per provider, the last record key listed: the next listing starts after it.
    listed_to: Vec<Option<String>>,
}

impl Archive {
    fn add(&mut self, names: impl IntoIterator<Item = WalName>) -> usize {
        let now = Instant::now();
        let mut added = 0;
        for w in names {
            if !self.position.contains_key(&w.name) {
                self.seen.insert(w.name.clone(), now);
                self.position.insert(w.name.clone(), usize::MAX);
                self.order.push(w);
                added += 1;
            }
        }
        if added > 0 {
            self.order.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
            self.position = self.order.iter().enumerate().map(|(i, w)| (w.name.clone(), i)).collect();
        }
        added
    }
}

/// Serves verified plaintext WAL to `wal-fetch`, fetching ahead; when it
/// follows the archive (a standby), lists it again for files it lacks.
pub(super) struct WalServer {
    tenant: Arc<Tenant>,
    ids: Arc<Identities>,
    follow: bool,
    spool: Spool,
    archive: RwLock<Archive>,
    relisted: tokio::sync::Mutex<Option<Instant>>,
    inflight: Mutex<HashMap<String, Fetch>>,
    served: Mutex<Served>,
}

/// What the server handed over, and what it was asked for and did not have.
#[derive(Debug, Default, Clone)]
pub(super) struct Served {
    pub files: u64,
    pub bytes: u64,
    /// The newest segment handed over.
    pub newest: Option<WalName>,
    /// Segments asked for that the archive lacks, in the order asked (the
    /// last is normally the one after the end of the archive).
    pub missing: Vec<WalName>,
    /// The newest segment asked for at all: PostgreSQL asks for a segment
    /// once it has replayed every one before it.
    pub asked: Option<WalName>,
}

/// Where a follower stands, as `STATUS` answers it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Standing {
    /// The newest segment PostgreSQL asked for (all before it are replayed).
    pub asked: Option<String>,
    /// The newest segment handed over.
    pub served: Option<String>,
    /// The newest segment either provider has a record for.
    pub newest_listed: Option<String>,
    /// Listed segments not replayed yet.
    pub behind: u64,
    /// How long the oldest of those has been listed (0 when none).
    pub lag_seconds: f64,
}

impl WalServer {
    pub(super) async fn new(tenant: Arc<Tenant>, ids: Arc<Identities>, follow: bool, spool: Spool) -> anyhow::Result<WalServer> {
        spool.prepare()?;
        let server = WalServer {
            tenant,
            ids,
            follow,
            spool,
            archive: RwLock::default(),
            relisted: tokio::sync::Mutex::new(None),
            inflight: Mutex::default(),
            served: Mutex::default(),
        };
        if server.list().await == 0 {
            bail!("no provider is reachable to fetch WAL from");
        }
        tracing::info!(files = server.read().order.len(), "WAL archive listed");
        Ok(server)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Archive> {
        self.archive.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists each provider (after where its last listing ended); returns
    /// how many answered.
    async fn list(&self) -> usize {
        let replicas = &self.tenant.replicated.replicas;
        let from: Vec<Option<String>> = {
            let a = self.read();
            (0..replicas.len()).map(|i| a.listed_to.get(i).cloned().flatten()).collect()
        };
        let listings = futures::future::join_all(replicas.iter().zip(&from).map(|(r, after)| async move {
            match after {
                Some(a) => r.list_after(WAL, a).await,
                None => r.list(WAL).await,
            }
        }))
        .await;
        let mut answered = 0;
        let mut a = self.archive.write().unwrap_or_else(|e| e.into_inner());
        a.listed_to.resize(replicas.len(), None);
        for (i, (r, l)) in replicas.iter().zip(listings).enumerate() {
            match l {
                Ok(l) => {
                    answered += 1;
                    if let Some(last) = l.keys().next_back() {
                        a.listed_to[i] = Some(last.clone());
                    }
                    a.add(l.keys().filter_map(|k| record_name(k)));
                }
                Err(e) => tracing::warn!(provider = %r.provider, error = %e, "Provider unreachable; WAL comes from the other"),
            }
        }
        answered
    }

    /// A follower lists again when asked for a file it does not know, at
    /// most every [`RELIST_EVERY`].
    async fn relist(&self) {
        let mut last = self.relisted.lock().await;
        if last.is_some_and(|t| t.elapsed() < RELIST_EVERY) {
            return;
        }
        self.list().await;
        *last = Some(Instant::now());
    }

    pub(super) fn served(&self) -> Served {
        self.served.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The newest segment any provider has a record for.
    pub(super) fn newest_listed(&self) -> Option<WalName> {
        self.read().order.iter().rev().find(|w| w.kind == WalFileKind::Segment).cloned()
    }

    /// Where the server that fetches from this one stands.
    pub(super) fn standing(&self) -> Standing {
        let served = self.served();
        let a = self.read();
        let unreplayed: Vec<&WalName> = a
            .order
            .iter()
            .filter(|w| w.kind == WalFileKind::Segment)
            .filter(|w| served.asked.as_ref().is_none_or(|asked| w.order_key() >= asked.order_key()))
            .collect();
        let lag = unreplayed.iter().filter_map(|w| a.seen.get(&w.name)).min().map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
        Standing {
            asked: served.asked.map(|w| w.name),
            served: served.newest.map(|w| w.name),
            newest_listed: a.order.iter().rev().find(|w| w.kind == WalFileKind::Segment).map(|w| w.name.clone()),
            behind: unreplayed.len() as u64,
            lag_seconds: lag,
        }
    }

    fn fetch(self: &Arc<Self>, w: WalName, hint: usize) -> Fetch {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = inflight.get(&w.name) {
            return f.clone();
        }
        let this = self.clone();
        let name = w.name.clone();
        // spawned now, so that a prefetch runs before anyone awaits it
        let task = tokio::spawn(async move {
            let t0 = Instant::now();
            let (rec, _) = this.tenant.wal_record(&w, hint).await.map_err(|e| e.to_string())?;
            let t_rec = t0.elapsed();
            let o = rec.object.clone();
            let (plain, _) = this
                .tenant
                .replicated
                .get_checked(&o.key, o.len, hint, |p, b| {
                    o.check(p, &b)?;
                    let plain = tokio::task::block_in_place(|| seal::open(&b, &this.ids, rec.size as usize, &o.key, &rec.recipients))?;
                    let h = hash_hex(&plain);
                    if plain.len() as u64 != rec.size || h != rec.plain_hash {
                        return Err(bascule_core::Error::PlaintextHash { key: o.key.clone(), expected: rec.plain_hash.clone(), actual: h });
                    }
                    Ok(plain)
                })
                .await
                .map_err(|e| e.to_string())?;
            let path = tokio::task::block_in_place(|| this.spool.put(&w.name, &plain))
                .map_err(|e| format!("cannot write {} into the spool {}: {e}", w.name, this.spool.dir.display()))?;
            tracing::debug!(wal = %w.name, record_ms = t_rec.as_millis() as u64, total_ms = t0.elapsed().as_millis() as u64, "WAL file fetched");
            Ok((Arc::new(path), plain.len() as u64))
        });
        let f = async move { task.await.map_err(|e| e.to_string())? }.boxed().shared();
        inflight.insert(name, f.clone());
        f
    }

    /// Starts fetching the segment where recovery from a base backup begins
    /// (the one holding `range.start`) and the next ones, before PostgreSQL
    /// asks for them: called while the base backup is still unpacking. The
    /// segment size is read from the timeline's first record.
    pub(super) async fn warm(self: &Arc<Self>, range: &WalRange) {
        let on_timeline = |w: &WalName| w.kind == WalFileKind::Segment && w.timeline == range.timeline;
        let first = self.read().order.iter().enumerate().find(|(_, w)| on_timeline(w)).map(|(i, w)| (i, w.clone()));
        let Some((i, w)) = first else { return };
        let size = match self.tenant.wal_record(&w, i).await {
            Ok((rec, _)) if rec.size > 0 => rec.size,
            _ => return,
        };
        let start = range.start.0 / size;
        let ahead: Vec<Placed> = self
            .read()
            .order
            .iter()
            .enumerate()
            .filter(|(_, n)| on_timeline(n) && n.segment_number(size) >= start)
            .take(PREFETCH + 1)
            .map(|(k, n)| (k, n.clone()))
            .collect();
        for (k, n) in ahead {
            drop(self.fetch(n, k));
        }
    }

    /// `name`'s place in the archive and the segments to fetch ahead of it.
    fn place(&self, name: &str) -> Option<(usize, WalName, Vec<Placed>)> {
        let a = self.read();
        let &i = a.position.get(name)?;
        let w = a.order.get(i)?.clone();
        let mut ahead = Vec::new();
        if w.kind == WalFileKind::Segment {
            // the next segments of the same timeline, fetched while this one is replayed
            ahead = a
                .order
                .iter()
                .enumerate()
                .skip(i + 1)
                .filter(|(_, n)| n.kind == WalFileKind::Segment && n.timeline == w.timeline)
                .take(PREFETCH)
                .map(|(k, n)| (k, n.clone()))
                .collect();
        }
        Some((i, w, ahead))
    }

    /// Where the checked plaintext of `name` waits in the spool, and its
    /// length; `None` when the archive has no such file.
    async fn get(self: &Arc<Self>, name: &str) -> Result<Option<(Arc<PathBuf>, u64)>, String> {
        let asked = WalName::parse(name).filter(|w| w.kind == WalFileKind::Segment);
        let mut placed = self.place(name);
        if placed.is_none() && self.follow {
            self.relist().await;
            placed = self.place(name);
        }
        // what the server asks for says how far it replayed: a segment of
        // the archive, or the one after its newest (a standby caught up),
        // never a name beyond, which would hide a standby that fell behind
        if let Some(w) = asked.as_ref().filter(|w| says_replayed(placed.is_some(), self.newest_listed().as_ref(), w)) {
            let mut s = self.served.lock().unwrap_or_else(|e| e.into_inner());
            if s.asked.as_ref().is_none_or(|a| a.order_key() < w.order_key()) {
                s.asked = Some(w.clone());
            }
        }
        let Some((i, w, ahead)) = placed else {
            if let Some(w) = asked {
                let mut s = self.served.lock().unwrap_or_else(|e| e.into_inner());
                if s.missing.len() < MISSING_KEPT {
                    s.missing.push(w);
                }
            }
            return Ok(None);
        };
        for (k, n) in ahead {
            drop(self.fetch(n, k));
        }
        let t0 = Instant::now();
        let got = self.fetch(w.clone(), i).await;
        tracing::debug!(wal = name, waited_ms = t0.elapsed().as_millis() as u64, "WAL file ready");
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        let (path, len) = got?;
        let mut s = self.served.lock().unwrap_or_else(|e| e.into_inner());
        s.files += 1;
        s.bytes += len;
        if w.kind == WalFileKind::Segment && s.newest.as_ref().is_none_or(|n| n.order_key() < w.order_key()) {
            s.newest = Some(w.clone());
        }
        Ok(Some((path, len)))
    }

    pub(super) async fn serve(self: Arc<Self>, listener: tokio::net::UnixListener) {
        super::lines::serve(listener, super::lines::LIMITS, move |name: String| {
            let this = self.clone();
            async move { this.answer(&name).await.into_bytes() }
        })
        .await;
    }

    /// The answer to one request: STATUS, or a file's name.
    async fn answer(self: &Arc<Self>, name: &str) -> String {
        if name == "STATUS" {
            return format!("STATUS {}\n", serde_json::to_string(&self.standing()).unwrap_or_default());
        }
        match self.get(name).await {
            Ok(Some((path, _))) => {
                tracing::info!(wal = name, "WAL file served");
                format!("READY {}\n", path.display())
            }
            Ok(None) => "MISSING\n".into(),
            Err(e) => {
                tracing::error!(wal = name, error = %e, "No good copy of a WAL file: recovery stops here");
                format!("ERROR {}\n", e.replace('\n', " "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_swapped_for_a_link_by_the_servers_account_leads_nowhere() {
        use std::os::unix::fs::MetadataExt;
        assert!(crate::os_user::is_root(), "this test switches accounts: run it as root (the test suite runs as root)");
        let pg = crate::os_user::owner("postgres").unwrap();
        let d = tempfile::tempdir().unwrap();
        let pgdata = d.path().join("pgdata");
        std::fs::create_dir(&pgdata).unwrap();
        std::os::unix::fs::chown(&pgdata, Some(pg.uid), Some(pg.gid)).unwrap();
        let spool = Spool { dir: pgdata.join("bascule-wal-spool"), account: Some(pg) };
        spool.prepare().unwrap();
        let path = spool.put("000000010000000000000001", b"wal").unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (pg.uid, pg.gid, 0o600));
        // the account swaps its spool for a link to a directory of root's
        let roots = d.path().join("cron.daily");
        std::fs::create_dir(&roots).unwrap();
        std::fs::remove_dir_all(&spool.dir).unwrap();
        std::os::unix::fs::symlink(&roots, &spool.dir).unwrap();
        let e = spool.put("000000010000000000000002", b"wal").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        assert_eq!(std::fs::read_dir(&roots).unwrap().count(), 0, "nothing written through the link");
        // made again by the account: the link goes, not what it points to
        spool.prepare().unwrap();
        assert!(std::fs::symlink_metadata(&spool.dir).unwrap().is_dir() && roots.is_dir());
    }

    #[test]
    fn only_a_segment_of_the_archive_or_the_next_one_says_how_far_replay_went() {
        let w = |n: &str| WalName::parse(n).unwrap();
        let newest = w("0000000100000002000000FF");
        assert!(says_replayed(true, Some(&newest), &w("000000010000000200000010")), "in the archive");
        assert!(says_replayed(false, Some(&newest), &w("000000010000000300000000")), "the next, into the next log");
        assert!(says_replayed(false, Some(&w("000000010000000200000010")), &w("000000010000000200000011")), "the next");
        for beyond in ["000000010000000300000001", "000000010000000200000011", "000000020000000300000000"] {
            assert!(!says_replayed(false, Some(&newest), &w(beyond)), "{beyond}: neither in the archive nor the next");
        }
        assert!(!says_replayed(false, None, &w("000000010000000000000001")), "an empty archive");
    }
}
