//! The local spool: where `wal-push` leaves each file PostgreSQL archives,
//! durable before it returns, until both providers hold it.
//!
//! ```text
//! <spool>/<name>                    pushed, not sealed yet
//! <spool>/.tmp/                     copies in progress (same file system)
//! <spool>/.sealed/<name>            sealed once: both providers get these bytes
//! <spool>/.sealed/<name>.rec        its signed record (written last)
//! <spool>/.sent/<provider>/<name>   that provider holds the file and its record
//! <spool>/.durable/<name>           both hold it (plaintext hash), for a re-push
//! ```
//! Every step creates the next state before removing the previous one, so a
//! crash anywhere leaves the file in at least one of them.
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bascule_core::hash_hex;
use bascule_core::wal::{WalName, WalRecord};

#[derive(Debug, Clone)]
pub struct Spool {
    pub dir: PathBuf,
}

/// What `wal-push` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Spooled,
    /// The same content was already spooled or archived.
    AlreadyThere,
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `dest` through a temporary file in `tmp`: fsync the
/// file, rename, fsync the directory.
pub fn write_durably(tmp: &Path, dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let t = tmp.join(format!("{name}.{}", std::process::id()));
    let result = (|| {
        // a stale file (or a link planted there) is unlinked, never followed
        let _ = std::fs::remove_file(&t);
        let mut f = bascule_core::config::create_exclusive(&t, 0o640)?;
        // whatever the umask (PostgreSQL's is 0077): a shared spool's other
        // account (the agent, or wal-push as postgres) reads it by its group
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o640))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&t, dest)?;
        fsync_dir(dest.parent().unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&t);
    }
    result
}

/// The most a file PostgreSQL archives may hold (its largest WAL segment).
const WAL_FILE_MAX: u64 = 1 << 30;

/// A file `wal-push` spooled, read by the agent: in a spool shared with
/// PostgreSQL's account, whatever is there may have been planted by it, so
/// a link is not followed, anything but a regular file is refused (a FIFO
/// would block, `/dev/zero` would never end) and so is one over 1 GiB.
/// Returns its bytes and when it was written.
pub fn read_spooled(path: &Path) -> std::io::Result<(Vec<u8>, std::time::SystemTime)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(flags.bits() as i32).open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() > WAL_FILE_MAX {
        return Err(std::io::Error::other("not a regular file of at most 1 GiB: refusing it (was it planted in the spool?)"));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.take(WAL_FILE_MAX + 1).read_to_end(&mut data)?;
    if data.len() as u64 > WAL_FILE_MAX {
        return Err(std::io::Error::other("grew past 1 GiB while read: refusing it"));
    }
    Ok((data, meta.modified().unwrap_or_else(|_| std::time::SystemTime::now())))
}

/// The body of a record in the spool (written by this agent; the signature
/// is checked by readers of the providers, not here).
pub fn record_body(bytes: &[u8]) -> Option<WalRecord> {
    let split = bytes.windows(2).position(|w| w == b"\n\n")?;
    serde_json::from_slice(&bytes[split + 2..]).ok()
}

