//! `restore --pitr`: a whole PostgreSQL cluster, at any point the WAL covers.
//!
//! 1. the newest base backup that ends before the target is fetched, checked
//!    and unpacked into `--pgdata`;
//! 2. PostgreSQL starts in recovery with `restore_command` calling
//!    `bascule-controller wal-fetch`, which asks this process over a unix
//!    socket inside the data directory: the identity stays in this process's
//!    memory, and plaintext WAL is only ever written into the data directory;
//!    the next segments are fetched (either provider, verified) ahead of the
//!    server's requests;
//! 3. the server stops at the target and promotes; the recovery point reached
//!    (last replayed commit time and LSN) is read back from it.
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bascule_core::keys::Identities;
use bascule_core::manifest::{Manifest, SnapshotKind};
use bascule_core::provider::check_ciphertext;
use bascule_core::wal::{record_name, Lsn, WalFileKind, WalName};
use bascule_core::{hash_hex, seal};
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::tenant::Tenant;

/// Where recovery should stop.
#[derive(Debug, Clone)]
pub enum Target {
    /// The end of the archive.
    Latest,
    Time(chrono::DateTime<chrono::FixedOffset>),
    Lsn(Lsn),
}

impl Target {
    /// `latest`, an LSN (`0/3000060`) or a time (RFC 3339, or
    /// `2026-11-22 17:40:00+01`).
    pub fn parse(s: &str) -> anyhow::Result<Target> {
        if s == "latest" {
            return Ok(Target::Latest);
        }
        if let Ok(l) = s.parse::<Lsn>() {
            return Ok(Target::Lsn(l));
        }
        chrono::DateTime::parse_from_rfc3339(s)
            .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z"))
            .map(Target::Time)
            .map_err(|_| anyhow::anyhow!("bad recovery target {s:?}: expected `latest`, an LSN like 0/3000060, or a time with its zone like 2026-11-22T17:40:00+01:00"))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Latest => f.write_str("the end of the archive"),
            Target::Time(t) => write!(f, "{}", t.to_rfc3339()),
            Target::Lsn(l) => write!(f, "LSN {l}"),
        }
    }
}

pub struct PitrRequest {
    pub target: Target,
    pub pgdata: PathBuf,
    pub port: u16,
    pub identities: Identities,
    pub concurrency: usize,
    /// Directory of `pg_ctl` and `postgres`.
    pub bindir: PathBuf,
    /// Run PostgreSQL (and unpack its files) as this account (when root).
    pub os_user: Option<String>,
    /// Superuser of the restored cluster, to read the recovery point.
    pub db_user: String,
    /// Stop the server once the recovery point is read.
    pub stop: bool,
}

#[derive(Debug)]
pub struct PitrReport {
    pub base_backup: String,
    pub base_backup_bytes: u64,
    pub wal_files: u64,
    pub wal_bytes: u64,
    /// Time of the last transaction replayed (the recovery point), if any was.
    pub last_commit: Option<chrono::DateTime<chrono::Utc>>,
    pub replay_lsn: Option<String>,
    pub timeline: i32,
    pub fetch_base: Duration,
    pub replay: Duration,
    pub total: Duration,
}

/// How many WAL files are fetched ahead of the server's requests.
const PREFETCH: usize = 4;

/// Picks the newest base backup that is complete before the target.
async fn choose_base_backup(tenant: &Tenant, target: &Target) -> anyhow::Result<Manifest> {
    let names = Tenant::snapshot_names(&tenant.listings().await);
    for name in names.iter().rev() {
        // names begin with their start time: skip those that start after a time target
        if let Target::Time(t) = target {
            let started = name.get(..16).and_then(|p| chrono::NaiveDateTime::parse_from_str(p, "%Y%m%dT%H%M%SZ").ok());
            if started.is_some_and(|s| s.and_utc() > *t) {
                continue;
            }
        }
        let (m, _) = tenant.manifest(name).await?;
        let (SnapshotKind::Basebackup, Some(wal)) = (m.kind, &m.wal) else { continue };
        let fits = match target {
            Target::Latest => true,
            Target::Time(t) => m.finished_at <= *t,
            Target::Lsn(l) => wal.stop <= *l,
        };
        if fits {
            return Ok(m);
        }
    }
    bail!("tenant {}: no base backup complete before {target}; `bascule-controller snapshots` lists them", tenant.name)
}

/// A command run as `os_user` (through `runuser`) when one is given.
fn as_user(os_user: &Option<String>, prog: &Path) -> tokio::process::Command {
    match os_user {
        Some(u) => {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", u, "--"]).arg(prog);
            c
        }
        None => tokio::process::Command::new(prog),
    }
}

