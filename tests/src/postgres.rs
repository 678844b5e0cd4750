//! A throwaway PostgreSQL cluster on a free loopback port.
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{ok, run, shared_tempdir, text};

pub struct PgCluster {
    pub bindir: PathBuf,
    pub port: u16,
    dir: tempfile::TempDir,
    as_postgres: bool,
}

fn pg_bindir() -> PathBuf {
    let from_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let candidates = from_config.into_iter().chain((13..=18).rev().map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"))));
    for c in candidates {
        if c.join("initdb").is_file() && c.join("postgres").is_file() {
            return c;
        }
    }
    panic!("PostgreSQL server binaries (initdb, postgres) not found: install them with `apt-get install postgresql` (the README's test command does)");
}

impl PgCluster {
    pub fn start() -> PgCluster {
        Self::start_with("")
    }

    /// Starts a cluster with `conf` appended to its postgresql.conf. Tests
    /// run without fsync; set `BASCULE_TEST_PG_DURABLE=1` for a server that
    /// syncs like a production one (the benchmarks do).
    pub fn start_with(conf: &str) -> PgCluster {
        let bindir = pg_bindir();
        let dir = shared_tempdir();
        let as_postgres = crate::is_root(); // initdb refuses to run as root
        let data = dir.path().join("data");
        let mut c = PgCluster { bindir, port: crate::free_port(), dir, as_postgres };
        std::fs::create_dir(&data).unwrap();
        if as_postgres {
            ok(Command::new("chown").args(["-R", "postgres"]).arg(c.dir.path()));
        }
        ok(&mut c
            .cmd("initdb", &["-D", data.to_str().unwrap(), "-U", "bascule", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"]));
        if !conf.is_empty() {
            let mut text = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
            text.push_str(conf);
            std::fs::write(data.join("postgresql.conf"), text).unwrap();
        }
        let durable = std::env::var_os("BASCULE_TEST_PG_DURABLE").is_some_and(|v| v == "1");
        let log = c.dir.path().join("server.log");
        // a port free when picked may be taken (by another test's connection) before the server binds it
        for attempt in 1.. {
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1{}",
                c.port,
                c.dir.path().display(),
                if durable { "" } else { " -c fsync=off -c synchronous_commit=off -c full_page_writes=off" }
            );
            let o =
                run(&mut c
                    .cmd("pg_ctl", &["-D", data.to_str().unwrap(), "-o", &opts, "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"]));
            if o.status.success() {
                break;
            }
            let server_log = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                attempt < 5 && server_log.contains("could not bind IPv4 address"),
                "PostgreSQL did not start: {}\n{server_log}",
                text(&o)
            );
            c.port = crate::free_port();
            let _ = std::fs::remove_file(&log);
        }
        c
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where the server's unix socket lies.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs a server program as the account that runs the server.
    pub fn cmd(&self, tool: &str, args: &[&str]) -> Command {
        let prog = self.bindir.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(prog);
            c
        } else {
            Command::new(prog)
        };
        cmd.args(args);
        cmd
    }

    /// libpq connection string for `db`.
    pub fn dsn(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=bascule dbname={db}", self.port)
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// Runs SQL through psql; returns the unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let mut c = Command::new(self.tool("psql"));
        c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &self.dsn(db), "-c", sql]);
        ok(&mut c).trim().to_string()
    }

    pub fn createdb(&self, db: &str) {
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
    }

    /// A canonical text of all the data of `db` (data-only dump, lines sorted,
    /// without comments and pg_dump's random `\restrict` keys).
    pub fn data_fingerprint(&self, db: &str) -> String {
        let mut c = Command::new(self.tool("pg_dump"));
        c.args(["--data-only", "--no-owner", "-d", &self.dsn(db)]);
        let out = ok(&mut c);
        let mut lines: Vec<&str> =
            out.lines().filter(|l| !l.starts_with("--") && !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict")).collect();
        lines.sort_unstable();
        lines.join("\n")
    }

    /// The schema of `db` (for checking views, functions and types came back).
    pub fn schema(&self, db: &str) -> String {
        self.schema_dump(db, &["--no-owner"])
    }

    /// The schema of `db` with owners, privileges, default privileges and
    /// comments: what a faithful restore keeps.
    pub fn schema_with_owners(&self, db: &str) -> String {
        self.schema_dump(db, &[])
    }

    fn schema_dump(&self, db: &str, extra: &[&str]) -> String {
        let mut c = Command::new(self.tool("pg_dump"));
        c.arg("--schema-only").args(extra).args(["-d", &self.dsn(db)]);
        ok(&mut c).lines().filter(|l| !l.starts_with("--") && !l.starts_with("\\")).collect::<Vec<_>>().join("\n")
    }

    /// Turns TLS on with this certificate and key (PEM) and, with
    /// `only_tls`, refuses TCP connections without it (`hostssl`).
    pub fn enable_tls(&self, cert: &std::path::Path, key: &std::path::Path, only_tls: bool) {
        let data = self.data_dir();
        std::fs::copy(cert, data.join("server.crt")).unwrap();
        std::fs::copy(key, data.join("server.key")).unwrap();
        if self.as_postgres {
            ok(Command::new("chown").arg("postgres").arg(data.join("server.crt")).arg(data.join("server.key")));
        }
        ok(Command::new("chmod").arg("600").arg(data.join("server.key")));
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str("\nssl = on\n");
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        if only_tls {
            let hba = std::fs::read_to_string(data.join("pg_hba.conf")).unwrap();
            let hba: String = hba
                .lines()
                .map(|l| if l.starts_with("host ") { l.replacen("host ", "hostssl ", 1) } else { l.to_string() } + "\n")
                .collect();
            std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        }
        ok(&mut self.cmd("pg_ctl", &["-D", data.to_str().unwrap(), "reload"]));
        crate::wait_until("PostgreSQL speaks TLS", Duration::from_secs(30), || {
            let mut c = Command::new(self.tool("psql"));
            c.args(["-X", "-A", "-t", "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", "-d"])
                .arg(format!("{} sslmode=require", self.dsn("postgres")));
            let o = run(&mut c);
            o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "t"
        });
    }

    pub fn wait_ready(&self) {
        crate::wait_until("PostgreSQL", Duration::from_secs(30), || {
            run(&mut self.cmd("pg_isready", &["-h", "127.0.0.1", "-p", &self.port.to_string()])).status.success()
        });
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = run(&mut self.cmd("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"]));
    }
}
