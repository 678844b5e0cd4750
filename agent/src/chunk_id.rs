//! Chunk ids in the agent's memory and chunk tables.
//!
//! An id is the first 128 bits of the keyed BLAKE3 of the chunk's plaintext
//! hash ([`bascule_core::keys::AgentKey::chunk_id`]): 16 bytes in memory, 32
//! hex digits in the tables (older tables wrote all 64; their first 32 are
//! the same id). Ids are uniformly random and keyed, so the maps use the
//! id's own first 8 bytes as hash: no second hash per lookup, and no
//! collision an outsider could provoke.
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChunkId(pub [u8; 16]);

impl Hash for ChunkId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes")));
    }
}

/// The hasher of [`IdMap`]: takes the id's bytes as they are.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // not used by ChunkId; a fold, so that any key still works
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by chunk id.
pub type IdMap<V> = HashMap<ChunkId, V, BuildHasherDefault<IdHasher>>;

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut hex = String::with_capacity(32);
        for b in self.0 {
            hex.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&hex)
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let hex = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let digits = hex.get(..32).filter(|_| hex.len() == 32 || hex.len() == 64);
        let mut id = [0u8; 16];
        let ok = digits
            .is_some_and(|h| id.iter_mut().enumerate().all(|(i, b)| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).map(|v| *b = v).is_ok()));
        if ok {
            Ok(ChunkId(id))
        } else {
            Err(serde::de::Error::custom(format!("not a chunk id: {hex}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_lengths_and_writes_the_short_one() {
        let long = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let id: ChunkId = serde_json::from_str(&format!("\"{long}\"")).unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{}\"", &long[..32]));
        let again: ChunkId = serde_json::from_str(&serde_json::to_string(&id).unwrap()).unwrap();
        assert_eq!(again, id);
        for bad in ["\"00\"", "\"zz112233445566778899aabbccddeeff\"", &format!("\"{long}0\"")] {
            assert!(serde_json::from_str::<ChunkId>(bad).is_err(), "{bad}");
        }
        let mut m: IdMap<u32> = IdMap::default();
        m.insert(id, 7);
        assert_eq!(m.get(&again), Some(&7));
    }
}
