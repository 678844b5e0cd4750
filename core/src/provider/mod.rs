//! Providers: where sealed objects live. Any `object_store` backend; bascule
//! configures S3-compatible services and local directories.
//!
//! A [`Replica`] is one provider scoped to one tenant's prefix; [`Replicated`]
//! writes to all of them and reads from whichever holds a good copy.
mod protection;
mod replicated;
mod throttle;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutPayload};
use serde::Deserialize;

pub use protection::{parse as parse_protection, ObjectLock, Protection};
pub use replicated::{PerProvider, Replicated, Writer};
pub use throttle::{Throttle, ThrottledStore};

use crate::config::SecretRef;

/// The most objects one listing may return (a million objects, about 150 MB
/// in memory: 8 TB of 8 MiB packs, or half a million WAL files).
pub const MAX_LISTED: usize = 1_000_000;
/// The longest one listing may take, all pages together.
pub const LIST_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// What a listing returns: key (relative to the tenant) → size, last modification.
pub type Listed = BTreeMap<String, (u64, chrono::DateTime<chrono::Utc>)>;
use crate::{Error, Result};

/// What a conditional GET found.
#[derive(Debug)]
pub enum Fetched {
    NotModified,
    Absent,
    Changed { bytes: Bytes, etag: Option<String> },
}

/// A provider as written in a config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Short name used in logs, metrics and reports (`ovh-gra`, `scaleway-par`).
    pub name: String,
    /// `s3://bucket[/prefix]` or `file:///absolute/directory`.
    pub url: String,
    /// S3 endpoint, e.g. `https://s3.gra.io.cloud.ovh.net` or `http://127.0.0.1:3900`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Plain HTTP is refused unless asked for (loopback tests, a private network).
    #[serde(default)]
    pub allow_http: bool,
    /// Path-style requests (`endpoint/bucket/key`); most non-AWS services want it.
    #[serde(default = "yes")]
    pub path_style: bool,
    pub access_key_id: Option<SecretRef>,
    pub secret_access_key: Option<SecretRef>,
    /// Per-request timeout (`30s`, `2m`).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn yes() -> bool {
    true
}
fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Why a config's providers are not a pair.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error("providers: exactly two providers are required, {0} given")]
    Count(usize),
    #[error(transparent)]
    Name(#[from] crate::config::BadName),
    #[error("providers: the two providers need different names")]
    SameName,
}

/// The providers of a config: exactly two, with different names (every
/// object goes to both, in two places).
pub fn check_pair(providers: &[ProviderConfig]) -> std::result::Result<(), PairError> {
    let [a, b] = providers else { return Err(PairError::Count(providers.len())) };
    crate::config::check_name("provider", &a.name)?;
    crate::config::check_name("provider", &b.name)?;
    if a.name == b.name {
        return Err(PairError::SameName);
    }
    Ok(())
}

/// One provider, ready to use.
#[derive(Clone)]
pub struct Provider {
    pub name: String,
    store: Arc<dyn ObjectStore>,
    root: StorePath,
    /// Bucket-level requests (S3 only).
    bucket: Option<Arc<protection::BucketApi>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Provider({})", self.name)
    }
}

