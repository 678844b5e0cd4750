//! The monitor: every `interval`, each tenant's signed HEAD on each provider
//! (a conditional GET: when nothing changed, one small request that returns
//! no body), refusing bad signatures and rollbacks; when a HEAD changed, at
//! most every `deep_interval`, both providers' listings of the tenant, to
//! find objects held by one provider only and the newest snapshot of each
//! kind. Results go to the metrics and to `GET /v1/tenants`.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bascule_core::head::{Head, RollbackGuard};
use bascule_core::manifest::Manifest;
use bascule_core::provider::Provider;
use bascule_core::signed::Signed;
use bascule_core::{layout, Error};
use futures::StreamExt;
use serde::Serialize;

use super::metrics::{self as m, ts};
use crate::context::Controller;
use crate::state::fleet::{Fleet, Held, TENANT};
use crate::tenant::{HeadFetch, HeadRead, HeadState, Tenant};

/// What the API shows of one tenant on one provider.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
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

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TenantView {
    pub tenant: String,
    /// The replica that watches the tenant (with a shared state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
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
    /// The epoch of this process's lease on the tenant (0 without a shared
    /// state); none while another replica holds it.
    epoch: Option<i64>,
    /// The view last written to the shared state.
    kept: Option<blake3::Hash>,
    /// Something of its view may have changed since it was last kept.
    dirty: bool,
}

