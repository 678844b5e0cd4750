//! The monitor: every `interval`, each tenant's signed HEAD on each provider
//! (a conditional GET: when nothing changed, one small request that returns
//! no body), refusing bad signatures and rollbacks; when a HEAD changed, at
//! most every `deep_interval`, both providers' listings of the tenant, to
//! find objects held by one provider only and the newest snapshot of each
//! kind. Results go to the metrics and to `GET /v1/tenants`.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bascule_core::head::Head;
use bascule_core::manifest::Manifest;
use bascule_core::provider::Provider;
use bascule_core::signed::Signed;
use bascule_core::{layout, Error};
use futures::StreamExt;
use serde::Serialize;

use super::metrics::{self as m, ts};
use crate::context::Controller;
use crate::tenant::{HeadRead, HeadState, Tenant};

/// What the API shows of one tenant on one provider.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProviderView {
    pub provider: String,
    /// `ok`, `absent`, `unreachable: …`, `refused: …`.
    pub status: String,
    pub sequence: Option<u64>,
    pub latest_snapshot: Option<String>,
    pub latest_wal: Option<String>,
    pub agent_time: Option<chrono::DateTime<chrono::Utc>>,
    pub objects_missing: Option<usize>,
    /// The newest on-site restore test the agent's HEAD names.
    pub restore_test: Option<bascule_core::restore_test::RestoreTestSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantView {
    pub tenant: String,
    pub providers: Vec<ProviderView>,
    /// How long a restore would take now, at the throughput the last one
    /// measured (none before a first restore).
    pub projected_rto_seconds: Option<f64>,
}

struct PerProvider {
    etag: Option<String>,
    head: Option<Head>,
    view: ProviderView,
}

struct Watched {
    name: String,
    /// The tenant on the controller's shared providers and rollback guards.
    tenant: Tenant,
    per: Vec<PerProvider>,
    /// Snapshot name → (kind, start time, bytes), from verified manifests.
    snapshots: HashMap<String, (String, chrono::DateTime<chrono::Utc>, u64)>,
    changed: bool,
    /// Where the last restore's throughput is kept.
    state_dir: std::path::PathBuf,
    projected: Option<f64>,
    last_deep: Option<Instant>,
}

pub struct Monitor {
    providers: Vec<Provider>,
    tenants: Vec<Watched>,
    concurrency: usize,
    deep_interval: Duration,
    pub view: Arc<RwLock<Vec<TenantView>>>,
}

/// Counts of one cycle, for the log and the tests.
#[derive(Debug, Default)]
pub struct Cycle {
    pub tenants: usize,
    pub changed: usize,
    pub deep: usize,
    pub refused: usize,
    pub errors: usize,
    pub took: Duration,
}

impl Monitor {
    pub fn new(c: &Controller) -> anyhow::Result<Monitor> {
        let providers: Vec<Provider> = c.providers().to_vec();
        let mut tenants = Vec::new();
        for t in &c.config.tenants {
            let per = providers
                .iter()
                .map(|p| PerProvider {
                    etag: None,
                    head: None,
                    view: ProviderView { provider: p.name.clone(), status: "not read yet".into(), ..Default::default() },
                })
                .collect();
            tenants.push(Watched {
                name: t.name.clone(),
                tenant: c.tenant(&t.name)?,
                per,
                snapshots: HashMap::new(),
                changed: false,
                last_deep: None,
                state_dir: c.config.state_dir.clone(),
                projected: None,
            });
        }
        m::TENANTS.set(tenants.len() as i64);
        Ok(Monitor {
            providers,
            tenants,
            concurrency: c.config.serve.concurrency,
            deep_interval: c.config.serve.deep_interval,
            view: Default::default(),
        })
    }

