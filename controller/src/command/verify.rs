//! `verify`: without any key, proves each snapshot is signed, complete and
//! present on both providers; with `read_data`, re-hashes every ciphertext.
use bascule_core::manifest::ObjectRef;
use bascule_core::provider::check_ciphertext;
use bascule_core::{layout, manifest::Manifest};
use futures::StreamExt;

use crate::tenant::{HeadState, Tenant};

/// One thing wrong, precisely.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub provider: String,
    pub key: String,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "provider {}: {}: {}", self.provider, self.key, self.what)
    }
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub snapshots: usize,
    /// WAL files (each checked on every provider).
    pub wal_files: usize,
    pub objects_checked: usize,
    pub bytes_read: u64,
    pub problems: Vec<Problem>,
}

/// Which objects' ciphertext is read back and hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadData {
    None,
    All,
    /// Slice `slice` of `slices`: the objects whose key hashes to it. A
    /// scheduled verify reads one slice a day, a different one each day, so
    /// that `slices` days cover everything.
    Sample {
        slice: u64,
        slices: u64,
    },
}

impl ReadData {
    pub fn reads(self, key: &str) -> bool {
        match self {
            ReadData::None => false,
            ReadData::All => true,
            ReadData::Sample { slice, slices } => {
                let h = blake3::hash(key.as_bytes());
                u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) % slices.max(1) == slice % slices.max(1)
            }
        }
    }

    pub fn any(self) -> bool {
        self != ReadData::None
    }

    /// Today's slice of `slices` (days since the epoch, modulo).
    pub fn today(slices: u64) -> ReadData {
        let day = chrono::Utc::now().timestamp().max(0) as u64 / 86_400;
        ReadData::Sample { slice: day % slices.max(1), slices: slices.max(1) }
    }
}

pub async fn run(tenant: &mut Tenant, read_data: ReadData, concurrency: usize) -> anyhow::Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut problems = Vec::new();
    let heads = tenant.heads().await?;
    let mut valid = Vec::new();
    for (p, h) in &heads {
        match h {
            HeadState::Valid(h) => valid.push((p.clone(), h.clone())),
            HeadState::Absent => report_push(&mut problems, p, layout::HEAD, "missing".into()),
            HeadState::Refused(e) => report_push(&mut problems, p, layout::HEAD, format!("refused: {e}")),
        }
    }
    // WAL shipping moves each provider's HEAD on its own, so sequences
    // differ; a provider is behind when its HEAD names an older snapshot
    if let Some(newest) = valid.iter().map(|(_, h)| h).max_by_key(|h| h.sequence) {
        for (p, h) in &valid {
            if h.latest_snapshot < newest.latest_snapshot {
                report_push(
                    &mut problems,
                    p,
                    layout::HEAD,
                    format!(
                        "names snapshot {} but the newest is {}: the provider missed commits; run `bascule-agent sync`",
                        h.latest_snapshot.as_deref().unwrap_or("none"),
                        newest.latest_snapshot.as_deref().unwrap_or("none")
                    ),
                );
            }
        }
    }

    let listings = tenant.listings().await;
    for (p, l) in &listings {
        if let Err(e) = l {
            report_push(&mut problems, p, "(listing)", format!("unreachable: {e}"));
        }
    }
    let names = Tenant::snapshot_names(&listings);
    report.snapshots = names.len();
    let mut to_read: Vec<(usize, ObjectRef)> = Vec::new();
    for name in &names {
        let mkey = layout::manifest(name);
        // every copy of the manifest must carry a valid signature
        let mut good: Option<Manifest> = None;
        for (i, r) in tenant.replicated.replicas.iter().enumerate() {
            let Ok(listing) = &listings[i].1 else { continue };
            if !listing.contains_key(&mkey) {
                report_push(&mut problems, &r.provider, &mkey, "manifest missing".into());
                continue;
            }
            match r.get(&mkey).await {
                Ok(Some(b)) => match tenant.open_manifest(name, &b) {
                    Ok(m) => good = good.or(Some(m)),
                    Err(e) => report_push(&mut problems, &r.provider, &mkey, format!("refused: {e}")),
                },
                Ok(None) => report_push(&mut problems, &r.provider, &mkey, "manifest missing".into()),
                Err(e) => report_push(&mut problems, &r.provider, &mkey, e.to_string()),
            }
        }
        let Some(m) = good else { continue };
        for o in m.all_objects() {
            for (i, r) in tenant.replicated.replicas.iter().enumerate() {
                let Ok(listing) = &listings[i].1 else { continue };
                match listing.get(&o.key) {
                    None => report_push(&mut problems, &r.provider, &o.key, format!("missing (needed by snapshot {name})")),
                    Some(len) if *len != o.len => {
                        report_push(&mut problems, &r.provider, &o.key, format!("length {len}, manifest says {}", o.len))
                    }
                    Some(_) => {
                        if read_data.reads(&o.key) {
                            to_read.push((i, o.clone()));
                        }
                    }
                }
            }
            report.objects_checked += 1;
        }
    }
    if read_data.any() {
        // Objects shared by several snapshots are read once per provider.
        to_read.sort_by(|a, b| (a.0, &a.1.key).cmp(&(b.0, &b.1.key)));
        to_read.dedup_by(|a, b| a.0 == b.0 && a.1.key == b.1.key);
        // futures made before the stream, so that the whole verify is Send (for `serve`)
        let reads: Vec<_> = to_read
            .into_iter()
            .map(|(i, o)| {
                let r = &tenant.replicated.replicas[i];
                async move {
                    let res = match r.get(&o.key).await {
                        Ok(Some(b)) => check_ciphertext(&o, &r.provider, &b).map(|_| b.len() as u64).map_err(|e| e.to_string()),
                        Ok(None) => Err("missing".into()),
                        Err(e) => Err(e.to_string()),
                    };
                    (r.provider.clone(), o.key, res)
                }
            })
            .collect();
        let results: Vec<_> = futures::stream::iter(reads).buffer_unordered(concurrency).collect().await;
        for (p, k, res) in results {
            match res {
                Ok(n) => report.bytes_read += n,
                Err(e) => report_push(&mut problems, &p, &k, e),
            }
        }
    }
    let wal = super::wal::scan(tenant, read_data, concurrency).await;
    report.wal_files = wal.files;
    report.bytes_read += wal.bytes_read;
    problems.extend(wal.problems);
    problems.sort();
    report.problems = problems;
    Ok(report)
}

fn report_push(problems: &mut Vec<Problem>, provider: &str, key: &str, what: String) {
    problems.push(Problem { provider: provider.into(), key: key.into(), what });
}

#[cfg(test)]
mod tests {
    use super::ReadData;

    #[test]
    fn daily_slices_partition_the_objects() {
        let keys: Vec<String> = (0..5000).map(|i| format!("packs/{i:02x}/{i:064x}")).collect();
        let slices = 100;
        let mut per_slice = vec![0usize; slices as usize];
        for k in &keys {
            let hits: Vec<u64> = (0..slices).filter(|&s| ReadData::Sample { slice: s, slices }.reads(k)).collect();
            assert_eq!(hits.len(), 1, "{k} is in exactly one slice");
            per_slice[hits[0] as usize] += 1;
        }
        // about 50 each: none empty, none a crowd
        assert!(per_slice.iter().all(|&n| (15..=100).contains(&n)), "{per_slice:?}");
        assert!(keys.iter().all(|k| ReadData::All.reads(k) && !ReadData::None.reads(k)));
        assert!(matches!(ReadData::today(100), ReadData::Sample { slice, slices: 100 } if slice < 100));
    }
}
