//! Runbooks: the YAML scripts of drills, failovers and restore tests.
//!
//! A runbook is validated completely before anything runs: unknown fields,
//! a step with no kind or two, a bad duration, a variable used but never
//! defined, two steps with one id, misplaced RTO markers. Every error names
//! the file, the line and the field.
//!
//! ```yaml
//! name: saas-failover
//! targets: { rto: 4h, rpo: 5m }
//! variables: { primary: "host=127.0.0.1 port=5432 dbname=app" }
//! secrets: { token: { env: APP_TOKEN } }
//! stages:
//!   - name: cut
//!     steps:
//!       - id: stop-primary
//!         shell: { command: "pg_ctl -D /srv/pg stop -m fast" }
//!         rto: start
//!         modes: [drill, failover]
//! on_failure:
//!   - id: restart-primary
//!     shell: { command: "pg_ctl -D /srv/pg start" }
//! ```
//! A step names its kind by its one kind key (`shell`, `http`, `sql`,
//! `wait_replicated`, `restore`, `verify`, `approval`, `sleep`). Strings may
//! use `${name}` for a variable and `${secret.name}` for a secret, which is
//! resolved only when the step runs and never printed.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bascule_core::config::SecretRef;
use serde::Deserialize;

pub mod plan;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runbook {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub targets: Targets,
    /// Plain values, used in strings as `${name}`.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Secrets, by reference only (`{env: NAME}` or `{file: PATH}`), used as `${secret.name}`.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretRef>,
    /// Steps of one stage running at once, at most (a stage may lower it).
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    pub stages: Vec<Stage>,
    /// Run, in order, when a critical step fails (the rollback).
    #[serde(default)]
    pub on_failure: Vec<Step>,
}

fn default_parallel() -> usize {
    4
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Recovery time objective (default 4h).
    #[serde(default = "four_hours", with = "humantime_serde")]
    pub rto: Duration,
    /// Recovery point objective, if there is one.
    #[serde(default, with = "humantime_serde::option")]
    pub rpo: Option<Duration>,
}

fn four_hours() -> Duration {
    Duration::from_secs(4 * 3600)
}

impl Default for Targets {
    fn default() -> Self {
        Targets { rto: four_hours(), rpo: None }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    /// At most this many of the stage's steps at once (default: the runbook's).
    pub parallel: Option<usize>,
    pub steps: Vec<Step>,
}

/// When a step applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A scheduled exercise: the same path as a failover, on purpose.
    Drill,
    /// The real thing.
    Failover,
}

/// Where the recovery time starts or ends being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RtoMarker {
    Start,
    End,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique in the runbook (letters, digits, `-`, `_`).
    pub id: String,
    #[serde(default)]
    pub description: String,
    pub http: Option<HttpStep>,
    pub shell: Option<ShellStep>,
    pub sql: Option<SqlStep>,
    pub wait_replicated: Option<WaitReplicatedStep>,
    pub restore: Option<RestoreStep>,
    pub verify: Option<VerifyStep>,
    pub approval: Option<ApprovalStep>,
    pub sleep: Option<SleepStep>,
    /// The whole step, each attempt included (default: none for approval, 1h otherwise).
    #[serde(default, with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
    /// Further attempts after a failure.
    #[serde(default)]
    pub retries: u32,
    /// Wait before the first retry; doubles at each further one.
    #[serde(default = "one_second", with = "humantime_serde")]
    pub backoff: Duration,
    /// A critical step's failure aborts the runbook and runs `on_failure`.
    #[serde(default = "yes")]
    pub critical: bool,
    /// The modes the step runs in (default both).
    #[serde(default = "both_modes")]
    pub modes: Vec<Mode>,
    /// Marks where the recovery time starts (the first disruptive step) or ends.
    pub rto: Option<RtoMarker>,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn yes() -> bool {
    true
}
fn both_modes() -> Vec<Mode> {
    vec![Mode::Drill, Mode::Failover]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    pub url: String,
    #[serde(default = "get")]
    pub method: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    /// Expected status (default 200).
    #[serde(default = "ok_status")]
    pub status: u16,
    /// A text the response body must contain.
    pub body_contains: Option<String>,
}

