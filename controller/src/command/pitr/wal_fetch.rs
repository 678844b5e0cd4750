//! `wal-fetch`: PostgreSQL's `restore_command` during a point-in-time
//! restore; asks the restoring controller for one file over its socket.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

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
            if standby {
                1
            } else {
                126
            }
        }
    }
}
