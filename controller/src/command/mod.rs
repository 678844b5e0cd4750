//! One file (or folder) per command: its arguments, what it does, and what
//! it prints; here, the arguments they share.
pub mod check;
pub mod drill;
pub mod pitr;
pub mod prune;
pub mod repair;
pub mod report;
pub mod restore;
pub mod restore_tests;
pub mod snapshots;
pub mod token;
pub mod verify;
pub mod wal;

use std::path::PathBuf;
use std::sync::Arc;

use crate::context::Controller;
use crate::tenant::Tenant;

/// `--config`, of every command that reads the controller's configuration.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArg {
    /// The controller's configuration file (see configs/controller.yaml).
    #[arg(long, short)]
    pub config: PathBuf,
}

impl ConfigArg {
    pub fn load(&self) -> anyhow::Result<Arc<Controller>> {
        Controller::load(&self.config)
    }
}

/// `--config` and `--tenant`.
#[derive(clap::Args, Debug, Clone)]
pub struct TenantArg {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The tenant's name, as in the configuration.
    #[arg(long)]
    pub tenant: String,
}

impl TenantArg {
    /// The controller and the tenant.
    pub fn open(&self) -> anyhow::Result<(Arc<Controller>, Tenant)> {
        let c = self.config.load()?;
        let t = c.tenant(&self.tenant)?;
        Ok((c, t))
    }
}