impl Provider {
    /// Builds the client from bascule's own configuration only (never from
    /// whatever `AWS_*` variables the machine has).
    pub fn build(cfg: &ProviderConfig, config_file: &Path) -> Result<Provider> {
        let bad = |m: String| Error::ConfigValue { file: config_file.into(), message: format!("provider {}: {m}", cfg.name) };
        if let Some(rest) = cfg.url.strip_prefix("file://") {
            let dir = Path::new(rest);
            if !dir.is_absolute() {
                return Err(bad(format!("{} must be an absolute path (file:///…)", cfg.url)));
            }
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let store =
                object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| bad(e.to_string()))?.with_automatic_cleanup(true);
            return Ok(Provider { name: cfg.name.clone(), store: Arc::new(store), root: StorePath::default(), bucket: None });
        }
        let rest = cfg.url.strip_prefix("s3://").ok_or_else(|| bad(format!("url {:?} must start with s3:// or file://", cfg.url)))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the s3:// url names no bucket".into()));
        }
        let endpoint = cfg.endpoint.as_deref();
        if let Some(ep) = endpoint {
            if ep.starts_with("http://") && !cfg.allow_http {
                return Err(bad(format!("endpoint {ep} is plain http; set `allow_http: true` to accept it")));
            }
        }
        let field = |f: &str| format!("providers.{}.{f}", cfg.name);
        let key_id = cfg.access_key_id.as_ref().ok_or_else(|| bad("access_key_id is required for s3".into()))?;
        let secret = cfg.secret_access_key.as_ref().ok_or_else(|| bad("secret_access_key is required for s3".into()))?;
        let credential = object_store::aws::AwsCredential {
            key_id: key_id.resolve(config_file, &field("access_key_id"))?,
            secret_key: secret.resolve(config_file, &field("secret_access_key"))?,
            token: None,
        };
        let region = cfg.region.clone().unwrap_or_else(|| "us-east-1".into());
        let options = object_store::ClientOptions::new()
            .with_allow_http(cfg.allow_http)
            .with_timeout(cfg.timeout)
            .with_connect_timeout(Duration::from_secs(5));
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
        };
        let mut b = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&region)
            .with_access_key_id(&credential.key_id)
            .with_secret_access_key(&credential.secret_key)
            .with_virtual_hosted_style_request(!cfg.path_style)
            .with_retry(retry)
            // one ClientOptions for all client settings: it replaces any set before
            .with_client_options(options.clone());
        if let Some(ep) = endpoint {
            b = b.with_endpoint(ep);
        }
        let store = b.build().map_err(|e| bad(e.to_string()))?;
        let base = match (endpoint, cfg.path_style) {
            (Some(ep), true) => format!("{}/{bucket}", ep.trim_end_matches('/')),
            (Some(ep), false) => match ep.split_once("://") {
                Some((scheme, host)) => format!("{scheme}://{bucket}.{}", host.trim_end_matches('/')),
                None => return Err(bad(format!("endpoint {ep} has no scheme (https://…)"))),
            },
            (None, true) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
            (None, false) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        };
        let client = object_store::client::HttpConnector::connect(&object_store::client::ReqwestConnector::default(), &options)
            .map_err(|e| bad(e.to_string()))?;
        let bucket = protection::BucketApi { client, credential, region, base, name: bucket.to_string() };
        Ok(Provider { name: cfg.name.clone(), store: Arc::new(store), root: StorePath::from(prefix), bucket: Some(Arc::new(bucket)) })
    }

    /// The same provider with every upload counted against `throttle` (a
    /// bandwidth cap that every provider built with it shares).
    pub fn throttled(mut self, throttle: Arc<Throttle>) -> Provider {
        self.store = Arc::new(ThrottledStore::new(self.store, throttle));
        self
    }

    /// The same provider, scoped to `<prefix>/<tenant>/`.
    pub fn tenant(&self, tenant: &str) -> Replica {
        Replica { provider: self.name.clone(), store: self.store.clone(), base: self.root.child(tenant), bucket: self.bucket.clone() }
    }
}

/// What a provider's error most likely means and what to do, read from its
/// answer (S3 error codes) or from how the request failed; `None` when it
/// does not say.
fn advice(e: &object_store::Error, bucket: Option<&protection::BucketApi>) -> Option<String> {
    let mut said = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        said.push_str(": ");
        said.push_str(&c.to_string());
        cause = c.source();
    }
    let has = |needles: &[&str]| needles.iter().any(|n| said.contains(n));
    let name = bucket.map(|b| b.name.as_str()).unwrap_or("the bucket");
    let endpoint = bucket.map(|b| b.base.as_str()).unwrap_or("the endpoint");
    if has(&["NoSuchBucket"]) {
        return Some(format!(
            "bucket {name} does not exist: create it (with Garage: `garage bucket create {name}`, then `garage bucket allow \
             --read --write --owner {name} --key <key>`) or fix url in this provider's configuration"
        ));
    }
    if has(&["RequestTimeTooSkewed", "Date is too far", "too far in the past", "too far in the future", "time too skewed"]) {
        return Some("the provider refuses the request's time: this machine's clock is off — set up NTP (timedatectl set-ntp true)".into());
    }
    if has(&["InvalidAccessKeyId", "SignatureDoesNotMatch", "No such key", "Forbidden: No such key"]) {
        return Some(
            "the provider does not accept these credentials: check access_key_id and secret_access_key (and that this \
             machine's clock is right)"
                .into(),
        );
    }
    if has(&["AccessDenied", "403 Forbidden"]) {
        return Some(format!("the provider refuses this request: check the credentials allow writing, reading and deleting in {name}"));
    }
    if has(&["error sending request", "Connection refused", "dns error", "error trying to connect", "operation timed out", "timed out"]) {
        return Some(format!(
            "the provider does not answer at {endpoint}: check the endpoint is reachable from here (address, port, \
             firewall) and that the service runs"
        ));
    }
    None
}

