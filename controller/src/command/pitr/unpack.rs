//! Step 1 of a point-in-time restore or a standby: the base backup's tar
//! stream, every byte checked, unpacked into the new data directory by this
//! process, on a thread of its own while the next chunks are fetched and
//! opened. Each file is made by a thread that works as the account that
//! runs PostgreSQL ([`crate::os_user::as_account`]): the files are that
//! account's as they are made, and a link or directory that account swaps
//! in while the unpacking runs leads nowhere it could not write itself.
//! Their bytes are written straight from the checked plaintext (no pipe,
//! no `tar` process), each piece at its offset, by a few threads at once
//! ([`Writers`]): the kernel's copy into the page cache is most of an
//! unpacking's work, and one thread alone cannot keep up with the fetching.
//!
//! The stream is signed by the customer's agent, and still read as hostile:
//! a member that would land outside the data directory (absolute, `..`,
//! through a symbolic link of the archive), a symbolic link anywhere but
//! where PostgreSQL keeps them (`pg_tblspc/*`, `pg_wal`), or a member that
//! is neither a file, a directory nor a link stops the restore. Modes are
//! the server's own: 0700 for directories, 0600 for files.
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use anyhow::{bail, Context};
use bascule_core::keys::Identities;
use bascule_core::manifest::Manifest;
use bascule_core::progress::Progress;
use bascule_core::restore::{open_index, stream_chunks, RestoreError};
use bascule_core::tar::{self, Kind, BLOCK};
use bytes::Bytes;

use super::PitrRequest;
use crate::tenant::Tenant;

/// Checked plaintext waiting for the unpacking thread.
const QUEUED: usize = 4;

/// Streams the base backup into `req.pgdata`, every byte checked.
pub(super) async fn unpack_base(tenant: &Tenant, m: &Manifest, ids: &Arc<Identities>, req: &PitrRequest) -> anyhow::Result<()> {
    let pgdata = req.pgdata.clone();
    let account = req.account()?;
    let index = Arc::new(open_index(&tenant.replicated, m, ids).await?);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(QUEUED);
    let writer = tokio::task::spawn_blocking(move || {
        crate::os_user::as_account(account, move || {
            let mut u = Untar::new(pgdata);
            while let Some(plain) = rx.blocking_recv() {
                u.feed(Bytes::from(plain))?;
            }
            u.finish()
        })?
    });
    let progress = if req.progress { Progress::bytes(format!("base backup {}", m.name), Some(m.source_bytes)) } else { Progress::hidden() };
    let streamed = stream_chunks(&tenant.replicated, Arc::new(m.clone()), index, ids.clone(), req.concurrency, &progress, |plain| {
        let tx = tx.clone();
        Box::pin(async move {
            tx.send(plain).await.map_err(|_| std::io::Error::other("it stopped")).map_err(RestoreError::sink("unpacking the base backup"))
        })
    })
    .await;
    drop(tx);
    progress.finish();
    let unpacked = writer.await.context("the unpacking thread")?;
    match (streamed, unpacked) {
        // the unpacking's own error says more than "it stopped"
        (Err(RestoreError::Sink { .. }) | Ok(_), Err(e)) => return Err(e.context(format!("unpacking into {}", req.pgdata.display()))),
        (Err(e), _) => return Err(anyhow::Error::new(e).context("fetching the base backup")),
        (Ok(_), Ok(files)) => tracing::debug!(files, "Base backup unpacked"),
    }
    if !req.pgdata.join("backup_label").exists() {
        bail!("snapshot {} unpacked without a backup_label: not a base backup", m.name);
    }
    Ok(())
}

/// Where a data directory holds symbolic links: a tablespace's
/// (`pg_tblspc/<oid>`) and a WAL directory kept elsewhere (`pg_wal`).
fn link_allowed(rel: &Path) -> bool {
    let parts: Vec<_> = rel.components().collect();
    match parts.as_slice() {
        [one] => one.as_os_str() == "pg_wal",
        [dir, _] => dir.as_os_str() == "pg_tblspc",
        _ => false,
    }
}

/// A tar stream unpacked as it arrives, in pieces of any size.
struct Untar {
    root: PathBuf,
    /// The header being gathered.
    header: Vec<u8>,
    /// The file being written, its member's name, the offset of its next
    /// byte and its data bytes still to come.
    file: Option<(Arc<File>, Arc<str>, u64, u64)>,
    writers: Writers,
    /// Padding still to pass after a member's data.
    pad: u64,
    /// Symbolic links made, relative to `root`: nothing is written through them.
    links: HashSet<PathBuf>,
    files: u64,
    end: bool,
}

