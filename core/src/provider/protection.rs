//! What a bucket itself protects: versioning and S3 Object Lock. Read with
//! two signed bucket requests (`GET /?versioning`, `GET /?object-lock`),
//! which `object_store` has no call for.
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use std::time::Duration;

use futures::StreamExt;
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpClient, HttpRequestBody};

use crate::{Error, Result};

/// The bucket endpoint of an S3 provider, for bucket-level requests.
pub struct BucketApi {
    pub(super) client: HttpClient,
    pub(super) credential: AwsCredential,
    pub(super) region: String,
    /// The bucket's name.
    pub(super) name: String,
    /// `scheme://host[:port]/bucket` (path style) or `scheme://bucket.host[:port]`.
    pub(super) base: String,
}

/// S3 Object Lock as a bucket reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectLock {
    /// Not enabled on this bucket (or a local directory).
    Disabled,
    /// Enabled; with a default retention, every new object is locked that long.
    Enabled { mode: Option<String>, default_retention: Option<Duration> },
    /// The provider did not say (for example it does not implement the call).
    Unknown(String),
}

/// What a provider's bucket protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protection {
    /// `enabled`, `suspended`, `never enabled`, `not applicable (…)` or `unknown (…)`.
    pub versioning: String,
    pub object_lock: ObjectLock,
}

impl Protection {
    /// A local directory: neither applies.
    pub fn local() -> Protection {
        Protection { versioning: "not applicable (local directory)".into(), object_lock: ObjectLock::Disabled }
    }

    /// How long after its last modification an object cannot be deleted.
    pub fn lock_period(&self) -> Option<Duration> {
        match &self.object_lock {
            ObjectLock::Enabled { default_retention, .. } => *default_retention,
            _ => None,
        }
    }
}

impl std::fmt::Display for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "versioning {}; object lock ", self.versioning)?;
        match &self.object_lock {
            ObjectLock::Disabled => f.write_str("disabled"),
            ObjectLock::Enabled { mode, default_retention } => {
                f.write_str("enabled")?;
                if let Some(m) = mode {
                    write!(f, ", {m} mode")?;
                }
                match default_retention {
                    Some(d) => write!(f, ", default retention {} days", d.as_secs() / 86400),
                    None => f.write_str(", no default retention"),
                }
            }
            ObjectLock::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

/// The text of the first `<tag>…</tag>` in `xml`.
fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].trim())
}

/// Reads the answers of the two bucket requests.
pub fn parse(versioning: (u16, &str), object_lock: (u16, &str)) -> Protection {
    let versioning = match versioning {
        (200, xml) => match tag(xml, "Status") {
            Some("Enabled") => "enabled".to_string(),
            Some("Suspended") => "suspended".to_string(),
            Some(other) => format!("unknown ({other})"),
            None => "never enabled".to_string(),
        },
        (status, xml) => format!("unknown (HTTP {status}{})", tag(xml, "Code").map(|c| format!(" {c}")).unwrap_or_default()),
    };
    let object_lock = match object_lock {
        (200, xml) if tag(xml, "ObjectLockEnabled") == Some("Enabled") => {
            let days = tag(xml, "Days").and_then(|d| d.parse::<u64>().ok()).map(|d| d * 86400);
            let years = tag(xml, "Years").and_then(|y| y.parse::<u64>().ok()).map(|y| y * 365 * 86400);
            ObjectLock::Enabled { mode: tag(xml, "Mode").map(str::to_string), default_retention: days.or(years).map(Duration::from_secs) }
        }
        (200, _) => ObjectLock::Disabled,
        (404, xml) if tag(xml, "Code") == Some("ObjectLockConfigurationNotFoundError") => ObjectLock::Disabled,
        (status, xml) => ObjectLock::Unknown(match tag(xml, "Code") {
            Some(code) => format!("HTTP {status} {code}"),
            None if status == 501 => "HTTP 501: the provider does not implement it".to_string(),
            None => format!("HTTP {status}"),
        }),
    };
    Protection { versioning, object_lock }
}

/// The longest answer to a bucket settings request read.
const MAX_ANSWER: usize = 64 << 10;

impl BucketApi {
    /// A signed `GET /?<query>` on the bucket: status and body.
    async fn get(&self, query: &str) -> Result<(u16, String)> {
        let url = format!("{}/?{query}", self.base);
        let bad = |reason: String| Error::Body { key: format!("?{query}"), reason };
        let mut req = object_store::client::HttpRequest::new(HttpRequestBody::empty());
        *req.uri_mut() = url.parse().map_err(|e| bad(format!("{url}: {e}")))?;
        AwsAuthorizer::new(&self.credential, "s3", &self.region).authorize(&mut req, None);
        let resp = self.client.execute(req).await.map_err(|e| bad(e.to_string()))?;
        let status = resp.status().as_u16();
        // a bucket's settings are a few hundred bytes: read no more than 64 KiB
        let mut body = Vec::new();
        let mut stream = resp.into_body().bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| bad(e.to_string()))?;
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(bad(format!("an answer over {MAX_ANSWER} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    pub async fn protection(&self) -> Result<Protection> {
        let v = self.get("versioning").await?;
        let l = self.get("object-lock").await?;
        Ok(parse((v.0, &v.1), (l.0, &l.1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_s3_answers() {
        let p = parse(
            (200, "<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>"),
            (200, "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Days>30</Days></DefaultRetention></Rule></ObjectLockConfiguration>"),
        );
        assert_eq!(p.versioning, "enabled");
        assert_eq!(p.lock_period(), Some(Duration::from_secs(30 * 86400)));
        assert_eq!(p.to_string(), "versioning enabled; object lock enabled, COMPLIANCE mode, default retention 30 days");
        let p = parse((200, "<VersioningConfiguration/>"), (404, "<Error><Code>ObjectLockConfigurationNotFoundError</Code></Error>"));
        assert_eq!((p.versioning.as_str(), &p.object_lock), ("never enabled", &ObjectLock::Disabled));
        let p = parse((200, "<VersioningConfiguration><Status>Suspended</Status></VersioningConfiguration>"), (501, ""));
        assert_eq!(p.versioning, "suspended");
        assert!(matches!(p.object_lock, ObjectLock::Unknown(ref w) if w.contains("501")), "{p}");
        let p = parse((200, ""), (200, "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Years>1</Years></DefaultRetention></Rule></ObjectLockConfiguration>"));
        assert_eq!(p.lock_period(), Some(Duration::from_secs(365 * 86400)));
    }
}
