//! `drill plan`: the resolved plan of a runbook, without running anything.
use std::fmt::Write;

use humantime_serde::re::humantime::format_duration;

use super::{substitute, Loaded, Mode, RtoMarker, Step};

fn describe(s: &Step, l: &Loaded) -> String {
    let sub = |t: &str| substitute(t, &l.runbook.variables, &|name| format!("<secret {name}>"));
    let http = |h: &super::HttpStep| {
        format!(
            "{} {} → {}{}",
            h.method,
            sub(&h.url),
            h.status,
            h.body_contains.as_ref().map(|b| format!(" containing {b:?}")).unwrap_or_default()
        )
    };
    let sql = |q: &super::SqlStep| {
        format!(
            "{:?} on {}{}{}",
            sub(&q.query),
            sub(&q.dsn),
            q.expect.as_ref().map(|e| format!(" → {e:?}")).unwrap_or_default(),
            q.save_as.as_ref().map(|v| format!(" → ${{{v}}}")).unwrap_or_default()
        )
    };
    if let Some(c) = &s.shell {
        return format!("sh -c {:?}", sub(&c.command));
    }
    if let Some(h) = &s.http {
        return http(h);
    }
    if let Some(q) = &s.sql {
        return sql(q);
    }
    if let Some(w) = &s.wait_replicated {
        let wal = match (w.wal.is_empty(), sub(&w.wal)) {
            (true, _) => String::new(),
            (false, v) if v.is_empty() => format!(", through the WAL file {} (set while the drill runs)", w.wal),
            (false, v) => format!(", through WAL {v}"),
        };
        return format!("tenant {} on both providers, lag ≤ {}{wal}", sub(&w.tenant), format_duration(w.max_lag));
    }
    if let Some(r) = &s.restore {
        return match (&r.target, &r.pgdata) {
            (Some(t), _) => format!("tenant {} snapshot {} into {}", sub(&r.tenant), r.snapshot.as_deref().unwrap_or("latest"), sub(t)),
            (_, Some(d)) => format!(
                "tenant {} point in time {} into {}",
                sub(&r.tenant),
                r.at.as_deref().unwrap_or("latest"),
                sub(&d.to_string_lossy())
            ),
            _ => String::new(),
        };
    }
    if let Some(v) = &s.verify {
        let mut parts = Vec::new();
        if let Some(r) = &v.row_counts {
            parts.push(format!("row counts of {} = snapshot {} of {}", sub(&r.dsn), r.snapshot, sub(&r.tenant)));
        }
        parts.extend(v.sql.as_ref().map(sql));
        parts.extend(v.http.as_ref().map(http));
        parts.extend(v.heartbeat.as_ref().map(|h| format!("recovery point from the newest heartbeat of {}", sub(&h.dsn))));
        return parts.join("; ");
    }
    if let Some(a) = &s.approval {
        return format!("ask {:?}", sub(&a.prompt));
    }
    if let Some(z) = &s.sleep {
        return format_duration(z.duration).to_string();
    }
    String::new()
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
