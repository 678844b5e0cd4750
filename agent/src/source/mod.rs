//! Sources: a byte stream to back up, plus facts about it.
//!
//! A source runs as a child process whose standard output is read by the
//! chunker; nothing of the stream is staged on disk.
mod command;
pub mod fuzz;
mod pg_basebackup;
mod pg_dump;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, ChildStdout};
use std::sync::{Arc, Mutex};

use anyhow::Context;

use bascule_core::manifest::SnapshotKind;
use serde::Deserialize;

pub use bascule_core::postgres::dump::NEWEST_PG_DUMP;
pub use command::CommandSource;
pub use pg_basebackup::PgBasebackupSource;
pub use pg_dump::PgDumpSource;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    PgDump(PgDumpSource),
    PgBasebackup(PgBasebackupSource),
    Command(CommandSource),
}

/// What the source knows besides its bytes (row counts, server version…).
#[derive(Debug, Default)]
pub struct SourceFacts {
    pub row_counts: BTreeMap<String, u64>,
    pub source: BTreeMap<String, String>,
    /// The roles that own a pg_dump export's objects, and those its privileges name.
    pub owners: Vec<String>,
    pub grantees: Vec<String>,
    /// For a pg_dump export: where its table of contents and each table's
    /// data lie in the stream.
    pub archive: Option<bascule_core::manifest::ArchiveLayout>,
    /// For a base backup: the WAL range it needs.
    pub wal: Option<bascule_core::wal::WalRange>,
}

/// A started source: read [`Running::take_stdout`] to the end, then call [`Running::finish`].
pub struct Running {
    stdout: Option<ChildStdout>,
    /// The stream as the source wants it read (its stdout, maybe observed).
    reader: Option<Box<dyn Read + Send>>,
    child: Arc<Mutex<Child>>,
    stderr_tail: std::thread::JoinHandle<String>,
    facts: Option<tokio::task::JoinHandle<anyhow::Result<SourceFacts>>>,
    dump_done: Option<tokio::sync::oneshot::Sender<()>>,
    /// Facts the source finds in its own stream (a base backup's WAL range).
    facts_from_stream: Option<Box<dyn FnOnce() -> anyhow::Result<SourceFacts> + Send>>,
    what: String,
}

/// Something that follows a source's stream as the chunker reads it.
trait Scan: Send {
    fn feed(&mut self, bytes: &[u8]);
}

impl Scan for bascule_core::postgres::dump::DumpScan {
    fn feed(&mut self, bytes: &[u8]) {
        bascule_core::postgres::dump::DumpScan::feed(self, bytes)
    }
}

/// Passes the stream through, showing every byte to a [`Scan`].
struct Scanned<R, S> {
    inner: R,
    scan: Arc<Mutex<S>>,
}

impl<R: Read, S: Scan> Read for Scanned<R, S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.scan.lock().expect("lock").feed(&buf[..n]);
        Ok(n)
    }
}

/// Kills the source's process (on cancellation); reading then hits EOF.
#[derive(Clone)]
pub struct Killer(Arc<Mutex<Child>>);

impl Killer {
    pub fn kill(&self) {
        let _ = self.0.lock().expect("child lock").kill();
    }
}

impl Running {
    fn spawn(mut cmd: std::process::Command, what: String) -> anyhow::Result<Running> {
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).stdin(std::process::Stdio::null());
        let mut child = cmd.spawn().with_context(|| format!("cannot start {what}; is it installed and on PATH?"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        // a 1 MiB pipe instead of 64 KiB: the source and the chunker wake each
        // other far less often (the kernel may refuse; the default then stays)
        let _ = rustix::pipe::fcntl_setpipe_size(&stdout, 1 << 20);
        let mut stderr = child.stderr.take().expect("piped stderr");
        // keep the last 8 KiB of the source's error output for the error message
        let stderr_tail = std::thread::spawn(move || {
            let mut tail = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 8192 {
                    tail.drain(..tail.len() - 8192);
                }
            }
            String::from_utf8_lossy(&tail).trim().to_string()
        });
        Ok(Running {
            stdout: Some(stdout),
            child: Arc::new(Mutex::new(child)),
            stderr_tail,
            facts: None,
            dump_done: None,
            facts_from_stream: None,
            reader: None,
            what,
        })
    }

