//! Sealing: `age(zstd(plaintext))` to every recipient of the tenant.
//!
//! A sealed object is a standard binary age file whose plaintext is a standard
//! zstd frame, so `age -d -i key.txt < object | zstd -d` opens it without bascule.
use std::io::{Read, Write};

use crate::keys::{Identities, Recipient};
use crate::{Error, Result};

/// zstd level. Measured on pg_dump streams sealed in 256 KiB to 1 MiB pieces
/// (`zstd -b1 -e3 -B512K dump`): level 1 is the fastest and compresses a
/// first export about 8 % *smaller* than level 3 (pgbench rows, and text
/// tables alike); a day's new rows 0–5 % larger.
pub const ZSTD_LEVEL: i32 = 1;

/// Compresses then encrypts `plaintext` to all `recipients`.
pub fn seal(plaintext: &[u8], recipients: &[Recipient]) -> Result<Vec<u8>> {
    // one compression context per thread, not one per object
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    let compressed = COMPRESSOR
        .with(|c| {
            let mut c = c.borrow_mut();
            if c.is_none() {
                *c = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?);
            }
            c.as_mut().expect("set above").compress(plaintext)
        })
        .map_err(|e| Error::Seal(e.to_string()))?;
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| &r.0 as &dyn age::Recipient)).map_err(|e| Error::Seal(e.to_string()))?;
    let mut out = Vec::with_capacity(compressed.len() + 256);
    let mut w = encryptor.wrap_output(&mut out).map_err(|e| Error::Seal(e.to_string()))?;
    w.write_all(&compressed).map_err(|e| Error::Seal(e.to_string()))?;
    w.finish().map_err(|e| Error::Seal(e.to_string()))?;
    Ok(out)
}

/// Decrypts and decompresses; `max_len` bounds the plaintext (a forged object
/// cannot make us allocate without limit). `key` names the object in errors;
/// `sealed_to` is what the manifest says the object was sealed to.
pub fn open(ciphertext: &[u8], identities: &Identities, max_len: usize, key: &str, sealed_to: &[String]) -> Result<Vec<u8>> {
    let decryptor = age::Decryptor::new(ciphertext).map_err(|e| Error::Open { key: key.into(), reason: e.to_string() })?;
    let reader = decryptor.decrypt(identities.as_dyn()).map_err(|e| match e {
        age::DecryptError::NoMatchingKeys => Error::WrongIdentity {
            key: key.into(),
            recipients: if sealed_to.is_empty() { "recipients not recorded".into() } else { sealed_to.join(", ") },
        },
        other => Error::Open { key: key.into(), reason: other.to_string() },
    })?;
    let mut compressed = Vec::new();
    reader.take(max_len as u64 + 1024).read_to_end(&mut compressed).map_err(|e| Error::Open { key: key.into(), reason: e.to_string() })?;
    // one-shot decompression straight into a buffer of the largest allowed
    // size (streaming would copy every byte once more through its window)
    // (4× faster on 1 MiB segments), one context per thread
    thread_local! {
        static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    let mut out = Vec::with_capacity(max_len + 1);
    DECOMPRESSOR
        .with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            d.as_mut().expect("set above").decompress_to_buffer(&compressed[..], &mut out)
        })
        .map_err(|e| Error::Open { key: key.into(), reason: format!("zstd (or plaintext longer than {max_len} bytes): {e}") })?;
    if out.len() > max_len {
        return Err(Error::Open { key: key.into(), reason: format!("plaintext longer than {max_len} bytes") });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_identity() {
        let (ids, r) = Identities::generate();
        let (other, r2) = Identities::generate();
        let data = "Mairie de Saint-Étienne — état civil".repeat(100);
        let sealed = seal(data.as_bytes(), &[r.clone(), r2]).unwrap();
        assert_eq!(open(&sealed, &ids, 1 << 20, "k", &[]).unwrap(), data.as_bytes());
        assert_eq!(open(&sealed, &other, 1 << 20, "k", &[]).unwrap(), data.as_bytes());
        let (stranger, _) = Identities::generate();
        let err = open(&sealed, &stranger, 1 << 20, "k", &[r.to_string()]).unwrap_err();
        assert!(err.to_string().contains(&r.to_string()), "{err}");
    }

    #[test]
    fn plaintext_beyond_the_bound_is_refused() {
        let (ids, r) = Identities::generate();
        let sealed = seal(&[7u8; 5000], &[r]).unwrap();
        assert_eq!(open(&sealed, &ids, 5000, "k", &[]).unwrap().len(), 5000);
        for max in [4999, 100] {
            let err = open(&sealed, &ids, max, "k", &[]).unwrap_err().to_string();
            assert!(err.contains(&format!("longer than {max} bytes")), "{err}");
        }
    }

    #[test]
    fn flipped_byte_is_refused() {
        let (ids, r) = Identities::generate();
        let mut sealed = seal(&[7u8; 5000], &[r]).unwrap();
        let n = sealed.len();
        sealed[n - 20] ^= 1;
        assert!(matches!(open(&sealed, &ids, 1 << 20, "k", &[]), Err(Error::Open { .. })));
    }

    #[test]
    fn length_bound() {
        let (ids, r) = Identities::generate();
        let sealed = seal(&[0u8; 10_000], &[r]).unwrap();
        assert!(open(&sealed, &ids, 9_999, "k", &[]).is_err());
        assert!(open(&sealed, &ids, 10_000, "k", &[]).is_ok());
    }
}
