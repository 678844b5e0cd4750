//! The readiness check (`drill check`, and the `readiness` step a runbook
//! puts before its first disruptive step): what the runbook's steps of the
//! mode will need, checked now, one line each. Both providers reachable and
//! current (in drill mode, each HEAD no older than the RPO target, 5 min
//! without one), the newest restore test passed, each identity file
//! readable, each host of the DSNs and URLs reachable, a standby caught up,
//! or room to restore the newest base backup, the PostgreSQL programs there.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bascule_core::keys::Identities;

use crate::command::pitr;
use crate::context::Controller;
use crate::model::Mode;
use crate::runbook::step::needs::{Endpoint, Needs};
use crate::runbook::vars::with_vars;
use crate::runbook::Loaded;
use crate::tenant::HeadState;

/// One check: what, and `Ok` with what was found or `Err` with what is wrong.
#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub result: Result<String, String>,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.result {
            Ok(s) => write!(f, "ok      {}: {s}", self.what),
            Err(s) => write!(f, "FAILED  {}: {s}", self.what),
        }
    }
}

/// How long a TCP connection may take to open.
const CONNECT: Duration = Duration::from_secs(3);

fn age(t: chrono::DateTime<chrono::Utc>) -> Duration {
    (chrono::Utc::now() - t).to_std().unwrap_or_default()
}

