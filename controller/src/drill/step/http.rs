//! `http`: one request; the status (and, if asked, a text in the body) must match.
use super::Drill;
use crate::runbook::HttpStep;

pub async fn run(h: &HttpStep, d: &Drill) -> Result<String, String> {
    let method = reqwest::Method::from_bytes(h.method.to_uppercase().as_bytes()).map_err(|_| format!("bad method {:?}", h.method))?;
    let url = d.sub(&h.url);
    let mut req = reqwest::Client::new().request(method, &url);
    for (k, v) in &h.headers {
        req = req.header(k, d.sub(v));
    }
    if let Some(b) = &h.body {
        req = req.body(d.sub(b));
    }
    // errors name the url as written (a secret may be substituted into it)
    let resp = req.send().await.map_err(|e| format!("{} {}: request failed: {}", h.method, h.url, e.without_url()))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    if status != h.status {
        return Err(format!("status {status}, expected {}: {}", h.status, body.chars().take(300).collect::<String>()));
    }
    if let Some(want) = &h.body_contains {
        if !body.contains(d.sub(want).as_str()) {
            return Err(format!("the body does not contain {want:?}"));
        }
    }
    Ok(format!("{} {} → status {status}", h.method, h.url))
}