fn os_uid(user: &str) -> anyhow::Result<u32> {
    let o = std::process::Command::new("id").args(["-u", user]).output().context("id -u")?;
    if !o.status.success() {
        bail!("no account {user:?} on this machine");
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().parse()?)
}

/// Quotes a value for postgresql.conf.
fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub async fn run(tenant: Tenant, req: PitrRequest) -> anyhow::Result<PitrReport> {
    let t0 = Instant::now();
    let tenant = Arc::new(tenant);
    let m = choose_base_backup(&tenant, &req.target).await?;
    let wal_range = m.wal.clone().expect("chosen for its WAL range");
    tracing::info!(base_backup = %m.name, start = %wal_range.start, stop = %wal_range.stop, "Base backup chosen");

    // 1. the data directory, from the base backup
    let pgdata = &req.pgdata;
    if pgdata.exists() && std::fs::read_dir(pgdata)?.next().is_some() {
        bail!("{} is not empty; give a new or empty directory for the restored cluster", pgdata.display());
    }
    std::fs::create_dir_all(pgdata)?;
    std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700))?;
    let uid = match &req.os_user {
        Some(u) => {
            let uid = os_uid(u)?;
            std::os::unix::fs::chown(pgdata, Some(uid), None)?;
            Some(uid)
        }
        None => None,
    };
    let ids = Arc::new(req.identities);
    let index = Arc::new(super::restore::open_index(&tenant, &m, &ids).await?);
    let mut tar = as_user(&req.os_user, Path::new("tar"))
        .arg("-x")
        .arg("-C")
        .arg(pgdata)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start tar")?;
    let stdin = Arc::new(tokio::sync::Mutex::new(tar.stdin.take().expect("piped")));
    let streamed = super::restore::stream_chunks(&tenant.replicated, Arc::new(m.clone()), index, ids.clone(), req.concurrency, |plain| {
        let stdin = stdin.clone();
        Box::pin(async move {
            stdin.lock().await.write_all(&plain).await.context("tar stopped reading")?;
            Ok(())
        })
    })
    .await;
    drop(stdin);
    let out = tar.wait_with_output().await?;
    streamed.context("fetching the base backup")?;
    if !out.status.success() {
        bail!("tar failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    if !pgdata.join("backup_label").exists() {
        bail!("snapshot {} unpacked without a backup_label: not a base backup", m.name);
    }
    let fetch_base = t0.elapsed();
    tracing::info!(seconds = fetch_base.as_secs_f64(), "Base backup in place");

    // 2. the WAL server, and recovery settings
    let socket = pgdata.join("bascule-wal.sock");
    let listener = tokio::net::UnixListener::bind(&socket).with_context(|| format!("cannot listen on {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    if let Some(uid) = uid {
        std::os::unix::fs::chown(&socket, Some(uid), None)?;
    }
    let server = Arc::new(WalServer::new(tenant.clone(), ids.clone()).await?);
    let serving = tokio::spawn(server.clone().serve(listener));

    let exe = std::env::current_exe()?;
    let restore_command =
        format!("{} wal-fetch --socket {} %f %p", shell_quote(&exe.to_string_lossy()), shell_quote(&socket.to_string_lossy()));
    let mut conf = String::from("\n# bascule: point-in-time recovery settings\n");
    let mut set = |k: &str, v: &str| conf.push_str(&format!("{k} = {}\n", conf_quote(v)));
    set("restore_command", &restore_command);
    match &req.target {
        Target::Latest => {}
        Target::Time(t) => set("recovery_target_time", &t.format("%Y-%m-%d %H:%M:%S%.6f%:z").to_string()),
        Target::Lsn(l) => set("recovery_target_lsn", &l.to_string()),
    }
    set("recovery_target_action", "promote");
    set("recovery_target_timeline", "latest");
    // the restored cluster must not archive into the source's spool
    set("archive_mode", "off");
    set("port", &req.port.to_string());
    set("listen_addresses", "localhost");
    set("unix_socket_directories", &pgdata.to_string_lossy());
    std::fs::OpenOptions::new().append(true).create(true).open(pgdata.join("postgresql.auto.conf"))?.write_all(conf.as_bytes())?;
    std::fs::write(pgdata.join("recovery.signal"), b"")?;
    if let Some(uid) = uid {
        for f in ["postgresql.auto.conf", "recovery.signal"] {
            std::os::unix::fs::chown(pgdata.join(f), Some(uid), None)?;
        }
    }

    // 3. recovery
    let t1 = Instant::now();
    let log = pgdata.join("bascule-recovery.log");
    let out = as_user(&req.os_user, &req.bindir.join("pg_ctl"))
        .arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "86400", "start"])
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run pg_ctl")?;
    let log_tail = || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        t.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    if !out.status.success() {
        serving.abort();
        bail!(
            "PostgreSQL did not start ({}): {}\nserver log ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            log.display(),
            log_tail()
        );
    }
    let mut pg = tokio_postgres::Config::new();
    pg.host_path(pgdata).port(req.port).user(&req.db_user).dbname("postgres");
    let (client, conn) =
        pg.connect(tokio_postgres::NoTls).await.with_context(|| format!("cannot connect to the restored cluster as {}", req.db_user))?;
    let conn = tokio::spawn(conn);
    loop {
        match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
            Ok(row) if !row.get::<_, bool>(0) => break,
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => {
                serving.abort();
                bail!("the server stopped during recovery ({e}); server log ({}):\n{}", log.display(), log_tail());
            }
        }
    }
    let replay = t1.elapsed();
    let row = client
        .query_one(
            "SELECT extract(epoch FROM pg_last_xact_replay_timestamp())::float8, pg_last_wal_replay_lsn()::text, \
             (SELECT timeline_id FROM pg_control_checkpoint())",
            &[],
        )
        .await?;
    let last_commit = row.get::<_, Option<f64>>(0).and_then(|s| chrono::DateTime::from_timestamp_millis((s * 1000.0).round() as i64));
    let replay_lsn: Option<String> = row.get(1);
    let timeline: i32 = row.get(2);
    drop(client);
    let _ = conn.await;
    serving.abort();
    let _ = std::fs::remove_file(&socket);
    if req.stop {
        let _ = as_user(&req.os_user, &req.bindir.join("pg_ctl")).arg("-D").arg(pgdata).args(["-m", "fast", "-w", "stop"]).output().await;
    }
    let (wal_files, wal_bytes) = server.served();
    Ok(PitrReport {
        base_backup: m.name.clone(),
        base_backup_bytes: m.source_bytes,
        wal_files,
        wal_bytes,
        last_commit,
        replay_lsn,
        timeline,
        fetch_base,
        replay,
        total: t0.elapsed(),
    })
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