impl Untar {
    fn new(root: PathBuf) -> Untar {
        let writers = Writers::new(std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4)));
        Untar { root, header: Vec::with_capacity(BLOCK), file: None, writers, pad: 0, links: HashSet::new(), files: 0, end: false }
    }

    fn feed(&mut self, mut bytes: Bytes) -> anyhow::Result<()> {
        while !bytes.is_empty() && !self.end {
            if let Some((f, name, at, left)) = &mut self.file {
                let n = (*left).min(bytes.len() as u64) as usize;
                self.writers.write(Piece { file: f.clone(), name: name.clone(), at: *at, bytes: bytes.split_to(n) })?;
                *at += n as u64;
                *left -= n as u64;
                if *left == 0 {
                    self.file = None;
                }
                continue;
            }
            if self.pad > 0 {
                let n = self.pad.min(bytes.len() as u64);
                self.pad -= n;
                let _ = bytes.split_to(n as usize);
                continue;
            }
            let take = (BLOCK - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes.split_to(take));
            if self.header.len() == BLOCK {
                let block = std::mem::take(&mut self.header);
                match tar::parse(&block).map_err(anyhow::Error::msg)? {
                    Some(h) => self.begin(h)?,
                    None => self.end = true,
                }
            }
        }
        Ok(())
    }

    /// The member's path under `root`, refused when it leaves it.
    fn place(&self, h: &tar::Header) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
        let Some(rel) = h.relative_path().map_err(anyhow::Error::msg)? else { return Ok(None) };
        if let Some(link) = rel.ancestors().skip(1).find(|a| self.links.contains(*a)) {
            bail!("member {:?} lies under the symbolic link {} of the same archive", h.name, link.display());
        }
        Ok(Some((self.root.join(&rel), rel)))
    }

    fn begin(&mut self, h: tar::Header) -> anyhow::Result<()> {
        self.pad = h.padded_size() - h.size;
        let Some((path, rel)) = self.place(&h)? else {
            // the directory itself (`./`): it exists, with its owner
            self.pad = h.padded_size();
            return Ok(());
        };
        // parents the archive did not list first (PostgreSQL's does)
        let missing: Vec<&Path> = rel.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty() && !self.root.join(a).exists()).collect();
        for dir in missing.into_iter().rev() {
            let dir = self.root.join(dir);
            std::fs::DirBuilder::new().mode(0o700).create(&dir).with_context(|| dir.display().to_string())?;
        }
        match &h.kind {
            Kind::Dir => match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.symlink_metadata()?.is_dir() => {}
                r => r.with_context(|| path.display().to_string())?,
            },
            Kind::Symlink(target) => {
                if !link_allowed(&rel) {
                    bail!("member {:?} is a symbolic link (to {target:?}) where a data directory holds none", h.name);
                }
                std::os::unix::fs::symlink(target, &path).with_context(|| format!("member {:?}", h.name))?;
                self.links.insert(rel);
            }
            Kind::File => {
                // never over what is there (a link included): each name once
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("member {:?} ({})", h.name, path.display()))?;
                self.files += 1;
                if h.size > 0 {
                    self.file = Some((Arc::new(f), h.name.into(), 0, h.size));
                }
            }
        }
        Ok(())
    }

    /// The files written; an error for a stream that stopped inside a
    /// member, or for a write that failed.
    fn finish(self) -> anyhow::Result<u64> {
        let Untar { file, writers, header, pad, files, .. } = self;
        let short = file.map(|(_, name, _, left)| (name, left));
        writers.finish()?;
        if let Some((name, left)) = short {
            bail!("the base backup ends inside {name}, {left} bytes short");
        }
        if !header.is_empty() || pad > 0 {
            bail!("the base backup ends inside a tar header or its padding");
        }
        Ok(files)
    }
}

/// Bytes of a file, to be written at `at`.
struct Piece {
    file: Arc<File>,
    name: Arc<str>,
    at: u64,
    bytes: Bytes,
}

/// Threads writing pieces of files at their offsets, in any order, from
/// one queue: no file waits for another's writes, and a large file is
/// written by all of them at once. The first failure is kept and stops the
/// unpacking at its next piece (the pieces already queued are still
/// written, and the unpacking ends in that error either way). At most
/// twice as many pieces as threads wait in the queue.
struct Writers {
    queue: Option<mpsc::SyncSender<Piece>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    failed: Arc<Mutex<Option<anyhow::Error>>>,
}