fn human(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Everything the steps of `mode` need, with `vars`. The hosts of the steps
/// after the first that brings a cluster up (a restore into a data
/// directory, a promotion) are what that step brings up: not checked.
pub fn needs(l: &Loaded, vars: &BTreeMap<String, String>, mode: Mode) -> Needs {
    let sub = |s: &str| with_vars(s, vars);
    let mut n = Needs::default();
    let mut recovered = false;
    for (_, step) in l.steps().into_iter().filter(|(_, s)| s.modes.contains(&mode)) {
        let mut more = step.kind.needs(&sub);
        if recovered {
            more.endpoints.clear();
        }
        recovered |= !more.data_dirs.is_empty();
        n.merge(more);
    }
    n
}

/// Runs every check; never fails as a whole.
pub async fn check(c: &Controller, l: &Loaded, vars: &BTreeMap<String, String>, mode: Mode) -> Vec<Check> {
    let n = needs(l, vars, mode);
    let max_lag = l.runbook.targets.rpo.unwrap_or(Duration::from_secs(300));
    let mut out = Vec::new();
    for t in &n.tenants {
        out.extend(tenant(c, t, mode, max_lag).await);
    }
    for f in &n.identities {
        let result = Identities::load(f).map(|_| "readable, owner only".to_string()).map_err(|e| e.to_string());
        out.push(Check { what: format!("identity {}", f.display()), result });
    }
    for e in &n.endpoints {
        out.push(Check { what: format!("reach {e}"), result: reach(e).await });
    }
    for d in &n.data_dirs {
        let what = format!("data directory {}", d.pgdata.display());
        let result = if d.standby && crate::runbook::step::is_standby(&d.pgdata) {
            standby(&d.pgdata, max_lag).await
        } else {
            room(c, &d.tenant, &d.pgdata).await
        };
        out.push(Check { what, result });
    }
    for p in &n.programs {
        out.push(Check { what: format!("program {p}"), result: program(c, p) });
    }
    out
}

async fn tenant(c: &Controller, name: &str, mode: Mode, max_lag: Duration) -> Vec<Check> {
    let t = match c.tenant(name) {
        Ok(t) => t,
        Err(e) => return vec![Check { what: format!("tenant {name}"), result: Err(format!("{e:#}")) }],
    };
    let mut out = Vec::new();
    let mut newest_test = None;
    for (provider, state) in t.heads().await {
        let result = match state {
            HeadState::Valid(h) => {
                let a = age(h.agent_time);
                if h.restore_test
                    .as_ref()
                    .is_some_and(|r| newest_test.as_ref().is_none_or(|n: &bascule_core::restore_test::RestoreTestSummary| r.at > n.at))
                {
                    newest_test = h.restore_test.clone();
                }
                if mode == Mode::Drill && h.latest_wal.is_some() && a > max_lag {
                    Err(format!("its HEAD is {} old, over {} (the runbook's RPO target): is the agent shipping?", human(a), human(max_lag)))
                } else {
                    Ok(format!("HEAD sequence {}, {} old", h.sequence, human(a)))
                }
            }
            HeadState::Absent => Err("no HEAD: the provider holds nothing of this tenant".into()),
            HeadState::Refused(e) => Err(e.to_string()),
        };
        out.push(Check { what: format!("tenant {name} on {provider}"), result });
    }
    let result = match newest_test {
        Some(r) if r.passed => {
            Ok(format!("the newest restore test ({}, {}) passed", r.job, r.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
        }
        Some(r) => Err(format!("the newest restore test ({}, {}) failed: `bascule-controller restore-tests` says why", r.job, r.at)),
        None => Ok("no restore test recorded (the agent has no restore-test job)".into()),
    };
    out.push(Check { what: format!("tenant {name} restore test"), result });
    out
}

async fn reach(e: &Endpoint) -> Result<String, String> {
    match e {
        Endpoint::Tcp(h, p) => match tokio::time::timeout(CONNECT, tokio::net::TcpStream::connect((h.as_str(), *p))).await {
            Ok(Ok(_)) => Ok("accepts connections".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} s", CONNECT.as_secs())),
        },
        Endpoint::Unix(d) if d.is_dir() => Ok("socket directory present".into()),
        Endpoint::Unix(_) => Err("no such socket directory".into()),
    }
}

async fn standby(pgdata: &Path, max_lag: Duration) -> Result<String, String> {
    let s = pitr::standby::standing(pgdata).await.map_err(|e| format!("{e:#}"))?;
    let lag = Duration::from_secs_f64(s.lag_seconds.max(0.0));
    let said = format!("a standby, replayed through {}, {} file(s) behind", s.asked.as_deref().unwrap_or("nothing yet"), s.behind);
    if lag > max_lag {
        return Err(format!("{said}: {} behind the archive, over {}", human(lag), human(max_lag)));
    }
    Ok(format!("{said}, lag {}", human(lag)))
}

/// An empty or new directory with room for the newest base backup.
async fn room(c: &Controller, tenant: &str, pgdata: &Path) -> Result<String, String> {
    if pgdata.exists() && std::fs::read_dir(pgdata).map_err(|e| e.to_string())?.next().is_some() {
        return Err("not empty: a restore needs a new or empty directory".into());
    }
    let t = c.tenant(tenant).map_err(|e| format!("{e:#}"))?;
    let m = pitr::choose_base_backup(&t, &pitr::Target::Latest).await.map_err(|e| format!("{e:#}"))?;
    let existing = pgdata.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
    let v = rustix::fs::statvfs(existing).map_err(|e| format!("{}: {e}", existing.display()))?;
    let free = v.f_bavail.saturating_mul(v.f_frsize);
    if free < m.source_bytes {
        return Err(format!("{} bytes free on {}, the base backup {} holds {}", free, existing.display(), m.name, m.source_bytes));
    }
    Ok(format!("{} bytes free, the base backup {} needs {}", free, m.name, m.source_bytes))
}

fn program(c: &Controller, name: &str) -> Result<String, String> {
    let path = match name {
        "pg_restore" => c.config.restore.pg_restore.clone().unwrap_or_else(|| name.into()),
        _ => c.config.restore.pg_bindir().map_err(|e| format!("{e:#}"))?.join(name),
    };
    let found = if path.components().count() > 1 {
        path.is_file().then(|| path.clone())
    } else {
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(&path)).find(|f| f.is_file()))
    };
    found.map(|f| f.display().to_string()).ok_or_else(|| format!("{} not found", path.display()))
}