type Fetch = Shared<BoxFuture<'static, Result<Arc<Vec<u8>>, String>>>;

/// Serves verified plaintext WAL to `wal-fetch`, fetching ahead.
struct WalServer {
    tenant: Arc<Tenant>,
    ids: Arc<Identities>,
    /// Every file either provider has a record for, in archive order.
    order: Vec<WalName>,
    position: HashMap<String, usize>,
    inflight: Mutex<HashMap<String, Fetch>>,
    served: Mutex<(u64, u64)>,
}

impl WalServer {
    async fn new(tenant: Arc<Tenant>, ids: Arc<Identities>) -> anyhow::Result<WalServer> {
        let mut names: BTreeMap<String, WalName> = BTreeMap::new();
        let mut reachable = 0;
        for (p, l) in tenant.wal_listings().await {
            match l {
                Ok(l) => {
                    reachable += 1;
                    names.extend(l.keys().filter_map(|k| record_name(k)).map(|w| (w.name.clone(), w)));
                }
                Err(e) => tracing::warn!(provider = %p, error = %e, "Provider unreachable; WAL comes from the other"),
            }
        }
        if reachable == 0 {
            bail!("no provider is reachable to fetch WAL from");
        }
        let mut order: Vec<WalName> = names.into_values().collect();
        order.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        let position = order.iter().enumerate().map(|(i, w)| (w.name.clone(), i)).collect();
        tracing::info!(files = order.len(), "WAL archive listed");
        Ok(WalServer { tenant, ids, order, position, inflight: Mutex::default(), served: Mutex::default() })
    }

    fn served(&self) -> (u64, u64) {
        *self.served.lock().expect("lock")
    }