fn get() -> String {
    "GET".into()
}
fn ok_status() -> u16 {
    200
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellStep {
    /// Run by `sh -c`.
    pub command: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlStep {
    pub dsn: String,
    pub query: String,
    /// The first column of the first row, as text, must equal this.
    pub expect: Option<String>,
    /// Keep the first column of the first row as this variable, for later
    /// steps (for example the WAL file a `pg_switch_wal()` completed).
    pub save_as: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitReplicatedStep {
    pub tenant: String,
    /// Both providers' newest WAL file made durable no longer ago than this
    /// (their HEADs' time), and the same file on both.
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// And both hold this WAL file (or a later one), when it is not empty:
    /// the file a `pg_switch_wal()` completed just before the cut.
    #[serde(default)]
    pub wal: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreStep {
    pub tenant: String,
    /// The customer's identity file, read when the step runs (never copied).
    pub identity: PathBuf,
    /// Export restore: `latest` or a snapshot, into this database.
    pub snapshot: Option<String>,
    pub target: Option<String>,
    /// PITR restore into this new data directory, to `at` (a time, an LSN, or `latest`).
    pub pgdata: Option<PathBuf>,
    pub at: Option<String>,
    /// PITR: the restored server's port (default 5432; a variable may give it).
    pub port: Option<String>,
    /// PITR: a superuser of the restored cluster, to read the recovery point
    /// (default `postgres`).
    pub db_user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyStep {
    /// Row counts of this database must match the snapshot's manifest.
    pub row_counts: Option<RowCountCheck>,
    pub sql: Option<SqlStep>,
    pub http: Option<HttpStep>,
    /// The newest heartbeat row of this database gives the recovery point
    /// (RPO = the cut-over instant minus it).
    pub heartbeat: Option<HeartbeatCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatCheck {
    /// The recovered database, where the agent wrote `bascule.heartbeat` rows.
    pub dsn: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowCountCheck {
    pub tenant: String,
    pub identity: PathBuf,
    #[serde(default = "latest")]
    pub snapshot: String,
    pub dsn: String,
}

fn latest() -> String {
    "latest".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalStep {
    /// What the approver is asked.
    pub prompt: String,
    /// What happens when nobody answers within the step's timeout.
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    #[default]
    Fail,
    Continue,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepStep {
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

/// The kind of a step, by its kind key.
impl Step {
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut k = Vec::new();
        let mut add = |present: bool, name| {
            if present {
                k.push(name)
            }
        };
        add(self.http.is_some(), "http");
        add(self.shell.is_some(), "shell");
        add(self.sql.is_some(), "sql");
        add(self.wait_replicated.is_some(), "wait_replicated");
        add(self.restore.is_some(), "restore");
        add(self.verify.is_some(), "verify");
        add(self.approval.is_some(), "approval");
        add(self.sleep.is_some(), "sleep");
        k
    }

    pub fn kind(&self) -> &'static str {
        self.kinds().first().copied().unwrap_or("none")
    }
}

/// `${name}` and `${secret.name}` references in `s`.
pub fn references(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(j) => {
                out.push(&after[..j]);
                rest = &after[j + 1..];
            }
            None => break,
        }
    }
    out
}

/// A runbook, validated, with the file it came from and its hash (for the audit).
#[derive(Debug)]
pub struct Loaded {
    pub runbook: Runbook,
    pub file: PathBuf,
    pub text: String,
    pub hash: String,
}

impl Loaded {
    /// All steps with the field path of each (`stages[1].steps[0]`).
    pub fn steps(&self) -> Vec<(String, &Step)> {
        let mut v = Vec::new();
        for (si, st) in self.runbook.stages.iter().enumerate() {
            for (i, s) in st.steps.iter().enumerate() {
                v.push((format!("stages[{si}].steps[{i}]"), s));
            }
        }
        for (i, s) in self.runbook.on_failure.iter().enumerate() {
            v.push((format!("on_failure[{i}]"), s));
        }
        v
    }
}

/// Reads, parses and validates a runbook.
pub fn load(path: &Path) -> bascule_core::Result<Loaded> {
    let text = std::fs::read_to_string(path).map_err(|e| bascule_core::Error::io(path, e))?;
    parse(&text, path)
}

pub fn parse(text: &str, path: &Path) -> bascule_core::Result<Loaded> {
    let runbook: Runbook = bascule_core::config::parse_yaml(text, path)?;
    let loaded = Loaded { runbook, file: path.into(), text: text.into(), hash: bascule_core::hash_hex(text.as_bytes()) };
    validate(&loaded)?;
    Ok(loaded)
}

fn validate(l: &Loaded) -> bascule_core::Result<()> {
    let err = |field: String, message: String| {
        let (line, column) = bascule_core::config::locate(&l.text, &field).unwrap_or((0, 0));
        bascule_core::Error::Config { file: l.file.clone(), line, column, field, message }
    };
    let r = &l.runbook;
    if r.stages.is_empty() {
        return Err(err("stages".into(), "a runbook needs at least one stage".into()));
    }
    if r.parallel == 0 {
        return Err(err("parallel".into(), "must be at least 1".into()));
    }
    for (i, st) in r.stages.iter().enumerate() {
        if st.steps.is_empty() {
            return Err(err(format!("stages[{i}].steps"), format!("stage {:?} has no step", st.name)));
        }
        if st.parallel == Some(0) {
            return Err(err(format!("stages[{i}].parallel"), "must be at least 1".into()));
        }
    }
    let mut ids = BTreeSet::new();
    let (mut starts, mut ends) = (Vec::new(), Vec::new());
    for (path, s) in l.steps() {
        if s.id.is_empty() || !s.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(err(format!("{path}.id"), format!("step id {:?}: use letters, digits, - and _", s.id)));
        }
        if !ids.insert(s.id.as_str()) {
            return Err(err(format!("{path}.id"), format!("two steps have the id {:?}", s.id)));
        }
        match s.kinds().as_slice() {
            [_] => {}
            [] => {
                return Err(err(
                    path.clone(),
                    format!("step {:?} has no kind: give one of http, shell, sql, wait_replicated, restore, verify, approval, sleep", s.id),
                ))
            }
            many => {
                return Err(err(format!("{path}.{}", many[1]), format!("step {:?} has two kinds ({}); give one", s.id, many.join(", "))))
            }
        }
        if s.modes.is_empty() {
            return Err(err(format!("{path}.modes"), "a step must apply to drill, failover or both".into()));
        }
        if s.timeout == Some(Duration::ZERO) {
            return Err(err(format!("{path}.timeout"), "must be above zero".into()));
        }
        match s.rto {
            Some(RtoMarker::Start) => starts.push(path.clone()),
            Some(RtoMarker::End) => ends.push(path.clone()),
            None => {}
        }
        if let Some(r) = &s.restore {
            match (&r.target, &r.pgdata) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(err(
                        format!("{path}.restore"),
                        "give either target (an export restore) or pgdata (a point-in-time restore)".into(),
                    ))
                }
            }
        }
        if let Some(v) = &s.verify {
            if v.row_counts.is_none() && v.sql.is_none() && v.http.is_none() && v.heartbeat.is_none() {
                return Err(err(format!("{path}.verify"), "give row_counts, sql, http or heartbeat".into()));
            }
        }
        if let Some(name) = s.sql.as_ref().and_then(|q| q.save_as.as_ref()) {
            if !r.variables.contains_key(name) {
                return Err(err(
                    format!("{path}.sql.save_as"),
                    format!("{name:?} is not a variable; define it under `variables:` (its value before the step runs)"),
                ));
            }
        }
    }
    if path_in_on_failure(&starts) || path_in_on_failure(&ends) {
        return Err(err(
            starts.iter().chain(&ends).find(|p| p.starts_with("on_failure")).cloned().unwrap_or_default(),
            "rto markers belong to the stages, not to on_failure".into(),
        ));
    }
    if starts.len() > 1 {
        return Err(err(format!("{}.rto", starts[1]), "a second `rto: start`".into()));
    }
    if ends.len() > 1 {
        return Err(err(format!("{}.rto", ends[1]), "a second `rto: end`".into()));
    }
    if let (Some(s), Some(e)) = (starts.first(), ends.first()) {
        let pos = |p: &str| l.steps().iter().position(|(q, _)| q == p);
        if pos(s) > pos(e) {
            return Err(err(format!("{e}.rto"), "`rto: end` comes before `rto: start`".into()));
        }
    }
    // every ${…} names a variable or a secret
    let mut lines: Vec<(usize, &str)> = l.text.lines().enumerate().collect();
    lines.retain(|(_, t)| !t.trim_start().starts_with('#'));
    for (n, t) in lines {
        for name in references(t) {
            let known = match name.strip_prefix("secret.") {
                Some(s) => r.secrets.contains_key(s),
                None => r.variables.contains_key(name),
            };
            if !known {
                let column = t.find(&format!("${{{name}}}")).map(|c| c + 1).unwrap_or(0);
                return Err(bascule_core::Error::Config {
                    file: l.file.clone(),
                    line: n + 1,
                    column,
                    field: format!("${{{name}}}"),
                    message: if name.starts_with("secret.") {
                        format!("undefined secret; define it under `secrets:` ({}: {{env: NAME}})", name.trim_start_matches("secret."))
                    } else {
                        "undefined variable; define it under `variables:`".into()
                    },
                });
            }
        }
    }
    for (k, v) in &r.variables {
        if let Some(name) = references(v).first() {
            return Err(err(format!("variables.{k}"), format!("a variable cannot use another (${{{name}}})")));
        }
    }
    Ok(())
}

fn path_in_on_failure(paths: &[String]) -> bool {
    paths.iter().any(|p| p.starts_with("on_failure"))
}

/// Replaces `${name}` with variables; `${secret.name}` with `secret(name)`.
pub fn substitute(s: &str, vars: &BTreeMap<String, String>, secret: &dyn Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let name = &after[..j];
        match name.strip_prefix("secret.") {
            Some(sname) => out.push_str(&secret(sname)),
            None => out.push_str(vars.get(name).map(String::as_str).unwrap_or_default()),
        }
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Loaded, String> {
        parse(text, Path::new("rb.yaml")).map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"name: t
targets: { rto: 2h, rpo: 5m }
variables:
  dsn: "host=127.0.0.1 dbname=app"
secrets:
  token: { env: TOKEN }
stages:
  - name: cut
    steps:
      - id: stop
        shell: { command: "echo stop" }
        rto: start
      - id: probe
        http: { url: "http://127.0.0.1/health", headers: { Authorization: "Bearer ${secret.token}" } }
        retries: 2
  - name: check
    steps:
      - id: rows
        sql: { dsn: "${dsn}", query: "SELECT 1", expect: "1" }
        rto: end
on_failure:
  - id: back
    shell: { command: "echo back" }
"#;

    #[test]
    fn a_good_runbook_loads() {
        let l = check(GOOD).unwrap();
        assert_eq!(l.runbook.targets.rto, Duration::from_secs(7200));
        assert_eq!(l.steps().len(), 4);
        assert_eq!(l.runbook.stages[0].steps[1].kind(), "http");
        assert_eq!(l.runbook.stages[0].steps[1].retries, 2);
        assert!(l.runbook.stages[0].steps[0].critical);
    }

    /// Each broken runbook: (what to change in GOOD, expected line, text in the error).
    #[test]
    fn broken_runbooks_give_one_clear_error_each() {
        let cases: &[(&str, &str, usize, &str)] = &[
            ("shell: { command: \"echo stop\" }", "shel: { command: \"echo stop\" }", 11, "unknown field `shel`"),
            ("      - id: rows\n", "      - ids: rows\n", 18, "unknown field `ids`"),
            ("targets: { rto: 2h, rpo: 5m }", "targets: { rto: 2 hours and a bit, rpo: 5m }", 2, "rto"),
            ("\"${dsn}\"", "\"${dns}\"", 19, "undefined variable"),
            ("${secret.token}", "${secret.tok}", 14, "undefined secret"),
            ("      - id: probe", "      - id: stop", 13, "two steps have the id \"stop\""),
            ("        retries: 2\n", "        retries: 2\n        sleep: { duration: 1s }\n", 16, "has two kinds"),
            ("        rto: end\n", "        rto: start\n", 20, "a second `rto: start`"),
        ];
        for (from, to, line, text) in cases {
            assert!(GOOD.contains(from), "case {from:?} does not apply");
            let e = check(&GOOD.replacen(from, to, 1)).map(|_| ()).unwrap_err();
            assert!(e.starts_with(&format!("rb.yaml:{line}:")), "expected line {line} for {to:?}: {e}");
            assert!(e.contains(text), "expected {text:?} for {to:?}: {e}");
        }
        // a step with no kind at all
        let no_kind = GOOD.replacen("    shell: { command: \"echo back\" }\n", "    description: nothing\n", 1);
        assert_ne!(no_kind, GOOD);
        let e = check(&no_kind).map(|_| ()).unwrap_err();
        assert!(e.contains("has no kind"), "{e}");
        // a missing field
        let e = check(&GOOD.replacen("query: \"SELECT 1\", ", "", 1)).map(|_| ()).unwrap_err();
        assert!(e.contains("missing field `query`") && e.starts_with("rb.yaml:19:"), "{e}");
    }

    #[test]
    fn every_shipped_runbook_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runbooks");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let l = load(&p).unwrap_or_else(|e| panic!("{e}"));
                assert!(!plan::render(&l, Mode::Drill).is_empty());
                n += 1;
            }
        }
        assert!(n >= 3, "runbooks/ holds {n} runbooks");
    }

    #[test]
    fn substitution_keeps_secrets_apart() {
        let vars = BTreeMap::from([("a".to_string(), "1".to_string())]);
        assert_eq!(substitute("x${a}y${secret.s}z", &vars, &|n| format!("<{n}>")), "x1y<s>z");
        assert_eq!(references("${a} and ${secret.b}"), ["a", "secret.b"]);
    }
}
