//! Writing to every provider, reading from whichever holds a good copy.
use bytes::Bytes;
use futures::future::join_all;

use super::Replica;
use crate::{Error, Result};

/// One result per provider, in the order of [`Replicated::replicas`].
pub type PerProvider<T> = Vec<(String, Result<T>)>;

#[derive(Debug, Clone)]
pub struct Replicated {
    pub replicas: Vec<Replica>,
}

impl Replicated {
    pub fn new(replicas: Vec<Replica>) -> Self {
        Replicated { replicas }
    }

    /// Sends the same bytes to the providers selected by `which`, concurrently.
    pub async fn put(&self, key: &str, bytes: Bytes, which: &[bool]) -> PerProvider<()> {
        let futs = self.replicas.iter().zip(which).filter(|(_, w)| **w).map(|(r, _)| {
            let bytes = bytes.clone();
            async move { (r.provider.clone(), r.put(key, bytes).await) }
        });
        join_all(futs).await
    }

    /// Reads `key` from the first provider (starting at `start`, so that
    /// parallel reads spread over both) whose copy passes `check`; falls back
    /// to the next when a copy is missing, unreadable or fails the check.
    /// Returns the checked value and the provider that served it.
    pub async fn get_checked<T>(&self, key: &str, start: usize, check: impl Fn(&str, Bytes) -> Result<T>) -> Result<(T, String)> {
        self.get_range_checked(key, None, start, check).await
    }

    /// [`Replicated::get_checked`] for bytes `range` of the object (all of it for `None`).
    pub async fn get_range_checked<T>(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
        start: usize,
        check: impl Fn(&str, Bytes) -> Result<T>,
    ) -> Result<(T, String)> {
        let n = self.replicas.len();
        let mut reasons = Vec::new();
        for i in 0..n {
            let r = &self.replicas[(start + i) % n];
            let got = match &range {
                None => r.get(key).await,
                Some(range) => r.get_range(key, range.clone()).await,
            };
            match got {
                Ok(Some(bytes)) => match check(&r.provider, bytes) {
                    Ok(v) => {
                        if !reasons.is_empty() {
                            tracing::warn!(key, provider = %r.provider, failed = %reasons.join("; "), "Served from another provider after a bad copy");
                        }
                        return Ok((v, r.provider.clone()));
                    }
                    Err(e) => reasons.push(format!("{}: {e}", r.provider)),
                },
                Ok(None) => reasons.push(format!("{}: missing", r.provider)),
                Err(e) => reasons.push(format!("{}: {e}", r.provider)),
            }
        }
        if reasons.iter().all(|r| r.ends_with(": missing")) {
            return Err(Error::Missing { key: key.into() });
        }
        Err(Error::NoGoodCopy { key: key.into(), reasons: reasons.join("; ") })
    }
}

/// Checks a ciphertext against the length and hash a signed manifest recorded.
pub fn check_ciphertext(obj: &crate::manifest::ObjectRef, provider: &str, bytes: &Bytes) -> Result<()> {
    let actual = crate::hash_hex(bytes);
    if bytes.len() as u64 != obj.len || actual != obj.hash {
        return Err(Error::CiphertextHash { key: obj.key.clone(), provider: provider.into(), expected: obj.hash.clone(), actual });
    }
    Ok(())
}
