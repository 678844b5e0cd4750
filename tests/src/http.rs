//! HTTP requests from tests, through curl (plain HTTP and HTTPS alike).
use std::process::Command;

/// (status, body) of one request.
pub fn curl(method: &str, url: &str, token: Option<&str>, body: Option<&str>, extra: &[&str]) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-S", "--max-time", "30", "-X", method, "-w", "\n%{http_code}"]).args(extra);
    if let Some(t) = token {
        c.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    c.arg(url);
    let o = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl ({e}): install it with apt-get install curl (the README's test command does)"));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// GET, expecting 200; the body.
pub fn get(url: &str) -> String {
    let (code, body) = curl("GET", url, None, None, &[]);
    assert_eq!(code, 200, "GET {url}: {body}");
    body
}

/// The value of a metric line `name{labels} value` in a /metrics text.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name_and_labels)?;
        let v = rest.strip_prefix(' ')?;
        v.trim().parse().ok()
    })
}
