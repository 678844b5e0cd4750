//! A single-node Garage server on loopback: one S3 provider. Or, made with
//! [`Garage::local`], a local directory standing for one (the embedded
//! default), for tests that tamper with a provider's files directly.
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{ok, run, wait_until, KillOnDrop};

pub struct Garage {
    pub name: String,
    pub s3_port: u16,
    pub key_id: String,
    pub secret: String,
    pub bucket: String,
    dir: tempfile::TempDir,
    binary: PathBuf,
    server: Option<KillOnDrop>,
    /// A local directory instead of a server.
    local: bool,
}

fn garage_binary() -> PathBuf {
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")).into_iter().collect::<Vec<_>>();
    crate::which("garage", &cargo_bin).unwrap_or_else(|| {
        panic!("garage (the S3 server used as a provider in tests) not found: install it with `cargo install --locked garage` (the README's test command does)")
    })
}

impl Garage {
    pub fn start(name: &str) -> Garage {
        let binary = garage_binary();
        let dir = tempfile::Builder::new().prefix("bascule-garage-").tempdir().unwrap();
        let (rpc, s3, admin) = (crate::free_port(), crate::free_port(), crate::free_port());
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).unwrap();
        let cfg = format!(
            r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{secret}"
"#,
            d = dir.path().display(),
            secret = hex::encode(secret)
        );
        std::fs::write(dir.path().join("garage.toml"), cfg).unwrap();
        let mut g = Garage {
            name: name.into(),
            s3_port: s3,
            key_id: String::new(),
            secret: String::new(),
            bucket: "bascule".into(),
            dir,
            binary,
            server: None,
            local: false,
        };
        g.start_server();
        let node = ok(&mut g.cli(&["node", "id", "-q"]));
        let node = node.trim().split('@').next().unwrap().to_string();
        ok(&mut g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]));
        ok(&mut g.cli(&["layout", "apply", "--version", "1"]));
        ok(&mut g.cli(&["bucket", "create", "bascule"]));
        let key = ok(&mut g.cli(&["key", "create", "bascule-test"]));
        let field = |label: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {label:?} in `garage key create` output:\n{key}"))
        };
        g.key_id = field("Key ID:");
        g.secret = field("Secret key:");
        ok(&mut g.cli(&["bucket", "allow", "--read", "--write", "--owner", "bascule", "--key", "bascule-test"]));
        g
    }

    /// Switches the provider's key to one that may only read the bucket (a
    /// bucket an operator made read-only, or a key given too few rights).
    pub fn make_read_only(&mut self) {
        let key = ok(&mut self.cli(&["key", "create", "bascule-read-only"]));
        let field = |label: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {label:?} in:\n{key}"))
        };
        (self.key_id, self.secret) = (field("Key ID:"), field("Secret key:"));
        ok(&mut self.cli(&["bucket", "allow", "--read", "bascule", "--key", "bascule-read-only"]));
    }

    /// A local directory as a provider (`file://…`): no server.
    pub fn local(name: &str) -> Garage {
        let dir = tempfile::Builder::new().prefix("bascule-local-provider-").tempdir().unwrap();
        Garage {
            name: name.into(),
            s3_port: 0,
            key_id: String::new(),
            secret: String::new(),
            bucket: String::new(),
            dir,
            binary: PathBuf::new(),
            server: None,
            local: true,
        }
    }

    /// Where a local provider keeps the objects of `prefix` (tenants below it).
    pub fn local_root(&self, prefix: &str) -> PathBuf {
        assert!(self.local, "{} is a Garage server, not a directory", self.name);
        self.dir.path().join("objects").join(prefix)
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("-c").arg(self.dir.path().join("garage.toml")).args(args);
        c
    }

    fn start_server(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("server.log")).unwrap();
        let child = self
            .cli(&["server"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start garage server");
        self.server = Some(KillOnDrop(child));
        wait_until("garage to answer", Duration::from_secs(60), || run(&mut self.cli(&["status"])).status.success());
        // the S3 port answers once the layout is known; wait for it too
        wait_until("garage S3 port", Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok());
    }

    /// Kills the server (SIGKILL): the provider is down.
    pub fn stop(&mut self) {
        self.server = None;
    }

    /// Starts the server again on the same directories: same data back.
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "already running");
        self.start_server();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Writes the credentials into files under `dir` and returns the provider
    /// entry of a bascule config.
    pub fn provider_yaml(&self, dir: &std::path::Path, prefix: &str) -> String {
        if self.local {
            return format!("  - name: {}\n    url: \"file://{}\"\n", self.name, self.local_root(prefix).display());
        }
        let (kf, sf) = (dir.join(format!("{}.key-id", self.name)), dir.join(format!("{}.secret", self.name)));
        std::fs::write(&kf, &self.key_id).unwrap();
        std::fs::write(&sf, &self.secret).unwrap();
        format!(
            "  - name: {}\n    url: s3://{}/{prefix}\n    endpoint: {}\n    region: garage\n    allow_http: true\n    timeout: 10s\n    access_key_id: {{file: {}}}\n    secret_access_key: {{file: {}}}\n",
            self.name,
            self.bucket,
            self.endpoint(),
            kf.display(),
            sf.display()
        )
    }
}
