//! `bascule-agent check`: proves the setup end to end without waiting for
//! the night, one line per check, `ok` or what is wrong and how to fix it:
//! the configuration and key file, each provider (write, read back, delete a
//! probe; its clock), each job's source, PostgreSQL's archiving (it points at
//! this agent, and a WAL switch reaches both providers), the heartbeat.
use std::time::Duration;

use bascule_core::postgres::Connect;
use bascule_core::signed::Signed;
use bytes::Bytes;

use crate::source::SourceConfig;
use crate::Agent;

/// One line of `check`.
pub struct Line {
    pub what: String,
    pub result: Result<String, String>,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.result {
            Ok(s) => write!(f, "ok      {}: {s}", self.what),
            Err(s) => write!(f, "FAILED  {}: {s}", self.what),
        }
    }
}

/// How far the clock may be from a provider's.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// How long a switched WAL file may take to reach both providers.
const WAL_TIMEOUT: Duration = Duration::from_secs(60);

fn line(what: impl Into<String>, result: Result<String, String>) -> Line {
    Line { what: what.into(), result }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

pub async fn run(agent: &Agent) -> Vec<Line> {
    let mut out =
        vec![line("configuration", Ok(format!("{} loads; the key file is readable by its owner only", agent.config_file.display())))];
    for r in &agent.replicated.replicas {
        out.push(line(format!("provider {}", r.provider), provider(r).await));
    }
    for j in &agent.config.jobs {
        out.push(line(format!("job {} source", j.name), source(agent, &j.source).await));
    }
    if agent.config.wal.is_some() {
        out.extend(archiving(agent).await);
    }
    if let Some(h) = &agent.config.heartbeat {
        out.push(line("heartbeat", heartbeat(agent, h).await));
    }
    out
}

/// A probe written, read back and deleted; the provider's clock compared.
async fn provider(r: &bascule_core::provider::Replica) -> Result<String, String> {
    let key = format!("check/{}-{}", crate::hostname(), chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default());
    let body = Bytes::from(format!("bascule-agent check {key}"));
    r.put(&key, body.clone()).await.map_err(|e| match e.advice() {
        Some(a) => format!("cannot write: {a} (the provider said: {})", e.to_string().chars().take(300).collect::<String>()),
        None => format!(
            "cannot write ({e}): check the provider's credentials allow writing to the bucket, the bucket exists, and the endpoint is reachable"
        ),
    })?;
    let back = r.get(&key, 4096).await.map_err(|e| format!("wrote, but cannot read back ({e})"))?;
    let listed = r.list_meta("check/").await.map_err(err)?;
    r.delete(&key).await.map_err(|e| format!("cannot delete the probe {key} ({e}): the agent's credentials need delete rights"))?;
    if back.as_deref() != Some(&body[..]) {
        return Err(format!("read back something else than was written under {key}"));
    }
    let skew = listed.get(&key).map(|(_, at)| (chrono::Utc::now() - *at).num_seconds().unsigned_abs()).unwrap_or(0);
    if skew > CLOCK_SKEW.as_secs() {
        return Err(format!("this machine's clock is {skew} s from the provider's: set up NTP (timedatectl set-ntp true)"));
    }
    Ok(format!("write, read back and delete work; clocks agree within {skew} s"))
}

async fn source(agent: &Agent, s: &SourceConfig) -> Result<String, String> {
    match s {
        SourceConfig::PgDump(p) => {
            let (pg, _) = p.pg_config(&agent.config_file).map_err(|e| format!("{e:#}"))?;
            let (c, _conn) = pg.connect().await.map_err(|e| crate::source::cannot_connect(&e, "source"))?;
            let row = c.query_one("SELECT current_user, current_database(), current_setting('server_version')", &[]).await.map_err(err)?;
            let (user, db, version): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            let prog = p.pg_dump.clone().unwrap_or_else(|| "pg_dump".into());
            let v = tokio::process::Command::new(&prog)
                .arg("--version")
                .output()
                .await
                .map_err(|e| format!("{}: {e} — install PostgreSQL's client programs or set source.pg_dump", prog.display()))?;
            let said = String::from_utf8_lossy(&v.stdout).trim().to_string();
            Ok(format!("connects to {db} as {user} (server {version}); {said}{}", newer_than_scanner(&said)))
        }
        SourceConfig::PgBasebackup(b) => {
            let mut pg = Connect::parse(&b.dsn).map_err(err)?;
            if let Some(p) = &b.password {
                pg.password(p.resolve(&agent.config_file, "source.password").map_err(|e| format!("{e:#}"))?.as_bytes());
            }
            if pg.pg().get_dbname().is_none() {
                pg.pg_mut().dbname("postgres");
            }
            let (c, _conn) = pg.connect().await.map_err(|e| crate::source::cannot_connect(&e, "source"))?;
            let row =
                c.query_one("SELECT current_user, rolreplication FROM pg_roles WHERE rolname = current_user", &[]).await.map_err(err)?;
            let (user, replication): (String, bool) = (row.get(0), row.get(1));
            if !replication {
                return Err(format!("{user} lacks the REPLICATION attribute: ALTER ROLE {user} REPLICATION"));
            }
            Ok(format!("connects as {user}, who has the REPLICATION attribute"))
        }
        _ => Ok("a command source: run the job once to try it".into()),
    }
}

/// A note when `pg_dump --version` (`pg_dump (PostgreSQL) 18.1`) is newer
/// than the dump scanner reads: the export still works, rows are counted
/// with SQL instead.
fn newer_than_scanner(version: &str) -> String {
    let major = version.rsplit(' ').next().and_then(|v| v.split(['.', 'b', 'r']).next()).and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(m) if m > crate::source::NEWEST_PG_DUMP => format!(
            ". Note: pg_dump {} is newer than this bascule's dump scanner (pg_dump {} at most): exports work, rows are counted \
             with SQL in the dump's snapshot instead (one more pass over the tables) — upgrade bascule",
            version.rsplit(' ').next().unwrap_or_default(),
            crate::source::NEWEST_PG_DUMP
        ),
        _ => String::new(),
    }
}

