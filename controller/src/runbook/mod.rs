//! Runbooks: the YAML scripts of drills, failovers and restore tests.
//!
//! A runbook is validated completely before anything runs ([`validate`]):
//! unknown fields, a step with no kind or two, a bad duration, a variable
//! used but never defined, two steps with one id, misplaced RTO markers.
//! Every error names the file, the line and the field.
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
//! A step names its kind by its one kind key; each kind is a file of
//! [`step`] (its schema, its validation and what it does). Strings may use
//! `${name}` for a variable, as data only ([`vars`], [`template`]): a shell
//! command reads it from its environment, an SQL query as a bind parameter.
//! `${secret.name}` (a secret, resolved when the drill starts, redacted from
//! everything it records) may appear only where a secret belongs: a shell
//! step's `env`, an HTTP header, a DSN's password.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bascule_core::config::SecretRef;
use serde::Deserialize;

pub mod plan;
pub mod step;
pub mod template;
mod validate;
pub mod vars;

pub use crate::model::Mode;
pub use step::{RtoMarker, Step, StepKind};
pub use vars::{references, substitute, Variable};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runbook {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub targets: Targets,
    /// Declared variables (a default, or `{ default, pattern, description }`),
    /// used as `${name}`.
    #[serde(default)]
    pub variables: BTreeMap<String, Variable>,
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
    /// In failover mode, an approval cannot be given by the one who started
    /// the drill (default: true).
    #[serde(default = "yes")]
    pub four_eyes: bool,
}

fn yes() -> bool {
    true
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

    /// Whether the runbook has an approval step `id`.
    pub fn has_approval(&self, id: &str) -> bool {
        self.steps().iter().any(|(_, s)| s.id == id && matches!(s.kind, StepKind::Approval(_)))
    }

    /// `NAME=VALUE` pairs, each naming one of the runbook's variables.
    pub fn parse_vars(&self, vars: &[String]) -> anyhow::Result<Vec<(String, String)>> {
        vars.iter()
            .map(|v| {
                let (k, val) = v.split_once('=').ok_or_else(|| anyhow::anyhow!("--var {v:?}: expected NAME=VALUE"))?;
                self.check_value(k, val).map_err(|e| anyhow::anyhow!("--var {e}"))?;
                Ok((k.to_string(), val.to_string()))
            })
            .collect()
    }

    /// `Err` saying why when `value` cannot be variable `name` (undeclared,
    /// or not matching its pattern).
    pub fn check_value(&self, name: &str, value: &str) -> Result<(), String> {
        match self.runbook.variables.get(name) {
            Some(v) => v.check(name, value),
            None => Err(format!(
                "{name}: {} has no such variable (it has: {})",
                self.file.display(),
                self.check_var(name).err().unwrap_or_default()
            )),
        }
    }

    /// The variables' defaults.
    pub fn defaults(&self) -> BTreeMap<String, String> {
        self.runbook.variables.iter().map(|(k, v)| (k.clone(), v.default.clone())).collect()
    }

    /// `Err` with the names it has when the runbook declares no variable `name`.
    pub fn check_var(&self, name: &str) -> Result<(), String> {
        if self.runbook.variables.contains_key(name) {
            return Ok(());
        }
        Err(self.runbook.variables.keys().map(String::as_str).collect::<Vec<_>>().join(", "))
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
    validate::validate(&loaded)?;
    Ok(loaded)
}
