//! Test harness: real PostgreSQL clusters and real Garage (S3) servers on
//! loopback, started from the machine's binaries and removed on drop, even
//! when a test fails. A missing binary fails the test with how to install it.
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod archiving;
pub mod bench;
pub mod browser;
pub mod dataset;
pub mod fuzz;
mod garage;
pub mod http;
mod postgres;
pub mod prometheus;
mod scenario;

pub use archiving::Archiver;
pub use garage::Garage;
pub use postgres::PgCluster;
pub use scenario::Scenario;

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range when
/// there is room: a port the kernel hands out (`:0`) may be given again to
/// any outgoing connection before the server that was meant to have it binds.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(0);
    const FIRST: u16 = 10_000;
    if low > FIRST + 1_000 {
        for _ in 0..200 {
            let mut r = [0u8; 2];
            getrandom::getrandom(&mut r).unwrap();
            let port = FIRST + u16::from_le_bytes(r) % (low - FIRST);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

/// A bascule binary built from this workspace.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| if d.ends_with("deps") { d.parent() } else { Some(d) }).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} not built: run `cargo build --workspace --bins` first (the README's test command does)", p.display());
    p
}

/// Runs a command, returns its output (never panics on a non-zero exit).
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs a command that must succeed.
pub fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?} failed ({}):\n{}", o.status, text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Finds a tool on PATH (or in `extra` directories).
pub fn which(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(extra.iter().cloned()).map(|d| d.join(name)).find(|p| p.is_file())
}

/// A child process killed (SIGKILL) on drop.
pub struct KillOnDrop(pub Child);

/// Starts `bascule-controller serve --config cfg`, its output in `log`.
pub fn spawn_serve(cfg: &Path, log: &Path) -> KillOnDrop {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(bin("bascule-controller"))
        .args(["serve", "--config"])
        .arg(cfg)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start bascule-controller serve");
    KillOnDrop(child)
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A temporary directory the `postgres` account can use when tests run as root.
pub fn shared_tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("bascule-test-").tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Tests run the PostgreSQL server as `postgres` when they run as root.
pub fn is_root() -> bool {
    String::from_utf8_lossy(&Command::new("id").arg("-u").output().expect("id -u").stdout).trim() == "0"
}

/// Replaces the first `from` in a file by `to` (it must be there).
pub fn edit(path: &Path, from: &str, to: &str) {
    let s = std::fs::read_to_string(path).unwrap();
    assert!(s.contains(from), "{from} not in {}", path.display());
    std::fs::write(path, s.replacen(from, to, 1)).unwrap();
}

/// Flips one bit in the middle of a stored object (same length, bad content).
pub fn flip(rt: &tokio::runtime::Runtime, r: &bascule_core::provider::Replica, key: &str) {
    let mut b = rt.block_on(r.get(key, u64::MAX)).unwrap().unwrap().to_vec();
    let i = b.len() / 2;
    b[i] ^= 0x01;
    rt.block_on(r.put(key, b.into())).unwrap();
}

/// Writes each tenant's HEAD, signed by `key`, at `sequence`, on every
/// provider of `providers` (YAML), 64 at a time.
/// The providers of a `providers:` YAML list, built.
pub fn providers_of(yaml: &str) -> Vec<bascule_core::provider::Provider> {
    let cfgs: Vec<bascule_core::provider::ProviderConfig> = bascule_core::config::parse_yaml(yaml, Path::new("test")).unwrap();
    cfgs.iter().map(|c| bascule_core::provider::Provider::build(c, Path::new("test")).unwrap()).collect()
}

pub fn put_heads(rt: &tokio::runtime::Runtime, providers: &str, names: &[String], key: &bascule_core::keys::AgentKey, sequence: u64) {
    use futures::StreamExt;
    let built = providers_of(providers);
    rt.block_on(async {
        let puts = built.iter().flat_map(|p| names.iter().map(move |n| (p, n))).map(|(p, n)| {
            let head = bascule_core::head::Head {
                format: 1,
                tenant: n.clone(),
                sequence,
                latest_snapshot: None,
                latest_wal: Some("000000010000000000000042".into()),
                agent_time: chrono::Utc::now(),
                restore_test: None,
            };
            let bytes = bascule_core::signed::sign(bascule_core::signed::Kind::Head, &head, key);
            async move { p.tenant(n).put("HEAD", bytes.into()).await.unwrap() }
        });
        futures::stream::iter(puts).buffer_unordered(64).collect::<Vec<()>>().await;
    });
}

/// `bascule-controller token`: (the token, its config line).
pub fn token(name: &str, role: &str) -> (String, String) {
    let o = run(Command::new(bin("bascule-controller")).args(["token", "--name", name, "--role", role]));
    assert!(o.status.success(), "{}", text(&o));
    let tok = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let line = String::from_utf8_lossy(&o.stderr).lines().find(|l| l.contains("hash:")).expect("a config line").trim().to_string();
    (tok, line)
}