pub struct Monitor {
    /// The leases, with a shared state.
    fleet: Option<Arc<Fleet>>,
    /// The configured tenants, joined by line breaks (what the leases claim).
    names: Arc<String>,
    /// This process's name in `bascule_tenant_held`.
    replica: String,
    /// What the last round of leases gave ([`keep_leases`] renews them).
    held: Arc<RwLock<Held>>,
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
    pub fn new(c: &Controller, fleet: Option<Arc<Fleet>>) -> anyhow::Result<Monitor> {
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
                epoch: None,
                kept: None,
                dirty: true,
            });
        }
        let names = Arc::new(tenants.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join("\n"));
        if let Some(f) = &fleet {
            f.add_names(TENANT, &names)?;
        }
        let replica = fleet.as_ref().map_or_else(crate::os_user::hostname, |f| f.me().to_string());
        Ok(Monitor {
            fleet,
            names,
            replica,
            held: Default::default(),
            providers,
            tenants,
            concurrency: c.config.serve.concurrency,
            deep_interval: c.config.serve.deep_interval,
            view: Default::default(),
        })
    }

    /// Which tenants this process watches this cycle: all of them, or those
    /// its leases hold (renewed and claimed first). A tenant newly held is
    /// read afresh; one no longer held leaves this process's metrics.
    fn hold(&mut self, now: Instant) {
        let held = self.fleet.as_ref().map(|_| self.held.read().unwrap_or_else(|e| e.into_inner()).clone());
        let held = held.as_ref();
        let providers: Vec<String> = self.providers.iter().map(|p| p.name.clone()).collect();
        for t in &mut self.tenants {
            let holds = held.map_or(Some(0), |h| h.get(&t.name).filter(|(_, until)| *until > now).map(|(e, _)| *e));
            if holds == t.epoch {
                continue;
            }
            match holds {
                Some(_) => {
                    for p in &mut t.per {
                        p.etag = None;
                        p.head = None;
                    }
                    t.changed = true;
                    t.last_deep = None;
                    t.kept = None;
                    t.dirty = true;
                    m::TENANT_HELD.with_label_values(&[&t.name, &self.replica]).set(1);
                }
                None => forget(t, &self.replica, &providers),
            }
            t.epoch = holds;
        }
        m::TENANTS.set(self.tenants.iter().filter(|t| t.epoch.is_some()).count() as i64);
    }

    /// What the leases hold (valid until, by this process's clock).
    pub fn held(&self) -> Arc<RwLock<Held>> {
        self.held.clone()
    }

    /// The leases, with a shared state.
    pub fn fleet(&self) -> Option<&Fleet> {
        self.fleet.as_deref()
    }

    /// What [`keep_leases`] needs: the leases, where to publish what they
    /// hold, and how many tenants there are.
    pub fn leases(&self) -> Option<Leases> {
        self.fleet.as_ref().map(|f| Leases {
            fleet: f.clone(),
            held: self.held.clone(),
            names: self.names.clone(),
            total: self.tenants.len(),
        })
    }

    /// Writes each watched tenant's view that changed to the shared state,
    /// a thousand to a statement; a write refused means another replica took
    /// the tenant over.
    fn keep_views(&mut self) {
        let Some(f) = &self.fleet else { return };
        let providers: Vec<String> = self.providers.iter().map(|p| p.name.clone()).collect();
        let mut changed: Vec<(usize, String, i64)> = Vec::new();
        for (i, t) in self.tenants.iter_mut().enumerate() {
            let Some(epoch) = t.epoch else { continue };
            // a steady cycle (nothing read anew) serializes nothing
            if !t.dirty {
                continue;
            }
            // one line of JSON (line breaks inside strings are escaped)
            let view = serde_json::to_string(&tenant_view(t, Some(&self.replica))).unwrap_or_default();
            if t.kept != Some(blake3::hash(view.as_bytes())) {
                changed.push((i, view, epoch));
            } else {
                t.dirty = false;
            }
        }
        if changed.is_empty() {
            return;
        }
        let rows: Vec<(&str, String, i64)> = changed.iter().map(|(i, v, e)| (self.tenants[*i].name.as_str(), v.clone(), *e)).collect();
        let refused: BTreeSet<String> = match f.keep_views(&rows) {
            Ok(r) => r.into_iter().collect(),
            Err(e) => return tracing::error!(error = format!("{e:#}"), "Cannot write the tenants' views to the state store"),
        };
        for (i, view, epoch) in changed {
            let t = &mut self.tenants[i];
            if refused.contains(&t.name) {
                tracing::warn!(tenant = %t.name, epoch, "Another replica took this tenant over; leaving it");
                forget(t, &self.replica, &providers);
                t.epoch = None;
            } else {
                t.kept = Some(blake3::hash(view.as_bytes()));
                t.dirty = false;
            }
        }
    }

    /// One pass over every tenant this process watches.
    pub async fn cycle(&mut self) -> Cycle {
        let t0 = Instant::now();
        self.hold(t0);
        let providers = &self.providers;
        let deep_interval = self.deep_interval;
        // the futures made first (a closure inside the stream would make the
        // task's future not Send for every lifetime)
        let held = self.fleet.as_ref().map(|_| &*self.held);
        // 1. every watched tenant's HEADs, fetched and opened, many at once
        let watched: Vec<usize> = (0..self.tenants.len())
            .filter(|&i| self.tenants[i].epoch.is_some())
            // given back meanwhile (another replica joined): left to its new holder
            .filter(|&i| held.is_none_or(|h| h.read().unwrap_or_else(|e| e.into_inner()).contains_key(&self.tenants[i].name)))
            .collect();
        let tenants = &self.tenants;
        let fetches: Vec<_> = watched
            .iter()
            .map(|&i| async move {
                let t = &tenants[i];
                let mut out = Vec::with_capacity(providers.len());
                for p in 0..providers.len() {
                    out.push(t.tenant.fetch_head(p, t.per[p].etag.as_deref()).await);
                }
                (i, out)
            })
            .collect();
        let fetched: Vec<(usize, Vec<HeadFetch>)> = futures::stream::iter(fetches).buffer_unordered(self.concurrency).collect().await;
        // 2. their rollback guards, all in one call to the store
        let reads = guard_all(&self.tenants, providers, fetched);
        // 3. what they say, then the listings of those that changed, many at once
        let mut results: Vec<TenantCheck> = Vec::with_capacity(reads.len());
        let mut deep = Vec::new();
        for (i, reads) in reads {
            let t = &mut self.tenants[i];
            let (refused, per) = apply_heads(t, providers, reads);
            let listed = t.changed && t.last_deep.is_none_or(|d| d.elapsed() >= deep_interval);
            if listed {
                deep.push(i);
            }
            results.push((refused, per, listed));
        }
        // what the HEADs say is shared before the listings (a tenant just taken
        // over is watched again as soon as its HEADs are checked)
        self.keep_views();
        let providers = &self.providers;
        let deep_set: BTreeSet<usize> = deep.into_iter().collect();
        let listings: Vec<_> = self
            .tenants
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| deep_set.contains(i))
            .map(|(_, t)| async move {
                compare_listings(t, providers).await;
                t.dirty = true;
                t.changed = false;
                t.last_deep = Some(Instant::now());
            })
            .collect();
        futures::stream::iter(listings).buffer_unordered(self.concurrency).collect::<Vec<()>>().await;
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
        self.keep_views();
        let held_by = self.fleet.as_ref().map(|f| f.me());
        *self.view.write().expect("lock") = self.tenants.iter().filter(|t| t.epoch.is_some()).map(|t| tenant_view(t, held_by)).collect();
        c.took = t0.elapsed();
        m::CYCLE_SECONDS.set(c.took.as_secs_f64());
        m::LAST_CYCLE.set(ts(chrono::Utc::now()));
        c
    }
}

/// What keeps the tenant leases: their own connection to the state, where
/// to publish what they hold, the configured tenants.
pub struct Leases {
    pub fleet: Arc<Fleet>,
    pub held: Arc<RwLock<Held>>,
    pub names: Arc<String>,
    pub total: usize,
}

impl Leases {
    /// One round now (before the first cycle).
    pub fn balance(&self) -> anyhow::Result<()> {
        *self.held.write().unwrap_or_else(|e| e.into_inner()) = self.fleet.balance(TENANT, &self.names, self.total)?;
        Ok(())
    }
}

