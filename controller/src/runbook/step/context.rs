//! What a step sees while it runs: the drill's variables (and the secrets,
//! resolved only when a step asks), the controller (providers, tenants), the
//! drill's approvals, and the step itself. The engine makes one
//! [`DrillContext`] per drill and hands each step a [`StepContext`].
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::Step;
use crate::context::Controller;
use crate::runbook::vars::with_vars;
use crate::runbook::{substitute, Loaded};
use crate::state::Store;

/// Shared by the steps of one drill.
pub struct DrillContext {
    pub id: i64,
    pub loaded: Arc<Loaded>,
    /// Who runs the drill (`user@host`), for the audit log.
    pub actor: String,
    /// Approvals may be answered at this terminal.
    pub interactive: bool,
    /// The steps of this mode run.
    pub mode: crate::model::Mode,
    controller: Option<Arc<Controller>>,
    store: Arc<Mutex<Store>>,
    vars: Mutex<BTreeMap<String, String>>,
    /// Every secret of the runbook, resolved when the drill starts.
    secrets: BTreeMap<String, String>,
}

impl DrillContext {
    /// The runbook's variables with `overrides` (`--var` values, or those
    /// stored for a resumed drill) over them, each checked against the
    /// runbook's declaration; every secret resolved now (one that cannot be
    /// is an error before anything runs).
    pub fn new(
        id: i64,
        loaded: Arc<Loaded>,
        actor: String,
        controller: Option<Arc<Controller>>,
        store: Arc<Mutex<Store>>,
        overrides: Vec<(String, String)>,
    ) -> anyhow::Result<DrillContext> {
        let mut vars = loaded.defaults();
        for (k, v) in overrides {
            loaded.check_value(&k, &v).map_err(anyhow::Error::msg)?;
            vars.insert(k, v);
        }
        let secrets = resolve_secrets(&loaded)?;
        Ok(DrillContext {
            id,
            loaded,
            actor,
            interactive: false,
            mode: crate::model::Mode::Drill,
            controller,
            store,
            vars: Mutex::new(vars),
            secrets,
        })
    }

    /// The drill store.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The variables now.
    pub fn vars(&self) -> BTreeMap<String, String> {
        self.vars.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Variables substituted into `s` (a secret reference stays as written:
    /// validation keeps them out of the fields that use this).
    pub fn sub(&self, s: &str) -> String {
        with_vars(s, &self.vars.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Variables and secrets substituted into `s`: for the fields a secret may fill.
    pub fn sub_secrets(&self, s: &str) -> String {
        let vars = self.vars();
        substitute(s, &|n| vars.get(n).cloned(), &|n| self.secrets.get(n).cloned())
    }

    /// `text` with every secret's value (and its common encodings) replaced
    /// by `[secret NAME]`: what is recorded, shown, logged or published.
    pub fn redact(&self, text: &str) -> String {
        redact(text, &self.secrets)
    }

    /// Sets a variable for the steps after this one (and a resumed drill),
    /// if its value is one the runbook allows.
    pub fn set_var(&self, name: &str, value: &str) -> anyhow::Result<()> {
        self.loaded.check_value(name, value).map_err(anyhow::Error::msg)?;
        self.vars.lock().unwrap_or_else(|e| e.into_inner()).insert(name.into(), value.into());
        self.store().set_variable(self.id, name, value)
    }

    pub fn controller(&self) -> Result<&Arc<Controller>, String> {
        self.controller.as_ref().ok_or_else(|| "this step needs the controller's configuration (--config)".to_string())
    }
}

/// Every secret of the runbook, or the first that cannot be resolved.
pub fn resolve_secrets(l: &Loaded) -> anyhow::Result<BTreeMap<String, String>> {
    l.runbook
        .secrets
        .iter()
        .map(|(name, r)| {
            let v = r.resolve(&l.file, &format!("secrets.{name}"))?;
            if v.is_empty() {
                anyhow::bail!("{}: secrets.{name} is empty", l.file.display());
            }
            Ok((name.clone(), v))
        })
        .collect()
}

/// `text` with each secret's value, and its base64, URL and hex forms,
/// replaced by `[secret NAME]`.
pub fn redact(text: &str, secrets: &BTreeMap<String, String>) -> String {
    use base64::Engine;
    let mut out = text.to_string();
    // the longest first: a secret that holds another is replaced whole
    let mut all: Vec<(&String, &String)> = secrets.iter().collect();
    all.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    for (name, value) in all {
        let b = value.as_bytes();
        let forms = [
            value.clone(),
            base64::engine::general_purpose::STANDARD.encode(b),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(b),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b),
            crate::runbook::template::encode_component(value),
            hex::encode(b),
            hex::encode_upper(b),
        ];
        for f in forms.iter().filter(|f| f.len() >= 4) {
            out = out.replace(f.as_str(), &format!("[secret {name}]"));
        }
    }
    out
}

/// One step's view of its drill.
pub struct StepContext<'a> {
    pub drill: &'a DrillContext,
    pub step: &'a Step,
}

impl StepContext<'_> {
    pub fn sub(&self, s: &str) -> String {
        self.drill.sub(s)
    }

    pub fn sub_secrets(&self, s: &str) -> String {
        self.drill.sub_secrets(s)
    }

    pub fn controller(&self) -> Result<&Arc<Controller>, String> {
        self.drill.controller()
    }

    /// Records an answer to this (approval) step.
    pub fn answer(&self, approved: bool) {
        let d = self.drill;
        let row = d.store().drill(d.id);
        if let Ok(row) = row {
            if let Err(why) = crate::drill::may_answer(&d.loaded, row.mode, &row.started_by, approved, &d.actor) {
                eprintln!("  {why}");
                return;
            }
        }
        if let Err(e) = d.store().answer(d.id, &self.step.id, approved, &d.actor) {
            tracing::error!(error = format!("{e:#}"), "Cannot record the answer");
        }
    }

    /// The answer to this (approval) step, if any: (approved, who).
    pub fn approval(&self) -> Result<Option<(bool, String)>, String> {
        self.drill.store().approval(self.drill.id, &self.step.id).map_err(|e| format!("{e:#}"))
    }
}
