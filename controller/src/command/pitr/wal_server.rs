//! The WAL server of a point-in-time restore: serves verified plaintext WAL
//! to `wal-fetch` over a unix socket inside the data directory, fetching
//! ahead of the server's requests from either provider. The identity stays
//! in this process's memory.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::bail;
use bascule_core::keys::Identities;
use bascule_core::wal::{record_name, WalFileKind, WalName};
use bascule_core::{hash_hex, seal};
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::tenant::Tenant;

/// How many WAL files are fetched ahead of the server's requests.
const PREFETCH: usize = 4;

type Fetch = Shared<BoxFuture<'static, Result<Arc<Vec<u8>>, String>>>;

/// Serves verified plaintext WAL to `wal-fetch`, fetching ahead.
pub(super) struct WalServer {
    tenant: Arc<Tenant>,
    ids: Arc<Identities>,
    /// Every file either provider has a record for, in archive order.
    order: Vec<WalName>,
    position: HashMap<String, usize>,
    inflight: Mutex<HashMap<String, Fetch>>,
    served: Mutex<Served>,
}

/// What the server handed over, and what it was asked for and did not have.
#[derive(Debug, Default, Clone)]
pub(super) struct Served {
    pub files: u64,
    pub bytes: u64,
    /// The newest segment handed over.
    pub newest: Option<WalName>,
    /// Segments asked for that the archive lacks, in the order asked (the
    /// last is normally the one after the end of the archive).
    pub missing: Vec<WalName>,
}

impl WalServer {
    pub(super) async fn new(tenant: Arc<Tenant>, ids: Arc<Identities>) -> anyhow::Result<WalServer> {
        let mut names: BTreeMap<String, WalName> = BTreeMap::new();
        let mut reachable = 0;
        for (p, l) in tenant.wal_listings().await {
            match l {
                Ok(l) => {
                    reachable += 1;
                    names.extend(l.keys().filter_map(|k| record_name(k)).map(|w| (w.name.clone(), w)));
                }
                Err(e) => tracing::warn!(provider = %p, error = %e, "Provider unreachable; WAL comes from the other"),
            }
        }
        if reachable == 0 {
            bail!("no provider is reachable to fetch WAL from");
        }
        let mut order: Vec<WalName> = names.into_values().collect();
        order.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        let position = order.iter().enumerate().map(|(i, w)| (w.name.clone(), i)).collect();
        tracing::info!(files = order.len(), "WAL archive listed");
        Ok(WalServer { tenant, ids, order, position, inflight: Mutex::default(), served: Mutex::default() })
    }

    pub(super) fn served(&self) -> Served {
        self.served.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The newest segment any provider has a record for.
    pub(super) fn newest_listed(&self) -> Option<&WalName> {
        self.order.iter().rev().find(|w| w.kind == WalFileKind::Segment)
    }

    fn fetch(self: &Arc<Self>, i: usize) -> Fetch {
        let w = self.order[i].clone();
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = inflight.get(&w.name) {
            return f.clone();
        }
        let this = self.clone();
        // spawned now, so that a prefetch runs before anyone awaits it
        let task = tokio::spawn(async move {
            let (rec, _) = this.tenant.wal_record(&w, i).await.map_err(|e| e.to_string())?;
            let o = rec.object.clone();
            let (plain, _) = this
                .tenant
                .replicated
                .get_checked(&o.key, o.len, i, |p, b| {
                    o.check(p, &b)?;
                    let plain = tokio::task::block_in_place(|| seal::open(&b, &this.ids, rec.size as usize, &o.key, &rec.recipients))?;
                    let h = hash_hex(&plain);
                    if plain.len() as u64 != rec.size || h != rec.plain_hash {
                        return Err(bascule_core::Error::PlaintextHash { key: o.key.clone(), expected: rec.plain_hash.clone(), actual: h });
                    }
                    Ok(plain)
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(plain))
        });
        let f = async move { task.await.map_err(|e| e.to_string())? }.boxed().shared();
        inflight.insert(self.order[i].name.clone(), f.clone());
        f
    }

    /// The plaintext of `name`, `None` when the archive has no such file.
    async fn get(self: &Arc<Self>, name: &str) -> Result<Option<Arc<Vec<u8>>>, String> {
        let Some(&i) = self.position.get(name) else {
            if let Some(w) = WalName::parse(name).filter(|w| w.kind == WalFileKind::Segment) {
                self.served.lock().unwrap_or_else(|e| e.into_inner()).missing.push(w);
            }
            return Ok(None);
        };
        // fetch the next segments of the same timeline while this one is replayed
        let w = &self.order[i];
        if w.kind == WalFileKind::Segment {
            let ahead = self.order[i + 1..]
                .iter()
                .enumerate()
                .filter(|(_, n)| n.kind == WalFileKind::Segment && n.timeline == w.timeline)
                .take(PREFETCH);
            for (k, _) in ahead {
                drop(self.fetch(i + 1 + k));
            }
        }
        let got = self.fetch(i).await;
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        let plain = got?;
        let mut s = self.served.lock().unwrap_or_else(|e| e.into_inner());
        s.files += 1;
        s.bytes += plain.len() as u64;
        if w.kind == WalFileKind::Segment && s.newest.as_ref().is_none_or(|n| n.order_key() < w.order_key()) {
            s.newest = Some(w.clone());
        }
        Ok(Some(plain))
    }

    pub(super) async fn serve(self: Arc<Self>, listener: tokio::net::UnixListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let this = self.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                if tokio::io::BufReader::new(r).read_line(&mut line).await.is_err() {
                    return;
                }
                let name = line.trim();
                let _ = match this.get(name).await {
                    Ok(Some(plain)) => {
                        tracing::info!(wal = name, "WAL file served");
                        match w.write_all(format!("OK {}\n", plain.len()).as_bytes()).await {
                            Ok(()) => w.write_all(&plain).await,
                            Err(e) => Err(e),
                        }
                    }
                    Ok(None) => w.write_all(b"MISSING\n").await,
                    Err(e) => {
                        tracing::error!(wal = name, error = %e, "No good copy of a WAL file: recovery stops here");
                        w.write_all(format!("ERROR {}\n", e.replace('\n', " ")).as_bytes()).await
                    }
                };
            });
        }
    }
}
