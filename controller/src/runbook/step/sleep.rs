//! `sleep`: waits, for instance for a service to settle.
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{Invalid, StepContext, StepError, StepOutcome};
use crate::runbook::Runbook;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepStep {
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

impl SleepStep {
    pub fn validate(&self, _: &Runbook) -> Result<(), Invalid> {
        Ok(())
    }

    pub fn needs(&self, _: &dyn Fn(&str) -> String) -> super::needs::Needs {
        super::needs::Needs::default()
    }

    pub fn describe(&self, _: &dyn Fn(&str) -> String) -> String {
        humantime_serde::re::humantime::format_duration(self.duration).to_string()
    }

    pub async fn run(&self, _: &StepContext<'_>, cancel: CancellationToken) -> Result<StepOutcome, StepError> {
        tokio::select! {
            _ = tokio::time::sleep(self.duration) => Ok(StepOutcome::default()),
            _ = cancel.cancelled() => Err(StepError::Cancelled),
        }
    }
}
