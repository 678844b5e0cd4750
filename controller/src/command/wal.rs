//! The WAL archive of a tenant, without any key: which files each provider
//! holds, whether every record is signed and matches its file, gaps in the
//! segment sequence, timelines without their history file.
use std::collections::BTreeMap;

use std::process::ExitCode;

use bascule_core::signed::Signed;
use bascule_core::wal::{record_name, WalFileKind, WalName, WalRecord};
use futures::StreamExt;

use super::check::{Problem, ReadData};
use crate::command::TenantArg;
use crate::tenant::Tenant;

pub async fn main(a: TenantArg) -> anyhow::Result<ExitCode> {
    let (c, t) = a.open()?;
    let s = scan(&t, ReadData::None, c.config.restore.concurrency).await;
    print!("{}", render(&t.name, &s));
    Ok(if s.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Segments of one timeline.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    pub first: Option<String>,
    pub last: Option<String>,
    pub segments: u64,
    pub bytes: u64,
    pub has_history: bool,
    pub newest_archived_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Default)]
pub struct WalScan {
    pub timelines: BTreeMap<u32, Timeline>,
    /// Files whose record verified, per provider.
    pub per_provider: BTreeMap<String, u64>,
    pub files: usize,
    pub bytes_read: u64,
    pub problems: Vec<Problem>,
}

fn problem(problems: &mut Vec<Problem>, provider: &str, key: &str, what: String) {
    super::check::push(problems, provider, key, what);
}

pub async fn scan(tenant: &Tenant, read_data: ReadData, concurrency: usize) -> WalScan {
    let mut out = WalScan::default();
    let listings = tenant.wal_listings().await;
    let mut names: BTreeMap<String, WalName> = BTreeMap::new();
    for (p, l) in &listings {
        match l {
            Ok(l) => names.extend(l.keys().filter_map(|k| record_name(k)).map(|w| (w.name.clone(), w))),
            Err(e) => problem(&mut out.problems, p, "wal/ (listing)", format!("unreachable: {e}")),
        }
    }
    // an object no WAL name accounts for (planted, or left by an interrupted upload)
    let objects: std::collections::HashSet<String> = names.values().map(|w| w.object_key()).collect();
    for (p, l) in &listings {
        let Ok(l) = l else { continue };
        for key in l.keys() {
            let accounted = record_name(key).is_some() || objects.contains(key);
            if !accounted {
                problem(&mut out.problems, p, key, "stray object: no WAL record names it".into());
            }
        }
    }
    let mut order: Vec<WalName> = names.into_values().collect();
    order.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    out.files = order.len();

    // every copy of every record is checked, on each provider
    let checks = order.iter().flat_map(|w| (0..listings.len()).map(move |i| (w.clone(), i)));
    type Checked = (WalName, usize, Result<(WalRecord, u64), String>);
    let futs: Vec<_> = checks
        .map(|(w, i)| {
            let r = &tenant.replicated.replicas[i];
            let listing = listings[i].1.as_ref().ok();
            async move {
                let Some(listing) = listing else { return (w, i, Err(String::new())) };
                if !listing.contains_key(&w.record_key()) {
                    return (w, i, Err("missing on this provider".into()));
                }
                let res = async {
                    let bytes = r.get(&w.record_key(), WalRecord::MAX_LEN).await.map_err(|e| e.to_string())?.ok_or("record vanished")?;
                    let rec = tenant.open_wal_record(&w, &bytes).map_err(|e| format!("refused: {e}"))?;
                    match listing.get(&rec.object.key) {
                        None => return Err("record present but its file is missing".to_string()),
                        Some(len) if *len != rec.object.len => return Err(format!("file length {len}, record says {}", rec.object.len)),
                        Some(_) => {}
                    }
                    let mut read = 0;
                    if read_data.reads(&rec.object.key) {
                        let b = r.get_ref(&rec.object).await.map_err(|e| e.to_string())?.ok_or("file vanished")?;
                        rec.object.check(&r.provider, &b).map_err(|e| e.to_string())?;
                        read = b.len() as u64;
                    }
                    Ok((rec, read))
                }
                .await;
                (w, i, res)
            }
        })
        .collect();
    let results: Vec<Checked> = futures::stream::iter(futs).buffered(concurrency).collect().await;

    let mut records: BTreeMap<String, WalRecord> = BTreeMap::new();
    for (w, i, res) in results {
        let provider = &tenant.replicated.replicas[i].provider;
        match res {
            Ok((rec, read)) => {
                out.bytes_read += read;
                *out.per_provider.entry(provider.clone()).or_default() += 1;
                if let Some(other) = records.get(&w.name) {
                    if other.object.hash != rec.object.hash {
                        problem(&mut out.problems, provider, &w.record_key(), "differs from the other provider's copy".into());
                    }
                } else {
                    records.insert(w.name.clone(), rec);
                }
            }
            Err(e) if e.is_empty() => {}
            Err(e) => problem(&mut out.problems, provider, &w.record_key(), e),
        }
    }

    // segment continuity and timeline history, from verified records
    let mut prev: Option<(u32, u64, String)> = None;
    for w in &order {
        let Some(rec) = records.get(&w.name) else { continue };
        let tl = out.timelines.entry(w.timeline).or_default();
        tl.newest_archived_at = tl.newest_archived_at.max(Some(rec.archived_at));
        match w.kind {
            WalFileKind::History => tl.has_history = true,
            WalFileKind::Segment => {
                let n = w.segment_number(rec.size);
                if let Some((ptl, pn, pname)) = &prev {
                    if *ptl == w.timeline && n > pn + 1 {
                        problem(
                            &mut out.problems,
                            "(archive)",
                            &w.object_key(),
                            format!("gap on timeline {}: {} segment(s) missing after {pname}", w.timeline, n - pn - 1),
                        );
                    }
                }
                prev = Some((w.timeline, n, w.name.clone()));
                tl.first.get_or_insert_with(|| w.name.clone());
                tl.last = Some(w.name.clone());
                tl.segments += 1;
                tl.bytes += rec.size;
            }
            WalFileKind::Partial | WalFileKind::Backup => {}
        }
    }
    let first_tl = out.timelines.keys().next().copied();
    for (tl, t) in &out.timelines {
        if Some(*tl) != first_tl && *tl > 1 && !t.has_history {
            problem(
                &mut out.problems,
                "(archive)",
                &format!("wal/{tl:08X}/{tl:08X}.history"),
                format!("timeline {tl} has no history file"),
            );
        }
    }
    out.problems.sort();
    out
}

/// `bascule-controller wal`: the archive, one line per timeline.
pub fn render(tenant: &str, s: &WalScan) -> String {
    let mut out = format!("tenant {tenant}: {} WAL file(s)\n", s.files);
    for (tl, t) in &s.timelines {
        out.push_str(&format!(
            "timeline {tl}: {} segment(s), {} MiB, {} .. {}, newest archived {}{}\n",
            t.segments,
            t.bytes >> 20,
            t.first.as_deref().unwrap_or("-"),
            t.last.as_deref().unwrap_or("-"),
            t.newest_archived_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or("-".into()),
            if t.has_history { ", history file present" } else { "" }
        ));
    }
    for (p, n) in &s.per_provider {
        out.push_str(&format!("provider {p}: {n} file(s) verified\n"));
    }
    for p in &s.problems {
        out.push_str(&format!("PROBLEM {p}\n"));
    }
    out
}
