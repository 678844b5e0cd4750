//! `drill plan`: the resolved plan of a runbook, without running anything.
use std::fmt::Write;

use humantime_serde::re::humantime::format_duration;

use super::{substitute, Loaded, Mode, RtoMarker, Step};

/// What a step will do, its variables filled in (secrets by name only).
fn describe(s: &Step, l: &Loaded) -> String {
    let vars = l.defaults();
    let sub = |t: &str| substitute(t, &|n| vars.get(n).cloned(), &|name| Some(format!("<secret {name}>")));
    s.kind.describe(&sub)
}

/// The plan as text: stages, steps (those of `mode` only), their limits and markers.
pub fn render(l: &Loaded, mode: Mode) -> String {
    let r = &l.runbook;
    let mut out = String::new();
    let _ = writeln!(out, "runbook {} ({}), sha {}", r.name, l.file.display(), &l.hash[..16]);
    if !r.description.is_empty() {
        let _ = writeln!(out, "  {}", r.description.trim());
    }
    let _ = writeln!(
        out,
        "mode {mode:?}; targets: RTO {}{}",
        format_duration(r.targets.rto),
        r.targets.rpo.map(|p| format!(", RPO {}", format_duration(p))).unwrap_or_default()
    );
    let line = |out: &mut String, s: &Step| {
        let mut flags = Vec::new();
        if let Some(t) = s.timeout {
            flags.push(format!("timeout {}", format_duration(t)));
        }
        if s.retries > 0 {
            flags.push(format!("{} retr{} from {}", s.retries, if s.retries == 1 { "y" } else { "ies" }, format_duration(s.backoff)));
        }
        if !s.critical {
            flags.push("not critical".into());
        }
        match s.rto {
            Some(RtoMarker::Start) => flags.push("RTO starts".into()),
            Some(RtoMarker::End) => flags.push("RTO ends".into()),
            None => {}
        }
        let _ = writeln!(
            out,
            "    {:<20} {:<16} {}{}",
            s.id,
            s.kind(),
            describe(s, l),
            if flags.is_empty() { String::new() } else { format!("  [{}]", flags.join(", ")) }
        );
    };
    for (i, st) in r.stages.iter().enumerate() {
        let _ = writeln!(out, "stage {} {} (up to {} at once)", i + 1, st.name, st.parallel.unwrap_or(r.parallel));
        for s in st.steps.iter().filter(|s| s.modes.contains(&mode)) {
            line(&mut out, s);
        }
    }
    if !r.on_failure.is_empty() {
        let _ = writeln!(out, "on failure, in order:");
        for s in r.on_failure.iter().filter(|s| s.modes.contains(&mode)) {
            line(&mut out, s);
        }
    }
    out
}
