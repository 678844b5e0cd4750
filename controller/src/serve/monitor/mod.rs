//! The monitor: every `interval`, each tenant's signed HEAD on each provider
//! (a conditional GET: when nothing changed, one small request that returns
//! no body), refusing bad signatures and rollbacks; when a HEAD changed, at
//! most every `deep_interval`, both providers' listings of the tenant, to
//! find objects held by one provider only and the newest snapshot of each
//! kind. Results go to the metrics and to `GET /v1/tenants`.
mod heads;
mod leases;
mod listings;

use heads::{apply_heads, guard_all};
pub use leases::{keep_leases, Leases};
use listings::compare_listings;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use super::metrics::{self as m, ts};
use crate::context::Controller;
use crate::state::fleet::{Fleet, Held, TENANT};
use crate::tenant::{HeadFetch, Tenant};

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

/// What the last valid HEAD said is in `view` (its sequence, snapshot,
/// WAL, time and restore test): the HEAD itself is not kept.
struct PerProvider {
    etag: Option<String>,
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
    projected: Option<f64>,
    last_deep: Option<Instant>,
    /// The epoch of this process's lease on the tenant (0 without a shared
    /// state).
    epoch: i64,
    /// The view last written to the shared state.
    kept: Option<blake3::Hash>,
    /// Something of its view may have changed since it was last kept.
    dirty: bool,
}

/// Tenants read per round of a cycle.
const ROUND: usize = 2000;

pub struct Monitor {
    c: Arc<Controller>,
    /// The leases, with a shared state.
    fleet: Option<Arc<Fleet>>,
    /// The configured tenants, joined by line breaks (what the leases claim).
    names: Arc<String>,
    /// This process's name in `bascule_tenant_held`.
    replica: String,
    /// What the last round of leases gave ([`keep_leases`] renews them).
    held: Arc<RwLock<Held>>,
    /// The tenants this process watches (those its leases hold), by their
    /// place in the configuration; one given back is dropped, so that a
    /// replica weighs its share of the fleet, not the whole of it.
    tenants: BTreeMap<usize, Watched>,
    /// The longest round of the last cycle.
    last_round: Duration,
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
    pub fn new(c: Arc<Controller>, fleet: Option<Arc<Fleet>>) -> anyhow::Result<Monitor> {
        let names = Arc::new(c.config.tenants.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join("\n"));
        if let Some(f) = &fleet {
            f.add_names(TENANT, &names)?;
        }
        let replica = fleet.as_ref().map_or_else(crate::os_user::hostname, |f| f.me().to_string());
        let mut m = Monitor {
            c: c.clone(),
            fleet,
            names,
            replica,
            held: Default::default(),
            tenants: BTreeMap::new(),
            last_round: Duration::ZERO,
            view: Default::default(),
        };
        // alone, every tenant is watched from the start (an error is the configuration's)
        if m.fleet.is_none() {
            for i in 0..c.config.tenants.len() {
                let w = m.watch(i, 0)?;
                m.tenants.insert(i, w);
            }
        }
        Ok(m)
    }

    /// The providers' names, as the metrics label them.
    fn provider_names(&self) -> Vec<String> {
        self.c.providers().iter().map(|p| p.name.clone()).collect()
    }

    /// Tenant `i` of the configuration, watched afresh under lease `epoch`.
    fn watch(&self, i: usize, epoch: i64) -> anyhow::Result<Watched> {
        let name = &self.c.config.tenants[i].name;
        let per = self
            .c
            .providers()
            .iter()
            .map(|p| PerProvider {
                etag: None,
                view: ProviderView { provider: p.name.clone(), status: "not read yet".into(), ..Default::default() },
            })
            .collect();
        let tenant = self.c.tenant(name)?;
        m::TENANT_HELD.with_label_values(&[name, &self.replica]).set(1);
        Ok(Watched {
            name: name.clone(),
            tenant,
            per,
            snapshots: HashMap::new(),
            changed: true,
            last_deep: None,
            projected: None,
            epoch,
            kept: None,
            dirty: true,
        })
    }

