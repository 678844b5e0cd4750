//! What `verify` and `wal` share: a problem found, precisely, and which
//! objects have their ciphertext read back.

/// One thing wrong, precisely.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub provider: String,
    pub key: String,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "provider {}: {}: {}", self.provider, self.key, self.what)
    }
}

/// Adds a problem.
pub fn push(problems: &mut Vec<Problem>, provider: &str, key: &str, what: String) {
    problems.push(Problem { provider: provider.into(), key: key.into(), what });
}

/// Which objects' ciphertext is read back and hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadData {
    None,
    All,
    /// Slice `slice` of `slices`: the objects whose key hashes to it. A
    /// scheduled verify reads one slice a day, a different one each day, so
    /// that `slices` days cover everything.
    Sample {
        slice: u64,
        slices: u64,
    },
}

impl ReadData {
    pub fn reads(self, key: &str) -> bool {
        match self {
            ReadData::None => false,
            ReadData::All => true,
            ReadData::Sample { slice, slices } => {
                let h = blake3::hash(key.as_bytes());
                u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) % slices.max(1) == slice % slices.max(1)
            }
        }
    }

    pub fn any(self) -> bool {
        self != ReadData::None
    }

    /// `N/M`, slice N of M.
    pub fn parse_sample(s: &str) -> anyhow::Result<ReadData> {
        let parsed = s.split_once('/').and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
        match parsed {
            Some((slice, slices)) if slices > 0 && slice < slices => Ok(ReadData::Sample { slice, slices }),
            _ => anyhow::bail!("--sample {s:?}: expected N/M with N below M, e.g. 3/100"),
        }
    }

    /// Today's slice of `slices` (days since the epoch, modulo).
    pub fn today(slices: u64) -> ReadData {
        let day = chrono::Utc::now().timestamp().max(0) as u64 / 86_400;
        ReadData::Sample { slice: day % slices.max(1), slices: slices.max(1) }
    }
}

#[cfg(test)]
mod tests {
    use super::ReadData;

    #[test]
    fn daily_slices_partition_the_objects() {
        let keys: Vec<String> = (0..5000).map(|i| format!("packs/{i:02x}/{i:064x}")).collect();
        let slices = 100;
        let mut per_slice = vec![0usize; slices as usize];
        for k in &keys {
            let hits: Vec<u64> = (0..slices).filter(|&s| ReadData::Sample { slice: s, slices }.reads(k)).collect();
            assert_eq!(hits.len(), 1, "{k} is in exactly one slice");
            per_slice[hits[0] as usize] += 1;
        }
        // about 50 each: none empty, none a crowd
        assert!(per_slice.iter().all(|&n| (15..=100).contains(&n)), "{per_slice:?}");
        assert!(keys.iter().all(|k| ReadData::All.reads(k) && !ReadData::None.reads(k)));
        assert!(matches!(ReadData::today(100), ReadData::Sample { slice, slices: 100 } if slice < 100));
    }
}
