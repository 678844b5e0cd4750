//! `readiness`: the readiness check of the whole runbook (what its steps of
//! this mode will need: providers current, restore test, identities, hosts,
//! standby or room to restore, programs), one line per check; it fails when
//! one does. Put it in the first stage, before any disruptive step: a
//! failed readiness stops the drill before it touches production.
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{Invalid, StepContext, StepError, StepOutcome};
use crate::runbook::Runbook;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessStep {}

impl ReadinessStep {
    pub fn validate(&self, _: &Runbook) -> Result<(), Invalid> {
        Ok(())
    }

    pub fn needs(&self, _: &dyn Fn(&str) -> String) -> super::needs::Needs {
        super::needs::Needs::default()
    }

    pub fn describe(&self, _: &dyn Fn(&str) -> String) -> String {
        "what the runbook's steps will need, checked before anything is touched (see `drill check`)".into()
    }

    pub async fn run(&self, ctx: &StepContext<'_>, _: CancellationToken) -> Result<StepOutcome, StepError> {
        let c = ctx.controller()?;
        let checks = crate::drill::readiness::check(c, &ctx.drill.loaded, &ctx.drill.vars(), ctx.drill.mode).await;
        let text = checks.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
        if checks.iter().any(|c| c.result.is_err()) {
            return Err(StepError::Failed(format!("not ready:\n{text}")));
        }
        Ok(StepOutcome::text(text))
    }
}
