//! Cron schedules as in standard cron: five fields (minute hour day month
//! weekday, weekdays 0-7 from Sunday) or six with seconds first, in local time.
use std::str::FromStr;

use serde::Deserialize;

/// A cron schedule, checked when the config is parsed.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub text: String,
    pub cron: cron::Schedule,
}

/// Not a cron expression bascule reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSchedule {
    #[error("bad cron expression {0:?}: expected 5 fields (minute hour day month weekday), e.g. \"30 1 * * *\"")]
    Fields(String),
    #[error("bad cron expression {expr:?}: {reason}")]
    Cron { expr: String, reason: String },
    #[error("bad weekday field {0:?}: use 0-7 (0 or 7 = Sunday), names like MON, ranges and lists")]
    Weekday(String),
}

impl FromStr for Schedule {
    type Err = BadSchedule;
    fn from_str(s: &str) -> Result<Self, BadSchedule> {
        let fields = s.split_whitespace().count();
        let full = match fields {
            5..=7 => {
                let mut f: Vec<String> = s.split_whitespace().map(str::to_string).collect();
                if fields == 5 {
                    f.insert(0, "0".into());
                }
                f[5] = standard_weekdays(&f[5])?;
                f.join(" ")
            }
            _ => return Err(BadSchedule::Fields(s.to_string())),
        };
        let cron = cron::Schedule::from_str(&full).map_err(|e| BadSchedule::Cron { expr: s.to_string(), reason: e.to_string() })?;
        Ok(Schedule { text: s.to_string(), cron })
    }
}

/// Standard cron numbers weekdays 0-7 from Sunday (0 and 7); the `cron`
/// crate numbers them 1-7 from Sunday. Translates a five-field expression's
/// weekday field, so that `1-5` means Monday to Friday as everywhere else.
fn standard_weekdays(field: &str) -> Result<String, BadSchedule> {
    let bad = || BadSchedule::Weekday(field.to_string());
    let day = |d: &str| -> Result<String, BadSchedule> {
        match d.parse::<u32>() {
            Ok(n @ 0..=6) => Ok((n + 1).to_string()),
            Ok(7) => Ok("1".into()),
            Ok(_) => Err(bad()),
            Err(_) => Ok(d.to_string()), // a name, or *
        }
    };
    let mut parts = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, st)) => (r, Some(st)),
            None => (item, None),
        };
        let step = step.map(|st| format!("/{st}")).unwrap_or_default();
        match range.split_once('-') {
            // a range ending on Sunday-as-7: up to Saturday, plus Sunday
            Some((a, "7")) if step.is_empty() => {
                parts.push(format!("{}-7", day(a)?));
                parts.push("1".into());
            }
            Some((a, b)) => parts.push(format!("{}-{}{step}", day(a)?, day(b)?)),
            None => parts.push(format!("{}{step}", day(range)?)),
        }
    }
    Ok(parts.join(","))
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_five_and_six_fields() {
        assert!("30 1 * * *".parse::<Schedule>().is_ok());
        assert!("0 30 1 * * *".parse::<Schedule>().is_ok());
        assert!("61 1 * * *".parse::<Schedule>().is_err());
        assert!("every night".parse::<Schedule>().is_err());
    }

    #[test]
    fn weekdays_are_numbered_as_in_standard_cron() {
        use chrono::{Datelike, TimeZone, Weekday};
        let days = |expr: &str| -> Vec<Weekday> {
            let s: Schedule = expr.parse().unwrap();
            let from = chrono::Local.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
            let mut d: Vec<Weekday> = s.cron.after(&from).take(7).map(|t| t.weekday()).collect();
            d.sort_by_key(|w| w.num_days_from_monday());
            d.dedup();
            d
        };
        use Weekday::*;
        assert_eq!(days("0 3 * * 0"), [Sun]);
        assert_eq!(days("0 3 * * 7"), [Sun]);
        assert_eq!(days("0 3 * * 1-5"), [Mon, Tue, Wed, Thu, Fri]);
        assert_eq!(days("0 3 * * 5-7"), [Fri, Sat, Sun]);
        assert_eq!(days("0 3 * * 0,6"), [Sat, Sun]);
        assert_eq!(days("0 3 * * MON"), [Mon]);
        assert_eq!(days("30 0 3 * * 1"), [Mon], "seconds first: the same weekdays");
        assert_eq!(days("0 3 * * *").len(), 7);
        assert!("0 3 * * 8".parse::<Schedule>().is_err());
    }
}
