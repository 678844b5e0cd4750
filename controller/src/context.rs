//! The controller's one context: the loaded configuration, the providers
//! built from it (one client each, shared), and one rollback guard per
//! tenant and provider, shared by the commands, the monitor, drill steps and
//! report publishing. Everything that reaches a provider starts here.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use bascule_core::head::{FileMarks, Marks, RevokedMarks, RollbackGuard};
use bascule_core::keys::AgentKey;
use bascule_core::provider::{Provider, Replicated};

use crate::config::ControllerConfig;
use crate::state::fleet::{Fleet, PgMarks};
use crate::state::{Pg, Store};
use crate::tenant::Tenant;

/// The reports' own prefix on the providers (a name no tenant may take).
pub const REPORTS: &str = "reports";

pub struct Controller {
    pub config: ControllerConfig,
    /// The configuration file (errors and secrets name it).
    pub file: PathBuf,
    providers: Vec<Provider>,
    /// `<tenant>@<provider>` → its guard.
    guards: Mutex<HashMap<String, Arc<RollbackGuard>>>,
    /// Where the guards keep their marks: files under state_dir, or the
    /// PostgreSQL state store.
    marks: Arc<dyn Marks>,
    /// The same, with a shared state (revoked-key marks live there too).
    shared: Option<Arc<PgMarks>>,
    /// Tenant name → its place in the configuration.
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Controller({})", self.file.display())
    }
}

/// A controller moving to a shared state brings its marks along: each
/// `<tenant>@<provider>.head-seen` file under state_dir raises the shared
/// mark (never lowers it), at every start, so that no replica accepts an
/// old HEAD this process had already refused.
fn adopt_file_marks(pg: &PgMarks, config: &ControllerConfig) -> anyhow::Result<()> {
    let files = FileMarks::new(&config.state_dir);
    for t in &config.tenants {
        for p in &config.providers {
            let name = format!("{}@{}", t.name, p.name);
            let seen = files.read(&name)?;
            if seen > 0 {
                pg.raise(&name, seen)?;
            }
        }
    }
    Ok(())
}

impl Controller {
    /// Loads the configuration file and builds the providers.
    pub fn load(file: &Path) -> anyhow::Result<Arc<Controller>> {
        Controller::new(ControllerConfig::load(file)?, file)
    }

    pub fn new(config: ControllerConfig, file: &Path) -> anyhow::Result<Arc<Controller>> {
        let providers = config.providers.iter().map(|p| Provider::build(p, file)).collect::<Result<Vec<_>, _>>()?;
        std::fs::create_dir_all(&config.state_dir).with_context(|| format!("state_dir {}", config.state_dir.display()))?;
        let (marks, shared): (Arc<dyn Marks>, _) = match &config.state {
            None => (Arc::new(FileMarks::new(&config.state_dir)), None),
            Some(s) => {
                // the schema is checked (and brought up to date) before anything else
                Store::open_postgres(Pg::open(s.connect(file)?)?, &config.state_dir)?;
                let pg = Arc::new(PgMarks(Pg::open(s.connect(file)?)?));
                adopt_file_marks(&pg, &config)?;
                (pg.clone() as Arc<dyn Marks>, Some(pg))
            }
        };
        let index = config.tenants.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(Arc::new(Controller { config, file: file.into(), providers, guards: Mutex::default(), marks, shared, index }))
    }

    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// The guard of `tenant` on `provider`, one per process.
    pub fn guard(&self, tenant: &str, provider: &str) -> bascule_core::Result<Arc<RollbackGuard>> {
        let name = format!("{tenant}@{provider}");
        let mut guards = self.guards.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = guards.get(&name) {
            return Ok(g.clone());
        }
        let g = Arc::new(RollbackGuard::lazy(self.marks.clone(), &name));
        guards.insert(name, g.clone());
        Ok(g)
    }

