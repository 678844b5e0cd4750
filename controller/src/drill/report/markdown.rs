//! A drill report as Markdown.
use std::fmt::Write;

use super::{secs, ts, Report, ReportStep};
use crate::model::Outcome;

pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Drill {} — {}: **{}**\n", r.drill, r.runbook, r.verdict);
    if !r.reasons.is_empty() {
        let _ = writeln!(o, "Why: {}\n", r.reasons.join("; "));
    }
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(o, "| RTO | {} |", r.rto.describe());
    let _ = writeln!(o, "| RPO | {} |", r.rpo.describe());
    if let Some(c) = &r.cut_at {
        let _ = writeln!(o, "| cut-over | {} |", ts(c));
    }
    if let Some(p) = &r.recovery_point {
        let _ = writeln!(o, "| recovery point | {} |", ts(p));
    }
    let _ = writeln!(o, "| mode | {} |", r.mode);
    let _ = writeln!(o, "| started | {} by {} on {} |", ts(&r.started_at), r.started_by, r.host);
    if let Some(f) = &r.finished_at {
        let _ = writeln!(o, "| finished | {} ({}) |", ts(f), r.status);
    }
    let _ = writeln!(o, "| runbook | `{}` (sha {}) |\n", r.runbook_file, &r.runbook_sha[..16.min(r.runbook_sha.len())]);
    let _ = writeln!(o, "## Steps\n\n| stage | step | kind | start | duration | attempts | outcome |\n|---|---|---|---|---|---|---|");
    for s in &r.steps {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |",
            s.stage,
            s.id,
            s.kind,
            s.started_at.format("%H:%M:%S"),
            secs(s.duration_seconds),
            s.attempts,
            s.outcome
        );
    }
    if let Some(e) = &r.evidence {
        let _ = writeln!(o, "\n## Evidence\n");
        let stopped = match (&e.cut_step, e.production_stopped) {
            (_, true) if r.mode == crate::model::Mode::Failover => "yes (a failover: production was down)".to_string(),
            (Some(c), true) => format!("yes, by step `{c}`"),
            _ => "no".to_string(),
        };
        let _ = writeln!(o, "* mode {}; production really stopped: {stopped}", r.mode);
        let _ = writeln!(o, "* RTO {}; RPO {}", r.rto.describe(), r.rpo.describe());
        for l in &e.recovered {
            let _ = writeln!(o, "* recovered — {l}");
        }
        for l in &e.checked {
            let _ = writeln!(o, "* checked — {l}");
        }
        for l in &e.readiness {
            let _ = writeln!(o, "* readiness — {}", l.trim());
        }
        for a in &e.approvals {
            let _ = writeln!(o, "* approval of `{}`: {} by {} at {}", a.step, if a.approved { "approved" } else { "rejected" }, a.by, a.at);
        }
        for p in &e.projected_rto {
            let _ =
                writeln!(o, "* projected RTO of {} now: {} ({} bytes to restore, as of {})", p.tenant, secs(p.seconds), p.bytes, ts(&p.at));
        }
        if let Some(h) = &e.audit_head {
            let _ = writeln!(o, "* audit log head: row {} hash `{}`", h.seq, h.hash);
        }
    }
    let failures: Vec<&ReportStep> = r.steps.iter().filter(|s| matches!(s.outcome, Outcome::Failed | Outcome::Tolerated)).collect();
    if !failures.is_empty() {
        let _ = writeln!(o, "\n## Failures");
        for s in failures {
            let _ = writeln!(o, "\n### {} ({})\n\n```\n{}\n```", s.id, s.outcome, s.output.replace("```", "'''"));
        }
    }
    o
}