/// Keeps this replica's tenant leases, every third of the lease time and
/// whatever a monitor cycle takes: alive, renewed, given back above the fair
/// share, claimed up to it. When the state store cannot be reached, what was
/// held runs out by this process's clock, and the monitor stops watching it.
/// A tenant newly claimed wakes the monitor (`gained`), so that a killed
/// replica's tenants are read at once, not at the next interval.
pub async fn keep_leases(l: Leases, gained: Arc<tokio::sync::Notify>, cancel: tokio_util::sync::CancellationToken) {
    let Leases { fleet, held, names, total } = l;
    loop {
        let (f, names) = (fleet.clone(), names.clone());
        match tokio::task::spawn_blocking(move || f.balance(TENANT, &names, total)).await {
            Ok(Ok(h)) => {
                let mut old = held.write().unwrap_or_else(|e| e.into_inner());
                let new = h.keys().any(|k| !old.contains_key(k));
                *old = h;
                if new {
                    gained.notify_one();
                }
            }
            Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "Cannot renew the leases in the state store"),
            Err(_) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(fleet.lease() / 3) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

fn tenant_view(t: &Watched, held_by: Option<&str>) -> TenantView {
    TenantView {
        tenant: t.name.clone(),
        held_by: held_by.map(str::to_string),
        providers: t.per.iter().map(|p| p.view.clone()).collect(),
        projected_rto_seconds: t.projected,
    }
}

/// Another replica watches `t` now: its series leave this process's metrics.
fn forget(t: &mut Watched, replica: &str, providers: &[String]) {
    let mut kinds: BTreeSet<&str> = t.snapshots.values().map(|(k, _, _)| k.as_str()).collect();
    kinds.extend(["pg_dump", "command", "basebackup"]);
    m::forget_tenant(&t.name, replica, providers, &kinds.into_iter().collect::<Vec<_>>());
    for p in &mut t.per {
        p.etag = None;
        p.head = None;
        p.view = ProviderView { provider: p.view.provider.clone(), status: "held by another replica".into(), ..Default::default() };
    }
    t.kept = None;
    t.dirty = true;
}

/// Refusals, per provider (answered, HEAD changed), listings compared.
type TenantCheck = (usize, Vec<(bool, bool)>, bool);

/// Checks the opened HEADs of a cycle against their rollback guards in one
/// call to the store ([`RollbackGuard::accept_many`]); each fetch becomes
/// what a guarded read gives.
fn guard_all(tenants: &[Watched], providers: &[Provider], fetched: Vec<(usize, Vec<HeadFetch>)>) -> Vec<(usize, Vec<HeadRead>)> {
    let mut asks = Vec::new();
    for (i, per) in &fetched {
        for (p, f) in per.iter().enumerate() {
            if let HeadFetch::Opened(h, _) = f {
                asks.push((&*tenants[*i].tenant.guards[p], providers[p].name.as_str(), h));
            }
        }
    }
    let verdicts = RollbackGuard::accept_many(&asks);
    drop(asks);
    let mut verdicts: std::collections::VecDeque<Result<(), Error>> = match verdicts {
        Ok(v) => v.into(),
        // the store did not answer: no HEAD is taken as newer this cycle
        Err(e) => {
            tracing::error!(error = %e, "Cannot check the rollback marks");
            std::iter::repeat_with(|| Err(Error::Mark { name: "(cycle)".into(), reason: e.to_string() }))
                .take(fetched.iter().map(|(_, per)| per.iter().filter(|f| matches!(f, HeadFetch::Opened(..))).count()).sum())
                .collect()
        }
    };
    fetched
        .into_iter()
        .map(|(i, per)| {
            let reads = per
                .into_iter()
                .map(|f| match f {
                    HeadFetch::NotModified => HeadRead::NotModified,
                    HeadFetch::Absent => HeadRead::Read { state: HeadState::Absent, etag: None },
                    HeadFetch::Opened(h, etag) => match verdicts.pop_front().unwrap_or(Ok(())) {
                        Ok(()) => HeadRead::Read { state: HeadState::Valid(h), etag },
                        Err(e) => HeadRead::Read { state: HeadState::Refused(e), etag: None },
                    },
                    HeadFetch::Refused(e) => HeadRead::Read { state: HeadState::Refused(e), etag: None },
                    HeadFetch::Unreachable(e) => HeadRead::Unreachable(e),
                })
                .collect();
            (i, reads)
        })
        .collect()
}

/// What the tenant's HEAD on each provider said; returns the refusals and,
/// per provider, (answered, changed).
fn apply_heads(t: &mut Watched, providers: &[Provider], reads: Vec<HeadRead>) -> (usize, Vec<(bool, bool)>) {
    let mut refused = 0;
    let mut per_result = Vec::new();
    for ((i, p), read) in providers.iter().enumerate().zip(reads) {
        let st = &mut t.per[i];
        let mut changed = false;
        t.dirty |= !matches!(read, HeadRead::NotModified);
        let ok = match read {
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
            HeadRead::Read { state: HeadState::Refused(e @ Error::Mark { .. }), .. } => {
                // the marks could not be checked (the state store): not taken, read again next time
                st.view.status = format!("not checked: {e}");
                st.etag = None;
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
    (refused, per_result)
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