/// One provider scoped to one tenant.
#[derive(Clone)]
pub struct Replica {
    pub provider: String,
    store: Arc<dyn ObjectStore>,
    base: StorePath,
    bucket: Option<Arc<protection::BucketApi>>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replica({}:{})", self.provider, self.base)
    }
}

impl Replica {
    fn path(&self, key: &str) -> StorePath {
        key.split('/').filter(|part| !part.is_empty()).fold(self.base.clone(), |p, part| p.child(part))
    }

    fn err(&self, key: &str, source: object_store::Error) -> Error {
        let advice = advice(&source, self.bucket.as_deref()).map(Box::new);
        Error::Store { provider: self.provider.clone(), key: key.into(), source: Box::new(source), advice }
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.store.put(&self.path(key), PutPayload::from(bytes)).await.map_err(|e| self.err(key, e))?;
        Ok(())
    }

    /// Creates `key` unless it exists (`PutMode::Create`, where the provider
    /// supports it): for objects whose name is their content. A copy already
    /// there is read back and kept if it holds these very bytes, else
    /// replaced (a damaged or planted copy); a provider without conditional
    /// writes gets a plain write.
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<()> {
        let opts = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
        match self.store.put_opts(&self.path(key), PutPayload::from(bytes.clone()), opts).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotImplemented) => self.put(key, bytes).await,
            Err(object_store::Error::AlreadyExists { .. }) => {
                if self.get(key, bytes.len() as u64).await.ok().flatten().is_some_and(|have| have == bytes) {
                    return Ok(());
                }
                tracing::warn!(provider = %self.provider, key, "An object with this name but other content was there; replacing it");
                self.put(key, bytes).await
            }
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// The body of `result`, refused once it passes `max` bytes: whatever
    /// length the provider announces or sends, no more than `max` bytes are
    /// ever held.
    async fn read_bounded(&self, key: &str, result: object_store::GetResult, max: u64) -> Result<Bytes> {
        let announced = result.range.end.saturating_sub(result.range.start);
        if announced > max {
            return Err(Error::TooLarge { provider: self.provider.clone(), key: key.into(), size: announced, max });
        }
        let mut out = bytes::BytesMut::with_capacity(announced as usize);
        let mut body = result.into_stream();
        while let Some(chunk) = body.try_next().await.map_err(|e| self.err(key, e))? {
            let size = out.len() as u64 + chunk.len() as u64;
            if size > max {
                return Err(Error::TooLarge { provider: self.provider.clone(), key: key.into(), size, max });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }

    /// The object, at most `max` bytes long (a longer one is refused, never
    /// read whole); `None` when it does not exist.
    pub async fn get(&self, key: &str, max: u64) -> Result<Option<Bytes>> {
        match self.store.get(&self.path(key)).await {
            Ok(r) => Ok(Some(self.read_bounded(key, r, max).await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// The object a signed reference names, read no further than the length
    /// it states (its hash is the caller's to check).
    pub async fn get_ref(&self, r: &crate::object::ObjectRef) -> Result<Option<Bytes>> {
        self.get(&r.key, r.len).await
    }

    /// The object (at most `max` bytes) unless it still has the entity tag
    /// `etag` (a conditional GET: a provider answers 304 without the body).
    pub async fn get_if_changed(&self, key: &str, etag: Option<&str>, max: u64) -> Result<Fetched> {
        let opts = object_store::GetOptions { if_none_match: etag.map(str::to_string), ..Default::default() };
        match self.store.get_opts(&self.path(key), opts).await {
            Ok(r) => {
                let tag = r.meta.e_tag.clone();
                if tag.is_some() && tag.as_deref() == etag {
                    // a provider that ignores If-None-Match
                    return Ok(Fetched::NotModified);
                }
                Ok(Fetched::Changed { bytes: self.read_bounded(key, r, max).await?, etag: tag })
            }
            Err(object_store::Error::NotModified { .. }) => Ok(Fetched::NotModified),
            Err(object_store::Error::NotFound { .. }) => Ok(Fetched::Absent),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// Bytes `range` of an object, no more; `None` when the object does not exist.
    pub async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Option<Bytes>> {
        let max = range.end.saturating_sub(range.start);
        let opts = object_store::GetOptions { range: Some(range.into()), ..Default::default() };
        match self.store.get_opts(&self.path(key), opts).await {
            Ok(r) => Ok(Some(self.read_bounded(key, r, max).await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// Every object under `prefix` (relative to the tenant), with its size.
    pub async fn list(&self, prefix: &str) -> Result<BTreeMap<String, u64>> {
        Ok(self.list_meta(prefix).await?.into_iter().map(|(k, (size, _))| (k, size)).collect())
    }

    /// Every object under `prefix`, with its size and last modification time.
    /// A listing is bounded: past [`MAX_LISTED`] objects or [`LIST_DEADLINE`]
    /// (a provider paging without end, or flooded with planted names) it is
    /// an error, as if the provider were down, never unbounded memory or an
    /// endless wait.
    pub async fn list_meta(&self, prefix: &str) -> Result<Listed> {
        self.list_bounded(prefix, None, MAX_LISTED, LIST_DEADLINE).await
    }

    /// The objects under `prefix` whose key sorts after `after` (a key
    /// relative to the tenant): what is new since a listing that ended there.
    pub async fn list_after(&self, prefix: &str, after: &str) -> Result<BTreeMap<String, u64>> {
        let listed = self.list_bounded(prefix, Some(after), MAX_LISTED, LIST_DEADLINE).await?;
        // a provider may ignore the offset: keep only what sorts after it
        Ok(listed.into_iter().filter(|(k, _)| k.as_str() > after).map(|(k, (size, _))| (k, size)).collect())
    }

    async fn list_bounded(&self, prefix: &str, after: Option<&str>, max: usize, deadline: Duration) -> Result<Listed> {
        let base = self.base.to_string();
        let p = self.path(prefix.trim_end_matches('/'));
        let too = |why: String| Error::Listing { provider: self.provider.clone(), prefix: prefix.to_string(), why };
        let mut out = BTreeMap::new();
        let mut stream = match after {
            Some(a) => self.store.list_with_offset(Some(&p), &self.path(a)),
            None => self.store.list(Some(&p)),
        };
        let collect = async {
            while let Some(m) = stream.try_next().await.map_err(|e| self.err(prefix, e))? {
                if out.len() >= max {
                    return Err(too(format!("more than {max} objects")));
                }
                let full = m.location.to_string();
                if let Some(rel) = full.strip_prefix(&base) {
                    out.insert(rel.trim_start_matches('/').to_string(), (m.size, m.last_modified));
                }
            }
            Ok(())
        };
        match tokio::time::timeout(deadline, collect).await {
            Ok(r) => r?,
            Err(_) => return Err(too(format!("not finished after {} s", deadline.as_secs()))),
        }
        Ok(out)
    }

    /// Whether the bucket has versioning and object lock (a local directory has neither).
    pub async fn protection(&self) -> Result<Protection> {
        match &self.bucket {
            Some(b) => b.protection().await,
            None => Ok(Protection::local()),
        }
    }

    /// Is the provider answering? (a listing of the tenant's snapshots)
    pub async fn healthcheck(&self) -> Result<()> {
        self.list(crate::layout::SNAPSHOTS).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn providers(names: &[&str]) -> Vec<ProviderConfig> {
        let yaml: String = names.iter().map(|n| format!("- {{ name: {n}, url: \"file:///tmp/{n}\" }}\n")).collect();
        crate::config::parse_yaml(&yaml, Path::new("x")).unwrap()
    }

    #[tokio::test]
    async fn a_listing_past_its_bound_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!("- {{ name: a, url: \"file://{}\" }}\n", dir.path().display());
        let cfg: Vec<ProviderConfig> = crate::config::parse_yaml(&yaml, Path::new("x")).unwrap();
        let r = Provider::build(&cfg[0], Path::new("x")).unwrap().tenant("t");
        for i in 0..11 {
            r.put(&format!("packs/aa/{i}"), Bytes::from_static(b"x")).await.unwrap();
        }
        assert_eq!(r.list_bounded("packs/", None, 11, LIST_DEADLINE).await.unwrap().len(), 11);
        let e = r.list_bounded("packs/", None, 10, LIST_DEADLINE).await.unwrap_err();
        assert!(matches!(e, Error::Listing { .. }) && e.to_string().contains("more than 10 objects"), "{e}");
        // what is new since a key
        let after: Vec<String> = r.list_after("packs/", "packs/aa/7").await.unwrap().into_keys().collect();
        assert_eq!(after, ["packs/aa/8", "packs/aa/9"]);
    }

    #[test]
    fn exactly_two_differently_named_providers() {
        assert!(check_pair(&providers(&["a", "b"])).is_ok());
        assert!(check_pair(&providers(&["a"])).unwrap_err().to_string().contains("exactly two"));
        assert!(check_pair(&providers(&["a", "b", "c"])).unwrap_err().to_string().contains("exactly two"));
        assert!(check_pair(&providers(&["a", "a"])).unwrap_err().to_string().contains("different names"));
        assert!(check_pair(&providers(&["a", "B/c"])).unwrap_err().to_string().contains("provider \"B/c\""));
    }
}
