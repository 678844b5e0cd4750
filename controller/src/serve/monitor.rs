//! The monitor: every `interval`, each tenant's signed HEAD on each provider
//! (a conditional GET: when nothing changed, one small request that returns
//! no body), refusing bad signatures and rollbacks; when a HEAD changed, at
//! most every `deep_interval`, both providers' listings of the tenant, to
//! find objects held by one provider only and the newest snapshot of each
//! kind. Results go to the metrics and to `GET /v1/tenants`.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bascule_core::head::{Head, RollbackGuard};
use bascule_core::keys::TrustedKey;
use bascule_core::manifest::Manifest;
use bascule_core::provider::{Fetched, Provider};
use bascule_core::signed::{self, Kind};
use bascule_core::{layout, Error};
use futures::StreamExt;
use serde::Serialize;

use super::metrics::{self as m, ts};
use crate::config::ControllerConfig;
use crate::tenant::open_head;

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
    pub restore_test: Option<bascule_core::restore::RestoreTestSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantView {
    pub tenant: String,
    pub providers: Vec<ProviderView>,
}

struct PerProvider {
    etag: Option<String>,
    head: Option<Head>,
    guard: RollbackGuard,
    view: ProviderView,
}

struct Watched {
    name: String,
    keys: Vec<TrustedKey>,
    per: Vec<PerProvider>,
    /// Snapshot name → (kind, start time), from verified manifests.
    snapshots: HashMap<String, (String, chrono::DateTime<chrono::Utc>)>,
    changed: bool,
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
    pub fn new(cfg: &ControllerConfig, config_file: &Path) -> anyhow::Result<Monitor> {
        let providers: Vec<Provider> = cfg.providers.iter().map(|p| Provider::build(p, config_file)).collect::<Result<_, _>>()?;
        std::fs::create_dir_all(&cfg.state_dir)?;
        let mut tenants = Vec::new();
        for t in &cfg.tenants {
            let mut per = Vec::new();
            for p in &providers {
                per.push(PerProvider {
                    etag: None,
                    head: None,
                    guard: RollbackGuard::load(&cfg.state_dir, &format!("{}@{}", t.name, p.name))?,
                    view: ProviderView { provider: p.name.clone(), status: "not read yet".into(), ..Default::default() },
                });
            }
            tenants.push(Watched {
                name: t.name.clone(),
                keys: t.verify_keys.clone(),
                per,
                snapshots: HashMap::new(),
                changed: false,
                last_deep: None,
            });
        }
        m::TENANTS.set(tenants.len() as i64);
        Ok(Monitor {
            providers,
            tenants,
            concurrency: cfg.serve.concurrency,
            deep_interval: cfg.serve.deep_interval,
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
            .map(|t| TenantView { tenant: t.name.clone(), providers: t.per.iter().map(|p| p.view.clone()).collect() })
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
    let now = chrono::Utc::now();
    for (p, st) in providers.iter().zip(t.per.iter_mut()) {
        let replica = p.tenant(&t.name);
        let mut changed = false;
        let ok = match replica.get_if_changed(layout::HEAD, st.etag.as_deref()).await {
            Ok(Fetched::NotModified) => true,
            Ok(Fetched::Absent) => {
                st.head = None;
                st.etag = None;
                st.view.status = "absent".into();
                true
            }
            Ok(Fetched::Changed { bytes, etag }) => {
                match open_head(&t.name, &t.keys, &bytes).and_then(|h| st.guard.check(&p.name, &h).map(|_| h)) {
                    Ok(h) => {
                        if let Err(e) = st.guard.observe(h.sequence) {
                            tracing::error!(tenant = %t.name, error = %e, "Cannot record the HEAD sequence seen");
                        }
                        changed = st.head.as_ref().map(|o| o.sequence) != Some(h.sequence);
                        st.head = Some(h);
                        st.etag = etag;
                        st.view.status = "ok".into();
                    }
                    Err(e) => {
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
                    }
                }
                true
            }
            Err(e) => {
                st.view.status = format!("unreachable: {e}");
                false
            }
        };
        if let Some(h) = &st.head {
            st.view.sequence = Some(h.sequence);
            st.view.latest_snapshot = h.latest_snapshot.clone();
            st.view.latest_wal = h.latest_wal.clone();
            st.view.agent_time = Some(h.agent_time);
            st.view.restore_test = h.restore_test.clone();
            if let Some(rt) = &h.restore_test {
                m::RESTORE_TEST_PASSED.with_label_values(&[&t.name]).set(rt.passed as i64);
                if let Some(at) = rt.last_success_at {
                    let g = m::RESTORE_TEST_LAST_SUCCESS.with_label_values(&[&t.name]);
                    g.set(g.get().max(ts(at)));
                }
            }
            if h.latest_wal.is_some() {
                m::LAST_WAL.with_label_values(&[&t.name, &p.name]).set(ts(h.agent_time));
                let lag = (now - h.agent_time).num_milliseconds().max(0) as f64 / 1000.0;
                m::REPLICATION_LAG.with_label_values(&[&t.name, &p.name]).set(lag);
            }
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

/// Lists the tenant on both providers: objects one lacks, and the newest
/// snapshot of each kind on each (kinds from the signed manifests).
async fn compare_listings(t: &mut Watched, providers: &[Provider]) {
    let mut sets: Vec<Option<BTreeSet<String>>> = Vec::new();
    for p in providers {
        match p.tenant(&t.name).list("").await {
            Ok(l) => sets.push(Some(l.into_keys().filter(|k| k != layout::HEAD && !k.contains(".tmp")).collect())),
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
            let Ok(Some(b)) = p.tenant(&t.name).get(key).await else { continue };
            match signed::open_valid::<Manifest>(Kind::Manifest, &b, &t.keys, key, |m| m.started_at) {
                Ok((man, _)) if man.tenant == t.name => {
                    t.snapshots.insert(name.to_string(), (man.kind.to_string(), man.started_at));
                    break;
                }
                Ok(_) | Err(_) => {
                    m::INTEGRITY_FAILURES.with_label_values(&[&t.name, &p.name, "bad_manifest"]).inc();
                }
            }
        }
    }
    for (i, p) in providers.iter().enumerate() {
        let Some(set) = &sets[i] else { continue };
        let mut newest: BTreeMap<&str, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
        for (name, (kind, at)) in &t.snapshots {
            if set.contains(&layout::manifest(name)) {
                let e = newest.entry(kind.as_str()).or_insert(*at);
                *e = (*e).max(*at);
            }
        }
        for (kind, at) in newest {
            m::LAST_SNAPSHOT.with_label_values(&[&t.name, &p.name, kind]).set(ts(at));
        }
    }
}