    fn fetch(self: &Arc<Self>, i: usize) -> Fetch {
        let w = self.order[i].clone();
        let mut inflight = self.inflight.lock().expect("lock");
        if let Some(f) = inflight.get(&w.name) {
            return f.clone();
        }
        let this = self.clone();
        // spawned now, so that a prefetch runs before anyone awaits it
        let task = tokio::spawn(async move {
            let (rec, _) = this.tenant.wal_record(&w, i).await.map_err(|e| e.to_string())?;
            let o = rec.object.clone();
            let (plain, _) = this
                .tenant
                .replicated
                .get_checked(&o.key, i, |p, b| {
                    check_ciphertext(&o, p, &b)?;
                    let plain = tokio::task::block_in_place(|| seal::open(&b, &this.ids, rec.size as usize, &o.key, &rec.recipients))?;
                    let h = hash_hex(&plain);
                    if plain.len() as u64 != rec.size || h != rec.plain_hash {
                        return Err(bascule_core::Error::PlaintextHash { key: o.key.clone(), expected: rec.plain_hash.clone(), actual: h });
                    }
                    Ok(plain)
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(plain))
        });
        let f = async move { task.await.map_err(|e| e.to_string())? }.boxed().shared();
        inflight.insert(self.order[i].name.clone(), f.clone());
        f
    }

    /// The plaintext of `name`, `None` when the archive has no such file.
    async fn get(self: &Arc<Self>, name: &str) -> Result<Option<Arc<Vec<u8>>>, String> {
        let Some(&i) = self.position.get(name) else { return Ok(None) };
        // fetch the next segments of the same timeline while this one is replayed
        let w = &self.order[i];
        if w.kind == WalFileKind::Segment {
            let ahead = self.order[i + 1..]
                .iter()
                .enumerate()
                .filter(|(_, n)| n.kind == WalFileKind::Segment && n.timeline == w.timeline)
                .take(PREFETCH);
            for (k, _) in ahead {
                drop(self.fetch(i + 1 + k));
            }
        }
        let got = self.fetch(i).await;
        self.inflight.lock().expect("lock").remove(name);
        let plain = got?;
        let mut s = self.served.lock().expect("lock");
        s.0 += 1;
        s.1 += plain.len() as u64;
        Ok(Some(plain))
    }

    async fn serve(self: Arc<Self>, listener: tokio::net::UnixListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let this = self.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                if tokio::io::BufReader::new(r).read_line(&mut line).await.is_err() {
                    return;
                }
                let name = line.trim();
                let _ = match this.get(name).await {
                    Ok(Some(plain)) => {
                        tracing::info!(wal = name, "WAL file served");
                        match w.write_all(format!("OK {}\n", plain.len()).as_bytes()).await {
                            Ok(()) => w.write_all(&plain).await,
                            Err(e) => Err(e),
                        }
                    }
                    Ok(None) => w.write_all(b"MISSING\n").await,
                    Err(e) => {
                        tracing::error!(wal = name, error = %e, "No good copy of a WAL file: recovery stops here");
                        w.write_all(format!("ERROR {}\n", e.replace('\n', " ")).as_bytes()).await
                    }
                };
            });
        }
    }
}

/// `wal-fetch`, PostgreSQL's `restore_command`: asks the restoring
/// controller for `name` and writes it to `dest`. Exit status as PostgreSQL
/// expects: 0 written, 1 not in the archive (the end of recovery), and 126
/// for a file that exists but has no good copy, which makes PostgreSQL stop
/// recovery with an error instead of ending it early.
pub async fn fetch_client(socket: &Path, name: &str, dest: &Path) -> u8 {
    let result = async {
        let mut s = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot reach the restoring controller at {}", socket.display()))?;
        s.write_all(format!("{name}\n").as_bytes()).await?;
        let mut r = tokio::io::BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).await?;
        let line = line.trim_end();
        if line == "MISSING" {
            return Ok(false);
        }
        if let Some(e) = line.strip_prefix("ERROR ") {
            bail!("{name}: {e}");
        }
        let len: usize = line.strip_prefix("OK ").and_then(|n| n.parse().ok()).with_context(|| format!("unexpected answer {line:?}"))?;
        let mut buf = Vec::with_capacity(len);
        (&mut r).take(len as u64).read_to_end(&mut buf).await?;
        if buf.len() != len {
            bail!("{name}: short answer ({} of {len} bytes)", buf.len());
        }
        tokio::fs::write(dest, &buf).await.with_context(|| dest.display().to_string())?;
        Ok(true)
    }
    .await;
    match result {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("bascule wal-fetch: {e:#}");
            126
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(matches!(Target::parse("latest").unwrap(), Target::Latest));
        assert!(matches!(Target::parse("0/3000060").unwrap(), Target::Lsn(Lsn(0x3000060))));
        let Target::Time(t) = Target::parse("2026-11-22 17:40:00.25+01").unwrap() else { panic!() };
        assert_eq!(t.to_rfc3339(), "2026-11-22T17:40:00.250+01:00");
        assert!(Target::parse("2026-11-22T17:40:00+01:00").is_ok());
        assert!(Target::parse("yesterday").is_err());
    }
}
