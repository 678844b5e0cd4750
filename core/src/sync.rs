//! Bringing every provider up to the union of what the providers hold, by
//! copying ciphertext and signed objects. Needs no customer key: every copied
//! byte is checked against a signed manifest (or is a signed object itself)
//! before it is written.
use std::collections::{BTreeMap, BTreeSet};

use crate::head::Head;
use crate::keys::TrustedKey;
use crate::layout;
use crate::manifest::Manifest;
use crate::provider::Replicated;
use crate::signed::Signed;
use crate::{Error, Result};

#[derive(Debug, Default)]
pub struct SyncReport {
    /// (provider, key, bytes) copied to that provider.
    pub copied: Vec<(String, String, u64)>,
    /// Providers that could not be listed or written, with the reason.
    pub failed: BTreeMap<String, String>,
}

impl SyncReport {
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Makes every provider hold every manifest any provider holds (with all its
/// objects), and the newest HEAD. With `dry_run`, only reports what it would copy.
pub async fn sync(rep: &Replicated, tenant: &str, trusted: &[TrustedKey], dry_run: bool) -> Result<SyncReport> {
    let mut report = SyncReport::default();
    let n = rep.replicas.len();
    // what each provider holds (None: provider unreachable)
    let mut holds: Vec<Option<BTreeMap<String, u64>>> = Vec::with_capacity(n);
    for r in &rep.replicas {
        let listing = async {
            let mut all = r.list(layout::SNAPSHOTS).await?;
            all.extend(r.list(layout::PACKS).await?);
            Ok::<_, Error>(all)
        };
        match listing.await {
            Ok(l) => holds.push(Some(l)),
            Err(e) => {
                report.failed.insert(r.provider.clone(), e.to_string());
                holds.push(None);
            }
        }
    }
    let manifests: BTreeSet<String> =
        holds.iter().flatten().flat_map(|h| h.keys().filter(|k| layout::manifest_name(k).is_some()).cloned()).collect();

    for mkey in &manifests {
        let ((bytes, manifest), _) = rep
            .get_checked(mkey, Manifest::MAX_LEN, 0, |_, b| <Manifest as Signed>::open(&b, trusted, tenant, mkey).map(|m| (b, m)))
            .await?;
        for (i, r) in rep.replicas.iter().enumerate() {
            let Some(held) = holds[i].as_mut() else { continue };
            if report.failed.contains_key(&r.provider) {
                continue;
            }
            let mut objects: Vec<_> = manifest.all_objects().filter(|o| held.get(&o.key) != Some(&o.len)).cloned().collect();
            let need_manifest = !held.contains_key(mkey);
            if objects.is_empty() && !need_manifest {
                continue;
            }
            for o in objects.drain(..) {
                if !dry_run {
                    let start = (i + 1) % n; // prefer another provider as the source
                    let (good, _) = rep.get_ref_checked(&o, start).await?;
                    if let Err(e) = r.put(&o.key, good).await {
                        report.failed.insert(r.provider.clone(), e.to_string());
                        break;
                    }
                }
                held.insert(o.key.clone(), o.len);
                report.copied.push((r.provider.clone(), o.key.clone(), o.len));
            }
            if need_manifest && !report.failed.contains_key(&r.provider) {
                if !dry_run {
                    if let Err(e) = r.put(mkey, bytes.clone()).await {
                        report.failed.insert(r.provider.clone(), e.to_string());
                        continue;
                    }
                }
                held.insert(mkey.clone(), bytes.len() as u64);
                report.copied.push((r.provider.clone(), mkey.clone(), bytes.len() as u64));
            }
        }
    }

    // HEAD: the highest valid sequence wins everywhere.
    let mut heads = Vec::with_capacity(n);
    for (i, r) in rep.replicas.iter().enumerate() {
        if holds[i].is_none() {
            heads.push(None);
            continue;
        }
        let h = match r.get(layout::HEAD, Head::MAX_LEN).await {
            Ok(Some(b)) => Head::open(&b, trusted, tenant, layout::HEAD).ok().map(|h| (h.sequence, b)),
            _ => None,
        };
        heads.push(h);
    }
    if let Some((best_seq, best)) = heads.iter().flatten().max_by_key(|(s, _)| *s).cloned() {
        for (i, r) in rep.replicas.iter().enumerate() {
            if holds[i].is_none() || report.failed.contains_key(&r.provider) {
                continue;
            }
            if heads[i].as_ref().map(|(s, _)| *s) < Some(best_seq) {
                if !dry_run {
                    if let Err(e) = r.put(layout::HEAD, best.clone()).await {
                        report.failed.insert(r.provider.clone(), e.to_string());
                        continue;
                    }
                }
                report.copied.push((r.provider.clone(), layout::HEAD.into(), best.len() as u64));
            }
        }
    }
    Ok(report)
}