impl Writers {
    fn new(n: usize) -> Writers {
        let (tx, rx) = mpsc::sync_channel::<Piece>(2 * n);
        let rx = Arc::new(Mutex::new(rx));
        let failed = Arc::new(Mutex::new(None));
        let threads = (0..n)
            .map(|_| {
                let (rx, failed) = (rx.clone(), failed.clone());
                std::thread::spawn(move || loop {
                    // the lock is held while waiting, never while writing
                    let next = rx.lock().map_or(None, |rx| rx.recv().ok());
                    let Some(p) = next else { return };
                    if let Err(e) = p.file.write_all_at(&p.bytes, p.at) {
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(anyhow::Error::new(e).context(format!("writing {}", p.name)));
                        }
                    }
                })
            })
            .collect();
        Writers { queue: Some(tx), threads, failed }
    }

    fn failure(&self) -> Option<anyhow::Error> {
        self.failed.lock().ok().and_then(|mut f| f.take())
    }

    fn write(&self, p: Piece) -> anyhow::Result<()> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        match &self.queue {
            Some(q) if q.send(p).is_ok() => Ok(()),
            _ => bail!("the writing threads stopped"),
        }
    }

    /// Waits for every piece to be written; the first failure, if any.
    fn finish(mut self) -> anyhow::Result<()> {
        self.queue = None;
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                bail!("a writing thread panicked");
            }
        }
        self.failure().map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bascule_core::tar::{file_member, header, Header};

    fn member(name: &str, kind: Kind) -> Vec<u8> {
        header(&Header { name: name.into(), kind, mode: 0o700, size: 0 }).to_vec()
    }

    fn unpack(stream: &[u8], piece: usize) -> (tempfile::TempDir, anyhow::Result<u64>) {
        let d = tempfile::tempdir().unwrap();
        let mut u = Untar::new(d.path().join("pgdata"));
        std::fs::create_dir(d.path().join("pgdata")).unwrap();
        let r = stream.chunks(piece).try_for_each(|p| u.feed(Bytes::copy_from_slice(p))).and_then(|()| u.finish());
        (d, r)
    }

    #[test]
    fn a_stream_unpacks_whole_in_pieces_of_any_size() {
        let mut s = member("./", Kind::Dir);
        s.extend(member("base", Kind::Dir));
        s.extend(file_member("base/1/1259", &(0..20_000u32).map(|i| i as u8).collect::<Vec<_>>()));
        s.extend(file_member("PG_VERSION", b"15\n"));
        s.extend(file_member("postmaster.opts", b""));
        s.extend(member("pg_tblspc/16384", Kind::Symlink("/srv/tablespace".into())));
        s.extend([0u8; 2 * BLOCK]);
        for piece in [1, 7, 511, 512, 4096, s.len()] {
            let (d, r) = unpack(&s, piece);
            assert_eq!(r.unwrap(), 3, "pieces of {piece}");
            let root = d.path().join("pgdata");
            assert_eq!(std::fs::read(root.join("base/1/1259")).unwrap(), (0..20_000u32).map(|i| i as u8).collect::<Vec<_>>());
            assert_eq!(std::fs::read(root.join("PG_VERSION")).unwrap(), b"15\n");
            assert_eq!(std::fs::read(root.join("postmaster.opts")).unwrap(), b"");
            assert_eq!(std::fs::read_link(root.join("pg_tblspc/16384")).unwrap(), Path::new("/srv/tablespace"));
        }
    }

    #[test]
    fn members_that_leave_the_directory_or_end_short_are_refused() {
        let through_link = [member("pg_wal", Kind::Symlink("/tmp".into())), file_member("pg_wal/x", b"x")].concat();
        let (_d, r) = unpack(&through_link, 512);
        assert!(format!("{:#}", r.unwrap_err()).contains("under the symbolic link pg_wal"));
        let (_d, r) = unpack(&file_member("../outside", b"x"), 512);
        assert!(format!("{:#}", r.unwrap_err()).contains("outside"));
        let twice = [file_member("PG_VERSION", b"15\n"), file_member("PG_VERSION", b"16\n")].concat();
        let (_d, r) = unpack(&twice, 512);
        assert!(format!("{:#}", r.unwrap_err()).contains("PG_VERSION"));
        for name in ["postgresql.auto.conf", "base/1/1259", "pg_tblspc/16384/x", "recovery.signal"] {
            let (d, r) = unpack(&member(name, Kind::Symlink("/etc/passwd".into())), 512);
            assert!(format!("{:#}", r.unwrap_err()).contains("where a data directory holds none"), "{name}");
            assert!(std::fs::symlink_metadata(d.path().join("pgdata").join(name)).is_err(), "{name}");
        }
        let whole = file_member("base/1/1259", &[7u8; 3000]);
        let (_d, r) = unpack(&whole[..2000], 100);
        assert!(format!("{:#}", r.unwrap_err()).contains("ends inside base/1/1259"));
    }

    #[test]
    fn pieces_land_at_their_offsets_in_any_order_and_a_failed_write_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        let f = Arc::new(std::fs::OpenOptions::new().write(true).create_new(true).open(&path).unwrap());
        let w = Writers::new(3);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for at in (0..data.len()).step_by(1000).rev() {
            let bytes = Bytes::copy_from_slice(&data[at..(at + 1000).min(data.len())]);
            w.write(Piece { file: f.clone(), name: "f".into(), at: at as u64, bytes }).unwrap();
        }
        drop(f);
        w.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);

        let read_only = Arc::new(File::open(&path).unwrap());
        let w = Writers::new(2);
        w.write(Piece { file: read_only, name: "base/1/1259".into(), at: 0, bytes: Bytes::from_static(b"x") }).unwrap();
        assert!(format!("{:#}", w.finish().unwrap_err()).contains("writing base/1/1259"));
    }
}
