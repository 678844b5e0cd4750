//! `report verify`: checks a signed drill report offline, against the
//! controller's verify key, without any configuration or provider: what an
//! auditor does with the copy a provider holds.
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bascule_core::keys::VerifyKey;
use bascule_core::signed::{Kind, Signed};

use crate::drill::report::Report;

#[derive(clap::Subcommand)]
pub enum ReportCommand {
    /// Check a signed drill report (the JSON a provider holds under
    /// reports/drills/…): its signature by the controller's key, then print
    /// what it attests. Exit status 0 when it verifies, 1 otherwise.
    Verify {
        /// The signed report file.
        file: PathBuf,
        /// The controller's verify key (`bascule-controller verify-key` prints it).
        #[arg(long)]
        key: VerifyKey,
    },
}

pub fn main(c: ReportCommand) -> anyhow::Result<ExitCode> {
    let ReportCommand::Verify { file, key } = c;
    let mut bytes = Vec::new();
    std::fs::File::open(&file)
        .with_context(|| file.display().to_string())?
        .take(Report::MAX_LEN + 1)
        .read_to_end(&mut bytes)
        .with_context(|| file.display().to_string())?;
    if bytes.len() as u64 > Report::MAX_LEN {
        println!("NOT VERIFIED {}: over {} bytes, no report is that long", file.display(), Report::MAX_LEN);
        return Ok(ExitCode::FAILURE);
    }
    let r: Report = match bascule_core::signed::open(Kind::Report, &bytes, &[key], &file.display().to_string()) {
        Ok((r, _)) => r,
        Err(e) => {
            println!("NOT VERIFIED {}: {e}", file.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    println!("VERIFIED: signed by {key}");
    println!("{}", r.summary());
    println!(
        "  runbook {} (sha {}), started {} by {} on {}, {} step(s)",
        r.runbook_file,
        r.runbook_sha,
        r.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        r.started_by,
        r.host,
        r.steps.len()
    );
    if let Some(e) = &r.evidence {
        println!("  production really stopped: {}", if e.production_stopped { "yes" } else { "no" });
        for a in &e.approvals {
            println!("  approval of {}: {} by {} at {}", a.step, if a.approved { "approved" } else { "rejected" }, a.by, a.at);
        }
        if let Some(h) = &e.audit_head {
            println!("  audit log head: row {} hash {}", h.seq, h.hash);
        }
    }
    for s in &r.steps {
        println!("  {:<12} {:<26} {:<16} {:>8.1}s  {:?}", s.stage, s.id, s.kind, s.duration_seconds, s.outcome);
    }
    Ok(ExitCode::SUCCESS)
}
