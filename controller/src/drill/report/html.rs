//! A drill report as one self-contained HTML page: the verdict, RTO and
//! RPO gauges against their targets, a timeline of the steps (SVG) and the
//! failures with their output.
use std::fmt::Write;
use std::time::Duration;

use super::{secs, ts, Measure, Report};
use crate::drill::progress::hms;
use crate::model::Outcome;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn color(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Passed => "#2e7d32",
        Outcome::Failed => "#c62828",
        Outcome::Tolerated => "#ef6c00",
        Outcome::Skipped => "#9e9e9e",
    }
}

/// The steps against time, with the RTO window and, when it falls within
/// the chart, the RTO target line.
fn timeline(r: &Report) -> String {
    let (w, left, row) = (900.0, 190.0, 22.0);
    let t0 = r.started_at;
    let end = r.steps.iter().map(|s| s.finished_at).chain(r.finished_at).max().unwrap_or(t0);
    let span = ((end - t0).num_milliseconds() as f64 / 1000.0).max(1.0);
    let rto_start = r.cut_at.map(|c| (c - t0).num_milliseconds() as f64 / 1000.0);
    let target_at = rto_start.zip(r.rto.target_seconds).map(|(s, t)| s + t);
    let scale_end = match target_at {
        Some(t) if t <= span * 1.5 => t.max(span),
        _ => span,
    };
    let x = |sec: f64| left + (w - left - 20.0) * (sec / scale_end);
    let h = 50.0 + row * r.steps.len() as f64 + 30.0;
    let tick = |sec: f64| if span < 120.0 { format!("{sec:.1} s") } else { hms(Duration::from_secs_f64(sec)) };
    let mut o = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="timeline of the steps">"#
    );
    // time axis
    for i in 0..=5 {
        let sec = scale_end * i as f64 / 5.0;
        let _ = write!(
            o,
            r##"<line x1="{x}" y1="35" x2="{x}" y2="{y2}" stroke="#e0e0e0"/><text x="{x}" y="30" font-size="11" text-anchor="middle" fill="#555">{t}</text>"##,
            x = x(sec),
            y2 = h - 25.0,
            t = tick(sec)
        );
    }
    for (i, s) in r.steps.iter().enumerate() {
        let y = 42.0 + row * i as f64;
        let a = (s.started_at - t0).num_milliseconds() as f64 / 1000.0;
        let bw = (x(a + s.duration_seconds) - x(a)).max(2.0);
        let _ = write!(
            o,
            r##"<text x="{tx}" y="{ty}" font-size="12" text-anchor="end" fill="#222">{id}</text><rect x="{rx}" y="{y}" width="{bw}" height="{bh}" rx="3" fill="{c}"><title>{id}: {outcome}, {d}</title></rect>"##,
            tx = left - 8.0,
            ty = y + 13.0,
            id = esc(&s.id),
            rx = x(a),
            bh = row - 6.0,
            c = color(s.outcome),
            outcome = esc(s.outcome.as_str()),
            d = secs(s.duration_seconds)
        );
    }
    let bottom = h - 25.0;
    if let (Some(s), Some(m)) = (rto_start, r.rto.measured_seconds) {
        let _ = write!(
            o,
            r##"<line x1="{a}" y1="{bottom}" x2="{b}" y2="{bottom}" stroke="#1565c0" stroke-width="4"/><text x="{b}" y="{ty}" font-size="11" fill="#1565c0" text-anchor="end">RTO {m}</text>"##,
            a = x(s),
            b = x(s + m),
            ty = bottom + 16.0,
            m = secs(m)
        );
    }
    match target_at {
        Some(t) if t <= scale_end => {
            let _ = write!(
                o,
                r##"<line x1="{x}" y1="35" x2="{x}" y2="{bottom}" stroke="#c62828" stroke-dasharray="6 4" stroke-width="2"/><text x="{x}" y="{ty}" font-size="11" fill="#c62828" text-anchor="end">RTO target</text>"##,
                x = x(t),
                ty = bottom + 16.0
            );
        }
        Some(t) => {
            let _ = write!(
                o,
                r##"<text x="{x}" y="{ty}" font-size="11" fill="#c62828" text-anchor="end">RTO target at {t} → (off the chart: {n:.0}× the drill's length)</text>"##,
                x = w - 20.0,
                ty = 12.0,
                t = hms(Duration::from_secs_f64(t)),
                n = t / span
            );
        }
        None => {}
    }
    o.push_str("</svg>");
    o
}

/// `12 %`, `0.35 %`, `0.0021 %`: enough digits to tell it from zero.
fn percent(p: f64) -> String {
    if p >= 10.0 || p == 0.0 {
        format!("{p:.0} %")
    } else {
        let digits = (-(p.log10().floor()) as usize + 1).min(8);
        format!("{p:.digits$} %")
    }
}