    /// One pass over every tenant.
    pub async fn cycle(&mut self) -> Cycle {
        let t0 = Instant::now();
        let providers = &self.providers;
        let deep_interval = self.deep_interval;
        // the futures made first (a closure inside the stream would make the
        // task's future not Send for every lifetime)
        let checks: Vec<_> = self.tenants.iter_mut().map(|t| check_tenant(t, providers, deep_interval)).collect();
        let results: Vec<TenantCheck> = futures::stream::iter(checks).buffer_unordered(self.concurrency).collect().await;
        let mut c = Cycle { tenants: results.len(), ..Default::default() };
        // a provider is up when it answered at least one request, or was asked nothing
        let mut answered = vec![(0usize, 0usize); providers.len()];
        for (refused, per, deep) in &results {
            c.refused += refused;
            c.deep += *deep as usize;
            for (i, (ok, changed)) in per.iter().enumerate() {
                if *ok {
                    answered[i].0 += 1;
                } else {
                    answered[i].1 += 1;
                    c.errors += 1;
                }
                c.changed += *changed as usize;
            }
        }
        for (i, p) in providers.iter().enumerate() {
            let (ok, err) = answered[i];
            let up = if ok + err == 0 { p.tenant("reports").healthcheck().await.is_ok() } else { ok > 0 };
            m::PROVIDER_UP.with_label_values(&[&p.name]).set(up as i64);
        }
        *self.view.write().expect("lock") = self
            .tenants
            .iter()
            .map(|t| TenantView {
                tenant: t.name.clone(),
                providers: t.per.iter().map(|p| p.view.clone()).collect(),
                projected_rto_seconds: t.projected,
            })
            .collect();
        c.took = t0.elapsed();
        m::CYCLE_SECONDS.set(c.took.as_secs_f64());
        m::LAST_CYCLE.set(ts(chrono::Utc::now()));
        c
    }
}

/// Refusals, per provider (answered, HEAD changed), listings compared.
type TenantCheck = (usize, Vec<(bool, bool)>, bool);

/// Reads the tenant's HEAD on each provider; returns the refusals, per
/// provider (answered, changed), and whether the listings were compared.
async fn check_tenant(t: &mut Watched, providers: &[Provider], deep_interval: Duration) -> TenantCheck {
    let mut refused = 0;
    let mut per_result = Vec::new();
    for (i, p) in providers.iter().enumerate() {
        let st = &mut t.per[i];
        let mut changed = false;
        let ok = match t.tenant.read_head(i, st.etag.as_deref()).await {
            HeadRead::NotModified => true,
            HeadRead::Read { state: HeadState::Absent, .. } => {
                st.head = None;
                st.etag = None;
                st.view.status = "absent".into();
                true
            }
            HeadRead::Read { state: HeadState::Valid(h), etag } => {
                changed = st.head.as_ref().map(|o| o.sequence) != Some(h.sequence);
                st.head = Some(h);
                st.etag = etag;
                st.view.status = "ok".into();
                true
            }
            HeadRead::Read { state: HeadState::Refused(e), .. } => {
                let reason = match &e {
                    Error::Rollback { .. } => "rollback",
                    Error::BadSignature { .. } => "bad_signature",
                    _ => "bad_head",
                };
                m::INTEGRITY_FAILURES.with_label_values(&[&t.name, &p.name, reason]).inc();
                tracing::error!(tenant = %t.name, provider = %p.name, error = %e, "HEAD refused");
                st.view.status = format!("refused: {e}");
                // keep the last good state; read it again next time
                st.etag = None;
                refused += 1;
                true
            }
            HeadRead::Unreachable(e) => {
                st.view.status = format!("unreachable: {e}");
                false
            }
        };
        if let Some(h) = &st.head {
            show_head(&t.name, &p.name, h, &mut st.view);
        }
        t.changed |= changed;
        per_result.push((ok, changed));
    }
    let deep = t.changed && t.last_deep.is_none_or(|d| d.elapsed() >= deep_interval);
    if deep {
        compare_listings(t, providers).await;
        t.changed = false;
        t.last_deep = Some(Instant::now());
    }
    (refused, per_result, deep)
}

/// What a valid HEAD says, into the view and the metrics.
fn show_head(tenant: &str, provider: &str, h: &Head, view: &mut ProviderView) {
    view.sequence = Some(h.sequence);
    view.latest_snapshot = h.latest_snapshot.clone();
    view.latest_wal = h.latest_wal.clone();
    view.agent_time = Some(h.agent_time);
    view.restore_test = h.restore_test.clone();
    if let Some(rt) = &h.restore_test {
        m::RESTORE_TEST_PASSED.with_label_values(&[tenant]).set(rt.passed as i64);
        if let Some(at) = rt.last_success_at {
            let g = m::RESTORE_TEST_LAST_SUCCESS.with_label_values(&[tenant]);
            g.set(g.get().max(ts(at)));
        }
    }
    if h.latest_wal.is_some() {
        m::LAST_WAL.with_label_values(&[tenant, provider]).set(ts(h.agent_time));
        let lag = (chrono::Utc::now() - h.agent_time).num_milliseconds().max(0) as f64 / 1000.0;
        m::REPLICATION_LAG.with_label_values(&[tenant, provider]).set(lag);
    }
}

