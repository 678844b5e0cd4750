//! Sealing: `age(zstd(plaintext))` to every recipient of the tenant.
//!
//! A sealed object is a standard binary age file whose plaintext is a standard
//! zstd frame, so `age -d -i key.txt < object | zstd -d` opens it without bascule.
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use std::io::{Read, Write};

use crate::keys::{Identities, Recipient};
use crate::{Error, Result};

/// zstd level. Measured on pg_dump streams sealed in 256 KiB to 1 MiB pieces
/// (`zstd -b1 -e3 -B512K dump`): level 1 is the fastest and compresses a
/// first export about 8 % *smaller* than level 3 (pgbench rows, and text
/// tables alike); a day's new rows 0–5 % larger.
pub const ZSTD_LEVEL: i32 = 1;

/// zstd contexts, kept between calls (building one costs more than
/// compressing a small segment) and shared by every thread: at most as many
/// exist as calls ran at once, not one per thread of the blocking pool.
struct Pool<T>(std::sync::Mutex<Vec<T>>);

impl<T> Pool<T> {
    const fn new() -> Pool<T> {
        Pool(std::sync::Mutex::new(Vec::new()))
    }

    fn with<R>(&self, new: impl FnOnce() -> std::io::Result<T>, f: impl FnOnce(&mut T) -> std::io::Result<R>) -> std::io::Result<R> {
        let taken = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut ctx = match taken {
            Some(c) => c,
            None => new()?,
        };
        let r = f(&mut ctx);
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(ctx);
        r
    }
}

static COMPRESSORS: Pool<zstd::bulk::Compressor<'static>> = Pool::new();
static DECOMPRESSORS: Pool<zstd::bulk::Decompressor<'static>> = Pool::new();
static BUFFERS: Pool<Vec<u8>> = Pool::new();

/// Compresses then encrypts `plaintext` to all `recipients`.
pub fn seal(plaintext: &[u8], recipients: &[Recipient]) -> Result<Vec<u8>> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| &r.0 as &dyn age::Recipient)).map_err(|e| Error::Seal(e.to_string()))?;
    // compressed into a buffer kept for the next segment (no allocation per segment)
    BUFFERS
        .with(
            || Ok(Vec::new()),
            |compressed| {
                compressed.clear();
                compressed.reserve(zstd::zstd_safe::compress_bound(plaintext.len()));
                COMPRESSORS.with(|| zstd::bulk::Compressor::new(ZSTD_LEVEL), |c| c.compress_to_buffer(plaintext, compressed))?;
                let mut out = Vec::with_capacity(compressed.len() + 256);
                let mut w = encryptor.wrap_output(&mut out)?;
                w.write_all(compressed)?;
                w.finish()?;
                Ok(out)
            },
        )
        .map_err(|e| Error::Seal(e.to_string()))
}

/// Seals what `write` writes, streamed through zstd and age: for a large
/// plaintext (a snapshot's index) made to be sealed, which then never lies
/// whole in memory; only its ciphertext does.
pub fn seal_written(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>, recipients: &[Recipient]) -> Result<Vec<u8>> {
    let err = |e: std::io::Error| Error::Seal(e.to_string());
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| &r.0 as &dyn age::Recipient)).map_err(|e| Error::Seal(e.to_string()))?;
    let mut out = Vec::new();
    let sealed = encryptor.wrap_output(&mut out).map_err(err)?;
    let mut z = zstd::stream::Encoder::new(sealed, ZSTD_LEVEL).map_err(err)?;
    {
        let mut buffered = std::io::BufWriter::with_capacity(1 << 16, &mut z);
        write(&mut buffered).and_then(|()| buffered.flush()).map_err(err)?;
    }
    z.finish().and_then(|sealed| sealed.finish()).map_err(err)?;
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
    decompress(&compressed, max_len).map_err(|e| Error::Open { key: key.into(), reason: e.to_string() })
}

/// Why a zstd frame was refused.
#[derive(Debug, thiserror::Error)]
enum Decompress {
    #[error("plaintext longer than {0} bytes")]
    TooLong(usize),
    #[error("zstd: {0}")]
    Zstd(std::io::Error),
}

/// A zstd frame's plaintext, at most `max_len` bytes. A frame that states
/// its size (bascule's do) is decompressed in one shot straight into a
/// buffer of that size, 4× faster on 1 MiB segments than streaming, which
/// copies every byte once more through its window; any other is streamed.
fn decompress(compressed: &[u8], max_len: usize) -> std::result::Result<Vec<u8>, Decompress> {
    let too_long = || Decompress::TooLong(max_len);
    let out = match zstd::zstd_safe::get_frame_content_size(compressed) {
        Ok(Some(n)) if n > max_len as u64 => return Err(too_long()),
        Ok(Some(n)) => {
            let mut out = Vec::with_capacity(n as usize);
            DECOMPRESSORS
                .with(zstd::bulk::Decompressor::new, |d| d.decompress_to_buffer(compressed, &mut out))
                .map_err(Decompress::Zstd)?;
            out
        }
        _ => {
            let mut out = Vec::new();
            zstd::stream::read::Decoder::new(compressed)
                .and_then(|d| d.take(max_len as u64 + 1).read_to_end(&mut out))
                .map_err(Decompress::Zstd)?;
            out
        }
    };
    if out.len() > max_len {
        return Err(too_long());
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
    fn what_is_sealed_as_written_opens_as_one_plaintext() {
        let (ids, r) = Identities::generate();
        let data = "Délibération du conseil municipal, ".repeat(20_000);
        let sealed = seal_written(|w| data.as_bytes().chunks(777).try_for_each(|c| w.write_all(c)), &[r]).unwrap();
        assert_eq!(open(&sealed, &ids, data.len(), "k", &[]).unwrap(), data.as_bytes());
        assert!(open(&sealed, &ids, data.len() - 1, "k", &[]).is_err(), "the bound holds for a streamed frame");
        let failed = seal_written(|_| Err(std::io::Error::other("the index could not be written")), &[Identities::generate().1]);
        assert!(failed.unwrap_err().to_string().contains("could not be written"));
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
    fn a_frame_without_its_size_is_streamed_within_the_bound() {
        let mut frame = Vec::new();
        let mut z = zstd::stream::write::Encoder::new(&mut frame, 3).unwrap();
        z.write_all(&[7u8; 5000]).unwrap();
        z.finish().unwrap();
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&frame).unwrap(), None, "a streamed frame states no size");
        assert_eq!(decompress(&frame, 5000).unwrap().len(), 5000);
        assert!(decompress(&frame, 4999).unwrap_err().to_string().contains("longer than 4999 bytes"));
        let sized = zstd::bulk::compress(&[7u8; 5000], 1).unwrap();
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&sized).unwrap(), Some(5000), "a one-shot frame states its size");
        assert!(decompress(&sized[..sized.len() - 2], 5000).unwrap_err().to_string().contains("zstd"));
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
