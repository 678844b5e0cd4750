//! `pg_restore` fed from the verified stream of a snapshot, in one
//! transaction: a restore that fails (a bad object, a full disk) leaves the
//! target database as it was.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::keys::Identities;
use crate::manifest::{Index, Manifest};
use crate::provider::Replicated;
use crate::restore::{stream_chunks, RestoreError};

/// Where [`pg_restore`] restores: the program and the target database (its
/// password passed in the environment, never in argv).
pub struct PgRestore<'a> {
    pub prog: &'a Path,
    pub target: &'a super::Dsn,
    pub progress: &'a crate::progress::Progress,
    pub keep: super::Keep,
    /// Roles renamed on the way (`--map-role old=new`).
    pub map_roles: &'a BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PgRestoreError {
    #[error("cannot start {}; is the PostgreSQL client installed?: {source}", prog.display())]
    Start {
        prog: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The stream stopped (a check failed, pg_restore stopped reading):
    /// pg_restore was killed before it committed anything.
    #[error("restore of {snapshot} stopped; pg_restore said: {said}")]
    Stopped {
        snapshot: String,
        said: String,
        #[source]
        cause: RestoreError,
    },
    #[error("pg_restore failed ({status}): {said}")]
    Failed { status: std::process::ExitStatus, said: String },
    #[error("waiting for pg_restore: {0}")]
    Wait(#[source] std::io::Error),
}

/// Renaming roles failed: the archive could not be read as pg_restore would.
fn renaming(why: String) -> RestoreError {
    RestoreError::Sink { what: "renaming roles (--map-role)".into(), source: std::io::Error::other(why) }
}

/// `pg_restore` into `target` (its password in the environment, a clean
/// environment otherwise), stopping at the first error, owners and
/// privileges as `keep` says; the caller adds the rest.
pub(super) fn command(prog: &Path, target: &super::Dsn, keep: super::Keep) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(prog);
    crate::child::clean(&mut cmd);
    if let Some(p) = &target.password {
        cmd.env("PGPASSWORD", p);
    }
    if !keep.owners {
        cmd.arg("--no-owner");
    }
    if !keep.privileges {
        cmd.arg("--no-privileges");
    }
    cmd.args(["--exit-on-error", "--no-password", "--dbname"]).arg(&target.conninfo);
    cmd
}

/// Streams the snapshot into `pg_restore --dbname target` in one transaction
/// (a failed check kills `pg_restore` before it commits anything). Returns
/// the ciphertext bytes each provider served.
pub async fn pg_restore(
    replicated: &Replicated,
    m: Arc<Manifest>,
    index: Arc<Index>,
    ids: Arc<Identities>,
    concurrency: usize,
    to: PgRestore<'_>,
) -> Result<BTreeMap<String, u64>, PgRestoreError> {
    let PgRestore { prog, target, progress, keep, map_roles } = to;
    let mut child = command(prog, target, keep)
        // one transaction: a restore that fails leaves the target database as it was
        .arg("--single-transaction")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| PgRestoreError::Start { prog: prog.into(), source })?;
    let (Some(stdin), Some(mut stderr)) = (child.stdin.take(), child.stderr.take()) else {
        unreachable!("stdin and stderr are piped above");
    };
    // a 1 MiB pipe instead of 64 KiB: far fewer wake-ups between this
    // process and pg_restore (the kernel may refuse; the default then stays)
    let _ = rustix::pipe::fcntl_setpipe_size(&stdin, 1 << 20);
    let stdin = Arc::new(tokio::sync::Mutex::new(stdin));
    let stderr_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut s).await;
        s
    });
    let name = m.name.clone();
    let rename = (!map_roles.is_empty()).then(|| Arc::new(std::sync::Mutex::new(super::dump::RoleMap::new(map_roles.clone()))));
    let streamed = stream_chunks(replicated, m, index, ids, concurrency, progress, |plain| {
        let stdin = stdin.clone();
        let rename = rename.clone();
        Box::pin(async move {
            let plain = match rename {
                Some(r) => r.lock().unwrap_or_else(|e| e.into_inner()).feed(plain).map_err(renaming)?,
                None => plain,
            };
            stdin.lock().await.write_all(&plain).await.map_err(RestoreError::sink("pg_restore stopped reading (see its error below)"))
        })
    })
    .await;
    let streamed = match (streamed, &rename) {
        (Ok(s), Some(r)) => r.lock().unwrap_or_else(|e| e.into_inner()).finish().map_err(renaming).map(|()| s),
        (s, _) => s,
    };
    if streamed.is_err() {
        // never let pg_restore commit what it read before the bad object
        let _ = child.start_kill();
    }
    drop(stdin);
    let status = child.wait().await.map_err(PgRestoreError::Wait)?;
    let said = stderr_task.await.unwrap_or_default().trim().to_string();
    let served = streamed.map_err(|cause| PgRestoreError::Stopped { snapshot: name, said: said.clone(), cause })?;
    if !status.success() {
        return Err(PgRestoreError::Failed { status, said });
    }
    Ok(served)
}