    /// Which tenants this process watches this cycle: those its leases hold
    /// (renewed and claimed first). A tenant newly held (or held at a new
    /// epoch) is read afresh; one no longer held leaves this process's
    /// metrics and memory.
    fn hold(&mut self, now: Instant) {
        let Some(held) = self.fleet.as_ref().map(|_| self.held.clone()) else {
            return m::TENANTS.set(self.tenants.len() as i64);
        };
        let held = held.read().unwrap_or_else(|e| e.into_inner());
        let providers = self.provider_names();
        let c = self.c.clone();
        for (i, t) in c.config.tenants.iter().enumerate() {
            let holds = held.get(&t.name).filter(|(_, until)| *until > now).map(|(e, _)| *e);
            if holds == self.tenants.get(&i).map(|w| w.epoch) {
                continue;
            }
            if let Some(w) = self.tenants.remove(&i) {
                forget(&w, &self.replica, &providers);
            }
            let Some(epoch) = holds else { continue };
            match self.watch(i, epoch) {
                Ok(w) => drop(self.tenants.insert(i, w)),
                Err(e) => tracing::error!(tenant = %t.name, error = format!("{e:#}"), "Cannot watch this tenant"),
            }
        }
        m::TENANTS.set(self.tenants.len() as i64);
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
            total: self.c.config.tenants.len(),
        })
    }

    /// Writes each watched tenant's view that changed to the shared state,
    /// a thousand to a statement; a write refused means another replica took
    /// the tenant over.
    fn keep_views(&mut self) {
        let Some(f) = &self.fleet else { return };
        let providers = self.provider_names();
        let mut changed: Vec<(usize, String, i64)> = Vec::new();
        for (&i, t) in self.tenants.iter_mut() {
            let epoch = t.epoch;
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
        let rows: Vec<(&str, String, i64)> = changed.iter().map(|(i, v, e)| (self.tenants[i].name.as_str(), v.clone(), *e)).collect();
        let refused: BTreeSet<String> = match f.keep_views(&rows) {
            Ok(r) => r.into_iter().collect(),
            Err(e) => return tracing::error!(error = format!("{e:#}"), "Cannot write the tenants' views to the state store"),
        };
        for (i, view, epoch) in changed {
            if refused.contains(&self.tenants[&i].name) {
                let t = self.tenants.remove(&i).expect("watched");
                tracing::warn!(tenant = %t.name, epoch, "Another replica took this tenant over; leaving it");
                forget(&t, &self.replica, &providers);
            } else {
                let t = self.tenants.get_mut(&i).expect("watched");
                t.kept = Some(blake3::hash(view.as_bytes()));
                t.dirty = false;
            }
        }
    }

    /// The next round of a cycle: up to [`ROUND`] tenants this process
    /// holds and has not read yet this cycle at their lease's epoch, those
    /// never read (just gained) first.
    fn next_round(&self, read: &mut HashMap<usize, i64>) -> Vec<usize> {
        let mut round: Vec<usize> = self.tenants.iter().filter(|(i, t)| read.get(i) != Some(&t.epoch)).map(|(&i, _)| i).collect();
        // stable: in the configuration's order otherwise
        round.sort_by_key(|i| self.tenants[i].kept.is_some());
        round.truncate(ROUND);
        for &i in &round {
            read.insert(i, self.tenants[&i].epoch);
        }
        round
    }

    /// The HEADs of tenants `round` on every provider, fetched and opened,
    /// many at once.
    async fn fetch_heads(&self, round: &[usize]) -> Vec<(usize, Vec<HeadFetch>)> {
        let (tenants, providers) = (&self.tenants, self.c.providers());
        // the futures made first (a closure inside the stream would make the
        // task's future not Send for every lifetime)
        let fetches: Vec<_> = round
            .iter()
            .map(|&i| async move {
                let t = &tenants[&i];
                let mut out = Vec::with_capacity(providers.len());
                for p in 0..providers.len() {
                    out.push(t.tenant.fetch_head(p, t.per[p].etag.as_deref()).await);
                }
                (i, out)
            })
            .collect();
        futures::stream::iter(fetches).buffer_unordered(self.c.config.serve.concurrency).collect().await
    }

    /// The HEADs of every held tenant not read yet in this cycle, in rounds
    /// (the leases looked at again before each, so that tenants gained
    /// meanwhile are read, and those given back are not read for nothing),
    /// each round's views shared at once. Those whose HEAD changed join
    /// `deep`, to be listed.
    async fn read_heads(&mut self, p: &mut Pass) {
        loop {
            self.hold(Instant::now());
            let round = self.next_round(&mut p.read);
            if round.is_empty() {
                return;
            }
            let r0 = Instant::now();
            let fetched = self.fetch_heads(&round).await;
            // their rollback guards, all in one call to the store
            let reads = guard_all(&self.tenants, self.c.providers(), fetched);
            for (i, reads) in reads {
                let t = self.tenants.get_mut(&i).expect("watched");
                let (refused, per) = apply_heads(t, self.c.providers(), reads);
                let listed = t.changed && t.last_deep.is_none_or(|d| d.elapsed() >= self.c.config.serve.deep_interval);
                if listed {
                    p.deep.insert(i);
                }
                p.results.push((refused, per, listed));
            }
            // what the HEADs say is shared before the listings (a tenant just
            // taken over is watched again as soon as its HEADs are checked)
            self.keep_views();
            p.round_took(r0);
        }
    }

    /// The listings of up to [`ROUND`] tenants of `deep` compared (a
    /// listing's future is large: 35,000 of them at once would weigh); false
    /// when none was left to list.
    async fn list_round(&mut self, p: &mut Pass) -> bool {
        let next: Vec<usize> = p.deep.iter().copied().take(ROUND).collect();
        if next.is_empty() {
            return false;
        }
        let r0 = Instant::now();
        let (providers, state_dir) = (self.c.providers(), self.c.config.state_dir.as_path());
        // one given back since its HEADs were read is no longer here: left to its new holder
        let round: Vec<_> = self
            .tenants
            .iter_mut()
            .filter(|(i, _)| next.binary_search(i).is_ok())
            .map(|(_, t)| async move {
                compare_listings(t, providers, state_dir).await;
                t.dirty = true;
                t.changed = false;
                t.last_deep = Some(Instant::now());
            })
            .collect();
        for i in &next {
            p.deep.remove(i);
        }
        futures::stream::iter(round).buffer_unordered(self.c.config.serve.concurrency).collect::<Vec<()>>().await;
        p.round_took(r0);
        true
    }

    /// One pass over every tenant this process watches: their HEADs, then
    /// the listings of those whose HEAD changed, a round of listings at a
    /// time with the HEADs of tenants gained meanwhile read between them (a
    /// tenant taken over waits for one round, not for the whole cycle).
    pub async fn cycle(&mut self) -> Cycle {
        let t0 = Instant::now();
        let mut p = Pass::after(self.last_round);
        loop {
            self.read_heads(&mut p).await;
            if !self.list_round(&mut p).await {
                break;
            }
        }
        let providers = self.c.providers();
        let mut c = Cycle { tenants: p.results.len(), ..Default::default() };
        // a provider is up when it answered at least one request, or was asked nothing
        let mut answered = vec![(0usize, 0usize); providers.len()];
        for (refused, per, deep) in &p.results {
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
        // with a shared state, the API reads every replica's views from it
        if self.fleet.is_none() {
            *self.view.write().expect("lock") = self.tenants.values().map(|t| tenant_view(t, None)).collect();
        }
        c.took = t0.elapsed();
        m::CYCLE_SECONDS.set(c.took.as_secs_f64());
        self.last_round = p.longest;
        m::ROUND_SECONDS.set(p.longest.as_secs_f64());
        m::LAST_CYCLE.set(ts(chrono::Utc::now()));
        c
    }
}

/// What a cycle has done so far.
struct Pass {
    /// The epoch each tenant was read at.
    read: HashMap<usize, i64>,
    results: Vec<TenantCheck>,
    /// Tenants to list.
    deep: BTreeSet<usize>,
    /// The longest round of this cycle.
    longest: Duration,
    /// The longest round of the last cycle, shown until this one has a longer one.
    last: Duration,
}

impl Pass {
    /// A cycle's pass, after one whose longest round was `last`.
    fn after(last: Duration) -> Pass {
        Pass { read: HashMap::new(), results: Vec::new(), deep: BTreeSet::new(), longest: Duration::ZERO, last }
    }

    fn round_took(&mut self, r0: Instant) {
        self.longest = self.longest.max(r0.elapsed());
        m::ROUND_SECONDS.set(self.longest.max(self.last).as_secs_f64());
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
fn forget(t: &Watched, replica: &str, providers: &[String]) {
    let mut kinds: BTreeSet<&str> = t.snapshots.values().map(|(k, _, _)| k.as_str()).collect();
    kinds.extend(["pg_dump", "command", "basebackup"]);
    m::forget_tenant(&t.name, replica, providers, &kinds.into_iter().collect::<Vec<_>>());
}

/// Refusals, per provider (answered, HEAD changed), listings compared.
type TenantCheck = (usize, Vec<(bool, bool)>, bool);
