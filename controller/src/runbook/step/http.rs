//! `http`: one request; the status (and, if asked, a text in the body) must
//! match. The URL keeps its literal scheme, each variable percent-encoded
//! ([`crate::runbook::template`]); secrets go only in headers.
use std::collections::BTreeMap;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{Invalid, StepContext, StepError, StepOutcome};
use crate::runbook::Runbook;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    pub url: String,
    #[serde(default)]
    pub method: HttpMethod,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    /// Expected status (default 200).
    #[serde(default = "ok_status")]
    pub status: u16,
    /// A text the response body must contain.
    pub body_contains: Option<String>,
}

fn ok_status() -> u16 {
    200
}

/// An HTTP method, checked when the runbook is read (`GET`, `post`…).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpMethod(pub reqwest::Method);

impl Default for HttpMethod {
    fn default() -> Self {
        HttpMethod(reqwest::Method::GET)
    }
}

impl std::fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for HttpMethod {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || serde::de::Error::custom(format!("bad method {s:?}: GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS"));
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(bad());
        }
        reqwest::Method::from_bytes(s.to_uppercase().as_bytes()).map(HttpMethod).map_err(|_| bad())
    }
}

impl HttpStep {
    pub fn validate(&self, _: &Runbook) -> Result<(), Invalid> {
        crate::runbook::template::check_url(&self.url).map_err(|e| Invalid::new("http.url", e))
    }

    /// The URL, each variable percent-encoded where it stands.
    fn url(&self, ctx: &StepContext<'_>) -> String {
        let vars = ctx.drill.vars();
        crate::runbook::substitute(&self.url, &|n| vars.get(n).map(|v| crate::runbook::template::encode_component(v)), &|_| None)
    }

    pub fn needs(&self, sub: &dyn Fn(&str) -> String) -> super::needs::Needs {
        let mut n = super::needs::Needs::default();
        n.url(&sub(&self.url));
        n
    }

    pub fn describe(&self, sub: &dyn Fn(&str) -> String) -> String {
        format!(
            "{} {} → {}{}",
            self.method,
            sub(&self.url),
            self.status,
            self.body_contains.as_ref().map(|b| format!(" containing {b:?}")).unwrap_or_default()
        )
    }

    pub async fn run(&self, ctx: &StepContext<'_>, _: CancellationToken) -> Result<StepOutcome, StepError> {
        self.check(ctx).await.map(StepOutcome::text).map_err(StepError::Failed)
    }

    /// The request and its checks; also one of `verify`'s.
    pub async fn check(&self, ctx: &StepContext<'_>) -> Result<String, String> {
        let url = self.url(ctx);
        let mut req = reqwest::Client::new().request(self.method.0.clone(), &url);
        for (k, v) in &self.headers {
            req = req.header(k, ctx.sub_secrets(v));
        }
        if let Some(b) = &self.body {
            req = req.body(ctx.sub(b));
        }
        // errors name the url as written (a secret may be substituted into it)
        let resp = req.send().await.map_err(|e| format!("{} {}: request failed: {}", self.method, self.url, e.without_url()))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        if status != self.status {
            return Err(format!("status {status}, expected {}: {}", self.status, body.chars().take(300).collect::<String>()));
        }
        if let Some(want) = &self.body_contains {
            if !body.contains(ctx.sub(want).as_str()) {
                return Err(format!("the body does not contain {want:?}"));
            }
        }
        Ok(format!("{} {} → status {status}", self.method, self.url))
    }
}