/// Lists the tenant on both providers: objects one lacks, and the newest
/// snapshot of each kind on each (kinds from the signed manifests).
async fn compare_listings(t: &mut Watched, providers: &[Provider]) {
    let mut sets: Vec<Option<BTreeSet<String>>> = Vec::new();
    let mut wal: Option<Vec<(u64, chrono::DateTime<chrono::Utc>)>> = None;
    for (p, r) in providers.iter().zip(&t.tenant.replicated.replicas) {
        match r.list_meta("").await {
            Ok(l) => {
                if wal.is_none() {
                    let stored = l.iter().filter(|(k, _)| k.starts_with(bascule_core::wal::WAL) && !k.ends_with(".rec"));
                    wal = Some(stored.map(|(_, v)| *v).collect());
                }
                sets.push(Some(l.into_keys().filter(|k| k != layout::HEAD && !k.contains(".tmp")).collect()))
            }
            Err(e) => {
                tracing::warn!(tenant = %t.name, provider = %p.name, error = %e, "Cannot list");
                sets.push(None);
            }
        }
    }
    let all: BTreeSet<&String> = sets.iter().flatten().flatten().collect();
    for (i, p) in providers.iter().enumerate() {
        let Some(set) = &sets[i] else { continue };
        let missing = all.iter().filter(|k| !set.contains(k.as_str())).count();
        m::OBJECTS_MISSING.with_label_values(&[&t.name, &p.name]).set(missing as i64);
        t.per[i].view.objects_missing = Some(missing);
    }
    // kinds of snapshots not seen before
    for key in all.iter().filter(|k| k.ends_with(".manifest")) {
        let Some(name) = layout::manifest_name(key) else { continue };
        if t.snapshots.contains_key(name) {
            continue;
        }
        for (i, p) in providers.iter().enumerate() {
            if !sets[i].as_ref().is_some_and(|s| s.contains(key.as_str())) {
                continue;
            }
            let Ok(Some(b)) = t.tenant.replicated.replicas[i].get(key, Manifest::MAX_LEN).await else { continue };
            match t.tenant.open_manifest(name, &b) {
                Ok(man) => {
                    t.snapshots.insert(name.to_string(), (man.kind.to_string(), man.started_at, man.source_bytes));
                    break;
                }
                Err(_) => {
                    m::INTEGRITY_FAILURES.with_label_values(&[&t.name, &p.name, "bad_manifest"]).inc();
                }
            }
        }
    }
    for (i, p) in providers.iter().enumerate() {
        let Some(set) = &sets[i] else { continue };
        let mut newest: BTreeMap<&str, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
        for (name, (kind, at, _)) in &t.snapshots {
            if set.contains(&layout::manifest(name)) {
                let e = newest.entry(kind.as_str()).or_insert(*at);
                *e = (*e).max(*at);
            }
        }
        for (kind, at) in newest {
            m::LAST_SNAPSHOT.with_label_values(&[&t.name, &p.name, kind]).set(ts(at));
        }
    }
    project(t, wal.unwrap_or_default());
}

/// The projected recovery time: the last restore's throughput applied to
/// the newest base backup and the WAL since (or the newest export).
fn project(t: &mut Watched, wal: Vec<(u64, chrono::DateTime<chrono::Utc>)>) {
    let newest = |base: bool| {
        t.snapshots.values().filter(|(kind, _, _)| (kind == "basebackup") == base).max_by_key(|(_, at, _)| *at).map(|(_, at, b)| (*b, *at))
    };
    let bytes = crate::projection::bytes_to_restore(newest(true), newest(false).map(|(b, _)| b), wal.into_iter());
    t.projected = match (crate::projection::load(&t.state_dir, &t.name), bytes) {
        (Some(rate), Some(b)) => Some(crate::projection::keep(&t.state_dir, &t.name, &rate, b)),
        _ => None,
    };
    match t.projected {
        Some(p) => m::PROJECTED_RTO.with_label_values(&[&t.name]).set(p),
        None => drop(m::PROJECTED_RTO.remove_label_values(&[&t.name])),
    }
}
