//! What a step sees while it runs: the drill's variables (and the secrets,
//! resolved only when a step asks), the controller (providers, tenants), the
//! drill's approvals, and the step itself. The engine makes one
//! [`DrillContext`] per drill and hands each step a [`StepContext`].
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::Step;
use crate::context::Controller;
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
    controller: Option<Arc<Controller>>,
    store: Arc<Mutex<Store>>,
    vars: Mutex<BTreeMap<String, String>>,
}

impl DrillContext {
    /// The runbook's variables with `overrides` (`--var` values, or those
    /// stored for a resumed drill) over them.
    pub fn new(
        id: i64,
        loaded: Arc<Loaded>,
        actor: String,
        controller: Option<Arc<Controller>>,
        store: Arc<Mutex<Store>>,
        overrides: Vec<(String, String)>,
    ) -> DrillContext {
        let mut vars = loaded.runbook.variables.clone();
        vars.extend(overrides);
        DrillContext { id, loaded, actor, interactive: false, controller, store, vars: Mutex::new(vars) }
    }

    /// The drill store.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Variables and secrets substituted into `s`.
    pub fn sub(&self, s: &str) -> String {
        let l = &self.loaded;
        let secret = |name: &str| l.runbook.secrets.get(name).and_then(|s| s.resolve(&l.file, name).ok()).unwrap_or_default();
        substitute(s, &self.vars.lock().unwrap_or_else(|e| e.into_inner()), &secret)
    }

    /// Sets a variable for the steps after this one (and a resumed drill).
    pub fn set_var(&self, name: &str, value: &str) -> anyhow::Result<()> {
        self.vars.lock().unwrap_or_else(|e| e.into_inner()).insert(name.into(), value.into());
        self.store().set_variable(self.id, name, value)
    }

    pub fn controller(&self) -> Result<&Arc<Controller>, String> {
        self.controller.as_ref().ok_or_else(|| "this step needs the controller's configuration (--config)".to_string())
    }
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

    pub fn controller(&self) -> Result<&Arc<Controller>, String> {
        self.drill.controller()
    }

    /// Records an answer to this (approval) step.
    pub fn answer(&self, approved: bool) {
        let d = self.drill;
        if let Err(e) = d.store().answer(d.id, &self.step.id, approved, &d.actor) {
            tracing::error!(error = format!("{e:#}"), "Cannot record the answer");
        }
    }

    /// The answer to this (approval) step, if any: (approved, who).
    pub fn approval(&self) -> Result<Option<(bool, String)>, String> {
        self.drill.store().approval(self.drill.id, &self.step.id).map_err(|e| format!("{e:#}"))
    }
}
