//! `wal-fetch`: PostgreSQL's `restore_command` during a point-in-time
//! restore; asks the restoring controller for one file over its socket,
//! then moves it from the spool where the controller checked it into place.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

#[derive(clap::Args)]
pub struct FetchArgs {
    #[arg(long)]
    pub socket: PathBuf,
    /// For a standby: every failure (the controller unreachable, no good
    /// copy yet) is "not there yet" (exit 1), and PostgreSQL asks again.
    #[arg(long)]
    pub standby: bool,
    pub name: String,
    pub dest: PathBuf,
}

/// `wal-fetch`, PostgreSQL's `restore_command`: asks the restoring
/// controller for `name` and writes it to `dest`. Exit status as PostgreSQL
/// expects: 0 written, 1 not in the archive (the end of recovery), and 126
/// for a file that exists but has no good copy, which makes PostgreSQL stop
/// recovery with an error instead of ending it early (a standby gets 1 and
/// asks again).
pub async fn fetch_client(socket: &Path, name: &str, dest: &Path, standby: bool) -> u8 {
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
        let spooled = line.strip_prefix("READY ").with_context(|| format!("unexpected answer {line:?}"))?;
        // checked and whole in the spool, inside the data directory: moved into place
        match std::fs::rename(spooled, dest) {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
                tokio::fs::copy(spooled, dest).await.with_context(|| format!("{spooled} → {}", dest.display()))?;
                tokio::fs::remove_file(spooled).await?;
            }
            r => r.with_context(|| format!("{spooled} → {}", dest.display()))?,
        }
        Ok(true)
    }
    .await;
    match result {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("bascule wal-fetch: {e:#}");
            if standby {
                1
            } else {
                126
            }
        }
    }
}
