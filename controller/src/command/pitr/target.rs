//! Where a point-in-time recovery stops: the end of the archive, a time, an LSN.
use bascule_core::wal::Lsn;

/// Where recovery should stop.
#[derive(Debug, Clone)]
pub enum Target {
    /// The end of the archive.
    Latest,
    Time(chrono::DateTime<chrono::FixedOffset>),
    Lsn(Lsn),
}

impl Target {
    /// `latest`, an LSN (`0/3000060`) or a time (RFC 3339, or
    /// `2026-11-22 17:40:00+01`).
    pub fn parse(s: &str) -> anyhow::Result<Target> {
        if s == "latest" {
            return Ok(Target::Latest);
        }
        if let Ok(l) = s.parse::<Lsn>() {
            return Ok(Target::Lsn(l));
        }
        chrono::DateTime::parse_from_rfc3339(s)
            .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z"))
            .map(Target::Time)
            .map_err(|_| anyhow::anyhow!("bad recovery target {s:?}: expected `latest`, an LSN like 0/3000060, or a time with its zone like 2026-11-22T17:40:00+01:00"))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Latest => f.write_str("the end of the archive"),
            Target::Time(t) => write!(f, "{}", t.to_rfc3339()),
            Target::Lsn(l) => write!(f, "LSN {l}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(matches!(Target::parse("latest").unwrap(), Target::Latest));
        assert!(matches!(Target::parse("0/3000060").unwrap(), Target::Lsn(Lsn(0x3000060))));
        let Target::Time(t) = Target::parse("2026-11-22 17:40:00.25+01").unwrap() else { panic!() };
        assert_eq!(t.to_rfc3339(), "2026-11-22T17:40:00.250+01:00");
        assert!(Target::parse("2026-11-22T17:40:00+01:00").is_ok());
        assert!(Target::parse("yesterday").is_err());
    }
}