/// How much of its target a measure used, as a bar.
fn gauge(name: &str, m: &Measure) -> String {
    let (Some(v), Some(t)) = (m.measured_seconds, m.target_seconds) else {
        return format!(r#"<div class="gauge"><b>{name}</b> {}</div>"#, esc(&m.describe()));
    };
    let pct = 100.0 * v / t.max(0.001);
    let c = if v <= t { "#2e7d32" } else { "#c62828" };
    format!(
        r##"<div class="gauge"><b>{name}</b> {desc}<svg width="600" height="18" role="img" aria-label="{name} against its target"><rect x="0" y="3" width="600" height="12" fill="#eceff1"/><rect x="0" y="3" width="{bw:.1}" height="12" fill="{c}"/><line x1="{tl:.1}" y1="0" x2="{tl:.1}" y2="18" stroke="#c62828" stroke-width="2"/></svg> {pct} of the target</div>"##,
        pct = percent(pct),
        desc = esc(&m.describe()),
        bw = ((pct.min(120.0) / 120.0) * 600.0).max(1.0),
        tl = (100.0 / 120.0) * 600.0
    )
}

pub fn page(r: &Report) -> String {
    let pass = r.passed();
    let mut rows = String::new();
    for s in &r.steps {
        let _ = write!(
            rows,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="o" style="color:{}">{}</td></tr>"#,
            esc(&s.stage),
            esc(&s.id),
            esc(&s.kind),
            s.started_at.format("%H:%M:%S%.3f"),
            secs(s.duration_seconds),
            s.attempts,
            color(s.outcome),
            esc(s.outcome.as_str())
        );
    }
    let mut failures = String::new();
    for s in r.steps.iter().filter(|s| matches!(s.outcome, Outcome::Failed | Outcome::Tolerated)) {
        let _ = write!(failures, "<h3>{} <small>({})</small></h3><pre>{}</pre>", esc(&s.id), esc(s.outcome.as_str()), esc(&s.output));
    }
    if !failures.is_empty() {
        failures = format!("<h2>Failures</h2>{failures}");
    }
    let point = |label: &str, t: &Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| format!("<tr><th>{label}</th><td>{}</td></tr>", ts(&t))).unwrap_or_default()
    };
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Drill {id} — {rb}: {verdict}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 960px; color: #222; }}
.verdict {{ font-size: 2.2em; font-weight: bold; padding: .3em .6em; border-radius: 6px; display: inline-block; color: white; background: {vc}; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ padding: .25em .8em; border-bottom: 1px solid #e0e0e0; text-align: left; }}
.gauge {{ margin: .6em 0; }} .gauge svg {{ display: block; margin: .2em 0; }}
pre {{ background: #f5f5f5; padding: .8em; overflow-x: auto; white-space: pre-wrap; }}
small {{ color: #666; }}
</style></head><body>
<h1>Drill {id}: {rb}</h1>
<p><span class="verdict" id="verdict">{verdict}</span> {why}</p>
{rto}{rpo}
<table>{cut}{rp}
<tr><th>mode</th><td>{mode}</td></tr>
<tr><th>started</th><td>{started} by {by} on {host}</td></tr>
<tr><th>finished</th><td>{finished} ({status})</td></tr>
<tr><th>runbook</th><td><code>{file}</code> <small>sha {sha}</small></td></tr>
</table>
<h2>Timeline</h2>
{svg}
<h2>Steps</h2>
<table><tr><th>stage</th><th>step</th><th>kind</th><th>start</th><th>duration</th><th>attempts</th><th>outcome</th></tr>{rows}</table>
{failures}
<p><small>bascule drill report, format {format}. The JSON form of this report is signed by the controller and stored on both providers.</small></p>
</body></html>
"#,
        id = r.drill,
        rb = esc(&r.runbook),
        verdict = r.verdict,
        vc = if pass { "#2e7d32" } else { "#c62828" },
        why = esc(&r.reasons.join("; ")),
        rto = gauge("RTO", &r.rto),
        rpo = gauge("RPO", &r.rpo),
        cut = point("cut-over", &r.cut_at),
        rp = point("recovery point", &r.recovery_point),
        mode = esc(r.mode.as_str()),
        started = ts(&r.started_at),
        by = esc(&r.started_by),
        host = esc(&r.host),
        finished = r.finished_at.map(|f| ts(&f)).unwrap_or("—".into()),
        status = esc(r.status.as_str()),
        file = esc(&r.runbook_file),
        sha = &r.runbook_sha[..16.min(r.runbook_sha.len())],
        svg = timeline(r),
        format = r.format,
    )
}
