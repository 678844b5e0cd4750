//! The Debian packages: built with cargo-deb from the workspace's binaries,
//! installed on this machine with `dpkg -i`, and checked as a town hall's
//! administrator would find them: the programs run, the `bascule` system
//! account exists, configuration and state have their owners and modes, the
//! systemd units are hardened and pass `systemd-analyze verify`, and the WAL
//! spool is shared between PostgreSQL's archive_command (run as postgres,
//! umask 0077) and the agent's account. Purged at the end.
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use bascule_tests::{ok, run, text};

fn mode_owner_group(path: &str) -> (u32, String, String) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let name = |db: &str, id: u32| ok(Command::new("getent").args([db, &id.to_string()])).split(':').next().unwrap().to_string();
    (m.permissions().mode() & 0o7777, name("passwd", m.uid()), name("group", m.gid()))
}

struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "bascule-agent", "bascule-controller"]).output();
        let _ = std::fs::remove_dir_all("/var/lib/bascule-agent");
        let _ = std::fs::remove_dir_all("/var/lib/bascule-controller");
    }
}

#[test]
fn the_debian_packages_install_with_their_account_modes_and_hardened_units() {
    assert!(bascule_tests::is_root(), "this test installs packages with dpkg: run it as root (CI does)");
    let cargo_deb = Command::new(env!("CARGO")).args(["deb", "--version"]).output();
    assert!(
        cargo_deb.is_ok_and(|o| o.status.success()),
        "cargo-deb is missing: install it with `cargo install --locked cargo-deb` (./scripts/test.sh does)"
    );
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = tempfile::tempdir().unwrap();
    for p in ["bascule-agent", "bascule-controller"] {
        // the binaries the test suite built (`cargo deb` alone makes release ones)
        let mut c = Command::new(env!("CARGO"));
        c.current_dir(workspace).args(["deb", "-p", p, "--no-build", "--profile", "dev", "--fast", "-o"]).arg(out.path());
        ok(&mut c);
    }
    let debs: Vec<_> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(debs.len(), 2, "{debs:?}");
    let _purge = Purge;
    ok(Command::new("dpkg").arg("-i").args(&debs));

    for p in ["bascule-agent", "bascule-controller"] {
        let v = ok(Command::new(format!("/usr/bin/{p}")).arg("--version"));
        assert!(v.starts_with(&format!("{p} {}", env!("CARGO_PKG_VERSION"))), "{v}");
    }
    let account = ok(Command::new("getent").args(["passwd", "bascule"]));
    let fields: Vec<&str> = account.trim().split(':').collect();
    assert!(fields[2].parse::<u32>().unwrap() < 1000, "a system account: {account}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{account}");

    assert_eq!(mode_owner_group("/etc/bascule"), (0o755, "root".into(), "root".into()));
    // agent.yaml holds no secret: PostgreSQL's archive_command reads it (group bascule-wal);
    // controller.yaml, and the secret files an administrator adds, are for the group bascule only
    assert_eq!(mode_owner_group("/etc/bascule/agent.yaml"), (0o640, "root".into(), "bascule-wal".into()));
    assert_eq!(mode_owner_group("/etc/bascule/controller.yaml"), (0o640, "root".into(), "bascule".into()));
    assert_eq!(mode_owner_group("/var/lib/bascule-agent"), (0o750, "bascule".into(), "bascule-wal".into()));
    assert_eq!(mode_owner_group("/var/lib/bascule-agent/wal-spool"), (0o2770, "bascule".into(), "bascule-wal".into()));
    assert_eq!(mode_owner_group("/var/lib/bascule-agent/wal-spool/.tmp"), (0o2770, "bascule".into(), "bascule-wal".into()));
    for d in [".sealed", ".sent", ".durable"] {
        let d = format!("/var/lib/bascule-agent/wal-spool/{d}");
        assert_eq!(mode_owner_group(&d), (0o2750, "bascule".into(), "bascule-wal".into()), "{d}: postgres may read, not write");
    }
    let groups = |user: &str| ok(Command::new("id").args(["-nG", user]));
    assert!(!groups("postgres").split_whitespace().any(|g| g == "bascule"), "postgres must not read bascule's secrets");
    assert!(groups("postgres").split_whitespace().any(|g| g == "bascule-wal"));
    assert_eq!(mode_owner_group("/var/lib/bascule-controller"), (0o750, "bascule".into(), "bascule".into()));
    let conffiles = ok(Command::new("dpkg-query").args(["--showformat=${Conffiles}", "--show", "bascule-agent"]));
    assert!(conffiles.contains("/etc/bascule/agent.yaml"), "an edited configuration survives upgrades: {conffiles}");

    for (unit, writable) in [("bascule-agent", "/var/lib/bascule-agent"), ("bascule-controller", "/var/lib/bascule-controller")] {
        let path = format!("/usr/lib/systemd/system/{unit}.service");
        let u = std::fs::read_to_string(&path).unwrap();
        for want in
            ["User=bascule", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", &format!("ReadWritePaths={writable}")]
        {
            assert!(u.lines().any(|l| l == want), "{path}: no {want:?}");
        }
        if bascule_tests::which("systemd-analyze", &[]).is_some() {
            let v = run(Command::new("systemd-analyze").arg("verify").arg(&path));
            assert!(v.status.success() && !text(&v).contains(&path), "systemd-analyze verify {path}:\n{}", text(&v));
        } else {
            eprintln!("systemd-analyze is not on this machine: the units were not verified by it");
        }
    }

    // the shared spool: PostgreSQL's archive_command spools a segment under
    // its umask 0077, the agent's account reads it and may remove it
    let segment = out.path().join("000000010000000000000007");
    std::fs::write(&segment, vec![3u8; 4096]).unwrap();
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&segment, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_user = |user: &str, script: &str| {
        run(Command::new("setpriv").args(["--reuid", user, "--regid", user, "--init-groups", "sh", "-c", script]))
    };
    let push =
        as_user("postgres", &format!("umask 077; /usr/bin/bascule-agent wal-push --config /etc/bascule/agent.yaml {}", segment.display()));
    assert!(push.status.success(), "wal-push as postgres into the packaged spool:\n{}", text(&push));
    let spooled = "/var/lib/bascule-agent/wal-spool/000000010000000000000007";
    assert_eq!(mode_owner_group(spooled), (0o640, "postgres".into(), "bascule-wal".into()));
    let agent = as_user("bascule", &format!("cmp {spooled} {} && rm {spooled}", segment.display()));
    assert!(agent.status.success(), "the agent's account reads and removes what PostgreSQL spooled:\n{}", text(&agent));
    // and PostgreSQL's account cannot write where the agent keeps what it shipped
    let planted = as_user("postgres", "touch /var/lib/bascule-agent/wal-spool/.sent/x");
    assert!(!planted.status.success(), "postgres wrote into .sent:\n{}", text(&planted));
}