    /// Tenant `name` of the configuration, on the shared providers.
    pub fn tenant(&self, name: &str) -> anyhow::Result<Tenant> {
        let t = self
            .index
            .get(name)
            .map(|&i| &self.config.tenants[i])
            .with_context(|| format!("no tenant {name:?} in {}; {}", self.file.display(), known(&self.config.tenants, name)))?;
        let replicas = self.providers.iter().map(|p| p.tenant(name)).collect();
        let guards: Vec<Arc<RollbackGuard>> = self.providers.iter().map(|p| self.guard(name, &p.name)).collect::<Result<_, _>>()?;
        let seen = || guards.iter().try_fold(0, |m, g| Ok(g.seen()?.max(m)));
        let revoked = match &self.shared {
            None => RevokedMarks::load(&self.config.state_dir, name, &t.verify_keys, seen)?,
            Some(pg) => {
                let keys: Vec<String> = t.verify_keys.iter().filter(|k| k.revoked_at.is_some()).map(|k| k.key.to_string()).collect();
                if keys.is_empty() {
                    RevokedMarks::default()
                } else {
                    let from_file = RevokedMarks::in_file(&self.config.state_dir, name)?;
                    RevokedMarks::from_marks(pg.revoked(name, &keys, &from_file, seen)?)
                }
            }
        };
        Ok(Tenant { name: name.into(), replicated: Replicated::new(replicas), keys: t.verify_keys.to_vec(), guards, revoked })
    }

    /// Where signed reports go: `reports/` on both providers.
    pub fn reports(&self) -> Replicated {
        Replicated::new(self.providers.iter().map(|p| p.tenant(REPORTS)).collect())
    }

    /// The report signing key; created on first use.
    pub fn report_key(&self) -> anyhow::Result<AgentKey> {
        self.config.report_key()
    }

    /// The drill store (a connection of its own).
    pub fn store(&self) -> anyhow::Result<Store> {
        match &self.config.state {
            None => Store::open(&self.config.drill_store()),
            Some(s) => Store::open_postgres(Pg::open(s.connect(&self.file)?)?, &self.config.state_dir),
        }
    }

    /// The leases of a replica sharing the PostgreSQL state (none with the
    /// SQLite store: one process holds everything).
    pub fn fleet(&self) -> anyhow::Result<Option<Fleet>> {
        let Some(s) = &self.config.state else { return Ok(None) };
        Ok(Some(Fleet::new(Pg::open(s.connect(&self.file)?)?, s.replica_name(), s.lease)))
    }
}

/// Names to suggest for a tenant not found: those that look like `name`
/// first, at most ten of the configured ones (a fleet has thousands).
fn known(tenants: &[crate::config::TenantConfig], name: &str) -> String {
    const SHOWN: usize = 10;
    let wanted = name.to_lowercase();
    let like = |t: &&crate::config::TenantConfig| {
        let n = t.name.to_lowercase();
        !wanted.is_empty() && (n.contains(&wanted) || wanted.contains(&n))
    };
    let mut shown: Vec<&str> = tenants.iter().filter(like).map(|t| t.name.as_str()).take(SHOWN).collect();
    let (what, from) = if shown.is_empty() { ("known", tenants.len()) } else { ("close", shown.len()) };
    if shown.is_empty() {
        shown = tenants.iter().map(|t| t.name.as_str()).take(SHOWN).collect();
    }
    let more = if what == "known" && from > shown.len() { format!(" and {} more", from - shown.len()) } else { String::new() };
    format!("{what}: {}{more}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use crate::config::TenantConfig;

    fn tenants(names: &[String]) -> Vec<TenantConfig> {
        names.iter().map(|n| TenantConfig { name: n.clone(), verify_keys: Box::new([]), retention: None }).collect()
    }

    #[test]
    fn a_tenant_not_found_names_those_close_to_it_or_ten_of_the_fleet() {
        let names: Vec<String> = (0..35_000).map(|i| format!("mairie-{i:05}")).collect();
        let t = tenants(&names);
        let far = super::known(&t, "ville-de-lyon");
        assert_eq!(far.matches(", ").count(), 9, "{far}");
        assert!(far.starts_with("known: mairie-00000") && far.ends_with(" and 34990 more"), "{far}");
        let close = super::known(&t, "MAIRIE-0001");
        assert!(close.starts_with("close: mairie-00010, mairie-00011"), "{close}");
        assert!(!close.contains("more"), "{close}");
    }
}
