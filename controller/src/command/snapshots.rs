//! `snapshots`: what a tenant has, and where.
use std::process::ExitCode;

use crate::command::TenantArg;
use crate::tenant::Tenant;

pub async fn main(a: TenantArg) -> anyhow::Result<ExitCode> {
    let (_, t) = a.open()?;
    print!("{}", run(&t).await?);
    Ok(ExitCode::SUCCESS)
}

pub async fn run(tenant: &Tenant) -> anyhow::Result<String> {
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
        match tenant.manifest(&name).await {
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
    Ok(out)
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