    /// The stream to read (once).
    pub fn take_stdout(&mut self) -> Option<Box<dyn Read + Send>> {
        self.reader.take().or_else(|| self.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>))
    }

    pub fn killer(&self) -> Killer {
        Killer(self.child.clone())
    }

    /// Waits for the process; an unsuccessful exit is an error carrying the
    /// end of its error output. Then collects the facts.
    pub async fn finish(self) -> anyhow::Result<SourceFacts> {
        let child = self.child.clone();
        let status = tokio::task::spawn_blocking(move || child.lock().expect("child lock").wait()).await??;
        let tail = tokio::task::spawn_blocking(move || self.stderr_tail.join().unwrap_or_default()).await?;
        if let Some(done) = self.dump_done {
            let _ = done.send(());
        }
        if !status.success() {
            anyhow::bail!("{} failed ({status}): {}", self.what, if tail.is_empty() { "no error output" } else { &tail });
        }
        if let Some(facts) = self.facts_from_stream {
            return facts().with_context(|| format!("{}: {tail}", self.what));
        }
        if !tail.is_empty() {
            tracing::warn!(source = %self.what, stderr = %tail, "Source wrote to its error output");
        }
        match self.facts {
            Some(h) => h.await?,
            None => Ok(SourceFacts::default()),
        }
    }
}

impl SourceConfig {
    pub fn kind(&self) -> SnapshotKind {
        match self {
            SourceConfig::PgDump(_) => SnapshotKind::PgDump,
            SourceConfig::PgBasebackup(_) => SnapshotKind::Basebackup,
            SourceConfig::Command(_) => SnapshotKind::Command,
        }
    }

    pub async fn start(&self, config_file: &std::path::Path) -> anyhow::Result<Running> {
        match self {
            SourceConfig::PgDump(s) => s.start(config_file).await,
            SourceConfig::PgBasebackup(s) => s.start(config_file),
            SourceConfig::Command(s) => s.start(),
        }
    }
}

/// What went wrong connecting, and what to do, for the section `what` of the configuration.
pub fn cannot_connect(e: &bascule_core::postgres::ConnectError, what: &str) -> String {
    use tokio_postgres::error::SqlState;
    let code = match e {
        bascule_core::postgres::ConnectError::Pg(p) => p.code().cloned(),
        _ => None,
    };
    let db = match e {
        bascule_core::postgres::ConnectError::Pg(p) => p.as_db_error().map(|d| d.message().to_string()),
        _ => None,
    };
    let said = db.unwrap_or_else(|| {
        let mut chain: Vec<&(dyn std::error::Error + 'static)> = vec![e];
        while let Some(next) = chain.last().and_then(|c| c.source()) {
            chain.push(next);
        }
        bascule_core::logging::one_line(chain)
    });
    let tls = said.to_lowercase().contains("certificate");
    match code {
        Some(c) if c == SqlState::INVALID_PASSWORD => {
            format!("{said}: the password is wrong — set {what}.password ({{env: NAME}} or {{file: PATH}}) to the role's password")
        }
        Some(c) if c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            format!("{said}: the server refuses this role from this host — add a line for it to pg_hba.conf, or fix {what}.dsn")
        }
        Some(c) if c == SqlState::INVALID_CATALOG_NAME => format!("{said}: no such database — fix dbname in {what}.dsn"),
        _ if tls => format!(
            "cannot connect to the {what} database: {said} — the server's certificate does not verify: fix sslrootcert \
             (the CA that signed it) or the host name in {what}.dsn"
        ),
        _ => {
            format!("cannot connect to the {what} database: {said} — check {what}.dsn (host, port), that PostgreSQL runs, and pg_hba.conf")
        }
    }
}
