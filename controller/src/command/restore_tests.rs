//! `restore-tests`: the on-site restore tests a tenant's agent ran, from
//! their signed results on the providers (no key needed; no data in them).
use std::process::ExitCode;

use bascule_core::layout;
use bascule_core::restore_test::RestoreTestResult;
use bascule_core::signed::Signed;

use crate::command::TenantArg;
use crate::tenant::Tenant;

pub async fn main(a: TenantArg) -> anyhow::Result<ExitCode> {
    let (_, t) = a.open()?;
    let results = list(&t).await?;
    print(&results);
    let newest_ok = results.iter().rev().find_map(|r| r.as_ref().ok()).is_none_or(|r| r.passed);
    Ok(if newest_ok && results.iter().all(|r| r.is_ok()) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Every result any provider holds, oldest first; one that does not verify
/// on any provider is returned as an error line.
pub async fn list(t: &Tenant) -> anyhow::Result<Vec<Result<RestoreTestResult, String>>> {
    // key → the providers that list it
    let mut keys: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    let mut listed = 0;
    for r in &t.replicated.replicas {
        if let Ok(l) = r.list(layout::RESTORE_TESTS).await {
            for k in l.into_keys() {
                keys.entry(k).or_default().push(r.provider.clone());
            }
            listed += 1;
        }
    }
    anyhow::ensure!(listed > 0, "tenant {}: no provider could be listed", t.name);
    let mut out = Vec::new();
    for (key, on) in keys {
        let got =
            t.replicated.get_checked(&key, RestoreTestResult::MAX_LEN, 0, |_, b| RestoreTestResult::open(&b, &t.keys, &t.name, &key)).await;
        out.push(got.map(|(r, _)| r).map_err(|e| format!("{key} (listed by {}): {e}", on.join(", "))));
    }
    Ok(out)
}

pub fn print(results: &[Result<RestoreTestResult, String>]) {
    println!("{:<22} {:<10} {:<34} {:<6} {:>7} {:>10} {:>8}  NOTE", "TESTED AT", "JOB", "SNAPSHOT", "RESULT", "TABLES", "ROWS", "SECONDS");
    for r in results {
        match r {
            Ok(r) => println!(
                "{:<22} {:<10} {:<34} {:<6} {:>7} {:>10} {:>8.1}  {}",
                r.finished_at.format("%Y-%m-%d %H:%M:%SZ"),
                r.job,
                r.snapshot,
                if r.passed { "PASS" } else { "FAIL" },
                r.tables,
                r.rows,
                (r.finished_at - r.started_at).num_milliseconds() as f64 / 1000.0,
                r.failure.as_deref().unwrap_or(&r.host)
            ),
            Err(e) => println!("REFUSED {e}"),
        }
    }
}
