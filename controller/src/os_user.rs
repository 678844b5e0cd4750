//! Who runs this process and as whom PostgreSQL runs: for the audit log and
//! for a restored cluster (the server refuses to run as root). Accounts are
//! read through the system's own database (`getpwuid`/`getpwnam`, by `nix`).
use nix::unistd::{Uid, User};

/// This machine's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Uid::effective().is_root()
}

/// The account a restored PostgreSQL runs as: `postgres` when run as root
/// (the server refuses root), else the current one.
pub fn for_postgres() -> Option<String> {
    is_root().then(|| "postgres".to_string())
}

/// `user@host` of whoever runs this process, for the audit log.
pub fn actor() -> String {
    let uid = Uid::current();
    let user = match User::from_uid(uid) {
        Ok(Some(u)) => u.name,
        _ => std::env::var("USER").unwrap_or_else(|_| format!("uid {uid}")),
    };
    format!("{user}@{}", hostname())
}

/// A command run as `os_user` (through `runuser`) when one is given, with
/// a clean environment ([`bascule_core::child`]).
pub fn command_as(os_user: &Option<String>, prog: &std::path::Path) -> tokio::process::Command {
    let mut c = match os_user {
        Some(u) => {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", u, "--"]).arg(prog);
            c
        }
        None => tokio::process::Command::new(prog),
    };
    bascule_core::child::clean(&mut c);
    c
}

/// The account that owns a restored cluster's files: its uid and primary gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

/// The uid and primary gid of account `name`.
pub fn owner(name: &str) -> anyhow::Result<Account> {
    match User::from_name(name) {
        Ok(Some(u)) => Ok(Account { uid: u.uid.as_raw(), gid: u.gid.as_raw() }),
        Ok(None) => anyhow::bail!("no account {name:?} on this machine"),
        Err(e) => anyhow::bail!("cannot look up the account {name:?}: {e}"),
    }
}

/// Runs `f` as `account` (with `None`, as this process), on a thread of its
/// own that becomes that account for good: its uid, its primary group, no
/// other group, no capability. What `f` creates belongs to the account,
/// and what it opens it opens with the account's rights alone, so that a
/// link or a directory the account planted in its own data directory leads
/// nowhere the account could not reach itself. Linux keeps identities per
/// thread; the rest of the process stays as it is.
pub fn as_account<T: Send>(account: Option<Account>, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    use rustix::process::{Gid, Uid};
    let Some(a) = account else { return Ok(f()) };
    std::thread::scope(|s| {
        s.spawn(|| {
            rustix::thread::set_thread_groups(&[])?;
            rustix::thread::set_thread_gid(Gid::from_raw(a.gid))?;
            rustix::thread::set_thread_uid(Uid::from_raw(a.uid))?;
            if rustix::process::geteuid().as_raw() != a.uid || rustix::process::getegid().as_raw() != a.gid {
                return Err(std::io::Error::other(format!("this thread did not become uid {} gid {}", a.uid, a.gid)));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| std::io::Error::other("a thread working as the server's account panicked"))?
    })
    .map_err(|e| std::io::Error::new(e.kind(), format!("cannot work as uid {} gid {}: {e}", a.uid, a.gid)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_a_name() {
        let a = super::actor();
        assert!(a.contains('@') && !a.starts_with("uid "), "{a}");
        assert!(super::owner("root").is_ok_and(|a| a == super::Account { uid: 0, gid: 0 }));
        assert!(super::owner("no-such-account-here").is_err());
    }

    #[test]
    fn a_thread_working_as_the_servers_account_has_its_rights_alone() {
        use std::os::unix::fs::MetadataExt;
        assert!(super::is_root(), "this test switches accounts: run it as root (the test suite runs as root, PostgreSQL as postgres)");
        let pg = super::owner("postgres").unwrap();
        let d = tempfile::tempdir().unwrap();
        // root's directory, 0755: the account cannot write in it, even through a link it planted
        let theirs = d.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(pg.uid), Some(pg.gid)).unwrap();
        std::os::unix::fs::symlink(d.path(), theirs.join("up")).unwrap();
        let (made, through) =
            super::as_account(Some(pg), || (std::fs::write(theirs.join("file"), b"x"), std::fs::write(theirs.join("up/planted"), b"x")))
                .unwrap();
        made.unwrap();
        assert_eq!(through.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        assert!(!d.path().join("planted").exists());
        let m = std::fs::metadata(theirs.join("file")).unwrap();
        assert_eq!((m.uid(), m.gid()), (pg.uid, pg.gid), "a file made as the account is the account's");
        // this thread is still root
        assert!(super::is_root());
        std::fs::write(d.path().join("root's"), b"x").unwrap();
    }
}
