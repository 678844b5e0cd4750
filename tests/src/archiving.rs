//! Helpers for scenarios where PostgreSQL archives through bascule.
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{ok, run, text, wait_until, Garage, KillOnDrop, Scenario};

/// What `pg_stat_archiver` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archiver {
    pub archived: u64,
    pub last_archived: String,
    pub failed: u64,
}

impl Scenario {
    /// Runs `restore --pitr` into a new data directory `dir` with `target_args`;
    /// returns its output and a function running SQL in the restored cluster
    /// (stopped when the function is dropped).
    pub fn pitr<'a>(&'a self, dir: &str, target_args: &[&str]) -> (String, impl Fn(&str) -> String + 'a) {
        let s = self;
        let pgdata = s.path(dir);
        let port = crate::free_port();
        let r = run(s
            .controller(&["restore", "--pitr", "--db-user", "bascule", "--port", &port.to_string()])
            .args(target_args)
            .arg("--identity")
            .arg(s.path("customer.key"))
            .arg("--pgdata")
            .arg(&pgdata));
        let out = text(&r);
        assert!(
            r.status.success(),
            "PITR restore failed:\n{out}\n{}",
            std::fs::read_to_string(pgdata.join("bascule-recovery.log")).unwrap_or_default()
        );
        struct Stop<'a>(&'a Scenario, std::path::PathBuf);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                let _ = run(&mut self.0.pg.cmd("pg_ctl", &["-D", self.1.to_str().unwrap(), "-m", "immediate", "stop"]));
            }
        }
        let stop = Stop(s, pgdata.clone());
        let query = move |sql: &str| {
            let _keep = &stop;
            let o = s.psql_socket(&pgdata, port, sql);
            assert!(o.status.success(), "{sql}: {}", text(&o));
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        };
        (out, query)
    }

    /// `sql` in database `mairie` of a cluster bascule runs (a restored one,
    /// a standby), through its socket in `pgdata`, as `bascule`.
    pub fn psql_socket(&self, pgdata: &std::path::Path, port: u16, sql: &str) -> std::process::Output {
        let port = port.to_string();
        run(Command::new(self.pg.tool("psql"))
            .args(["-X", "-A", "-t", "-h"])
            .arg(pgdata)
            .args(["-p", &port, "-U", "bascule", "-d", "mairie", "-c", sql]))
    }

    /// Another site's agent for the same tenant (`agent-<site>.yaml`): its own
    /// key, state and spool, connecting to the cluster on `port`, and
    /// trusting `previous` keys (another site's) for what they signed before.
    /// Returns its config and its verify key.
    pub fn site_agent(&self, site: &str, port: u16, previous: &[&str]) -> (std::path::PathBuf, String) {
        let key_file = self.path(&format!("agent-{site}.key"));
        let key = ok(Command::new(crate::bin("bascule-agent")).arg("keygen").arg("--out").arg(&key_file)).trim().to_string();
        let until = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let yaml = std::fs::read_to_string(self.path("agent.yaml"))
            .unwrap()
            .replace(&self.path("agent.key").display().to_string(), &key_file.display().to_string())
            .replace("agent-state", &format!("agent-{site}-state"))
            .replace("wal-spool", &format!("wal-spool-{site}"))
            .replace(&format!("port={}", self.pg.port), &format!("port={port}"));
        let trusted: String = previous.iter().map(|k| format!("  - {{ key: \"{k}\", revoked_at: {until} }}\n")).collect();
        let cfg = self.path(&format!("agent-{site}.yaml"));
        crate::write(&cfg, &format!("{yaml}previous_keys:\n{trusted}"));
        if crate::is_root() {
            ok(Command::new("chown").args(["-R", "postgres"]).arg(self.dir.path()));
        }
        (cfg, key)
    }

    /// `bascule-agent ARGS --config CFG`, as [`Scenario::agent`] runs it.
    pub fn agent_with(&self, cfg: &std::path::Path, args: &[&str]) -> Command {
        let mut c = if crate::is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", "postgres", "--regid", "postgres", "--init-groups"]).arg(crate::bin("bascule-agent"));
            c.env("HOME", self.dir.path());
            c
        } else {
            Command::new(crate::bin("bascule-agent"))
        };
        c.args(args).arg("--config").arg(cfg);
        c
    }

    /// Starts `bascule-controller standby` on `pgdata` and `port` (superuser
    /// `bascule`) with `extra` arguments; its log is appended to `log` in the
    /// scenario's folder. Killed on drop (its PostgreSQL keeps running).
    pub fn standby(&self, pgdata: &std::path::Path, port: u16, extra: &[&str], log: &str) -> KillOnDrop {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.path(log)).unwrap();
        let child = self
            .controller(&["standby", "--db-user", "bascule", "--port", &port.to_string()])
            .args(extra)
            .arg("--identity")
            .arg(self.path("customer.key"))
            .arg("--pgdata")
            .arg(pgdata)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start bascule-controller standby");
        KillOnDrop(child)
    }

    /// Adds `serve:` listening on a free loopback port (monitor every second)
    /// plus `extra` to controller.yaml and starts `bascule-controller serve`,
    /// its log in `serve.log`; returns it (killed on drop) and its base URL.
    pub fn serve(&self, extra: &str) -> (KillOnDrop, String) {
        let port = crate::free_port();
        let cfg = self.path("controller.yaml");
        let mut yaml = std::fs::read_to_string(&cfg).unwrap();
        yaml.push_str(&format!("serve:\n  listen: 127.0.0.1:{port}\n  interval: 1s\n{extra}"));
        crate::write(&cfg, &yaml);
        (crate::spawn_serve(&cfg, &self.path("serve.log")), format!("http://127.0.0.1:{port}"))
    }

    /// `drill run` of a one-step runbook promoting the standby in `pgdata`
    /// once it replayed `wal`; its output (asserted PASS).
    pub fn promote(&self, pgdata: &std::path::Path, port: u16, wal: &str) -> String {
        let rb = self.path("promote.yaml");
        crate::write(
            &rb,
            &format!(
                "name: promote\nstages:\n  - name: failover\n    steps:\n      - id: promote\n        promote: {{ tenant: {}, pgdata: \"{}\", port: \"{port}\", db_user: bascule, wal: \"{wal}\" }}\n        timeout: 30m\n",
                self.tenant,
                pgdata.display()
            ),
        );
        let o = run(Command::new(crate::bin("bascule-controller"))
            .args(["drill", "run", "--config"])
            .arg(self.path("controller.yaml"))
            .arg(&rb));
        assert!(text(&o).contains("PASS"), "the promotion:\n{}", text(&o));
        text(&o)
    }

    /// Starts `bascule-agent run`; its log goes to `daemon.log` in the
    /// scenario's folder. Killed (SIGKILL) on drop.
    pub fn daemon(&self) -> KillOnDrop {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.path("daemon.log")).unwrap();
        let child = self
            .agent(&["run"])
            .env("RUST_LOG", "info,bascule_agent::wal=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start bascule-agent run");
        KillOnDrop(child)
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    pub fn archiver(&self) -> Archiver {
        let row = self.pg.psql("postgres", "SELECT archived_count, coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver");
        let f: Vec<&str> = row.split('|').collect();
        Archiver { archived: f[0].parse().unwrap(), last_archived: f[1].to_string(), failed: f[2].parse().unwrap() }
    }

    /// Ends the current WAL segment (after a write, so there is one to end).
    pub fn switch_wal(&self) -> String {
        self.pg.psql("mairie", "CREATE TABLE IF NOT EXISTS switch_marks (at timestamptz); INSERT INTO switch_marks VALUES (now())");
        self.pg.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// Names of the WAL files whose record `provider` holds.
    pub fn wal_on(&self, provider: &Garage) -> BTreeSet<String> {
        let replica = self.provider(provider);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let listing = rt.block_on(replica.list("wal/")).expect("list wal/");
        listing.keys().filter_map(|k| bascule_core::wal::record_name(k)).map(|w| w.name).collect()
    }

    /// Waits until PostgreSQL archived `name` and both providers hold it.
    pub fn wait_on_both(&self, name: &str, timeout: Duration) {
        let t0 = std::time::Instant::now();
        let done =
            || self.archiver().last_archived.as_str() >= name && self.wal_on(&self.a).contains(name) && self.wal_on(&self.b).contains(name);
        while !done() {
            if t0.elapsed() > timeout {
                panic!("{}", self.why_not_archived(name, timeout));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What stands between `name` and both providers: what PostgreSQL's
    /// archiver says, what each provider holds, the spool, the logs' ends.
    fn why_not_archived(&self, name: &str, timeout: Duration) -> String {
        let a = self.archiver();
        let tail = |t: String, n: usize| t.lines().rev().take(n).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        let listing = text(&run(Command::new("ls").args(["-laR"]).arg(self.spool())));
        format!(
            "timed out after {}s waiting for {name} archived on both providers\narchiver: archived {}, last {:?}, failed {}\n\
             provider-a holds {:?}\nprovider-b holds {:?}\nspool:\n{listing}\ndaemon log:\n{}\nPostgreSQL log:\n{}",
            timeout.as_secs(),
            a.archived,
            a.last_archived,
            a.failed,
            self.wal_on(&self.a),
            self.wal_on(&self.b),
            tail(self.daemon_log(), 40),
            tail(self.pg.log(), 20)
        )
    }

    /// Waits until both providers hold the WAL file `name` (whichever site archived it).
    pub fn wait_on_both_providers(&self, name: &str, timeout: Duration) {
        wait_until(&format!("{name} on both providers"), timeout, || {
            self.wal_on(&self.a).contains(name) && self.wal_on(&self.b).contains(name)
        });
    }

    /// Files left in the spool (pushed or sealed), not counting bookkeeping.
    pub fn spool_files(&self) -> usize {
        let count = |d: std::path::PathBuf| {
            std::fs::read_dir(d)
                .map(|r| r.flatten().filter(|e| bascule_core::wal::WalName::parse(&e.file_name().to_string_lossy()).is_some()).count())
                .unwrap_or(0)
        };
        count(self.spool()) + count(self.spool().join(".sealed"))
    }

    /// Runs pgbench (initialised at `scale` in database `bench` first if needed) for `seconds`.
    pub fn pgbench(&self, seconds: u32) -> std::process::Child {
        std::process::Command::new(self.pg.tool("pgbench"))
            .args(["-n", "-c", "2", "-j", "2", "-T", &seconds.to_string(), "-d", &self.pg.dsn("bench")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pgbench")
    }

    pub fn pgbench_init(&self, scale: u32) {
        self.pg.createdb("bench");
        crate::ok(std::process::Command::new(self.pg.tool("pgbench")).args([
            "-i",
            "-q",
            "-s",
            &scale.to_string(),
            "-d",
            &self.pg.dsn("bench"),
        ]));
    }
}
