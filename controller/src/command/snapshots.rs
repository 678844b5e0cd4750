//! `snapshots`: what a tenant has, and where.
use std::process::ExitCode;

use crate::command::TenantArg;
use crate::tenant::Tenant;

pub async fn main(a: TenantArg) -> anyhow::Result<ExitCode> {
    let (c, t) = a.open()?;
    let (table, newest) = listed(&t).await?;
    print!("{table}");
    println!("{}", projected(&c.config.state_dir, &t, newest).await);
    Ok(ExitCode::SUCCESS)
}

/// The newest base backup (bytes, start) and the newest export's bytes.
type Newest = (Option<(u64, chrono::DateTime<chrono::Utc>)>, Option<u64>);

/// The projected recovery time line.
async fn projected(state_dir: &std::path::Path, t: &Tenant, (base, export): Newest) -> String {
    let Some(rate) = crate::projection::load(state_dir, &t.name) else {
        return "projected RTO: not known yet (no restore of this tenant measured its throughput)".into();
    };
    let mut wal = Vec::new();
    for r in &t.replicated.replicas {
        if let Ok(l) = r.list_meta(bascule_core::wal::WAL).await {
            wal = l.into_iter().filter(|(k, _)| !k.ends_with(".rec")).map(|(_, v)| v).collect();
            break;
        }
    }
    match crate::projection::bytes_to_restore(base, export, wal.into_iter()) {
        Some(b) => format!(
            "projected RTO: {:.0} s to restore {} at {}/s (the last restore's throughput, {})",
            crate::projection::keep(state_dir, &t.name, &rate, b),
            human(b),
            human(rate.bytes_per_second() as u64),
            rate.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => "projected RTO: nothing to restore yet".into(),
    }
}

pub async fn run(tenant: &Tenant) -> anyhow::Result<String> {
    Ok(listed(tenant).await?.0)
}

async fn listed(tenant: &Tenant) -> anyhow::Result<(String, Newest)> {
    let mut newest: Newest = (None, None);
    let mut newest_export_at = None;
    tenant.heads().await;
    let listings = tenant.listings().await;
    let mut out = String::new();
    let providers: Vec<_> = listings.iter().map(|(p, _)| p.clone()).collect();
    out.push_str(&format!(
        "{:<33} {:<8} {:<8} {:>12} {:>12} {:>12}  {}  {}\n",
        "SNAPSHOT",
        "KIND",
        "JOB",
        "SOURCE",
        "STORED",
        "NEW",
        providers.join(" "),
        "SEALED TO"
    ));
    for (p, l) in &listings {
        if let Err(e) = l {
            out.push_str(&format!("! provider {p} unreachable: {e}\n"));
        }
    }
    for name in Tenant::snapshot_names(&listings) {
        let presence: Vec<String> = listings
            .iter()
            .map(|(p, l)| {
                let here = l.as_ref().map(|l| l.contains_key(&bascule_core::layout::manifest(&name))).unwrap_or(false);
                format!("{p}:{}", if here { "yes" } else { "NO" })
            })
            .collect();
        let got = tenant.manifest(&name).await;
        if let Ok((m, _)) = &got {
            if m.kind == bascule_core::manifest::SnapshotKind::Basebackup {
                if newest.0.is_none_or(|(_, at)| m.started_at > at) {
                    newest.0 = Some((m.source_bytes, m.started_at));
                }
            } else if newest_export_at.is_none_or(|at| m.started_at > at) {
                newest_export_at = Some(m.started_at);
                newest.1 = Some(m.source_bytes);
            }
        }
        match got {
            Ok((m, _)) => out.push_str(&format!(
                "{:<33} {:<8} {:<8} {:>12} {:>12} {:>12}  {}  {}\n",
                m.name,
                m.kind.to_string(),
                m.job,
                human(m.source_bytes),
                human(m.stored_bytes),
                human(m.new_bytes),
                presence.join(" "),
                m.recipients.iter().map(|r| short_recipient(r)).collect::<Vec<_>>().join(",")
            )),
            Err(e) => out.push_str(&format!("{name:<33} REFUSED: {e}\n")),
        }
    }
    Ok((out, newest))
}

/// `age1abcd…wxyz`: enough to tell recipients apart in a table.
fn short_recipient(r: &str) -> String {
    if r.len() <= 16 {
        return r.to_string();
    }
    format!("{}…{}", &r[..8], &r[r.len() - 4..])
}

pub fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}
