//! `drill plan`: the resolved plan of a runbook, without running anything.
use std::fmt::Write;

use humantime_serde::re::humantime::format_duration;

use super::template::DsnTemplate;
use super::vars::{references, shell_reads, step_strings};
use super::{substitute, Loaded, Mode, RtoMarker, Step};

/// What a step will do, its variables filled in (secrets by name only).
fn describe(s: &Step, l: &Loaded) -> String {
    let vars = l.defaults();
    let sub = |t: &str| substitute(t, &|n| vars.get(n).cloned(), &|name| Some(format!("<secret {name}>")));
    s.kind.describe(&sub)
}

/// Where each variable goes: (variable, field path, how).
pub fn placements(l: &Loaded) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (path, text) in step_strings(&l.text) {
        let last = path.rsplit('.').next().unwrap_or_default().to_string();
        if path.ends_with(".shell.command") {
            for v in shell_reads(&text).into_iter().filter(|v| l.runbook.variables.contains_key(v)) {
                out.push((v.clone(), path.clone(), format!("the command's environment (\"${v}\")")));
            }
            continue;
        }
        let dsn = (path.ends_with(".dsn") || path.ends_with(".target")).then(|| DsnTemplate::parse(&text).ok()).flatten();
        if let Some(d) = dsn {
            for (v, field) in d.filled().into_iter().filter(|(v, _)| !v.starts_with("secret.")) {
                out.push((v.to_string(), path.clone(), format!("DSN field {field}, quoted")));
            }
            continue;
        }
        for v in references(&text).into_iter().filter(|v| !v.starts_with("secret.")) {
            let how = if path.contains(".sql.params[") {
                let n: usize = last.rsplit('[').next().and_then(|n| n.trim_end_matches(']').parse().ok()).unwrap_or(0);
                format!("bind parameter ${}", n + 1)
            } else if path.ends_with(".url") {
                "the URL, percent-encoded".to_string()
            } else if path.contains(".env.") {
                format!("environment variable {last}")
            } else if path.contains(".headers.") {
                format!("header {last}")
            } else {
                "a value".to_string()
            };
            out.push((v.to_string(), path.clone(), how));
        }
    }
    out
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
    if !r.variables.is_empty() {
        let _ = writeln!(out, "variables (data, never code), and where each goes:");
        let places = placements(l);
        for (name, v) in &r.variables {
            let pattern = v.pattern.as_ref().map(|p| format!("  (must match {:?})", p.text)).unwrap_or_default();
            let _ = writeln!(out, "  {name} = {:?}{pattern}", v.default);
            for (_, path, how) in places.iter().filter(|(n, _, _)| n == name) {
                let _ = writeln!(out, "    → {path}: {how}");
            }
        }
    }
    out
}