impl Spool {
    /// Opens (creating) the spool's folders. In a shared spool (its folder
    /// setgid, as the Debian package makes it: the agent's account and
    /// PostgreSQL's share its group `bascule-wal`), the temporary folder is
    /// made group-writable whatever the umask (`wal-push` writes there and in
    /// the spool itself); the others only group-readable: PostgreSQL's
    /// account may read what the agent did with a file, never write it.
    pub fn open(dir: &Path) -> anyhow::Result<Spool> {
        use std::os::unix::fs::PermissionsExt;
        let s = Spool { dir: dir.into() };
        std::fs::create_dir_all(&s.dir).with_context(|| format!("cannot create the WAL spool folder {}", s.dir.display()))?;
        let shared = std::fs::metadata(&s.dir).map(|m| m.permissions().mode() & 0o2000 != 0).unwrap_or(false);
        for d in [s.tmp(), s.dir.join(".sealed"), s.dir.join(".sent"), s.dir.join(".durable")] {
            match std::fs::create_dir(&d) {
                Ok(()) if shared => {
                    let mode = if d == s.tmp() { 0o2770 } else { 0o2750 };
                    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode))
                        .with_context(|| format!("cannot set the mode of the WAL spool folder {}", d.display()))?
                }
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("cannot create the WAL spool folder {}", d.display())),
            }
        }
        Ok(s)
    }

    pub fn tmp(&self) -> PathBuf {
        self.dir.join(".tmp")
    }
    pub fn raw(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn sealed(&self, name: &str) -> PathBuf {
        self.dir.join(".sealed").join(name)
    }
    pub fn record(&self, name: &str) -> PathBuf {
        self.dir.join(".sealed").join(format!("{name}.rec"))
    }
    pub fn sent_dir(&self, provider: &str) -> PathBuf {
        self.dir.join(".sent").join(provider)
    }
    pub fn durable(&self, name: &str) -> PathBuf {
        self.dir.join(".durable").join(name)
    }

    /// `archive_command`: copies `src` into the spool, durably. Never touches
    /// the network. The same name with the same content is accepted again
    /// (PostgreSQL retries after a crash); with other content it is an error.
    pub fn push(&self, src: &Path) -> anyhow::Result<Pushed> {
        let name = src.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let Some(wal) = WalName::parse(name) else {
            bail!("{}: not a WAL file name PostgreSQL archives (segment, .history, .partial or .backup)", src.display());
        };
        let data = std::fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
        let hash = hash_hex(&data);
        if let Some(existing) = self.known_hash(&wal.name)? {
            if existing == hash {
                return Ok(Pushed::AlreadyThere);
            }
            bail!("{}: a different file with this name was already archived; refusing to overwrite it (is another cluster archiving into this spool?)", wal.name);
        }
        write_durably(&self.tmp(), &self.raw(&wal.name), &data).map_err(|e| {
            let dir = self.dir.display();
            if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
                return anyhow::anyhow!(
                    "cannot spool {} into {dir}: its file system is full. PostgreSQL keeps the file in pg_wal and retries, \
                     so pg_wal grows meanwhile: free space there or move wal.spool_dir to a larger disk; a spool that \
                     grew means a provider is not taking WAL (see `bascule-agent status`)",
                    wal.name
                );
            }
            anyhow::anyhow!("cannot spool {} into {dir}: {e}", wal.name)
        })?;
        Ok(Pushed::Spooled)
    }

    /// The plaintext hash of `name` if the spool holds it in any state.
    fn known_hash(&self, name: &str) -> anyhow::Result<Option<String>> {
        // checked in the order the shipper moves files along
        match std::fs::read(self.raw(name)) {
            Ok(b) => return Ok(Some(hash_hex(&b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(self.raw(name).display().to_string()),
        }
        if let Ok(b) = std::fs::read(self.record(name)) {
            if let Some(r) = record_body(&b) {
                return Ok(Some(r.plain_hash));
            }
        }
        match std::fs::read_to_string(self.durable(name)) {
            Ok(h) => Ok(Some(h.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context(self.durable(name).display().to_string()),
        }
    }

    fn names_in(dir: &Path, suffix: &str) -> anyhow::Result<Vec<WalName>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
            let e = e?;
            let n = e.file_name();
            let Some(n) = n.to_str().and_then(|n| n.strip_suffix(suffix)) else { continue };
            if let Some(w) = WalName::parse(n) {
                out.push(w);
            }
        }
        out.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        Ok(out)
    }

    /// Pushed files not sealed yet, in order.
    pub fn unsealed(&self) -> anyhow::Result<Vec<WalName>> {
        Self::names_in(&self.dir, "")
    }

    /// Sealed files (with their record), in order.
    pub fn sealed_names(&self) -> anyhow::Result<Vec<WalName>> {
        Self::names_in(&self.dir.join(".sealed"), ".rec")
    }

    /// Whether `provider` holds `name` (as far as this agent knows).
    pub fn is_sent(&self, provider: &str, name: &str) -> bool {
        self.sent_dir(provider).join(name).exists()
    }

    pub fn mark_sent(&self, provider: &str, name: &str) -> anyhow::Result<()> {
        let d = self.sent_dir(provider);
        std::fs::create_dir_all(&d)?;
        File::create(d.join(name)).with_context(|| d.display().to_string())?;
        Ok(())
    }

    /// Once every provider holds `name`, removes it from the spool, leaving
    /// its plaintext hash so that a re-push of the same file is recognised.
    /// Returns whether it was removed.
    pub fn release_if_everywhere(&self, providers: &[String], name: &str, plain_hash: &str) -> anyhow::Result<bool> {
        if !providers.iter().all(|p| self.is_sent(p, name)) {
            return Ok(false);
        }
        // durable before the spool forgets the file (a re-push with other
        // content is also refused by the providers' signed records)
        write_durably(&self.tmp(), &self.durable(name), plain_hash.as_bytes()).with_context(|| self.durable(name).display().to_string())?;
        for p in [self.sealed(name), self.record(name)].into_iter().chain(providers.iter().map(|p| self.sent_dir(p).join(name))) {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context(p.display().to_string()),
            }
        }
        Ok(true)
    }

    /// Files and bytes waiting in the spool (pushed or sealed).
    pub fn usage(&self) -> (u64, u64) {
        let mut files = 0;
        let mut bytes = 0;
        for d in [self.dir.clone(), self.dir.join(".sealed")] {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if let Ok(m) = e.metadata() {
                    if m.is_file() {
                        bytes += m.len();
                        if WalName::parse(&name).is_some() {
                            files += 1;
                        }
                    }
                }
            }
        }
        (files, bytes)
    }

    /// Forgets re-push markers older than `age`.
    pub fn prune_durable(&self, age: std::time::Duration) {
        let now = std::time::SystemTime::now();
        for e in std::fs::read_dir(self.dir.join(".durable")).into_iter().flatten().flatten() {
            let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| now.duration_since(t).ok()).is_some_and(|d| d > age);
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spooled_file_is_read_only_if_it_is_a_regular_file() {
        let d = tempfile::tempdir().unwrap();
        let good = d.path().join("000000010000000000000001");
        std::fs::write(&good, b"wal").unwrap();
        assert_eq!(read_spooled(&good).unwrap().0, b"wal");
        // what another account could plant in a shared spool
        let key = d.path().join("agent.key");
        std::fs::write(&key, b"secret").unwrap();
        let link = d.path().join("000000010000000000000002");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        assert!(read_spooled(&link).is_err(), "a link is not followed");
        let zero = d.path().join("000000010000000000000003");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(read_spooled(&zero).is_err());
        let fifo = d.path().join("000000010000000000000004");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
        assert!(read_spooled(&fifo).unwrap_err().to_string().contains("not a regular file"), "a FIFO neither blocks nor is read");
    }

    #[test]
    fn push_is_idempotent_and_refuses_other_content() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(&d.path().join("spool")).unwrap();
        let src = d.path().join("000000010000000000000001");
        std::fs::write(&src, b"segment one").unwrap();
        assert_eq!(spool.push(&src).unwrap(), Pushed::Spooled);
        assert_eq!(spool.push(&src).unwrap(), Pushed::AlreadyThere);
        assert_eq!(std::fs::read(spool.raw("000000010000000000000001")).unwrap(), b"segment one");
        std::fs::write(&src, b"something else").unwrap();
        let e = spool.push(&src).unwrap_err().to_string();
        assert!(e.contains("different file"), "{e}");
        let bad = d.path().join("notes.txt");
        std::fs::write(&bad, b"x").unwrap();
        assert!(spool.push(&bad).is_err());
        assert_eq!(spool.unsealed().unwrap().len(), 1);
        assert_eq!(std::fs::read_dir(spool.tmp()).unwrap().count(), 0, "no temporary file left");
    }

    #[test]
    fn released_files_are_still_recognised() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(d.path()).unwrap();
        let name = "00000002.history";
        let providers = vec!["a".to_string(), "b".to_string()];
        std::fs::write(spool.sealed(name), b"x").unwrap();
        spool.mark_sent("a", name).unwrap();
        assert!(!spool.release_if_everywhere(&providers, name, &hash_hex(b"1\t0/3000000\tno recovery target")).unwrap());
        spool.mark_sent("b", name).unwrap();
        assert!(spool.release_if_everywhere(&providers, name, &hash_hex(b"1\t0/3000000\tno recovery target")).unwrap());
        assert!(!spool.sealed(name).exists());
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join(name), b"1\t0/3000000\tno recovery target").unwrap();
        assert_eq!(spool.push(&src.join(name)).unwrap(), Pushed::AlreadyThere);
    }
}
