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

/// The uid of account `name`.
pub fn uid(name: &str) -> anyhow::Result<u32> {
    owner(name).map(|(uid, _)| uid)
}

/// The uid and primary gid of account `name`.
pub fn owner(name: &str) -> anyhow::Result<(u32, u32)> {
    match User::from_name(name) {
        Ok(Some(u)) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        Ok(None) => anyhow::bail!("no account {name:?} on this machine"),
        Err(e) => anyhow::bail!("cannot look up the account {name:?}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_a_name() {
        let a = super::actor();
        assert!(a.contains('@') && !a.starts_with("uid "), "{a}");
        assert!(super::uid("root").is_ok_and(|u| u == 0));
        assert!(super::uid("no-such-account-here").is_err());
    }
}