/// The database archiving jobs write (the first pg_dump or pg_basebackup source).
fn archived_db(agent: &Agent) -> Option<Result<Connect, String>> {
    agent.config.jobs.iter().find_map(|j| match &j.source {
        SourceConfig::PgDump(p) => Some(p.pg_config(&agent.config_file).map(|(c, _)| c).map_err(|e| format!("{e:#}"))),
        _ => None,
    })
}

async fn archiving(agent: &Agent) -> Vec<Line> {
    let what = "archiving";
    let Some(pg) = archived_db(agent) else {
        return vec![line(what, Ok("wal: is set; no pg_dump job names the database to ask: check archive_command by hand".into()))];
    };
    let conn = match pg {
        Ok(pg) => pg.connect().await.map_err(err),
        Err(e) => Err(e),
    };
    let (c, _conn) = match conn {
        Ok(c) => c,
        Err(e) => return vec![line(what, Err(format!("cannot connect to ask PostgreSQL: {e}")))],
    };
    let setting = |name: &'static str| {
        let c = &c;
        async move { c.query_one(&format!("SELECT current_setting('{name}')"), &[]).await.map(|r| r.get::<_, String>(0)).map_err(err) }
    };
    let mode = match setting("archive_mode").await {
        Ok(m) => m,
        Err(e) => return vec![line(what, Err(e))],
    };
    let command = setting("archive_command").await.unwrap_or_default();
    let config = agent.config_file.display().to_string();
    if mode == "off" || !command.contains("wal-push") || !command.contains(&config) {
        return vec![line(
            what,
            Err(format!(
                "archive_mode = {mode}, archive_command = {command:?}: set archive_mode = on and \
                 archive_command = 'bascule-agent wal-push --config {config} %p' in postgresql.conf, then restart PostgreSQL"
            )),
        )];
    }
    let mut out = vec![line(what, Ok(format!("archive_mode = {mode}, archive_command runs this agent with {config}")))];
    // a WAL switch must reach both providers: `wal-push` spools it, the daemon ships it
    let wal: Result<String, String> = async {
        c.batch_execute("CREATE TEMP TABLE bascule_check (at timestamptz); INSERT INTO bascule_check VALUES (now())").await.map_err(err)?;
        c.query_one("SELECT pg_walfile_name(pg_switch_wal())", &[]).await.map(|r| r.get(0)).map_err(|e| format!("pg_switch_wal(): {e}"))
    }
    .await;
    let result = match wal {
        Err(e) => Err(e),
        Ok(name) => {
            let t0 = std::time::Instant::now();
            let key = bascule_core::wal::WalName::parse(&name).map(|w| w.record_key());
            loop {
                let mut on = 0;
                if let Some(k) = &key {
                    for r in &agent.replicated.replicas {
                        if r.get(k, bascule_core::wal::WalRecord::MAX_LEN).await.is_ok_and(|b| b.is_some()) {
                            on += 1;
                        }
                    }
                }
                if on == agent.replicated.replicas.len() {
                    break Ok(format!("WAL file {name} reached both providers in {:.1} s", t0.elapsed().as_secs_f64()));
                }
                if t0.elapsed() > WAL_TIMEOUT {
                    break Err(format!(
                        "WAL file {name} reached {on} of {} providers within {} s: is `bascule-agent run` running (systemctl status bascule-agent)?",
                        agent.replicated.replicas.len(),
                        WAL_TIMEOUT.as_secs()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    out.push(line("archiving reaches both providers", result));
    out
}

async fn heartbeat(agent: &Agent, h: &crate::config::HeartbeatConfig) -> Result<String, String> {
    let mut pg = Connect::parse(&h.dsn).map_err(err)?;
    if let Some(p) = &h.password {
        pg.password(p.resolve(&agent.config_file, "heartbeat.password").map_err(|e| format!("{e:#}"))?.as_bytes());
    }
    let (c, _conn) = pg.connect().await.map_err(|e| crate::source::cannot_connect(&e, "heartbeat"))?;
    c.batch_execute(&format!("BEGIN; {}; ROLLBACK;", crate::heartbeat::SETUP))
        .await
        .map_err(|e| format!("cannot create or write bascule.heartbeat ({e}): GRANT CREATE ON DATABASE to the heartbeat's user"))?;
    Ok("can create and write bascule.heartbeat".into())
}
