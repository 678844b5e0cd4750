//! A bandwidth cap, as a store wrapper (in the manner of `object_store`'s
//! `limit.rs`): every upload through a [`ThrottledStore`] waits for the time
//! its bytes take at the cap, after the reservations made before it, so that
//! concurrent uploads to both providers share one cap. Reads pass through.
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    Result,
};
use tokio::time::Instant;

/// A rate shared by every upload made through the stores wrapping it.
#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: Option<u64>,
    next_free: Mutex<Instant>,
}

impl Throttle {
    /// `None`: no cap.
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        Throttle { bytes_per_sec, next_free: Mutex::new(Instant::now()) }
    }

    /// Waits for the time `bytes` take at the cap, after the reservations
    /// made before (in call order, so concurrent uploads share the cap).
    pub async fn acquire(&self, bytes: u64) {
        let Some(rate) = self.bytes_per_sec.filter(|r| *r > 0) else { return };
        let done = {
            let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
            *next
        };
        tokio::time::sleep_until(done).await;
    }
}

/// A store whose uploads wait for their turn under a [`Throttle`].
/// Multipart uploads (which bascule does not make) are not throttled.
#[derive(Debug)]
pub struct ThrottledStore {
    inner: Arc<dyn ObjectStore>,
    throttle: Arc<Throttle>,
}

impl ThrottledStore {
    pub fn new(inner: Arc<dyn ObjectStore>, throttle: Arc<Throttle>) -> Self {
        ThrottledStore { inner, throttle }
    }
}

impl std::fmt::Display for ThrottledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ThrottledStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for ThrottledStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.throttle.acquire(payload.content_length() as u64).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> Result<Bytes> {
        self.inner.get_range(location, range).await
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn caps_the_rate() {
        let t = Throttle::new(Some(1000));
        let begin = Instant::now();
        for _ in 0..5 {
            t.acquire(1000).await;
        }
        // five transfers of one second each at the cap
        assert!(begin.elapsed() >= Duration::from_secs(5));
        let free = Throttle::new(None);
        let b = Instant::now();
        free.acquire(u64::MAX).await;
        assert!(b.elapsed() < Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn uploads_through_the_wrapper_share_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let throttle = Arc::new(Throttle::new(Some(10_000)));
        let a = ThrottledStore::new(Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap()), throttle.clone());
        let b = ThrottledStore::new(Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap()), throttle);
        let begin = Instant::now();
        let payload = || PutPayload::from(vec![7u8; 10_000]);
        let (x, y) = (Path::from("x"), Path::from("y"));
        let (ra, rb) = tokio::join!(a.put(&x, payload()), b.put(&y, payload()));
        ra.unwrap();
        rb.unwrap();
        assert!(begin.elapsed() >= Duration::from_secs(2), "two uploads of one second each at the shared cap");
        // reads are not throttled
        let t0 = Instant::now();
        assert_eq!(a.get(&Path::from("x")).await.unwrap().bytes().await.unwrap().len(), 10_000);
        assert!(t0.elapsed() < Duration::from_millis(10));
    }
}
